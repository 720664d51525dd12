"""Use a finished run: load its adapter (plain peft + transformers underneath), predict, evaluate."""

from __future__ import annotations

import json
from collections import Counter
from collections.abc import Collection, Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterator

import numpy as np
import torch

from loratune import library_warnings
from loratune.config import RunConfig, load_config
from loratune.data import (DATA_SEED, VALIDATED_ON, LabelSpace, empty_text_problems, label_form, load_dataset,
                           refuse_no_shared_label, validation_differs)
from loratune.errors import PARSE_ERRORS, UserError
from loratune.metrics import Decoding, decode, margins, sigmoid, softmax
from loratune.store import CONFIG, LABEL_MAP, RUN, WEIGHT_FILES, RunStore, adapter_step, liveness, read_json

# Texts scored at a time by predict: a chunk's logits [rows, classes] are all it holds (4,096 rows of a 2,000-class
# run: 33 MB), and a chunk is enough rows for length-sorted batches to pad little
PREDICT_CHUNK_ROWS = 4096


MULTI_LABEL_SCORES = 3  # a multi-label prediction's scores list at least this many labels (more: top_k)


@dataclass
class Trained:
    model: object
    tokenizer: object
    space: LabelSpace
    cfg: RunConfig
    device: torch.device
    decoding: Decoding | None = None  # multi-label: thresholds, at least one, cap, none label (label_map.json)
    autocast: bool = False  # bf16 autocast as the run's own evaluations ran on this hardware (eval_precision)

    def logits(self, texts: list[str]) -> np.ndarray:
        from loratune.data import Split
        from loratune.train import encode, predict_logits

        split = Split("predict", tuple(texts), tuple((self.space.labels[0],) for _ in texts), "input")
        enc = encode(self.tokenizer, split, self.space, self.cfg.model.max_length)
        return predict_logits(self.model, enc, self.cfg.train.per_device_eval_batch_size,
                              self.tokenizer.pad_token_id, self.device, self.autocast)

    def predict(self, texts: list[str], top_k: int = 1) -> list[dict]:
        """Per text: the predicted label(s) with probabilities (top_k for single-label)."""
        return [p for chunk in self.predict_chunks(texts, top_k) for p in chunk]

    def predict_chunks(self, texts: list[str], top_k: int = 1) -> Iterator[list[dict]]:
        """`predict`, PREDICT_CHUNK_ROWS texts at a time, in the texts' order: memory bounded by a chunk's logits
        (100k texts of a 2,000-class run held 0.8 GB of logits and 3 more arrays of that size), each chunk's results
        ready as soon as it is scored."""
        for start in range(0, len(texts), PREDICT_CHUNK_ROWS):
            chunk = texts[start:start + PREDICT_CHUNK_ROWS]
            yield self._predict_chunk(chunk, self.logits(chunk), top_k)

    def _predict_chunk(self, texts: list[str], logits: np.ndarray, top_k: int) -> list[dict]:
        out = []
        if self.space.multi_label:
            probs = sigmoid(logits)
            dec = self.decoding or Decoding.from_dict(None, self.space.labels)
            # scores: every predicted label, then the others by the rank decoding gives them (margin over their own
            # threshold, not raw probability: a label of a high threshold was listed ahead of a predicted one), to
            # at least max(top_k, MULTI_LABEL_SCORES) labels
            for text, p, m, row in zip(texts, probs, margins(probs, dec), decode(probs, dec)):
                order = np.argsort(-m, kind="stable")
                shown = [i for i in order if row[i]] + [i for i in order if not row[i]]
                shown = shown[:max(top_k, MULTI_LABEL_SCORES, int(row.sum()))]
                out.append({"text": text, "labels": [self.space.labels[i] for i in np.flatnonzero(row)],
                            "scores": {self.space.labels[i]: float(p[i]) for i in shown}})
            return out
        probs = softmax(logits)
        for text, p in zip(texts, probs):
            top = np.argsort(-p)[:top_k]
            out.append({"text": text, "label": self.space.labels[top[0]], "score": float(p[top[0]]),
                        "top": [{"label": self.space.labels[i], "score": float(p[i])} for i in top]})
        return out


