"""Read a run's curves from what people have: a loratune run directory, a Hugging Face Trainer output
directory (or its `trainer_state.json`), or a plain CSV. Everything becomes a `RunHistory`: eval points
in the loratune key format (docs/run-record.md), the run.json-like `meta`, the `config` (nested dict,
when known) and `notes` saying what was mapped or guessed. No torch, no transformers.
"""

from __future__ import annotations

import csv
import json
import math
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Mapping, Sequence

from loratune.errors import UserError


@dataclass(frozen=True)
class RunHistory:
    """One run's eval points and what we know about it."""

    name: str
    source: str  # "loratune" | "hf-trainer" | "csv" | "memory"
    points: tuple[dict, ...]
    meta: Mapping[str, Any] = field(default_factory=dict)
    config: Mapping[str, Any] = field(default_factory=dict)
    notes: tuple[str, ...] = ()
    path: str | None = None


def from_points(points: Sequence[dict], meta: Mapping[str, Any] | None = None,
                config: Mapping[str, Any] | None = None, name: str = "run") -> RunHistory:
    """Wrap in-memory eval points (e.g. from the training loop) as a RunHistory."""
    return RunHistory(name=name, source="memory", points=tuple(points), meta=dict(meta or {}),
                      config=dict(config or {}))


def load_run(path: str | Path) -> RunHistory:
    """Detect the input kind and read it. Raises UserError naming what was expected."""
    p = Path(path)
    if not p.exists():
        raise UserError(f"'{p}' does not exist",
                        "give a loratune run directory, a Trainer output directory, a trainer_state.json or a CSV")
    if p.is_dir():
        if (p / "history.jsonl").is_file():
            return read_loratune_run(p)
        state = _find_trainer_state(p)
        if state is not None:
            return read_trainer_state(state)
        if (p / "run.json").is_file():
            raise UserError(f"'{p}' has a run.json but no history.jsonl",
                            "the run wrote no eval point yet; wait for the first evaluation")
        raise UserError(f"'{p}' holds no history.jsonl and no trainer_state.json",
                        "give the output_dir of `loratune train` or of a Hugging Face Trainer run")
    name = p.name.lower()
    if name == "history.jsonl":
        return read_loratune_run(p.parent)
    if name.endswith((".csv", ".tsv", ".txt")):
        return read_csv(p)
    if name.endswith(".json"):
        return read_trainer_state(p)
    raise UserError(f"'{p}' is not a kind of input loratune can read",
                    "give a run directory, trainer_state.json, or a .csv of step/loss/metric columns")


# ---------------------------------------------------------------------------------------------
# loratune run directory
# ---------------------------------------------------------------------------------------------


def read_loratune_run(directory: str | Path) -> RunHistory:
    d = Path(directory)
    notes = []
    points = []
    lines = (d / "history.jsonl").read_text(encoding="utf-8").splitlines()
    for i, line in enumerate(lines):
        if not line.strip():
            continue
        try:
            points.append(json.loads(line))
        except json.JSONDecodeError:
            notes.append(f"history.jsonl line {i + 1} is torn (hard kill?); kept the {len(points)} whole lines")
            break
    meta: dict = {}
    if (d / "run.json").is_file():
        try:
            meta = json.loads((d / "run.json").read_text(encoding="utf-8"))
        except json.JSONDecodeError:
            notes.append("run.json is not valid JSON; labels, label counts and status are unknown")
    else:
        notes.append("no run.json: labels, label counts and status are unknown")
    config: dict = {}
    if (d / "config.yaml").is_file():
        import yaml

        try:
            config = yaml.safe_load((d / "config.yaml").read_text(encoding="utf-8")) or {}
        except yaml.YAMLError:
            notes.append("config.yaml is not valid YAML; runs cannot be compared by config")
    else:
        notes.append("no config.yaml: this run cannot be compared with others by config")
    return RunHistory(name=d.name, source="loratune", points=tuple(points), meta=meta,
                      config=config if isinstance(config, dict) else {}, notes=tuple(notes), path=str(d))


# ---------------------------------------------------------------------------------------------
# Hugging Face Trainer
# ---------------------------------------------------------------------------------------------

