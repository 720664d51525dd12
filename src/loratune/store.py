"""The run directory: written as training goes, readable without torch (see docs/run-record.md).

`history.jsonl` is append-only and fsync'd per eval point; `run.json` and every other file are
written atomically (temp file + rename), so a crash or Ctrl-C never leaves a half-written record.
"""

from __future__ import annotations

import json
import math
import os
import re
import socket
import tempfile
import threading
import time
from pathlib import Path
from typing import Any, Callable

from loratune.errors import (  # noqa: F401 (NAME_MAX, check_name_length: read from store too)
    NAME_MAX, PARSE_ERRORS, UserError, check_name_length, parse_problem)
from loratune.versions import older_than

HISTORY = "history.jsonl"
RUN = "run.json"
CONFIG = "config.yaml"
CONFUSION = "confusion.json"
ADAPTER = "adapter"
DEFAULT_STUDY_DIR = "runs/tune"  # where a tune study lives when no --study-dir is given
TRIALS = "trials"  # a tune study's trial run directories (<study>/trials/<n>-<name>/): RunStore reads its final/
STUDY_DB = "study.db"  # a tune study's default Optuna storage, <study_dir>/study.db (search.study)
DECISIONS = "decisions.jsonl"  # a tune study's decision log
FINAL = "final"  # a tune study's export of its pick (adapter, config, study.json)
# what says a folder holds a tune study: a run's output_dir there is refused (check_output_dir), and `show` / `report`
# read the folder as a study (report.model.is_study_dir)
STUDY_MARKERS = (STUDY_DB, DECISIONS, TRIALS, f"{FINAL}/study.json")
# what a saved model's folder holds its weights in: peft's adapter, or a fully fine-tuned model (sharded or not)
ADAPTER_WEIGHT_FILES = ("adapter_model.safetensors", "adapter_model.bin")
MODEL_WEIGHT_FILES = ("model.safetensors", "model.safetensors.index.json", "pytorch_model.bin",
                      "pytorch_model.bin.index.json")
WEIGHT_FILES = ADAPTER_WEIGHT_FILES + MODEL_WEIGHT_FILES
LABEL_MAP = "label_map.json"
# in adapter/: the step of the model the folder holds, so a reader can tell it is the one run.json's saved_model names
SAVED_STEP = "saved_step.json"
# a model being written goes into a hidden sibling of adapter/ named so (replace_saved_model); one left by a killed
# run is removed when the next run starts in the directory (a killed tune export: by the next export)
ADAPTER_TMP = (f".{ADAPTER}.", ".tmp")
TENSORBOARD_DIR = "tensorboard"  # report_to: tensorboard writes its event files here, inside the run directory
GENERATIONS = "generations.jsonl"  # causal-lm: the prompt set's greedy outputs, one row per prompt and eval point
REPORT = "report.html"  # `loratune report RUN` writes here by default (report.default_output)
LOCK = "run.lock"  # held (flock) by the training process; its mtime is the heartbeat
HEARTBEAT_S = 10.0  # how often a live run touches run.lock
# A run whose lock nobody holds, or (another host, where flock says nothing) whose heartbeat is older
# than this, belonged to a process that died: 12 missed beats, so a stalled NFS write does not kill it.
HEARTBEAT_STALE_S = 120.0
# what a new run in a reused directory removes of an earlier run's (RunStore.create), its record first. run.json and
# config.yaml are among them so that, like the rest, they are replaced only where a loratune run wrote them
# (_stale_outputs): a user's own config.yaml in output_dir (`--config exp/config.yaml` with output_dir: exp) was
# overwritten by the resolved dump without a word
STALE_OUTPUTS = (RUN, CONFIG, HISTORY, CONFUSION, GENERATIONS, REPORT, ADAPTER, TENSORBOARD_DIR)
# what says a folder holds a loratune run (written as a run starts), so its STALE_OUTPUTS are the run's to replace;
# run.json only where it is a loratune run's record (run_record), not any file of that name
RUN_MARKERS = (RUN, HISTORY)
# a run.json is a loratune run's record when it is a JSON object with a `status` and whose `versions` name loratune
# (train.versions: every record has carried both since the first one, as it starts)
RUN_RECORD_VERSION_KEY = "loratune"
# run.json `record_version`: what a record's fields mean, where that changed. 1 (no key, records before it): the
# history's `lr` at step s is the rate after step s's scheduler update, i.e. the rate step s + 1 uses. 2: the rate
# step s used, as the HF Trainer logs its `learning_rate` (history_io.read_loratune_run reads both alike)
RECORD_VERSION = 2


# the first transformers release whose Trainer logs at step s the `learning_rate` step s used (its _get_learning_rate
# before lr_scheduler.step(), huggingface/transformers#36973); older ones logged the rate after step s's scheduler
# update, the rate step s + 1 uses, as a loratune record older than RECORD_VERSION 2 did
TRAINER_LR_CLOCK_SINCE = (4, 51)


def trainer_logs_next_lr(transformers_version: Any) -> bool:
    """Whether a Trainer of this transformers version (a run.json's `versions`, a config.json's
    `transformers_version`) logged at step s the rate step s + 1 uses: a release before TRAINER_LR_CLOCK_SINCE (its
    dev builds included: 4.51.0.dev0 may predate the change, versions.older_than's PEP 440 order). False where the
    version is unknown or no version: the rate step s used, as since then."""
    return older_than(transformers_version, TRAINER_LR_CLOCK_SINCE)


def lr_logs_next_step(run: Any) -> bool:
    """Whether a run.json's history logs at step s, as `lr`, the rate step s + 1 uses: a `loratune train` record older
    than RECORD_VERSION 2, or LoratuneCallback's record of a Trainer run under a transformers older than
    TRAINER_LR_CLOCK_SINCE (its record's `versions` name it; a record without them is read as the rate step s used)."""
    if not (isinstance(run, dict) and isinstance(run.get("versions"), dict)):
        return False
    if is_callback_record(run):
        return trainer_logs_next_lr(run["versions"].get("transformers"))
    return (RUN_RECORD_VERSION_KEY in run["versions"]
            and not (isinstance(run.get("record_version"), int) and run["record_version"] >= 2))