STOPPED_UNSAVED = ("died", "interrupted", "running")  # statuses of a process that stopped before it finished


def run_config(store: RunStore, label_map: dict | None = None) -> RunConfig:
    """The settings the run trained with (its config.yaml). An empty or damaged file would load as all defaults: another
    base model, under which the adapter fails on its shapes. So it is refused, naming the file, as is one whose base
    model is not the one the saved model's label_map.json records."""
    import yaml

    path = store.path / CONFIG
    try:
        loaded = yaml.safe_load(path.read_text(encoding="utf-8"))
    except (OSError, yaml.YAMLError, *PARSE_ERRORS, UnicodeDecodeError):
        loaded = None
    if not isinstance(loaded, dict) or not loaded:
        raise UserError(f"run '{store.path}': its {CONFIG} is empty or damaged (not the settings the run trained with)",
                        "train the run again; config.yaml is written when a run starts")
    cfg = load_config(path, recorded=True)
    recorded = (label_map or {}).get("base_model") if isinstance(label_map, dict) else None
    if recorded and recorded != cfg.model.name_or_path:
        raise UserError(f"run '{store.path}': its {CONFIG} names the base model '{cfg.model.name_or_path}' but the "
                        f"saved model was trained on '{recorded}' ({LABEL_MAP})",
                        f"restore model.name_or_path: {recorded} in {path}, or train the run again")
    return cfg


def refuse_unrecorded_model(store: RunStore, run: dict) -> None:
    """adapter/ is used only as the model run.json vouches for (store.adapter_step): a record that says no model is
    saved (a run stopped while saving its first one, a save that failed), or a folder whose SAVED_STEP names another
    step than the recorded one or the evaluated newer best being written, is refused rather than scored as if it were
    the run's model. A folder without SAVED_STEP (saved before loratune wrote it) is taken as the record says."""
    _, why = adapter_step(run, store.path)
    if why:
        raise UserError(f"run '{store.path}' has no saved model the run recorded: {why}", "train the run again")


def load_trained(run_dir: str | Path) -> Trained:
    """The run's best adapter on its base model (or the fully fine-tuned model), in eval mode."""
    store = RunStore(run_dir).require()
    adapter_dir = store.adapter_dir
    run = store.read_run()
    if run.get("task") == "causal-lm":
        raise UserError(f"run '{run_dir}' is a causal-lm (SFT) run: predict reads classifiers (evaluate "
                        "scores both)",
                        f"load {adapter_dir} with transformers + peft and call model.generate "
                        f"({adapter_dir / 'README.md'} shows how)" +
                        (f"; its outputs per evaluation are in {store.path / 'generations.jsonl'}"
                         if (store.path / "generations.jsonl").is_file() else
                         "; `loratune evaluate RUN --split test` scores the labels it writes"
                         if run.get("label_format") == "generate" or (run.get("labels") or []) else ""))
    status = run.get("status")
    if not (adapter_dir / LABEL_MAP).is_file():
        why = (f"the run stopped (status {status}) before it saved its model" if status in STOPPED_UNSAVED
               else "the run ended before its first evaluation")
        raise UserError(f"run '{run_dir}' has no saved model (no {adapter_dir / LABEL_MAP})", f"{why}; train it again")
    if not any((adapter_dir / f).is_file() for f in WEIGHT_FILES):
        raise UserError(f"run '{run_dir}' has no saved model weights in {adapter_dir} "
                        f"(none of {', '.join(WEIGHT_FILES)})",
                        "the weights file was removed or never written; train the run again")
    refuse_unrecorded_model(store, run)
    label_map = read_json(adapter_dir / LABEL_MAP)
    refuse_label_map(label_map, adapter_dir / LABEL_MAP)
    cfg = run_config(store, label_map)
    space = LabelSpace(tuple(label_form(str(x)) for x in label_map["labels"]), label_map["multi_label"])
    from loratune.models import load_saved

    model, tokenizer = load_saved(adapter_dir, cfg.model, space.labels, space.multi_label)
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    model.to(device).eval()
    from loratune import pooled_block

    pooled_block.attach(model, cfg.train.pooled_last_block)  # the logits of the full forward, with less work
    try:
        decoding = Decoding.from_dict(label_map.get("decoding"), space.labels) if space.multi_label else None
    except ValueError as exc:  # a hand-edited threshold: named with the value allowed, never a traceback
        raise UserError(f"'{adapter_dir / LABEL_MAP}' has a decoding predict and evaluate cannot use: {exc}",
                        f"set each named value as allowed in it (run.json's `decoding` holds the ones the run "
                        "tuned), or train the run again") from None
    from loratune.heads import head_modules

    return Trained(model, tokenizer, space, cfg, device, decoding,
                   eval_precision(cfg, model, device, head_modules(model)))


