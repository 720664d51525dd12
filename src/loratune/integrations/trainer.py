"""`LoratuneCallback`: the diagnosis live inside a `transformers.Trainer` (or a TRL trainer).

At every evaluation it rebuilds the run's curves from `state.log_history` (the same reading as
`loratune diagnose OUTPUT_DIR`), writes them as a loratune run record in `<output_dir>/loratune/`
(`history.jsonl`, `run.json`; `loratune diagnose <output_dir>/loratune` and `loratune report` read it),
runs the rule table, and prints each new finding once. It is silent on a healthy run: only findings
that fire with confidence (not tentative, at least `min_confidence`) and are alarms mid-run are
printed (`healthy` and `undertrained` describe every run that is still learning, so they are not).

It can stop training (`control.should_training_stop`), saying why:
- `diverged`: a non-finite train loss at any logging step, or the `diverged` rule at an evaluation;
- `collapse`: a one-class collapse (predictions on one class, loss pinned near ln(classes)): the
  `collapsed` rule, or the `lr-too-large` rule's collapse routes at an lr far above the usual range, held at
  every evaluation over `collapse_hold` of the planned steps (and at two evaluations at least), its val loss
  setting no new low: a model still at its initial loss early in its plan has not started learning yet, which
  reads the same at one evaluation (a tiny BERT at lr 5e-3, evaluated every step of 100, sits at ln(4) with one
  class predicted for its first 10 steps and ends at 0.90 accuracy), and one whose val loss keeps creeping to new
  lows is moving (1.3867 -> 1.383 over 40 steps, then 1.0 accuracy); it is neither printed nor acted on before;
- overfitting, opt-in: `overfit_patience=N` stops after `overfit-capacity` has fired at N + 1
  evaluations in a row.
"""

from __future__ import annotations

import json
import math
import os
import time
from pathlib import Path
from typing import Any, Callable, Iterable

from transformers import TrainerCallback

from loratune.diagnose import Diagnosis, diagnose
from loratune.history_io import CALLBACK_RECORD_DIR, history_from_trainer_state
from loratune.features import LORA_PEFT_TYPES
from loratune.rules import THRESHOLDS

STOP_REASONS = ("diverged", "collapse")  # what the callback may stop on by default
QUIET_MIDRUN = ("healthy", "undertrained")  # findings that describe any run still learning: never printed
RECORD_DIR = CALLBACK_RECORD_DIR  # the record's folder inside the Trainer's output_dir (where the readers look)
COLLAPSE_HOLD = 0.2  # share of the planned steps a collapse must hold before the callback prints it or stops