_VAL_NAMES = ("", "val", "validation", "valid", "eval", "dev")
_TRAIN_NAMES = ("train", "training", "train_eval", "train_subset")
_METRIC_ALIASES = {
    "loss": "loss", "accuracy": "accuracy", "acc": "accuracy",
    "macro_f1": "macro_f1", "f1_macro": "macro_f1", "f1": "macro_f1", "macro_f1_score": "macro_f1",
    "weighted_f1": "weighted_f1", "f1_weighted": "weighted_f1", "micro_f1": "micro_f1", "f1_micro": "micro_f1",
    "subset_accuracy": "subset_accuracy",
}
_EVAL_META = ("runtime", "samples_per_second", "steps_per_second")


def _find_trainer_state(d: Path) -> Path | None:
    if (d / "trainer_state.json").is_file():
        return d / "trainer_state.json"
    ckpts = []
    for sub in d.glob("checkpoint-*"):
        m = re.fullmatch(r"checkpoint-(\d+)", sub.name)
        if m and (sub / "trainer_state.json").is_file():
            ckpts.append((int(m.group(1)), sub / "trainer_state.json"))
    return max(ckpts)[1] if ckpts else None


def read_trainer_state(path: str | Path) -> RunHistory:
    """`trainer_state.json` -> eval points. Training log entries between two evals form one window
    (train/loss = mean of the logged losses, train/loss_std = their spread)."""
    p = Path(path)
    try:
        state = json.loads(p.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise UserError(f"'{p}' is not valid JSON ({exc})", "give the trainer_state.json a Trainer wrote") from None
    if not isinstance(state, dict) or not isinstance(state.get("log_history"), list):
        raise UserError(f"'{p}' has no `log_history` list", "give the trainer_state.json a Trainer wrote")
    notes: list[str] = []
    logs = [e for e in state["log_history"] if isinstance(e, dict) and "step" in e]
    train_logs = [e for e in logs if "loss" in e and not any(k.startswith("eval_") for k in e)
                  and "train_runtime" not in e]
    eval_logs = [e for e in logs if any(k.startswith("eval_") for k in e)]
    split_of, metric_notes = _eval_key_map(eval_logs)
    notes += metric_notes

    val_prefix = next((k[:-len("loss")] for k, v in split_of.items() if v == "val/loss"), "eval_")
    points: list[dict] = []
    prev = -1
    used = 0
    merged: dict[int, dict] = {}  # several eval sets log one entry each at the same step
    for e in eval_logs:
        merged.setdefault(int(e["step"]), {}).update(e)
    for ev in (merged[k] for k in sorted(merged)):
        window = [e for e in train_logs if prev < e["step"] <= ev["step"]]
        used += len(window)
        pt = {"step": int(ev["step"])}
        if _fin(ev.get("epoch")) is not None:
            pt["epoch"] = float(ev["epoch"])
        pt.update(_window(window))
        for key, value in ev.items():
            if key in split_of:
                pt[split_of[key]] = _json_num(value)
        n = _estimate_n(ev, val_prefix)
        if n is not None and "val/n" not in pt:
            pt["val/n"] = n
        points.append(pt)
        prev = ev["step"]
    tail = [e for e in train_logs if e["step"] > prev]
    if tail and eval_logs:  # training after the last eval: one more point with train keys only
        pt = {"step": int(tail[-1]["step"]), **_window(tail)}
        if _fin(tail[-1].get("epoch")) is not None:
            pt["epoch"] = float(tail[-1]["epoch"])
        points.append(pt)
    if not eval_logs:
        notes.append("no evaluation entries (eval_*) in log_history: only the train loss can be diagnosed")
        for e in train_logs:  # every log entry is its own window
            pt = {"step": int(e["step"]), **_window([e])}
            if _fin(e.get("epoch")) is not None:
                pt["epoch"] = float(e["epoch"])
            points.append(pt)
    if eval_logs and any("val/n" in q for q in points):
        notes.append("val size estimated as eval_runtime x eval_samples_per_second")
    if train_logs and len(train_logs) > len(eval_logs):
        notes.append("train/loss_std is the spread of the logged losses (each a mean over logging_steps), "
                     "not of single steps")

    meta: dict[str, Any] = {}
    cfg_path = p.parent / "config.json"
    if not cfg_path.is_file() and p.parent.name.startswith("checkpoint-"):
        cfg_path = p.parent.parent / "config.json"
    if cfg_path.is_file():
        try:
            mcfg = json.loads(cfg_path.read_text(encoding="utf-8"))
            id2label = mcfg.get("id2label") or {}
            if id2label:
                meta["labels"] = [id2label[k] for k in sorted(id2label, key=lambda x: int(x))]
            if mcfg.get("problem_type") == "multi_label_classification":
                meta["task"] = "multi_label"
            meta["model"] = {"model_type": mcfg.get("model_type"), "num_layers": mcfg.get("num_hidden_layers")}
        except (json.JSONDecodeError, ValueError, TypeError):
            notes.append(f"{cfg_path.name} unreadable: number of classes unknown")
    else:
        notes.append("no model config.json next to trainer_state.json: number of classes unknown")
    meta["steps_done"] = state.get("global_step")
    meta["steps_planned"] = state.get("max_steps")
    config: dict[str, Any] = {}
    ad = p.parent / "adapter_config.json"
    if ad.is_file():
        try:
            a = json.loads(ad.read_text(encoding="utf-8"))
            config["adapter"] = {k: a.get(k) for k in ("r", "lora_alpha", "lora_dropout", "target_modules")}
        except json.JSONDecodeError:
            pass
    notes.append("Trainer runs carry no loratune config.yaml: comparisons across runs use adapter_config.json "
                 "only" if config else "Trainer runs carry no loratune config.yaml: no comparison across runs")
    name = p.parent.name if p.name == "trainer_state.json" else p.stem
    return RunHistory(name=name, source="hf-trainer", points=tuple(points), meta=meta, config=config,
                      notes=tuple(notes), path=str(p))


def _eval_key_map(eval_logs: Sequence[dict]) -> tuple[dict[str, str], list[str]]:
    """eval_* keys -> loratune keys. `eval_loss` -> val/loss; with several eval sets
    (`eval_dataset={"val": ..., "train": ...}`), `eval_train_loss` -> train_eval/loss."""
    keys = {k for e in eval_logs for k in e if k.startswith("eval_")}
    prefixes = {k[len("eval_"):-len("loss")].rstrip("_") for k in keys if k.endswith("loss")}
    out: dict[str, str] = {}
    notes = []
    for key in sorted(keys):
        rest = key[len("eval_"):]
        name = next((pfx for pfx in sorted(prefixes, key=len, reverse=True)
                     if pfx and rest.startswith(pfx + "_")), "")
        metric = rest[len(name) + 1:] if name else rest
        if metric in _EVAL_META:
            continue
        if name in _VAL_NAMES:
            split = "val"
        elif name in _TRAIN_NAMES:
            split = "train_eval"
        else:
            split = f"eval_{name}"
        mapped = _METRIC_ALIASES.get(metric, metric)
        out[key] = f"{split}/{mapped}"
        if metric == "f1":
            notes.append(f"{key} taken as macro-F1 (compute_metrics should use average='macro')")
    if eval_logs:
        shown = ", ".join(f"{k} -> {v}" for k, v in sorted(out.items()))
        notes.append(f"mapped Trainer keys: {shown}")
    return out, notes


def _window(entries: Sequence[dict]) -> dict:
    out: dict[str, Any] = {}
    losses = [e.get("loss") for e in entries]
    if not losses:
        return out
    finite = [float(x) for x in losses if _fin(x) is not None]
    if len(finite) < len(losses):  # a NaN in the window makes the window non-finite (recorded as null)
        out["train/loss"] = None
    elif finite:
        out["train/loss"] = sum(finite) / len(finite)
        out["train/loss_first"] = finite[0]
        out["train/loss_last"] = finite[-1]
        if len(finite) >= 2:
            m = out["train/loss"]
            out["train/loss_std"] = math.sqrt(sum((x - m) ** 2 for x in finite) / len(finite))
    g = [e.get("grad_norm") for e in entries if "grad_norm" in e]
    if g:
        gf = [float(x) for x in g if _fin(x) is not None]
        out["train/grad_norm"] = sum(gf) / len(gf) if len(gf) == len(g) else None
    lr = [e.get("learning_rate") for e in entries if _fin(e.get("learning_rate")) is not None]
    if lr:
        out["lr"] = float(lr[-1])
    return out


def _estimate_n(ev: dict, prefix: str) -> int | None:
    rt, sps = _fin(ev.get(f"{prefix}runtime")), _fin(ev.get(f"{prefix}samples_per_second"))
    if rt and sps:
        return int(round(rt * sps))
    return None


def _fin(v: Any) -> float | None:
    if isinstance(v, bool) or not isinstance(v, (int, float)):
        return None
    return float(v) if math.isfinite(float(v)) else None


def _json_num(v: Any) -> Any:
    if isinstance(v, float) and not math.isfinite(v):
        return None  # the run-record convention: non-finite as null
    return v


# ---------------------------------------------------------------------------------------------
# CSV
# ---------------------------------------------------------------------------------------------

# normalised column name -> loratune key. Normalising: lower case, every non-alphanumeric run -> "_".
_CSV_COLUMNS = {
    "step": ["step", "steps", "global_step", "iteration", "iter", "it", "update", "updates"],
    "epoch": ["epoch", "epochs"],
    "train/loss": ["train_loss", "loss", "training_loss", "trn_loss", "train_loss_mean"],
    "val/loss": ["val_loss", "eval_loss", "validation_loss", "valid_loss", "dev_loss", "val_loss_mean"],
    "val/macro_f1": ["val_macro_f1", "eval_macro_f1", "macro_f1", "val_f1", "eval_f1", "f1", "f1_macro",
                     "val_f1_macro", "eval_f1_macro", "validation_f1", "valid_f1", "dev_f1"],
    "val/accuracy": ["val_accuracy", "val_acc", "eval_accuracy", "eval_acc", "accuracy", "acc",
                     "validation_accuracy", "valid_acc", "dev_acc"],
    "train_eval/macro_f1": ["train_macro_f1", "train_f1", "train_f1_macro", "train_eval_macro_f1"],
    "train_eval/accuracy": ["train_accuracy", "train_acc", "train_eval_accuracy"],
    "train_eval/loss": ["train_eval_loss"],
    "val/n": ["val_n", "eval_n", "val_size"],
    "lr": ["lr", "learning_rate"],
    "train/loss_std": ["train_loss_std"],
    "train/grad_norm": ["grad_norm", "train_grad_norm"],
}


def _norm(name: str) -> str:
    return re.sub(r"[^a-z0-9]+", "_", name.strip().lower()).strip("_")


def read_csv(path: str | Path) -> RunHistory:
    p = Path(path)
    text = p.read_text(encoding="utf-8-sig")
    if not text.strip():
        raise UserError(f"'{p}' is empty", "give a CSV with a header row: step, train_loss, val_loss, val_f1")
    try:
        dialect = csv.Sniffer().sniff(text.splitlines()[0], delimiters=",;\t|")
    except csv.Error:
        dialect = csv.excel
    rows = list(csv.reader(text.splitlines(), dialect))
    header, body = rows[0], [r for r in rows[1:] if any(cell.strip() for cell in r)]
    lookup = {alias: key for key, aliases in _CSV_COLUMNS.items() for alias in aliases}
    mapping: dict[int, str] = {}
    for i, col in enumerate(header):
        n = _norm(col)
        key = lookup.get(n)
        if key is None and re.fullmatch(r"(train|val|train_eval)/[a-z_0-9/]+", col.strip()):
            key = col.strip()  # already a loratune key
        if key is not None and key not in mapping.values():
            mapping[i] = key
    found = set(mapping.values())
    if not found & {"train/loss", "val/loss", "val/macro_f1", "val/accuracy"}:
        raise UserError(
            f"'{p}': no loss or metric column among {header}",
            "name columns like step, train_loss, val_loss, val_f1 (or val_accuracy)")
    notes = ["CSV columns mapped: " + ", ".join(f"{header[i]!r} -> {k}" for i, k in mapping.items())]
    unused = [h for i, h in enumerate(header) if i not in mapping]
    if unused:
        notes.append(f"CSV columns ignored: {', '.join(map(repr, unused))}")
    if any(_norm(header[i]) in ("f1", "val_f1", "eval_f1", "validation_f1", "valid_f1", "dev_f1")
           for i in mapping):
        notes.append("an F1 column without 'macro' was taken as macro-F1")
    points = []
    bad_cells = 0
    for r_i, row in enumerate(body):
        pt: dict[str, Any] = {}
        for i, key in mapping.items():
            cell = row[i].strip() if i < len(row) else ""
            if cell == "":
                continue
            try:
                v = float(cell)
            except ValueError:
                bad_cells += 1
                continue
            if key == "step":
                pt[key] = int(v)
            elif key == "val/n":
                pt[key] = int(v)
            else:
                pt[key] = v if math.isfinite(v) else None
        if "step" not in pt:
            pt["step"] = r_i
        points.append(pt)
    if "step" not in found:
        notes.append("no step column: row numbers used as steps")
    if bad_cells:
        notes.append(f"{bad_cells} non-numeric cells ignored")
    if not (found & {"val/n"}):
        notes.append("no val size column (val_n): no standard error, so noise checks are skipped")
    return RunHistory(name=p.stem, source="csv", points=tuple(points), meta={}, config={},
                      notes=tuple(notes), path=str(p))