def refuse_label_map(label_map, path: Path) -> None:
    """A label_map.json whose labels or multi_label are not what training writes (a list of label names, true or
    false), refused naming the key and the value: read on, it failed deep in loading with a traceback."""
    if not isinstance(label_map, dict):
        bad = [f"{label_map!r:.40} (an object with labels and multi_label)"]
    else:
        labels, multi = label_map.get("labels"), label_map.get("multi_label")
        names = isinstance(labels, list) and len(labels) >= 2 and all(
            isinstance(x, (str, int, float)) and not isinstance(x, bool) for x in labels)
        bad = ([] if names else [f"labels: {labels!r:.60} (a list of at least two label names)"]) + (
            [] if isinstance(multi, bool) else [f"multi_label: {multi!r:.40} (true or false)"])
    if bad:
        raise UserError(f"'{path}' is not a label map training writes: {'; '.join(bad)}",
                        "restore the file (training writes the run's labels there, in the head's order), or train "
                        "the run again")


def refuse_while_training(store: RunStore) -> dict:
    """run.json as written on disk, refused while a live process still trains into it (the liveness test readers
    use for `died`, store.liveness): that process rewrites run.json from memory, losing scores written beside it,
    and adapter/ holds a best-so-far model it may still replace. A dead `running` record is returned as written:
    `died` and its reason are a reader's view, never stored (docs/run-record.md). A run.json that is no JSON object,
    or whose `eval` is no mapping of split -> scores (recorded_evals), is refused before anything is scored: a list
    crashed evaluate with an AttributeError, an `eval` of "none" after scoring, the scores lost."""
    run = store.read_record()
    recorded_evals(run, store.path / RUN)
    if run.get("status") == "running":
        state, why = liveness(store.path)
        if state == "alive":
            raise UserError(f"run '{store.path}' is still training (run.lock held by a live process: {why})",
                            "wait for it to end (or stop it), then evaluate it; `loratune predict` can read its "
                            "best model so far")
    return run


def recorded_evals(run: dict, path: Path) -> dict:
    """run.json's `eval` (split -> scores evaluate wrote): absent, or a value holding nothing (null, [], ""), reads as
    no scores yet (replaced by evaluate's, nothing lost); any other value that is no mapping is refused (exit 2),
    since writing the scores beside it would overwrite what it holds."""
    evals = run.get("eval")
    if isinstance(evals, dict):
        return evals
    if evals is None or (isinstance(evals, (list, str)) and not evals):
        return {}
    raise UserError(f"'{path}' has an `eval` of {json.dumps(evals)[:40]}: not the scores by split (an object, e.g. "
                    "{\"test\": {...}}) that evaluate writes there",
                    "restore run.json from a copy, or remove its `eval` key, then evaluate again")


def _record_scores(store: RunStore, split: str, scores: dict) -> None:
    """The scores added to run.json as written on disk (re-read now, and refused if a run started training into it
    meanwhile); a disk that refuses the write is said, with the scores (ScoresNotRecorded)."""
    from loratune.errors import ScoresNotRecorded

    run = refuse_while_training(store)
    run["eval"] = {**recorded_evals(run, store.path / RUN), split: scores}
    if split == "test":
        run["test"] = scores
    try:
        store.write_run(run)
    except OSError as exc:
        raise ScoresNotRecorded(scores, store.path / "run.json", exc) from None


