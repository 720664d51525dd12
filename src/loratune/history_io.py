"""Read a run's curves from what people have: a loratune run directory, a Hugging Face Trainer output
directory (or its `trainer_state.json`), or a plain CSV. Everything becomes a `RunHistory`: eval points
in the loratune key format (docs/run-record.md), the run.json-like `meta`, the `config` (nested dict,
when known) and `notes` saying what was mapped or guessed. No torch, no transformers.
"""

from __future__ import annotations

import bisect
import csv
import itertools
import json
import math
import os
import re
import statistics
from array import array
from dataclasses import dataclass, field, replace
from decimal import Decimal
from fractions import Fraction
from html.parser import HTMLParser
from pathlib import Path
from typing import Any, Callable, Iterable, Iterator, Mapping, Sequence

from loratune.errors import PARSE_ERRORS, UserError, parse_problem
from loratune.features import (IMPROVE_MIN_REL, LR_NEXT_KEY, NO_VAL_SIZE_NOISE, TRAIN_LOG_SPLIT, has_binomial_se,
                               is_eval_point, safe_mean)
from loratune.store import (CALLBACK_RECORD_SOURCE, CONFIG_TEXT, HISTORY, PER_CLASS, RECORD_TEXT, RUN, STATUS_TEXT,
                            TB_TEXT_SUFFIX, TENSORBOARD_DIR, RunStore, check_name_length, is_callback_record,
                            lr_logs_next_step, read_history_lines, trainer_logs_next_lr, unfenced)


@dataclass(frozen=True)
class Fact:
    """A knob or property of a run read from its files, with the file (or estimate) it came from."""

    value: Any
    source: str


@dataclass(frozen=True)
class RunHistory:
    """One run's eval points and what we know about it."""

    name: str
    # "loratune" | "hf-trainer" | "hf-trainer callback" | "trl" | "tensorboard" | "notebook" | "csv" | "memory"
    source: str
    points: tuple[dict, ...]
    meta: Mapping[str, Any] = field(default_factory=dict)
    config: Mapping[str, Any] = field(default_factory=dict)
    notes: tuple[str, ...] = ()
    path: str | None = None
    facts: Mapping[str, Fact] = field(default_factory=dict)  # name -> Fact (Trainer / TRL / TensorBoard runs)
    # the train loss as logged (a Trainer / TRL / TensorBoard log's every logging_steps entry, in step order, each
    # (step, loss), None where it was non-finite): the points hold only each eval window's mean, and a run that
    # evaluated once has one train point of its 100 logs (the report's train curve is drawn from this)
    train_log: tuple[tuple[float, float | None], ...] = ()


def from_points(points: Sequence[dict], meta: Mapping[str, Any] | None = None,
                config: Mapping[str, Any] | None = None, name: str = "run") -> RunHistory:
    """Wrap in-memory eval points (e.g. from the training loop) as a RunHistory."""
    return RunHistory(name=name, source="memory", points=tuple(points), meta=dict(meta or {}),
                      config=dict(config or {}))


NOTEBOOK_TABLE = re.compile(r"^(?P<file>.+\.ipynb)#(?P<table>-?\d+)$", re.IGNORECASE)  # NOTEBOOK.ipynb#N: table N


CALLBACK_RECORD_DIR = "loratune"  # where LoratuneCallback writes its record inside a Trainer's output_dir
# how a Trainer log's reading says it has no end entry (a partial run); the callback's record leaves it out
PARTIAL_LOG_NOTE = "the log has no end-of-training entry (train_runtime): the run was still going or died"


# a Trainer checkpoint's folder: checkpoint-<global step> inside the run's output_dir, nothing else (a
# `best/checkpoint-200-lr2` a person named is a run folder of its own, not checkpoint 200 of `best/`)
CHECKPOINT_FOLDER = re.compile(r"checkpoint-(\d+)")
# ...and SetFit's Trainer's, `checkpoints/step_60`, known by the config_setfit.json it saves in each: a `step_1`,
# `step_2` a person named (two runs of a curriculum, each with its trainer_state.json) are runs of their own, not
# checkpoints of one run (read so, both were named after their parent and the second dropped as the same run)
SETFIT_CHECKPOINT_FOLDER = re.compile(r"step_(\d+)")
SETFIT_CONFIG = "config_setfit.json"
CHECKPOINT_GLOBS = ("checkpoint-*", "step_*")


def checkpoint_step(folder: str | Path) -> int | None:
    """The step of a Trainer checkpoint folder (`checkpoint-60` -> 60) or a SetFit one (`step_60` holding
    SETFIT_CONFIG); None for any other folder."""
    m = CHECKPOINT_FOLDER.fullmatch(Path(folder).name)
    if m is None and (Path(folder) / SETFIT_CONFIG).is_file():
        m = SETFIT_CHECKPOINT_FOLDER.fullmatch(Path(folder).name)
    return int(m.group(1)) if m else None


def checkpoint_folders(d: Path) -> list[tuple[int, Path]]:
    """(step, folder) of each checkpoint folder in `d` (CHECKPOINT_GLOBS)."""
    return [(step, q) for pattern in CHECKPOINT_GLOBS for q in d.glob(pattern)
            if (step := checkpoint_step(q)) is not None]


def folder_name(p: str | Path) -> str:
    """The name of the folder `p` is, also for `.`, `..` or `x/..` (whose Path.name is '' or '..'): a run read as
    `loratune report .` is named after its folder. Not resolved: a symlinked run keeps the name it was given."""
    return Path(os.path.abspath(p)).name


def run_name(h: RunHistory, path: str | Path) -> str:
    """The name show and report give the run `h` read from `path`, as diagnose names it (h.name) where the reader
    names it by a rule of its own: a LoratuneCallback's record (its folder is always `loratune`: the output_dir) and a
    TensorBoard log (read_tensorboard: `out/runs/<date_host>` is run `out`, given as `out`, `out/runs` or the date
    folder). Any other run is named after the folder given (a file: `folder/file`)."""
    p = Path(path)
    if is_callback_record(h.meta) or h.source == "tensorboard":
        return h.name
    return folder_name(p) if p.is_dir() else f"{folder_name(p.parent)}/{p.name}"


def load_run(path: str | Path) -> RunHistory:
    """Detect the input kind and read it. Raises UserError naming what was expected. `NOTEBOOK.ipynb#N` reads the
    notebook's Nth Trainer progress table (1-based, as the reader's note counts them) instead of its last. A file
    it cannot read (permissions, not UTF-8 text) is a UserError naming the file, whichever reader met it."""
    try:
        return _load_run(path)
    except PermissionError as e:
        raise UserError(f"cannot read '{e.filename or path}': permission denied",
                        "make the file readable by this user (chmod a+r), or run as its owner") from None
    except UnicodeDecodeError as e:
        raise UserError(f"'{path}' is not UTF-8 text ({e.encoding} could not decode byte {e.start})",
                        "save it as UTF-8 (e.g. `iconv -f utf-16 -t utf-8 IN > OUT`, or Excel's 'CSV UTF-8')"
                        ) from None


def check_run_path(path: str | Path) -> None:
    """A RUN argument (`show`, `report`, `diagnose`) whose path has a name no file system takes: said before any stat,
    which the OS refuses (ENAMETOOLONG)."""
    check_name_length(path, "RUN", "no file or folder can have such a name: give the path of a run (its folder or "
                      "file) or a study directory", last="file or folder")


def _load_run(path: str | Path) -> RunHistory:
    check_run_path(path)
    m = NOTEBOOK_TABLE.match(str(path))
    if m and not Path(path).exists() and Path(m["file"]).is_file():
        n = int(m["table"])
        if n < 1:
            raise UserError(f"'{path}': tables are counted from 1", f"give {m['file']}#1 for the first table")
        run = read_notebook(m["file"], table=n - 1)
        # named and placed as given: two tables of one notebook are two runs (`two#1`, `two#2`), not `two` twice
        return replace(run, name=f"{run.name}#{n}", path=str(path))
    p = Path(path)
    if (not p.exists() and (m := re.match(r"^(?P<file>.+\.ipynb)#(?P<table>.*)$", str(path), re.IGNORECASE))
            and Path(m["file"]).is_file()):
        raise UserError(f"'{path}': '{m['table']}' is not a table number (NOTEBOOK.ipynb#N, N a whole number)",
                        f"give {m['file']}#1 for the first table, or {m['file']} for the last one evaluated")
    if not p.exists():
        raise UserError(f"'{p}' does not exist",
                        "give a loratune run directory, a Trainer output directory, a trainer_state.json, a Jupyter "
                        "notebook (.ipynb) or a CSV")
    if p.is_dir():
        if (p / "history.jsonl").is_file():
            return read_loratune_run(p)
        if p.name == TENSORBOARD_DIR and (p.parent / "history.jsonl").is_file() and find_event_files(p):
            return _run_of_its_log(p)
        if (p / "run.json").is_file():
            try:
                status = RunStore(p).read_run().get("status")  # `running` whose process died reads `died`
            except Exception:
                status = None
            if status in (None, "running"):
                raise UserError(f"'{p}' has a run.json but no history.jsonl",
                                "the run wrote no eval point yet; wait for the first evaluation")
            raise UserError(f"'{p}' has no eval point: the run ended (status {status}) before its first evaluation",
                            "nothing to diagnose; train it again (see its run.json `reason`)")
        record = p / CALLBACK_RECORD_DIR
        stale_note = None  # the callback's record is of an earlier run than the Trainer's files: why it was not read
        if (record / "history.jsonl").is_file():
            # LoratuneCallback's record of this run: every evaluation up to the end, where a checkpoint's state
            # stops at its save (and a run with save_strategy='no' has none); read before the Trainer's own state
            # too when it corrected the logged losses (summed over gradient accumulation: the files read 3 x ln 4
            # as an explosion)
            scaled = record_loss_scale(p) is not None
            top = (p / "trainer_state.json").is_file()
            if not top or scaled:
                stale = _stale_record(record, _find_trainer_state(p)[0])
                if stale is None:
                    run = read_loratune_run(record)
                    why = ("its train losses were read as the mean of their accumulation steps, which the Trainer's "
                           "files cannot say" if top else "no trainer_state.json at the top of the run folder")
                    return replace(run, notes=run.notes + (f"read the loratune callback's record ({record}): {why}",))
                stale_note = stale
        state, why = _find_trainer_state(p)
        events = find_event_files(p)
        if state is not None:
            run = read_trainer_state(state)
            if why:
                run = replace(run, notes=run.notes + (why,))
            if stale_note:
                run = replace(run, notes=run.notes + (stale_note,))
            if events and state.parent != p:  # only a checkpoint's state: the event log may go further
                tb = read_tensorboard(p)
                if (tb.points and run.points and tb.points[-1]["step"] > run.points[-1]["step"]
                        and tb.points[0]["step"] <= run.points[0]["step"]):
                    return replace(tb, notes=tb.notes + (
                        f"the TensorBoard log reaches step {tb.points[-1]['step']}, the newest checkpoint's "
                        f"trainer_state.json only {run.points[-1]['step']}: read the TensorBoard log",))
                if tb.points and run.points and tb.points[-1]["step"] > run.points[-1]["step"]:
                    return replace(run, notes=run.notes + (
                        f"the TensorBoard log reaches step {tb.points[-1]['step']} but starts at step "
                        f"{tb.points[0]['step']}, after this state's first eval point (step {run.points[0]['step']}):"
                        " read the checkpoint's trainer_state.json, the whole run up to its save",))
            return run
        if events:
            return read_tensorboard(p)
        raise UserError(f"'{p}' holds no history.jsonl, trainer_state.json or TensorBoard event file",
                        "give the output_dir of `loratune train` or of a Hugging Face Trainer / TRL run, or its "
                        "TensorBoard logging_dir")
    name = p.name.lower()
    if name == "history.jsonl":
        return read_loratune_run(p.parent)
    if name == RUN:  # a loratune run's record (no Trainer names its state so): read its folder, as above
        return load_run(p.parent)
    if name.endswith(".ipynb"):
        return read_notebook(p)
    if name.startswith("events.out.tfevents"):
        if p.parent.name == TENSORBOARD_DIR and (p.parent.parent / "history.jsonl").is_file():
            return _run_of_its_log(p)  # an event file of the log inside a run: the run, as its folder reads
        return read_tensorboard(p)
    if name.endswith((".csv", ".tsv", ".txt")):
        return read_csv(p)
    if name.endswith(".json"):
        return read_trainer_state(p)
    raise UserError(f"'{p}' is not a kind of input loratune can read",
                    "give a run directory, trainer_state.json, a TensorBoard event file, a Jupyter notebook (.ipynb) "
                    "with the Trainer's progress table, or a .csv of "
                    "step/loss/metric columns")


def _run_of_its_log(log: Path) -> RunHistory:
    """The loratune run whose TensorBoard log (RUN/tensorboard, or an event file in it) `log` is: the run itself holds
    the same numbers and what the events leave out (the per-class keys). Its folder is cleared when a run starts
    (TensorBoardWriter), so what it holds is of this run."""
    run_dir = log.parent if log.is_dir() else log.parent.parent
    run = read_loratune_run(run_dir)
    return replace(run, notes=run.notes + (f"{log} is the TensorBoard log of the loratune run {run_dir}: read from "
                                           "its history.jsonl and run.json (the same numbers)",))


# ---------------------------------------------------------------------------------------------
# loratune run directory
# ---------------------------------------------------------------------------------------------


def read_loratune_run(directory: str | Path) -> RunHistory:
    d = Path(directory)
    points, notes = read_history_lines(d / HISTORY)
    meta: dict = {}
    if (d / "run.json").is_file():
        try:  # the parse alone: a value of a valid record that reads wrong is no invalid JSON
            loaded = json.loads((d / "run.json").read_text(encoding="utf-8"))
        except PARSE_ERRORS:
            notes.append("run.json is not valid JSON; labels, label counts and status are unknown")
        else:
            if isinstance(loaded, dict):
                from loratune.store import with_liveness  # `running` with a dead process -> status `died`, partial

                meta = with_liveness(loaded, d)
            else:  # valid JSON but a list, string, number or null: no field of it can be read
                notes.append("run.json is not a JSON object; labels, label counts and status are unknown")
    else:
        notes.append("no run.json: labels, label counts and status are unknown")
    callback = is_callback_record(meta)
    if isinstance(meta.get(BEST_CHECKPOINT), str):
        meta[BEST_CHECKPOINT] = best_checkpoint(meta[BEST_CHECKPOINT], d)
    if callback and isinstance(meta.get("notes"), list):
        # what the callback's reading of the Trainer's log said: the same notes as the Trainer's own files give
        notes[:0] = [n for n in meta["notes"] if isinstance(n, str)]
    config: dict = {}
    if (d / "config.yaml").is_file():
        import yaml

        try:
            config = yaml.safe_load((d / "config.yaml").read_text(encoding="utf-8")) or {}
        except (yaml.YAMLError, *PARSE_ERRORS):
            notes.append("config.yaml is not valid YAML; runs cannot be compared by config")
    elif callback and isinstance(meta.get("config"), dict):
        # LoratuneCallback writes no config.yaml: the knobs it read from the live Trainer and model are in run.json
        # (read as a trainer_state.json's are), so its runs join a knob comparison
        config = meta["config"]
    else:
        notes.append("no config.yaml: this run cannot be compared with others by config")
    facts: dict[str, Fact] = {}
    if callback and isinstance(meta.get("facts"), dict):  # what the callback read, each with its source
        facts.update({k: Fact(f["value"], str(f.get("source", "run.json"))) for k, f in meta["facts"].items()
                      if isinstance(f, dict) and "value" in f})
    facts.update(run_folder_facts(d))
    if lr_logs_next_step(meta):  # an older record's `lr` at step s is step s + 1's rate: read as that (lr_samples)
        points = [{(LR_NEXT_KEY if k == "lr" and (p.get("step") or 0) > 0 else k): v for k, v in p.items()}
                  for p in points]
    # a callback record is a Trainer run: named after its output_dir (every record's own folder is `loratune`), and
    # not a `loratune train` run (no step-0 eval, no saved_model bookkeeping: show and the report key on the source)
    name = folder_name(d.parent) if callback and folder_name(d) == CALLBACK_RECORD_DIR else folder_name(d)
    return RunHistory(name=name, source=CALLBACK_RECORD_SOURCE if callback else "loratune", points=tuple(points),
                      meta=meta, config=config if isinstance(config, dict) else {}, notes=tuple(notes), path=str(d),
                      facts=facts)


def run_folder_facts(d: Path) -> dict[str, Fact]:
    """The facts a loratune run's folder holds beside run.json: the peft names its semantic groups resolved to
    (adapter/adapter_config.json), what a Trainer run's adapter_config says."""
    ad = d / "adapter" / "adapter_config.json"
    if not ad.is_file():
        return {}
    try:
        targets = json.loads(ad.read_text(encoding="utf-8")).get("target_modules")
    except (*PARSE_ERRORS, UnicodeDecodeError, AttributeError):  # not JSON, or not an object
        return {}
    if not isinstance(targets, (list, str)):
        return {}
    return {"target_modules": Fact(sorted(targets) if isinstance(targets, list) else targets,
                                   "adapter/adapter_config.json")}




# ---------------------------------------------------------------------------------------------
# Hugging Face Trainer, TRL, TensorBoard
# ---------------------------------------------------------------------------------------------

_VAL_NAMES = ("", "val", "validation", "valid", "eval", "dev")
_TRAIN_NAMES = ("train", "training", "train_eval", "train_subset")
_METRIC_ALIASES = {
    "loss": "loss", "accuracy": "accuracy", "acc": "accuracy",
    "macro_f1": "macro_f1", "f1_macro": "macro_f1", "f1": "macro_f1", "macro_f1_score": "macro_f1",
    # scikit-learn's accuracy_score, as a compute_metrics returning {"accuracy_score": accuracy_score(...)} logs it
    # (its f1_score is not read: _F1_AVERAGING_UNKNOWN)
    "accuracy_score": "accuracy",
    "weighted_f1": "weighted_f1", "f1_weighted": "weighted_f1", "micro_f1": "micro_f1", "f1_micro": "micro_f1",
    "subset_accuracy": "subset_accuracy", "mean_token_accuracy": "token_accuracy",
    # a generation run's token-overlap score (protocol 9): ROUGE-L as the HF summarization examples
    # (`rougeL`) and the ChatGLM / GLM finetune demos (`rouge-l`) log it
    "rougeL": "rouge_l", "rouge-l": "rouge_l", "rouge_l": "rouge_l",
}
# a score logged on a 0-100 scale (the HF examples and the ChatGLM demos multiply ROUGE by 100, the question-answering
# examples F1 and exact match, many notebooks accuracy): read as 0..1, the scale every metric threshold is in; every
# metric above is a share, which never exceeds 1, so one value above it names the scale
_PERCENT_METRICS = tuple(sorted(set(_METRIC_ALIASES.values()) - {"loss"}))
# the metrics only a classifier logs: a share of rows (accuracy, F1), never a share of tokens or an overlap score
# (has_binomial_se). One on an eval set is a classifier's, whatever bare `*Model` its config names (BARE_MODEL_SUFFIX)
CLASSIFIER_METRICS = tuple(m for m in _PERCENT_METRICS if has_binomial_se(m))
# scikit-learn's function name for F1, which says nothing of its averaging: not read as macro-F1, said in a note. Its
# default is average='binary', the positive class's F1 (fold L's AssilZ: 0.000 and 0.668 at accuracy 0.50 on a
# balanced binary set, a one-class model either way), no macro-F1 and no share of rows
_F1_AVERAGING_UNKNOWN = "f1_score"
# an error rate (lower is better), as the HF speech-recognition examples log it (`wer`, `cer`): read as the share
# right, 1 - rate, under this name (the val metric every rule reads rises as the run learns); the rate itself is kept.
# Its scale: a rate is a share, near or below 1 (insertions can push an untrained model's above it); the examples
# that multiply it by 100 log values far above 1, so a median above 1 names the 0-100 scale
_ERROR_RATES = {"wer": "word_accuracy", "cer": "char_accuracy"}
# eval keys that describe the evaluation, not the eval set's scores: its cost, and TRL's `num_tokens` (the running
# count of *training* tokens, logged again with every evaluation)
_EVAL_META = ("runtime", "samples_per_second", "steps_per_second", "num_tokens")
# keys only TRL's trainers log (SFTTrainer: token accuracy, token counts). Not its `entropy`: TRL logs it only beside
# these two (from 0.20 on), and a classifier's compute_metrics may name its prediction entropy so (a tiny BERT's
# `eval_entropy` made its log a TRL SFT log: no class count, no summed-loss check)
_TRL_KEYS = ("mean_token_accuracy", "num_tokens")
# What kind of TRL run a log is, by the keys its trainer logs (TRL 1.16's sources), first match wins: a RewardTrainer
# (a sequence classifier scoring pairs: mean/min/max reward), a pairwise or unpaired preference trainer (DPO, IPO, RPO,
# CPO, ORPO, KTO: reward margins, chosen rewards, log-probs, ORPO's NLL and log-odds; KTO logs a `kl` beside them), an
# online RL trainer (GRPO, RLOO, PPO: a reward AND a KL / completion lengths / reward spread; its loss ~ beta x KL starts
# at 0 and rises by design), and any other (SFTTrainer, DistillationTrainer: _TRL_KEYS, token accuracy and counts;
# not `entropy`, see above). A kind is read only when each of its groups has a key in the log: one generic name (a
# classifier's own `kl` or `reward` metric, a distillation run's completion length) marks no TRL run. Each is a run of a language model or a reward
# model, never a fresh classifier head: no class count from its first loss, whether or not the newer _TRL_KEYS are
# logged beside (an ORPO log has none of them).
TRL_KINDS = (("reward-model", "reward-model", (("mean_reward", "min_reward", "max_reward"),)),
             ("preference", "causal-lm", (("rewards/margins", "rewards/chosen", "rewards/rejected", "logps/chosen",
                                           "logps/rejected", "nll_loss", "log_odds_ratio", "log_odds_chosen"),)),
             ("rl", "causal-lm", (("reward", "objective/rlhf_reward", "objective/scores"),
                                  ("kl", "objective/kl", "completions/mean_length", "completion_length", "reward_std"))),
             ("sft", "causal-lm", (_TRL_KEYS,)))


# the TRL kinds that train a classification head (whose **kwargs forward reads to the callback as a model whose train
# losses the Trainer sums over gradient-accumulation micro-batches: integrations.trainer._sums_micro_batch_losses)
# while their trainer has the Trainer divide each micro-batch's loss by the accumulation steps: TRL 1.16's
# RewardTrainer sets `loss_is_scaled_for_ga = False` (reward_trainer.py), so transformers' training_step divides
# whatever the model. (DPO, KTO and RLOO set it too, but train causal LMs, whose losses the callback never scales.)
GA_DIVIDED_TRL_KINDS = ("reward-model",)


def trainer_divides_losses(keys: Iterable[str]) -> bool:
    """Whether a log with these keys is a TRL trainer's whose train losses the Trainer logged as means though its
    model is a classification head (GA_DIVIDED_TRL_KINDS): the callback drops its loss scale at such a log (a
    RewardTrainer with accumulation 3 logged 0.95 -> 0.072 and the callback's record held 0.317, a third of it)."""
    kind = _trl_kind(keys)
    return kind is not None and kind[0] in GA_DIVIDED_TRL_KINDS


def _trl_kind(keys: Iterable[str]) -> tuple[str, str, list[str]] | None:
    """(kind, task, the keys found) of a TRL run from its log's keys (a trainer_state's `eval_rewards/margins` or an
    export's `eval/rewards/margins`, `train/kl` columns alike), or None for no TRL trainer's keys."""
    bare = {}
    for k in keys:
        b = k.strip()
        b = b.split("/", 1)[1] if b.split("/", 1)[0] in ("train", "eval") and "/" in b else b
        bare.setdefault(b.removeprefix("eval_").removeprefix("train_"), k.strip())
    for kind, task, groups in TRL_KINDS:
        found = [[m for m in marks if m in bare] for marks in groups]
        if all(found):
            return kind, task, [m for group in found for m in group]
    return None
# What a side file says the model was trained to do: peft's `task_type` in adapter_config.json, and the suffix of
# the transformers architecture in config.json (plus its problem_type). A language model's, a seq2seq model's or a
# regression's loss has no ln(classes) reference, so no class count is read for them from id2label or the first loss.
# an embedding model's run: sentence-transformers' SentenceTransformerTrainer or SetFit's body training. Its loss
# (MultipleNegativesRanking, CosineSimilarity, contrastive) has no ln(classes) start, so it is no classifier: an STS run
# read as a 3-class head from its first loss (1.11 ~ ln 3) and a slow one got lr x2 "as a classifier"
EMBEDDING_TASK = "sentence-embedding"
# the files sentence-transformers (modules.json, config_sentence_transformers.json) and SetFit (config_setfit.json)
# save beside the encoder's config.json: the folder is an embedding model's, whatever that config's architecture
EMBEDDING_SIDE_FILES = ("modules.json", "config_sentence_transformers.json", SETFIT_CONFIG)
PEFT_TASK_TYPES = {"CAUSAL_LM": "causal-lm", "SEQ_2_SEQ_LM": "seq2seq", "SEQ_CLS": "single_label",
                   "TOKEN_CLS": "token-classification", "QUESTION_ANS": "question-answering"}
ARCH_TASKS = (("ForCausalLM", "causal-lm"), ("LMHeadModel", "causal-lm"), ("ForConditionalGeneration", "seq2seq"), ("ForSeq2SeqLM", "seq2seq"),
              ("ForSequenceClassification", "single_label"), ("ForTokenClassification", "token-classification"),
              ("ForQuestionAnswering", "question-answering"), ("ForMaskedLM", "masked-lm"), ("MTModel", "seq2seq"),
              # encoder-decoders whose class ends in a bare `Model` but that train a decoder's token loss:
              # Vision/Speech/EncoderDecoderModel (TrOCR, Donut) and Whisper's (read as embedding models before)
              ("EncoderDecoderModel", "seq2seq"), ("WhisperModel", "seq2seq"))
# a saved config.json whose architecture is a bare `*Model` (BertModel, MPNetModel) and no head of ARCH_TASKS: the
# encoder alone, as sentence-transformers and SetFit save it (save_pretrained writes the class trained). Only a saved
# file's: a live model's config still names the checkpoint it was loaded from, and a notebook's `AutoModel` / `PeftModel`
# names no head (read so, 24 notebook runs of the bench corpus changed route or verdict)
# ...unless the run says it classifies: a config id2label of its own names (transformers writes one only where the
# labels are not its default LABEL_0..), per-class keys in the log, or a share-of-rows classification metric (accuracy,
# F1) of an eval (CLASSIFIER_METRICS). A custom head on a BertModel, a `RobertaClassificationModel`, a peft adapter on a
# LlamaModel base logging eval_accuracy read as embedding runs (id2label's 3 classes dropped, lr-too-small lost)
BARE_MODEL_SUFFIX = "Model"
DEFAULT_LABEL_NAME = re.compile(r"LABEL_\d+")
NO_CLASS_TASKS = ("causal-lm", "seq2seq", "regression", "question-answering", "masked-lm", "reward-model",
                  EMBEDDING_TASK)
# trainer_state.json top-level fields that are facts about the run (never the pickled training_args.bin)
_STATE_FACTS = ("train_batch_size", "max_steps", "num_train_epochs", "logging_steps", "eval_steps", "save_steps")
# adapter_config.json fields that are knobs
# the adapter knobs a reader with no adapter_config.json may supply as facts (a notebook's LoraConfig literals)
CALLER_ADAPTER_FACTS = ("r", "lora_alpha")
# (rank_pattern / alpha_pattern: peft's per-module rank and alpha, {} when unused: another adapter where they differ)
_ADAPTER_FACTS = ("r", "lora_alpha", "lora_dropout", "target_modules", "use_rslora", "use_dora",
                  "layers_to_transform", "modules_to_save", "bias", "peft_type", "base_model_name_or_path",
                  "rank_pattern", "alpha_pattern")
# the end-of-training entry the Trainer logs (its own log_history entry; one step with the last train log in TB)
_TRAIN_SUMMARY_KEYS = ("train_runtime", "train_samples_per_second", "train_steps_per_second", "total_flos",
                       "train_loss")


# loss keys of trainers built on the Trainer, under the Trainer's own names: SetFit's body training logs
# `embedding_loss` (its train log) and `eval_embedding_loss` (its eval); read under their own names, the run had no
# train loss and an eval set named 'embedding'
LOSS_KEY_ALIASES = {"embedding_loss": "loss", "eval_embedding_loss": "eval_loss"}


def _trainer_loss_keys(log_history: Sequence[Any]) -> tuple[list[Any], list[str]]:
    """The log with LOSS_KEY_ALIASES' keys under the Trainer's names (an entry that has the Trainer's key keeps it),
    and the aliases read."""
    read: list[str] = []
    out = []
    for e in log_history:
        if isinstance(e, dict) and any(k in e and v not in e for k, v in LOSS_KEY_ALIASES.items()):
            e = {LOSS_KEY_ALIASES[k] if k in LOSS_KEY_ALIASES and LOSS_KEY_ALIASES[k] not in e else k: v
                 for k, v in e.items()}
            read += [k for k in LOSS_KEY_ALIASES if k not in read and LOSS_KEY_ALIASES[k] in e]
        out.append(e)
    return out, read


def _is_end_entry(e: Mapping[str, Any]) -> bool:
    """The Trainer's end-of-training summary entry: it carries total_flos, or train_runtime without a `loss`. Newer
    Trainer versions write train_runtime (and train_tokens_per_second) into every periodic train log too, beside its
    `loss`, so train_runtime alone does not mark the end (a fold-G run lost its whole train loss to that)."""
    return "total_flos" in e or ("train_runtime" in e and "loss" not in e)