# run.json `source` of LoratuneCallback's record, and the source its RunHistory reads as (a Trainer run, recorded live)
CALLBACK_RECORD_SOURCE = "hf-trainer callback"
# the hidden folder RunStore.create moves an earlier run's outputs into before removing them; one left by a process
# killed mid-clearing says the outputs still beside it were a run's too (its markers may already be in it), and goes
# when the next run starts
EARLIER_TMP = (".earlier-run.", ".tmp")
PARTIAL_STATUSES = ("interrupted", "died", "failed")  # a record that stops before the planned end

# The texts of a loratune TensorBoard log (trackers.TensorBoardWriter), by tag; history_io.read_tensorboard reads them
# back by these names. Its scalars are named as the history's keys (trackers.scalars), so they need no table: the
# reader takes each tag as the history key it is.
CONFIG_TEXT = "config"  # config.yaml, in a ```yaml fence (TensorBoard renders a text as markdown)
RECORD_TEXT = "record"  # {"run": run.json, "facts": the run folder's facts}, as JSON in a ```json fence
VERDICT_TEXT = "verdict"  # `loratune diagnose`'s verdict, evidence and next move, at the end
STATUS_TEXT = "status"  # the run's end status (run.json `status`), at the end: a log without it is of a partial run
TB_TEXT_SUFFIX = "/text_summary"  # what torch's SummaryWriter.add_text appends to a text's tag
PER_CLASS = ("recall", "precision", "f1", "support")  # `<split>/<stat>/<label>` keys: history.jsonl only


def fenced(kind: str, text: str) -> str:
    """A text as a markdown code block (TensorBoard's text tab renders markdown): its lines kept as they are."""
    body = text.rstrip("\n")
    return f"```{kind}\n{body}\n```"


def unfenced(text: str) -> str:
    """The text inside `fenced`'s code block (a text without a fence as it is)."""
    body = text.strip()
    if body.startswith("```") and body.endswith("```") and "\n" in body:
        return body[body.index("\n") + 1:-3]
    return text