def eval_precision(cfg: RunConfig, model, device: torch.device, head_names) -> bool:
    """Whether to score under bf16 autocast: as training resolves the run's `precision` on this hardware
    (precision.detect), with the head in float32 as training keeps it, so a saved model scores here what the run's
    own evaluation points scored (on a CPU with avx512_bf16, 'auto' trains and evaluates under bf16)."""
    from loratune import precision as precision_mod

    autocast = precision_mod.detect(cfg.train.precision, device.type).autocast
    if autocast:
        precision_mod.head_in_fp32(model, head_names, device.type)
    return autocast


SPLIT_NAMES = {"test": "test", "validation": "validation", "val": "validation", "train": "train"}


def evaluate_run(run_dir: str | Path, split: str = "test") -> dict:
    """Score the run's model on one split of its data; stored in run.json under `eval/<split>`."""
    from loratune.train import encode, score_split

    names = SPLIT_NAMES
    if split not in names:
        raise UserError(f"unknown split '{split}'", f"use {', '.join(names)}")  # (val: the validation split)
    record = refuse_while_training(RunStore(run_dir).require())
    if record.get("task") == "causal-lm":
        return evaluate_lm_run(run_dir, split)
    trained = load_trained(run_dir)
    dataset = load_dataset(trained.cfg.data, seed=record.get(DATA_SEED, trained.cfg.train.seed))
    data_split = dataset.splits().get(names[split])
    if data_split is None:
        raise UserError(f"the run's data has no {split} split", "set data.test_file in the run's config")
    empty = empty_text_problems(dataset, only=names[split])  # what training refuses is not scored either
    if empty:
        raise UserError(f"the {split} split cannot be scored:\n" + "\n".join(f"  - {p}" for p in empty),
                        "fix the rows named above")
    refuse_no_shared_label(data_split, trained.space.labels)
    # labels the run never trained on: scored as errors, and said (run.json, plain and --json output)
    unseen = unseen_labels((lab for labs in data_split.labels for lab in labs), trained.space.index)
    enc = encode(trained.tokenizer, data_split, trained.space, trained.cfg.model.max_length)
    from loratune.train import predict_logits

    logits = predict_logits(trained.model, enc, trained.cfg.train.per_device_eval_batch_size,
                            trained.tokenizer.pad_token_id, trained.device, trained.autocast)
    prefix = "test" if split == "test" else ("val" if names[split] == "validation" else "train")
    store = RunStore(run_dir)
    from loratune.losses import LossSpec

    spec = LossSpec.from_dict(store.read_run().get("loss"), trained.space.multi_label)  # the loss the run trained with
    scores, _ = score_split(prefix, logits, enc, trained.space, spec, trained.decoding)
    scores.update(unseen_scores(prefix, unseen))
    if names[split] == "validation":  # re-carved or re-read: said where it is not the split the run recorded
        run = store.read_run()
        scores.update(differs_scores(prefix, run, data_split) or in_sample_scores(prefix, run, scores))
    _record_scores(store, split, scores)
    return scores


SPLIT_DIFFERS = "split_differs"  # the scores' key of the note that a validation split is not the run's own


def differs_scores(prefix: str, run: dict, split) -> dict:
    """`<prefix>/split_differs`, the note, where `split` is not the validation split the run recorded it was
    validated on (data.validated_on): recorded beside the scores, so run.json does not pass them off as the run's."""
    how = validation_differs(run.get(VALIDATED_ON), split)
    return {f"{prefix}/{SPLIT_DIFFERS}": f"scored on a different validation split than the run was validated on {how}"
            ": these are not the scores of the split it picked its checkpoint on, and a split carved from train may "
            "now hold rows it trained on"} if how else {}


# the scores' key of the note that a multi-label run's validation split was scored with the thresholds tuned on it
IN_SAMPLE = "thresholds_in_sample"


# the metric the saved thresholds are tuned for (metrics.tune_thresholds: each label's F1), so the one the tuning
# makes in-sample by construction; the objective (subset accuracy by default) is not what it maximises
IN_SAMPLE_METRIC = "macro_f1"