def _state_ended(state: Mapping[str, Any]) -> str | None:
    """Why a trainer state with no end-of-training entry is still of a run that ended, or None. A checkpoint's state
    is saved before the Trainer logs that entry, so a run folder holding only checkpoints never has it; the state's
    step count and TrainerControl (saved beside it) still say whether training had stopped."""
    done, planned = _fin(state.get("global_step")), _fin(state.get("max_steps"))
    if done is not None and planned is not None and planned > 0 and done >= planned:
        return f"global_step {done:g} reached max_steps {planned:g}"
    control = ((state.get("stateful_callbacks") or {}).get("TrainerControl") or {}) \
        if isinstance(state.get("stateful_callbacks"), Mapping) else {}
    args = control.get("args") if isinstance(control, Mapping) else None
    if isinstance(args, Mapping) and args.get("should_training_stop") is True:
        return ("its TrainerControl has should_training_stop set (a callback such as early stopping ended it at "
                f"step {done:g})" if done is not None else "its TrainerControl has should_training_stop set")
    return None


# first train loss ~ ln(classes) for a fresh classifier head: trusted only this early in the run, and for
# these class counts (outside them a first loss is not a class count)
CHANCE_LOSS_MAX_STEP = 10
CHANCE_CLASSES_RANGE = (2, 1000)
CHANCE_BACKFILL_MAX = 1.5  # extrapolating the first logged losses back to step 0 raises them at most this much
# how far the estimate's ln(classes) lies from the true one, as a share of it: measured on the corpus's 25 classifier
# Trainer states with config.json's id2label (tests/fixtures/external), the step-0 loss is off by a median 0.5%, 20 of
# 25 within 3.1%, 24 within 6% once the count's rounding is allowed for (the largest: 6 for 5 classes, ln 1.75 for
# 1.61); the one beyond is 22% low (9 for 17: a first window already fallen from 1.47 to 0.08), past any tolerance
# that still tells datasets apart. An estimated count is any count whose ln lies within this (estimated_classes_ln)
CHANCE_CLASSES_LN_ERROR = 0.06
CHANCE_GRAD_NORM_MAX = 10.0  # a first logged gradient norm this large: the first window already blew up
# classifier weights whose rows are the classes (a saved head: full model or peft's modules_to_save)
_HEAD_SUFFIXES = ("classifier.weight", "classifier.out_proj.weight", "score.weight")


def _find_trainer_state(d: Path) -> tuple[Path | None, str | None]:
    """The run's newest trainer_state.json: the top-level one (written at the end), unless a `checkpoint-*` inside
    reached further (a run resumed or continued after the top-level file was written); and a note when a checkpoint
    was preferred."""
    ckpts = []
    for step, sub in checkpoint_folders(d):
        if (sub / "trainer_state.json").is_file():
            ckpts.append((step, sub / "trainer_state.json"))
    top = d / "trainer_state.json"
    if not top.is_file():
        return (max(ckpts)[1] if ckpts else None), None
    if not ckpts:
        return top, None
    newest_step, newest = max(ckpts)
    try:
        top_state = json.loads(top.read_text(encoding="utf-8"))
        top_step = top_state.get("global_step")
    except (OSError, *PARSE_ERRORS, AttributeError):
        return top, None  # read_trainer_state says what is wrong with it
    if isinstance(top_step, (int, float)) and newest_step > top_step:
        # a checkpoint written after the top-level state is the newest work (a resume, or a re-run into the same
        # output_dir, even one whose log forks from the old run's); only an older checkpoint whose log does not
        # continue the top-level one is another run's leftover
        parted = None if _mtime(newest) >= _mtime(top) else _log_parts_at(top_state, newest)
        if parted is not None:
            # an output_dir reused: an older, longer run's checkpoint is no continuation of the run that wrote the
            # top-level state (a resumed run's checkpoint holds the log it resumed from, value for value)
            return top, (f"{newest.parent.name}/trainer_state.json reaches step {newest_step}, the top-level "
                         f"trainer_state.json only {top_step:g}, but their logs differ from step {parted:g} on: "
                         "the checkpoint is another run's (an output_dir reused), so the top-level state is read; "
                         "remove the stale checkpoint-* folders, or diagnose the checkpoint's folder on its own")
        return newest, (f"{newest.parent.name}/trainer_state.json reaches step {newest_step}, the top-level "
                        f"trainer_state.json only {top_step:g}: read the checkpoint's")
    return top, None


def _mtime(path: Path) -> float:
    try:
        return path.stat().st_mtime
    except OSError:
        return 0.0


def _log_parts_at(top_state: Any, ckpt: Path) -> float | None:
    """The first step at which a checkpoint's log_history and the top-level one's logged another loss, learning rate
    or eval value (so the checkpoint does not continue the top-level run), or None where they agree or cannot be
    compared."""
    try:
        ckpt_log = json.loads(ckpt.read_text(encoding="utf-8")).get("log_history")
        top_log = top_state.get("log_history")
    except (OSError, *PARSE_ERRORS, AttributeError):
        return None
    if not isinstance(ckpt_log, list) or not isinstance(top_log, list):
        return None

    def values(log: list) -> dict[tuple[float, str], float]:
        out: dict[tuple[float, str], float] = {}
        for e in log:
            if isinstance(e, dict) and _fin(e.get("step")) is not None:
                for k, v in e.items():
                    if (k in ("loss", "learning_rate") or k.startswith("eval_")) and _fin(v) is not None:
                        out.setdefault((float(e["step"]), k), float(v))  # a repeated key: the first, as read
        return out

    top, mine = values(top_log), values(ckpt_log)
    differ = [key[0] for key in top.keys() & mine.keys() if not math.isclose(top[key], mine[key], rel_tol=1e-6)]
    return min(differ) if differ else None


EVENT_SEARCH_DEPTH = 3  # OUTPUT_DIR/runs/<date>/events... is 2 down; a logging_dir of runs a level deeper is 3


def find_event_files(d: Path) -> list[Path]:
    """TensorBoard event files under d (d itself, `runs/<date>/`, or a logging_dir's sub-folders), at most
    EVENT_SEARCH_DEPTH folders down (`loratune show /` must not walk the disk); which of them form the run is
    read_tensorboard's choice (`_one_run`)."""
    return sorted((f for depth in range(EVENT_SEARCH_DEPTH + 1)
                   for f in d.glob("*/" * depth + "events.out.tfevents.*") if f.is_file()), key=str)


def _read_event_file(f: Path, loader) -> tuple[float, dict[int, dict[str, float]], dict[str, tuple[int, str]]]:
    """One event file -> (wall time of its first event, {step: {tag: value}}, {tag: (step, text)}). Scalars as the
    Trainer's TensorBoardCallback writes them (simple_value) or as tensors (torch's new_style, TF2's tensor_content);
    texts (`add_text`, its tag without TB_TEXT_SUFFIX) at their last step, the later one of a step."""
    from tensorboard.util import tensor_util

    first, scalars, texts = math.inf, {}, {}
    for event in loader(str(f)).Load():
        first = min(first, event.wall_time) if event.wall_time else first
        if not event.HasField("summary"):
            continue
        for v in event.summary.value:
            if v.metadata.plugin_data.plugin_name == "text" and v.HasField("tensor") and v.tensor.string_val:
                tag = v.tag.removesuffix(TB_TEXT_SUFFIX)
                if tag not in texts or int(event.step) >= texts[tag][0]:
                    texts[tag] = (int(event.step), v.tensor.string_val[0].decode("utf-8", "replace"))
                continue
            if v.HasField("simple_value"):
                value = float(v.simple_value)
            elif v.HasField("tensor"):
                try:
                    array = tensor_util.make_ndarray(v.tensor)
                except (TypeError, ValueError):
                    continue
                if array.size != 1 or array.dtype.kind not in "fiu":
                    continue  # text, images, histograms: not a scalar
                value = float(array.reshape(-1)[0])
            else:
                continue
            scalars.setdefault(int(event.step), {})[v.tag] = value
    return (first if math.isfinite(first) else f.stat().st_mtime), scalars, texts


def _one_run(files: list[tuple[Path, float, dict, dict]]) -> tuple[list[tuple[Path, float, dict, dict]], list[str]]:
    """The event files of one run, the newest: files in the order they were started, a file whose first log comes
    after a checkpoint's step continues the run (the Trainer opens a new `runs/<date>` folder, or a new file, when it
    resumes from a checkpoint); one that logs from its own start is another run written into the same logging_dir
    (its steps would interleave with the older run's). See _another_run."""
    chains: list[list] = []
    why = ""
    for f in sorted((f for f in files if f[2]), key=lambda f: (f[1], str(f[0]))):
        other = _another_run(chains[-1], f) if chains else "starts the log"
        if other is None:
            chains[-1].append(f)
        else:
            chains.append([f])
            why = other
    if not chains:
        return [], []
    notes = []
    if len(chains) > 1:
        notes.append(f"the event files hold {len(chains)} runs ({chains[-1][0][0]} {why}); read the newest")
    if len(chains[-1]) > 1:
        notes.append(f"{len(chains[-1])} event files joined in the order they were written (a resumed run; a "
                     "later file's value replaces an earlier one's at the same step)")
    return chains[-1], notes


def _another_run(chain: Sequence[tuple[Path, float, dict]], f: tuple[Path, float, dict]) -> str | None:
    """Why event file `f` is not a continuation of the run `chain` (its files so far), or None where it is one. A
    fresh run logs from its start: its first logged step is at or before the run's first, or within its own logging
    interval of step 0 (a loss at logging_steps, at 1 with logging_first_step, an eval at 0 with eval_on_start). A
    resume's first log comes after the checkpoint it resumed from, past the start. Neither the schedule (a resume
    with max_steps raised rebuilds its decay: other rates at the steps both logged) nor the logging interval (a
    second run logging every 10 steps from step 10 starts past a first logging every 5) tells the two apart."""
    start, first = min(f[2]), min(min(c[2]) for c in chain)
    if start <= first:
        return f"starts its steps again at {start}, at or before the run's first logged step {first}"
    every = _log_interval([step for step, tags in f[2].items() if _TB_LOSS_TAG in tags])
    if every is not None and start <= every:
        return (f"logs from its start: its first logged step, {start}, is within its logging interval of {every:g} "
                "steps from step 0, where a resume's first log comes after the checkpoint step it resumed from")
    return None


def read_trainer_state(path: str | Path) -> RunHistory:
    """`trainer_state.json` (Trainer, or a TRL trainer) -> eval points. Training log entries between two
    evals form one window (train/loss = mean of the logged losses, train/loss_std = their spread).
    Side files read when present: `adapter_config.json` and `config.json` in the same folder or, for a
    `checkpoint-*` folder, the run folder above it. `training_args.bin` is never read (a pickle)."""
    p = Path(path)
    try:
        state = json.loads(p.read_text(encoding="utf-8"))
    except (*PARSE_ERRORS, UnicodeDecodeError) as exc:
        raise UserError(f"'{p}' is not valid JSON ({parse_problem(exc)})",
                        "give the trainer_state.json a Trainer wrote") from None
    if not isinstance(state, dict) or not isinstance(state.get("log_history"), list):
        raise UserError(f"'{p}' has no `log_history` list", "give the trainer_state.json a Trainer wrote")
    entries = [e for e in state["log_history"] if isinstance(e, dict)]
    if not any(_log_step(e.get("step")) is not None for e in entries):
        what = ("is empty: the run logged nothing (a logging_steps larger than the run, or a state saved before "
                "the first log)" if not state["log_history"] else
                f"has {len(state['log_history'])} entries and none with a numeric `step` of 0 or more")
        raise UserError(f"'{p}': its log_history {what}", "give the trainer_state.json of a run that logged its "
                        "losses (logging_steps smaller than the run; each entry carries its `step`)")
    here = Path(os.path.abspath(p.parent))  # a relative `trainer_state.json` (or `./`) has no parent to name
    name = here.name if p.name == "trainer_state.json" else p.stem
    if checkpoint_step(here) is not None and p.name == "trainer_state.json":
        name = here.parent.name
        scale = record_loss_scale(here.parent)
        # the record's scale is of the run it recorded: a checkpoint of a later run into the same output_dir (no
        # accumulation) read its losses 3x too low under an earlier run's record
        other = scale is not None and record_disagrees(here.parent / CALLBACK_RECORD_DIR, state)
        if scale is not None and not other:
            # the callback's record in the run folder above says this classifier's logged losses are sums over
            # gradient accumulation: a checkpoint's state holds the same sums (3 x ln 4 read as diverged)
            state = {**state, "log_history": scaled_log_history(entries, scale)}
            run = history_from_trainer_state(state, p.parent, name=name, path=str(p))
            return replace(run, notes=run.notes + (
                f"train losses read as the mean of their gradient-accumulation micro-batches ({_scale_said(scale)}), "
                f"as the loratune callback's record ({p.parent.parent / CALLBACK_RECORD_DIR}) says",))
        if other:
            run = history_from_trainer_state(state, p.parent, name=name, path=str(p))
            return replace(run, notes=run.notes + (
                f"the loratune callback's record ({p.parent.parent / CALLBACK_RECORD_DIR}) is of another run ({other}):"
                " its train-loss scale is not applied to this checkpoint",))
    return history_from_trainer_state(state, p.parent, name=name, path=str(p))


def _stale_record(record: Path, state_file: Path | None) -> str | None:
    """Why LoratuneCallback's record in `record` is not the run to read, beside the Trainer state the folder's reader
    would read instead: it was last written before that state and disagrees with it (record_disagrees). A record
    written after it (a later run with save_strategy='no' beside an earlier run's checkpoint) stays the newest work."""
    if state_file is None or _mtime(record / RUN) >= _mtime(state_file):
        return None
    try:
        state = json.loads(state_file.read_text(encoding="utf-8"))
    except (OSError, *PARSE_ERRORS):
        return None
    other = record_disagrees(record, state) if isinstance(state, dict) else None
    if other is None:
        return None
    where = state_file.parent.name + "/" + state_file.name if state_file.parent != record.parent else state_file.name
    return (f"the loratune callback's record ({record}) is older than {where} and of another run ({other}): "
            f"read {where}, the newer run; remove {record} (an output_dir reused) to silence this")


def record_loss_scale(run_folder: Path) -> Mapping[str, Any] | None:
    """The scale LoratuneCallback's record in `run_folder` puts on the Trainer's logged train losses (a classifier's
    sums over gradient accumulation read as their mean): its `train_loss_scale` ({"factor": 1/N, and, from records
    that know them, "accumulation": N, "batches_per_epoch", "start_step"}), or None when it put none."""
    try:
        meta = json.loads((Path(run_folder) / CALLBACK_RECORD_DIR / "run.json").read_text(encoding="utf-8"))
        scale = meta.get("train_loss_scale") or {}
        factor = scale.get("factor")
    except (OSError, *PARSE_ERRORS, AttributeError):
        return None
    return scale if _fin(factor) and factor > 0 else None