def json_safe(obj: Any) -> Any:
    """JSON has no NaN/inf: write them as null (readers treat null as 'non-finite or missing')."""
    if isinstance(obj, float):
        return obj if math.isfinite(obj) else None
    if isinstance(obj, dict):
        return {str(k): json_safe(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [json_safe(v) for v in obj]
    if hasattr(obj, "item") and callable(obj.item):  # numpy scalars
        return json_safe(obj.item())
    return obj


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


# the records of a run, a study or another tool's run: an output option (report -o, assess --out) never replaces one,
# whatever its suffix
RECORD_NAMES = (RUN, CONFUSION, LABEL_MAP, "study.json", "summary.json", "trainer_state.json")


def refuse_to_replace(out: Path, option: str, what: str, allowed: tuple[str, ...], inputs=(),
                      example: str = "") -> None:
    """`option` replaces an existing file only when it is `what` loratune wrote: a suffix in `allowed`, not a record
    (RECORD_NAMES) and none of the command's `inputs` (files, or folders whose every file is an input: a dataset, a
    model). A new path, or a device or FIFO (-o /dev/null), is written through."""
    out = Path(out)
    if not out.exists() or not out.is_file():
        return
    real = out.resolve()
    given = [Path(p).expanduser().resolve() for p in inputs if p and Path(p).expanduser().exists()]
    if out.suffix.lower() not in allowed or out.name in RECORD_NAMES or \
            any(real == p or p in real.parents for p in given):
        raise UserError(f"{option} {out}: that file exists and is not {what} loratune wrote (it may be a run's own "
                        f"record or one of this command's inputs); {what} would replace it",
                        f"give {option} a new file name, e.g. {example}")


def write_atomic(path: Path, text: str) -> None:
    """Write `text` to `path` whole or not at all (a temporary file renamed over it). A path that is no regular file
    (`-o /dev/null`, `/dev/stdout`, a FIFO) is written through: renamed over, /dev/null became a regular file.
    UTF-8, a lone surrogate as the byte it stands for (surrogateescape): a path argv decoded under LC_ALL=C
    (output_dir 'runé' as 'run\\udcc3\\udca9') written in a record is its original bytes (train and report -o
    crashed with a UnicodeEncodeError)."""
    path = Path(path)
    if path.exists() and not path.is_file() and not path.is_dir():
        with open(path, "w", encoding="utf-8", errors="surrogateescape") as f:
            f.write(text)
        return
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        os.fchmod(fd, 0o666 & ~_umask())  # mkstemp makes 0600; a record is as readable as any file
        with os.fdopen(fd, "w", encoding="utf-8", errors="surrogateescape") as f:
            f.write(text)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise


def write_json(path: Path, data: Any) -> None:
    write_atomic(path, json.dumps(json_safe(data), indent=2, ensure_ascii=False) + "\n")


def read_json(path: Path) -> Any:
    try:
        return json.loads(Path(path).read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise UserError(f"'{path}' does not exist", "give a run directory made by `loratune train`") from None
    except PARSE_ERRORS as exc:
        raise UserError(f"'{path}' is not valid JSON ({parse_problem(exc)})", "the file is damaged; re-run") from None


def pid_alive(pid: int) -> bool:
    if pid <= 0:  # never signal a process group
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


class RunLock:
    """Held by the process that trains into a run directory: an exclusive flock on `run.lock` (the
    kernel drops it when the process dies, even by kill -9) whose file holds pid and host and whose
    mtime a thread touches every HEARTBEAT_S seconds (for readers on another host, where flock says
    nothing). `liveness(run_dir)` tells readers whether a `running` record still has a process."""

    def __init__(self, run_dir: Path, name: str = LOCK, busy: tuple[str, str] | None = None):
        self.path = Path(run_dir) / name
        self.busy = busy  # (problem, fix) when another process holds it; {holder} is filled in
        self._f = None
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def acquire(self) -> None:
        import fcntl

        f = open(self.path, "a+", encoding="utf-8")
        for _ in range(50):  # a reader holds the lock shared for microseconds
            try:
                fcntl.flock(f.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                time.sleep(0.02)
                continue
            if self._holds_path(f):
                break
            # The holder unlinked the file we had opened when it released (release): that lock guards nothing, and
            # the next process locks the file now at the path. Open that one and try again.
            f.close()
            f = open(self.path, "a+", encoding="utf-8")
        else:
            f.seek(0)
            holder = f.read().strip()
            f.close()
            problem, fix = self.busy or (f"another loratune process is training into '{self.path.parent}' "
                                         "({holder})", "wait for it to finish, stop it, or give another output_dir")
            raise UserError(problem.format(holder=_holder_text(holder)), fix)
        f.seek(0)
        f.truncate()
        f.write(json.dumps({"pid": os.getpid(), "host": socket.gethostname()}) + "\n")
        f.flush()
        self._f = f
        self._thread = threading.Thread(target=self._beat, name="loratune-heartbeat", daemon=True)
        self._thread.start()

    def _holds_path(self, f) -> bool:
        """Whether the locked file `f` is still the one at self.path (not unlinked or replaced since it was opened)."""
        try:
            st = os.stat(self.path)
        except FileNotFoundError:
            return False
        mine = os.fstat(f.fileno())
        return (st.st_dev, st.st_ino) == (mine.st_dev, mine.st_ino)

    def _beat(self) -> None:
        while not self._stop.wait(HEARTBEAT_S):
            try:
                os.utime(self.path)
            except OSError:
                pass

    def release(self) -> None:
        self._stop.set()
        if self._f is None:
            return
        try:
            self.path.unlink()
        except OSError:
            pass
        self._f.close()  # closing drops the flock
        self._f = None


def _holder_text(raw: str) -> str:
    try:
        h = json.loads(raw or "{}")
    except PARSE_ERRORS:
        h = {}
    return f"pid {h['pid']} on {h.get('host', '?')}" if h.get("pid") else "pid unknown"


def liveness(run_dir: str | Path, worker: str | None = None) -> tuple[str, str]:
    """('alive' | 'dead', why) for a run directory whose run.json says `running`. `worker` ("pid N on HOST"): the
    process a study gave the run to; a study trial that is starting has no run.lock (nor directory) yet, and
    reads as dead only once that process is gone."""
    import fcntl

    path = Path(run_dir) / LOCK
    try:
        f = open(path, "r", encoding="utf-8")
    except FileNotFoundError:
        if worker:
            return _worker_liveness(worker)
        return "dead", "no process holds its lock (run.lock is gone)"
    except OSError as exc:
        return "alive", f"run.lock cannot be read ({exc})"
    with f:
        try:
            holder = json.loads(f.read() or "{}")
        except PARSE_ERRORS:
            holder = {}
        pid, host = holder.get("pid"), holder.get("host")
        who = f"pid {pid} on {host}" if pid else "its process"
        if host in (None, socket.gethostname()):
            try:
                fcntl.flock(f.fileno(), fcntl.LOCK_SH | fcntl.LOCK_NB)
            except BlockingIOError:
                return "alive", f"{who} holds its lock"
            fcntl.flock(f.fileno(), fcntl.LOCK_UN)
            return "dead", f"{who} no longer holds its lock (killed or crashed)"
        age = time.time() - os.fstat(f.fileno()).st_mtime
        if age > HEARTBEAT_STALE_S:
            return "dead", f"{who} sent no heartbeat for {age:.0f}s"
        return "alive", f"{who} sent a heartbeat {age:.0f}s ago"


def _worker_liveness(worker: str) -> tuple[str, str]:
    """('alive' | 'dead', why) of the process named "pid N on HOST"; one on another host cannot be seen from here
    and counts as alive (its run.lock's heartbeat says more once it is written)."""
    import re

    m = re.fullmatch(r"pid (\d+) on (.+)", worker.strip())
    if not m:
        return "dead", f"no process holds its lock (run.lock is gone) and its process is unknown ({worker!r})"
    if m.group(2) != socket.gethostname():
        return "alive", f"{worker} has not written run.lock yet (starting)"
    if pid_alive(int(m.group(1))):
        return "alive", f"{worker} is alive and has not written run.lock yet (starting)"
    return "dead", f"{worker} is gone and no process holds its lock"


def last_history_point(run_dir: str | Path) -> dict:
    """The last whole point of a run's history.jsonl ({} when none): a hard kill can tear the last line."""
    try:
        points, _ = read_history_lines(Path(run_dir) / HISTORY)
    except OSError:
        return {}
    return points[-1] if points else {}


def last_sign_of_life(run_dir: str | Path) -> float | None:
    """When a run's process last wrote (run.json, history.jsonl, the lock's heartbeat), as a timestamp; None when
    none of them is there. Only while its run.json is the process's own: a rewrite (a dead run recorded as `died`)
    moves it, so that rewrite records the wall time this gives first (with_liveness)."""
    times = [p.stat().st_mtime for p in (Path(run_dir) / n for n in (RUN, HISTORY, LOCK)) if p.is_file()]
    return max(times, default=None)


def with_liveness(run: dict, run_dir: str | Path) -> dict:
    """run.json as it should be read: a `running` record whose process is gone reads as status `died`,
    `partial: true`, with the reason (the file on disk is left as it is; readers decide). Its step and examples are
    the furthest its history reached (run.json is rewritten a moment after each history point: a kill between
    leaves it behind), and its wall time runs from `started_at` to the process's last sign of life."""
    if not isinstance(run, dict) or run.get("status") != "running":
        return run
    state, why = liveness(run_dir)
    if state == "alive":
        return run
    out = dict(run)
    point = last_history_point(run_dir)
    for key, at in (("steps_done", "step"), ("examples_seen", "examples_seen")):
        try:
            out[key] = max(int(run.get(key) or 0), int(point.get(at) or 0))
        except (TypeError, ValueError):
            pass  # a value no number: the record's own stands
    last = last_sign_of_life(run_dir)
    wall = run.get("wall_s")
    recorded = isinstance(wall, (int, float)) and not isinstance(wall, bool) and wall > 0  # a value no number: none
    if not recorded and run.get("started_at") and last is not None:
        from datetime import datetime

        try:
            out["wall_s"] = round(max(0.0, last - datetime.fromisoformat(str(run["started_at"])).timestamp()), 3)
        except (TypeError, ValueError):
            pass
    out.update({"status": "died", "status_recorded": "running", "partial": True,
                "reason": f"the training process died at step {out.get('steps_done', '?')} of "
                          f"{run.get('steps_planned', '?')} without finishing: {why}; the record is partial"})
    return out


def check_output_dir(path: Path, name: str = "output_dir", example: str = "output_dir=runs/latest",
                     study: bool = False) -> None:
    """An output folder that could not be written: a file, an unwritable directory (or parent), or one that holds the
    other kind of record: a tune study where a run goes, a run where a study goes (`study`), each read as the other
    by `show` and `report` once they were mixed. `name` and `example`: how the user gave it (`output_dir`, or tune's
    `--study-dir`), so the message names their option."""
    if str(path).strip() in ("", "."):  # '' is the current folder: a run would write over whatever lies there
        raise UserError(f"{name} is empty" if not str(path).strip() else f"{name} '.' is the current folder",
                        f"give the run a folder of its own, e.g. {example}")
    path = Path(path)
    check_name_length(path, name, f"give a shorter name, e.g. {example}")
    if path.exists() and not path.is_dir():
        raise UserError(f"{name} '{path}' is a file, not a directory",
                        f"give a directory path (it is created if missing), e.g. {example}")
    if path.is_dir():
        _refuse_other_record(path, name, example, study)
    probe = path
    while not probe.exists():
        if probe.is_symlink():  # a link that leads nowhere (a loop, a missing target): the run's mkdir says File exists
            raise UserError(f"{name} '{path}' cannot be created: '{probe}' is a symbolic link that leads nowhere (a "
                            f"loop or a missing target)", f"give a path without it, e.g. {example}, or fix the link")
        if probe.parent == probe:
            break
        probe = probe.parent
    if not probe.is_dir():
        raise UserError(f"{name} '{path}' cannot be created: '{probe}' is a file",
                        "give a path under a directory")
    what = name if probe == path else f"the directory '{probe}' that would hold {name}"
    if not os.access(probe, os.W_OK | os.X_OK):
        raise UserError(f"{what} '{path}' is not writable (permission denied or a read-only file system)",
                        f"give a writable {name}, e.g. {example}, or fix the permissions")
    if probe != path:
        # os.access says yes where the file system still refuses a new folder (/proc, /sys as root: ENOENT, EPERM):
        # a folder made and removed beside where the run's would go is the honest test
        import tempfile

        try:
            os.rmdir(tempfile.mkdtemp(prefix=".loratune-probe-", dir=probe))
        except OSError as exc:
            raise UserError(f"{name} '{path}' cannot be created in '{probe}' ({exc.strerror or exc})",
                            f"give a {name} on a writable disk, e.g. {example}") from None


def is_callback_record(meta: Any) -> bool:
    """Whether a run.json is LoratuneCallback's record of a Trainer run (not a `loratune train` run's)."""
    return isinstance(meta, dict) and str(meta.get("source") or "").startswith(CALLBACK_RECORD_SOURCE)


def run_record(path: str | Path) -> dict | None:
    """The run.json at `path` when it is a loratune run's record (RUN_RECORD_VERSION_KEY, or LoratuneCallback's record
    of a Trainer run, whose older records keep no versions), else None: missing, no
    regular file, no JSON, or another JSON of that name (a user's `{"mine": 1}`). The one place that decides whether a
    run.json is loratune's, so that a new run replaces only what a run wrote."""
    p = Path(path)
    if not p.is_file():  # (a FIFO of that name would block the read)
        return None
    try:
        run = json.loads(p.read_text(encoding="utf-8"))
    except (OSError, *PARSE_ERRORS):  # unreadable, no UTF-8, no JSON
        return None
    if not isinstance(run, dict) or not isinstance(run.get("status"), str):
        return None
    versions = run.get("versions")
    ours = (isinstance(versions, dict) and RUN_RECORD_VERSION_KEY in versions) or is_callback_record(run)
    return run if ours else None


def _killed_before_record(path: Path, lock_left: bool | None = None) -> bool:
    """A run killed (SIGKILL, OOM, power) between writing its config.yaml and its first run.json: the run.lock it
    took is there, no run.json (create takes the lock, then writes config.yaml; a live holder's lock refuses the new
    run in create, whatever this says). `lock_left`: whether the lock was there before this process took its own."""
    lock = (path / LOCK).is_file() if lock_left is None else lock_left
    return lock and not (path / RUN).exists()


def _config_of_run(path: Path, record: dict | None, clearing: list[Path], lock_left: bool | None = None) -> bool:
    """Whether `path`/config.yaml is the one a loratune run wrote: the dump of the config its run.json records (a
    config.yaml written or edited by hand, comments and anchors included, reads as another mapping), or, with the
    record already moved out by a run killed mid-clearing (`clearing`), the one it left. (A run whose first run.json
    fails removes the config.yaml it wrote: RunStore.drop_unrecorded_config.)"""
    import yaml

    if record is None:  # a run killed mid-clearing, or before its first run.json, left this config.yaml
        left = bool(clearing) or _killed_before_record(path, lock_left)
        return left and not (path / RUN).exists() and (path / CONFIG).is_file()
    try:
        config = yaml.safe_load((path / CONFIG).read_text(encoding="utf-8")) if (path / CONFIG).is_file() else None
    except (OSError, yaml.YAMLError, *PARSE_ERRORS):
        return False
    return config is not None and json_safe(config) == record.get("config")


def _refuse_other_record(path: Path, name: str, example: str, study: bool) -> None:
    """A run's output_dir that holds a tune study (STUDY_MARKERS), or a --study-dir that holds a run (a loratune
    run.json, history.jsonl): refused, as the two records mixed in one folder each pass for the other."""
    if study:
        marks = [n for n in (RUN, HISTORY) if (n == RUN and run_record(path / RUN) is not None)
                 or (n == HISTORY and (path / HISTORY).is_file())]
        if marks:
            raise UserError(f"{name} '{path}' holds a run ({', '.join(marks)}), not a tune study: the study's files "
                            "would be mixed with the run's, and `loratune show` / `report` would read the folder as "
                            "one or the other", f"give the study a folder of its own, e.g. {example}")
        return
    marks = [n for n in STUDY_MARKERS if (path / n).exists()]
    if marks:
        raise UserError(f"{name} '{path}' holds a tune study ({', '.join(marks)}): a run there would mix its files "
                        "with the study's, and `loratune show` / `report` would read the folder as one or the other",
                        f"give the run a folder of its own, e.g. {example}; a study's trials are runs of their own, "
                        f"under {path / TRIALS}")


def _stale_outputs(path: Path, lock_left: bool | None = None) -> list[str]:
    """The earlier run's outputs in `path` that a new run removes (STALE_OUTPUTS present). Only a loratune run's
    (RUN_MARKERS there): files of those names in a folder no run wrote (a user's own adapter/ or report.html) are
    refused, never deleted, as a name alone said nothing of whose they were; so are a run.json that is no loratune
    record (run_record) and a config.yaml that is not its run's (_config_of_run), wherever they are."""
    present = [n for n in STALE_OUTPUTS if (path / n).exists() or (path / n).is_symlink()]
    if not present:
        return present
    record, clearing = run_record(path / RUN), _clearing_left(path)
    theirs = [n for n in (RUN, CONFIG) if n in present
              and not (record is not None if n == RUN else _config_of_run(path, record, clearing, lock_left))]
    if theirs:
        said = {RUN: f"a {RUN} that is no loratune run's record",
                CONFIG: f"a {CONFIG} that no loratune run wrote ("
                        + (f"not the config its {RUN} records: written or edited by hand?" if record else
                           f"no loratune {RUN} beside it") + ")"}
        raise UserError(f"output_dir '{path}' holds {' and '.join(said[n] for n in theirs)}: a run there would "
                        f"replace {'them' if len(theirs) > 1 else 'it'}",
                        f"give another output_dir (a new or empty folder, e.g. output_dir={path / 'run'}), or move "
                        f"{'those files' if len(theirs) > 1 else 'it'} out of it")
    killed = _killed_before_record(path, lock_left)
    if record is None and not (path / HISTORY).exists() and not clearing and not killed:
        raise UserError(f"output_dir '{path}' holds {', '.join(present)} but no loratune run "
                        f"({' or '.join(RUN_MARKERS)}): a run there would delete {'them' if len(present) > 1 else 'it'}",
                        "give another output_dir (a new or empty folder), or move those files out of it")
    return present


def _clearing_left(path: Path) -> list[Path]:
    """The hidden folders (EARLIER_TMP) a run killed while clearing an earlier run's outputs left in `path`."""
    return [p for p in path.glob(f"{EARLIER_TMP[0]}*{EARLIER_TMP[1]}") if p.is_dir() and not p.is_symlink()]


def earlier_run_note(path: str | Path) -> str | None:
    """What a new run into `path` replaces (RunStore.create clears the earlier run's outputs, its model included), in
    one line that train.start_record says as it clears them; None when the folder holds no earlier run's outputs, or
    while another live process trains there (create's lock then refuses the run, replacing nothing). A UserError where
    those names are not a run's (_stale_outputs): api.train asks before the model loads, to refuse that early."""
    path = Path(path).expanduser()
    if not _stale_outputs(path):
        return None
    if (path / LOCK).exists() and liveness(path)[0] == "alive":
        return None
    record = run_record(path / RUN)
    run = with_liveness(record, path) if record is not None else {}
    best, objective = run.get("best") if isinstance(run.get("best"), dict) else {}, run.get("objective")
    parts = []
    if isinstance(objective, str) and isinstance(best.get(objective), (int, float)):
        parts.append(f"best {objective} {best[objective]:.4g} at step {best.get('step', '?')}")
    parts.append("saved model" if (path / ADAPTER).exists() else "no saved model")
    what = f"a {run['status']} run" if isinstance(run.get("status"), str) else "an earlier run's outputs"
    return f"{path} held {what} ({', '.join(parts)}): replaced by this run; give another output_dir to keep it"


def _exchange(a: Path, b: Path) -> bool:
    """Swap two paths in one step (Linux renameat2 RENAME_EXCHANGE); False where the system cannot."""
    import ctypes

    try:
        renameat2 = ctypes.CDLL(None, use_errno=True).renameat2
    except (OSError, AttributeError):
        return False
    at_fdcwd, rename_exchange = -100, 2  # <fcntl.h>, <linux/fs.h>
    return renameat2(at_fdcwd, os.fsencode(a), at_fdcwd, os.fsencode(b), rename_exchange) == 0


def _follow_umask(folder: Path) -> None:
    """Give what a model save wrote the modes of the run's other files (0666, 0777 for folders, less the umask):
    safetensors writes its weights 0600 (through a temporary file), so another user could read every file of
    adapter/ but the weights."""
    mask = _umask()
    for root, dirs, files in os.walk(folder):
        for name in dirs:
            os.chmod(os.path.join(root, name), 0o777 & ~mask)
        for name in files:
            os.chmod(os.path.join(root, name), 0o666 & ~mask)


def _swap_in(new: Path, target: Path) -> None:
    """Put the folder `new` at `target`. An existing target is exchanged with it in one step where the system can (the
    old folder is then at `new`), else moved aside first: a kill between those two renames leaves no `target` (never a
    mixed one), the old folder kept beside it under a hidden name."""
    if not (target.exists() or target.is_symlink()):
        os.rename(new, target)
        return
    if _exchange(new, target):
        return
    old = new.with_name(new.name[:-len(ADAPTER_TMP[1])] + ".old" + ADAPTER_TMP[1])
    os.rename(target, old)
    os.rename(new, target)
    os.rename(old, new)  # the caller removes `new`, as after an exchange


def remove_unfinished_models(parent: Path) -> None:
    """Remove what a killed replace_saved_model left in `parent`: a model it was writing, or one it was removing."""
    import shutil

    for left in parent.glob(f"{ADAPTER_TMP[0]}*{ADAPTER_TMP[1]}"):
        shutil.rmtree(left, ignore_errors=True)


def replace_saved_model(folder: Path, write: Callable[[Path], None] | None) -> None:
    """Put the saved model `write(tmp)` writes at `folder` (a run's adapter/, a tune study's final/adapter), or remove
    the one there (`write` None). It is written into a hidden sibling (ADAPTER_TMP) and swapped in once complete, so
    `folder` is always one whole model: the one before until the new one is complete, never the two mixed (files merged
    into the old folder, a full model's config.json beside a LoRA adapter's adapter_config.json, loaded as neither).
    A removal renames the folder aside first (a kill mid-removal leaves no part of it at `folder`)."""
    import shutil

    folder.parent.mkdir(parents=True, exist_ok=True)  # (a caller saving a model outside a training run)
    new = Path(tempfile.mkdtemp(dir=folder.parent, prefix=ADAPTER_TMP[0], suffix=ADAPTER_TMP[1]))
    try:
        if write is None:
            if folder.is_symlink():
                folder.unlink()
            elif folder.exists():
                new.rmdir()
                os.rename(folder, new)  # then removed with it
            return
        os.chmod(new, 0o777 & ~_umask())  # mkdtemp makes 0700; adapter/ is as readable as the run's other files
        write(new)
        _follow_umask(new)
        _swap_in(new, folder)
    finally:
        shutil.rmtree(new, ignore_errors=True)  # what was not swapped in, or (after an exchange) the old model


STUDY_META_ATTR = "loratune"  # the study's user attribute holding its setup (search.study.Study.meta)
TRIAL_RUN_DIR_ATTR = "run_dir"  # a trial's user attribute holding its run folder (search.study: <study>/trials/<name>)
# how long a read of a study's study.db waits for a writer (a running tune) to let go: sqlite3's own default
STUDY_DB_BUSY_TIMEOUT_S = 5.0
# SQLite's primary result codes for a database another connection holds (SQLITE_BUSY, SQLITE_LOCKED)
_SQLITE_BUSY_CODES = (5, 6)


class StudyDbBusy(Exception):
    """A study's study.db could not be read: another connection (a running tune) held it past the busy timeout."""

    def __init__(self, db: Path):
        super().__init__(f"{db} is locked")
        self.db = db


def _sqlite_busy(e: Exception) -> bool:
    """`e` says the database is held by another connection (locked / busy), not that it is no database or no study."""
    code = getattr(e, "sqlite_errorcode", None)  # Python 3.11+
    if isinstance(code, int):
        return code & 0xFF in _SQLITE_BUSY_CODES
    said = str(e).lower()
    return "locked" in said or "busy" in said


def study_meta_of_trial(run_dir: str | Path | None, timeout: float | None = None) -> tuple[Path, dict] | None:
    """(the study folder, its setup: Study.meta) where `run_dir` is a trial folder of a study whose own study.db lies
    beside its trials/ (<study>/trials/<name>) and lists it among its trials (a trial's TRIAL_RUN_DIR_ATTR, matched by
    the folder's name: a study moved or copied still matches; a plain run saved into trials/ beside it does not), else
    None. Read from the SQLite file directly (Optuna's study_user_attributes / trial_user_attributes tables),
    read-only: `diagnose` of a plain run imports neither Optuna nor SQLAlchemy. StudyDbBusy where another connection
    held the file past `timeout` seconds (STUDY_DB_BUSY_TIMEOUT_S)."""
    import sqlite3

    if not run_dir:
        return None
    folder = Path(run_dir).parent
    db = folder.parent / STUDY_DB
    if folder.name != TRIALS or not db.is_file():
        return None
    wait = STUDY_DB_BUSY_TIMEOUT_S if timeout is None else timeout
    try:
        con = sqlite3.connect(f"{db.resolve().as_uri()}?mode=ro", uri=True, timeout=wait)
        try:
            rows = con.execute("SELECT study_id, value_json FROM study_user_attributes WHERE key = ?",
                               (STUDY_META_ATTR,)).fetchall()
            trials = con.execute("SELECT a.value_json FROM trial_user_attributes a JOIN trials t ON t.trial_id = "
                                 "a.trial_id WHERE a.key = ? AND t.study_id = ?",
                                 (TRIAL_RUN_DIR_ATTR, rows[0][0])).fetchall() if len(rows) == 1 else []
        finally:
            con.close()
        meta = json.loads(rows[0][1]) if len(rows) == 1 else None
        names = {Path(p).name for (v,) in trials for p in [json.loads(v)] if isinstance(p, str)}
    except sqlite3.OperationalError as e:
        if _sqlite_busy(e):  # a study whose file a writer holds: its setup exists but cannot be read now
            raise StudyDbBusy(db) from e
        return None  # no such table / not a database: not an Optuna study of ours
    except (sqlite3.Error, *PARSE_ERRORS, OSError):  # not an Optuna study of ours: no setup to read
        return None
    return (folder.parent, meta) if isinstance(meta, dict) and Path(run_dir).name in names else None


def in_study(path: str | None, root: Path, folder: str) -> str | None:
    """`path` as found in the study directory `root`: a study copied or moved would read (and `report --trial-reports`
    write into) the directories of the study it was copied from, or dead paths, and a path recorded relative to the
    first session's working directory is dead from any other; what this study holds under <root>/<folder>/<name> is
    its own. A relative path is taken from the study directory first."""
    if not path:
        return path
    p = Path(path)
    tries = [root / p] if not p.is_absolute() else []
    if p.parent.name == folder:
        tries.append(root / folder / p.name)
    here = next((t for t in tries if t.exists()), None)
    return str(here) if here is not None else path


class RunStore:
    """One run directory."""

    def __init__(self, path: str | Path):
        self.path = Path(path).expanduser()  # `~/runs/x` from a Python caller, as the config reads it
        self._lock: RunLock | None = None
        self.cleared: list[str] = []  # what of an earlier run create removed (STALE_OUTPUTS)
        self.lock_left = False  # create: an earlier run's run.lock was there (one killed before its first run.json)
        self.say_replaced = False  # train.start_record says on stderr what create replaces (api.train sets it)
        # keys every run.json this store writes carries (a tune trial's: the diagnosis thresholds it is judged by,
        # rules.RUN_THRESHOLDS_KEY), so the record says them from its first write (the trackers' verdict reads it)
        self.record_extra: dict = {}

    @property
    def adapter_dir(self) -> Path:
        return self.path / ADAPTER

    def create(self, config_yaml: str) -> list[str]:
        """Take the directory for a new run (run.lock), clear the earlier run's outputs, write config.yaml. Returns
        what of an earlier run was removed (empty: none); the new run.json comes next (train.start_record)."""
        check_output_dir(self.path)
        try:
            self.path.mkdir(parents=True, exist_ok=True)
        except OSError as exc:  # (what the check could not foresee: a folder gone or made read-only since)
            raise UserError(f"output_dir '{self.path}' cannot be created ({exc.strerror or exc})",
                            "give an output_dir on a writable disk, e.g. output_dir=runs/latest") from None
        self.lock_left = (self.path / LOCK).is_file()  # before this process takes its own
        self._lock = RunLock(self.path)
        self._lock.acquire()
        try:
            self.cleared = self._clear_earlier_run()  # (kept for what a failed write of config.yaml says)
        except UserError:
            self.close()
            raise
        write_atomic(self.path / CONFIG, config_yaml)
        return self.cleared

    def drop_unrecorded_config(self) -> None:
        """Remove the config.yaml create wrote where the run's first run.json could not follow it (a full disk): alone,
        it would read as no run's (_stale_outputs) and refuse the next try in the folder."""
        if not (self.path / RUN).exists():
            (self.path / CONFIG).unlink(missing_ok=True)

    def _clear_earlier_run(self) -> list[str]:
        """A fresh run in a reused directory starts a fresh history, and an earlier run's outputs or model may not pass
        as this one's (nor its TensorBoard events, which would read as this run's when this one logs none). All of them
        or none: each is first moved into one hidden folder (a rename, undone if a later one fails), so an earlier run
        that cannot be removed (an unwritable adapter/) is refused with its record whole, then that folder goes. Returns
        the names removed."""
        import shutil

        remove_unfinished_models(self.path)
        # what a run killed mid-clearing moved out: removed with this clearing, after _stale_outputs has seen it (it
        # is what says the outputs it left beside it were a run's)
        left_trash = _clearing_left(self.path)
        stale = _stale_outputs(self.path, self.lock_left)
        if not stale:
            for left in left_trash:
                shutil.rmtree(left, ignore_errors=True)
            return []
        # the earlier run.json goes first (a kill -9 before the new one is written leaves no record, never the earlier
        # run's `completed` one over its removed model and history), history.jsonl last: until then it still says the
        # outputs left are a run's, and the hidden folder they go into says so after (run.json: first in STALE_OUTPUTS)
        stale = [n for n in stale if n != HISTORY] + [n for n in stale if n == HISTORY]
        trash = Path(tempfile.mkdtemp(dir=self.path, prefix=EARLIER_TMP[0], suffix=EARLIER_TMP[1]))
        moved: list[str] = []
        try:
            for name in stale:
                os.rename(self.path / name, trash / name)
                moved.append(name)
        except OSError as exc:
            for back in reversed(moved):
                os.rename(trash / back, self.path / back)
            trash.rmdir()
            raise UserError(f"output_dir '{self.path}' holds an earlier run whose {name} cannot be removed ({exc}); "
                            "nothing was removed", "fix its permissions, or give another output_dir") from None
        # everything of the earlier run is out of the record now; a file the OS refuses to delete stays in the hidden
        # folder rather than failing a run whose directory is already consistent
        for left in (trash, *left_trash):
            shutil.rmtree(left, ignore_errors=True)
        return stale

    def replace_adapter(self, step: int | None, write: Callable[[Path], None]) -> None:
        """Write a model (`write(folder)`) into adapter/'s place whole (replace_saved_model). Written straight into
        adapter/, a kill -9 mid-save left the new weights beside the old config, tokenizer and label map (a mixed
        folder that still loaded), and a save that failed lost the previous best. SAVED_STEP in it names `step`."""

        def write_stepped(out: Path) -> None:
            write(out)
            write_json(out / SAVED_STEP, {"step": step})

        replace_saved_model(self.adapter_dir, write_stepped)

    def close(self) -> None:
        """Release the run's lock (after the last write of run.json)."""
        if self._lock is not None:
            self._lock.release()
            self._lock = None

    def append_history(self, point: dict) -> None:
        with open(self.path / HISTORY, "a", encoding="utf-8") as f:
            f.write(json.dumps(json_safe(point), ensure_ascii=False) + "\n")
            f.flush()
            os.fsync(f.fileno())

    def append_generations(self, rows: list[dict]) -> None:
        """Append the prompt-set outputs of one evaluation point (fsync'd, like history.jsonl)."""
        with open(self.path / GENERATIONS, "a", encoding="utf-8") as f:
            f.write("".join(json.dumps(json_safe(r), ensure_ascii=False) + "\n" for r in rows))
            f.flush()
            os.fsync(f.fileno())

    def write_run(self, run: dict) -> None:
        write_json(self.path / RUN, {**run, **self.record_extra})

    def write_confusion(self, labels: tuple[str, ...], matrix, step: int) -> None:
        # the dense C x C matrix, one row a line: write_json's indent put every cell on its own line and json_safe
        # walked every cell in Python (2,000 classes: 36 MB and 6 s on every new best); counts are plain ints
        import numpy as np

        rows = [json.dumps(r, separators=(",", ":")) for r in np.asarray(matrix).astype(np.int64).tolist()]
        head = json.dumps(json_safe(list(labels)), ensure_ascii=False)
        write_atomic(self.path / CONFUSION, '{"labels": ' + head + ',\n"matrix": [\n' + ",\n".join(rows)
                     + '\n],\n"step": ' + json.dumps(json_safe(step)) + "}\n")

    # readers -------------------------------------------------------------------------------
    def exists(self) -> bool:
        return (self.path / RUN).is_file() and (self.path / CONFIG).is_file()

    def require(self) -> "RunStore":
        # the run argument of predict and evaluate (CLI and API) resolves here: a name no file system takes is said
        # before the first stat, which raises ENAMETOOLONG
        check_name_length(self.path, "run directory", "no folder can have such a name: give the output_dir of a "
                          "`loratune train` run")
        if not self.path.is_dir():  # a file given for the run was said not to exist (as errors.require_file words it)
            state = ("does not exist" if not self.path.exists() else "is a file, not a run directory"
                     if self.path.is_file() else "is not a directory")
            raise UserError(f"run directory '{self.path}' {state}", "give the output_dir of a training run")
        if not self.exists():
            # name only what is missing: "no run.json / config.yaml" beside a config.yaml read as a contradiction
            missing = " and no ".join(n for n in (RUN, CONFIG) if not (self.path / n).is_file())
            pick = self._study_pick()
            raise UserError(f"'{self.path}' is not a loratune run directory (no {missing})"
                            + (": it is a tune study's final/ folder, the pick's exported adapter and config"
                               if pick else ""),
                            f"give the pick's trial directory, '{pick}', which holds its run record" if pick
                            else "give the output_dir of a `loratune train` run")
        return self

    def _study_pick(self) -> str | None:
        """The run directory of the trial a `loratune tune` study exported to this folder (its final/: study.json's
        recommendation, or test.json's), as found in the study; None when this is no study's final/ folder."""
        for name, field in (("study.json", "recommendation"), ("test.json", None)):
            try:
                data = json.loads((self.path / name).read_text(encoding="utf-8"))
            except (OSError, *PARSE_ERRORS):
                continue
            rec = data.get(field) if field and isinstance(data, dict) else data
            run_dir = rec.get("run_dir") if isinstance(rec, dict) else None
            if isinstance(run_dir, str) and run_dir:
                return in_study(run_dir, self.path.parent, TRIALS)
        return None

    def read_record(self) -> dict:
        """run.json as written (no reader's view: see read_run); a file that is no JSON object is refused."""
        run = read_json(self.path / RUN)
        if not isinstance(run, dict):  # valid JSON but a list, string, number or null: no field of it can be read
            raise UserError(f"'{self.path / RUN}' is not a JSON object (it holds {json.dumps(run)[:40]})",
                            "the file is damaged; re-run")
        return run

    def read_run(self) -> dict:
        """run.json; a `running` record whose process died reads as `died` (see with_liveness)."""
        return with_liveness(self.read_record(), self.path)

    def read_history(self) -> list[dict]:
        """The whole eval points of history.jsonl (read_history_lines says which lines were left out, and why)."""
        p = self.path / HISTORY
        if not p.exists():
            return []
        return read_history_lines(p)[0]


# run.json saved_model while a newer best is written in adapter/'s place (train.save_best_so_far): `writing` names its
# step (records of 8a485e4 say it only in the note, in these words)
SAVED_WRITING_NOTE = "a newer best, the model of step {step}, is being written"
_SAVED_WRITING_RX = re.compile(r"a newer best, the model of step (\d+), is being written")


def adapter_step(run: dict, run_dir: str | Path) -> tuple[Any, str | None]:
    """(the step of the model adapter/ holds, as far as run.json vouches for it; None and why not when it vouches for
    none), for a record with saved_model (callers take a record without it as they did before it existed). The one
    place that decides which step's model a run folder holds, for predict/evaluate, show, report and warm starts.
    adapter/'s SAVED_STEP names its step (a folder without it, saved before loratune wrote it, is taken as the record
    says). It is the recorded model when it is the step saved_model names, or the newer best saved_model says is being
    written and history.jsonl evaluated: a kill right after the swap, before run.json was written again, leaves that
    model whole in adapter/ and the rest of the record (history, best) already naming it."""
    saved = run.get("saved_model")
    if not isinstance(saved, dict):
        return None, None
    step = saved.get("step")
    writing = saved.get("writing")
    if writing is None:
        m = _SAVED_WRITING_RX.search(str(saved.get("note") or ""))
        writing = int(m.group(1)) if m else None
    folder = Path(run_dir) / ADAPTER
    marker = folder / SAVED_STEP
    try:
        recorded = read_json(marker) if marker.is_file() else {"step": step}
    except UserError:
        recorded = None
    held = recorded.get("step") if isinstance(recorded, dict) else None
    if held is not None and held == step:
        return step, None
    if writing is not None and held == writing and marker.is_file():
        history = Path(run_dir) / HISTORY
        points = read_history_lines(history)[0] if history.is_file() else []
        if any(p.get("step") == writing and any(str(k).startswith("val/") for k in p) for p in points):
            return writing, None
    if step is None:
        return None, (f"its {RUN} says \"{saved.get('note')}\", so whatever {folder} holds is not a model the run "
                      "recorded")
    return None, (f"{folder} holds the model of step {held} but its {RUN} names the model of step {step} (the run "
                  "stopped between saving a model and recording it)")


def read_history_lines(path: Path) -> tuple[list[dict], list[str]]:
    """(every whole eval point of a history.jsonl, notes on the lines left out). A torn last line is what a hard kill
    leaves mid-write; a damaged line before it (a bad sector, a hand edit) is skipped alone, so the whole points after
    it still count (stopping there would read a long run as one that ended early)."""
    points: list[dict] = []
    bad: list[int] = []
    lines = Path(path).read_text(encoding="utf-8", errors="replace").splitlines()
    last = max((i for i, line in enumerate(lines) if line.strip()), default=-1)
    for i, line in enumerate(lines):
        if not line.strip():
            continue
        try:
            point = json.loads(line)
        except PARSE_ERRORS:
            point = None
        if isinstance(point, dict):
            points.append(point)
        else:
            bad.append(i)
    notes = []
    torn = bool(bad) and bad[-1] == last
    damaged = bad[:-1] if torn else bad
    if damaged:
        where = ", ".join(str(i + 1) for i in damaged[:5]) + (", ..." if len(damaged) > 5 else "")
        notes.append(f"{Path(path).name}: {len(damaged)} damaged line{'s' if len(damaged) > 1 else ''} skipped "
                     f"(line{'s' if len(damaged) > 1 else ''} {where}); the other eval points are kept")
    if torn:
        notes.append(f"{Path(path).name} line {last + 1} (the last) is torn (hard kill?); kept the "
                     f"{len(points)} whole lines")
    return points, notes