def in_sample_scores(prefix: str, run: dict, scores: Mapping[str, Any]) -> dict:
    """`<prefix>/thresholds_in_sample`, the note, where the run's saved per-label thresholds were tuned on the
    validation split now scored (run.json `decoding.tuned_on`; a split that differs has SPLIT_DIFFERS instead): the
    thresholds maximise each label's F1 on it (metrics.tune_thresholds), so its per-label F1 is in-sample. The note
    quotes `scores` beside the run's own val numbers (`best`, scored with thresholds cross-fitted on the other half of
    validation) for IN_SAMPLE_METRIC and the objective, each "above" / "below" / "equal to" as measured: the tuning
    need not lift a metric it does not maximise (subset accuracy can come out lower). Recorded beside the scores,
    which run.json keeps under `eval`, apart from `best`."""
    decoding = run.get("decoding")
    if not isinstance(decoding, dict) or decoding.get("tuned_on") != "validation":
        return {}
    best = run.get("best") or {}
    metrics = [f"{prefix}/{IN_SAMPLE_METRIC}"]
    objective = run.get("objective")
    if isinstance(objective, str) and objective.startswith(f"{prefix}/") and objective not in metrics:
        metrics.append(objective)
    quoted = []
    for m in metrics:
        here, own = scores.get(m), best.get(m)
        if not (isinstance(here, (int, float)) and isinstance(own, (int, float))):
            continue
        rel = "above" if here > own else "below" if here < own else "equal to"
        quoted.append(f"{m} {here:.4f} here, {rel} {own:.4f}")
    versus = ("; against the run's own val numbers at that step, thresholds cross-fitted on the other half (run.json "
              "best): " + "; ".join(quoted)) if quoted else ""
    return {f"{prefix}/{IN_SAMPLE}": f"the per-label thresholds ({LABEL_MAP} decoding) were tuned on this validation "
            f"split at step {decoding.get('step')}, each to maximise its label's F1: the per-label F1 scores here are "
            f"in-sample{versus}"}


UNSEEN_LABELS = "unseen_labels"  # the scores' key of a split's labels the run never trained on -> rows


def unseen_labels(row_labels: Iterable[str], trained: Collection[str]) -> Counter:
    """label -> rows of the labels a split has that the run never trained on (their rows are scored as errors)."""
    return Counter(lab for lab in row_labels if lab not in trained)


def unseen_scores(prefix: str, unseen: Counter) -> dict:
    """`<prefix>/unseen_labels` (most rows first) when there are any: what run.json and `evaluate` say."""
    return {f"{prefix}/{UNSEEN_LABELS}": dict(unseen.most_common())} if unseen else {}