def accumulation_window_scale(prev: float, step: float, accumulation: int, batches_per_epoch: int) -> float:
    """The factor that reads a train loss logged at `step` (the last log at `prev`) as the mean of its micro-batches'
    losses, where the Trainer summed each optimizer step's micro-batch means: the window's optimizer steps over its
    micro-batches. Each epoch's `batches_per_epoch` batches go in windows of `accumulation`, its last window holding
    the remainder (100 rows, batch 8, accumulation 3: 13 batches, every 5th step 1 micro-batch, not 3)."""
    per_epoch = -(-batches_per_epoch // accumulation)  # optimizer steps per epoch
    short = batches_per_epoch - accumulation * (per_epoch - 1)  # micro-batches in an epoch's last window
    first, last = int(prev), int(step)
    if last <= first:
        return 1.0 / accumulation
    ends = last // per_epoch - first // per_epoch  # epochs' last windows among steps first+1 .. last
    return (last - first) / ((last - first) * accumulation - ends * (accumulation - short))


def scaled_log_history(entries: Sequence[Any], scale: Mapping[str, Any]) -> list:
    """A Trainer log_history with its train losses read as means, as a record's `train_loss_scale` says: window by
    window where it gives the accumulation and the batches per epoch, else times its one factor. Its `start_step`
    (the step the recorded train() began at: a resume's checkpoint step, else 0) is where the Trainer's sums restart:
    the end entry's train_loss is the mean over the steps since it (transformers: _total_loss_scalar / (global_step -
    _initial_global_step)), and the first train log after it sums the steps since it, not since the log before."""
    accum, per_epoch = scale.get("accumulation"), scale.get("batches_per_epoch")
    if not (_is_count(accum) and _is_count(per_epoch)):
        return [scaled_train_losses(e, float(scale["factor"])) for e in entries]
    start = _fin(scale.get("start_step"))
    start = start if start is not None and start > 0 else 0.0  # (records before start_step: a run from step 0)
    out, prev = [], 0.0
    for e in entries:
        step = _fin(e.get("step")) if isinstance(e, Mapping) else None
        if step is None or not ({"loss", "train_loss"} & set(e)) or any(str(k).startswith("eval_") for k in e):
            out.append(e)
            continue
        # a resumed run's sums restart at its start step: after a resume from checkpoint-3, the end entry's train_loss
        # over steps 4-6 was read as if over steps 1-6 (6 batches per epoch, accumulation 4: 1.23 for 1.39)
        first = start if _is_end_entry(e) or prev < start < step else prev
        out.append(scaled_train_losses(e, accumulation_window_scale(first, step, accum, per_epoch)))
        if not _is_end_entry(e):
            prev = step  # the Trainer sums the losses since its last train log
    return out


def _is_count(v: Any) -> bool:
    return isinstance(v, int) and not isinstance(v, bool) and v > 0


def _scale_said(scale: Mapping[str, Any]) -> str:
    if _is_count(scale.get("accumulation")) and _is_count(scale.get("batches_per_epoch")):
        return (f"accumulation {scale['accumulation']}, {scale['batches_per_epoch']} batches per epoch: each epoch's "
                "last window holds the remainder")
    return f"x {float(scale['factor']):.4g}"


def record_disagrees(record: Path, state: Mapping[str, Any]) -> str | None:
    """Why LoratuneCallback's record in `record` is of another run than a Trainer state (the parsed
    trainer_state.json) in the same output_dir, or None where nothing says so: another planned step count, or
    another eval value at a step both evaluated (an output_dir reused: a later run without the callback, or with it
    interrupted before its first evaluation, left the earlier run's record beside its checkpoints)."""
    return compare_record(record, state)[0]


def compare_record(record: Path, state: Mapping[str, Any]) -> tuple[str | None, int]:
    """record_disagrees's reason (or None), and how many eval values at steps both evaluated agree: nothing
    disagreeing is no evidence of one run where they share no evaluation (another run of the same max_steps resumed
    before its first evaluation, or evaluating at other steps)."""
    agree = 0
    try:
        meta = json.loads((record / RUN).read_text(encoding="utf-8"))
    except (OSError, *PARSE_ERRORS):
        return None, agree
    if not isinstance(meta, dict):
        return None, agree
    planned, theirs = _fin(meta.get("steps_planned")), _fin(state.get("max_steps"))
    if planned and theirs and planned > 0 and theirs > 0 and planned != theirs:
        return f"it plans {planned:g} steps, the Trainer's state {theirs:g}", agree
    try:
        points, _ = read_history_lines(record / HISTORY)
        mine = history_from_trainer_state(state, record.parent, name="state").points
    except Exception:  # a state this reader cannot map: read_trainer_state says what is wrong with it
        return None, agree
    at = {p["step"]: p for p in mine}
    for p in points:
        q = at.get(p.get("step"))
        for k, v in p.items() if q is not None else ():
            # eval values only: train losses are what a scale changes
            w = q.get(k)
            if k.startswith("train/") or k in ("step", "epoch") or _fin(v) is None or _fin(w) is None:
                continue
            if not math.isclose(float(v), float(w), rel_tol=1e-6, abs_tol=1e-12):
                return f"its {k} at step {p['step']} is {v:.4g}, the Trainer's state logged {w:.4g}", agree
            agree += 1
    return None, agree


def scaled_train_losses(entry: Mapping[str, Any], scale: float) -> Mapping[str, Any]:
    """A Trainer log entry with its train loss(es) times `scale` (eval entries untouched)."""
    if scale == 1.0 or not isinstance(entry, Mapping) or any(str(k).startswith("eval_") for k in entry):
        return entry
    return {k: v * scale if k in ("loss", "train_loss") and _fin(v) is not None else v for k, v in entry.items()}


def nan_filtered_loss(entry: Mapping[str, Any], *, fp16: bool | None = None) -> bool:
    """Whether a Trainer log entry's loss stands in for a non-finite one. With logging_nan_inf_filter (the default)
    the Trainer logs a NaN step's loss as the mean of the finite ones since the last log: 0 when there were none
    (a run diverged to NaN logged `loss 0` at every step, `grad_norm nan` beside it). A real loss of 0 comes with a
    finite gradient. `fp16=False`, a run known to train without fp16's loss scaler (the live callback knows): any
    loss beside a non-finite gradient norm stands in, its step's update no number (steps 1.387, nan, nan, nan under
    logging_steps=4 logged loss 0.8667, grad_norm nan); under fp16, or not known, a finite one may be real (the
    scaler skipped a step whose gradient overflowed)."""
    if "grad_norm" not in entry or _fin(entry.get("grad_norm")) is not None:
        return False
    return _fin(entry.get("loss")) == 0.0 or (fp16 is False and "loss" in entry)


def history_from_trainer_state(state: Mapping[str, Any], folder: Path, *, name: str, path: str | None = None,
                               adapter: Mapping[str, Any] | None = None,
                               source_file: str = "trainer_state.json",
                               model_config: tuple[Mapping[str, Any], str] | None = None) -> RunHistory:
    """A trainer state (the parsed trainer_state.json, or a live `TrainerState`'s fields) -> RunHistory.
    `folder` is where the side files are looked for; `adapter` gives adapter knobs directly (a live peft
    model's config) when no adapter_config.json is written yet; `model_config` (its dict, where it was read) the
    model's config.json as a live model holds it, read in place of the file (its classes, task, architecture)."""
    # a count the Trainer writes as -1 or 0 when unset (max_steps=-1 under num_train_epochs) is no count
    facts = {k: Fact(state[k], source_file) for k in _STATE_FACTS if (_fin(state.get(k)) or 0) > 0}
    for k in _unused_intervals(state, folder, facts):
        facts.pop(k)
    if _fin(state.get("global_step")) is not None:
        facts["steps_done"] = Fact(int(state["global_step"]), f"{source_file} global_step")
    run = _from_log_history(state.get("log_history") or [], folder, facts, name=name, path=path or str(folder),
                            source_file=source_file, adapter=adapter, ended=_state_ended(state),
                            unrounded=UNROUNDED_EPOCHS_KEY in state, model_config=model_config, by_trainer=True)
    if isinstance(state.get(BEST_CHECKPOINT), str):  # load_best_model_at_end: where the best step's model is
        run.meta[BEST_CHECKPOINT] = best_checkpoint(state[BEST_CHECKPOINT], folder)
    return run


BEST_CHECKPOINT = "best_model_checkpoint"  # the TrainerState's field: the checkpoint of the best step (metric_for_best)


LIVE_STATE_SOURCE = "the live TrainerState"  # LoratuneCallback's source_file: the Trainer's state as it trains
# why a log that ended has no end-of-training entry, by where it was read (a source_file of history_from_trainer_state)
ENDED_BEFORE_END_ENTRY = {"trainer_state.json": "a checkpoint's trainer_state.json is saved",
                          LIVE_STATE_SOURCE: f"{LIVE_STATE_SOURCE} is read at each evaluation,"}


def best_checkpoint(recorded: str, folder: Path) -> str:
    """A best_model_checkpoint the Trainer recorded as an absolute path, read from `folder` (the output_dir, one of
    its checkpoints, or the callback's record inside it): where the output_dir was moved since, the checkpoint of
    that name in it (a moved run said a path that no longer existed while `moved-run/checkpoint-20` did)."""
    if Path(recorded).exists():
        return recorded
    name = Path(recorded).name
    for base in (folder, folder.parent):
        if checkpoint_step(base / name) is not None and (base / name).is_dir():
            return str(base / name)
    return recorded


def _unused_intervals(state: Mapping[str, Any], folder: Path, facts: Mapping[str, Fact]) -> list[str]:
    """The step intervals trainer_state.json holds that the run never went by: the Trainer writes its defaults (500)
    whatever the strategy, so eval_steps of an eval_strategy='epoch' run and save_steps of a save_strategy='no' one
    read as facts of runs that never used them. Kept only where the run's evals, train logs or checkpoints fell on
    them (the last step, and a first train log at step 1 (logging_first_step), may fall off them)."""
    entries = [e for e in _trainer_loss_keys(state.get("log_history") or [])[0]
               if isinstance(e, dict) and _log_step(e.get("step")) is not None]
    ends = {float(x) for x in (_fin(state.get("global_step")), _fin(state.get("max_steps"))) if x}
    run = folder.parent if checkpoint_step(folder) is not None else folder
    saved = [float(step) for step, _ in (checkpoint_folders(run) if run.is_dir() else ())]
    done = {"eval_steps": [float(e["step"]) for e in entries if any(str(k).startswith("eval_") for k in e)],
            "logging_steps": [float(e["step"]) for e in entries if "loss" in e and not _is_end_entry(e)],
            "save_steps": saved}
    unused = []
    for k, steps in done.items():
        if k not in facts:
            continue
        every = float(facts[k].value)
        on = {s for s in steps if abs(s / every - round(s / every)) < 1e-6}  # a set: one look-up per step below
        off = [s for s in steps if s not in on and s not in ends and not (k == "logging_steps" and s == 1)]
        if not on or off:
            unused.append(k)
    return unused


def read_tensorboard(directory: str | Path) -> RunHistory:
    """TensorBoard event files (as the Trainer's TensorBoardCallback writes them: `train/loss`,
    `train/learning_rate`, `eval/loss`, `eval/accuracy`, ...) -> the same eval points as trainer_state.json.
    Read with the `tensorboard` package's event-file reader; no TensorFlow, no torch."""
    d = Path(directory)
    files = find_event_files(d) if d.is_dir() else [d]
    if not files:
        raise UserError(f"'{d}' holds no events.out.tfevents.* file",
                        "give the Trainer's logging_dir (e.g. output_dir/runs/<date>) or the run folder")
    try:
        from tensorboard.backend.event_processing.event_file_loader import LegacyEventFileLoader
    except ImportError:
        raise UserError("reading TensorBoard event files needs the `tensorboard` package",
                        "pip install tensorboard") from None
    run_files, run_notes = _one_run([(f, *_read_event_file(f, LegacyEventFileLoader)) for f in files])
    scalars: dict[int, dict[str, float]] = {}
    texts: dict[str, str] = {}
    for _, _, values, said in run_files:
        for step, tags in values.items():
            scalars.setdefault(step, {}).update(tags)
        texts.update({tag: text for tag, (_, text) in said.items()})
    files = [f for f, _, _, _ in run_files] or files
    # `loratune train report_to=tensorboard`'s own log, known by its own texts alone (its run record, or its config
    # with loratune's sections and keys): read as its run is. Tags do not tell (a Lightning log's val/loss, val/acc),
    # nor any `config` text (a Trainer user's add_text("config", ...) with a `train:` section, or model/data/adapter/
    # train sections of their own keys), nor any `record` text (add_text("record", "epoch 3: new best")): those read
    # as before
    if _loratune_record(texts) is not None or _loratune_config(texts) is not None:
        return _read_loratune_log(d, files, scalars, texts, run_notes)
    # the Trainer's log (its writer logs the end entry, train_runtime): any other writer's has none to miss
    by_trainer = bool(TRAINER_TB_MARKS & {k for tags in scalars.values() for k in tags})
    # tags under the Trainer's names, read by the CSV reader's column names (a Lightning module's train_loss,
    # val/loss, train/loss_step; a log named as loratune's history without its texts)
    logged = sorted({k for tags in scalars.values() for k in tags})
    as_trainer, tag_notes = _tb_trainer_tags(logged)
    scalars = {step: {as_trainer[k]: v for k, v in tags.items() if k in as_trainer} for step, tags in scalars.items()}
    log_history: list[dict] = []
    for step in sorted(scalars):  # one train entry and one eval entry per step, as Trainer logs them
        tags = scalars[step]
        train = {k[len("train/"):]: v for k, v in tags.items() if k.startswith("train/")}
        evals = {"eval_" + k[len("eval/"):]: v for k, v in tags.items() if k.startswith("eval/")}
        summary = {k: train.pop(k) for k in list(train) if k in _TRAIN_SUMMARY_KEYS}
        epoch = train.pop("epoch", None)
        for entry in (train, evals, summary):
            if entry:
                entry.update(step=step, **({"epoch": epoch} if epoch is not None else {}))
                log_history.append(entry)
    if not log_history:
        said = ", ".join(logged[:TB_TAGS_SAID]) or "none"
        said += f" and {len(logged) - TB_TAGS_SAID} more" if len(logged) > TB_TAGS_SAID else ""
        raise UserError(f"'{d}': the event files hold no train/* or eval/* scalars, nor a loss or metric the CSV "
                        f"reader's column names name (its scalar tags: {said})",
                        "log with report_to='tensorboard' from a Hugging Face Trainer, or name the scalars like "
                        "train_loss, val_loss, val_accuracy (or give trainer_state.json)")
    run_dir = files[-1].parent
    side = next((q for q in (run_dir, run_dir.parent, run_dir.parent.parent)
                 if (q / "adapter_config.json").is_file() or (q / "config.json").is_file()), d)
    folder = d if d.is_dir() else d.parent
    here, run_here = Path(os.path.abspath(folder)), Path(os.path.abspath(run_dir))  # `.` has no name of its own
    if here == run_here and LIGHTNING_VERSION_FOLDER.fullmatch(here.name):
        name = here.name  # one version of a Lightning experiment: the folder that tells it from the others
    else:
        # the events file's own folder names the run (as show / report name it: `tb/events...` is run `tb`), unless
        # it is a Trainer's logging_dir `runs/<date_host>` (or a Lightning version's), named by the folder above
        name = next((q.name for q in (here, *here.parents) if q.name not in TB_LOG_FOLDERS
                     and (q != run_here or run_here.parent.name not in TB_LOG_FOLDERS)), here.name)
    late = _late_start(log_history)
    ended = [] if by_trainer else [TB_NO_END_ENTRY_NOTE]
    # another writer's log: read to its last point (no partial run's reading), its end unknown (END_UNKNOWN_KEY)
    h = _from_log_history(log_history, side, {}, name=name,
                          path=str(d), source_file="TensorBoard events", source="tensorboard",
                          finished=None if by_trainer else True, by_trainer=by_trainer,
                          notes=[f"read {len(files)} event file(s) in "
                                 f"{', '.join(sorted({str(f.parent) for f in files}))}", *run_notes,
                                 *([late] if late else []), *tag_notes, *ended])
    if not by_trainer:
        h.meta[END_UNKNOWN_KEY] = True
    return h


# tags only the Trainer's TensorBoardCallback writes (its epoch, rate and grad norm with each log, its eval's cost, its
# end entry): a log with any is the Trainer's, whose end-of-training entry (train/train_runtime) says the run ended; any
# other writer (Lightning's TensorBoardLogger, a loop's own SummaryWriter) writes no such entry, so its absence says
# nothing: every Lightning run read "no end-of-training entry (train_runtime) ... a partial run". A Trainer log
# filtered of train/epoch (train/loss, train/learning_rate, eval/runtime, stopped at step 100) was read as ended
# tags only the Hugging Face Trainer writes (its epoch, its end entry, its eval timings): train/learning_rate or
# train/grad_norm are any loop's names too, so they mark no Trainer log
TRAINER_TB_MARKS = frozenset({"train/epoch", "train/train_runtime", "eval/runtime", "eval/samples_per_second",
                              "eval/steps_per_second"})
TB_TAGS_SAID = 12  # a refused log's scalar tags named in the error, at most
TB_NO_END_ENTRY_NOTE = ("no end-of-training entry (train_runtime) and none of the Hugging Face Trainer's own tags "
                        f"({', '.join(sorted(TRAINER_TB_MARKS))}): the log is another writer's (Lightning's "
                        "TensorBoardLogger, a loop's own SummaryWriter), which logs no end entry, so whether the run "
                        "ended is unknown: read to its last point, stopped short or not")
# meta: the run's log cannot say whether it ended (TB_NO_END_ENTRY_NOTE): its status reads so, never `finished`
END_UNKNOWN_KEY = "end_unknown"
# folders of a TensorBoard log that name no run: the Trainer's logging_dir `runs/<date>`, Lightning's default
# experiment `lightning_logs/version_N` (a run is named by the folder above, or by its version_N folder where given)
TB_LOG_FOLDERS = ("runs", "lightning_logs", "")
LIGHTNING_VERSION_FOLDER = re.compile(r"version_\d+")


def _tb_trainer_tags(tags: Iterable[str]) -> tuple[dict[str, str], list[str]]:
    """Each scalar tag the TensorBoard reader reads, under the Trainer's tag (`train/<key>`, `eval/<key>`), and the
    notes on the others. Named as the CSV reader names a column (_CSV_KEY_OF, the tag normalised as a column name is:
    Lightning's `train_loss`, `val_acc`, `train/loss_step` are the CSVLogger's `train_loss`, `val_acc`,
    `train_loss_step`), or a loratune key (`val/recall/x`); `eval/*` and any other `train/*` tag as the Trainer wrote
    it; the rest (`hp_metric`) not read. Of several tags of one key the first by name is read, the CSV reader's
    fallback aliases (an epoch's mean, `train/loss_epoch`) only where no other tag gives the key."""
    tags = list(tags)
    out: dict[str, str] = {}
    by_key: dict[str, str] = {}
    renamed, dropped = [], []
    for tag in sorted(tags, key=lambda t: (_norm(t) in _CSV_FALLBACK_ALIASES, t)):
        if tag.startswith("eval/"):
            out[tag] = tag
            continue
        key = _CSV_KEY_OF.get(_norm(tag)) or (tag if _LORATUNE_KEY.fullmatch(tag) else None)
        if key is None or key in by_key:
            if key is None and tag.startswith("train/"):
                out[tag] = tag
            else:
                dropped.append(tag)
            continue
        by_key[key] = tag
        out[tag] = _trainer_tag(key)
        if out[tag] != tag:
            renamed.append(tag)
    notes = []
    if renamed:
        notes.append("TensorBoard tags read as the CSV reader reads these column names: "
                     + ", ".join(f"{t!r} -> {_CSV_KEY_OF.get(_norm(t), t)}" for t in renamed))
    lr_note = _lightning_lr_note(tags, "the tag")
    dropped = [t for t in dropped if not (lr_note and LIGHTNING_LR_TAG.fullmatch(t))]
    if dropped:
        notes.append(f"TensorBoard tags not read: {', '.join(map(repr, dropped))}")
    return out, notes + ([lr_note] if lr_note else [])


LATE_START_INTERVALS = 2  # a log whose first train loss comes more than this many logging intervals in starts late
_TB_LOSS_TAG = "train/loss"  # the train loss's TensorBoard tag (the Trainer's, and `loratune train`'s own)


def _log_interval(steps: Iterable[int]) -> float | None:
    """A log's logging interval: the median gap between the steps it logged a train loss at (evaluations off the
    logging grid are not among them, and a first log at step 1 is one gap of many); None under two such steps."""
    steps = sorted(set(steps))
    return statistics.median(b - a for a, b in zip(steps, steps[1:])) if len(steps) >= 2 else None


def _late_start(log_history: Sequence[dict]) -> str | None:
    """A note when the log begins well past the run's start: the event files of a run resumed from a checkpoint (into
    a new output_dir, or with its first logging_dir gone) begin at the checkpoint's step, and read alone they show its
    first point as the untrained model's."""
    steps = sorted({int(e["step"]) for e in log_history if "loss" in e and not _is_end_entry(e)})
    every = _log_interval(steps)
    if every is None or steps[0] <= LATE_START_INTERVALS * every + 1:
        return None
    return (f"the log begins at step {steps[0]} (its train losses come every {every:g} steps): the steps before are "
            "not in it, as in a run resumed from a checkpoint, so its first point is not the untrained model (the "
            "run's trainer_state.json, or its first logging_dir, holds the start)")


def _trainer_tag(tag: str) -> str:
    """A loratune history key as the Trainer's TensorBoard tag: val/x -> eval/x, train_eval/x -> eval/train_x,
    lr -> train/learning_rate, epoch -> train/epoch, eval_x (a Trainer key) -> eval/x; train/* as it is."""
    if tag.startswith("val/"):
        return "eval/" + tag[len("val/"):]
    if tag.startswith("eval_"):
        return "eval/" + tag[len("eval_"):]
    if tag.startswith("train_eval/"):
        return "eval/train_" + tag[len("train_eval/"):]
    return {"lr": "train/learning_rate", "epoch": "train/epoch"}.get(tag, tag)


def _loratune_record(texts: Mapping[str, str]) -> dict | None:
    """The run record a loratune TensorBoard log carries (its RECORD_TEXT: {"run": run.json, "facts": ...}), or None:
    no such text, or one of another shape (a user's add_text("record", "epoch 3: new best accuracy"))."""
    if RECORD_TEXT not in texts:
        return None
    try:
        loaded = json.loads(unfenced(texts[RECORD_TEXT]))
    except PARSE_ERRORS:
        return None
    return loaded if isinstance(loaded, dict) and isinstance(loaded.get("run"), dict) else None


# a config text is loratune's where at least this share of its sections' keys are loratune's own (config.key_table):
# its writer dumps the full config (to_yaml), a user's own model/data/adapter/train sections name few of them
LORATUNE_CONFIG_KNOWN_SHARE = 0.5


def _loratune_config(texts: Mapping[str, str]) -> dict | None:
    """The config.yaml a loratune TensorBoard log carries (its CONFIG_TEXT), or None: no such text, or one that is
    not a loratune config (a mapping with every section of config.RunConfig as a mapping, as the writer dumps it,
    whose keys are mostly loratune's: LORATUNE_CONFIG_KNOWN_SHARE)."""
    import yaml

    from loratune.config import SECTIONS, key_table

    if CONFIG_TEXT not in texts:
        return None
    try:
        config = yaml.safe_load(unfenced(texts[CONFIG_TEXT]))
    except (yaml.YAMLError, *PARSE_ERRORS):
        return None
    if not (isinstance(config, dict) and all(isinstance(config.get(k), dict) for k in SECTIONS)):
        return None
    keys = [f"{section}.{key}" for section in SECTIONS for key in config[section]]
    known = key_table()
    return config if keys and sum(k in known for k in keys) >= LORATUNE_CONFIG_KNOWN_SHARE * len(keys) else None


# history keys that are counts (and `<split>/n`): an event file holds every scalar as a float
_COUNT_KEYS = ("examples_seen",)


def _read_loratune_log(d: Path, files: Sequence[Path], scalars: Mapping[int, Mapping[str, float]],
                       texts: Mapping[str, str], run_notes: Sequence[str]) -> RunHistory:
    """A TensorBoard log `loratune train report_to=tensorboard` wrote (trackers.TensorBoardWriter), away from its
    run: read as its run is. Its scalars are the history's own keys (trackers.scalars: the per-class keys stay in
    history.jsonl); its RECORD_TEXT is run.json (labels, task, planned steps, method, end status) with the facts of the
    run's folder, its CONFIG_TEXT config.yaml. A log written before the record text existed has the config and the
    end status: its task, method and planned steps are read from the config, its classes estimated."""
    notes = [f"read {len(files)} event file(s) in {', '.join(sorted({str(f.parent) for f in files}))}: the "
             "TensorBoard log of a loratune run (per-class recall is not in its scalars: history.jsonl only)", *run_notes]
    points = []
    for step in sorted(scalars):
        point: dict[str, Any] = {"step": step}
        for key, value in scalars[step].items():
            count = key in _COUNT_KEYS or key.endswith("/n")
            point[key] = int(value) if count and float(value).is_integer() else _logged_decimal(value)
        points.append(point)
    config = _loratune_config(texts) or {}
    record, facts = {}, {}
    loaded = _loratune_record(texts)
    if loaded is None and RECORD_TEXT in texts:  # routed here by its config: a record text of another shape
        notes.append(f"its `{RECORD_TEXT}` text is not loratune's run record: labels and planned steps unknown")
    if loaded is not None:
        record = dict(loaded["run"])
        facts = {k: Fact(f["value"], str(f.get("source", RECORD_TEXT))) for k, f in (loaded.get("facts") or {}).items()
                 if isinstance(f, dict) and "value" in f}
    if record:
        notes.append(_per_class_from_record(points, record))
    meta = record or _meta_from_config(config)
    status = texts.get(STATUS_TEXT)
    if status and meta.get("status") in (None, "running"):
        meta["status"] = status
    last = points[-1]["step"] if points else None
    if not status:  # never finished in this log: still going, or it died (its process cannot be asked from a copy)
        meta.update(status=meta.get("status") or "running", partial=True)
        meta["steps_done"] = max(int(meta.get("steps_done") or 0), last or 0)
        notes.append(f"the log has no `{STATUS_TEXT}` text, which a loratune run writes when it ends: the run was "
                     "still going or died; the diagnosis is of a partial run")
    meta.setdefault("steps_done", last)
    if not record:
        notes.append(f"a log written before loratune logged its run record (`{RECORD_TEXT}` text): task, method and "
                     "planned steps read from its config, labels unknown")
        if meta.get("task") not in NO_CLASS_TASKS and points:
            first = next((q for q in points if _fin(q.get("train/loss_first")) is not None), None)
            if first is not None:  # the loss of step 1, of the fresh head
                _classes_from_first_loss([{"step": 1, "loss": first["train/loss_first"]}], meta, facts)
    folder = Path(os.path.abspath(d if d.is_dir() else d.parent))
    name = folder.name if folder.name != TENSORBOARD_DIR else folder.parent.name
    return RunHistory(name=name, source="tensorboard", points=tuple(points), meta=meta, config=config,
                      notes=tuple(notes), path=str(d), facts=facts)


def _per_class_from_record(points: Sequence[dict], record: Mapping[str, Any]) -> str:
    """Put back the per-class keys (`<split>/recall/<label>`, ...) the log leaves out (trackers.scalars) at its final
    and best points, from the record's run.json `final` and `best`: where the record's point is the log's point of its
    step (each number the log holds there alike, as float32 stored it), the keys it lacks are the run's own. Confusion pairs only
    at the final point: one point of them reads no persistence, where the best as the reference would not be the run's.
    The best only where the final was put back: features read the last point with per-class keys as the final.
    Returns the note saying which points got them."""
    at = {int(q["step"]): q for q in points}
    own = {step: dict(q) for step, q in at.items()}  # the log's own keys, before any is put back (final and best
    # can be one step: the final's lists put there made the best's comparison refuse a point that was the log's)
    done, refused, held = [], [], ""
    for which in ("final", "best"):
        src = record.get(which)
        if not isinstance(src, dict) or _fin(src.get("step")) is None:
            continue
        if which == "best" and refused:  # features read the last point with per-class keys as the final: a best
            held = f" (nor at its best, step {src['step']}, which would read as the final)"  # alone reads as it
            continue
        step = int(src["step"])
        logged = own.get(step)
        same = logged is not None and all(_fin(src.get(k)) is not None and
                                          math.isclose(float(v), float(src[k]), rel_tol=1e-6, abs_tol=1e-7)
                                          for k, v in logged.items() if k != "step")
        if not same:
            refused.append(f"{which} (step {src['step']})")
            continue
        q = at[step]
        for k, v in src.items():
            if k not in q and (which == "final" or not isinstance(v, list)):
                q[k] = v
        done.append(f"{which} (step {src['step']})")
    said = (f"per-class keys (recall, precision, confusion pairs) from its `{RECORD_TEXT}` text at its "
            f"{' and '.join(done)} point(s) only: the other points' are in history.jsonl (val_recall_collapsed_share "
            "reads these points only, confused_pairs_persist_share none)" if done else "")
    unread = ("its rules (collapsed, long-tail-collapse, confusable-classes-unresolved) not evaluated on this log")
    if refused:  # one at most: the best is not compared where the final was refused
        said += ("; " if said else "") + (f"the `{RECORD_TEXT}` text's {refused[0]} is not the log's point: "
                                          f"per-class recall not restored{held}, {unread}")
    elif not done:  # a run that ended before its record's end (killed): the start's record has neither
        said = (f"the `{RECORD_TEXT}` text has no final or best point (it is the run's start record: a run killed "
                f"before its end writes none): per-class recall not restored, {unread}")
    return said


LOGGED_DECIMAL_DIGITS = 6  # a float32 whose shortest decimal has this few significant digits was logged as that decimal


def _logged_decimal(value: float) -> float:
    """A scalar an event file stored as float32, read as the value that was logged: a short decimal (a learning rate of
    0.01, a share of a few rows) as that decimal, where the float32 reads 0.009999999776 and a rule's `peak_lr >= 0.01`
    no longer holds on the run's own log (lr-too-large read healthy); any other value (a loss the model computed in
    float32) as the float32 it is, which is what the run recorded."""
    import numpy as np

    short = str(np.float32(value))  # the shortest decimal that reads back as this float32
    digits = short.lower().split("e")[0].replace("-", "").replace(".", "").strip("0")
    return float(short) if math.isfinite(value) and len(digits) <= LOGGED_DECIMAL_DIGITS else value


def _meta_from_config(config: Mapping[str, Any]) -> dict[str, Any]:
    """What a loratune config says of its run.json: the task, the method and the planned steps (max_steps)."""
    model, data, adapter, train = (config.get(k) if isinstance(config.get(k), dict) else {}
                                   for k in ("model", "data", "adapter", "train"))
    meta: dict[str, Any] = {}
    if model.get("task") == "causal-lm":
        meta["task"] = "causal-lm"
    elif data.get("multi_label") is not None:  # null: found from the labels, which the config does not hold
        meta["task"] = "multi_label" if data["multi_label"] else "single_label"
    if adapter.get("method"):
        meta["method"] = adapter["method"]
    if isinstance(train.get("max_steps"), int) and train["max_steps"] > 0:
        meta["steps_planned"] = train["max_steps"]
    return meta


def _from_log_history(log_history: Sequence[Any], folder: Path, facts: dict[str, "Fact"], *, name: str,
                      path: str, source_file: str, source: str | None = None,
                      notes: list[str] | None = None, adapter: Mapping[str, Any] | None = None,
                      finished: bool | None = None, ended: str | None = None, unrounded: bool = False,
                      model_config: tuple[Mapping[str, Any], str] | None = None,
                      by_trainer: bool = False) -> RunHistory:
    """`unrounded`: the logged epochs are as the Trainer computed them, never round(epoch, 2)'s
    (UNROUNDED_EPOCHS_KEY). `by_trainer`: the Hugging Face Trainer wrote the log (a trainer_state.json, the live
    state, a TensorBoard log with the Trainer's own tags), whose logged rate is read on its transformers version's lr
    clock (store.trainer_logs_next_lr); any other writer's (a loop's own SummaryWriter beside an old config.json)
    logs the rate its own way, read as the rate each step used."""
    notes = list(notes or [])
    log_history, aliased = _trainer_loss_keys(log_history)
    if aliased:
        notes.append(f"{' and '.join(aliased)} read as the Trainer's "
                     f"{' and '.join(LOSS_KEY_ALIASES[k] for k in aliased)} (SetFit's names): the train loss and the "
                     "val loss")
    stepless = sum(1 for e in log_history if isinstance(e, dict) and "step" not in e)
    if stepless:
        notes.append(f"{stepless} log_history entries without a `step`: skipped")
    log_history, texts, words, others = _numbers_from_text(log_history)
    if texts:
        notes.append(f"{texts} loss, rate or eval values written as text (e.g. \"2.3\"), not as numbers: skipped")
    if words:
        notes.append(f"non-numeric values (text that is no number) under {', '.join(words)}: ignored")
    if others:
        notes.append(f"values that are not numbers (null, true/false, a list or an object) under "
                     f"{', '.join(others)}: ignored")
    logs = [e for e in log_history if isinstance(e, dict) and "step" in e]
    steps_ok = [e for e in logs if _log_step(e["step"]) is not None]
    if len(steps_ok) < len(logs):
        notes.append(f"{len(logs) - len(steps_ok)} log_history entries with a step that is not a finite number "
                     "(a string, null, NaN) or is negative: skipped")
        logs = steps_ok
    # in step order (stable: file order within a step, where a repeated evaluation's first entry is the one read): a
    # merged or hand-edited log in another order built each eval's window, its first loss and the lr's warm-up and
    # peak from the file's order, and a reversed log of a diverged run read healthy
    logs = sorted(logs, key=lambda e: float(e["step"]))
    trl_kind = _trl_kind({k for e in logs for k in e})
    is_trl = trl_kind is not None
    source = source or ("trl" if is_trl else "hf-trainer")
    train_logs = [e for e in logs if "loss" in e and not any(k.startswith("eval_") for k in e)
                  and not _is_end_entry(e)]
    eval_logs = [_own_set_keys(e) for e in logs if any(k.startswith("eval_") for k in e)]
    split_of, metric_notes = _eval_key_map(eval_logs)
    notes += metric_notes

    val_prefix = _val_prefix(split_of)
    # the eval loss a summed train loss is measured against: the validation set's, else any held-out set's (several
    # sets under names of their own have no val curve, but each one's loss still tells a sum from a mean)
    ref_losses = ([val_prefix + "loss"] if val_prefix + "loss" in split_of else
                  sorted(k for k, v in split_of.items() if v.endswith("/loss") and not v.startswith("train_eval/")))
    classifies = _classifier_evidence(split_of.values())  # a bare `*Model` config is no embedding model's then
    summed = None if is_trl else _summed_losses(train_logs, eval_logs, ref_losses, folder, adapter, unrounded,
                                                classifies)
    if summed is not None:
        # the same correction the callback's record makes (record_loss_scale): the losses read as their mean (N
        # known), each window over the micro-batches it holds (an epoch's shorter last step)
        shares = summed.pop("shares", None) or [1.0] * len(train_logs)
        train_logs = [scaled_train_losses(e, (summed["factor"] or 1.0) / share) for e, share in zip(train_logs, shares)]
        notes.append(summed["why"])
    points = _log_points(train_logs, eval_logs, split_of, val_prefix, notes,
                         last=int(logs[-1]["step"]) if logs else None)
    if not eval_logs:
        notes.append("no evaluation entries (eval_*) in the log: only the train loss can be diagnosed; log an "
                     "eval set (eval_strategy='steps', eval_dataset=...) to see overfitting")
    _percent_to_share(points, notes)
    for rate, right in _ERROR_RATES.items():
        for split in ("val", "train_eval"):
            vals = [v for q in points if (v := _fin(q.get(f"{split}/{rate}"))) is not None]
            if not vals or any(f"{split}/{right}" in q for q in points):
                continue
            scale = 100.0 if statistics.median(vals) > 1.0 else 1.0
            for q in points:
                if _fin(q.get(f"{split}/{rate}")) is not None:
                    q[f"{split}/{right}"] = 1.0 - q[f"{split}/{rate}"] / scale
            notes.append(f"{split}/{rate} is an error rate: read as {split}/{right} = 1 - {rate}"
                         + (" (logged on a 0-100 scale: /100)" if scale > 1 else ""))
    ns = [q["val/n"] for q in points if "val/n" in q]
    if ns:
        facts["val_n"] = Fact(ns[-1], "eval runtime x samples/s")
    if train_logs and len(train_logs) > len(eval_logs):
        notes.append("train/loss_std is the spread of the logged losses (each a mean over logging_steps), "
                     "not of single steps")
    end_entry = any(_is_end_entry(e) for e in logs)
    # `ended`: the state's own evidence that training stopped (a checkpoint's state never holds the end entry)
    finished = (end_entry or ended is not None) if finished is None else finished
    if finished and not end_entry and ended:
        notes.append(f"the log has no end-of-training entry (train_runtime), but {ended}: the run ended; "
                     f"{ENDED_BEFORE_END_ENTRY.get(source_file, f'{source_file} was read')} before the Trainer "
                     "logs that entry")
    meta: dict[str, Any] = {"steps_done": facts["steps_done"].value if "steps_done" in facts else
                            (int(logs[-1]["step"]) if logs else None),
                            "steps_planned": facts["max_steps"].value if "max_steps" in facts else None}
    if not finished:
        meta["partial"] = True
        notes.append(f"{PARTIAL_LOG_NOTE} when this {source_file} was written; the diagnosis is of a partial run"
                     if source != "notebook" else "the progress bar stops short of its end: the run was stopped "
                     "(or was still going when the notebook was saved); the diagnosis is of a partial run")
    # the rate from every entry that logged one (SetFit logs it on its eval entries too; the end entry has none), once
    # a step
    rated = {}
    for e in logs:
        if _fin(e.get("learning_rate")) is not None and not _is_end_entry(e):
            rated.setdefault(float(e["step"]), e)
    older = _transformers_version(folder, model_config) if by_trainer else None
    next_lr = trainer_logs_next_lr(older)
    if next_lr and rated:  # its `learning_rate` at step s is the rate step s + 1 uses: read as that (lr_samples)
        points = [{(LR_NEXT_KEY if k == "lr" else k): v for k, v in p.items()} for p in points]
        notes.append(f"transformers {older} (the model config's transformers_version) logged at each step the rate "
                     "the next step uses: the learning rates read one step later")
    facts.update(_lr_facts([rated[k] for k in sorted(rated)], facts["max_steps"].value if "max_steps" in facts else None,
                           next_lr=next_lr))
    if trl_kind is not None:
        meta["task"], meta["trl_kind"] = trl_kind[1], trl_kind[0]
        facts["task"] = Fact(trl_kind[1], f"TRL {trl_kind[0]} keys in the log ({', '.join(trl_kind[2][:3])})")
    if "n_classes" in facts:  # a count the caller read (a notebook's num_labels)
        meta["n_classes"] = facts["n_classes"].value
    if "task" in facts and not meta.get("task"):  # a task the caller read (a notebook's model class)
        meta["task"] = facts["task"].value
    _model_config_facts(folder, meta, facts, notes, model_config)
    _task_from_side_files(folder, meta, facts, adapter, model_config, classifies)
    no_classes = is_trl or meta.get("task") in NO_CLASS_TASKS
    if not no_classes and "n_classes" not in facts:
        _classes_from_weights(folder, meta, facts)
    if summed is not None:
        meta["train_loss_scale" if summed["factor"] is not None else "train_loss_summed"] = summed
    if not no_classes and "n_classes" not in facts and not (summed is not None and summed["factor"] is None):
        _classes_from_first_loss(train_logs, meta, facts)  # (a first loss summed over N micro-batches: no count)
    # a rank / alpha the caller read (a notebook's LoraConfig): the knobs a comparison groups runs by, as an
    # adapter_config.json's are (which, when there is one, stands over them)
    read = {k: facts[k].value for k in CALLER_ADAPTER_FACTS if k in facts}
    config = _config_from_facts(_adapter_facts(folder, facts, notes, adapter) or read, facts)
    if adapter is None and _side_file(folder, "adapter_config.json") is None:
        if not read:
            notes.append("no adapter_config.json beside the state: rank, alpha and targets unknown")
        elif "target_modules" not in read:
            notes.append(f"no adapter_config.json beside the state: {' and '.join(read)} from "
                         f"{facts[next(iter(read))].source}, targets unknown")
    elif not config.get("adapter") and "peft_type" in facts:
        notes.append(f"a {facts['peft_type'].value} adapter: no LoRA rank, alpha or targets to read")
    if adapter is None and not meta.get("method") and "peft_type" not in facts and not config.get("adapter"):
        _method_from_weights(folder, meta, facts)
    meta["facts"] = {k: {"value": f.value, "source": f.source} for k, f in facts.items()}
    train_log = tuple((float(e["step"]), None if nan_filtered_loss(e) else _fin(e.get("loss"))) for e in train_logs)
    return RunHistory(name=name, source=source, points=tuple(points), meta=meta, config=config,
                      notes=tuple(notes), path=path, facts=dict(facts), train_log=train_log)


def _log_points(train_logs: Sequence[dict], eval_logs: Sequence[dict], split_of: Mapping[str, str], val_prefix: str,
                notes: list[str], last: int | None) -> list[dict]:
    """The eval points of a Trainer log (entries in step order; `last`: its last step), as the trainer_state,
    TensorBoard and CSV readers all read one: the eval entries of one step merged (a key logged again keeps its first
    value, and a note says why it came again); each eval's point holds the window of train logs since the eval
    before (train/loss: their mean, train/loss_std: their spread, ...), its eval keys renamed by `split_of` and the
    val size from the `val_prefix` set's runtime x samples/s; the train logs after the last eval make one more
    point, and with no eval every train log is its own point."""
    prev = -1
    merged: dict[int, dict] = {}  # several eval sets log one entry each at the same step
    repeats: list[int] = []  # the step of each evaluation logged again
    for e in eval_logs:
        m = merged.setdefault(int(e["step"]), {})
        # the same key again at a step is a later evaluation, not the training-time one: `trainer.evaluate()`
        # after training (of the best checkpoint, reloaded by load_best_model_at_end, or of a test set under the
        # default eval_ prefix) logs at the last step; it must not replace what the run measured there
        if any(k in m and k.startswith("eval_") and not k.endswith(_EVAL_META) for k in e):
            repeats.append(int(e["step"]))
        for k, v in e.items():
            m.setdefault(k, v)
    notes += _repeated_eval_notes(repeats, last)
    # each eval's window of train logs (prev < step <= its step), in log order, found by bisection: one pass over a
    # step-sorted index rather than a scan of every train log per eval (100k logs x 1,000 evals: 5.4 s, now 0.5 s)
    by_step = sorted(range(len(train_logs)), key=lambda i: train_logs[i]["step"])
    sorted_steps = [train_logs[i]["step"] for i in by_step]
    evals = []
    for ev in (merged[k] for k in sorted(merged)):
        lo, hi = bisect.bisect_right(sorted_steps, prev), bisect.bisect_right(sorted_steps, ev["step"])
        evals.append((ev, _window([train_logs[i] for i in sorted(by_step[lo:hi])])))
        prev = ev["step"]
    return _window_points(evals, [e for e in train_logs if e["step"] > prev] if evals else train_logs, split_of,
                          val_prefix)


def _window_points(evals: Iterable[tuple[dict, dict]], tail: Sequence[dict], split_of: Mapping[str, str],
                   val_prefix: str) -> list[dict]:
    """A log's points: one per evaluation (`evals`: its merged eval entry and the _window of the train logs since the
    evaluation before, in step order), its eval keys renamed by `split_of` and the val size from the `val_prefix`
    set's runtime x samples/s; the train logs after the last evaluation (`tail`) make one more point, and with no
    evaluation each train log is its own point."""
    points: list[dict] = []
    for ev, window in evals:
        pt = {"step": int(ev["step"])}
        if _fin(ev.get("epoch")) is not None:
            pt["epoch"] = float(ev["epoch"])
        pt.update(window)
        for key, value in ev.items():
            if key in split_of:
                pt[split_of[key]] = _json_num(value)
        n = _estimate_n(ev, val_prefix)
        if n is not None and "val/n" not in pt:
            pt["val/n"] = n
        points.append(pt)
    if points:  # training after the last eval: one more point, with train keys only
        parts = [tail] if tail else []
    else:  # no eval: every train log is its own window
        parts = [[e] for e in tail]
    for part in parts:
        pt = {"step": int(part[-1]["step"]), **_window(part)}
        if _fin(part[-1].get("epoch")) is not None:
            pt["epoch"] = float(part[-1]["epoch"])
        points.append(pt)
    return points


def _own_set_keys(entry: dict) -> dict:
    """An eval entry of one named set (`eval_dataset={"train": ..., "val": ...}`: the Trainer logs one entry a set,
    its keys `eval_<name>_*`, its runtime among them) with the keys it logged without the set's name (TRL's
    `eval_mean_token_accuracy`, `eval_entropy`, `eval_num_tokens`, beside `eval_train_loss`) named as that set's:
    they are its measurements. Read as they came, each set's entry at a step logged the same unprefixed keys, the
    first set's value was kept as the val set's (val/token_accuracy 0.4833, the train set's, for the val set's
    0.5357) and the others read as evaluations logged again. An entry with the plain `eval_runtime`, or naming no set
    or several (a TensorBoard step holds every set's), is left as it is."""
    keys = [k for k in entry if isinstance(k, str) and k.startswith("eval_")]
    if "eval_runtime" in keys:
        return entry
    names = {k[len("eval_"):-len("_runtime")] for k in keys if k.endswith("_runtime") and k != "eval_runtime"}
    if len(names) != 1 or not (name := next(iter(names))):
        return entry
    own = f"eval_{name}_"
    return {(own + k[len("eval_"):] if isinstance(k, str) and k.startswith("eval_") and not k.startswith(own) else k): v
            for k, v in entry.items()}


def _repeated_eval_notes(steps: Sequence[int], last: int | None) -> list[str]:
    """What the evaluations logged again at a step already evaluated were (`steps`: one per repeat; `last`: the log's
    last step). At the last step: trainer.evaluate() after training. Before it: a run resumed from a checkpoint at
    that step evaluates it again (eval_on_start, or an evaluate() before train()), its log holding the first run's
    entries up to the checkpoint. Either way the first evaluation is the one read."""
    after = [s for s in steps if last is not None and s >= last]
    before = sorted(set(s for s in steps if s not in after))
    notes = []
    if after:
        notes.append(f"{len(after)} evaluation(s) logged again at the last step ({after[0]}), already evaluated "
                     "(trainer.evaluate() after training): the first, made while training, is read")
    if before:
        notes.append(f"{len(steps) - len(after)} evaluation(s) logged again at step(s) "
                     f"{', '.join(map(str, before))}, already evaluated, before the log's end (a run resumed from a "
                     "checkpoint there evaluates it again, with eval_on_start): the first is read")
    return notes


def _side_file(folder: Path, filename: str) -> Path | None:
    """`filename` in folder; for a checkpoint-* folder, in the run folder above it; for a run folder, in its newest
    checkpoint-* (a run whose model was never saved at the end, `trainer.save_model()`, has its adapter_config.json
    and config.json in the checkpoints only)."""
    # a notebook (its path stands in for the folder, so no side file is ever found) named checkpoint-*.ipynb must not
    if not folder.is_dir():
        return None
    if checkpoint_step(folder) is not None:
        places = [folder, folder.parent]
    else:
        ckpts = [(step, q) for step, q in checkpoint_folders(folder) if q.is_dir()]
        places = [folder] + [q for _, q in sorted(ckpts, reverse=True)]
    return next((q / filename for q in places if (q / filename).is_file()), None)


def _model_config_facts(folder: Path, meta: dict, facts: dict, notes: list[str],
                        live: tuple[Mapping[str, Any], str] | None = None) -> None:
    """Classes, task and model type from config.json beside the state, or from `live` (a live model's config dict,
    where it was read: the callback's, which stands over a file an earlier run may have left)."""
    cfg_path = _side_file(folder, "config.json") if live is None else None
    if cfg_path is None and live is None:
        if "n_classes" not in facts:  # a count the caller read (a notebook's num_labels) stands
            notes.append("no model config.json beside the state: the number of classes is read from the first "
                         "loss when it can be")
        return
    source = cfg_path.name if live is None else live[1]
    try:
        mcfg = json.loads(cfg_path.read_text(encoding="utf-8")) if live is None else dict(live[0])
        id2label = mcfg.get("id2label") or {}
        archs = mcfg.get("architectures") or []
        causal = any(str(a).endswith("ForCausalLM") for a in archs)
        if id2label and not causal and len(id2label) >= 2:
            keys = list(id2label)
            if all(re.fullmatch(r"-?\d+", str(k)) for k in keys):  # written as the class ids: their order
                keys.sort(key=int)
            meta["labels"] = [id2label[k] for k in keys]
            # meta as well as facts: the report's header and `show` read the count from meta, as the estimates set it
            meta["n_classes"] = len(id2label)
            facts["n_classes"] = Fact(len(id2label), f"{source} id2label")
        elif (not causal and isinstance(mcfg.get("num_labels"), int) and not isinstance(mcfg["num_labels"], bool)
              and mcfg["num_labels"] >= 2):
            meta["n_classes"] = mcfg["num_labels"]
            facts["n_classes"] = Fact(mcfg["num_labels"], f"{source} num_labels")
        if mcfg.get("problem_type") == "multi_label_classification":
            meta["task"] = "multi_label"
            facts["task"] = Fact("multi_label", f"{source} problem_type")
        meta["model"] = {"model_type": mcfg.get("model_type"), "num_layers": mcfg.get("num_hidden_layers")}
        if mcfg.get("model_type"):
            facts["model_type"] = Fact(mcfg["model_type"], source)
    except (*PARSE_ERRORS, TypeError, AttributeError):
        notes.append(f"{cfg_path or source} unreadable: number of classes unknown")


def _classifier_evidence(keys: Iterable[str]) -> str | None:
    """What in a run's logged keys (`<split>/<metric>`, as the readers name them) says it classifies: a per-class key
    (`val/recall/neg`, store.PER_CLASS) or a CLASSIFIER_METRICS metric; None where nothing does."""
    for key in sorted(keys):
        parts = str(key).split("/")
        if len(parts) >= 3 and parts[1] in PER_CLASS:
            return f"per-class key {key} in the log"
        if len(parts) == 2 and parts[1] in CLASSIFIER_METRICS:
            return f"classification metric {key} in the log"
    return None


def _task_from_side_files(folder: Path, meta: dict, facts: dict, adapter: Mapping[str, Any] | None,
                          live: tuple[Mapping[str, Any], str] | None = None, classifies: str | None = None) -> None:
    """meta["task"] from adapter_config.json's task_type, else config.json's architecture (PEFT_TASK_TYPES,
    ARCH_TASKS; `live`: a live model's config dict in place of the file); a task already read (TRL keys,
    problem_type multi-label) stands. `classifies`: what in the log says the run classifies (_classifier_evidence),
    which a bare `*Model` architecture does not overrule (BARE_MODEL_SUFFIX)."""
    if meta.get("task"):
        return
    found: tuple[str, str] | None = None
    a = dict(adapter) if adapter is not None else None
    if a is None and (ad := _side_file(folder, "adapter_config.json")) is not None:
        try:
            a = json.loads(ad.read_text(encoding="utf-8"))
        except (*PARSE_ERRORS, UnicodeDecodeError, OSError):
            a = None
    tt = str((a if isinstance(a, dict) else {}).get("task_type") or "").upper()
    if tt in PEFT_TASK_TYPES:
        found = (PEFT_TASK_TYPES[tt], f"adapter_config.json task_type {tt}")
    # no task_type (null, as peft writes it for a model wrapped without one): the base model class peft records in
    # auto_mapping names the head as config.json's architecture does (caglanakpinar, fold K: Qwen2ForCausalLM)
    base_class = ((a if isinstance(a, dict) else {}).get("auto_mapping") or {})
    base_class = str(base_class.get("base_model_class") or "") if isinstance(base_class, dict) else ""
    if found is None and base_class:
        found = next(((task, f"adapter_config.json auto_mapping base_model_class {base_class}")
                      for suffix, task in ARCH_TASKS if base_class.endswith(suffix)), None)
    cp = _side_file(folder, "config.json") if live is None else None
    if live is not None or cp is not None:
        source = live[1] if live is not None else cp.name
        try:
            mcfg = dict(live[0]) if live is not None else json.loads(cp.read_text(encoding="utf-8"))
        except (*PARSE_ERRORS, UnicodeDecodeError, OSError, TypeError):
            mcfg = {}
        mcfg = mcfg if isinstance(mcfg, dict) else {}
        archs = [str(x) for x in (mcfg.get("architectures") or [])]
        id2label = mcfg.get("id2label") if isinstance(mcfg.get("id2label"), dict) else {}
        n_labels = mcfg.get("num_labels", len(id2label) if id2label else None)
        if mcfg.get("problem_type") == "regression" or (
                any(x.endswith("ForSequenceClassification") for x in archs) and mcfg.get("num_labels") == 1):
            found = ("regression", f"{source} problem_type regression")
        # a config that names one label and no architecture: one label has no ln(classes) and the only head it
        # configures in transformers (num_labels 1) is a regression's, so it is no classifier (ALLITi, fold F: a
        # GPT-2 config carrying the default-built id2label {0: LABEL_0}); an architecture, where named, decides
        elif found is None and not archs and n_labels == 1:
            found = ("regression", f"{source} one label, no architecture")
        elif found is None:
            found = next(((task, f"{source} architecture {x}") for x in archs for suffix, task in ARCH_TASKS
                          if x.endswith(suffix)), None)
            named = [str(v) for v in id2label.values()]
            if len(named) >= 2 and not all(DEFAULT_LABEL_NAME.fullmatch(v) for v in named):
                classifies = classifies or f"{source} id2label names its labels ({', '.join(named[:3])})"
            bare = next((x for x in archs if x.endswith(BARE_MODEL_SUFFIX)), None)
            if found is None and bare is not None and live is None and not classifies:
                found = (EMBEDDING_TASK, f"{source} architecture {bare} (no head: an embedding model)")
    # sentence-transformers' / SetFit's own files say it whatever the log holds (an evaluator's accuracy included)
    if found is None and live is None:
        marker = next((f for f in EMBEDDING_SIDE_FILES if _side_file(folder, f) is not None), None)
        found = (EMBEDDING_TASK, f"{marker} (a sentence-transformers / SetFit model)") if marker else None
    if found is not None:
        meta["task"] = found[0]
        facts["task"] = Fact(found[0], found[1])
        if found[0] in NO_CLASS_TASKS:
            meta.pop("labels", None)
            meta.pop("n_classes", None)
            facts.pop("n_classes", None)


# a whole model's weights as transformers' save_pretrained writes them (one file, shards, or their index), and an
# adapter's as peft's does: a run folder holding the first and none of the second trained every weight
FULL_WEIGHTS_GLOBS = ("model.safetensors", "model-*-of-*.safetensors", "model.safetensors.index.json",
                      "pytorch_model.bin", "pytorch_model-*-of-*.bin", "pytorch_model.bin.index.json")
ADAPTER_FILE_GLOBS = ("adapter_config.json", "adapter_model.*")
METHOD_FACT = "method"


def _method_from_weights(folder: Path, meta: dict, facts: dict) -> None:
    """meta["method"] "full" (and its fact, saying where it was read) for a Trainer run with no side file naming its
    method, where the folder shows it unambiguously: a whole model's weights (FULL_WEIGHTS_GLOBS) in the run folder or
    one of its checkpoint-* folders, and no adapter file (ADAPTER_FILE_GLOBS) in the run folder nor in any folder
    within it (two levels: checkpoint-*, final/, adapter/...). A folder with only trainer_state.json (or config.json)
    stays unknown: the Trainer writes both for a peft run too."""
    if not folder.is_dir():
        return
    run = folder.parent if checkpoint_step(folder) is not None else folder
    ckpts = sorted((q for q in run.glob("checkpoint-*") if q.is_dir() and checkpoint_step(q) is not None),
                   key=lambda q: checkpoint_step(q) or 0, reverse=True)
    weights = next((f for q in [run] + ckpts for g in FULL_WEIGHTS_GLOBS for f in sorted(q.glob(g)) if f.is_file()),
                   None)
    if weights is None or any(m in name for name in _weight_names(weights) for m in ADAPTER_WEIGHT_MARKS):
        return  # an adapter's tensors under a whole model's file name (a Trainer wrapping a PeftModel saves so)
    try:
        subs = [q for q in run.iterdir() if q.is_dir()]
        places = [run] + subs + [s for q in subs for s in q.iterdir() if s.is_dir()]
        if any(next(q.glob(g), None) is not None for q in places for g in ADAPTER_FILE_GLOBS):
            return
    except OSError:  # a folder that cannot be listed: whether an adapter lies in it is unknown
        return
    where = weights.name if weights.parent == run else f"{weights.parent.name}/{weights.name}"
    meta["method"] = "full"
    facts[METHOD_FACT] = Fact("full", f"{where}: a whole model's weights, no adapter_config.json in the run folder")


# tensor names that only an adapter's weights hold (peft: lora_A/lora_B/lora_embedding_*/lora_magnitude_vector, and the
# modules_to_save copies): a model.safetensors holding them is an adapter's, not a full fine-tune's. A peft model merged
# (merge_and_unload) and saved into the run folder holds none: it reads full, indistinguishable from a full fine-tune
ADAPTER_WEIGHT_MARKS = ("lora_", "modules_to_save")


def _weight_names(f: Path) -> list[str]:
    """The tensor names of a safetensors file (its JSON header) or of a sharded model's index (its weight_map); []
    where they cannot be read (a pytorch_model.bin, an unreadable header)."""
    try:
        if f.name.endswith(".index.json"):
            return list((json.loads(f.read_text(encoding="utf-8")).get("weight_map") or {}).keys())
        if f.suffix == ".safetensors":
            with f.open("rb") as fh:
                size = int.from_bytes(fh.read(8), "little")
                if 0 < size < 100_000_000:
                    return [k for k in json.loads(fh.read(size)) if k != "__metadata__"]
    except (OSError, ValueError, AttributeError):
        pass
    return []


def _classes_from_weights(folder: Path, meta: dict, facts: dict) -> None:
    """The classifier head's rows in a saved `*.safetensors` (read from its JSON header: no torch)."""
    files = [f for name in ("adapter_model.safetensors", "model.safetensors")
             if (f := _side_file(folder, name)) is not None]
    for f in files:
        try:
            with f.open("rb") as fh:
                size = int.from_bytes(fh.read(8), "little")
                if not 0 < size < 100_000_000:
                    continue
                header = json.loads(fh.read(size))
        except (OSError, *PARSE_ERRORS):
            continue
        for name, info in header.items():
            shape = info.get("shape") if isinstance(info, dict) else None
            if name.endswith(_HEAD_SUFFIXES) and isinstance(shape, list) and len(shape) == 2 and \
                    CHANCE_CLASSES_RANGE[0] <= shape[0] <= 100_000:
                meta["n_classes"] = int(shape[0])
                facts["n_classes"] = Fact(int(shape[0]), f"{f.name}: {name} has {shape[0]} rows")
                return


def estimated_classes_ln(k: int) -> tuple[float, float]:
    """The ln(classes) an estimated count `k` stands for: the step-0 loss it was rounded from (ln(k -+ 0.5)) within the
    estimate's error (CHANCE_CLASSES_LN_ERROR): an estimated 9 is 8 to 10 classes, 63 is 59 to 100, not 151."""
    return (math.log(max(k - 0.5, 1.0)) * (1 - CHANCE_CLASSES_LN_ERROR),
            math.log(k + 0.5) * (1 + CHANCE_CLASSES_LN_ERROR))


def _classes_from_first_loss(train_logs: Sequence[dict], meta: dict, facts: dict) -> None:
    """A fresh classifier head starts near the loss of a uniform guess, ln(classes)."""
    first = next((e for e in train_logs if _fin(e.get("loss")) is not None), None)
    if first is None or first["step"] > CHANCE_LOSS_MAX_STEP:
        return
    if (_fin(first.get("grad_norm")) or 0.0) >= CHANCE_GRAD_NORM_MAX:
        return  # the first window already blew up: its loss says nothing about the classes
    l1, s1 = float(first["loss"]), float(first["step"])
    start, how = l1, f"the first train loss {l1:.3f} at step {first['step']}"
    second = next((e for e in train_logs if e["step"] > first["step"] and _fin(e.get("loss")) is not None), None)
    if second is not None and second["step"] <= 2 * CHANCE_LOSS_MAX_STEP and 0 < float(second["loss"]) < l1:
        # the first window already learned a little: extrapolate the first two windows' log-linear fall to step 0.
        # A logged loss is the mean over its logging window (steps s1 + 1 .. s2 after s1 updates), so it sits at the
        # window's centre; read at its end step, a 77-class start (ln 77 = 4.34) extrapolated to ln 99
        s2 = float(second["step"])
        c1, c2 = (s1 - 1) / 2, (s1 + s2 - 1) / 2  # updates done, on average, before a window's losses
        slope = (math.log(float(second["loss"])) - math.log(l1)) / (c2 - c1)
        start = min(l1 * math.exp(-slope * c1), CHANCE_BACKFILL_MAX * l1)
        how = f"the first train losses {l1:.3f}, {float(second['loss']):.3f} extrapolated to {start:.3f} at step 0"
    if not start <= math.log(CHANCE_CLASSES_RANGE[1] + 1):  # a loss far above ln(classes): no class count in it
        return
    k = round(math.exp(start))
    if CHANCE_CLASSES_RANGE[0] <= k <= CHANCE_CLASSES_RANGE[1]:
        meta["n_classes"] = k
        facts["n_classes"] = Fact(k, f"estimated from {how} (~ ln(classes) for a fresh head); give config.json "
                                     "to be sure")


# A classifier's Trainer run with gradient accumulation N logs each train loss as the SUM of its N micro-batches' means
# (transformers leaves the division to a model whose forward takes **kwargs, and a classification head ignores them:
# integrations.trainer._sums_micro_batch_losses). Read from the files: the first train loss, logged this early
# (CHANCE_LOSS_MAX_STEP), at about N x the first eval loss made as early, or N x ln(classes) for a fresh head
SUMMED_LOSS_RATIO_MIN = 1.8  # a first train loss this many times its reference is no mean of one batch's loss
SUMMED_LOSS_TOLERANCE = 0.2  # the ratio within this share of N agrees with N accumulation steps
# ...and an epoch's last optimizer step sums only what is left of its batches (6 batches, accumulation 4: 4, then 2),
# so a window holding it sums fewer micro-batch means than the others. After each optimizer step the Trainer sets
# `epoch` to the epochs done + the micro-batches done / the micro-batches per epoch B (epoch + (step + 1) /
# steps_in_epoch), so epoch x B counts the micro-batches done: the logged epochs give each window's micro-batch count,
# and the steps at which they were logged the accumulation N, so a full window is its steps x N micro-batches (not the
# largest window: logged every 3 steps over epochs of 2, every window holds an epoch's end; _epoch_schedule). An epoch
# is read as the fraction it is: the smallest B up to EPOCH_BATCHES_MAX making every logged epoch x B an integer within
# a float's error
EPOCH_BATCHES_MAX = 1_000_000  # micro-batches per epoch (8M rows at batch 8): fractions with denominators up to this
# lie 1e-12 apart or more, far beyond the error below, so an epoch the Trainer computed names one fraction
EPOCH_FLOAT_TOLERANCE = 1e-13  # relative: an epoch within this of a fraction is it (the Trainer's sum: ~1e-16 off)
# transformers from 4.2 (2021) logged round(epoch, 2) for a while: epochs that are all multiples of 0.01 may be
# rounded, and rounded epochs can fit a schedule by chance (199 batches at accumulation 2 print 0.01, 0.02, ..., 0.99,
# 1.0, exactly 100 batches of 1 a step: no short step, where each epoch's last holds 1 of 2). Such a reading stands
# only where no schedule the run's other evidence allows (_rounded_readings) prints the same epochs, rounded, and sizes
# a window otherwise by more than WINDOW_SHARE_TOLERANCE
ROUNDED_EPOCH_DECIMALS = 2
# ...but transformers logs them unrounded since 4.41 (PR 30237, 2024), and a trainer_state.json holding this key (PR
# 35885, 2025) was written after: its epochs are exact (of the corpus's 222 such files, 165 print 3 digits or more,
# which round(epoch, 2) never does, and the other 57 are fractions a schedule logs exactly)
UNROUNDED_EPOCHS_KEY = "best_global_step"
# ...where nothing else tells N (no model card, no first loss to compare), the accumulations sought: those fine-tuning
# recipes use (HF examples, QLoRA: 2 to 16). Higher, ever more accumulations print any 2-decimal epoch (the fractions
# N / B with N up to n lie about 1 / (B n) apart) until none is readable: exact epochs of 10 batches at accumulation 4
# (0.4, 0.8, 1.0) are also 82 batches at 33 (0.4024, 0.8049, 1.0), their short step 48%
ROUNDED_ACCUMULATION_MAX = 16
# Two readings of a window's share agree within this much, and where no schedule logs the epochs (rounded otherwise), a
# window's epoch advance per step against the largest is its share, read only where the printed digits' rounding
# leaves it within this much (the 2% a new low must beat to count as progress, features.IMPROVE_MIN_REL): read
# coarser, a rescaled window could fake a fall that counts
WINDOW_SHARE_TOLERANCE = IMPROVE_MIN_REL
# Bounds on the searches below, which a Trainer's own log never nears: an accumulation past this is no recipe's (a
# first train loss 1e6 x the first eval's is a leaked or trivial val set, not a sum of 1e6 micro-batch means), and a
# log that leaves more candidate schedules than this (a step gap of 1e7 across half an epoch) is no schedule's: past
# either the windows are not sized (a review found both growing without bound: 19 s at a ratio of 1e6, 57 s at a gap)
ACCUMULATION_SEARCH_MAX = 1024
SCHEDULE_SEARCH_MAX = 100_000
# the Trainer's model card (trainer.create_model_card(), push_to_hub) lists the accumulation steps under
# "Training hyperparameters" when there are more than 1
_CARD_ACCUMULATION = re.compile(r"^\s*[-*]?\s*gradient_accumulation_steps:\s*(\d+)\s*$", re.MULTILINE)


def _card_accumulation(folder: Path) -> tuple[int, str] | None:
    """The gradient accumulation steps the Trainer's model card README.md beside the run lists, and where."""
    card = _side_file(folder, "README.md")
    if card is None:
        return None
    try:
        m = _CARD_ACCUMULATION.search(card.read_text(encoding="utf-8", errors="replace")[:200_000])
    except OSError:
        return None
    return (int(m.group(1)), f"{card.parent.name}/{card.name}") if m and int(m.group(1)) > 1 else None


def _decimals(x: float) -> int:
    """The digits after the point of a logged number as written (0.67: 2; 0.6666666666666666: 16)."""
    return max(0, -int(Decimal(repr(float(x))).as_tuple().exponent))


def _as_fraction(x: float, most: int) -> Fraction | None:
    """x as the fraction with the smallest denominator up to `most` that it is within a float's error of, or None."""
    f = Fraction(x).limit_denominator(most)
    return f if abs(float(Fraction(x) - f)) <= EPOCH_FLOAT_TOLERANCE * max(1.0, abs(x)) else None


def _lcm_within(numbers: Iterable[int], most: int) -> bool:
    """Whether the least common multiple of `numbers` is at most `most` (stopping as soon as it passes: the lcm of
    50,000 distinct large denominators took 5 s)."""
    m = 1
    for n in numbers:
        m = math.lcm(m, n)
        if m > most:
            return False
    return True


def _epoch_schedule(steps: Sequence[float], epochs: Sequence[Fraction]) -> tuple[int, Fraction, list[int]] | None:
    """The Trainer's accumulation schedule that logs `epochs` (exact, in epochs) at `steps`: (P optimizer steps per
    epoch, N micro-batches a full step in units of 1 / B0, the micro-batches done at each log in those units), where
    B0 is the smallest count of micro-batches per epoch that makes every epoch whole (the true B and N are a common
    multiple: every share below is the same for both). Each epoch's B micro-batches go in steps of N, the last one
    holding the rest: after step s, (s // P) x B + (s % P) x N are done. None where no such schedule logs them, or
    where every log ends an epoch (the windows are whole epochs, all alike: nothing tells N)."""
    b0 = math.lcm(*(e.denominator for e in epochs))
    done = [e * b0 for e in epochs]  # integers
    mid = next(((int(s), int(c)) for s, c in zip(steps, done) if c % b0), None)
    if mid is None:
        return None
    s, c = mid
    whole, part = divmod(c, b0)  # the epochs done at that log, and the micro-batches into the next
    if whole == 0:  # s full steps into the first epoch
        tries = [(None, Fraction(c, s))]
    else:  # r = s - whole x P steps into its epoch, 1 <= r <= P - 1, of N each
        ps = range(-(-(s + 1) // (whole + 1)), (s - 1) // whole + 1)
        if len(ps) > SCHEDULE_SEARCH_MAX:
            return None
        tries = [(p, Fraction(part, s - whole * p)) for p in ps]
    for p, n in tries:
        per_epoch = math.ceil(b0 / n)
        if p in (None, per_epoch) and all(int(t) // per_epoch * b0 + int(t) % per_epoch * n == k
                                          for t, k in zip(steps, done)):
            return per_epoch, n, [int(k) for k in done]
    return None


def _rounded_readings(steps: Sequence[float], epochs: Sequence[float], most: int,
                      first_ratios: Sequence[float] = ()) -> Iterator[list[float]]:
    """The window shares (of their steps x N micro-batches) of every schedule whose epochs,
    round(epoch, ROUNDED_EPOCH_DECIMALS), are `epochs`: any B, those whose first window's micro-batches a step agree
    with one of `first_ratios` (its summed loss over a mean's reference, _summed_losses) within SUMMED_LOSS_TOLERANCE
    (N up to twice that: a window of 2 steps or more holds at least half its steps' N); without them, N up to `most`.
    A range of B gives its two ends' (a share is monotone in B)."""
    if first_ratios:
        most = min(ACCUMULATION_SEARCH_MAX, math.ceil(2 * max(first_ratios) * (1 + SUMMED_LOSS_TOLERANCE)))
    half = 0.5 * 10.0 ** -ROUNDED_EPOCH_DECIMALS + 1e-9  # (and a float's error: a tie rounds either way)
    ints = [int(t) for t in steps]
    # P: past the last step logged inside the first epoch, and no later than the first logged surely past it
    p_lo = max([t + 1 for t, e in zip(ints, epochs) if e + half < 1.0] or [1])
    # (P past the last step logged: every log inside the first epoch, every window full)
    p_hi = min([t for t, e in zip(ints, epochs) if e - half > 1.0] or [ints[-1] + 1])
    if p_hi - p_lo + 1 > SCHEDULE_SEARCH_MAX:
        return
    for p in range(p_lo, p_hi + 1):
        for n in range(1, most + 1):
            b_lo, b_hi = (p - 1) * n + 1, p * n if p <= ints[-1] else math.inf  # B with P = ceil(B / N)
            for t, e in zip(reversed(ints), reversed(epochs)):  # (the last logs, many epochs in, bound B the most)
                whole, r = divmod(t, p)
                f = e - whole  # r x N / B within half a unit of it (and 0 at an epoch's end)
                if r == 0 or f + half <= 0:
                    fits = abs(f) <= half and r == 0
                else:
                    b_lo = max(b_lo, math.ceil(r * n / (f + half)))
                    if f - half > 0:
                        b_hi = min(b_hi, math.floor(r * n / (f - half)))
                    fits = b_lo <= b_hi
                if not fits:
                    break
            else:
                for b in sorted({b_lo, b_hi} - {math.inf}):
                    done = [t // p * b + t % p * n for t in ints]
                    if not first_ratios or any(abs(done[0] / ints[0] / r - 1) <= SUMMED_LOSS_TOLERANCE
                                               for r in first_ratios):
                        yield [(k - j) / ((t - u) * n) for t, u, k, j in zip(ints, [0] + ints, done, [0] + done)]


def _disagreement(shares: Sequence[float], readings: Iterable[Sequence[float]]) -> tuple[float, float] | None:
    """The first window share that one of `readings` puts further than WINDOW_SHARE_TOLERANCE from `shares`:
    (here, there); else None."""
    for there in readings:
        for a, b in zip(shares, there):
            if abs(b / a - 1.0) > WINDOW_SHARE_TOLERANCE:
                return a, b
    return None


def _window_shares(train_logs: Sequence[dict], first_ratios: Sequence[float] = (),
                   unrounded: bool = False) -> tuple[list[float] | None, str | None]:
    """Each train log's share of a full window's micro-batches (its steps x N): (shares, None) where some window
    holds an epoch's shorter last step (1.0 for a full window); (None, why) where a window may be short but the
    logged epochs leave its share unread; (None, None) where every window is full, or no epochs say (nothing says
    otherwise). The logged epochs are read exactly where they are fractions the Trainer's schedule gives
    (_epoch_schedule); else as rounded to their printed digits. `first_ratios` (_rounded_readings) tell epochs that
    round(epoch, 2) may have printed from another schedule's; `unrounded`: none did (UNROUNDED_EPOCHS_KEY)."""
    marks = [(_fin(e.get("step")), _fin(e.get("epoch"))) for e in train_logs]
    if len(marks) < 2 or any(s is None or ep is None for s, ep in marks):
        return None, None
    spans, before = [], (0.0, 0.0)
    for s, ep in marks:
        if s <= before[0] or ep < before[1]:
            return None, None  # a step logged again, or going back (a resume): no reading
        spans.append((s - before[0], ep - before[1]))  # (an epoch repeated: rounded, many steps to an epoch)
        before = (s, ep)
    steps = [s for s, _ in marks]
    exact = [_as_fraction(ep, EPOCH_BATCHES_MAX) for _, ep in marks]
    fractions = all(e is not None for e in exact)
    rounded = not unrounded and fractions and all((e * 10 ** ROUNDED_EPOCH_DECIMALS).denominator == 1 for e in exact)
    if fractions and _lcm_within((e.denominator for e in exact), EPOCH_BATCHES_MAX):
        schedule = _epoch_schedule(steps, exact)
        if schedule is None and all(e.denominator == 1 for e in exact):
            return None, None  # every log ends an epoch: whole epochs, alike
        if schedule is not None:
            _, n, done = schedule
            shares = [float((k - j) / (n * int(w))) for (w, _), k, j in zip(spans, done, [0] + done)]
            if rounded:  # as round(epoch, 2) prints them: another schedule may print them too
                most = max(ROUNDED_ACCUMULATION_MAX, n.numerator)
                other = _disagreement(shares, _rounded_readings(steps, [ep for _, ep in marks], most, first_ratios))
                if other is not None:
                    return None, (f"the logged epochs are multiples of {10.0 ** -ROUNDED_EPOCH_DECIMALS:g}, as older "
                                  "transformers rounded them: read as exact, they size a train-loss window at "
                                  f"{other[0]:.1%} of a full window's micro-batches, read as rounded, at "
                                  f"{other[1]:.1%} (an epoch's shorter last step holds what is left of its batches): "
                                  "the windows may sum unequal counts of micro-batch means, so the train loss's fall "
                                  "is not read")
            if all(x >= 1.0 for x in shares):
                return None, None
            return [min(x, 1.0) for x in shares], None
    if rounded:
        # no schedule logs them exactly, as round(epoch, 2) prints them: read where every schedule that prints them so
        # sizes the windows alike
        readings = _rounded_readings(steps, [ep for _, ep in marks], ROUNDED_ACCUMULATION_MAX, first_ratios)
        shares = next(readings, None)
        if shares is not None:
            other = _disagreement(shares, readings)
            if other is not None:
                return None, (f"the logged epochs, rounded to {10.0 ** -ROUNDED_EPOCH_DECIMALS:g}, are printed alike "
                              f"by schedules that size a train-loss window at {other[0]:.1%} and {other[1]:.1%} of a "
                              "full window's micro-batches (an epoch's shorter last step holds what is left of its "
                              "batches): the windows may sum unequal counts of micro-batch means, so the train loss's "
                              "fall is not read")
            if all(x >= 1.0 for x in shares):
                return None, None
            return [min(x, 1.0) for x in shares], None
    # rounded epochs (no schedule fits them): a window's epoch advance per step against a full step's (the largest) is
    # its share, and a window that may hold an epoch's end is sized only where the epochs' rounding leaves its share
    # within WINDOW_SHARE_TOLERANCE: coarser, the rounding could hide a short step in it
    half_unit = 0.5 * 10.0 ** -max(_decimals(ep) for _, ep in marks)  # the logged epochs' rounding
    lows = [0.0] + [ep - half_unit for _, ep in marks[:-1]]
    may_end = [math.floor(ep + half_unit) > math.floor(low) for (_, ep), low in zip(marks, lows)]
    steps_full, epochs_full = max(spans, key=lambda sp: sp[1] / sp[0])
    shares = [ep / steps / (epochs_full / steps_full) for steps, ep in spans]
    # a share's relative error: its window's epoch advance and the full step's, each off by two roundings at most
    errors = [2 * half_unit / ep + 2 * half_unit / epochs_full if ep > 0 else math.inf for _, ep in spans]
    if any(end and err > WINDOW_SHARE_TOLERANCE for end, err in zip(may_end, errors)):
        return None, (f"the logged epochs, rounded to {half_unit * 2:g}, leave {sum(may_end)} train-loss window(s) "
                      "that may hold an epoch's shorter last step (what is left of its batches) unsized: the windows "
                      "may sum unequal counts of micro-batch means, so the train loss's fall is not read")
    # short: beyond its error and the tolerance (a window a hair short, or one float's rounding, changes nothing
    # that counts)
    short = [end and share < 1.0 - max(err, WINDOW_SHARE_TOLERANCE)
             for end, share, err in zip(may_end, shares, errors)]
    if not any(short):
        return None, None
    return [share if is_short else 1.0 for share, is_short in zip(shares, short)], None


def _summed_losses(train_logs: Sequence[dict], eval_logs: Sequence[dict], ref_losses: Sequence[str], folder: Path,
                   adapter: Mapping[str, Any] | None, unrounded: bool = False,
                   classifies: str | None = None) -> dict | None:
    """Whether the logged train losses are sums over gradient-accumulation micro-batches: None when nothing says so;
    else {"factor": 1/N to read them as means, or None where N is unknown, "ratio", "why", and "shares" (each log's
    share of a full window's micro-batches, _window_shares) where some window holds an epoch's shorter last step, or
    "unequal_windows" (why) where the logged epochs show one but cannot say how short}. `ref_losses`: the eval loss
    keys to compare with, in order of preference (_eval_ref_loss). Rescaled to means only when the accumulation steps
    N are known (the model card) and the first loss agrees with N; a ratio that says "summed" without N is reported
    and the loss left as logged, but for a short window, read over the micro-batches it holds (the same N-fold sum as
    the others)."""
    first = next((e for e in train_logs if _fin(e.get("loss")) is not None), None)
    if first is None or first["step"] > CHANCE_LOSS_MAX_STEP or float(first["loss"]) <= 0:
        return None
    if (_fin(first.get("grad_norm")) or 0.0) >= CHANCE_GRAD_NORM_MAX:
        return None  # the first window already blew up: a high loss there is no sum
    # the class count and task the side files give (the reader sets them on the run later; read here without notes)
    side_meta: dict = {}
    side_facts: dict = {}
    _model_config_facts(folder, side_meta, side_facts, [])
    _task_from_side_files(folder, side_meta, side_facts, adapter, classifies=classifies)
    if side_meta.get("task") in NO_CLASS_TASKS and side_meta.get("task") != "question-answering":
        return None  # a language model's loss is a mean over tokens (it takes the loss kwargs)
    if "n_classes" not in side_facts and side_meta.get("task") not in NO_CLASS_TASKS:
        _classes_from_weights(folder, side_meta, side_facts)
    loss = float(first["loss"])
    refs = []  # (reference loss, what it is)
    k = side_facts["n_classes"].value if "n_classes" in side_facts else None
    if (side_meta.get("task") in (None, "single_label") and isinstance(k, int)
            and CHANCE_CLASSES_RANGE[0] <= k <= CHANCE_CLASSES_RANGE[1]):
        refs.append((math.log(k), f"ln({k} classes, {side_facts['n_classes'].source})"))
    ev = next((e for e in eval_logs if _eval_ref_loss(e, ref_losses) is not None), None)
    if ev is not None and ev["step"] <= CHANCE_LOSS_MAX_STEP and _eval_ref_loss(ev, ref_losses) > 0:
        refs.append((_eval_ref_loss(ev, ref_losses), f"the first eval loss (step {ev['step']:g})"))
    if not refs:
        return None
    # the first window's sum over its reference, its micro-batches a step, tells which schedule rounded epochs are of
    shares, unread = _window_shares(train_logs, [loss / ref for ref, _ in refs] if first is train_logs[0] else (),
                                    unrounded)
    if shares is not None:  # (the tests below read the windows as the sums of N they are taken for)
        loss /= next(share for e, share in zip(train_logs, shares) if e is first)
        train_logs = [scaled_train_losses(e, 1.0 / share) for e, share in zip(train_logs, shares)]
    ratios = [loss / ref for ref, _ in refs]
    card = _card_accumulation(folder)
    said = (f"the first train loss {loss:.3f} (step {first['step']:g}) is "
            + " and ".join(f"{r:.2f}x {what}" for r, (_, what) in zip(ratios, refs)))
    windows = ({"shares": shares} if shares is not None else {"unequal_windows": unread} if unread else {})
    short = (f"; {sum(x < 1.0 for x in shares)} window(s) holding an epoch's shorter last step (down to "
             f"{min(shares):.0%} of a full window's micro-batches, read from the logged epochs) are scaled to a full "
             "window's count, so that every window sums as many" if shares is not None
             else f"; {unread}" if unread else "")
    if card is not None and all(abs(r / card[0] - 1) <= SUMMED_LOSS_TOLERANCE for r in ratios):
        n, where = card
        return {"factor": 1.0 / n, "ratio": round(min(ratios), 3), "accumulation": n, **windows,
                "why": f"train losses x 1/{n}, read as the mean of their gradient-accumulation micro-batches: {where} "
                       f"lists gradient_accumulation_steps: {n} and {said} (the Trainer logs a classifier's loss "
                       f"summed over them){short}"}
    # without N, the ratio must hold all run long: a sum stays N x the eval loss where a first window that blew up
    # (2.8 x ln 10 at step 10, then 1.25 x) falls back to it, and one the eval loss followed up (40 vs 60) never had it
    held = _train_over_eval(train_logs, eval_logs, ref_losses)
    if all(r >= SUMMED_LOSS_RATIO_MIN for r in ratios) and held is not None and held >= SUMMED_LOSS_RATIO_MIN:
        how = (f"{card[1]} lists gradient_accumulation_steps: {card[0]}, which it does not match" if card else
               "the accumulation steps are unknown (no Trainer model card README.md listing "
               "gradient_accumulation_steps; call trainer.create_model_card() to write one)")
        return {"factor": None, "ratio": round(min(ratios), 3), **windows,
                "why": f"{said}: the train losses look summed over gradient-accumulation micro-batches (the Trainer "
                       f"logs a classifier's loss so), but {how}: they are kept as logged, no class count is "
                       "estimated from them, and the train loss is not compared with ln(classes) (diverged, "
                       f"lr-too-large){short}"}
    return None


def _eval_ref_loss(ev: dict, ref_losses: Sequence[str]) -> float | None:
    """An eval entry's loss under the first of `ref_losses` it logs finite (several named sets log one entry each)."""
    return next((float(ev[k]) for k in ref_losses if _fin(ev.get(k)) is not None), None)


def _train_over_eval(train_logs: Sequence[dict], eval_logs: Sequence[dict], ref_losses: Sequence[str]) -> float | None:
    """The median over evaluations of the last train loss logged at or before it over its eval loss."""
    steps = [e["step"] for e in train_logs]
    ratios = []
    for ev in eval_logs:
        i = bisect.bisect_right(steps, ev["step"]) - 1
        v, t = _eval_ref_loss(ev, ref_losses), _fin(train_logs[i].get("loss")) if i >= 0 else None
        if v and v > 0 and t is not None:
            ratios.append(t / v)
    return statistics.median(ratios) if ratios else None


def _adapter_facts(folder: Path, facts: dict, notes: list[str], given: Mapping[str, Any] | None = None) -> dict:
    where = "the live model's peft config"
    if given is not None:
        a = dict(given)
    else:
        ad = _side_file(folder, "adapter_config.json")
        if ad is None:
            return {}
        try:
            a = json.loads(ad.read_text(encoding="utf-8"))
        except (*PARSE_ERRORS, UnicodeDecodeError):
            notes.append(f"{ad} is not valid JSON: rank, alpha and targets unknown")
            return {}
        if not isinstance(a, dict):
            notes.append(f"{ad} is not a JSON object: rank, alpha and targets unknown")
            return {}
        where = "adapter_config.json" if ad.parent == folder else f"{ad.parent.name}/adapter_config.json"
    out = {}
    rank_source = where
    if str(a.get("peft_type", "")).upper() == "ADALORA" and _fin(a.get("init_r")):
        # AdaLoRA builds its matrices at init_r and prunes towards an average of target_r; peft ignores `r`
        # (AdaLoraConfig warns when it is set) and scales by lora_alpha / init_r (its `ranknum`, never updated)
        rank_source = f"{where}: init_r (AdaLoRA starts at it; its `r` is unused)" + (
            f", pruned towards an average of target_r {a['target_r']}" if _fin(a.get("target_r")) else "")
        a = {**a, "r": a["init_r"], "use_rslora": False}
    for k in _ADAPTER_FACTS:
        if a.get(k) is not None and a.get(k) != {}:  # an empty pattern is peft's default: none
            v = a[k]
            if isinstance(v, (set, tuple)):
                v = list(v)
            out[k] = sorted(map(str, v)) if isinstance(v, list) and k == "target_modules" else v
            facts[k] = Fact(out[k], rank_source if k == "r" else where)
    if _fin(a.get("r")) and _fin(a.get("lora_alpha")) and a["r"] > 0:  # r <= 0 is no rank: no scale either
        scale = a["lora_alpha"] / (math.sqrt(a["r"]) if a.get("use_rslora") else a["r"])
        facts["lora_scale"] = Fact(round(scale, 6), f"{where}: lora_alpha / " +
                                   ("sqrt(r) (rsLoRA)" if a.get("use_rslora") else
                                    "init_r (AdaLoRA)" if rank_source != where else "r"))
        ranks, alphas = (a.get(k) if isinstance(a.get(k), dict) else {} for k in ("rank_pattern", "alpha_pattern"))
        if ranks or alphas:  # peft: a module matching a pattern key takes its own rank / alpha
            own = []
            for key in sorted(set(ranks) | set(alphas)):
                r, alpha = ranks.get(key, a["r"]), alphas.get(key, a["lora_alpha"])
                if _fin(r) and _fin(alpha) and r > 0:
                    own.append(f"{key}: r {r:g}, scale {alpha / (math.sqrt(r) if a.get('use_rslora') else r):.3g}")
            notes.append(f"{where} gives some modules their own rank or alpha (rank_pattern / alpha_pattern): "
                         f"{'; '.join(own) or 'unreadable'}; r and lora_scale above are the other modules'")
    return out


def _config_from_facts(adapter: dict, facts: dict) -> dict:
    """A loratune-shaped config (`adapter`, `train` sections) from what the files say, for comparisons."""
    config: dict[str, Any] = {}
    if adapter:
        config["adapter"] = {k: v for k, v in adapter.items() if k not in ("peft_type", "base_model_name_or_path")}
    train = {}
    if "learning_rate" in facts:
        train["learning_rate"] = facts["learning_rate"].value
    for k, key in (("train_batch_size", "per_device_train_batch_size"), ("max_steps", "max_steps")):
        if k in facts:
            train[key] = facts[k].value
    if "lr_schedule" in facts:
        train["lr_scheduler_type"] = facts["lr_schedule"].value
    if train:
        config["train"] = train
    return config


def _transformers_version(folder: Path, live: tuple[Mapping[str, Any], str] | None = None) -> str | None:
    """The transformers version a Trainer run's model config names (`transformers_version`: the live model's, else
    the config.json beside the state), or None."""
    try:
        cfg = dict(live[0]) if live is not None else (
            json.loads(p.read_text(encoding="utf-8")) if (p := _side_file(folder, "config.json")) is not None else {})
    except (OSError, *PARSE_ERRORS, UnicodeDecodeError, TypeError, ValueError):
        return None
    v = cfg.get("transformers_version") if isinstance(cfg, dict) else None
    return v if isinstance(v, str) else None


def _lr_facts(train_logs: Sequence[dict], max_steps: Any = None, next_lr: bool = False) -> dict[str, "Fact"]:
    """The learning rate's peak and schedule from the `learning_rate` logged at every logging step.

    The logged values are samples of the schedule, so the peak is estimated: after warm-up, each sample
    divided by the schedule's shape at its step (1 - s/N for linear, (1 + cos(pi s/N))/2 for cosine,
    1 for constant; N = the last logged step extrapolated to where the fitted schedule ends), taking the
    shape that fits the samples best (`_round_lr`). `max_steps`: the state's planned steps, where the Trainer's
    schedule ends (a checkpoint's log stops well before it: see _fit_decay)."""
    # the Trainer logs at step s the rate step s used, i.e. the schedule's value after s - 1 scheduler steps: so since
    # store.TRAINER_LR_CLOCK_SINCE; older ones logged the rate after step s's scheduler update, step s + 1's
    # (`next_lr`: where the run's config.json names such a version; unknown, read as a newer one's)
    lag = 0.0 if next_lr else 1.0
    return _lr_schedule_facts([(float(e["step"]) - lag, float(e["learning_rate"])) for e in train_logs
                               if _fin(e.get("learning_rate")) is not None], _fin(max_steps))


class _Samples(Sequence):
    """(x, y) samples held as two arrays of doubles, 16 bytes a sample where a list of float tuples takes ~110: a
    CSV's learning-rate column, a sample a row, for _lr_schedule_facts."""

    def __init__(self, xs: array | None = None, ys: array | None = None):
        self.xs, self.ys = (xs, ys) if xs is not None and ys is not None else (array("d"), array("d"))

    def append(self, x: float, y: float) -> None:
        self.xs.append(x)
        self.ys.append(y)

    def __len__(self) -> int:
        return len(self.xs)

    def __getitem__(self, i):
        if isinstance(i, slice):
            return _Samples(self.xs[i], self.ys[i])
        return self.xs[i], self.ys[i]

    def __iter__(self):
        return zip(self.xs, self.ys)


def _lr_schedule_facts(lr: Sequence[tuple[float, float]], end: float | None = None) -> dict[str, "Fact"]:
    """_lr_facts' reading of the samples (step - 1, rate), in step order; `end`: the planned steps, where known."""
    if not lr:
        return {}
    out: dict[str, Fact] = {}
    i_peak = _lr_peak_index(lr)
    peak_step, peak = lr[i_peak]
    warm = [v for _, v in lr[:i_peak]]
    s0 = 0.0
    # a warm-up rises to the peak; a peak taken past a fall (a later cycle of a restarting schedule logged coarsely)
    # says nothing of where the warm-up ended
    first_rise = all(lr[i + 1][1] > lr[i][1] for i in range(i_peak))
    if i_peak > 0 and warm and warm[0] < 0.9 * peak and first_rise:
        out["warmup_steps"] = Fact(int(peak_step), "log_history learning_rate (rising over these steps)")
        s0 = peak_step
    after = lr[i_peak:]
    # a restart (cosine_with_restarts jumps back to the peak) ends the first cycle: the shape is fitted to that one
    restart = next((j for j in range(1, len(after)) if after[j][1] > after[j - 1][1] * LR_RESTART_RISE), None)
    if restart is not None:
        after = after[:restart]
    decays = after[-1][1] < 0.98 * peak
    # too few samples from the peak on tell no constant rate from a decay to come: the largest value, as logged
    schedule, estimate = ("constant" if len(after) >= LR_SCHEDULE_MIN_SAMPLES else "unknown"), peak
    if s0 > 0 and not decays:
        # no decay to fit the warm-up's end to (constant_with_warmup, or a short log): its slope alone gives it, where
        # the peak's step is the first sample after it (a logging interval late)
        w = _warmup_from_slope(lr, i_peak, peak)
        if w is not None:
            out["warmup_steps"] = Fact(w, "log_history learning_rate (rising over these steps: where its slope "
                                          "reaches the peak)" if schedule == "constant" else
                                       "log_history learning_rate (rising over at least these steps: where its "
                                       "slope reaches the largest logged value)")
    if decays and len(after) >= LR_SCHEDULE_MIN_SAMPLES:
        best = _best_decay(after, s0, end)
        if best and s0 > 0:
            best, s0 = _warmup_end(lr, i_peak, best, s0, after, end)
            out["warmup_steps"] = Fact(int(round(s0)), "log_history learning_rate (rising over these steps"
                                       + (")" if s0 == peak_step else ": where its rise meets the fitted decay)"))
        if best:
            schedule, estimate = best[0], best[1]
        else:
            schedule = "decaying"
    elif decays:
        schedule = "decaying"
    # a fitted peak (or a constant rate, float32 in an event file) is snapped; the largest logged value, when no shape
    # fits, is reported as logged: it is the reading the diagnosis's `peak_lr` makes, and snapped it contradicted
    # the rules beside it (khuda-3rd, F: 9.96e-5 logged at step 10 of a 1e-4 decay, shown as a 1e-4 "largest logged
    # value" while the rules read 9.96e-5)
    # "first cycle" only where the peak is the top of the first rise: a peak taken from a later cycle (the first rise
    # logged too coarsely to reach LR_PEAK_FIRST_RISE of it) is the cycle it is in, named by its step
    cycle = ("" if restart is None else
             f" (its first cycle: the rate restarts after step {after[-1][0] + 1:g})" if first_rise else
             f" (the cycle from step {peak_step + 1:g}: the rate restarts after step {after[-1][0] + 1:g})")
    out["learning_rate"] = Fact(estimate if schedule in ("decaying", "unknown") else _round_lr(estimate),
                                "log_history learning_rate: " +
                                ("peak of a constant schedule" if schedule == "constant" else
                                 f"peak of a {schedule} schedule fitted to the logged values{cycle}" if schedule in
                                 ("linear", "cosine") else "largest logged value"))
    if schedule != "unknown":
        out["lr_schedule"] = Fact(schedule, "log_history learning_rate")
    if restart is not None:
        # a run whose rate jumps back up (a resume with a longer max_steps restarts the decay; cosine_with_restarts)
        # trained on another schedule than one that decayed once: no one-knob lr point beside it (diagnose.knob_view)
        # logged every k steps, the jump lies between the last sample before it and the first after it: the same
        # schedule logged every 1 / 2 / 3 steps reads 23 / 22 / 21 there, so the bracket is kept (LR_RESTART_BY_FACT)
        last, by = int(after[-1][0] + 1), int(lr[i_peak + restart][0])
        out[LR_RESTART_FACT] = Fact(last, "log_history learning_rate: the rate jumps back up after this step (a resume "
                                    "with a longer max_steps, or a restarting schedule)")
        out[LR_RESTART_BY_FACT] = Fact(max(by, last), "log_history learning_rate: the rate jumped back up after "
                                       "this step at the latest (the step before the first restarted rate logged)")
    return out


LR_SCHEDULE_MIN_SAMPLES = 3  # samples from the peak on that tell a constant rate from a decay
LR_RESTART_RISE = 1.05  # after the peak, a sample this many times the one before it: the schedule restarted
LR_RESTART_FACT = "lr_restart_step"  # the fact naming the step after which the logged rate restarted
LR_RESTART_BY_FACT = "lr_restart_step_by"  # the latest step it restarted after (the next logged rate is restarted)
LR_PEAK_FIRST_RISE = 0.9  # the initial rise's top, when at least this share of the largest value, is the peak


def _lr_peak_index(lr: Sequence[tuple[float, float]]) -> int:
    """The peak: the top of the initial rise (the warm-up's end), not the largest value, which a schedule that
    restarts (cosine_with_restarts) may log in a later cycle; the largest where the first rise stops well below it."""
    i_max = max(range(len(lr)), key=lambda i: lr[i][1])
    i_top = next((i for i in range(len(lr) - 1) if lr[i + 1][1] <= lr[i][1]), len(lr) - 1)
    return i_top if lr[i_top][1] >= LR_PEAK_FIRST_RISE * lr[i_max][1] else i_max


def _warmup_from_slope(lr: Sequence[tuple[float, float]], i_peak: int, peak: float) -> int | None:
    """The warm-up's length from the rising samples' slope (the Trainer's warm-up: lr = peak x s / W): the first
    whole step where the slope reaches `peak`, kept only between the last rising sample and the peak's sample."""
    rising = [(s, v) for s, v in lr[:i_peak] if s > 0]
    if not rising:
        return None
    slope = sum(s * v for s, v in rising) / sum(s * s for s, _ in rising)
    w = math.ceil(round(peak / slope, 6))
    return w if rising[-1][0] <= w <= lr[i_peak][0] else None


def _best_decay(samples: Sequence[tuple[float, float]], s0: float, end: float | None = None
                ) -> tuple[str, float, float] | None:
    """The decay shape that fits the samples best from the end of warm-up s0: (shape, peak, error) or None."""
    best = None
    for shape in ("linear", "cosine"):
        fit = _fit_decay(samples, shape, s0, end)
        if fit and (best is None or fit[1] < best[2]):
            best = (shape, fit[0], fit[1])
    return best


def _warmup_end(lr: Sequence[tuple[float, float]], i_peak: int, best: tuple[str, float, float],
                s0: float, after: Sequence[tuple[float, float]], end: float | None = None
                ) -> tuple[tuple[str, float, float], float]:
    """Where a linear warm-up (the Trainer's, for every schedule: lr = peak x s / W) meets the fitted decay. The
    largest logged sample lies up to a logging interval past the warm-up's end W, and a decay fitted from it reads
    the peak low (5e-4 warmed up over 33 steps, logged every 10: 4.94e-4 at step 39). The rising samples give the
    slope peak / W; W = peak / slope, refitted until it settles, kept only between the last rising sample and the
    largest one (else the first reading stands). `after`: the samples the decay is fitted to (the first cycle)."""
    rising = [(s, v) for s, v in lr[:i_peak] if s > 0]
    if not rising:
        return best, s0
    slope = sum(s * v for s, v in rising) / sum(s * s for s, _ in rising)
    lo, hi = rising[-1][0], lr[i_peak][0]
    first = (best, s0)
    for _ in range(LR_WARMUP_REFITS):
        w = best[1] / slope
        if lo - (hi - lo) < w < lo:
            # the fit from the largest sample reads a cosine's peak low enough (4.91e-5 for 5e-5 warmed up over 100
            # steps, logged every 20) to put W just before the last rising sample, which a warm-up cannot end before:
            # refit from that sample, which lies nearer W than the largest one does
            w = lo
        if not lo <= w <= hi:
            return first
        if abs(w - s0) < 0.01:
            break
        refit = _best_decay(after, w, end)
        if refit is None:
            return first
        best, s0 = refit, w
    return best, s0


LR_WARMUP_REFITS = 5  # the warm-up's end and the peak refitted in turn: settles in 2-3 (tests)


def _round_lr(value: float) -> float:
    """An lr read back from a schedule carries fitting error of a few tenths of a percent: snap to 2
    significant digits when that is within 0.5% (7.99e-4 -> 8e-4), else keep 3 (1.23e-4 stays)."""
    two = float(f"{value:.2g}")
    return two if value > 0 and abs(two - value) / value < 0.005 else float(f"{value:.3g}")


LR_FIT_MAX_SAMPLES = 100  # the schedule fit's cost grows with the samples; 100 pin a linear or cosine shape


def _fit_decay(samples: Sequence[tuple[float, float]], shape: str, s0: float, end: float | None = None
               ) -> tuple[float, float] | None:
    """Fit lr(s) = peak x shape((s - s0)/(N - s0)) to the samples after the peak (s0: the end of warm-up, 0
    without), over a grid of end steps N, and N = `end` (the state's max_steps, where the Trainer's schedule ends)
    where it lies past the last sample; returns (peak, relative squared error) or None when no N fits. The grid
    reaches 3x the span logged: a checkpoint's log of a linear decay stopped at 30% of it (60 of 200 steps) fits a
    cosine ending near 2x its span better than any linear end on the grid (peak 1.96e-4 for 2e-4), and its warm-up
    end was misplaced with it (24 steps for 20); the planned end fits it exactly."""
    last = samples[-1][0]
    if last <= s0:
        return None
    if len(samples) > LR_FIT_MAX_SAMPLES:  # a long log: evenly spaced samples (and the last) fit the same shape
        stride = len(samples) / LR_FIT_MAX_SAMPLES
        samples = [samples[int(i * stride)] for i in range(LR_FIT_MAX_SAMPLES)] + [samples[-1]]
    best = None
    ends = [last + (last - s0) * (k / 100.0) for k in range(0, 200)]  # the schedule ends at or after the last sample
    if end is not None and end > last:
        ends.append(end)
    for n_end in ends:
        xs = [(s - s0) / (n_end - s0) for s, _ in samples]
        g = [1 - x if shape == "linear" else 0.5 * (1 + math.cos(math.pi * x)) for x in xs]
        denom = sum(v * v for v in g)
        if denom <= 0:
            continue
        peak = sum(v * y for v, (_, y) in zip(g, samples)) / denom
        err = sum((peak * v - y) ** 2 for v, (_, y) in zip(g, samples)) / max(sum(y * y for _, y in samples), 1e-30)
        if best is None or err < best[1]:
            best = (peak, err)
    if best is None or best[1] > 1e-3:
        return None
    return best


def _eval_key_map(eval_logs: Sequence[dict], say_mapped: bool = True) -> tuple[dict[str, str], list[str]]:
    """eval_* keys -> loratune keys. `eval_loss` -> val/loss; with several eval sets
    (`eval_dataset={"val": ..., "train": ...}`), `eval_train_loss` -> train_eval/loss. `say_mapped`: end the notes
    with the mapping (a CSV says it per column instead)."""
    keys = {k for e in eval_logs for k in e if k.startswith("eval_")}
    prefixes = {k[len("eval_"):-len("loss")].rstrip("_") for k in keys if k.endswith("loss")}
    out: dict[str, str] = {}
    notes = []
    # one held-out set under its own name (`eval_dataset={"yahma/alpaca-cleaned": ...}` logs
    # `eval_yahma/alpaca-cleaned_loss`) and none under a validation name: that set is the run's validation
    held_out = [p for p in prefixes if p not in _VAL_NAMES and p not in _TRAIN_NAMES]
    val_alias = held_out[0] if len(held_out) == 1 and not prefixes & set(_VAL_NAMES) else None
    if val_alias:
        notes.append(f"the one held-out eval set, '{val_alias}', read as the validation set")
    # several validation sets and none under the plain name (MNLI's `validation_matched` / `validation_mismatched`):
    # the first by name is the run's validation set, the others stay under their own names
    named_val = sorted(p for p in held_out if any(p.startswith(v + "_") for v in _VAL_NAMES if v))
    if val_alias is None and named_val and not prefixes & set(_VAL_NAMES):
        val_alias = named_val[0]
        notes.append(f"eval sets {', '.join(map(repr, named_val))} and none named plainly as the validation set: "
                     f"'{val_alias}' read as the validation set")
    elif val_alias is None and len(held_out) > 1 and not prefixes & set(_VAL_NAMES):
        # several sets under names of their own: which one is the validation set is the user's to say, and without
        # one the run has no val curve (only the train loss is diagnosed), which must not pass unsaid
        notes.append(f"{len(held_out)} eval sets under their own names ({', '.join(map(repr, sorted(held_out)))}) "
                     f"and none named as a validation set ({', '.join(repr(v) for v in _VAL_NAMES if v)}): none is "
                     "read as validation, so the run has no val curve and only its train loss is diagnosed; name the "
                     "validation set's key in eval_dataset={...} 'validation' (the others stay under their own names)")
    # several sets under validation names (`trainer.evaluate(ds)` after training logs the plain `eval_loss` at the last
    # step beside the run's `eval_validation_loss`): one is the validation set, the one evaluated at the most steps
    # (a tie: a named set before the plain keys, which the Trainer logs for named sets only from an evaluate() of
    # its own, then the first evaluated, then the first in _VAL_NAMES; a tie read by the first evaluated alone went
    # another way in each reader: the TensorBoard and CSV readers see both sets in one entry of the step); the others
    # keep their own names (`eval/loss` for the plain one), so a later evaluation of other rows never stands in for
    # the curve's last point
    val_named = [p for p in prefixes if p in _VAL_NAMES]
    val_name = None
    if len(val_named) > 1:
        seen = _set_evaluations(eval_logs, val_named)
        val_name = min(val_named, key=lambda p: (-seen[p][0], p == "", seen[p][1], _VAL_NAMES.index(p)))
        others = sorted(set(val_named) - {val_name})
        said = {p: repr(p) if p else "the plain eval_* keys" for p in val_named}
        notes.append(f"eval sets under validation names ({', '.join(said[p] for p in sorted(val_named))}): "
                     f"{said[val_name]} (evaluated at {seen[val_name][0]} step(s)) read as the validation set, "
                     + ", ".join(f"{said[p]} (at {seen[p][0]}) as {_other_val_split(p)}/*" for p in others)
                     + " (a trainer.evaluate() after training, of other rows, logs the plain eval_* keys)")
    for key in sorted(keys):
        rest = key[len("eval_"):]
        name = next((pfx for pfx in sorted(prefixes, key=len, reverse=True)
                     if pfx and rest.startswith(pfx + "_")), "")
        metric = rest[len(name) + 1:] if name else rest
        if metric in _EVAL_META:
            continue
        if name in _VAL_NAMES and val_name is not None and name != val_name:
            split = _other_val_split(name)
        elif name in _VAL_NAMES or name == val_alias:
            split = "val"
        elif name in _TRAIN_NAMES:
            split = "train_eval"
        else:
            split = f"eval_{name}"
        mapped = _METRIC_ALIASES.get(metric, metric)
        out[key] = f"{split}/{mapped}"
        if metric == "f1":
            notes.append(f"{key} taken as macro-F1 (compute_metrics should use average='macro')")
        elif metric == _F1_AVERAGING_UNKNOWN:
            notes.append(f"{key} not read as macro-F1: its name does not say its averaging (scikit-learn's f1_score "
                         "averages 'binary' by default, one class's F1); log it as macro_f1 with "
                         "f1_score(labels, preds, average='macro')")
    if eval_logs and say_mapped:
        shown = ", ".join(f"{k} -> {v}" for k, v in sorted(out.items()))
        notes.append(f"mapped Trainer keys: {shown}")
    return out, notes


def _val_prefix(split_of: Mapping[str, str]) -> str:
    """The Trainer key prefix of the validation set (`eval_`, `eval_validation_`): its runtime and samples/s give the
    val size (_estimate_n)."""
    return next((k[:-len("loss")] for k, v in split_of.items() if v == "val/loss"), "eval_")


def _other_val_split(name: str) -> str:
    """The split of an eval set under a validation name that is not the run's validation set: `eval_<name>`, and
    `eval` for the plain `eval_*` keys."""
    return f"eval_{name}" if name else "eval"


def _set_evaluations(eval_logs: Sequence[dict], names: Iterable[str]) -> dict[str, tuple[int, int]]:
    """For each eval set name ('' for the plain `eval_*` keys): (the number of steps its loss was logged at, the index
    of its first entry in `eval_logs`)."""
    out = {}
    for name in names:
        key = f"eval_{name}_loss" if name else "eval_loss"
        at = [i for i, e in enumerate(eval_logs) if key in e]
        out[name] = (len({eval_logs[i].get("step") for i in at}), at[0] if at else len(eval_logs))
    return out


def _percent_to_share(points: list[dict], notes: list[str]) -> None:
    """A share metric (_PERCENT_METRICS) with any value above 1 was logged on a 0-100 scale: divide it by 100, in
    place, and say so."""
    for key in (f"{split}/{m}" for m in _PERCENT_METRICS for split in ("val", "train_eval")):
        vals = [_fin(q.get(key)) for q in points]
        if any(v is not None and v > 1.0 for v in vals):
            for q in points:
                if _fin(q.get(key)) is not None:
                    q[key] = q[key] / 100.0
            notes.append(f"{key} logged on a 0-100 scale: read as a share (/100)")


def _window(entries: Sequence[dict]) -> dict:
    out: dict[str, Any] = {}
    losses = [math.nan if nan_filtered_loss(e) else e.get("loss") for e in entries]  # NaN, never 0
    if not losses:
        return out
    finite = [float(x) for x in losses if _fin(x) is not None]
    if len(finite) < len(losses):  # a NaN in the window makes the window non-finite (recorded as null)
        out["train/loss"] = None
    elif finite:
        out["train/loss"] = safe_mean(finite)
        out["train/loss_first"] = finite[0]
        out["train/loss_last"] = finite[-1]
        if len(finite) >= 2:
            m = out["train/loss"]
            try:
                out["train/loss_std"] = math.sqrt(sum((x - m) ** 2 for x in finite) / len(finite))
            except OverflowError:  # a deviation near the largest float (a loss of 1.7e308): squared in its own scale
                scale = max(abs(x - m) for x in finite)
                out["train/loss_std"] = scale * math.sqrt(sum(((x - m) / scale) ** 2 for x in finite) / len(finite))
    g = [e.get("grad_norm") for e in entries if "grad_norm" in e]
    if g:
        gf = [float(x) for x in g if _fin(x) is not None]
        out["train/grad_norm"] = sum(gf) / len(gf) if len(gf) == len(g) else None
    lr = [float(e["learning_rate"]) for e in entries if _fin(e.get("learning_rate")) is not None]
    if lr:
        out["lr"] = lr[-1]
        # the largest rate logged in the window: a warm-up's top, or a decay's first log, falls between evals, so the
        # rate at the eval step alone understates the run's peak lr (features.peak_lr reads every logged rate)
        out["lr_max"] = max(lr)
    return out


SIZE_TIMING = ("runtime", "samples_per_second")  # an eval's size: its runtime x its samples per second


def _estimate_n(ev: dict, prefix: str) -> int | None:
    rt, sps = (_fin(ev.get(prefix + t)) for t in SIZE_TIMING)
    if rt and sps:
        return int(round(rt * sps))
    return None


_NUMERIC_LOG_KEYS = ("loss", "grad_norm", "learning_rate", "epoch")


def _numbers_from_text(log_history: Sequence[Any]) -> tuple[list, int, list[str], list[str]]:
    """Log entries whose losses, rates or eval values are text ("2.3") or no number at all (null, true, [1.0],
    {"a": 1}): those values left out of the entry, as a string step leaves its entry out. Such a value is no number:
    it was read as a non-finite value, and a log of quoted losses (or one null among falling ones) read as a
    divergence. The Trainer and TRL write a non-finite loss as NaN / Infinity, never null (loratune's own records
    write it as null: they are not read here). Returns the entries, how many values were numbers written as text, the
    keys of text that is no number (a compute_metrics returning {"report": "ok"}: eval_report) and the keys of values
    of another type."""
    dropped, words, others, out = 0, [], [], []
    for e in log_history:
        if not isinstance(e, dict) or not any(isinstance(v, str) or _no_number(v) for v in e.values()):
            out.append(e)
            continue
        gone = [k for k, v in e.items()
                if (isinstance(v, str) or _no_number(v)) and (k in _NUMERIC_LOG_KEYS or k.startswith("eval_"))]
        for k in gone:
            if not isinstance(e[k], str):
                others.append(k)
                continue
            try:
                float(e[k])
                dropped += 1
            except ValueError:
                words.append(k)
        out.append({k: v for k, v in e.items() if k not in gone})
    return out, dropped, list(dict.fromkeys(words)), list(dict.fromkeys(others))


def _no_number(v: Any) -> bool:
    """A logged value of a type no number has (null, true/false, a list, an object); text is _numbers_from_text's."""
    return v is None or isinstance(v, (bool, list, dict))


def _fin(v: Any) -> float | None:
    if isinstance(v, bool) or not isinstance(v, (int, float)):
        return None
    return float(v) if math.isfinite(float(v)) else None


def _log_step(v: Any) -> float | None:
    """A log entry's step, or None where it is none: not a finite number, or negative (a step counts optimizer steps
    from 0; a log at steps -5 and -1 was read with no train loss and a val loss 'non-finite at every eval')."""
    step = _fin(v)
    return step if step is not None and step >= 0 else None


def _json_num(v: Any) -> Any:
    if isinstance(v, float) and not math.isfinite(v):
        return None  # the run-record convention: non-finite as null
    return v


# ---------------------------------------------------------------------------------------------
# Jupyter notebook (the Trainer's progress table)
# ---------------------------------------------------------------------------------------------

# `[value/max elapsed < remaining, Epoch e/E]`, the line transformers' NotebookProgressCallback writes above its table
_NB_PROGRESS = re.compile(r"\[\s*(\d+)\s*/\s*(\d+)[^\]]*?(?:Epoch\s+([\d.]+)\s*/\s*(\d+))?\s*\]")
# a literal learning_rate in a code cell (`TrainingArguments(learning_rate=2e-5)`, `"learning_rate": 1e-4`)
_NB_COMMENT_LINE = re.compile(r"(?m)^[ \t]*#.*$")  # a commented-out line (`# learning_rate=1e-3`) sets nothing
# the end of an argument or value: a literal or name followed by anything else (`2 * 1e-5`, `1e-4/2`, `LR * 4`,
# `cfg.lr`) is an expression, whose value the code does not write
_NB_END = r"(?=[ \t]*(?:[,)\]};#\r\n]|$))"
_NB_NUMBER = r"([0-9]*\.?[0-9]+(?:[eE][-+]?[0-9]+)?)"
_NB_LR = re.compile(r"""["']?\blearning_rate["']?\s*[=:]\s*""" + _NB_NUMBER + _NB_END)
# `learning_rate=LEARNING_RATE`: a name the code assigns the learning rate to
_NB_LR_NAME = re.compile(r"\blearning_rate\s*=\s*([A-Za-z_][A-Za-z0-9_]*)" + _NB_END)
# a literal num_labels (`from_pretrained(name, num_labels=3)`): the classifier head's classes
_NB_LABELS = re.compile(r"""["']?\bnum_labels["']?\s*[=:]\s*(\d+)\b""")
# a transformers model class in a code cell (`AutoModelForCausalLM`, `GPT2LMHeadModel`, `BartForConditionalGeneration`)
_NB_MODEL_CLASS = re.compile(r"\b[A-Z][A-Za-z0-9]*(?:" + "|".join(suffix for suffix, _ in ARCH_TASKS) + r")\b")
# names in a notebook's code that say the task where no model class does: unsloth's loader and TRL's SFT trainer
# train a causal LM (fold S's omarwaleed523: Qwen2.5 through FastLanguageModel and SFTTrainer)
NB_TASK_NAMES = (("FastLanguageModel", "causal-lm"), ("SFTTrainer", "causal-lm"))
# a peft LoRA adapter the code builds (`LoraConfig(r=8, lora_alpha=16, ...)` and `get_peft_model` / `peft_config=`)
_NB_LORA = re.compile(r"\bLoraConfig\(([^()]*)\)")
_NB_LORA_APPLIED = re.compile(r"\bget_peft_model\(|\bpeft_config\s*=")
_NB_OTHER_PEFT = re.compile(r"\b(?:AdaLora|PromptTuning|PrefixTuning|PromptEncoder|IA3|LoHa|LoKr|Oft|Boft)Config\(")
# transformers' TrainingArguments.learning_rate default, the lr of a Trainer run whose code sets none: a notebook
# that builds TrainingArguments (or Seq2SeqTrainingArguments, the same default) and writes no learning_rate or lr
# anywhere, no trainer config of its own default (TRL's), no hand-made optimizer, and no arguments from elsewhere
TRAINER_DEFAULT_LR = 5e-5
_NB_TRAINING_ARGS = re.compile(r"\b(?:Seq2Seq)?TrainingArguments\(")
_NB_LR_SET_ELSEWHERE = re.compile(r"\blearning_rate\b|\blr\b|\b(?:SFT|DPO|GRPO|ORPO|KTO|Reward|PPO|CPO)Config\b|"
                                  r"\boptimizers\s*=|\bHfArgumentParser\b|"
                                  # `TrainingArguments(output_dir=d, **cfg)`: **cfg may set it (one level of
                                  # parentheses inside the call: `os.path.join(a, b)`)
                                  r"TrainingArguments\((?:[^()]|\([^()]*\))*\*\*")
_NB_NO_VALUE = ("no log", "", "none", "-")  # "nan" / "inf" are values: a non-finite loss, as trainer_state.json keeps
NB_EPOCHS_UNKNOWN = 10**9  # a max_steps run over an iterable dataset shows `Epoch 1/9223372036854775807`


class _Tables(HTMLParser):
    """Every <table> of an HTML output: (text before it, header cells, body rows)."""

    def __init__(self):
        super().__init__()
        self.tables: list[tuple[str, list[str], list[list[str]]]] = []
        self._text: list[str] = []
        self._table: tuple[str, list[str], list[list[str]]] | None = None
        self._cell: list[str] | None = None
        self._row: list[tuple[str, str]] | None = None  # (th | td, text) of the row being read

    def handle_starttag(self, tag, attrs):
        if tag == "progress" and self._table is None:
            self._text.append("<progress>")  # the bar's value and max are in the label text after it
        elif tag == "table":
            self._table = ("".join(self._text), [], [])
            self._text = []
        elif self._table is not None and tag == "tr":
            self._row = []
        elif self._table is not None and tag in ("td", "th"):
            self._cell = []

    def handle_endtag(self, tag):
        if tag in ("td", "th") and self._cell is not None and self._row is not None:
            self._row.append((tag, " ".join("".join(self._cell).split())))
            self._cell = None
        elif tag == "tr" and self._row is not None and self._table is not None:
            if self._row and all(t == "th" for t, _ in self._row):
                self._table[1].extend(v for _, v in self._row)
            elif self._row:
                self._table[2].append([v for _, v in self._row])
            self._row = None
        elif tag == "table" and self._table is not None:
            self.tables.append(self._table)
            self._table = None

    def handle_data(self, data):
        if self._cell is not None:
            self._cell.append(data)
        elif self._table is None:
            self._text.append(data)


def _nb_float(text: str) -> float | None:
    if text.strip().lower() in _NB_NO_VALUE:
        return None
    try:
        return float(text)
    except ValueError:
        return None


def _nb_progress_tables(nb: Mapping[str, Any], path: str | Path = "the notebook") -> list[dict]:
    """The Trainer's training tables in a notebook's outputs, in cell order: {header, rows, progress: (value, max,
    epoch, epochs), cell: its cell's index}. A training table has a `Training Loss` column and a `Step` or `Epoch`,
    under the progress bar in the same output (`trainer.evaluate()` alone shows a one-row table of the same columns
    with no bar: not a run). Outputs that are not what nbformat 4 writes are a UserError naming the cell."""
    found = []
    for c, cell in enumerate(nb.get("cells") or []):
        if not isinstance(cell, dict):
            continue
        outputs = cell.get("outputs") or []
        if not isinstance(outputs, list):
            raise UserError(f"'{path}': cell {c + 1}'s `outputs` is not a list (a {type(outputs).__name__})",
                            "give the .ipynb file as Jupyter saved it (or clear that cell's outputs)")
        for o, out in enumerate(outputs):
            data = out.get("data") if isinstance(out, dict) else None
            html = data.get("text/html") if isinstance(data, dict) else None
            if isinstance(html, list):
                if not all(isinstance(x, str) for x in html):
                    raise UserError(f"'{path}': cell {c + 1}, output {o + 1}: its text/html holds a non-text item",
                                    "give the .ipynb file as Jupyter saved it (or clear that cell's outputs)")
                html = "".join(html)
            if not isinstance(html, str) or "<table" not in html:
                continue
            parser = _Tables()
            parser.feed(html)
            for before, header, rows in parser.tables:
                norm = [_norm(h) for h in header]
                if "training_loss" not in norm or not ({"step", "epoch"} & set(norm)):
                    continue
                m = None
                for m in _NB_PROGRESS.finditer(before if "<progress" in before else ""):
                    pass
                if m is None:
                    continue
                epochs = int(m.group(4)) if m.group(4) else None
                progress = (int(m.group(1)), int(m.group(2)), _nb_float(m.group(3) or ""),
                            epochs if epochs and epochs < NB_EPOCHS_UNKNOWN else None)
                ran = cell.get("execution_count")
                found.append({"header": header, "norm": norm, "rows": rows, "progress": progress, "cell": c,
                              "ran": ran if isinstance(ran, int) and not isinstance(ran, bool) else None})
    return found


def read_notebook(path: str | Path, table: int | None = None) -> RunHistory:
    """A Jupyter notebook whose output holds the Hugging Face Trainer's progress table (NotebookProgressCallback: one
    row per evaluation, `Step` or `Epoch`, `Training Loss`, `Validation Loss`, the metric columns) -> eval points, read
    as the same log_history a trainer_state.json holds (`notebook_trainer_state`). No side file is read: a notebook's
    folder holds other things."""
    p = Path(path)
    state, facts, notes = notebook_trainer_state(p, table)
    return _from_log_history(state["log_history"], p, facts, name=p.stem, path=str(p), source_file="notebook table",
                             source="notebook", notes=notes, finished=state["global_step"] >= state["max_steps"])


def _nb_table_history(t: dict) -> tuple[dict, dict[str, Fact], list[str], bool]:
    """(trainer state, facts, notes, whether a row was evaluated) of one progress table (see notebook_trainer_state)."""
    value, planned, _, epochs = t["progress"]
    state: dict[str, Any] = {"global_step": value, "max_steps": planned}
    facts = {"max_steps": Fact(planned, "notebook progress bar"), "steps_done": Fact(value, "notebook progress bar")}
    notes: list[str] = []
    per_epoch, end_partial = None, False
    if epochs:
        state["num_train_epochs"] = epochs
        facts["num_train_epochs"] = Fact(epochs, "notebook progress bar")
        per_epoch = planned / epochs
        if planned % epochs and "step" not in t["norm"]:
            # under max_steps (or a fractional num_train_epochs) the bar's epoch count is the Trainer's
            # ceil(planned / steps per epoch), so planned / epochs understates the steps per epoch: the whole steps
            # per epoch s with ceil(planned / s) = epochs (planned / epochs <= s < planned / (epochs - 1))
            fits = [k for k in range(math.ceil(planned / epochs), math.ceil(planned / max(epochs - 1, 1)) + 1)
                    if math.ceil(planned / k) == epochs]
            if len(fits) == 1:
                per_epoch = fits[0]
                # the run stopped inside epoch planned // s and evaluated there (on_epoch_end): the callback shows
                # that evaluation in place of the row of the same whole epoch, at the bar's last step
                end_partial = value == planned
                notes.append(f"the bar's {planned} steps over {epochs} epochs (max_steps): {per_epoch} steps per "
                             "epoch, the one whole number whose epoch count is the bar's")
            else:
                notes.append(f"the bar's {planned} steps over {epochs} epochs (max_steps) fit "
                             f"{len(fits)} whole step counts per epoch: the rows' steps are approximate")
    col = {n: i for i, n in enumerate(t["norm"])}
    metrics = [(i, "eval_loss" if n == "validation_loss" else f"eval_{n}") for i, n in enumerate(t["norm"])
               if n not in ("step", "epoch", "training_loss")]
    log_history: list[dict] = []

    def cell(row: list[str], name: str) -> str:
        return row[col[name]] if name in col and col[name] < len(row) else ""

    # the callback writes int(state.epoch): an evaluation at the end of an epoch that the run's steps put at 2.99
    # shows 2, so a row at or below the one before it (or at 0: no evaluation runs before the first epoch ends) is
    # the next epoch's end, not a second evaluation at the same point
    row_epochs: list[float | None] = []
    last_epoch, repositioned = 0.0, False
    for row in t["rows"]:
        epoch = _nb_float(cell(row, "epoch"))
        epoch = epoch if epoch is not None and math.isfinite(epoch) else None  # an epoch of nan / inf places nothing
        if "step" not in col and epoch is not None and epoch == int(epoch) and epoch <= last_epoch:
            epoch, repositioned = epoch + 1, True
        if epoch is not None:
            last_epoch = epoch
        row_epochs.append(epoch)
    if "step" not in col and per_epoch is None and last_epoch > 0 and value:
        # no epoch count on the bar (a max_steps run over a streamed dataset: `Epoch 2/9223372036854775807`): the
        # rows are placed in proportion to their epoch, the last at the bar's step
        per_epoch = value / last_epoch
        notes.append("the progress bar gives no epoch count: the rows are placed in proportion to their epoch, the "
                     "last at the bar's step")
    # the callback's Training Loss is the last train log in the state's history at that evaluation: a row that repeats
    # the row before's value shows the same log again (no new one since: logging_steps longer than the eval interval),
    # and reading it as a second window would make a train loss that was logged once look flat
    last_loss, repeats = None, 0
    for i, (row, epoch) in enumerate(zip(t["rows"], row_epochs)):
        step = _nb_float(cell(row, "step"))
        step = step if step is not None and math.isfinite(step) else None
        if step is None and epoch is not None and per_epoch:
            step = round(epoch * per_epoch)
            if end_partial and i == len(t["rows"]) - 1 and epoch == planned // per_epoch:
                step = planned
                notes.append(f"the last row (epoch {epoch:g}) is the evaluation at the run's end, step {planned}, "
                             f"shown in place of the end of epoch {epoch:g}")
        if step is None:
            continue
        where = {"step": int(step), **({"epoch": epoch} if epoch is not None else {})}
        loss = _nb_float(cell(row, "training_loss"))
        if loss is not None and loss == last_loss:
            repeats += 1
        elif loss is not None:
            log_history.append({"loss": loss, **where})
            last_loss = loss
        ev = {key: v for i, key in metrics if i < len(row) and (v := _nb_float(row[i])) is not None}
        if ev:
            log_history.append({**ev, **where})
    if "step" not in col and epochs and per_epoch == planned / epochs:
        notes.append("the table has epochs, not steps: steps are epoch x planned steps / epochs from the progress bar")
    elif "step" not in col and not per_epoch:
        notes.append("the table has epochs and its progress bar no epoch count: no row is placed")
    if repeats:
        notes.append(f"{repeats} row(s) repeat the Training Loss of the row before (the same train log, none logged "
                     "since): read once, at the row that first shows it")
    if repositioned:
        notes.append("the table shows whole epochs (int of the epoch): a row at or below the row before it (or at "
                     "epoch 0) is read as the end of the next epoch")
    state["log_history"] = log_history
    return state, facts, notes, any(any(key.startswith("eval_") for key in e) for e in log_history)


def _nb_source(cell: dict) -> str:
    src = cell.get("source")
    return "".join(str(x) for x in src if isinstance(x, str)) if isinstance(src, list) else str(src or "")


def _nb_cells_run_before(cells: list, table: dict) -> tuple[list[dict], str | None]:
    """(the code cells whose settings the table's run used; a note when that differs from the page or cannot be
    told). With execution counts on the table's cell and no count on two cells, the cells run up to the table's by
    count (a cell below it on the page that ran before it counts, a cell above it run after does not; a cell with no
    count stays where the page puts it). Else (no counts, the table's cell has none, or a kernel restart put one count
    on two cells) the page up to the table's cell."""
    code = [(i, c) for i, c in enumerate(cells) if isinstance(c, dict) and c.get("cell_type") == "code"
            and _nb_source(c).strip()]
    counts = {i: c.get("execution_count") for i, c in code}
    counts = {i: n for i, n in counts.items() if isinstance(n, int) and not isinstance(n, bool)}
    ran, at = table["ran"], table["cell"]
    page = [c for i, c in code if i <= at]
    if ran is None or not counts:  # no run order recorded for the table: the page's
        return page, None
    if len(set(counts.values())) == len(counts):
        chosen = sorted((n, i) for i, n in counts.items() if n <= ran)
        # a cell with no count above the table: where the page puts it (a setup cell saved without its count)
        chosen = [i for _, i in chosen] + [i for i, _ in code if i not in counts and i <= at]
        if sorted(chosen) == [i for i, _ in code if i <= at]:
            return page, None
        return [cells[i] for i in sorted(chosen)], (
            f"the code read is that of the cells run up to the table's (execution_count {ran}): cell(s) "
            f"{', '.join(str(i + 1) for i in sorted(chosen))}, not the page's cells above the table")
    # a kernel restart put one count on two cells: counts of several sessions do not give one run order
    return page, None


def notebook_trainer_state(path: str | Path, table: int | None = None) -> tuple[dict, dict[str, Fact], list[str]]:
    """(trainer state, facts, notes) of a notebook's Trainer progress table: `log_history` with one train entry per row
    that shows a training loss (the last one logged by that evaluation; "No log": none since the previous row) and one
    eval entry per row, `global_step` / `max_steps` / `num_train_epochs` from the progress bar. The latest table with
    an evaluated row is read (by its cell's execution_count when every table's cell has one, else the last on the
    page) unless `table` picks one (0-based, among the tables under a progress bar with Training Loss and Step/Epoch
    columns). A learning rate or a class count written as a literal (`learning_rate=2e-5`, `num_labels=3`) in the
    code cells run up to the table's (by execution_count, see _nb_cells_run_before) is a fact when they write only one
    of it."""
    p = Path(path)
    try:
        nb = json.loads(p.read_text(encoding="utf-8"))
    except (*PARSE_ERRORS, UnicodeDecodeError) as exc:
        raise UserError(f"'{p}' is not a readable notebook ({parse_problem(exc)})",
                        "give the .ipynb file as Jupyter saved it") from None
    if isinstance(nb, dict) and not isinstance(nb.get("cells"), list) and nb.get("nbformat") in (1, 2, 3):
        raise UserError(f"'{p}' is an nbformat {nb['nbformat']} notebook (cells under `worksheets`); loratune reads "
                        "nbformat 4", f"convert it: `jupyter nbconvert --to notebook --nbformat 4 {p.name}`")
    if not isinstance(nb, dict) or not isinstance(nb.get("cells"), list):
        raise UserError(f"'{p}' has no `cells` list", "give the .ipynb file as Jupyter saved it")
    tables = _nb_progress_tables(nb, p)
    if not tables:
        raise UserError(f"'{p}' holds no Trainer progress table in its outputs (a progress bar over a table with "
                        f"Step/Epoch and Training Loss columns)",
                        "run the training cell with the outputs saved, or give the run's trainer_state.json "
                        "(output_dir/checkpoint-*/trainer_state.json)")
    if table is not None and not -len(tables) <= table < len(tables):
        raise UserError(f"'{p}' holds {len(tables)} Trainer progress table(s); there is no table {table + 1}",
                        f"give {p.name}#1 to {p.name}#{len(tables)} (read_notebook's table=0 to {len(tables) - 1})")
    # the order the tables were made in: the cells' execution_count when every table's cell has one (a cell run
    # again after a later one holds the newer table; the later cell's output is stale), else their order on the page
    order = list(range(len(tables)))
    by_count = len(tables) > 1 and all(t["ran"] is not None for t in tables)
    if by_count:
        order.sort(key=lambda i: (tables[i]["ran"], i))
    # the last table with an evaluated row (a rerun stopped before its first evaluation shows an empty table)
    for k in [table % len(tables)] if table is not None else reversed(order):
        state, facts, extra, has_eval = _nb_table_history(tables[k])
        if has_eval:
            break
    if not has_eval:
        if table is not None and len(tables) > 1:
            raise UserError(f"'{p}': its Trainer progress table {k + 1} of {len(tables)} has no evaluated row",
                            f"give another table ({p.name}#N), or {p.name} for the last one evaluated")
        raise UserError(f"'{p}': the Trainer's progress table has no evaluated row" if len(tables) == 1 else
                        f"'{p}': none of its {len(tables)} Trainer progress tables has an evaluated row",
                        "evaluate during training (eval_strategy='steps' or 'epoch' with an eval_dataset)")
    notes = [f"read the Trainer's progress table {k + 1} of {len(tables)} in the notebook's outputs"
             + (f" (another: {p.name}#N, N from 1 to {len(tables)})" if len(tables) > 1 else "")]
    if table is None and order != sorted(order):
        stale = [i + 1 for i in order[order.index(k) + 1:]]
        notes.append(f"table {k + 1} was read as the latest: its cell ran last (execution_count {tables[k]['ran']})"
                     + (f"; table(s) {', '.join(map(str, stale))} ran later but hold no evaluated row"
                        if stale else "")
                     + f"; by their cells' execution_count the tables ran in the order "
                     f"{', '.join(str(i + 1) for i in order)} (a table below a cell run again is an older run's)")
    elif table is None and k != len(tables) - 1:
        later = f"table {k + 2}" if k + 2 == len(tables) else f"tables {k + 2}-{len(tables)}"
        notes.append(f"the later {later} holds no evaluated row (a run stopped before its first evaluation): not read")
    notes += extra
    cells, why = _nb_cells_run_before(nb["cells"], tables[k])
    if why:
        notes.append(why)
    code = [_NB_COMMENT_LINE.sub("", _nb_source(c)) for c in cells]
    lrs = sorted({float(m.group(1)) for text in code for m in _NB_LR.finditer(text)})
    # `learning_rate=LR` with `LR = 2e-5` assigned once as a literal elsewhere: that literal (a name assigned
    # several values, or from a call, says nothing)
    named = {m.group(1) for text in code for m in _NB_LR_NAME.finditer(text)}
    from_names = sorted({float(m.group(1)) for name in named for text in code
                         for m in re.finditer(rf"(?m)^[ \t]*{re.escape(name)}[ \t]*=[ \t]*{_NB_NUMBER}[ \t]*(?:#.*)?$",
                                              text)})
    if len(from_names) == 1:
        lrs = sorted(set(lrs) | set(from_names))
    if len(lrs) == 1:
        facts["learning_rate"] = Fact(lrs[0], "notebook code: the one literal learning_rate"
                                      + (f" (through {', '.join(sorted(named))})" if from_names else ""))
    elif lrs:
        notes.append(f"the notebook's code writes several learning rates ({', '.join(f'{v:g}' for v in lrs)}): "
                     "none taken")
    elif (any(_NB_TRAINING_ARGS.search(text) for text in code)
          and not any(_NB_LR_SET_ELSEWHERE.search(text) for text in code)):
        facts["learning_rate"] = Fact(TRAINER_DEFAULT_LR, "the TrainingArguments default (the notebook's code sets "
                                      "no learning rate)")
    loras = {m.group(1) for text in code for m in _NB_LORA.finditer(text)}
    if (loras and any(_NB_LORA_APPLIED.search(text) for text in code)
            and not any(_NB_OTHER_PEFT.search(text) for text in code)):
        facts["peft_type"] = Fact("LORA", "notebook code: LoraConfig")
        if len(loras) == 1:  # one adapter: its literal rank and alpha
            args = loras.pop()
            for key, rx in (("r", r"\br\s*=\s*(\d+)" + _NB_END),
                            ("lora_alpha", r"\blora_alpha\s*=\s*(\d+(?:\.\d+)?)" + _NB_END)):
                m = re.search(rx, args)
                if m:
                    facts[key] = Fact(float(m.group(1)) if "." in m.group(1) else int(m.group(1)),
                                      "notebook code: LoraConfig")
    classes = sorted({int(m.group(1)) for text in code for m in _NB_LABELS.finditer(text)})
    if len(classes) == 1 and CHANCE_CLASSES_RANGE[0] <= classes[0] <= CHANCE_CLASSES_RANGE[1]:
        facts["n_classes"] = Fact(classes[0], "notebook code: the one literal num_labels")
    # the model class the code names gives the head, as config.json's architecture does (ARCH_TASKS): taken when
    # every class named maps to one task (a notebook importing a classifier and a generator says neither)
    named = sorted({m.group(0) for text in code for m in _NB_MODEL_CLASS.finditer(text)
                    if "Collator" not in m.group(0)})  # DataCollatorForTokenClassification is no model
    named += [name for name, _ in NB_TASK_NAMES if any(re.search(rf"\b{name}\b", text) for text in code)]
    tasks = {task for n in named for suffix, task in ARCH_TASKS if n.endswith(suffix)}
    tasks |= {task for name, task in NB_TASK_NAMES if name in named}
    if len(tasks) == 1:
        task = tasks.pop()
        multi = task == "single_label" and any("multi_label_classification" in text for text in code)
        task = "multi_label" if multi else task  # problem_type, as config.json's stands over its architecture
        facts["task"] = Fact(task, f"notebook code: {', '.join(named)}"
                             + (" with problem_type multi_label_classification" if multi else ""))
        if task in NO_CLASS_TASKS:
            facts.pop("n_classes", None)
    elif tasks:
        # ...nor a class count: its num_labels may be another model's head (fold AA's NLP613-Metaplexia: a
        # classifier's num_labels=2 beside the question-answering model the table trains, whose loss is ln(512))
        dropped = facts.pop("n_classes", None)
        notes.append(f"the notebook's code names model classes of several kinds ({', '.join(named)}): no task taken"
                     + (f", nor its num_labels ({dropped.value}): it may be another model's" if dropped else ""))
    return state, facts, notes


# ---------------------------------------------------------------------------------------------
# CSV
# ---------------------------------------------------------------------------------------------

# Lightning's CSVLogger writes a value logged both per step and per epoch (self.log(name, on_step=True, on_epoch=True))
# as two columns, `<name>_step` and `<name>_epoch` (the epoch's mean; ignored, a train_loss_step / _epoch export of a
# train loss climbing to 42 read overfit-capacity, its train_loss column diverged). A train curve is its step values,
# the epoch means only where no step column is there (_CSV_FALLBACK_ALIASES); a val value's `_step` column is each val
# batch's value (at the eval loop's batch count, no optimizer step), so a val curve is its epoch means
_CSV_LIGHTNING = {"train_loss": ("train_loss_step", "train_loss_epoch"),
                  **{name: (f"{name}_epoch",) for name in ("val_loss", "val_acc", "val_accuracy", "val_f1",
                                                           "val_macro_f1")}}
# aliases read only where no other column of their key is there: of several columns of one key the first in the header
# is read (a later one only in place of a one-value summary, _summary_columns), and these come after every other
_CSV_FALLBACK_ALIASES = _CSV_LIGHTNING["train_loss"][1:]

# Keras 3's F1Score metric (keras.metrics.F1Score(average="macro")), as its History / CSVLogger name it: the train
# score bare, the validation score val_-prefixed (_CSV_BARE_METRICS)
_CSV_KERAS3_F1 = ("f1_score", "val_f1_score")

# normalised column name -> loratune key. Normalising: lower case, every non-alphanumeric run -> "_". A column whose
# name starts with eval_ (or W&B's eval/) is no alias here: it is a Trainer log key, named as the trainer_state reader
# names it (_eval_key_map), once the rows say which of several eval sets is the validation set
_CSV_COLUMNS = {
    "step": ["step", "steps", "global_step", "train_global_step", "iteration", "iter", "it", "update", "updates"],
    "epoch": ["epoch", "epochs", "train_epoch"],
    # (`Loss/train`, `Loss/val`, `Accuracy/val`: the PyTorch TensorBoard tutorial's tags, as columns)
    "train/loss": ["train_loss", "loss", "training_loss", "trn_loss", "train_loss_mean", "loss_train",
                   *_CSV_LIGHTNING["train_loss"]],
    "val/loss": ["val_loss", "validation_loss", "valid_loss", "dev_loss", "val_loss_mean", "loss_val",
                 "loss_validation", *_CSV_LIGHTNING["val_loss"]],
    "val/macro_f1": ["val_macro_f1", "macro_f1", "val_f1", "f1", "f1_macro", "val_f1_macro", "validation_f1",
                     "valid_f1", "dev_f1", *_CSV_LIGHTNING["val_f1"], *_CSV_LIGHTNING["val_macro_f1"],
                     *_CSV_KERAS3_F1],
    "val/accuracy": ["val_accuracy", "val_acc", "accuracy", "acc", "validation_accuracy", "valid_acc", "dev_acc",
                     "accuracy_val", "accuracy_validation",
                     *_CSV_LIGHTNING["val_acc"], *_CSV_LIGHTNING["val_accuracy"]],
    "train_eval/macro_f1": ["train_macro_f1", "train_f1", "train_f1_macro", "train_eval_macro_f1"],
    "train_eval/accuracy": ["train_accuracy", "train_acc", "train_eval_accuracy"],
    "train_eval/loss": ["train_eval_loss"],
    "val/n": ["val_n", "val_size"],
    # (and Lightning's LearningRateMonitor columns by their pattern, LIGHTNING_LR_TAG)
    "lr": ["lr", "learning_rate", "train_learning_rate"],
    "train/loss_std": ["train_loss_std"],
    "train/grad_norm": ["grad_norm", "train_grad_norm"],
    # not curves: read only to estimate the val size as the trainer_state reader does (`_estimate_n`: runtime x
    # samples/s), then dropped; without it an export of a run lost the noise band its trainer_state.json gave
    # (under the plain Trainer keys; the Trainer's own eval_*runtime columns are its eval sets' timing, the
    # validation set's read by _log_points)
    "eval_runtime": ["val_runtime"],
    "eval_samples_per_second": ["val_samples_per_second"],
}
_CSV_KEY_OF = {alias: key for key, aliases in _CSV_COLUMNS.items() for alias in aliases}  # normalised alias -> key
# the keys above that are no loss or score: the step, the schedule, the gradient's size, an eval's size and timing
_CSV_NOT_SCORES = frozenset({"step", "epoch", "lr", "train/grad_norm", "val/n", "eval_runtime",
                             "eval_samples_per_second"})


# Lightning's LearningRateMonitor: `lr-<optimizer class>`, `-N` for a second optimizer of one class, `/pgN` for each
# param group (lr-AdamW, lr-Adam-1, lr-AdamW/pg2, lr-RMSprop); not its `-momentum` twin. Each is a column (a tag) of the
# rate: the first by name is read (one optimizer's first group), the others said (_lightning_lr_note). A list of three
# names read lr-AdamW, lr-Adam and lr-SGD only, and no param group's. A tracker's export may lower-case the tag and
# write `_` for its `-` and `/` (`lr_adamw`, `lr-adamw`, `lr_adamw_pg2`: read as lr-AdamW is): matched without case
# where the name is an optimizer's (torch.optim's, bitsandbytes' and Lion's classes), as a lower-case `lr_decay` or
# `lr_min` column is no rate's tag
_LIGHTNING_LR_OPTIMIZERS = (r"(?:sparse|paged|n|r)?adam[a-z0-9]*|adadelta|adafactor|adagrad|asgd|lbfgs|rmsprop|rprop|sgd"
                            r"|lion[a-z0-9]*")
LIGHTNING_LR_TAG = re.compile(r"lr-[A-Z][A-Za-z0-9_]*(?:-\d+)?(?:/pg\d+)?"
                              rf"|(?i:lr[-_](?:{_LIGHTNING_LR_OPTIMIZERS})(?:[-_]\d+)?(?:[/_]pg\d+)?)")


def _norm(name: str) -> str:
    """A column's (a tag's) name as the tables here name it: lower case, `_` for any run of other characters; a
    LIGHTNING_LR_TAG is `lr`."""
    if LIGHTNING_LR_TAG.fullmatch(name.strip()):
        return "lr"
    return re.sub(r"[^a-z0-9]+", "_", name.strip().lower()).strip("_")


def _lightning_lr_note(names: Iterable[str], what: str) -> str | None:
    """What is said where several LearningRateMonitor rates are logged (LIGHTNING_LR_TAG): the first by name read."""
    rates = sorted(n for n in names if LIGHTNING_LR_TAG.fullmatch(n.strip()))
    if len(rates) < 2:
        return None
    return (f"{len(rates)} learning rates logged by Lightning's LearningRateMonitor: {what} {rates[0]!r} read as the "
            f"run's lr (its first optimizer's first param group); not read: {', '.join(map(repr, rates[1:]))}")


def _csv_score_column(col: str) -> bool:
    """Whether the CSV reader reads a loss or a score from a column: an alias's (_CSV_COLUMNS, but _CSV_NOT_SCORES),
    an eval column's (`eval_loss`, W&B's `eval/f1`; not its _EVAL_META timing) or a loratune key's; not a step, a
    learning rate, W&B's own `_runtime` / `_timestamp`, nor a column the reader leaves out."""
    if col.strip().startswith("_"):
        return False
    n = _norm(col)
    if n.startswith("eval_"):
        return not n.endswith(_EVAL_META) and n != "eval_epoch"
    key = _CSV_KEY_OF.get(n) or (col.strip() if _LORATUNE_KEY.fullmatch(col.strip()) else None)
    return key is not None and key not in _CSV_NOT_SCORES


# A bare metric name (`accuracy`, `acc`, `f1`: a _METRIC_ALIASES name the table above reads as val/<metric>) is the
# validation score where the CSV names no validation score by a prefix (a hand-made table of eval scores), and the
# training score in a CSV that names any metric's validation score by its prefix (a val_ / eval_ column of a metric
# other than the loss): Keras' History and CSVLogger write the epoch's train scores bare beside their `val_` twins
# (`accuracy` read as the validation score, the train accuracy was the best val accuracy and `val_accuracy` was
# ignored), and one file's naming is one convention: a bare `f1` beside `val_accuracy` is the train F1 too (read as
# the val macro-F1, it was the headline). Read then as a `train_acc` column is read: this split's key
_CSV_BARE_METRIC_BESIDE_VAL = "train_eval"
# the bare metric names a CSV has: the Trainer's metric names, and Keras 3's F1Score
_CSV_BARE_METRICS = {**_METRIC_ALIASES, _CSV_KERAS3_F1[0]: "macro_f1"}


def _val_metric_named(col: str, lookup: Mapping[str, str]) -> str | None:
    """The metric a CSV column names as a validation score by a prefix (`val_acc`, `eval_accuracy`, W&B's
    `eval/f1`), or None (a bare name, a train column, no metric)."""
    n = _norm(col)
    if n in _CSV_BARE_METRICS:
        return None
    if n.startswith("eval_"):
        return _CSV_BARE_METRICS.get(n[len("eval_"):])
    key = lookup.get(n, "")
    return key[len("val/"):] if key.startswith("val/") else None


def _chart_column(col: str, lookup: Mapping[str, str]) -> tuple[str | None, str]:
    """A W&B chart panel's column `<run name> - <metric>` as (run name, metric); (None, col) for any other column.
    Either part may hold a " - " (`bert-base - lr 2e-4 - eval/loss`, the run `lora-r8`'s `val - loss`): the split
    read is the one whose metric is a column name this reader knows (an alias, an eval_ column, a loratune key), the
    longest such (`val - loss`, not `loss`: its val curve read as train/loss); with none known, the last " - "."""
    parts = col.split(" - ")
    if len(parts) < 2:
        return None, col
    splits = [(" - ".join(parts[:k]), " - ".join(parts[k:])) for k in range(1, len(parts))]  # longest metric first
    known = (s for s in splits if (_norm(s[1]) in lookup or _norm(s[1]) in _CSV_BARE_METRICS
                                   or _norm(s[1]).startswith("eval_") or _LORATUNE_KEY.fullmatch(s[1])))
    return next(known, splits[-1])


# a column already named by a loratune key (`val/accuracy`, `train/loss`)
_LORATUNE_KEY = re.compile(r"(train|val|train_eval)/[a-z_0-9/]+")


def _eval_column_key(col: str) -> str:
    """An eval column's name as the Trainer's log key (what _eval_key_map reads): W&B's `eval/x` as `eval_x`, each
    `/`-separated part normalised and the `/` kept, so TRL's `eval/rewards/accuracies` stays `eval_rewards/accuracies`
    (the preference rules read `val/rewards/accuracies`; normalised whole it was `val/rewards_accuracies`)."""
    key = "/".join(_norm(part) for part in col.split("/"))
    return "eval_" + key[len("eval/"):] if key.startswith("eval/") else key


def _merge_same_step(points: list[dict]) -> tuple[list[dict], dict[str, int]]:
    """Rows of one step merged into one point (an export may put a step's train and eval numbers on two rows); a
    column given again at a step keeps its first value, as a Trainer log's repeated eval key does. Returns the
    points in step order (stable: file order within a step) and how many values of each key were given again."""
    merged: dict[int, dict] = {}
    repeated: dict[str, int] = {}
    for pt in points:
        into = merged.setdefault(pt["step"], {})
        _merge_into(into, pt, repeated)
    return [merged[s] for s in sorted(merged)], repeated


def _merge_into(into: dict, pt: Mapping[str, Any], repeated: dict[str, int]) -> None:
    """A row's values merged into the point of its step: a key the point has keeps its value; `repeated` counts, by
    key, the other values given (the note counts only the keys of the columns read: a W&B history's own `_step`,
    another number on each of a step's rows, is no value given again)."""
    for k, v in pt.items():
        if k in into and k != "step":
            if into[k] != v:
                repeated[k] = repeated.get(k, 0) + 1
            continue
        into[k] = v


def _csv_eval_keys(eval_rows: list[dict], eval_cols: Mapping[int, str],
                   mapping: dict[int, str]) -> tuple[dict[str, str], str, list[str]]:
    """The loratune key of each eval column, read under its Trainer key, as the trainer_state reader names it
    (_eval_key_map, told at how many rows each set was evaluated: of `eval_loss` logged once by a trainer.evaluate()
    after training and `eval_validation_loss` at every eval, the second is the validation set), and the prefix of the
    validation set's timing keys (its size, as _estimate_n reads it). `eval_rows`: each row's eval-column values, with
    its step. A key a fixed column already gives (a `val_loss` beside an `eval_loss`) is left to it. `mapping` gets
    the columns read; returns _eval_key_map's notes too."""
    split_of, notes = _eval_key_map(eval_rows, say_mapped=False)
    given = set(mapping.values())
    split_of = {k: v for k, v in split_of.items() if v not in given}
    val_prefix = _val_prefix(split_of)
    timing = {val_prefix + t for t in SIZE_TIMING}
    for i, k in eval_cols.items():
        if k in split_of or k in timing:
            mapping[i] = split_of.get(k, k)
    return split_of, val_prefix, notes


# a CSV's train columns under the keys of the Trainer's train log entry (what _window reads)
_CSV_TRAIN_LOG_KEYS = {"train/loss": "loss", "train/grad_norm": "grad_norm", "lr": "learning_rate"}


class _OutOfOrder(Exception):
    """A CSV row whose step comes before the step of the row above it."""


@dataclass
class _CsvRead:
    """What one pass over a CSV's rows keeps as they stream (never the rows): the points' makings, one window of
    train logs, the learning-rate column as two floats a row, and the counts that decide columns afterwards."""
    evals: list = field(default_factory=list)  # (eval entry, the _window of the train logs since the one before)
    tail: list = field(default_factory=list)  # the train logs since the last evaluation: the one window held
    eval_rows: list = field(default_factory=list)  # each row's eval-column values, with its step (_csv_eval_keys)
    lr: _Samples = field(default_factory=_Samples)  # (step - 1, rate) of each row with a rate (_lr_schedule_facts)
    first_losses: list = field(default_factory=list)  # the first 2 train logs with a loss (_classes_from_first_loss)
    counts: dict = field(default_factory=dict)  # the rows with a value, of each key a spare column names too
    repeated: dict = field(default_factory=dict)  # values given again at a step, by key (as _merge_same_step counts)
    bad_cells: int = 0
    decimal_commas: int = 0
    stepless: int = 0  # rows without a step number, where the CSV has a step column
    row_step_base: int = 1  # without a step column, the first row's step


def _csv_points(p: Path, rows: Iterable[list[str]], columns: Sequence[tuple[int, str]], dialect, has_step: bool,
                read: _CsvRead) -> Iterator[dict]:
    """Each row's numbers under its columns' keys (`columns`: (index, key)), counted in `read`: cells that are no
    number, decimal commas, rows without a step (left out)."""
    held = None  # a first row at epoch 0 with a train loss, until the next row says what its epoch 0 was
    for r_i, row in enumerate(rows):
        pt: dict[str, Any] = {}
        for i, key in columns:
            cell = row[i].strip() if i < len(row) else ""
            if cell == "":
                continue
            try:
                v = float(cell)
            except ValueError:
                # a decimal comma (a spreadsheet's export in many locales), where commas do not delimit
                if dialect.delimiter != "," and re.fullmatch(r"[-+]?\d+,\d+(?:[eE][-+]?\d+)?", cell):
                    v = float(cell.replace(",", "."))
                    read.decimal_commas += 1
                else:
                    read.bad_cells += 1
                    continue
            if key in ("step", "val/n"):
                if not math.isfinite(v):  # a step or size of inf / nan is no number of anything
                    read.bad_cells += 1
                    continue
                if key == "step" and (v < 0 or v != int(v)):
                    raise UserError(f"'{p}' row {r_i + 2}: step {cell} is not a count of optimizer steps (a whole "
                                    "number, 0 or more)", "give the step column whole steps from 0 (a column of "
                                    "epochs goes under the name 'epoch')")
                pt[key] = int(v)
            else:
                pt[key] = v if math.isfinite(v) else None
        if "step" not in pt:
            if has_step:  # a step column whose cell is empty or no number: the row has no place on the curve
                read.stepless += 1
                continue
            # rows counted from 1 (a logged row comes after a step), or from 0 where the first row is at epoch 0
            # before any step (_csv_epoch_0_is_baseline): decided, for a row with a train loss, by the next row
            if r_i == 0 and pt.get("epoch") == 0:
                if not any(k.startswith(TRAIN_LOG_SPLIT + "/") for k in pt):
                    read.row_step_base = 0
                else:
                    held = pt
                    continue
            if r_i == 1 and held is not None:
                read.row_step_base = 0 if _csv_epoch_0_is_baseline(pt.get("epoch")) else 1
                yield {**held, "step": read.row_step_base}
                held = None
            pt["step"] = r_i + read.row_step_base
        yield pt
    if held is not None:  # the file's one row
        yield {**held, "step": 1}


def _csv_epoch_0_is_baseline(next_epoch: float | None) -> bool:
    """Whether a step-less CSV's first row, at epoch 0 with a train loss, is the untrained baseline (step 0, where the
    features read a train loss as the untrained model's) or a row logged after steps (rows counted from 1), by the
    epoch of the row after it. A fractional epoch column is training progress (the HF Trainer's: 0, 0.5, 1.0): its
    epoch 0 came before any step, a pre-training evaluation and loss. A whole-number one counts epochs (Keras'
    CSVLogger: 0, 1, 2, a row at each epoch's end): its epoch-0 row came after the first epoch (at step 0 its train
    loss was dropped, and the 0-based export read otherwise than the same numbers counted from 1). No next epoch
    (one row, or none given): after steps. A row without a train loss at epoch 0 is an evaluation before training
    in either column (never asked here)."""
    return next_epoch is not None and (next_epoch != int(next_epoch) or next_epoch == 0)


def _in_step_order(points: Iterable[dict], read: _CsvRead) -> Iterator[dict]:
    """Rows of one step merged as _merge_same_step merges them, as they stream: for rows in step order, where the
    rows of a step are next to each other. Raises _OutOfOrder at a row whose step comes before the one above it."""
    pending = None
    for pt in points:
        if pending is not None and pt["step"] == pending["step"]:
            _merge_into(pending, pt, read.repeated)
            continue
        if pending is not None:
            if pt["step"] < pending["step"]:
                raise _OutOfOrder
            yield pending
        pending = pt
    if pending is not None:
        yield pending


def _csv_windows(rows: Iterable[dict], read: _CsvRead, counted: Iterable[str], swaps: Sequence[tuple[int, str]],
                 spare: Iterable[int], eval_keys: set[str], eval_col_keys: set[str]) -> None:
    """A CSV's rows (merged, in step order) read as the trainer_state reader reads a Trainer log (_log_points), into
    `read` as they come: each row with a train loss a train log of the current window; each row with an eval value
    (an eval column `eval_keys` names, or a fixed column of a scored split: val/*, train_eval/*) an evaluation that
    closes the window and carries the row's other columns (train/loss_std, ...) along. Before that the `counted`
    keys' values are counted, and the spare columns of `swaps`, (column, key), replace their key's column."""
    window: list[dict] = []
    for row in rows:
        for key in counted:
            if row.get(key) is not None:
                read.counts[key] = read.counts.get(key, 0) + 1
        for i, key in swaps:
            row.pop(key, None)
            if _spare_key(i) in row:
                row[key] = row[_spare_key(i)]
        for i in spare:
            row.pop(_spare_key(i), None)
        if eval_col_keys & row.keys():
            read.eval_rows.append({"step": row["step"], **{k: v for k, v in row.items() if k in eval_col_keys}})
        if _fin(row.get("lr")):
            read.lr.append(row["step"] - 1.0, float(row["lr"]))
        base = {k: row[k] for k in ("step", "epoch") if k in row}
        if "train/loss" in row:
            log = {**base, **{t: row[k] for k, t in _CSV_TRAIN_LOG_KEYS.items() if k in row}}
            window.append(log)
            if len(read.first_losses) < 2 and _fin(log["loss"]) is not None:
                read.first_losses.append(log)
        rest = {k: v for k, v in row.items() if k not in base and k not in _CSV_TRAIN_LOG_KEYS}
        if is_eval_point(rest) or eval_keys & rest.keys():
            read.evals.append(({**base, **rest}, _window(window)))
            window = []
    read.tail = window


def _csv_column_notes(header: list[str], mapping: dict[int, str]) -> list[str]:
    """What a CSV's columns were read as, and which were not read. A train_runtime column (CSV_END_COLUMNS) is read
    for the end-of-training entry (_csv_end_entry): read, so never listed as ignored (z/end.csv's note said
    "ignored: 'train_runtime'" while that column decided the run finished)."""
    read = {**mapping, **{i: END_ENTRY_READ for i, h in enumerate(header) if _norm(h) in CSV_END_COLUMNS
                          and i not in mapping}}
    notes = ["CSV columns mapped: " + ", ".join(f"{header[i]!r} -> {k}" for i, k in sorted(read.items()))]
    unused = [h for i, h in enumerate(header) if i not in read]
    if unused:
        notes.append(f"CSV columns ignored: {', '.join(map(repr, unused))}")
    return notes


def _spare_key(i: int) -> str:
    """Where a spare column's numbers wait (in each point) until _summary_columns keeps or drops them."""
    return f"\x00spare{i}"


def _summary_columns(counts: Mapping[str, int], mapping: dict[int, str], spare: dict[int, str], header: list[str],
                     notes: list[str]) -> list[tuple[int, str]]:
    """Two columns for one key (`train_loss` and `loss`): the first in the header is read, unless it holds a single
    value where the other holds a curve; that one value is a summary (the Trainer's `train_loss`, a run's mean loss
    at its end, as an MLflow pivot exports it), not the curve. `counts`: the rows with a value of each key and spare
    column (_spare_key). In place: mapping and notes; returns the spare columns read instead, (column, key)."""
    swaps = []
    held = dict(counts)  # the values each key holds, a swapped-in column's
    for i, key in spare.items():
        first = next(j for j, k in mapping.items() if k == key)
        n_first, n_spare = held.get(key, 0), counts.get(_spare_key(i), 0)
        if n_first <= 1 < n_spare:
            held[key] = n_spare
            mapping[i] = mapping.pop(first)
            swaps.append((i, key))
            why = ("no value" if n_first == 0 else "one value: one logged step, no curve"
                   if _norm(header[first]) in _CSV_LIGHTNING["train_loss"][:1] else "one value: a run's summary")
            notes.append(f"CSV columns {header[first]!r} and {header[i]!r} both name {key}: {header[i]!r} read (a "
                         f"curve of {n_spare} values), {header[first]!r} left out ({why})")
    return swaps


# A table of runs, one row each (its summary values), is no run's history: MLflow's experiment page "Download CSV"
# (`Run ID`, `Name`, `Status`, `Start Time`, ..., `eval_loss`) and W&B's runs table (`Name`, `State`, `Notes`,
# `Created`, ...) read as one run's curve, its rows as steps (an MLflow table of 4 runs, the last at a large learning
# rate, read "diverged, confidence 0.95"); nor are several runs' histories stacked in one file (a run column beside
# the step, each run's steps again from the start). A table's mark: a column that names a run beside one whose every
# cell is a run's state as the trackers write it (_RUN_STATES: a history's `state` column of numbers, or a `status` of
# `saved` checkpoints, is no run state). Its runs' summary steps may go up down the table (a sweep sorted by
# `train/global_step`): a run named on every row, a different one each, is a table whatever its steps; only where
# names repeat does a step going up along the whole file make it one history (a run's name on each of its rows).
# Stacked histories need no state column: a run column naming several runs, each on its own block of rows, each
# block's steps going up and starting again at the next. (run-identity columns, run-state columns), normalised names
_RUNS_TABLE_COLUMNS = (("run_id", "id", "name", "run_name", "run"), ("status", "state"))
# a run's state, normalised: MLflow's RunStatus (FINISHED, RUNNING, ...) and W&B's run states (finished, crashed, ...)
_RUN_STATES = frozenset({"running", "scheduled", "finished", "failed", "killed", "crashed", "preempted",
                         "preempting", "pending", "queued"})
# a run-identity column whose every value is one of these (normalised) names phases, not runs: a run's train and
# eval rows named by what they are (`name,step,loss`: train,50 / eval,50), the Trainer's set names and a test set's
_CSV_PHASE_NAMES = frozenset({*_VAL_NAMES, *_TRAIN_NAMES, "test"}) - {""}


def _number(cell: str) -> float | None:
    try:
        v = float(cell)
    except ValueError:
        return None
    return v if math.isfinite(v) else None


def _step_on(seqs: dict, key: Any, v: float | None) -> None:
    """One more value of a sequence of steps (`seqs[key]`: [last value, whether it rose, whether it never fell]): it
    goes up where it never falls and rises at least once (a step's train and eval rows share the step; a runs
    table's `train/global_step` of 500 in every row goes nowhere)."""
    if v is None:
        return
    last, rose, never_fell = seqs.get(key, (v, False, True))
    seqs[key] = (v, rose or v > last, never_fell and v >= last)


def _goes_up(seqs: dict, key: Any) -> bool:
    rose, never_fell = seqs.get(key, (None, False, False))[1:]
    return rose and never_fell


def _check_not_a_runs_table(p: Path, header: list[str], rows: Iterable[list[str]]) -> None:
    """Refuses a CSV whose rows are several runs (_RUNS_TABLE_COLUMNS): a table of runs, one row each (a name given
    to several runs or not), or the histories of several runs stacked (each run's steps going up on its own rows)."""
    names = [_norm(h) for h in header]
    ids, states = ([i for i, n in enumerate(names) if n in group] for group in _RUNS_TABLE_COLUMNS)
    if not ids:
        return
    progress = [i for i, n in enumerate(names) if n in _CSV_COLUMNS["step"] or n in _CSV_COLUMNS["epoch"]]
    cell = lambda row, i: row[i].strip() if i < len(row) else ""  # noqa: E731
    runs: dict[int, dict[str, int]] = {i: {} for i in ids}  # the rows of each run each identity column names
    blocks = {i: True for i in ids}  # whether each run's rows are one block (no run named again after another)
    last: dict[int, str] = {}  # each identity column's run of the row before
    stated: dict[int, int | None] = {i: 0 for i in states}  # each state column's cells of a run state (else None)
    seqs: dict = {}  # step column -> its values along the file; (identity column, step column, run) -> a run's
    # (identity column, step column, step, score column) -> the run whose row at that step filled it first: two runs
    # filling one loss or score column at one step are two runs taking turns (one run's train and eval rows at a step
    # fill different score columns; a learning rate, a timing or W&B's own `_runtime` is no score: _csv_score_column)
    alike: dict = {}
    # whether two of the runs a column names fill one score column at a step: the first such (step column, step, score
    # column)
    shared: dict[int, tuple | None] = {i: None for i in ids}
    scores = [k for k, h in enumerate(header) if k not in ids and k not in states and k not in progress
              and _csv_score_column(h)]
    n_rows = 0
    for row in rows:
        n_rows += 1
        for i in states:
            c, n = cell(row, i), stated[i]
            if n is not None and c:
                stated[i] = n + 1 if _norm(c) in _RUN_STATES else None
        steps = {j: _number(cell(row, j)) for j in progress}
        for j, v in steps.items():
            _step_on(seqs, j, v)
        for i in ids:
            run = cell(row, i)
            if run:
                blocks[i] = blocks[i] and (run == last.get(i) or run not in runs[i])
                last[i] = run
                runs[i][run] = runs[i].get(run, 0) + 1
                for j, v in steps.items():
                    _step_on(seqs, (i, j, run), v)
                    if v is not None and not shared[i]:
                        shared[i] = next(((j, cell(row, j), k) for k in scores
                                          if cell(row, k) and alike.setdefault((i, j, v, k), run) != run), None)
    state = next((i for i in states if stated[i]), None)
    i = max(ids, key=lambda i: len(runs[i]))  # the column naming the most runs (MLflow's Run ID over its Name)
    named = sum(runs[i].values()) == n_rows  # every row names its run
    columns = f"columns {header[i]!r} and {header[state]!r}" if state is not None else f"column {header[i]!r}"
    table = UserError(f"'{p}' is a table of {n_rows} run(s), one row each ({columns}), not one run's history: its "
                      "rows are runs, not steps",
                      "export one run's metric history (a row per logged step): in W&B a chart panel's CSV or "
                      "wandb.Api().run(PATH).history().to_csv(); in MLflow "
                      "MlflowClient().get_metric_history(RUN_ID, KEY) per metric, joined on step")
    if state is not None and named and len(runs[i]) == n_rows:
        raise table  # a different run on every row: its summary steps going up or not (a sweep sorted by them)
    several = len(runs[i]) > 1 and max(runs[i].values(), default=0) > 1
    stacked = next((header[j] for j in progress if all(_goes_up(seqs, (i, j, run)) for run in runs[i]
                                                       if runs[i][run] > 1)), None)
    shown = ", ".join(map(repr, list(runs[i])[:3])) + (", ..." if len(runs[i]) > 3 else "")

    def histories(how: str) -> UserError:
        if shared[i] and all(_norm(run) in _CSV_PHASE_NAMES for run in runs[i]):
            # train / eval rows filling one column: one phase's value read as another's (the eval loss as the train
            # loss, then dropped as given again); the reader has no phase column, the file has to say it in its columns
            j, at, k = shared[i]
            step = stacked or header[j]
            return UserError(f"'{p}' column {header[i]!r} names phases ({shown}), not runs: their rows at one step "
                             f"fill the same column ({header[k]!r} at {header[j]} {at}), so one phase's value would "
                             "be read as another's", "give each phase's values their own columns (train_loss, "
                             "eval_loss, ...) on one row per step, e.g. with pandas: w = pandas.read_csv("
                             f"{p.name!r}).pivot_table(index={step!r}, columns={header[i]!r}); w.columns = "
                             "[f'{phase}_{metric}' for metric, phase in w.columns]; "
                             "w.reset_index().to_csv('run.csv', index=False)")
        return UserError(f"'{p}' holds the histories of {len(runs[i])} runs ({shown}), {how} ({columns}"
                         + (f", {stacked!r} going up within each run" if stacked else "") + "), not one run's history",
                         f"split it into a file per run and diagnose them together, e.g. with pandas: for run, df in "
                         f"pandas.read_csv({p.name!r}).groupby({header[i]!r}): df.to_csv(f'{{run}}.csv', index=False)")

    # runs taking turns row by row (a,b,a,b: two runs merged on their steps): the file's step never falls, so it passed
    # for one history; each run's steps going up and two runs' rows alike at one step say otherwise (a long-format
    # export's `name` is a metric's: its value column says so, _no_metric_column)
    long_format = any(n in _CSV_LONG_FORMAT[1] for n in names)
    if several and named and not blocks[i] and shared[i] and stacked is not None and not long_format:
        raise histories("taking turns row by row")
    if any(_goes_up(seqs, j) for j in progress):
        return  # one history (a run name on each of its rows, its steps going up)
    # without run states only a run column whose runs are blocks of rows, each its steps going up, is several runs
    alone = named and blocks[i] and min(runs[i].values(), default=0) > 1
    if several and (stacked is not None and (state is not None or alone) or state is not None and not progress):
        raise histories("one after another")
    if state is None or not runs[i] or (len(runs[i]) == 1 and not progress and n_rows > 1):
        return  # no run states, or one run's rows with no steps to say otherwise (a name given to several runs:
        # their steps go nowhere)
    raise table


# A long-format export, one row per logged value: MLflow's metric history (`key,value,timestamp,step`), Comet's
# get_metrics() (`metricName,metricValue,...`), Neptune's fetch_values() of one series (`step,value,timestamp`).
# (metric-name columns, value columns), normalised names: said where a CSV has no loss or metric column
_CSV_LONG_FORMAT = (("key", "metric", "metric_name", "metricname", "name", "tag"),
                    ("value", "metric_value", "metricvalue"))


# text logs of trainers that write their own format, which no reader here reads (their first line read as a CSV
# header, the error asked to name its columns): (what it is, a pattern of its first line, what to give instead)
TEXT_LOG_FORMATS = (
    ("a torchtune DiskLogger log (`Step N | loss:X lr:Y ...` lines)", re.compile(r"Step \d+\s*\|\s*\w+:"),
     "give a CSV of its numbers, one row a step: step,train_loss,lr (val_loss where an eval was logged), e.g. "
     "from each line's `Step N` and `loss:` / `lr:` fields"),
    ("LLaMA-Factory's running_log.txt (its console log)", re.compile(r"\[(INFO|WARNING)\|[^\]]*\].*(llamafactory|>>)"),
     "give the run's output_dir or its trainer_state.json (LLaMA-Factory trains with the Hugging Face Trainer, "
     "which writes it at the end and into each checkpoint-*), or a CSV with step,train_loss,val_loss columns"),
)


def _no_metric_column(p: Path, header: list[str], delimiter: str = ",") -> UserError:
    """The error for a CSV with no loss or metric column: what it is where its shape says (a trainer's own text log,
    TEXT_LOG_FORMATS; long format), else which names to give."""
    line = delimiter.join(header)  # the first line, as the CSV dialect cut it
    for what, first_line, fix in TEXT_LOG_FORMATS:
        if first_line.match(line.strip()):
            return UserError(f"'{p}' is {what}: a format loratune does not read (no CSV header of named columns)",
                             fix)
    names = [_norm(h) for h in header]
    named, valued = ([header[i] for i, n in enumerate(names) if n in group] for group in _CSV_LONG_FORMAT)
    step = next((header[i] for i, n in enumerate(names) if n in _CSV_COLUMNS["step"]), None)
    # without a step column there is nothing to pivot or join on: the export has to carry each value's step
    stepless = "" if step else ", no step column"
    export = "" if step else "export it again with each value's step (MLflow's metric history has one), then "
    step = step or "step"
    if named and valued:
        return UserError(f"'{p}' is in long format, one row per logged value (the metric's name in {named[0]!r}, its "
                         f"value in {valued[0]!r}{stepless}), not a column per metric",
                         f"{export}pivot it to a row per step and a column per metric, e.g. with pandas: "
                         f"df.pivot_table(index={step!r}, columns={named[0]!r}, values={valued[0]!r}).reset_index()"
                         ".to_csv('run.csv', index=False)")
    if valued:
        return UserError(f"'{p}' holds one unnamed series (column {valued[0]!r}{stepless}): no column says which "
                         "metric it is", f"rename {valued[0]!r} to the metric it holds (train_loss, val_loss, "
                         f"val_accuracy), or {export}join each metric's file on {step!r} into one CSV")
    return UserError(f"'{p}': no loss or metric column among {header}",
                     "name columns like step, train_loss, val_loss, val_f1 (or val_accuracy)")


def _csv_rows(p: Path) -> Iterator[Any]:
    """A CSV read line by line: its dialect, its header, then its non-blank rows."""
    with p.open(encoding="utf-8-sig", newline=None) as f:  # universal newlines: \r, \n, \r\n
        # each line cut again as str.splitlines() cuts (\f, \x1c, U+2028...): the lines the whole text's splitlines gave
        lines = (piece for line in f for piece in line.splitlines())
        first = next((line for line in lines if line.strip()), None)  # blank lines above the header
        if first is None:
            raise UserError(f"'{p}' is empty", "give a CSV with a header row: step, train_loss, val_loss, val_f1")
        try:
            dialect = csv.Sniffer().sniff(first, delimiters=",;\t|")
        except csv.Error:
            dialect = csv.excel
        yield dialect
        reader = csv.reader(itertools.chain([first], lines), dialect)
        yield next(reader)
        yield from (r for r in reader if any(cell.strip() for cell in r))


# A long-format phase column (`step,split,loss`: a train row and a val row at a step, each with its phase): each
# phase's values are read as the columns a wide export gives them (the reshape the `name`-of-phases refusal above
# asks for), the training log's as `train_<metric>` and the validation set's as the Trainer's plain `eval_<metric>`
# (named as its log is, _eval_key_map). A test phase beside a validation phase is left out (the curves diagnosed are
# the validation set's); alone, it is the one held-out set evaluated, read as the validation set as the Trainer
# reader reads one held-out set under its own name. (column names, normalised), (phase -> the prefix its values take)
_CSV_PHASE_COLUMNS = ("split", "phase")
_CSV_PHASE_PREFIX = {**{v: "train_" for v in ("train", "training")},
                     **{v: "eval_" for v in _VAL_NAMES if v}, "test": "eval_"}
_CSV_TEST_PHASE = "test"
# What is pivoted: a column of scores with no phase in its name (`loss`, `accuracy`: _csv_score_column, or a metric
# the Trainer reader names, `rougeL`, `wer`). Not a column that already names its phase (its first word one of
# these: `train_loss`, `eval_loss`, W&B's `train/loss`; prefixed again, `train_eval_loss` read a train row's eval
# loss as a train-eval curve), nor the step, the epoch, the schedule, a timing (`timestamp`, `runtime`) or any other
# column: each row's, read as it is. A phase column with no column to pivot (`step,split,train_loss,val_loss`), with
# one phase only, or whose values name no data split (a schedule's `warmup` / `stable` / `decay`, a curriculum's
# stage `1` / `2`) is not read as phases: the file is read as it is, the column ignored (said in the mapping note)
_CSV_PHASE_NAMED = ("train", "training", "trn", *(v for v in _VAL_NAMES if v), "test")
_CSV_PHASE_METRICS = frozenset(_norm(m) for m in (*_METRIC_ALIASES, *_ERROR_RATES))


def _csv_phase_pivoted(col: str) -> bool:
    """Whether a phase column's rows put their values of this column under their phase's name (_CSV_PHASE_NAMED)."""
    n = _norm(col)
    if col.strip().startswith("_") or n.split("_", 1)[0] in _CSV_PHASE_NAMED:
        return False
    return _csv_score_column(col) or n in _CSV_PHASE_METRICS


def _csv_phase_pivot(p: Path, header: list[str], rows: Iterable[list[str]]
                     ) -> tuple[list[str], Callable[[list[str]], list[str]], str] | None:
    """A CSV with a phase column (_CSV_PHASE_COLUMNS) of data splits and columns to pivot (_CSV_PHASE_NAMED): the
    header of its phases' columns, a function from a row to its row under that header (its values in its phase's
    columns, blanks in the others) and the note that says so; None where the file is read as it is. Refuses a column
    of data splits with a row of no phase or one not known, and two validation phases."""
    names = [_norm(h) for h in header]
    col = next((i for i, n in enumerate(names) if n in _CSV_PHASE_COLUMNS), None)
    if col is None:
        return None
    pivoted = [i for i in range(len(header)) if i != col and _csv_phase_pivoted(header[i])]
    if not pivoted:
        return None
    seen: dict[str, str] = {}  # normalised phase -> the phase as first written
    odd: tuple[int, str] | None = None  # the first row whose phase is no data split: (row number, its cell)
    for r_i, row in enumerate(rows):
        cell = row[col].strip() if col < len(row) else ""
        if _norm(cell) in _CSV_PHASE_PREFIX:
            seen.setdefault(_norm(cell), cell)
        elif odd is None:
            odd = (r_i + 2, cell)
    if not seen:
        return None  # no data split named: a schedule's or a curriculum's phases
    if odd is not None:
        known = ", ".join(sorted(_CSV_PHASE_PREFIX))
        line, cell = odd
        raise UserError(f"'{p}' row {line}: column {header[col]!r} is {cell!r}, not a phase loratune reads ({known})"
                        if cell else f"'{p}' row {line}: column {header[col]!r} is empty, so the row's values belong "
                        "to no phase",
                        f"name each row's phase in {header[col]!r} ({known}); rows of another set belong in a file of "
                        f"their own (a column of another kind of phase, a schedule's, needs another name)")
    if len(seen) == 1:
        return None  # one phase: the columns are read by their names
    vals = [v for v in seen if _CSV_PHASE_PREFIX[v] == "eval_" and v != _CSV_TEST_PHASE]
    if len(vals) > 1:
        raise UserError(f"'{p}' column {header[col]!r} names {len(vals)} validation phases "
                        f"({', '.join(repr(seen[v]) for v in vals)}): which one is the run's validation set is unknown",
                        "keep the validation set's rows under one of them and write the others to a file of their "
                        "own (or name a held-out set evaluated beside it 'test')")
    dropped = _CSV_TEST_PHASE if vals and _CSV_TEST_PHASE in seen else None
    prefix = {v: _CSV_PHASE_PREFIX[v] for v in seen if v != dropped}
    shared = [i for i in range(len(header)) if i != col and i not in pivoted]
    out = sorted(set(prefix.values()))
    # a pivoted column the file already has (`loss` on train rows beside `train_loss`): one column, the file's value
    # where it has one, the pivoted one where it is blank
    into = {_norm(header[j]): j for j in reversed(shared)}
    merged = {(pfx, i): into[_norm(pfx + header[i])] for pfx in out for i in pivoted if _norm(pfx + header[i]) in into}
    fill = {j: (pfx, i) for (pfx, i), j in merged.items()}
    new_header = [header[i] for i in shared] + [pfx + header[i].strip() for pfx in out for i in pivoted
                                                 if (pfx, i) not in merged]

    def pivot(row: list[str]) -> list[str]:
        cell = lambda i: row[i] if i < len(row) else ""  # noqa: E731
        pfx = prefix.get(_norm(cell(col)))
        return ([cell(j) if cell(j).strip() or j not in fill or fill[j][0] != pfx else cell(fill[j][1])
                 for j in shared]
                + [cell(i) if p_ == pfx else "" for p_ in out for i in pivoted if (p_, i) not in merged])

    said = "; ".join(f"{', '.join(repr(seen[v]) for v in prefix if prefix[v] == pfx)} rows as "
                     + ("the training log" if pfx == "train_" else "the validation set")
                     + f" ({', '.join(pfx + header[i].strip() for i in pivoted)})" for pfx in out)
    note = (f"column {header[col]!r} read as each row's phase: {said}"
            + (f"; the {seen[dropped]!r} rows left out (a set beside the validation set, not diagnosed)"
               if dropped else "")
            + (f" ({seen[_CSV_TEST_PHASE]!r}, the one held-out set evaluated, read as the validation set)"
               if _CSV_TEST_PHASE in prefix else ""))
    return new_header, pivot, note


def read_csv(path: str | Path) -> RunHistory:
    """A CSV of step / loss / metric columns, streamed: the file is read line by line, only the mapped columns'
    numbers are kept (a 200 MB W&B export with a hundred other columns held ~10x its size as text, lines and cells),
    and the rows are read into windows as they come (_csv_windows), so what is held is the points, the one window of
    train rows since the last evaluation and the learning-rate column (16 bytes a row). A file whose steps go back is
    read again and its rows sorted, all of them held; one with a column only the whole file decides (a one-value
    summary column beside its curve, an eval column a fixed one gives) is read again once it is decided."""
    p = Path(path)
    rows = _csv_rows(p)
    dialect = next(rows)
    header = next(rows)
    again: Callable[[], Iterator[list[str]]] = lambda: itertools.islice(_csv_rows(p), 2, None)  # noqa: E731
    phases = _csv_phase_pivot(p, header, again())
    if phases is None:
        return _csv_history(p, header, rows, dialect, again)
    header, pivot, note = phases
    return _csv_history(p, header, map(pivot, rows), dialect, lambda: map(pivot, again()), (note,))


CSV_NO_END_ENTRY_NOTE = ("no end-of-training entry (a train_runtime value) in the CSV: whether the run ended is "
                         "unknown, so it is read to its last row, stopped short or not")
CSV_END_COLUMNS = ("train_runtime", "train_train_runtime")  # _norm'd names of the Trainer's end-entry column
END_ENTRY_READ = "end of training (whether the run finished)"  # what the mapping note says such a column is read as


def _csv_end_entry(header: Sequence[str], rows: Iterable[Sequence[str]]) -> bool:
    """Whether a CSV holds the Trainer's end-of-training entry: a number in its train_runtime column."""
    cols = [i for i, h in enumerate(header) if _norm(h) in CSV_END_COLUMNS]
    for row in rows if cols else ():
        for i in cols:
            try:
                if i < len(row) and math.isfinite(float(row[i].strip().replace(",", "."))):
                    return True
            except ValueError:
                continue
    return False


def _csv_history(p: Path, header: list[str], body: Iterator[list[str]], dialect,
                 again: Callable[[], Iterator[list[str]]], first_notes: Sequence[str] = ()) -> RunHistory:
    """The run of a CSV from its header and its non-blank rows (`body`: read once, row by row; `again`: the rows
    read anew); `first_notes`: what reading the file's shape said (its phase column)."""
    lookup = _CSV_KEY_OF
    mapping: dict[int, str] = {}
    spare: dict[int, str] = {}  # a later column under a key already mapped: read, in case the first is a summary
    eval_cols: dict[int, str] = {}  # eval_* columns no alias names: the Trainer's named eval sets
    chart_runs: list[str] = []  # a W&B chart export: "<run name> - <metric>", with __MIN / __MAX bands
    metric_of = {i: _chart_column(h.strip(), lookup) for i, h in enumerate(header)}  # (run, metric) of each column
    # the metrics (but the loss) a column names the validation score of by a prefix: _CSV_BARE_METRIC_BESIDE_VAL
    val_named = {_val_metric_named(m, lookup) for _, m in metric_of.values()} & set(_METRIC_ALIASES.values()) - {"loss"}
    # W&B's own counters (`_step`, `_runtime`) go last: `train/global_step` is the Trainer's step when both are there
    # and the fallback aliases after every other
    for i in sorted(range(len(header)), key=lambda i: (header[i].strip().startswith("_"),
                                                       _norm(metric_of[i][1]) in _CSV_FALLBACK_ALIASES)):
        run, col = metric_of[i]
        if run is not None:
            if col.endswith(("__MIN", "__MAX")):
                continue
            if run not in chart_runs:
                chart_runs.append(run)
            if run != chart_runs[0]:
                continue
        if _norm(col).startswith("eval_"):
            # a Trainer log exported as is (`eval_loss`, `eval_validation_loss`, W&B's `eval/validation_loss`): read
            # under the Trainer's key, all of them, and named once the rows are read (_csv_eval_keys)
            eval_cols[i] = _eval_column_key(col)
            continue
        key = lookup.get(_norm(col))
        bare = _CSV_BARE_METRICS.get(_norm(col))
        if val_named and key == f"val/{bare}":
            key = f"{_CSV_BARE_METRIC_BESIDE_VAL}/{bare}"
        if key is None and _LORATUNE_KEY.fullmatch(col):
            key = col  # already a loratune key
        if key is not None and key not in mapping.values():
            mapping[i] = key
        elif key is not None:
            spare[i] = key
    mapping = dict(sorted(mapping.items()))
    found = set(mapping.values())
    # what the eval columns can be, by their names alone: whether the CSV has any loss or metric column at all
    named, _ = _eval_key_map([{c: 0.0 for c in eval_cols.values()}])
    body = iter(body)
    row0 = next(body, None)
    if row0 is None:
        raise UserError(f"'{p}' has a header ({', '.join(header)}) and no rows", "give the CSV with its data rows")
    _check_not_a_runs_table(p, header, again())
    if not (found | set(named.values())) & {"train/loss", "val/loss", "val/macro_f1", "val/accuracy"}:
        raise _no_metric_column(p, header, dialect.delimiter)
    notes: list[str] = [n for n in [_lightning_lr_note(header, "the column")] if n]
    if len(chart_runs) > 1:
        notes.append(f"a chart export of {len(chart_runs)} runs ({', '.join(map(repr, chart_runs))}): read the first,"
                     " export one run per file to read the others")
    if any(k.endswith("/macro_f1") and "macro" not in _norm(metric_of[i][1])
           for i, k in mapping.items()):  # (an eval_f1 column: _eval_key_map says so)
        notes.append("an F1 column without 'macro' was taken as macro-F1")
    columns = [*mapping.items(), *eval_cols.items(), *((i, _spare_key(i)) for i in spare)]
    counted = {*spare.values(), *map(_spare_key, spare)}
    has_step = "step" in found

    def read_rows(rows: Iterator[list[str]], swaps: Sequence[tuple[int, str]], eval_keys: set[str]) -> _CsvRead:
        read = _CsvRead()
        how = (counted, swaps, spare, eval_keys, set(eval_cols.values()))
        try:
            _csv_windows(_in_step_order(_csv_points(p, rows, columns, dialect, has_step, read), read), read, *how)
        except _OutOfOrder:  # a step that goes back: every row read again, merged and sorted
            read = _CsvRead()
            merged, read.repeated = _merge_same_step(list(_csv_points(p, again(), columns, dialect, has_step, read)))
            _csv_windows(merged, read, *how)
        return read

    # the train rows between two evaluations are one window (train/loss their mean, train/loss_std their spread), as
    # the trainer_state reader reads a log (_log_points), not a point each, where one noisy logged loss of a batch of
    # 8 read as the train loss climbing back up (an export of a healthy run read lr-too-large); an eval column names
    # an evaluation as the name alone tells (`named`) until the rows have told which set is the validation set
    read = read_rows(itertools.chain([row0], body), [], set(named))
    if read.stepless:
        notes.append(f"{read.stepless} row(s) without a step number left out")
    swaps = _summary_columns(read.counts, mapping, spare, header, notes)
    fixed = set(mapping.values())  # the keys of the columns an alias (or a loratune name) gave
    split_of, val_prefix, key_notes = _csv_eval_keys(read.eval_rows, eval_cols, mapping)
    if swaps or set(split_of) != set(named):
        read = read_rows(again(), swaps, set(split_of))  # the windows of the columns as the whole file decided them
    notes += key_notes
    notes[:0] = [*first_notes, *_csv_column_notes(header, dict(sorted(mapping.items())))]
    found = set(mapping.values())
    points = _window_points(read.evals, read.tail, {**{k: k for k in fixed if "/" in k}, **split_of}, val_prefix)
    for pt in points:
        if _fin(pt.get("val/n")) is not None:
            pt["val/n"] = int(pt["val/n"])  # a count (an eval_n column is read as a float)
    estimated = 0 if "val/n" in found else sum(1 for pt in points if "val/n" in pt)
    if estimated:
        notes.append(f"val size estimated at {estimated} eval(s) as eval runtime x samples/s")
    repeated = sum(n for k, n in read.repeated.items() if k in {key for i, key in columns if i in mapping})
    if repeated:
        notes.append(f"{repeated} value(s) given again at a step that already had one: the first row's value "
                     "kept (rows of one step are merged, in file order)")
    if "step" not in found:
        notes.append(f"no step column: row numbers (from {read.row_step_base}) used as steps; the run's optimizer "
                     "steps are unknown, its 'steps' count rows")
    if read.bad_cells:
        notes.append(f"{read.bad_cells} non-numeric cells ignored")
    if read.decimal_commas:
        notes.append(f"{read.decimal_commas} numbers written with a decimal comma read as decimals")
    curves = ("train/loss", "val/loss", "val/macro_f1", "val/accuracy")
    if not any(k in pt for pt in points for k in curves):
        raise UserError(f"'{p}': no number in its loss or metric columns "
                        f"({', '.join(repr(header[i]) for i, k in mapping.items() if k in curves)}; "
                        f"{read.bad_cells} cells are not numbers)",
                        "write the values as plain numbers (e.g. 0.25) with a header row of column names")
    if not estimated and not (found & {"val/n"}):
        notes.append(f"no val size column (val_n): {NO_VAL_SIZE_NOISE}")
    _percent_to_share(points, notes)
    # the lr column's peak and schedule, read as the Trainer and TensorBoard readers read theirs: without them a CSV
    # had no config and was left out of every knob comparison
    facts = _lr_schedule_facts(read.lr)
    if facts and "step" not in found:
        facts.pop("warmup_steps", None)  # counted in rows, not optimizer steps
    facts = {k: replace(f, source=f"{f.source.replace('log_history', 'CSV')} ({p.name})") for k, f in facts.items()}
    meta: dict[str, Any] = {}
    # TRL's keys among the columns (mean_token_accuracy, eval_entropy, ...): a language model's run, as the
    # trainer_state reader reads them: task causal-lm, no class count
    trl_kind = _trl_kind(header)
    trl = trl_kind is not None
    if trl_kind is not None:
        meta["task"], meta["trl_kind"] = trl_kind[1], trl_kind[0]
        facts["task"] = Fact(trl_kind[1], f"TRL {trl_kind[0]} keys among the CSV's columns "
                                          f"({', '.join(trl_kind[2][:3])})")
    if "step" in found and not trl:
        # the class count from the first train loss, as the trainer_state and TensorBoard readers estimate it: an
        # export of a run's log_history had no count, so no ln(classes) reference, and another verdict than the
        # run's trainer_state.json. Only over optimizer steps: a row number is no step the estimate can place
        _classes_from_first_loss(read.first_losses, meta, facts)
    if facts:
        meta["facts"] = {k: {"value": f.value, "source": f.source} for k, f in facts.items()}
    if "step" not in found:
        meta["step_unit"] = "row"  # what the run's "steps" count, for whoever shows them (the diagnosis header)
    # a CSV of curves cannot say the run ended, as another writer's TensorBoard log cannot (END_UNKNOWN_KEY): read to
    # its last row, never `finished`, unless it holds the Trainer's end entry (a train_runtime value: an export of the
    # log_history with its last entry)
    if not _csv_end_entry(header, again()):
        meta[END_UNKNOWN_KEY] = True
        notes.append(CSV_NO_END_ENTRY_NOTE)
    return RunHistory(name=p.stem, source="csv", points=tuple(points), meta=meta, config=_config_from_facts({}, facts),
                      notes=tuple(notes), path=str(p), facts=facts)