class LoratuneCallback(TrainerCallback):
    """Diagnose the run at every evaluation; print new findings; stop on divergence / collapse / overfit.

    Args:
        stop_on: which of `STOP_REASONS` stop training (default both; `()` never stops).
        overfit_patience: stop after `overfit-capacity` fired at this many evaluations in a row plus one
            (None, the default: never stop for overfitting).
        min_confidence: findings below this confidence are not printed and never stop training.
        thresholds: rule threshold overrides by name (see `loratune rules`).
        record: write `<output_dir>/loratune/` (history.jsonl, run.json) at every evaluation.
        printer: where messages go (default `print`).
        collapse_hold: the share of the planned steps over which a collapse must hold, at every evaluation,
            before it is printed or stops training (default `COLLAPSE_HOLD`).
    """

    def __init__(self, *, stop_on: Iterable[str] = STOP_REASONS, overfit_patience: int | None = None,
                 min_confidence: float = 0.6, thresholds: dict[str, float] | None = None, record: bool = True,
                 printer: Callable[[str], Any] = print, collapse_hold: float = COLLAPSE_HOLD) -> None:
        stop_on = tuple(stop_on)
        unknown = [s for s in stop_on if s not in STOP_REASONS]
        if unknown:
            raise ValueError(f"stop_on: unknown {unknown}; allowed: {', '.join(STOP_REASONS)}")
        if overfit_patience is not None and overfit_patience < 0:
            raise ValueError("overfit_patience: an integer >= 0, or None")
        self.stop_on = stop_on
        self.overfit_patience = overfit_patience
        self.min_confidence = float(min_confidence)
        self.thresholds = dict(thresholds or {})
        unknown_t = [k for k in self.thresholds if k not in THRESHOLDS]
        if unknown_t:
            raise ValueError(f"thresholds: unknown {unknown_t} (names from `loratune rules`)")
        if not 0.0 <= collapse_hold <= 1.0:
            raise ValueError("collapse_hold: a share of the planned steps, between 0 and 1")
        self.collapse_hold = float(collapse_hold)
        self.record = record
        self.printer = printer
        self.training = False  # on_train_begin ran: an evaluate() before (or without) training writes nothing
        self._new_run()

    def _new_run(self) -> None:
        """The state of one training run: a callback passed to a second `trainer.train()` starts it afresh (the
        first run's stop reason made the second's record read `diverged`, its loss scale stayed)."""
        self.collapse_since: int | None = None  # the step of the first evaluation of the current collapse streak
        self.collapse_streak = 0
        self.finished = False  # on_train_end ran: a later evaluate() keeps the record's final status
        self.points: tuple = ()  # the run's points at the last diagnosis
        self.loss_scale = 1.0  # each logged train loss times this reads as a mean (_sums_micro_batch_losses)
        self.reported: set[str] = set()
        self.overfit_streak = 0
        self.stopped_by: str | None = None
        self.last: Diagnosis | None = None
        self._started = time.time()

    # -- Trainer events -------------------------------------------------------------------------

    def on_log(self, args, state, control, logs=None, **kwargs):
        loss = (logs or {}).get("loss")
        if isinstance(loss, (int, float)) and not math.isfinite(float(loss)) and "diverged" in self.stop_on:
            self._stop(control, "diverged", f"the train loss is {loss} at step {state.global_step}: the run "
                                            "diverged (next move: learning_rate /10, check the data)")
        return control

    def on_train_begin(self, args, state, control, **kwargs):
        self._new_run()  # (a second trainer.train() in the same process trains again)
        self.training = True
        accum = int(getattr(args, "gradient_accumulation_steps", 1) or 1)
        if accum > 1 and _sums_micro_batch_losses(kwargs.get("model")):
            self.loss_scale = 1.0 / accum
        return control

    def on_evaluate(self, args, state, control, metrics=None, **kwargs):
        if not self.training or self.finished:
            # `trainer.evaluate()` with no training, or after it (of the best checkpoint reloaded, or a test set):
            # not a point of the run; the record keeps what training measured, and its final status
            return control
        d = self._diagnose(args, state, kwargs.get("model"))
        self.last = d
        confident = {f.rule_id for f in d.active if not f.tentative and f.confidence >= self.min_confidence}
        collapse = "collapsed" in confident or ("lr-too-large" in confident and _collapsed(d))
        if collapse and _new_val_low(self.points):  # a loss still setting new lows is moving, not pinned
            self.collapse_streak, self.collapse_since = 0, None
            collapse = False
        if collapse:
            self.collapse_streak += 1
            self.collapse_since = state.global_step if self.collapse_since is None else self.collapse_since
        else:
            self.collapse_streak, self.collapse_since = 0, None
        collapse_held = collapse and self.collapse_streak >= 2 and (
            state.global_step - self.collapse_since >= self.collapse_hold * (state.max_steps or 0))
        for f in d.active:
            if (f.rule_id in QUIET_MIDRUN or f.tentative or f.confidence < self.min_confidence
                    or f.rule_id in self.reported):
                continue
            if collapse and not collapse_held and (f.rule_id == "collapsed" or f.rule_id == "lr-too-large"):
                continue  # not yet: a collapse early in the plan reads like a model that has not started learning
            self.reported.add(f.rule_id)
            reading = "; ".join(f.route) or f.verdict  # what this run showed, else the rule's general verdict
            self.printer(f"[loratune] step {state.global_step}: {f.rule_id} - {reading}; next move: "
                         f"{', '.join(f.moves)} (confidence {f.confidence:.2f})")
        if "diverged" in confident and "diverged" in self.stop_on:
            self._stop(control, "diverged", "the diagnosis says diverged (exploding or non-finite loss)")
        elif "collapse" in self.stop_on and collapse_held:
            self._stop(control, "collapse", f"the model collapsed to one class (loss pinned near ln(classes)) at "
                                            f"every evaluation since step {self.collapse_since}")
        self.overfit_streak = self.overfit_streak + 1 if "overfit-capacity" in confident else 0
        if self.overfit_patience is not None and self.overfit_streak > self.overfit_patience:
            self._stop(control, "overfit", f"overfit-capacity at {self.overfit_streak} evaluations in a row "
                                           f"(patience {self.overfit_patience})")
        return control

    def on_train_end(self, args, state, control, **kwargs):
        self.finished = True
        if self.record and state.is_world_process_zero:
            d = self._diagnose(args, state, kwargs.get("model"), final=True)
            self.last = d
        return control

    # -- helpers --------------------------------------------------------------------------------

    def _stop(self, control, reason: str, why: str) -> None:
        if self.stopped_by is None:
            self.stopped_by = reason
            self.printer(f"[loratune] stopping the training: {why}")
        control.should_training_stop = True

    def _diagnose(self, args, state, model, final: bool = False) -> Diagnosis:
        out = Path(args.output_dir)
        fields = {k: getattr(state, k, None) for k in ("max_steps", "num_train_epochs", "train_batch_size",
                                                        "logging_steps", "eval_steps", "save_steps", "global_step")}
        fields["log_history"] = [_scaled(e, self.loss_scale) for e in state.log_history]
        run = history_from_trainer_state(fields, out, name=out.name, path=str(out), adapter=_peft_config(model),
                                         source_file="the live TrainerState")
        self.points = run.points
        meta = dict(run.meta)
        labels = _labels(model)
        if labels and "labels" not in meta and meta.get("task") != "causal-lm":
            meta["labels"] = labels
        d = diagnose(run.points, meta=meta, thresholds=self.thresholds, name=out.name)
        if self.record and state.is_world_process_zero:
            status = "running"
            if final:  # the loratune record's statuses: a run stopped for divergence is `diverged`
                cut = self.stopped_by and (state.global_step or 0) < (state.max_steps or 0)  # a stop at the last step
                status = "diverged" if self.stopped_by == "diverged" else "stopped" if cut else "completed"
            _write_record(out / RECORD_DIR, run.points, {
                **{k: v for k, v in meta.items() if k != "partial"}, "status": status, "source": "hf-trainer callback",
                "stopped_by": self.stopped_by, "verdict": d.verdict, "config": run.config,
                **({"method": "lora"} if str((_peft_config(model) or {}).get("peft_type")).upper() in LORA_PEFT_TYPES
                   else {}),
                "train_loss_scale": None if self.loss_scale == 1.0 else {
                    "factor": self.loss_scale,
                    "why": "the Trainer logged each train loss as the sum of its gradient-accumulation micro-batches' "
                           "means (a classifier whose forward takes **kwargs: transformers leaves the scaling to the "
                           "model, which does not scale): read as their mean"},
                "wall_s": round(time.time() - self._started, 3), "pid": os.getpid()})
        return d