def evaluate_lm_run(run_dir: str | Path, split: str = "test") -> dict:
    """A causal-lm run's saved model on one split: `<split>/n` (rows scored), `<split>/loss` per completion token,
    perplexity and token accuracy as its evaluation points have them (sft.evaluate_lm); generating labels, also the
    per-class scores of the labels it writes and `<split>/unknown_rate`; with a prompt set (data.prompt_set), its scores
    as the evaluation points record them (`val/prompt_<group>_<metric>`, generation.score_prompt_set: the same prompts,
    train.max_new_tokens and greedy decoding, whatever the split). Stored in run.json under `eval/<split>`."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from loratune.metrics import parse_labels, prediction_scores
    from loratune.models import load_causal_lm, quiet_transformers, saved_model_faults
    from loratune.generation import score_prompt_set
    from loratune.sft import (LM_HEAD_NAMES, encode_prompt_set, evaluate_lm, generate, generate_capped,
                              label_token_cap, read_prompt_set)
    from loratune.sft_data import (Renderer, answer_prefix, encode_prompts, encode_sft, learns_earlier,
                                   load_sft_dataset, stop_token_ids)

    store = RunStore(run_dir).require()
    refuse_while_training(store)  # (evaluate_run checked too; a direct caller gets the same answer)
    adapter_dir = store.adapter_dir
    if not (adapter_dir / "config.json").is_file() and not (adapter_dir / "adapter_config.json").is_file():
        status = store.read_run().get("status")
        why = (f"the run stopped (status {status}) before it saved its model" if status in STOPPED_UNSAVED
               else "the run ended before its first trained evaluation")
        raise UserError(f"run '{run_dir}' has no saved model (nothing in {adapter_dir})", f"{why}; train it again")
    refuse_unrecorded_model(store, store.read_run())
    cfg = run_config(store)
    dataset = load_sft_dataset(cfg.data, seed=store.read_run().get(DATA_SEED, cfg.train.seed))
    data_split = dataset.splits().get(SPLIT_NAMES[split])
    if data_split is None:
        raise UserError(f"the run's data has no {split} split", "set data.test_file in the run's config")
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    with quiet_transformers(), saved_model_faults(adapter_dir, cfg.model):
        tokenizer = AutoTokenizer.from_pretrained(adapter_dir)
        if (adapter_dir / "adapter_config.json").is_file():
            from peft import PeftModel

            with library_warnings.silenced():  # transformers' is_gradient_checkpointing notice on every peft load
                model = PeftModel.from_pretrained(load_causal_lm(cfg.model, tokenizer.pad_token_id), adapter_dir)
        else:  # method full: the whole model was saved
            model = AutoModelForCausalLM.from_pretrained(adapter_dir)
    model.to(device).eval()
    renderer = Renderer.for_tokenizer(tokenizer, cfg.data.chat_template)
    prefix = "test" if split == "test" else ("val" if SPLIT_NAMES[split] == "validation" else "train")
    # scored on the tokens the run learnt: a run recorded before every assistant turn was learnt, on its last turns
    enc = encode_sft(tokenizer, renderer, data_split.examples, cfg.model.max_length, learns_earlier(store.read_run()))
    autocast = eval_precision(cfg, model, device, LM_HEAD_NAMES)
    # `<split>/n`, rows scored, as a classifier's evaluation has it, and what they are worth to the token accuracy
    # (`<split>/n_effective`), as the training points record them (evaluate_lm)
    scores = evaluate_lm(prefix, model, enc, tokenizer.pad_token_id, device, autocast)
    if dataset.label_space is not None:  # generative classification: the labels it writes, per class
        labels = dataset.label_space.labels
        y = np.array([{lab: i for i, lab in enumerate(labels)}.get(e.completion, -1) for e in data_split.examples],
                     dtype=np.int64)
        # the same label budget as training's evaluations (not train.max_new_tokens, the prompt set's)
        outputs = generate(model, tokenizer, encode_prompts(tokenizer, renderer, data_split.examples,
                                                             cfg.model.max_length),
                           label_token_cap(tokenizer, labels), device, autocast, stop_token_ids(tokenizer, renderer),
                           answer_prefix(tokenizer, renderer))
        pred = parse_labels(outputs, labels)
        label_scores, _ = prediction_scores(prefix, pred, y, labels)
        scores.update(label_scores)
        scores[f"{prefix}/unknown_rate"] = float(np.mean(pred < 0))
        # labels the run never trained on (y -1): scored as errors, and said, as a classifier's evaluation says them
        scores.update(unseen_scores(prefix, unseen_labels((e.completion for e in data_split.examples), labels)))
    prompt_items, _ = read_prompt_set(cfg, dataset)  # bad rows: the UserError training gives
    if prompt_items:  # protocol 9's prompt set, generated and scored as the run's evaluation points did
        outputs, capped = generate_capped(
            model, tokenizer, encode_prompt_set(tokenizer, renderer, dataset.prompt_set, prompt_items,
                                                cfg.model.max_length),
            cfg.train.max_new_tokens, device, autocast, stop_token_ids(tokenizer, renderer),
            answer_prefix(tokenizer, renderer))
        scores.update(score_prompt_set(prompt_items, outputs, capped))
    if SPLIT_NAMES[split] == "validation":
        scores.update(differs_scores(prefix, store.read_run(), data_split))
    _record_scores(store, split, scores)
    return scores