# heads whose loss is a plain mean over the batch, whatever `num_items_in_batch` says (a causal LM's loss function
# divides by it: its logged loss is a mean already)
MEAN_LOSS_HEADS = ("ForSequenceClassification", "ForTokenClassification", "ForMultipleChoice", "ForQuestionAnswering")


def _sums_micro_batch_losses(model) -> bool:
    """Whether the Trainer logs this model's train loss summed over gradient-accumulation micro-batches: it divides a
    micro-batch's loss by the accumulation steps only when the model does not take loss kwargs
    (`accepts_loss_kwargs`, else a **kwargs forward: transformers' own test), and a classification head that takes
    **kwargs never uses them (a tiny BERT with accumulation 3 logged 3 x ln 4 and was stopped as diverged)."""
    if model is None:
        return False
    from loratune.adapt import transformers_model

    base = transformers_model(model)
    accepts = getattr(base, "accepts_loss_kwargs", None)
    if accepts is None:
        import inspect

        try:
            params = inspect.signature(base.forward).parameters.values()
        except (TypeError, ValueError):
            return False
        accepts = any(p.kind == inspect.Parameter.VAR_KEYWORD for p in params)
    return bool(accepts) and type(base).__name__.endswith(MEAN_LOSS_HEADS)


def _scaled(entry: dict, scale: float) -> dict:
    """A log entry with its train loss(es) times `scale` (eval entries untouched)."""
    if scale == 1.0 or any(k.startswith("eval_") for k in entry):
        return entry
    return {k: v * scale if k in ("loss", "train_loss") and isinstance(v, (int, float)) else v
            for k, v in entry.items()}


def _new_val_low(points) -> bool:
    """Whether the last point's val loss is below every earlier one's."""
    vals = [p["val/loss"] for p in points if isinstance(p.get("val/loss"), (int, float))
            and math.isfinite(p["val/loss"])]
    return len(vals) >= 2 and vals[-1] < min(vals[:-1])


def _collapsed(d: Diagnosis) -> bool:
    f = d.finding("lr-too-large")
    if f is None:
        return False
    # the collapse route made it fire (not an oscillation route beside a loss that happens to sit near chance)
    held = {e.feature for e in f.evidence if e.decisive and e.passed}
    return "val_pred_top_share" in held or "train_loss_vs_chance" in held


def _peft_config(model) -> dict | None:
    cfg = getattr(model, "peft_config", None)
    if not isinstance(cfg, dict) or not cfg:
        return None
    c = next(iter(cfg.values()))
    out = {k: getattr(c, k, None) for k in ("r", "lora_alpha", "lora_dropout", "target_modules", "use_rslora",
                                            "use_dora", "layers_to_transform", "bias", "init_r", "target_r")}
    peft_type = getattr(c, "peft_type", None)  # an enum (PeftType.LORA): its value, as adapter_config.json writes it
    out["peft_type"] = getattr(peft_type, "value", peft_type)
    return {k: v for k, v in out.items() if v is not None or k in ("r", "lora_alpha")}


def _labels(model) -> list[str] | None:
    cfg = getattr(model, "config", None)
    id2label = getattr(cfg, "id2label", None) or {}
    if len(id2label) >= 2 and not any(str(a).endswith("ForCausalLM") for a in (getattr(cfg, "architectures", None)
                                                                                or [])):
        return [str(id2label[k]) for k in sorted(id2label, key=int)]
    return None


def _write_record(folder: Path, points, meta: dict) -> None:
    """history.jsonl and run.json, each written whole to a temp file and renamed (never a torn file)."""
    folder.mkdir(parents=True, exist_ok=True)
    for name, text in (("history.jsonl", "".join(json.dumps(p, default=_json) + "\n" for p in points)),
                       ("run.json", json.dumps(meta, indent=2, default=_json) + "\n")):
        tmp = folder / f".{name}.tmp"
        tmp.write_text(text, encoding="utf-8")
        os.replace(tmp, folder / name)


def _json(v):
    if isinstance(v, (set, tuple)):
        return list(v)
    return str(v)
