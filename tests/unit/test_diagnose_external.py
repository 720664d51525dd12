"""Loss-only diagnosis (what Trainer runs have), noise bands from the curve's own jitter, facts read from
side files, and comparisons across sources. Synthetic trainer_state.json files written here; no torch."""

from __future__ import annotations

import json
import math
import random
from pathlib import Path

import pytest

from loratune.diagnose import compare, diagnose
from loratune.features import accuracy_lattice_n, binomial_se, curve_jitter
from loratune.history_io import load_run

L10 = math.log(10)


def trainer_state(folder: Path, *, train, val, metric=None, steps: int = 200, evals: int = 10, lr: float = 2e-4,
                  n_val: int | None = 400, classes: int | None = 10, adapter: dict | None = None,
                  noise: float = 0.0, seed: int = 0, finished: bool = True, log_every: int = 5,
                  window_mean: bool = False) -> Path:
    """A trainer_state.json as the Trainer writes it: a train log every `log_every` steps (the loss at its step, or
    with `window_mean` the Trainer's mean over the window's steps, each read before its update; linear lr decay),
    an eval entry every steps/evals steps (no eval at step 0), the end-of-training summary; not `finished`: a run
    that died halfway (no summary, max_steps twice the steps done)."""
    rng = random.Random(seed)
    folder.mkdir(parents=True, exist_ok=True)
    log = []
    every = steps // evals
    for s in range(log_every, steps + 1, log_every):
        f = s / steps
        loss = (sum(train((k - 1) / steps) for k in range(s - log_every + 1, s + 1)) / log_every if window_mean
                else train(f))
        log.append({"step": s, "epoch": f * 4, "loss": loss * (1 + noise * rng.uniform(-1, 1)),
                    "grad_norm": 1.0, "learning_rate": lr * (1 - (s - 1) / steps)})
        if s % every == 0:
            e = {"step": s, "epoch": f * 4, "eval_loss": val(f) * (1 + noise * rng.uniform(-1, 1))}
            if metric is not None:
                e["eval_accuracy"] = min(1.0, metric(f) + noise * rng.uniform(-1, 1))
            if n_val:
                e.update(eval_runtime=n_val / 100, eval_samples_per_second=100.0)
            log.append(e)
    if finished:
        log.append({"step": steps, "epoch": 4.0, "train_runtime": 10.0, "train_loss": 0.5})
    # a run that died stopped short of its plan (a state at max_steps is of a run that ended, end entry or not)
    (folder / "trainer_state.json").write_text(json.dumps({"global_step": steps,
                                                           "max_steps": steps if finished else 2 * steps,
                                                           "num_train_epochs": 4, "train_batch_size": 16,
                                                           "logging_steps": log_every, "log_history": log}))
    if classes:
        labels = {str(i): f"c{i}" for i in range(classes)}
        (folder / "config.json").write_text(json.dumps({"model_type": "bert", "id2label": labels}))
    if adapter is not None:
        (folder / "adapter_config.json").write_text(json.dumps({"peft_type": "LORA", **adapter}))
    return folder


def exp_decay(start, end, rate):
    return lambda f: end + (start - end) * math.exp(-rate * f)


def u_shape(start, low, at, end):
    return lambda f: (start + (low - start) * (f / at) ** 0.5) if f <= at else low + (end - low) * (f - at) / (1 - at)


# ---- the issue's cases, as a Trainer run shows them -------------------------------------------------

def test_textbook_overfit_from_losses_alone(tmp_path):
    """train loss 4.2 -> 0.01, val loss bottoming out at 45% and creeping up, F1 3 pt below its best."""
    d = diagnose(trainer_state(tmp_path, train=exp_decay(4.2, 0.01, 9), val=u_shape(1.2, 0.5, 0.45, 0.62),
                               metric=lambda f: 0.80 + 0.1 * min(f, 0.45) / 0.45 - 0.03 * max(0, f - 0.45) / 0.55,
                               classes=None, n_val=400, noise=0.005))
    assert d.verdict == "overfit-capacity", [(f.rule_id, f.suppressed_by) for f in d.findings]
    assert not d.fired("healthy")
    assert d.features["val_loss_rise_noise"] > 2


def test_exploding_run_is_diverged_even_when_the_first_log_already_exploded(tmp_path):
    # logging every 10 steps: the first logged mean already includes the blow-up; val accuracy near 0
    d = diagnose(trainer_state(tmp_path, train=lambda f: 40 + 20 * f, val=lambda f: 60 + 5 * f,
                               metric=lambda f: 0.02, log_every=10))
    assert d.verdict == "diverged"
    ev = {e.feature: e for e in d.primary.evidence}
    assert ev["train_loss_vs_chance"].passed and not ev["train_loss_final_over_start"].passed


def test_slow_learning_is_not_healthy(tmp_path):
    """lr too small for the budget: the loss falls slowly and steadily, still falling at the end."""
    d = diagnose(trainer_state(tmp_path, train=lambda f: L10 * (1 - 0.25 * f), val=lambda f: L10 * (0.97 - 0.22 * f),
                               metric=lambda f: 0.15 + 0.2 * f, lr=2e-6))
    assert d.verdict == "lr-too-small", [(f.rule_id, f.suppressed_by) for f in d.findings]
    assert d.features["train_loss_runs_to_fit"] > 2


def test_a_run_that_fell_fast_and_is_still_improving_is_undertrained_not_slow(tmp_path):
    d = diagnose(trainer_state(tmp_path, train=exp_decay(L10, 0.3, 3), val=exp_decay(1.9, 0.35, 2.5),
                               metric=lambda f: 0.5 + 0.4 * f))
    assert d.verdict == "undertrained"
    assert not d.fired("lr-too-small", active_only=False)


def test_healthy_loss_only_run_converged_and_held(tmp_path):
    d = diagnose(trainer_state(tmp_path, train=exp_decay(L10, 0.05, 8), val=exp_decay(1.5, 0.30, 14), noise=0.003))
    assert d.verdict == "healthy" and d.primary.tentative  # no val metric: healthy, with lowered confidence
    assert "a train-subsample metric" in {a["signal"] for a in d.advice()}


# ---- near misses: each loss-only branch just short of firing ---------------------------------------

def test_near_miss_overfit_val_loss_rise_inside_the_noise_band(tmp_path):
    # the val loss ends 10% above its minimum, but zigzags by more than that from eval to eval
    def zig(f):
        return 0.5 * (1.1 if f > 0.6 else 1.0) * (1 + (0.12 if int(round(f * 10)) % 2 else -0.12))
    d = diagnose(trainer_state(tmp_path, train=exp_decay(L10, 0.02, 9), val=zig, classes=None, n_val=None))
    assert d.features["val_loss_rise"] >= 0.1 and d.features["val_loss_rise_noise"] < 2
    assert not d.fired("overfit-capacity", active_only=False)


def test_near_miss_overfit_train_loss_not_small(tmp_path):
    # the val loss turns at 40%, but the train loss is neither small nor still falling (flat over the second half)
    d = diagnose(trainer_state(tmp_path, train=exp_decay(L10, 0.8, 12), val=u_shape(1.5, 0.9, 0.4, 1.1), classes=None))
    assert d.features["train_loss_final_over_start"] > 0.25 and d.features["train_loss_late_drop"] < 0.1
    assert not d.fired("overfit-capacity", active_only=False)


def test_near_miss_diverged_loss_above_start_but_below_the_chance_multiple(tmp_path):
    # a noisy start then a loss that settles below ln(classes): not an explosion
    d = diagnose(trainer_state(tmp_path, train=lambda f: 1.2 * L10 if f < 0.1 else 1.1 * L10, val=lambda f: L10,
                               metric=lambda f: 0.1))
    assert d.features["train_loss_vs_chance"] < 2
    assert not d.fired("diverged", active_only=False)


def _eval_only(folder: Path, val, metric) -> Path:
    """A Trainer run with logging_strategy='no': eval entries only, no train loss anywhere."""
    trainer_state(folder, train=lambda f: 1.0, val=val, metric=metric, classes=None, finished=False)
    state = json.loads((folder / "trainer_state.json").read_text())
    state["log_history"] = [e for e in state["log_history"] if "loss" not in e]
    (folder / "trainer_state.json").write_text(json.dumps(state))
    return folder


def test_an_exploding_val_loss_with_no_train_loss_logged_is_diverged(tmp_path):
    # val loss 3.1 -> 2.5 -> 120 and accuracy 0.30 -> 0.45 -> 0.03: an explosion, read without any train loss
    d = diagnose(_eval_only(tmp_path, val=lambda f: 3.1 - 3 * f if f <= 0.2 else 2.5 * 48 ** ((f - 0.2) / 0.8),
                            metric=lambda f: 0.30 + 0.75 * f if f <= 0.2 else max(0.03, 0.45 - 1.5 * (f - 0.2))))
    assert d.features.values.get("train_loss_final_over_start") is None
    assert d.verdict == "diverged", [(f.rule_id, f.suppressed_by) for f in d.findings]
    assert d.features["val_loss_final_over_start"] >= 10 and d.features["val_metric_final_vs_start"] < 0


@pytest.mark.parametrize("rise, metric_end", [(5.0, 0.25), (14.0, 0.40)])
def test_near_miss_diverged_from_the_val_side(rise, metric_end, tmp_path):
    # a val loss 5x its start with the metric below where it began (the corpus's largest overfit rise), and a val
    # loss 14x its start with the metric above it: neither is an explosion
    d = diagnose(_eval_only(tmp_path, val=lambda f: 0.3 * rise ** f, metric=lambda f: 0.30 + (metric_end - 0.30) * f))
    assert not d.fired("diverged", active_only=False)


def test_near_miss_lr_too_small_when_the_first_eval_is_late_and_the_train_loss_fell(tmp_path):
    # val loss fell only 13% between evals because the first eval came one epoch in; train loss fell 60%
    d = diagnose(trainer_state(tmp_path, train=exp_decay(0.29, 0.11, 4), val=lambda f: 0.19 - 0.025 * f,
                               metric=lambda f: 0.6 + 0.14 * f, classes=None, evals=4))
    assert d.features["val_loss_drop"] < 0.3 and d.features["first_eval_fraction"] > 0.05
    assert not d.fired("lr-too-small", active_only=False)


# ---- noise, facts, partial runs ---------------------------------------------------------------------

def test_curve_jitter_ignores_a_smooth_trend_and_measures_a_zigzag():
    smooth = [1 / (1 + i) for i in range(10)]
    zigzag = [0.5 + (0.05 if i % 2 else -0.05) for i in range(10)]
    assert curve_jitter(smooth) < 0.01
    assert curve_jitter(zigzag) == pytest.approx(0.2 / 0.6745 / math.sqrt(6), rel=1e-6)
    assert curve_jitter([1.0, 2.0, 3.0]) is None


def test_ties_inside_the_band_are_called_ties(tmp_path):
    d = diagnose(trainer_state(tmp_path, train=exp_decay(L10, 0.1, 6), val=exp_decay(1.5, 0.4, 6),
                               metric=lambda f: min(0.9, 0.6 + f) - (0.01 if f == 1 else 0), n_val=200))
    assert d.features["val_metric_final_drop_se"] < 2
    assert any("tie" in line for line in d.curve_summary())


def test_facts_say_where_they_came_from(tmp_path):
    run = load_run(trainer_state(tmp_path, train=exp_decay(L10, 0.1, 6), val=exp_decay(1.5, 0.4, 6),
                                 adapter={"r": 16, "lora_alpha": 32, "use_rslora": True,
                                          "target_modules": ["value", "query"]}))
    f = run.facts
    assert f["n_classes"].value == 10 and f["n_classes"].source == "config.json id2label"
    assert f["r"].value == 16 and f["lora_scale"].value == pytest.approx(32 / 4) and "rsLoRA" in f["lora_scale"].source
    assert f["learning_rate"].value == pytest.approx(2e-4, rel=0.01) and f["lr_schedule"].value == "linear"
    assert f["val_n"].value == 400 and "runtime" in f["val_n"].source
    assert f["target_modules"].value == ["query", "value"]


def test_a_run_without_the_end_of_training_entry_is_called_partial(tmp_path):
    d = diagnose(trainer_state(tmp_path, train=exp_decay(L10, 0.1, 6), val=exp_decay(1.5, 0.4, 6), finished=False))
    assert any(n.startswith("partial run") for n in d.notes)


@pytest.mark.parametrize("done, stop, partial, evidence", [
    (8, True, False, "global_step 8 reached max_steps 8"),  # the last checkpoint of a run that ran to its end
    (8, False, False, "global_step 8 reached max_steps 8"),  # an older Trainer: no stateful_callbacks in the state
    (6, True, False, "should_training_stop"),  # early stopping ended it before max_steps
    (6, False, True, None),  # near miss: a checkpoint of a run that died (or is still going) at step 6 of 8
])
def test_a_checkpoint_state_of_a_run_that_ended_is_not_partial(tmp_path, done, stop, partial, evidence):
    # a checkpoint's trainer_state.json is saved before the end-of-training entry, so a run folder holding only
    # checkpoints (Trainer.train() with save_steps, no save_state) never has it: its step count and TrainerControl say
    from loratune.report.model import build_outside_report

    log = [e for s in range(2, done + 1, 2) for e in ({"step": s, "epoch": s / 4, "loss": 1.4 - 0.01 * s},
                                                        {"step": s, "epoch": s / 4, "eval_loss": 1.38 - 0.01 * s})]
    state = {"global_step": done, "max_steps": 8, "logging_steps": 2, "eval_steps": 2, "log_history": log}
    if stop or done == 6:
        state["stateful_callbacks"] = {"TrainerControl": {"args": {"should_training_stop": stop}, "attributes": {}}}
    (tmp_path / f"checkpoint-{done}").mkdir()
    (tmp_path / f"checkpoint-{done}" / "trainer_state.json").write_text(json.dumps(state))
    run = load_run(tmp_path)
    assert bool(run.meta.get("partial")) == partial and run.meta["steps_done"] == done
    ended = [n for n in run.notes if "the run ended" in n]
    assert (len(ended) == 1 and evidence in ended[0]) if evidence else not ended
    assert any(n.startswith("partial run") for n in diagnose(tmp_path).notes) == partial
    assert build_outside_report(tmp_path).status == ("partial" if partial else "finished")


def _nan_tail_state(folder: Path, nan_from: int, *, back: bool = False) -> Path:
    """A 24-step Trainer run of 4 classes whose losses go NaN from step `nan_from` (the Trainer's nan filter logs a
    train window of only NaN steps as loss 0.0 beside a NaN grad_norm); `back`: finite again at the last eval."""
    folder.mkdir(parents=True, exist_ok=True)
    log = []
    for s, loss, val in ((4, 1.417, 1.395), (8, 1.434, 1.389), (12, 0.851, 1.380), (16, 0.8, 1.37), (24, 0.7, 1.36)):
        nan = s >= nan_from and not (back and s == 24)
        log += [{"step": s, "epoch": s / 6, "loss": 0.0 if nan and s > nan_from else loss,
                 "grad_norm": math.nan if nan else 0.5, "learning_rate": 0.02},
                {"step": s, "epoch": s / 6, "eval_loss": math.nan if nan else val, "eval_accuracy": 0.25}]
    log.append({"step": 24, "epoch": 4.0, "train_loss": 0.617, "train_runtime": 1.0})
    (folder / "trainer_state.json").write_text(json.dumps({"global_step": 24, "max_steps": 24, "eval_steps": 4,
                                                           "logging_steps": 4, "log_history": log}))
    return folder


def test_the_summary_calls_no_finite_value_final_when_the_losses_ended_non_finite(tmp_path):
    # val loss NaN at every eval from step 12 on: "final 1.389" was the last finite value, not the run's final; the
    # train loss has no finite window in the last half, so "fell 0.0% over the last half" was not in the record
    d = diagnose(_nan_tail_state(tmp_path, 12))
    lines = {ln.split(":")[0]: ln for ln in d.curve_summary()}
    assert lines["val loss"] == ("val loss: 1.395 -> min 1.389 at 33.3% of the run -> non-finite from step 12 "
                                 "(last finite 1.389)")
    assert lines["train loss"] == ("train loss: 1.417 -> 0.851 (fell 39.9% to its last finite window), then "
                                   "non-finite from step 16")
    # the rules read the finite series as before: only the summary's words changed
    assert d.features["val_loss_final"] == pytest.approx(1.389) and d.features["train_loss_final"] == 0.851
    assert d.verdict == "diverged"


def test_a_loss_finite_again_at_the_end_keeps_its_final(tmp_path):
    # near miss: NaN in the middle, finite at the last eval: that value is the final
    lines = {ln.split(":")[0]: ln for ln in diagnose(_nan_tail_state(tmp_path, 12, back=True)).curve_summary()}
    assert lines["val loss"].endswith("-> final 1.360") and "non-finite" not in lines["val loss"]
    assert lines["train loss"].startswith("train loss: 1.417 -> 0.700 (") and "over the last half" in \
        lines["train loss"] and "non-finite" not in lines["train loss"]


def test_language_model_runs_get_no_class_count_from_their_first_loss(tmp_path):
    folder = trainer_state(tmp_path, train=exp_decay(2.1, 1.2, 3), val=exp_decay(2.0, 1.4, 3), classes=None)
    state = json.loads((folder / "trainer_state.json").read_text())
    for e in state["log_history"]:
        if "eval_loss" in e:
            e["eval_mean_token_accuracy"] = 0.5
    (folder / "trainer_state.json").write_text(json.dumps(state))
    run = load_run(folder)
    assert run.source == "trl" and "n_classes" not in run.facts and run.meta["task"] == "causal-lm"


# ---- comparisons across sources --------------------------------------------------------------------

def _loratune_run(folder: Path, *, lr: float, r: int, best: float) -> Path:
    folder.mkdir(parents=True)
    pts = [{"step": s, "epoch": s / 50, "lr": lr, "val/loss": 1.0 - 0.3 * s / 200, "val/macro_f1": best * s / 200,
            "val/accuracy": best * s / 200, "val/n": 400, "train/loss": 2.0 - s / 200} for s in range(0, 201, 20)]
    (folder / "history.jsonl").write_text("".join(json.dumps(p) + "\n" for p in pts))
    (folder / "run.json").write_text(json.dumps({"status": "completed", "steps_planned": 200, "task": "single_label"}))
    cfg = {"model": {"name_or_path": "m"}, "adapter": {"r": r, "lora_alpha": 2 * r, "lora_dropout": 0.1,
                                                         "target_modules": ["attn.q", "attn.v"],
                                                         "layers_to_transform": "all", "bias": "none",
                                                         "use_rslora": False},
           "train": {"learning_rate": lr, "max_steps": -1, "num_train_epochs": 4.0,
                     "per_device_train_batch_size": 16, "lr_scheduler_type": "linear", "seed": 42}}
    import yaml

    (folder / "config.yaml").write_text(yaml.safe_dump(cfg))
    (folder / "adapter").mkdir()
    (folder / "adapter" / "adapter_config.json").write_text(json.dumps({"target_modules": ["value", "query"]}))
    return folder


def test_a_loratune_run_and_trainer_runs_are_compared_on_the_knobs_both_know(tmp_path):
    base = _loratune_run(tmp_path / "lt-base", lr=2e-4, r=8, best=0.70)
    adapter = {"r": 8, "lora_alpha": 16, "lora_dropout": 0.1, "target_modules": ["query", "value"], "bias": "none",
               "use_rslora": False}
    lr_x4 = trainer_state(tmp_path / "hf-lr", train=exp_decay(L10, 0.2, 5), val=exp_decay(1.0, 0.45, 4),
                          metric=lambda f: 0.55 + 0.35 * f, lr=8e-4, adapter=adapter)
    r_x4 = trainer_state(tmp_path / "hf-r", train=exp_decay(L10, 0.5, 4), val=exp_decay(1.0, 0.7, 4),
                         metric=lambda f: 0.5 + 0.21 * f, lr=2e-4,
                         adapter={**adapter, "r": 32, "lora_alpha": 64})
    c = compare([base, lr_x4, r_x4])
    groups = {g.knob: g for g in c.groups}
    assert set(groups) == {"learning_rate", "r"}, c.notes
    assert {row[0] for row in groups["learning_rate"].runs} == {"lt-base", "hf-lr"}
    assert "assumed equal" in groups["learning_rate"].note and "seed" in groups["learning_rate"].note
    assert c.fired("optimization-bound")


def test_collapse_without_per_class_numbers_reads_from_the_loss_against_chance(tmp_path):
    # lr 1: the first logged loss is already 2.8 x ln(10), the loss ends pinned above ln(10), macro-F1 at the
    # one-class level: a collapse, read with no per-class numbers
    d = diagnose(trainer_state(tmp_path / "big", train=lambda f: L10 * (2.8 if f < 0.15 else 1.25),
                               val=lambda f: L10 * 1.05, metric=lambda f: 0.018, log_every=10))
    assert d.verdict == "lr-too-large"
    ev = {e.feature: e for e in d.primary.evidence}
    assert ev["train_loss_peak_vs_chance"].passed and ev["train_loss_vs_chance"].passed
    # its near miss: a too-small lr also leaves the loss at ln(10), but never takes it above
    slow = diagnose(trainer_state(tmp_path / "small", train=lambda f: L10 * (1.0 - 0.004 * f),
                                  val=lambda f: L10 * (0.999 - 0.004 * f), metric=lambda f: 0.02 + 0.05 * f, lr=1e-6))
    assert not slow.fired("lr-too-large", active_only=False)
    assert slow.verdict == "lr-too-small"


def test_classes_from_a_saved_heads_safetensors_header(tmp_path):
    folder = trainer_state(tmp_path, train=exp_decay(3.0, 0.1, 6), val=exp_decay(1.5, 0.4, 6), classes=None)
    header = json.dumps({"base_model.model.classifier.weight": {  # as peft saves a modules_to_save head
        "dtype": "F32", "shape": [7, 384], "data_offsets": [0, 7 * 384 * 4]}}).encode()
    (folder / "adapter_model.safetensors").write_bytes(len(header).to_bytes(8, "little") + header +
                                                       bytes(7 * 384 * 4))
    run = load_run(folder)
    assert run.facts["n_classes"].value == 7 and "adapter_model.safetensors" in run.facts["n_classes"].source


def test_no_class_count_from_a_first_window_that_already_blew_up(tmp_path):
    folder = trainer_state(tmp_path, train=lambda f: 6.4 if f < 0.1 else 2.9, val=lambda f: 2.4, classes=None)
    state = json.loads((folder / "trainer_state.json").read_text())
    next(e for e in state["log_history"] if "loss" in e)["grad_norm"] = 601.0
    (folder / "trainer_state.json").write_text(json.dumps(state))
    assert "n_classes" not in load_run(folder).facts  # exp(6.4) ~ 600 classes would be a fiction


def test_classes_from_the_first_loss_when_nothing_else_says(tmp_path):
    run = load_run(trainer_state(tmp_path, train=exp_decay(L10, 0.1, 6), val=exp_decay(1.5, 0.4, 6), classes=None,
                                 window_mean=True))
    assert run.facts["n_classes"].value == 10 and "first train losses" in run.facts["n_classes"].source


@pytest.mark.parametrize("classes,log_every", [(77, 10), (10, 2), (150, 5)])
def test_the_class_count_reads_a_logged_loss_as_its_windows_mean(tmp_path, classes, log_every):
    """The Trainer logs the mean loss of a window's steps: read at the window's end step, a 77-class start (ln 77)
    falling fast extrapolated to about 99 classes; read at the window's centre, to 77."""
    start = math.log(classes)
    run = load_run(trainer_state(tmp_path, train=exp_decay(start, 0.05, 3), val=exp_decay(start, 0.5, 3),
                                 classes=None, log_every=log_every, window_mean=True, steps=300))
    assert run.facts["n_classes"].value == pytest.approx(classes, rel=0.03)


def test_a_short_run_whose_val_loss_is_still_falling_is_undertrained(tmp_path):
    # two evals (one per epoch): accuracy flat inside its noise, val loss -19% and train loss still falling
    short = diagnose(trainer_state(tmp_path / "short", train=lambda f: L10 * (1 - 0.3 * f), evals=2, steps=40,
                                   val=lambda f: 1.85 - 0.7 * (f - 0.5), metric=lambda f: 0.82, n_val=200))
    assert short.verdict == "undertrained", [(f.rule_id, f.suppressed_by) for f in short.findings]
    # near miss: with ten evals the metric decides, and a flat metric is not "still improving"
    long = diagnose(trainer_state(tmp_path / "long", train=exp_decay(L10, 0.3, 4), evals=10,
                                  val=exp_decay(1.5, 0.3, 2), metric=lambda f: 0.82, n_val=200))
    assert long.features["val_loss_still_falling"] == 1.0
    assert not long.fired("undertrained", active_only=False)


def test_a_train_loss_climbing_back_while_the_val_loss_swings_is_lr_too_large(tmp_path):
    def train(f):
        return 0.58 * (1.0 if f < 0.05 else 0.05 if f < 0.2 else 1.6 if f < 0.6 else 0.45)

    def val(f):
        return 0.8 + (0.3 if int(round(f * 10)) % 2 else -0.2)

    d = diagnose(trainer_state(tmp_path, train=train, val=val, classes=2, lr=1e-2))
    assert d.verdict == "lr-too-large", [(f.rule_id, f.suppressed_by) for f in d.findings]
    assert not d.fired("overfit-capacity")


def test_a_val_loss_drifting_up_by_one_percent_is_no_swing_for_the_climb_back_route(tmp_path):
    # a run that starts converged (fold Z's almaratss: LoRA on a model already fine-tuned on the same data): the train
    # loss's windows differ by 20% at 0.03, the val loss drifts up 1% (all of its movement upward), the metric ties:
    # nothing oscillates. The same climb beside a val loss that swings 16% up and back is the lr's oscillation
    kw = dict(train=_per_eval([0.0275, 0.0284, 0.0329]), metric=_per_eval([0.9639, 0.9638, 0.9637]), classes=None,
              n_val=None, evals=3, log_every=66, steps=198)
    d = diagnose(trainer_state(tmp_path / "drift", val=_per_eval([0.1111, 0.1119, 0.1121]), **kw))
    assert d.features["train_loss_max_rise"] >= 0.15 and d.features["val_loss_rise_share"] == 1.0
    assert d.features["val_loss_max_swing"] == pytest.approx(0.0090, abs=1e-3)
    assert not d.fired("lr-too-large"), [(f.rule_id, f.suppressed_by) for f in d.findings]
    d = diagnose(trainer_state(tmp_path / "swing", val=_per_eval([0.1111, 0.1290, 0.1121]), **kw))
    assert d.features["val_loss_max_swing"] == pytest.approx(0.1611, abs=1e-3)
    assert d.verdict == "lr-too-large", [(f.rule_id, f.suppressed_by) for f in d.findings]


def test_a_val_loss_creeping_one_percent_beyond_a_tight_band_is_no_swing_for_the_climb_back_route(tmp_path):
    # 40 evals; the train loss falls to 0.7x its start at 60% and climbs back 17.5% of its start (fold AH's ikramMc:
    # per-step SFT losses). A val loss that then creeps +1.3% above its minimum is far beyond its tight band (4.5
    # noise units) yet moves less than the 3% a swing must climb: a settled loss, not a step that throws it about
    def train(f):
        return 2.0 - 0.6 * f / 0.6 if f <= 0.6 else 1.4 + 0.35 * (f - 0.6) / 0.4

    kw = dict(train=train, classes=None, n_val=None, evals=40, steps=400, log_every=10)
    d = diagnose(trainer_state(tmp_path / "creep", val=u_shape(2.2, 1.60, 0.6, 1.621), **kw))
    assert d.features["train_loss_max_rise"] >= 0.15 and d.features["val_loss_rise_noise"] >= 2
    assert d.features["val_loss_rise"] < 0.03
    assert not d.fired("lr-too-large"), [(f.rule_id, f.suppressed_by) for f in d.findings]
    # the same climb back beside a val loss rising 6% (21 noise units) is the step's oscillation
    d = diagnose(trainer_state(tmp_path / "rise", val=u_shape(2.2, 1.60, 0.6, 1.70), **kw))
    assert d.features["val_loss_rise"] >= 0.03
    assert d.verdict == "lr-too-large", [(f.rule_id, f.suppressed_by) for f in d.findings]


def _untracked(folder: Path, **kw) -> Path:
    """trainer_state() with every train-loss log removed: a Trainer whose logging_steps outlast the run."""
    trainer_state(folder, **kw)
    state = json.loads((folder / "trainer_state.json").read_text())
    state["log_history"] = [e for e in state["log_history"] if "loss" not in e]
    (folder / "trainer_state.json").write_text(json.dumps(state))
    return folder


def test_a_run_that_logged_no_train_loss_is_read_on_its_validation_side(tmp_path):
    # 3 evals, no train loss logged (fold M's BenjiKCF: yelp 5-class, 1,000 eval rows): the val loss fell beyond its
    # band and flattened (-0.079, then -0.006), accuracy best at the end: healthy, the train side missing, not flat
    kw = dict(train=lambda f: 1.0, classes=5, n_val=1000, evals=3, log_every=50, steps=150)
    d = diagnose(_untracked(tmp_path / "flat", val=_per_eval([1.112, 1.033, 1.027]),
                            metric=_per_eval([0.515, 0.571, 0.591]), **kw))
    assert d.features["train_loss_untracked"] == 1 and d.features["val_loss_remaining_gain"] < 0.02
    assert d.verdict == "healthy", [(f.rule_id, f.suppressed_by, f.tentative) for f in d.findings]
    # the val loss still falling fast at the end (-0.20, -0.18) beside a metric whose last gain is inside its noise
    # (100 eval rows): undertrained, read without a train loss as well (fold Y's binarybeastt)
    d = diagnose(_untracked(tmp_path / "falling", val=_per_eval([1.40, 1.20, 1.02]),
                            metric=_per_eval([0.50, 0.60, 0.61]), **{**kw, "n_val": 100}))
    assert d.features["val_loss_remaining_gain"] >= 0.02 and d.features["val_metric_late_gain_se"] < 2
    assert d.verdict == "undertrained", [(f.rule_id, f.suppressed_by, f.tentative) for f in d.findings]
    # the same flattening val loss beside a train loss logged at every eval and pinned: the route is not for it
    d = diagnose(trainer_state(tmp_path / "tracked", val=_per_eval([1.112, 1.033, 1.027]),
                               metric=_per_eval([0.515, 0.571, 0.591]), **{**kw, "train": lambda f: 1.6}))
    assert "train_loss_untracked" in d.features.missing and d.verdict != "healthy"


def test_a_run_that_logged_no_train_loss_overfits_on_its_validation_side(tmp_path):
    # one train window (logging_steps past the run), 7 evals on 267 rows, 3 classes (fold AE's AppleMax1992): the
    # val loss passes its minimum at 57% and rises at every later eval to +56%, ~10 noise units; accuracy 2 SE below
    # its best. The train side is missing, not flat: protocol 5b's overfit, read on the val side alone
    kw = dict(train=lambda f: 1.0, classes=3, n_val=267, evals=7, log_every=78, steps=546)
    metric = _per_eval([0.524, 0.580, 0.600, 0.644, 0.620, 0.600, 0.580])
    d = diagnose(_untracked(tmp_path / "rising", val=_per_eval([0.949, 0.914, 0.917, 0.882, 0.970, 1.115, 1.375]),
                            metric=metric, **kw))
    assert d.features["train_loss_untracked"] == 1 and d.features["val_loss_rise_steady"] == 1
    assert d.features["val_loss_rise_noise"] >= 2
    assert d.verdict == "overfit-capacity", [(f.rule_id, f.suppressed_by, f.tentative) for f in d.findings]
    # near miss: the same climb that stops at +6% (under val_loss_rise_min) is no overfit read on one side
    d = diagnose(_untracked(tmp_path / "small", val=_per_eval([0.949, 0.914, 0.917, 0.882, 0.895, 0.91, 0.935]),
                            metric=metric, **kw))
    assert d.features["val_loss_rise_steady"] == 1 and d.features["val_loss_rise"] < 0.1
    assert not d.fired("overfit-capacity"), [(f.rule_id, f.suppressed_by) for f in d.findings]
    # near miss: a val loss zig-zagging +-0.08 around ln 2 ends 15% above its minimum at under 1 noise unit (fold L's
    # slhshamloo, 5 evals, both reviews inconclusive or underfit): the rise is the jitter, not a trend
    d = diagnose(_untracked(tmp_path / "zigzag", val=_per_eval([0.652, 0.728, 0.633, 0.715, 0.728]),
                            metric=_per_eval([0.607, 0.609, 0.651, 0.637, 0.656]),
                            **{**kw, "classes": 2, "n_val": 642, "evals": 5, "steps": 470, "log_every": 94}))
    assert d.features["val_loss_rise"] >= 0.1 and d.features["val_loss_rise_noise"] < 2
    assert not d.fired("overfit-capacity"), [(f.rule_id, f.suppressed_by) for f in d.findings]


def test_compound_intents_missed_while_single_intents_fit():
    pts = [{"step": s, "train/loss": 2.0 - s / 200, "val/loss": 1.5 - s / 400, "val/subset_accuracy": 0.3 + s / 400,
            "val_single/subset_accuracy": 0.5 + 0.45 * s / 200, "val_compound/subset_accuracy": 0.1 + 0.2 * s / 200}
           for s in range(0, 201, 20)]
    d = diagnose(pts, meta={"task": "multi_label"})
    f = d.finding("compound-intents-missed")
    assert f is not None and f.suppressed_by is None and "pair" in f.caveat and "loss" in f.caveat
    assert d.features["compound_gap"] == pytest.approx(0.95 - 0.3)
    # near miss: the single-intent rows do not fit either (a general underfit, not a compound weakness)
    low = [{**p, "val_single/subset_accuracy": 0.6} for p in pts]
    assert diagnose(low, meta={"task": "multi_label"}).finding("compound-intents-missed") is None


def test_compound_intents_missed_says_which_group_validation_lacks():
    """A current multi-label run whose validation has no single-label row (val_single/n 0) was told "single-label
    data, or an older run"."""
    pts = [{"step": s, "train/loss": 2.0 - s / 200, "val/loss": 1.5 - s / 400, "val/subset_accuracy": 0.3 + s / 400,
            "val_compound/subset_accuracy": 0.1 + 0.2 * s / 200, "val_compound/n": 17, "val_single/n": 0}
           for s in range(0, 201, 20)]

    def why(points):
        gaps = {n.rule_id: dict(n.missing) for n in diagnose(points, meta={"task": "multi_label"}).not_evaluated}
        return gaps["compound-intents-missed"]["compound_gap"]

    assert why(pts) == ("validation has no single-label rows (val_single/n 0): no compound vs single-label gap to "
                        "measure")
    flipped = [{"step": p["step"], "train/loss": p["train/loss"], "val/loss": p["val/loss"],
                "val/subset_accuracy": p["val/subset_accuracy"], "val_single/subset_accuracy": 0.5,
                "val_single/n": 20, "val_compound/n": 0} for p in pts]
    assert why(flipped).startswith("validation has no compound (two or more labels) rows (val_compound/n 0)")
    # no row counts at all: a single-label run or one recorded before them
    bare = [{k: v for k, v in p.items() if not k.startswith("val_")} for p in pts]
    assert why(bare) == "no val_compound / val_single exact match (single-label data, or an older run)"


# ---- "nothing moved" and a loss that bounces out of its low ------------------------------------------

def test_a_run_whose_losses_never_moved_is_lr_too_small(tmp_path):
    # lr 1e-5: train loss pinned at ln(classes) +- batch noise, val loss -0.1% in total, accuracy at chance
    d = diagnose(trainer_state(tmp_path, train=lambda f: L10 * (1 - 0.001 * f), val=lambda f: L10 * (1 - 0.001 * f),
                               metric=lambda f: 0.11, lr=1e-5, noise=0.002))
    assert d.verdict == "lr-too-small", [(f.rule_id, f.suppressed_by) for f in d.findings]
    assert "barely moves" in d.primary.verdict


def test_a_flat_loss_only_sft_run_is_lr_too_small(tmp_path):
    # an SFT run (no classes, no metric): train loss batch noise with no trend, val loss -0.4%
    d = diagnose(trainer_state(tmp_path, train=lambda f: 4.6, val=lambda f: 4.95 - 0.02 * f, classes=None,
                               n_val=None, lr=5e-6, noise=0.05, evals=4, steps=20, log_every=1))
    assert d.verdict == "lr-too-small", [(f.rule_id, f.suppressed_by) for f in d.findings]


def test_near_miss_nothing_moved_in_a_run_cut_at_a_third_of_its_plan(tmp_path):
    # the flat SFT run above, stopped at a third of its planned steps (fold D's joo9810: LoRA SFT cut at 34%): most
    # of its schedule never ran, so its flat losses do not show the step too small
    kw = dict(train=lambda f: 4.6, val=lambda f: 4.95 - 0.02 * f, classes=None, n_val=None, lr=5e-6, noise=0.05,
              evals=4, steps=20, log_every=1)
    folder = trainer_state(tmp_path / "cut", **kw)
    state = json.loads((folder / "trainer_state.json").read_text())
    state["max_steps"] = 60
    (folder / "trainer_state.json").write_text(json.dumps(state))
    d = diagnose(folder)
    assert d.features["plan_done_fraction"] == pytest.approx(1 / 3)
    assert not d.fired("lr-too-small"), [(f.rule_id, f.suppressed_by) for f in d.findings]


def test_near_miss_nothing_moved_when_the_model_is_already_good(tmp_path):
    # flat losses, but the val metric is high from the first eval: nothing left to learn, not too small a step
    d = diagnose(trainer_state(tmp_path, train=lambda f: 0.3, val=lambda f: 0.32 - 0.005 * f,
                               metric=lambda f: 0.91, noise=0.01))
    assert d.features["val_loss_drop"] < 0.03 and d.features["train_loss_final_over_start"] > 0.9
    assert not d.fired("lr-too-small", active_only=False)


def test_near_miss_nothing_moved_when_the_train_loss_fell(tmp_path):
    # val loss flat after the first eval (one epoch in), but the train loss fell 40%: it moved
    d = diagnose(trainer_state(tmp_path, train=exp_decay(1.0, 0.6, 3), val=lambda f: 0.7, metric=lambda f: 0.4))
    assert d.features["train_loss_final_over_start"] < 0.9
    assert not d.fired("lr-too-small", active_only=False)


def test_a_loss_that_finds_a_low_and_lives_above_it_is_lr_too_large(tmp_path):
    # constant lr 1e-2: the loss falls to 0.35 by 45%, then bounces 0.4-0.8 while the val loss sits 25-50% above
    # its minimum; the swings are the val loss's own jitter, so no rise clears its noise band
    bounce = (0.41, 0.44, 0.55, 0.48, 0.55, 0.47, 0.65, 0.78, 0.55, 0.46)

    def train(f):
        return 2.66 * math.exp(-5 * f / 0.45) + 0.3 if f <= 0.45 else bounce[min(9, int((f - 0.45) / 0.055))]

    def val(f):
        return {1: 1.75, 2: 0.9, 3: 0.52, 4: 0.44, 5: 0.35, 6: 0.354, 7: 0.525, 8: 0.441, 9: 0.518}.get(
            int(round(f * 10)), 0.482)

    d = diagnose(trainer_state(tmp_path, train=train, val=val, classes=15, lr=1e-2, n_val=None))
    assert d.features["val_loss_rise_noise"] < 2 and d.features["train_loss_rebound"] >= 0.2
    assert d.verdict == "lr-too-large", [(f.rule_id, f.suppressed_by) for f in d.findings]


def test_near_miss_rebound_a_late_low_is_a_wiggle_of_a_settled_loss(tmp_path):
    # the loss settles; its lowest window comes at 80% and the few windows after sit a little above it
    d = diagnose(trainer_state(tmp_path, train=lambda f: 0.3 + 2.0 * math.exp(-8 * f) + (0.05 if f > 0.82 else 0),
                               val=exp_decay(1.5, 0.4, 6), metric=lambda f: 0.5 + 0.3 * min(f * 3, 1)))
    assert d.features["train_loss_min_fraction"] > 0.6
    assert not d.fired("lr-too-large", active_only=False)


def test_a_loss_stuck_high_at_an_lr_already_at_the_top_of_loras_range_is_underfit(tmp_path):
    # r=1 on one module at lr 2e-3: the loss moves 1% of ln(classes) in 150 steps and flattens, F1 low and flat
    d = diagnose(trainer_state(tmp_path, train=lambda f: L10 * (1 - 0.01 * min(f * 2, 1)),
                               val=lambda f: L10 * (1 - 0.008 * min(f * 2, 1)), metric=lambda f: 0.2, lr=2e-3,
                               noise=0.001))
    assert d.verdict == "underfit-capacity", [(f.rule_id, f.suppressed_by) for f in d.findings]
    assert d.primary.caveat and "pair experiment" in d.primary.caveat


def test_near_miss_stuck_high_but_the_val_loss_is_still_falling(tmp_path):
    # prompt tuning at lr 3e-2: the train loss stays near its start, but the val loss falls 20% and is still falling
    d = diagnose(trainer_state(tmp_path, train=lambda f: 2.9 * (1 - 0.11 * f), val=lambda f: 2.88 * (1 - 0.21 * f),
                               classes=None, n_val=None, lr=3e-2, evals=12, steps=240))
    assert d.features["val_loss_drop"] > 0.1 and d.features["peak_lr"] >= 1.5e-3
    assert not d.fired("underfit-capacity", active_only=False)


# ---- what the run's side files say it is (fold C of the public corpus: LLM SFT read as a 4-class classifier) -----

@pytest.mark.parametrize("side, task", [
    ({"adapter_config.json": {"peft_type": "LORA", "task_type": "CAUSAL_LM", "r": 8, "lora_alpha": 16}}, "causal-lm"),
    ({"config.json": {"architectures": ["MixtralForCausalLM"], "model_type": "mixtral"}}, "causal-lm"),
    ({"config.json": {"architectures": ["GPT2LMHeadModel"], "model_type": "gpt2"}}, "causal-lm"),
    ({"config.json": {"architectures": ["BartForConditionalGeneration"], "model_type": "bart",
                      "id2label": {"0": "LABEL_0", "1": "LABEL_1", "2": "LABEL_2"}}}, "seq2seq"),
    ({"config.json": {"architectures": ["BertForSequenceClassification"], "problem_type": "regression",
                      "id2label": {"0": "LABEL_0"}}}, "regression"),
    # peft's task_type null (a custom adapter wrapped without one, caglanakpinar, fold K): the base model class
    # recorded in auto_mapping names the head
    ({"adapter_config.json": {"peft_type": "TINYLORA", "task_type": None, "r": 2,
                              "auto_mapping": {"base_model_class": "Qwen2ForCausalLM"}}}, "causal-lm"),
])
def test_the_task_comes_from_the_side_files_and_a_generative_loss_gets_no_class_count(tmp_path, side, task):
    # first train loss 1.32 ~ ln 4: without the side files this run would be read as a 4-class classifier
    folder = trainer_state(tmp_path, train=exp_decay(1.32, 0.95, 2), val=exp_decay(1.2, 0.98, 2), classes=None)
    for name, body in side.items():
        (folder / name).write_text(json.dumps(body))
    run = load_run(folder)
    assert run.meta["task"] == task and run.facts["task"].value == task
    assert "n_classes" not in run.facts
    d = diagnose(folder)
    assert d.features["n_classes"] is None and d.features["train_loss_vs_chance"] is None
    assert d.features["classifier"] is None
    assert not d.fired("lr-too-small", active_only=False)  # a tenth of the start is no target for these losses


@pytest.mark.parametrize("adapter, task", [
    ({"task_type": None, "auto_mapping": {"base_model_class": "ModernBertForSequenceClassification"}},
     "single_label"),
    ({"task_type": None, "auto_mapping": {"base_model_class": "CustomBackbone"}}, None),  # no known head suffix
    ({"task_type": None, "auto_mapping": None}, None),
    # a task_type, where given, stands over the base class
    ({"task_type": "SEQ_CLS", "auto_mapping": {"base_model_class": "Qwen2ForCausalLM"}}, "single_label"),
])
def test_the_adapters_base_model_class_names_the_task_only_without_a_task_type(tmp_path, adapter, task):
    folder = trainer_state(tmp_path, train=exp_decay(1.32, 0.95, 2), val=exp_decay(1.2, 0.98, 2), classes=None)
    (folder / "adapter_config.json").write_text(json.dumps({"peft_type": "LORA", **adapter}))
    run = load_run(folder)
    assert run.meta.get("task") == task


def test_a_classifier_still_reads_its_class_count_without_side_files(tmp_path):
    run = load_run(trainer_state(tmp_path, train=exp_decay(L10, 0.2, 4), val=exp_decay(1.5, 0.3, 3), classes=None,
                                 window_mean=True))
    assert run.facts["n_classes"].value == 10 and "task" not in run.facts


def test_an_infinite_grad_norm_beside_a_finite_loss_is_a_float16_overflow_not_a_divergence(tmp_path):
    folder = trainer_state(tmp_path, train=exp_decay(L10, 0.3, 4), val=exp_decay(1.6, 0.4, 3), metric=lambda f: 0.8)
    state = json.loads((folder / "trainer_state.json").read_text())
    logs = [e for e in state["log_history"] if "loss" in e]
    logs[3]["grad_norm"] = float("inf")  # the scaler skipped that step
    (folder / "trainer_state.json").write_text(json.dumps(state))
    d = diagnose(folder)
    assert d.features["nonfinite_values"] == 0 and d.features.details["grad_overflow_skipped"]
    assert not d.fired("diverged", active_only=False)
    # a non-finite loss is still a divergence
    logs[-1]["loss"] = float("nan")
    (folder / "trainer_state.json").write_text(json.dumps(state))
    assert diagnose(folder).verdict == "diverged"


def test_a_short_run_whose_val_loss_is_converging_is_not_undertrained(tmp_path):
    # three evals: the val loss falls 0.061 then 0.010 (a fall that shrinks 6x converges: ~0.5% left to gain)
    d = diagnose(trainer_state(tmp_path, train=exp_decay(0.77, 0.2, 3), evals=3, steps=60, log_every=4,
                               val=lambda f: {1: 0.477, 2: 0.416}.get(int(round(f * 3)), 0.406), classes=None))
    assert d.features["val_loss_remaining_gain"] < 0.02
    assert not d.fired("undertrained", active_only=False)


def test_a_val_loss_that_rose_beyond_its_noise_blocks_undertrained_even_when_the_metric_still_improves(tmp_path):
    # QQP-like: accuracy 0.893 -> 0.908 (n = 40k) while the val loss climbs 0.255 -> 0.375 from the first eval and the
    # train loss keeps falling (to 0.6x its start: never near zero on 364k rows)
    val = (0.255, 0.262, 0.288, 0.31, 0.34, 0.375)
    acc = (0.893, 0.897, 0.9, 0.903, 0.906, 0.908)
    d = diagnose(trainer_state(tmp_path, train=lambda f: 0.45 - 0.17 * f, evals=6, steps=120, log_every=4, n_val=40000,
                               val=lambda f: val[min(5, int(round(f * 6)) - 1)],
                               metric=lambda f: acc[min(5, int(round(f * 6)) - 1)]))
    assert d.features["still_improving"] == 1.0 and d.features["val_loss_rise_noise"] >= 2
    assert not d.fired("undertrained", active_only=False)
    assert d.verdict == "overfit-capacity"  # the train loss kept falling long after the val loss turned


def test_a_long_log_subsampled_for_the_schedule_fit_reads_the_same_schedule(tmp_path):
    # 4,000 lr samples (the fit takes 100 of them; bench/diagnose_external.py times it)
    folder = trainer_state(tmp_path, train=exp_decay(L10, 0.2, 4), val=exp_decay(1.5, 0.3, 3), steps=20000,
                           evals=20, log_every=5)
    run = load_run(folder)
    assert run.facts["lr_schedule"].value == "linear" and run.facts["learning_rate"].value == pytest.approx(2e-4)


def test_a_low_entropy_generative_run_with_train_and_val_loss_near_zero_together_is_not_memorised(tmp_path):
    # text rewriting (seq2seq): train loss 1.2 -> 0.01 and val loss 0.04 -> 0.012, flat at the end: no gap, no memory
    folder = trainer_state(tmp_path, train=exp_decay(1.2, 0.011, 9), val=exp_decay(0.04, 0.0119, 20), classes=None,
                           n_val=None)
    (folder / "config.json").write_text(json.dumps({"architectures": ["T5ForConditionalGeneration"]}))
    d = diagnose(folder)
    assert d.features["generative"] == 1.0 and d.features["train_perplexity_final"] < 1.1
    assert d.features["val_loss_still_falling"] == 0.0
    assert not d.fired("overfit-capacity", active_only=False)


def test_side_files_that_are_valid_json_but_not_objects_are_ignored(tmp_path):
    folder = trainer_state(tmp_path, train=exp_decay(L10, 0.2, 4), val=exp_decay(1.5, 0.3, 3), classes=None,
                           window_mean=True)
    (folder / "config.json").write_text("[1, 2]")
    (folder / "adapter_config.json").write_text('"lora"')
    run = load_run(folder)
    assert "task" not in run.facts and run.facts["n_classes"].value == 10


# ---- fold D (bench/results/diagnose_external_notes.md): each rule change with its near misses -------------

LLM_LORA = {"task_type": "CAUSAL_LM", "r": 16, "lora_alpha": 32}
# train -20%, val -2.8%, best at the end but most of its fall in the first half (not the steady slow fall that reads
# lr-too-small at any lr): only the lr prior says the step is small
SLOW_LLM = {"train": exp_decay(3.4, 2.65, 3), "val": exp_decay(2.84, 2.70, 6)}


@pytest.mark.parametrize("lr, adapter, learned, verdict", [
    (5e-5, LLM_LORA, False, "lr-too-small"),  # below LoRA's usual range and learned little: the step is too small
    (1.15e-4, LLM_LORA, False, None),  # just inside LoRA's range (1.04e-4 at the first eval): no lr evidence
    (5e-5, None, False, None),  # full fine-tuning (no adapter): 5e-5 is a usual full fine-tuning lr
    (5e-5, {"task_type": "CAUSAL_LM", "peft_type": "PROMPT_TUNING"}, False, None),  # another peft method
    (5e-5, LLM_LORA, True, None),  # the same lr, but the train loss fell 70%: it learned (joo9810/hori)
])
def test_a_lora_run_below_loras_lr_range_that_learned_little_is_lr_too_small(tmp_path, lr, adapter, learned, verdict):
    curves = {"train": exp_decay(3.4, 0.9, 3), "val": exp_decay(1.1, 0.95, 2)} if learned else SLOW_LLM
    folder = trainer_state(tmp_path, **curves, lr=lr, classes=None, n_val=None, adapter=adapter)
    if adapter is None:
        (folder / "config.json").write_text(json.dumps({"architectures": ["LlamaForCausalLM"]}))
    d = diagnose(folder)
    assert d.features["generative"] == 1.0
    assert d.features["lora"] == (1.0 if adapter and "peft_type" not in adapter else None)
    if verdict:
        assert d.verdict == verdict, [(f.rule_id, f.suppressed_by) for f in d.findings]
    else:
        assert not d.fired("lr-too-small", active_only=False), [(f.rule_id, f.suppressed_by) for f in d.findings]


@pytest.mark.parametrize("turn, overfit", [(0.1, True), (0.4, False)])
def test_a_train_loss_that_fell_after_the_val_loss_turned_and_then_went_flat_is_overfit(tmp_path, turn, overfit):
    # al-Reza89 (fold D, BART): the val loss is lowest at the first eval and climbs 17% while the train loss falls
    # 0.33 -> 0.24 until 45% of the run and is level after, so its second half says nothing; all of its fall came
    # after the val loss turned. Near miss: the val loss turns at 40%, when two thirds of the fall are done (the
    # gap widened on the val side only: no sign that the model fitted its training rows meanwhile)
    folder = trainer_state(tmp_path, train=lambda f: 0.33 - 0.09 * min(f, 0.45) / 0.45, classes=None, n_val=None,
                           val=lambda f: 0.41 + 0.07 * abs(f - turn) / (1 - turn))
    (folder / "config.json").write_text(json.dumps({"architectures": ["BartForConditionalGeneration"]}))
    d = diagnose(folder)
    assert d.features["train_loss_late_drop"] < 0.1 and d.features["val_loss_rise_noise"] > 2
    assert (d.features["train_loss_fall_after_val_min"] >= 0.5) == overfit
    assert d.fired("overfit-capacity", active_only=False) == overfit, [(f.rule_id, f.suppressed_by) for f in d.findings]
    assert not d.fired("healthy", active_only=False)


@pytest.mark.parametrize("val_start, task, rate, lr, healthy", [
    (1.36, "CAUSAL_LM", 4, 2e-4, True),  # val loss -11%, train loss -10%: a language model learned and converged (imyu7)
    # the val loss fell 8.9%, under healthy_val_loss_drop_min, but converged (0.3% left, 1.2 noise units): not a slow
    # fall still going, so lr-too-small's both-losses-short route stays off and the fall beyond its noise reads healthy
    (1.31, "CAUSAL_LM", 4, 2e-4, True),
    # near miss: the same falls still going at the end (6.5% left) on a LoRA adapter below LoRA's usual lr: lr-too-small
    (1.31, "CAUSAL_LM", 0.8, 5e-5, False),
    # ...but at 2e-4, inside LoRA's usual range, a language model's slow fall is not too small a step (fold AI's
    # usadiqgriffin): the fall beyond its noise reads healthy
    (1.31, "CAUSAL_LM", 0.8, 2e-4, True),
    (1.36, "SEQ_CLS", 4, 2e-4, False),  # the same curves from a classifier: a fresh head's loss falls more than 30%
])
def test_a_language_model_is_healthy_on_its_val_loss_without_a_classifiers_train_loss_fall(tmp_path, val_start, task,
                                                                                          rate, lr, healthy):
    folder = trainer_state(tmp_path, train=exp_decay(1.30, 1.15, rate), val=exp_decay(val_start, 1.14, rate), lr=lr,
                           classes=None, n_val=None, adapter={"task_type": task, "r": 8, "lora_alpha": 16})
    d = diagnose(folder)
    assert d.features["train_loss_drop"] < 0.3
    assert (d.verdict == "healthy") == healthy, [(f.rule_id, f.suppressed_by) for f in d.findings]


# ---- fold E (bench/results/diagnose_external_notes.md): each rule change with its near misses -------------

def _kind(folder: Path, architecture: str) -> Path:
    (folder / "config.json").write_text(json.dumps({"architectures": [architecture]}))
    return folder


@pytest.mark.parametrize("val_end, flat_from, slow", [
    (4.62, 1.0, True),  # masked LM: train -13%, val -5% in a steady fall still going at the end (canine-model)
    (4.30, 1.0, False),  # near miss: the val loss fell 12%, beyond healthy_val_loss_drop_min: it learned
    (4.62, 0.15, False),  # near miss: the same falls made by 15% of the run, flat after: not a steady fall
])
def test_a_slow_steady_fall_of_both_losses_is_lr_too_small_for_any_kind_of_run(tmp_path, val_end, flat_from, slow):
    # no classes, no floor to measure the pace against: both losses fell less than a healthy run's, steadily
    def fall(start, end):
        return lambda f: start + (end - start) * min(f / flat_from, 1.0)

    folder = _kind(trainer_state(tmp_path, train=fall(4.63, 3.97), val=fall(4.9, val_end), classes=None,
                                 n_val=None, lr=5e-5), "BertForMaskedLM")
    d = diagnose(folder)
    assert d.features["classifier"] is None and d.features["train_loss_drop"] < 0.3
    assert d.fired("lr-too-small", active_only=False) == slow, [(f.rule_id, f.suppressed_by) for f in d.findings]
    if slow:
        assert d.verdict == "lr-too-small"


@pytest.mark.parametrize("val_fall, zigzag, healthy", [
    (0.09, False, True),  # LLM LoRA SFT: train -45%, val -4% to a low at the end, far beyond its noise (Tanya-garg10)
    (0.004, False, False),  # near miss: the val loss fell 0.3%, inside its noise floor: no fall beyond noise
    (0.09, True, False),  # near miss: a val loss that moves up a third of the time did not improve steadily
])
def test_a_val_loss_that_fell_beyond_its_noise_and_held_is_healthy_for_any_kind_of_run(tmp_path, val_fall, zigzag,
                                                                                       healthy):
    def val(f):
        return exp_decay(1.30, 1.30 - val_fall, 5)(f) + (0.03 if zigzag and round(f * 10) % 3 == 1 else 0.0)

    folder = trainer_state(tmp_path, train=exp_decay(1.9, 1.0, 3), val=val, classes=None, n_val=None, lr=2e-4,
                           adapter={"task_type": "CAUSAL_LM", "r": 8, "lora_alpha": 16})
    d = diagnose(folder)
    assert d.features["val_loss_drop"] < 0.1 and d.features["train_loss_drop"] >= 0.3
    assert (d.features["val_loss_drop_noise"] >= 2) == (val_fall > 0.01)
    assert (d.verdict == "healthy") == healthy, [(f.rule_id, f.suppressed_by) for f in d.findings]
    assert not d.fired("overfit-capacity", active_only=False)


@pytest.mark.parametrize("train_end, slow", [
    (0.74, True),  # 5-class classifier: train loss -25%, far from a tenth of its start, steady: small steps
    (0.57, False),  # near miss: -39%, more than a healthy run loses, still falling with the metric (Kalapa2023)
])
def test_a_classifier_is_slow_only_while_it_has_lost_less_than_a_healthy_runs_share(tmp_path, train_end, slow):
    def train(f):  # a fast first fall, then a slow steady one
        return 0.98 - (0.98 - train_end - 0.06) * f / 0.15 if f < 0.15 else train_end + 0.06 * (1 - f) / 0.85

    d = diagnose(trainer_state(tmp_path, train=train,
                               val=lambda f: 0.91 - 0.06 * f, metric=lambda f: 0.55 + 0.06 * f, classes=5,
                               n_val=4000, lr=2e-5))
    assert d.features["classifier"] == 1.0 and d.features["train_loss_runs_to_fit"] >= 2
    assert d.fired("lr-too-small", active_only=False) == slow, [(f.rule_id, f.suppressed_by) for f in d.findings]
    assert d.verdict == ("lr-too-small" if slow else "undertrained")


@pytest.mark.parametrize("acc_start, val_end, collapse", [
    (0.89, 1.34, True),  # accuracy never above its first eval (0.89 -> 0.81), val loss ends 38% above its low: nothing
                         # learned at lr 2e-4 (MennatallaHussein)
    (0.80, 1.34, False),  # near miss: accuracy gains 0.09 (to 0.89): it learned, so the swings are not a collapse
    (0.89, 1.06, False),  # near miss: the val loss ends 9% above its low (under val_loss_rise_min): no swing up
])
def test_a_loss_pinned_at_chance_with_a_metric_that_never_gained_is_a_collapse_without_per_class_numbers(
        tmp_path, acc_start, val_end, collapse):
    # 3 classes, full fine-tuning at 2e-4: the train loss stays at 0.91-0.96 of ln 3 while the val loss swings up
    train = (1.00, 1.06, 0.98, 1.02)
    val = (1.03, 0.97, min(1.22, val_end), val_end)
    acc = (acc_start, acc_start + 0.09 if acc_start < 0.85 else 0.87, 0.87, 0.81 if acc_start > 0.85 else 0.89)
    d = diagnose(trainer_state(tmp_path, train=lambda f: train[min(3, int(f * 4 - 1e-9))], evals=4, steps=80,
                               log_every=20, val=lambda f: val[min(3, int(round(f * 4)) - 1)], classes=3, n_val=551,
                               metric=lambda f: acc[min(3, int(round(f * 4)) - 1)]))
    assert d.features["train_loss_vs_chance"] >= 0.8 and d.features["val_pred_top_share"] is None
    assert d.fired("lr-too-large", active_only=False) == collapse, [(f.rule_id, f.suppressed_by) for f in d.findings]
    assert d.verdict != "healthy"


# ---- fold F (bench/results/diagnose_external_notes.md): each rule change with its near misses -------------

def _sft_run(folder: Path, val: list[float], *, metric=None) -> Path:
    """A loss-only LoRA SFT run (peft task_type CAUSAL_LM) with one eval per value of `val`."""
    n = len(val)
    return trainer_state(folder, train=exp_decay(2.4, 1.5, 3), val=lambda f: val[min(n - 1, int(round(f * n)) - 1)],
                         evals=n, steps=20 * n, log_every=4, classes=None, n_val=None, lr=2e-4, metric=metric,
                         adapter={"task_type": "CAUSAL_LM", "r": 8, "lora_alpha": 16})


def _geometric(start: float, first_fall: float, q: float, n: int, jitter: float = 0.0) -> list[float]:
    """A val loss whose falls shrink by q per eval; `jitter` added to every other point of the second half."""
    out, fall = [start], first_fall
    for _ in range(n - 1):
        out.append(out[-1] - fall)
        fall *= q
    return [v + (jitter if i >= n // 2 - 1 and i % 2 == 0 else 0.0) for i, v in enumerate(out)]


@pytest.mark.parametrize("q, jitter, evals, metric, undertrained", [
    (0.68, 0.0, 10, False, False),  # falls shrinking 0.68x per eval: 1.7% of the loss left, under remaining_gain_min
    (0.69, 0.0, 10, False, True),  # near miss: 2.0% left (and 4.9 noise units): still worth more epochs
    (0.72, 0.020, 10, False, False),  # 3.3% left but only 1.5 noise units (jitter 0.02): inside the band, converged
    (0.72, 0.015, 10, False, True),  # near miss: jitter 0.015, the same 3.3% is 2.1 noise units: beyond the band
    # 8 evals, no tail to read a noise band from: convergence is claimed on remaining_gain_min alone (0.9% left)
    (0.60, 0.0, 8, False, False),
    (0.75, 0.0, 8, False, True),  # near miss: 8 evals, 7% left: still falling
    (0.60, 0.0, 10, True, True),  # near miss: a val metric still rising is what a run with a metric is read on
])
def test_a_loss_only_run_whose_remaining_gain_is_inside_the_noise_band_has_converged(tmp_path, q, jitter, evals,
                                                                                     metric, undertrained):
    # LLM SFT, the val loss setting a new low at every eval while its gains shrink (jacobdgm, Shivansh1996, hori)
    d = diagnose(_sft_run(tmp_path, _geometric(2.0, 0.2, q, evals, jitter),
                          # (f ** 1.1: a linear metric on this grid would sit on the lattice k/50, a val size of 50)
                          metric=(lambda f: 0.3 + 0.2 * f ** 1.1) if metric else None))
    assert d.features["val_loss_still_falling"] == 1.0
    left, left_noise = d.features["val_loss_remaining_gain"], d.features["val_loss_remaining_noise"]
    if not metric and evals >= 10:
        assert (left >= 0.02 and left_noise >= 2) == undertrained, (left, left_noise)
    assert (d.verdict == "undertrained") == undertrained, [(f.rule_id, f.suppressed_by) for f in d.findings]
    if not undertrained:
        assert d.verdict == "healthy"


def test_the_remaining_fall_averages_two_falls_per_window_and_matches_the_last_two_falls_on_short_curves():
    from loratune.features import remaining_fall
    assert remaining_fall([1.0, 0.9, 0.85]) == pytest.approx(0.05)  # q = 0.5: 0.05 x 0.5 / 0.5
    assert remaining_fall([1.0, 0.9]) == pytest.approx(0.3)  # one fall: three more like it
    assert remaining_fall([1.0, 1.1]) == 0.0
    # windows of two: falls 0.2, 0.2 then 0.05, 0.05 -> g1 0.2, g2 0.05, q = 0.5 per eval -> 0.05
    assert remaining_fall([1.0, 0.8, 0.6, 0.55, 0.5]) == pytest.approx(0.05)
    # a jittered last eval does not decide it: the last fall is a rise, the window's mean fall is not
    assert remaining_fall([1.0, 0.8, 0.6, 0.5, 0.52]) > 0


@pytest.mark.parametrize("nan_evals, nan_train, broken", [
    ("all", False, True),  # TRL SFT, eval_loss NaN at every eval, train loss 0.89 -> 0.05 finite (kcliu23)
    ("last", False, False),  # near miss: only the last eval is NaN, no training after it: the model's, diverged
    ("all", True, False),  # near miss: a train window is NaN too: the weights blew up, diverged
])
def test_a_nan_eval_loss_beside_a_finite_falling_train_loss_is_a_broken_evaluation(tmp_path, nan_evals, nan_train,
                                                                                 broken):
    folder = trainer_state(tmp_path, train=exp_decay(0.9, 0.05, 4), val=lambda f: 0.5, metric=lambda f: 0.8 + 0.05 * f,
                           classes=None, adapter={"task_type": "CAUSAL_LM", "r": 16, "lora_alpha": 32})
    state = json.loads((folder / "trainer_state.json").read_text())
    evals = [e for e in state["log_history"] if "eval_loss" in e]
    for e in (evals if nan_evals == "all" else evals[-1:]):
        e["eval_loss"] = float("nan")
    if nan_train:
        next(e for e in state["log_history"] if "loss" in e and e["step"] > 100)["loss"] = float("nan")
    (folder / "trainer_state.json").write_text(json.dumps(state))
    d = diagnose(folder)
    assert d.fired("eval-loss-broken") == broken
    assert (d.verdict == "diverged") != broken, [(f.rule_id, f.suppressed_by) for f in d.findings]
    if broken:
        assert d.features["nonfinite_values"] == 0 and d.features["val_loss_nonfinite_evals"] == 10
        assert d.features["val_loss_min"] is None and "evaluation is broken" in d.features.missing["val_loss_min"]


@pytest.mark.parametrize("converging, task, lr, slow", [
    # LLM SFT (LoRA below LoRA's usual lr), val loss -14% from the first eval, falling at an even pace to the end: slow
    (False, "CAUSAL_LM", 5e-5, True),
    (True, "CAUSAL_LM", 5e-5, False),  # near miss: -12%, its falls shrinking to nothing by the end (wstern1234)
    (False, "CAUSAL_LM", 2e-4, False),  # near miss: the even fall at 2e-4, inside LoRA's usual range: not the step
    (True, "SEQ_CLS", 2e-4, True),  # near miss: the converging curve of a classifier, 30% short of a fresh head's fall
])
def test_a_language_models_slow_fall_from_the_start_is_lr_too_small_only_while_it_is_still_going(tmp_path, converging,
                                                                                                 task, lr, slow):
    # 25 evals, the first at 4% of the run: the fall from the start is measured; train loss -25%, under a classifier's
    # healthy share, val loss -12..14%, over healthy_val_loss_drop_min, so only the fall-from-the-start route can fire
    def val(f):
        # converging: an even pace in learning-rate time, so its falls shrink to nothing as the linear schedule ends
        return 1.40 - 0.20 * ((2 * f - f * f) if converging else f)

    folder = trainer_state(tmp_path, train=lambda f: 2.0 - 0.5 * f, val=val, evals=25, steps=500, classes=None,
                           n_val=None, lr=lr, adapter={"task_type": task, "r": 8, "lora_alpha": 16})
    d = diagnose(folder)
    assert d.features["first_eval_fraction"] <= 0.05 and 0.1 <= d.features["val_loss_drop"] < 0.3
    assert (d.features["val_loss_remaining_gain"] >= 0.02) != converging
    assert d.fired("lr-too-small", active_only=False) == slow, [(f.rule_id, f.suppressed_by) for f in d.findings]


# ---- fold G (bench/results/diagnose_external_notes.md): each rule change with its near misses -------------

@pytest.mark.parametrize("late_slope, undertrained", [
    (0.11, False),  # accuracy +3.7 pt over the last third (1.9 SE at n=400) while the val loss has 0.8% left: converged
    (0.12, True),  # near miss: +4.0 pt (2.1 SE): the metric's rise is beyond its band, the run was still improving
])
def test_a_metric_creeping_inside_its_noise_band_while_the_val_loss_has_converged_is_not_undertrained(
        tmp_path, late_slope, undertrained):
    # a classifier, 12 evals, val loss converging geometrically (rdavidm42: +1 pt in the last third of 30 epochs)
    d = diagnose(trainer_state(tmp_path, train=exp_decay(2.3, 0.1, 3), val=exp_decay(2.3, 0.3, 7),
                               metric=lambda f: 0.70 + late_slope * f, evals=12, steps=240, n_val=400))
    assert d.features["val_loss_remaining_gain"] < 0.02 and d.features["still_improving"] == 1.0
    se = d.features["val_metric_late_gain_se"]
    assert (se >= 2.0) == undertrained and 1.8 < se < 2.2, se
    assert (d.verdict == "undertrained") == undertrained, [(f.rule_id, f.suppressed_by) for f in d.findings]
    if not undertrained:
        assert d.verdict == "healthy"


@pytest.mark.parametrize("drop, late, task, healthy", [
    (0.28, 0.0, None, False),  # a classifier's train loss -28% in the first 15%, then pinned flat: not healthy
    (0.32, 0.0, None, True),  # near miss: -32%, a healthy run's share (healthy_loss_drop_min), then flat
    (0.28, 0.01, None, True),  # near miss: -28% but still falling over the second half
    (0.28, 0.0, "CAUSAL_LM", True),  # near miss: a language model's loss has an entropy floor to settle on
])
def test_a_classifier_loss_pinned_high_and_flat_is_not_healthy_on_its_val_loss_alone(tmp_path, drop, late, task,
                                                                                   healthy):
    # Satya-Check (G): a BERT full fine-tune pinned at the class prior's entropy from 10% of the run on, eval equal;
    # the val loss fell 5% (under healthy_val_loss_drop_min) but far beyond its noise: only route 2 of healthy applies
    x = drop * 0.70 / (5 / 6 + drop / 6)  # the first log (2.5% in) sits a sixth of the way down the fall
    d = diagnose(trainer_state(tmp_path, train=lambda f: 0.70 - x * min(f / 0.15, 1.0) - late * max(0.0, f - 0.15),
                               val=lambda f: 0.56 - 0.04 * min(f / 0.3, 1.0), evals=10, steps=200, n_val=None,
                               classes=None if task else 2,
                               adapter={"task_type": task, "r": 8, "lora_alpha": 16} if task else None))
    assert d.features["val_loss_drop"] < 0.1 and d.features["val_loss_drop_noise"] >= 2
    assert (d.features["train_loss_drop"] >= 0.3 or d.features["train_loss_late_drop"] > 0) == (healthy and not task)
    assert d.fired("healthy", active_only=False) == healthy, [(f.rule_id, f.suppressed_by) for f in d.findings]
    assert (d.verdict == "healthy") == healthy


@pytest.mark.parametrize("low_at, spike_at, verdict", [
    (1.0, 0.08, "overfit-capacity"),  # a train-loss spike before the val loss turned, then a fall to the end
    (0.88, 0.08, "overfit-capacity"),  # its (smoothed) low at 92% of the run: at its low at the end, never climbed back
    # low at 88%, then creeping up; or the same spike after the val loss's minimum: with most of the train loss's fall
    # made after the val loss turned, the fit still widened the gap (the fold-T round: real runs of this shape were
    # all overfit by both reviews, KarlsonAV among them)
    (0.85, 0.08, "overfit-capacity"),
    (1.0, 0.48, "overfit-capacity"),
    (0.2, 0.48, "lr-too-large"),  # near miss: the fall done when the val loss turned, then the spike and a creep
])
def test_a_train_loss_falling_to_its_low_at_the_end_through_a_spike_while_the_val_loss_rises_is_overfit(
        tmp_path, low_at, spike_at, verdict):
    # CurseARealSword (G): a per-step train log of a tiny QA set, a bump of 26% of the start in the first epoch, then a
    # fall to a fifth of its start while the val loss rose 55x its jitter from 20% of the run
    def train(f):
        return 0.72 - 0.57 * min(f, low_at) + 0.05 * max(0.0, f - low_at) + (0.35 if spike_at <= f < spike_at + 0.02
                                                                               else 0.0)

    def val(f):
        return 1.0 - 0.2 * f if f <= 0.2 else 0.96 + 0.6 * (f - 0.2)

    d = diagnose(trainer_state(tmp_path, train=train, val=val, evals=50, steps=500, classes=None, n_val=None,
                               adapter={"task_type": "CAUSAL_LM", "r": 8, "lora_alpha": 16}))
    assert d.features["train_loss_max_rise"] >= 0.15 and d.features["val_loss_rise_noise"] >= 2
    assert (d.features["train_loss_min_fraction"] >= 0.9) == (low_at > 0.85)
    assert (d.features["train_loss_rise_after_val_min"] >= 0.15) == (spike_at > 0.2)
    assert (d.features["train_loss_fall_after_val_min"] >= 0.5) == (low_at > 0.2)
    assert d.verdict == verdict, [(f.rule_id, f.suppressed_by) for f in d.findings]


@pytest.mark.parametrize("periodic_runtime, finished", [
    (True, True),  # newer Trainer versions: train_runtime in every periodic log beside its loss (l13030631144, G)
    (True, False),  # ...and a run that died before the end-of-training entry is still partial
    (False, True),  # near miss: the classic log, train_runtime only in the summary (no `loss`): not a train log
])
def test_periodic_train_logs_carrying_train_runtime_keep_their_loss(tmp_path, periodic_runtime, finished):
    folder = trainer_state(tmp_path, train=exp_decay(1.7, 1.3, 2), val=exp_decay(1.6, 1.4, 2), classes=None,
                           finished=finished, adapter={"task_type": "CAUSAL_LM", "r": 8, "lora_alpha": 16})
    state = json.loads((folder / "trainer_state.json").read_text())
    for i, e in enumerate(state["log_history"]):
        if periodic_runtime and "loss" in e:
            e.update(train_runtime=3.0 * i, train_tokens_per_second=2400.0)
    (folder / "trainer_state.json").write_text(json.dumps(state))
    run = load_run(folder)
    losses = [p["train/loss"] for p in run.points if "train/loss" in p]
    assert len(losses) == 10 and losses[0] > losses[-1]  # one window per eval, the summary's train_loss in none
    assert bool(run.meta.get("partial")) != finished
    assert diagnose(folder).features["train_loss_start"] == pytest.approx(exp_decay(1.7, 1.3, 2)(5 / 200))


@pytest.mark.parametrize("last, undertrained", [
    (1.705, False),  # 4 evals, the last +0.005 above the minimum: the fall stopped (arminwitte, G), converged
    # a new low by 0.005 after falls of 0.2 and 0.1: under remaining_gain_min left, converged as a long curve with that
    # little left is (fold M's EfeSelamet: 7 evals, falls -0.11 ... -0.011, -0.0005; both reviews: healthy)
    (1.695, False),
    (1.65, True),  # near miss: falls 0.2, 0.1, 0.05: 3% of the loss left at that pace, still worth more epochs
])
def test_a_short_curve_whose_last_fall_is_no_fall_is_not_undertrained(tmp_path, last, undertrained):
    d = diagnose(_sft_run(tmp_path, [2.0, 1.8, 1.7, last]))
    assert d.features["n_eval_points"] == 4 and d.features["still_improving"] == 1.0
    assert (d.features["val_loss_remaining_gain"] >= 0.02) == undertrained
    assert (d.verdict == "undertrained") == undertrained, [(f.rule_id, f.suppressed_by) for f in d.findings]
    if not undertrained:
        assert d.verdict == "healthy"


@pytest.mark.parametrize("end, undertrained", [
    (0.0034, False),  # a classifier's val loss falling 10% at an even pace to 0.0034 nats: error <= 0.49%, nothing left
    (0.0036, True),  # near miss: the same fall ending at 0.0036 nats (error bound 0.52%): still worth more epochs
])
def test_a_val_loss_at_zero_has_nothing_left_to_gain_however_steady_its_relative_fall(tmp_path, end, undertrained):
    # MosheOfer1 (G): 0.0033 -> 0.0030 over 7 evals, tiny new lows as the lr decays; loss-only, 7 evals
    d = diagnose(trainer_state(tmp_path, train=exp_decay(0.7, 0.005, 4), val=lambda f: end + 0.0004 * (1 - f),
                               evals=7, steps=210, classes=2, n_val=1300, log_every=5))
    assert d.features["val_loss_still_falling"] == 1.0 and d.features["val_loss_remaining_gain"] >= 0.02
    assert (d.verdict == "undertrained") == undertrained, [(f.rule_id, f.suppressed_by) for f in d.findings]
    if not undertrained:
        assert d.verdict == "healthy"


@pytest.mark.parametrize("train_flat_from, overfit", [
    (1.0, True),  # a classifier's train loss still falling over the second half while its val loss rises 17%: overfit
    (0.5, False),  # near miss: the train loss flat over the second half: the gap did not widen on the train side
])
def test_a_classifier_whose_train_loss_keeps_falling_while_the_val_loss_rises_is_overfit(tmp_path, train_flat_from,
                                                                                      overfit):
    # the BERT third epoch (UgoLabbe, G; Ainna278, D): train loss at 40% of its start, not near zero, val minimum at 60%
    d = diagnose(trainer_state(tmp_path, train=lambda f: 2.3 - 2.6 * min(f, train_flat_from) if train_flat_from < 1
                               else 2.3 - 1.3 * f, val=lambda f: 1.5 - 0.5 * f if f <= 0.6 else 1.2 + 0.5 * (f - 0.6),
                               evals=10, steps=200, n_val=None))
    assert d.features["train_loss_final_over_start"] > 0.25 and d.features["val_loss_min_fraction"] > 0.5
    assert d.features["val_loss_rise"] >= 0.1 and d.features["val_loss_rise_noise"] >= 2
    assert (d.features["train_loss_late_drop"] >= 0.1) == overfit
    assert d.fired("overfit-capacity", active_only=False) == overfit, [(f.rule_id, f.suppressed_by) for f in d.findings]
    if overfit:
        assert d.verdict == "overfit-capacity"


@pytest.mark.parametrize("max_steps, undertrained", [
    (200, True),  # 3 evals, the val loss at a new low each time, stopped at 30% of max_steps (amerob, F)
    (109, False),  # near miss: the same curve at 55% of its plan: the shrinking falls (1.6% left) read as converging
])
def test_a_short_run_stopped_before_half_its_plan_while_still_falling_is_undertrained(tmp_path, max_steps,
                                                                                     undertrained):
    val = [0.974, 0.928, 0.909]
    folder = trainer_state(tmp_path, train=exp_decay(1.4, 0.85, 3), val=lambda f: val[int(round(f * 3)) - 1], evals=3,
                           steps=60, log_every=4, classes=None, n_val=None,
                           adapter={"task_type": "CAUSAL_LM", "r": 8, "lora_alpha": 16})
    state = json.loads((folder / "trainer_state.json").read_text())
    state["max_steps"] = max_steps
    (folder / "trainer_state.json").write_text(json.dumps(state))
    d = diagnose(folder)
    assert d.features["val_loss_remaining_gain"] < 0.02 and d.features["val_loss_min_fraction"] == 1.0
    assert d.features["plan_done_fraction"] == pytest.approx(60 / max_steps)
    assert (d.verdict == "undertrained") == undertrained, [(f.rule_id, f.suppressed_by) for f in d.findings]


@pytest.mark.parametrize("first, healthy", [
    (0.0514, False),  # a loss-only LLM run: val -84% to its minimum at 1.9 SE, then 2x it (CoderJzy, H): not shown healthy
    (0.0540, True),  # near miss: the same curve from 0.054, a fall of 2.04 SE: beyond the band, healthy
])
def test_a_loss_only_run_is_healthy_only_when_its_val_loss_fall_clears_the_noise_band(tmp_path, first, healthy):
    d = diagnose(_sft_run(tmp_path, [first, 0.0082, 0.0106, 0.0393, 0.0213, 0.0168, 0.0162]))
    assert d.features["val_metric_logged"] == 0.0 and d.features["val_loss_drop"] >= 0.1
    assert d.features["val_loss_rise_noise"] < 2 and d.features["val_loss_rise"] >= 0.1
    assert (d.features["val_loss_drop_noise"] >= 2) == healthy
    assert d.fired("healthy", active_only=False) == healthy, [(f.rule_id, f.suppressed_by) for f in d.findings]
    # either way every eval after the minimum stays >= 29% above it on a 7-eval curve (val_loss_rise_held): overfit,
    # CoderJzy's label (since fold M's round; the band alone left it inconclusive)
    assert d.features["val_loss_rise_held"] >= 0.1 and d.verdict == "overfit-capacity"


@pytest.mark.parametrize("best, undertrained", [
    (0.996, False),  # accuracy rising steadily to 0.996 (0.4 point left): nothing left that counts (kmanoj845, H)
    (0.994, True),  # near miss: the same rise ending at 0.994 (0.6 point left): still worth more epochs
])
def test_a_val_metric_within_half_a_point_of_its_ceiling_is_not_undertrained(tmp_path, best, undertrained):
    d = diagnose(trainer_state(tmp_path, train=exp_decay(2.3, 0.05, 4), val=lambda f: 0.2 - 0.15 * f,
                               metric=lambda f: best - 0.05 * (1 - f), evals=8, steps=160, n_val=20000))
    assert d.features["val_metric_best"] == pytest.approx(best)
    assert d.features["val_metric_late_gain_se"] >= 2 and d.features["val_loss_final"] > 0.0035
    assert (d.verdict == "undertrained") == undertrained, [(f.rule_id, f.suppressed_by) for f in d.findings]
    if not undertrained:
        assert d.verdict == "healthy"


@pytest.mark.parametrize("f1_last, metric_key", [
    (0.0, "val/accuracy"),  # entity F1 exactly 0.0 at every eval beside a rising accuracy: the accuracy is read
    (0.012, "val/macro_f1"),  # near miss: the F1 moved once (0 -> 0.012): it is the metric, as it always was
])
def test_a_val_metric_stuck_at_one_value_gives_way_to_the_next_that_moved(tmp_path, f1_last, metric_key):
    folder = trainer_state(tmp_path, train=exp_decay(2.3, 0.3, 3), val=exp_decay(1.5, 1.0, 3),
                           metric=lambda f: 0.5 + 0.2 * f, evals=5, steps=100, n_val=2000)
    state = json.loads((folder / "trainer_state.json").read_text())
    evals = [e for e in state["log_history"] if "eval_loss" in e]
    for i, e in enumerate(evals):
        e["eval_f1"] = f1_last if i == len(evals) - 1 else 0.0
    (folder / "trainer_state.json").write_text(json.dumps(state))
    d = diagnose(folder)
    assert d.features.details["val_metric"] == metric_key
    assert d.features["val_metric_best"] == pytest.approx(0.7 if metric_key == "val/accuracy" else f1_last)


@pytest.mark.parametrize("f1_best, overfit", [
    (0.04, False),  # entity F1 never above 0.04 while the train loss races to ~0 and the val loss rises: collapse
    (0.06, True),  # near miss: the F1 reached 0.06 (it learned something) and then the val loss rose: overfit
])
def test_a_run_whose_val_metric_never_rose_off_zero_is_not_overfit(tmp_path, f1_best, overfit):
    # darekpe79 (H): NER, F1 0.000, 0.000, 0.012, train loss 1.47 -> 0.025, val loss +58% from its first eval
    d = diagnose(trainer_state(tmp_path, train=exp_decay(1.5, 0.02, 8), val=lambda f: 0.05 + 0.04 * f,
                               metric=lambda f: f1_best * f, evals=5, steps=100, n_val=2000, classes=17))
    assert d.features["val_loss_rise"] >= 0.1 and d.features["val_loss_rise_noise"] >= 2
    assert d.features["val_metric_best"] == pytest.approx(f1_best)
    assert (d.verdict == "overfit-capacity") == overfit, [(f.rule_id, f.suppressed_by) for f in d.findings]


# ---- fold I (bench/results/diagnose_external_notes.md): each rule change with its near misses -------------

@pytest.mark.parametrize("rise, turn, late, task, overfit", [
    (0.039, 0.21, 0.11, "CAUSAL_LM", True),  # LM: val +1.8% from a minimum at 21%, 6.3 noise units, train -6% late (Kyzu07)
    (0.016, 0.21, 0.11, "CAUSAL_LM", True),  # a rise of 0.7% that still clears the band (2.5 noise units): overfit
    (0.012, 0.21, 0.11, "CAUSAL_LM", False),  # near miss: +0.5%, 1.9 noise units, inside rise_noise_min's band: a tie
    (0.039, 0.45, 0.11, "CAUSAL_LM", True),  # the val loss turned at 43% of the run: in the first half
    (0.039, 0.55, 0.11, "CAUSAL_LM", False),  # near miss: turned at 57%, after early_turn_fraction_max
    (0.039, 0.21, 0.03, "CAUSAL_LM", True),  # the train loss fell 2.2% over the second half: still fitting
    (0.039, 0.21, 0.02, "CAUSAL_LM", False),  # near miss: 1.7%, under lm_late_fall_min: level, no widening gap
    (0.039, 0.21, 0.11, "SEQ_CLS", False),  # near miss: a classifier's +1.8% is under val_loss_rise_min (no floor)
])
def test_a_language_models_val_loss_rising_beyond_its_noise_from_an_early_minimum_is_overfit(
        tmp_path, rise, turn, late, task, overfit):
    # Bhattars1, Kyzu07 (I), P-Zande (C): ~2-nat losses above an entropy floor; a rise of 1-2% is 3-7 noise units
    def val(f):
        base = 2.056 - 0.026 * (f / turn) if f <= turn else 2.030 + rise * (f - turn) / (1 - turn)
        return base + (0.002 if round(f * 14) % 2 else 0.0)

    fall = exp_decay(2.57, 1.9, 8)
    d = diagnose(trainer_state(tmp_path, train=lambda f: fall(f) - late * max(0.0, f - 0.5) / 0.5, val=val, evals=14,
                               steps=280, log_every=4, classes=None, n_val=None, lr=5e-5,
                               adapter={"task_type": task, "r": 8, "lora_alpha": 16}))
    assert d.features["val_loss_rise"] < 0.1 and d.features["train_loss_late_drop"] < 0.1
    assert d.features["train_loss_fall_after_val_min"] < 0.5
    assert (d.features["val_loss_rise_noise"] >= 2) == (rise >= 0.016)
    assert (d.features["train_loss_late_drop"] >= 0.02) == (late >= 0.03)
    assert (d.verdict == "overfit-capacity") == overfit, [(f.rule_id, f.suppressed_by) for f in d.findings]
    if not overfit:
        assert not d.fired("overfit-capacity", active_only=False)


# ---- fold AU: a language model's val loss that turned after the first half and rose at every later eval ------------

@pytest.mark.parametrize("shape, dip, task, overfit", [
    ("front", False, "CAUSAL_LM", True),  # 7 rises in a row, the lowest later eval 2.6 noise units above the minimum
    ("front", True, "CAUSAL_LM", False),  # near miss: one later eval dips back near the minimum: not steady
    ("linear", False, "CAUSAL_LM", False),  # near miss: steady, but the first rise is inside the band (1.1 units)
    ("front", False, "SEQ_CLS", False),  # near miss: a classifier's +2% is under val_loss_rise_small_min (no floor)
])
def test_a_language_models_val_loss_rising_at_every_eval_after_a_late_minimum_beyond_its_noise_is_overfit(
        tmp_path, shape, dip, task, overfit):
    # zenloger (AU): Qwen3-0.6B LoRA, minimum at 53% of the run, then eight rises to +2.3% at 8.1 noise units
    turn = 0.6

    def val(f):
        up = (f - turn) / (1 - turn)
        base = 2.056 - 0.026 * (f / turn) if f <= turn else 2.030 + 0.04 * (up ** 0.5 if shape == "front" else up)
        if dip and abs(f - 0.85) < 0.04:
            base -= 0.02
        return base + (0.002 if round(f * 17) % 2 else 0.0)

    fall = exp_decay(2.57, 1.9, 8)
    d = diagnose(trainer_state(tmp_path, train=lambda f: fall(f) - 0.2 * max(0.0, f - 0.5) / 0.5, val=val, evals=17,
                               steps=340, log_every=4, classes=None, n_val=None, lr=5e-5,
                               adapter={"task_type": task, "r": 8, "lora_alpha": 16}))
    assert d.features["val_loss_min_fraction"] > 0.5 and d.features["val_loss_rise"] < 0.03
    assert d.features["train_loss_late_drop"] >= 0.1 and d.features["val_loss_rise_noise"] >= 2
    assert (d.features["val_loss_rise_steady"] == 1) == (not dip)
    assert (d.features["val_loss_rise_held_noise"] >= 2) == (shape == "front" and not dip)
    assert (d.verdict == "overfit-capacity") == overfit, [(f.rule_id, f.suppressed_by) for f in d.findings]
    if not overfit:
        assert not d.fired("overfit-capacity", active_only=False)


@pytest.mark.parametrize("swing, share_max, healthy", [
    (0.0, 0.1, True),  # 70 evals: -2.8% early, then level, +-0.003 jitter (raw eval-to-eval share 0.42): healthy
    (0.002, 0.2, True),  # a slow swing of 0.002 over three cycles: the block means move up 0.19 of the time
    (0.004, 0.3, False),  # near miss: a swing of 0.004: 0.26 of the block means' movement is up: not steady
])
def test_a_long_val_loss_that_settled_within_its_noise_is_steady_when_read_over_ten_block_means(tmp_path, swing,
                                                                                               share_max, healthy):
    # HenryECA (I): a Llama LoRA run, 70 evals on 50 rows; its jitter's moves add up with every eval, its fall does not
    def val(f):
        return (1.293 + 0.045 * math.exp(-f * 20) + (0.003 if round(f * 70) % 2 else 0.0)
                + swing * math.sin(2 * math.pi * 3 * f))

    folder = trainer_state(tmp_path, train=exp_decay(1.67, 1.3, 8), val=val, evals=70, steps=1400, log_every=10,
                           classes=None, n_val=None, adapter={"task_type": "CAUSAL_LM", "r": 8, "lora_alpha": 16})
    d = diagnose(folder)
    vals = [p["val/loss"] for p in load_run(folder).points if "val/loss" in p]
    raw_up = sum(max(b - a, 0.0) for a, b in zip(vals, vals[1:])) / sum(abs(b - a) for a, b in zip(vals, vals[1:]))
    assert raw_up > 0.4  # eval to eval, every one of these curves moves up two fifths of the time
    assert share_max - 0.1 <= d.features["val_loss_rise_share"] < share_max
    assert d.features["val_loss_drop_noise"] >= 2 and d.features["val_loss_rise_noise"] < 2
    assert (d.verdict == "healthy") == healthy, [(f.rule_id, f.suppressed_by) for f in d.findings]


def test_the_rise_share_block_means_keep_ten_points_or_fewer_as_logged():
    from loratune.features import RISE_SHARE_POINTS_MAX, _block_means
    assert RISE_SHARE_POINTS_MAX == 10
    assert _block_means([3.0, 1.0, 2.0], 10) == [3.0, 1.0, 2.0]
    assert _block_means([float(i) for i in range(10)], 10) == [float(i) for i in range(10)]
    means = _block_means([float(i) for i in range(70)], 10)
    assert means == [3.0 + 7 * k for k in range(10)]
    assert len(_block_means([1.0] * 23, 10)) == 10


_HEAVY_VAL = [0.3305, 0.3132, 0.3220, 0.3344]  # HeavY-Futhark (I): 4 epochs, BERT multi-label, 3,260 eval rows
# the same start, minimum and end, the third eval above the end: a rise that does not grow at each later eval
# (HeavY's own rises at both: a short curve's steady rise, overfit, as its reviewer labelled it)
_HEAVY_VAL_BACK = [0.3305, 0.3132, 0.3380, 0.3344]


@pytest.mark.parametrize("acc, val, healthy", [
    # exact match +4.1 points (5.3 SE) to its best at the end; val loss +6.8% inside its band: healthy
    ([0.230, 0.266, 0.256, 0.271], _HEAVY_VAL_BACK, True),
    ([0.230, 0.244, 0.240, 0.246], _HEAVY_VAL_BACK, True),  # +1.6 points, 2.1 SE: beyond the band
    # near miss of the metric route: +1.45 points, 1.9 SE, a tie with its start; on 4 evals the val loss's tie with
    # its minimum (+6.8%, inside its band) beside a fitting train loss reads healthy by the short-curve route instead
    ([0.230, 0.243, 0.239, 0.2445], _HEAVY_VAL_BACK, False),
    ([0.230, 0.266, 0.256, 0.2493], _HEAVY_VAL_BACK, False),  # near miss: ended 2.3 SE below its best: did not hold
    # 8 evals, the metric +5.3 SE; the val loss barely fell and ends +0.3% at 1.1 noise units: healthy
    ([0.230, 0.250, 0.262, 0.266, 0.262, 0.268, 0.266, 0.271],
     [0.3305, 0.3300, 0.3298, 0.3300, 0.3302, 0.3304, 0.3306, 0.3308], True),
    # near miss: the val loss ends +1.0% above its minimum at 3.4 noise units: it did not hold
    ([0.230, 0.250, 0.262, 0.266, 0.262, 0.268, 0.266, 0.271],
     [0.3305, 0.3300, 0.3298, 0.3302, 0.3310, 0.3316, 0.3322, 0.3330], False),
])
@pytest.mark.parametrize("train_end", [0.10, 0.33])  # near miss: the train loss down 28%, under healthy_loss_drop_min
def test_a_val_metric_that_gained_beyond_its_noise_and_held_is_healthy(tmp_path, acc, val, healthy, train_end):
    n = len(val)
    d = diagnose(trainer_state(tmp_path, train=exp_decay(0.48, train_end, 3), val=lambda f: val[round(f * n) - 1],
                               metric=lambda f: acc[round(f * n) - 1], evals=n, steps=20 * n, n_val=3260, classes=11))
    v = d.features
    assert v["val_metric_gain"] < 0.1 and v["val_loss_drop"] < 0.1 and v["val_loss_drop_noise"] < 2
    assert v["val_metric_gain_se"] == pytest.approx(v["val_metric_gain"] / v["val_metric_noise"])
    held = v["val_metric_final_drop_se"] < 2 and v["val_loss_rise_noise"] < 2
    assert (v["val_metric_gain_se"] >= 2 and held) == healthy
    assert (v["train_loss_drop"] >= 0.3) == (train_end < 0.3)
    short_tie = n < 10 and v["val_loss_rise_noise"] < 2 and v["val_loss_rise"] < 0.1 and v["val_metric_final_drop_se"] < 2
    healthy = (healthy or short_tie) and train_end < 0.3
    assert (d.verdict == "healthy") == healthy, [(f.rule_id, f.suppressed_by) for f in d.findings]


@pytest.mark.parametrize("rate, evals, slow", [
    (3.0, 20, False),  # LM, both losses short of a healthy share, the val fall run out: 1.4 noise units left: converged
    (2.5, 20, True),  # near miss: 2.3 noise units left: the slow fall is still going at the end: lr-too-small
    # 8 evals, under tail_noise_points_min: read on what is left of the loss at its recent pace instead of a band:
    (3.0, 8, False),  # 0.5% left: the fall has run out, converged (fold O's Areeb196)
    (1.0, 8, True),  # near miss: 2.9% left, beyond remaining_gain_min: still going, lr-too-small
])
def test_a_slow_fall_of_both_losses_is_lr_too_small_only_while_it_is_still_going_beyond_its_noise(tmp_path, rate,
                                                                                                  evals, slow):
    # ALLITi (F): GPT-2 medium, 36 evals, val -3.7% with 0.5 noise units left; hitsdiff (H), nesrinebentmessek (D)
    v = exp_decay(2.0, 1.86, rate)
    folder = _kind(trainer_state(tmp_path, train=exp_decay(2.2, 1.9, rate), evals=evals, steps=20 * evals,
                                 val=lambda f: v(f) + (0.0015 if round(f * evals) % 2 else 0.0), log_every=4,
                                 classes=None, n_val=None, lr=5e-5), "GPT2LMHeadModel")
    d = diagnose(folder)
    f = d.features
    assert f["train_loss_drop"] < 0.3 and f["val_loss_drop"] < 0.1
    assert (f["val_loss_remaining_gain"] < 0.02) == (rate >= 2.5)
    assert (f["val_loss_remaining_noise"] >= 2) == (rate < 3)
    assert d.fired("lr-too-small", active_only=False) == slow, [(x.rule_id, x.suppressed_by) for x in d.findings]
    assert d.verdict == ("lr-too-small" if slow else "healthy")


@pytest.mark.parametrize("config, task, classifier", [
    # ALLITi (F): a GPT-2 config with no architectures and one label (LABEL_0): no classes to read, HF's num_labels 1
    ({"model_type": "gpt2", "id2label": {"0": "LABEL_0"}}, "regression", None),
    ({"model_type": "gpt2", "num_labels": 1}, "regression", None),
    # near misses: two labels are a classifier's; an architecture that names the head decides
    ({"model_type": "gpt2", "id2label": {"0": "LABEL_0", "1": "LABEL_1"}}, None, 1.0),
    ({"model_type": "gpt2", "id2label": {"0": "LABEL_0"}, "architectures": ["GPT2LMHeadModel"]}, "causal-lm", None),
])
def test_a_config_naming_one_label_and_no_architecture_is_no_classifier(tmp_path, config, task, classifier):
    folder = trainer_state(tmp_path, train=exp_decay(2.3, 1.0, 3), val=exp_decay(2.2, 1.2, 3), classes=None, n_val=None)
    (folder / "config.json").write_text(json.dumps(config))
    h = load_run(folder)
    assert h.meta.get("task") == task
    d = diagnose(folder)
    assert d.features["classifier"] == classifier
    if task:
        assert d.features["n_classes"] is None and d.features["train_loss_vs_chance"] is None


_YANMINGK_ACC = [0.405, 0.385, 0.405, 0.405]  # yanmingk (J): DeBERTa-v2-xlarge, 3 classes, the same accuracy 3 of 4 evals


@pytest.mark.parametrize("acc, train_fall, lr, evals, collapsed", [
    (_YANMINGK_ACC, 0.0, 2e-5, 4, True),  # predictions frozen, train loss pinned at 0.95 x ln 3, a usual lr: collapse
    ([0.405, 0.385, 0.395, 0.405], 0.0, 2e-5, 4, False),  # near miss: one value at half the evals, not more
    (_YANMINGK_ACC, 0.03, 2e-5, 4, False),  # near miss: the train loss fell 3% (ends at 0.97 of its start): slow
    (_YANMINGK_ACC, 0.0, 0.96e-5, 4, False),  # near miss: peak lr 0.9e-5, under usual_lr_min: too small a step
    (_YANMINGK_ACC[1:], 0.0, 2e-5, 3, False),  # near miss: 3 evals (few_evals_max): a repeat is one comparison
])
def test_a_val_metric_frozen_at_one_value_with_the_train_loss_pinned_at_chance_is_a_collapse(
        tmp_path, acc, train_fall, lr, evals, collapsed):
    d = diagnose(trainer_state(tmp_path, train=lambda f: 0.95 * math.log(3) * (1 - train_fall * f),
                               val=lambda f: 1.09 - 0.02 * f, metric=lambda f: acc[round(f * evals) - 1],
                               evals=evals, steps=400 * evals, lr=lr, classes=3, n_val=400, log_every=100))
    f = d.features
    assert f["val_metric_repeat_share"] == max(acc.count(a) for a in acc) / len(acc)
    assert f["train_loss_vs_chance"] >= 0.8 and f["val_metric_gain"] < 0.05
    assert (f["train_loss_final_over_start"] >= 0.98) == (train_fall < 0.02)
    assert (f["peak_lr"] >= 1e-5) == (lr > 1e-5)  # the largest logged rate: step 100's, 0.94 x the set lr
    assert (d.verdict == "collapsed") == collapsed, [(x.rule_id, x.suppressed_by) for x in d.findings]


@pytest.mark.parametrize("lr, adapter, verdict", [
    # a LoRA adapter below lora_lr_floor (1e-4) whose predictions never moved took too small a step: lr x2, not /2
    (2e-5, {"r": 8, "lora_alpha": 16}, "lr-too-small"),
    (9e-5, {"r": 8, "lora_alpha": 16}, "lr-too-small"),
    (2.2e-4, {"r": 8, "lora_alpha": 16}, "collapsed"),  # near miss: inside LoRA's range (peak 2.1e-4): a collapse
    (2e-5, None, "collapsed"),  # near miss: no adapter_config.json: protocol 1's general floor (1e-5) applies
])
def test_a_lora_run_below_loras_lr_range_whose_predictions_never_moved_reads_too_small_not_collapsed(
        tmp_path, lr, adapter, verdict):
    d = diagnose(trainer_state(tmp_path, train=lambda f: 0.95 * math.log(3), val=lambda f: 1.09 - 0.02 * f,
                               metric=lambda f: _YANMINGK_ACC[round(f * 4) - 1], evals=4, steps=1600, lr=lr,
                               classes=3, n_val=400, log_every=100, adapter=adapter))
    assert d.verdict == verdict, [(x.rule_id, x.suppressed_by) for x in d.findings]
    assert d.features["lora_adapter"] == (adapter is not None)
    assert d.fired("collapsed", active_only=False) == (verdict == "collapsed")
    assert d.findings[0].moves[0] == ("learning_rate x2" if verdict == "lr-too-small" else "learning_rate /2")


_QUANT_VAL = {1: 0.652, 2: 0.657, 3: 0.625, 4: 0.620}  # TobyYang7 Quant-GPT (J): the 4th eval is dropped below


_FORMAT_FIRST = (lambda f: 0.6 + 5.6 * math.exp(-60 * f))  # 6.2 -> 0.6 before the first eval, level after


@pytest.mark.parametrize("last, plan, lr, train, slow", [
    # LoRA SFT at 3e-5: val -4.1% to a low at its last eval (75% of the steps), train level after its first eval
    (0.625, 1.0, 3e-5, _FORMAT_FIRST, True),
    (0.645, 1.0, 3e-5, _FORMAT_FIRST, False),  # near miss: the last eval -1.1%, under 2% of the loss: no new low
    (0.625, 0.45, 3e-5, _FORMAT_FIRST, False),  # near miss: stopped at 45% of its plan (plan_cut_max 0.5): cut
    (0.625, 1.0, 1.5e-4, _FORMAT_FIRST, False),  # near miss: a peak lr above lora_lr_floor: no lr prior to read
    # the train loss fell 28% after the first eval, short of healthy_loss_drop_min 0.3: the lr; near miss: 32%, learned
    (0.625, 1.0, 3e-5, (lambda f: 0.3 + 5.9 * math.exp(-60 * f) + 0.26 * (1 - f)), True),
    (0.625, 1.0, 3e-5, (lambda f: 0.3 + 5.9 * math.exp(-60 * f) + 0.32 * (1 - f)), False),
])
def test_a_language_model_lora_run_below_loras_lr_that_learned_little_reads_the_lr(tmp_path, last, plan, lr, train,
                                                                                   slow):
    val = {**_QUANT_VAL, 3: last}
    folder = trainer_state(tmp_path, train=train, val=lambda f: val[round(f * 4)],
                           evals=4, steps=1800, log_every=10, lr=lr, classes=None, n_val=390,
                           adapter={"task_type": "CAUSAL_LM", "r": 8, "lora_alpha": 16})
    state = json.loads((folder / "trainer_state.json").read_text())
    state["log_history"] = [e for e in state["log_history"] if not ("eval_loss" in e and e["step"] == 1800)]
    state["max_steps"] = round(1800 / plan)
    (folder / "trainer_state.json").write_text(json.dumps(state))
    d = diagnose(folder)
    f = d.features
    assert f["generative"] == 1 and f["lora"] == 1 and f["train_loss_drop"] > 0.8 and f["val_loss_drop"] < 0.1
    drop = f["train_loss_drop_after_first_eval"]
    assert drop < 0.01 if train is _FORMAT_FIRST else (0.27 < drop < 0.3 if slow else 0.3 <= drop < 0.33)
    assert f["val_loss_min_fraction"] < 0.9 and (f["val_loss_still_falling"] == 1) == (last < 0.63)
    assert (f["plan_done_fraction"] >= 0.5) == (plan == 1.0)
    assert d.fired("lr-too-small", active_only=False) == slow, [(x.rule_id, x.suppressed_by) for x in d.findings]
    assert (d.verdict == "lr-too-small") == slow


@pytest.mark.parametrize("train_end, val, undertrained", [
    # anonauthors123 (J): LoRA SFT, 3 evals, the val loss still falling to its last eval with 0.8 noise units (2.6%)
    # left, the train loss at 0.24 of its start: fitted, its short curve's remaining fall read against the band
    (0.85, exp_decay(0.9, 0.078, 6), False),
    (0.95, exp_decay(0.9, 0.078, 6), True),  # near miss: the train loss at 0.26 of its start: not fitted yet
    (0.85, exp_decay(0.30, 0.075, 3), True),  # near miss: 3.8 noise units (13%) left: still improving beyond the band
])
def test_a_short_curve_whose_train_loss_has_fitted_is_undertrained_only_beyond_the_noise(tmp_path, train_end, val,
                                                                                        undertrained):
    folder = _kind(trainer_state(tmp_path, train=exp_decay(4.2, train_end, 4), val=val, evals=3, steps=600,
                                 classes=None, n_val=None, lr=1e-4,
                                 adapter={"task_type": "CAUSAL_LM", "r": 8, "lora_alpha": 16}), "Qwen2ForCausalLM")
    d = diagnose(folder)
    f = d.features
    assert f["n_eval_points"] < 10 and f["val_loss_still_falling"] == 1 and f["val_loss_remaining_gain"] > 0.02
    assert (f["train_loss_final_over_start"] <= 0.25) == (train_end < 0.9)
    assert 0.22 < f["train_loss_final_over_start"] < 0.28
    assert (f["val_loss_remaining_noise"] >= 2) == (undertrained and train_end < 0.9)
    assert (d.verdict == "undertrained") == undertrained, [(x.rule_id, x.suppressed_by) for x in d.findings]
    assert d.verdict in ("undertrained", "healthy")


_TIMOTHY_VAL = [0.0716, 0.0710, 0.0693]  # timothymcgarvey (H): BERT NER, 3 epochs, eval n ~3,250


@pytest.mark.parametrize("acc, undertrained", [
    # the val loss still falling at its last eval (2.4 noise units, 7% left) while the val metric tied its best: a run
    # with a val metric is read on the metric's rise (protocol 5: real F1 gains), and it made none: converged
    ([0.913, 0.941, 0.941], False),
    ([0.913, 0.941, 0.960], True),  # near miss: the metric's last-third high +1.9 points (4.5 SE): still improving
    (None, True),  # near miss: the same losses with no val metric: read on the val loss, 2.4 noise units left
])
def test_a_run_with_a_val_metric_is_undertrained_on_the_metrics_rise_not_its_val_loss(tmp_path, acc, undertrained):
    d = diagnose(trainer_state(tmp_path, train=exp_decay(0.28, 0.02, 5), val=lambda f: _TIMOTHY_VAL[round(f * 3) - 1],
                               metric=(lambda f: acc[round(f * 3) - 1]) if acc else None, evals=3, steps=600,
                               classes=9, n_val=3250))
    f = d.features
    assert f["val_loss_still_falling"] == 1 and f["val_loss_remaining_noise"] >= 2
    assert f["val_loss_remaining_gain"] >= 0.02 and f["train_loss_final_over_start"] <= 0.25
    if acc:
        assert (f["val_metric_late_gain_se"] >= 2) == undertrained
    assert (d.verdict == "undertrained") == undertrained, [(x.rule_id, x.suppressed_by) for x in d.findings]


# ---- a generation run scored by ROUGE alone (no eval loss: the ChatGLM / GLM finetune demos, fold K) ----------

def rouge_state(folder: Path, *, rouge, evals: int = 20, steps: int = 100, n_val: int | None = 13,
                eval_loss=None, key: str = "eval_rouge-l", train=exp_decay(1.7, 0.01, 6)) -> Path:
    """A LoRA SFT trainer_state.json whose evals log `key` (and `eval_loss` only when given), train loss every 5
    steps, an adapter_config.json with task_type CAUSAL_LM."""
    folder.mkdir(parents=True, exist_ok=True)
    log = []
    every = steps // evals
    for s in range(5, steps + 1, 5):
        log.append({"step": s, "epoch": s / 6, "loss": train(s / steps), "learning_rate": 4.5e-4 * (1 - s / steps)})
    for i in range(evals):
        s = (i + 1) * every
        e = {"step": s, "epoch": s / 6, key: rouge(i)}
        if eval_loss is not None:
            e["eval_loss"] = eval_loss(i)
        if n_val:
            e.update(eval_runtime=n_val / 10, eval_samples_per_second=10.0)
        log.append(e)
    log.sort(key=lambda e: (e["step"], "loss" in e))
    log.append({"step": steps, "epoch": steps / 6, "train_runtime": 10.0, "train_loss": 0.3})
    (folder / "trainer_state.json").write_text(json.dumps({"global_step": steps, "max_steps": steps,
                                                           "log_history": log}))
    (folder / "adapter_config.json").write_text(json.dumps({"peft_type": "LORA", "task_type": "CAUSAL_LM",
                                                            "r": 8, "lora_alpha": 32}))
    return folder


@pytest.mark.parametrize("key, values, read", [
    ("eval_rouge-l", [12.9, 11.5, 5.1], [0.129, 0.115, 0.051]),  # the demos' 0-100 scale, read as a share
    ("eval_rougeL", [0.31, 0.33, 0.35], [0.31, 0.33, 0.35]),  # a 0..1 scale stands
])
def test_rouge_l_is_read_as_a_share_and_as_the_val_metric_of_a_generative_run(tmp_path, key, values, read):
    folder = rouge_state(tmp_path, rouge=lambda i: values[i], evals=3, key=key)
    run = load_run(folder)
    got = [p["val/rouge_l"] for p in run.points if "val/rouge_l" in p]
    assert got == pytest.approx(read)
    d = diagnose(folder)
    assert d.features["val_metric_logged"] == 1 and d.features["val_loss_logged"] == 0
    assert d.features["generative"] == 1 and d.features["val_metric_best"] == pytest.approx(max(read))


@pytest.mark.parametrize("wer, read, note", [
    ([98.0, 41.0, 30.5, 27.0], [0.02, 0.59, 0.695, 0.73], "0-100 scale"),  # the ASR examples' 100 x WER
    ([1.02, 0.41, 0.305, 0.27], [-0.02, 0.59, 0.695, 0.73], None),  # a share (an untrained model's can top 1)
])
def test_an_error_rate_is_read_as_its_complement_the_val_metric_of_a_generative_run(tmp_path, wer, read, note):
    folder = trainer_state(tmp_path / "asr", train=exp_decay(4.0, 0.3, 4), val=exp_decay(3.0, 0.5, 4),
                           metric=lambda f: 0.5, evals=4, classes=None, n_val=None)
    state = json.loads((folder / "trainer_state.json").read_text())
    evals = [e for e in state["log_history"] if "eval_accuracy" in e]
    for e, w in zip(evals, wer):
        e["eval_wer"] = w
        del e["eval_accuracy"]
    (folder / "trainer_state.json").write_text(json.dumps(state))
    run = load_run(folder)
    assert [p["val/word_accuracy"] for p in run.points if "val/word_accuracy" in p] == pytest.approx(read)
    assert [p["val/wer"] for p in run.points if "val/wer" in p] == pytest.approx(wer)  # the rate itself is kept
    assert any("val/wer is an error rate" in n and ((note in n) if note else "scale" not in n) for n in run.notes)
    d = diagnose(folder)
    assert d.features.details["val_metric"] == "val/word_accuracy"
    assert d.features["generative"] == 1 and d.features["val_metric_best"] == pytest.approx(0.73)


@pytest.mark.parametrize("drop, overfit", [(0.021, True), (0.019, False)])  # val_metric_drop_min 0.02
def test_a_run_scored_by_its_val_metric_alone_overfits_on_the_metrics_fall_from_an_early_best(tmp_path, drop,
                                                                                               overfit):
    # ROUGE-L best at the first eval, a smooth fall of `drop` to the end (jitter at its 0.005 floor: 4 noise units
    # and more), the train loss at 1% of its start: protocol 5b's metric reading, no val loss to confirm it
    d = diagnose(rouge_state(tmp_path, rouge=lambda i: 100 * (0.30 - drop * i / 19)))
    assert d.features["val_loss_logged"] == 0 and d.features["val_metric_final_drop_se"] >= 2
    assert d.features["val_metric_final_drop"] == pytest.approx(drop)
    assert d.fired("overfit-capacity") is overfit
    if overfit:
        assert d.verdict == "overfit-capacity"


def test_a_logged_val_loss_at_its_minimum_at_the_end_still_vetoes_the_metric_reading(tmp_path):
    # the same fall of the metric, but a val loss logged and falling to its low at the last eval: not overfit
    d = diagnose(rouge_state(tmp_path, rouge=lambda i: 100 * (0.30 - 0.03 * i / 19), eval_loss=lambda i: 2.0 - 0.02 * i))
    assert d.features["val_loss_logged"] == 1 and d.features["val_loss_min_fraction"] == 1.0
    assert d.features["val_metric_final_drop"] >= 0.02
    assert not d.fired("overfit-capacity", active_only=False)


@pytest.mark.parametrize("evals, n_val, bound", [(4, 50, True), (5, 50, False), (4, None, False)])
def test_a_short_rouge_curve_with_a_known_eval_size_is_held_against_the_bound_not_its_jitter(tmp_path, evals, n_val,
                                                                                              bound):
    vals = [0.6766, 0.6602, 0.6886, 0.7109, 0.7050][:evals]  # Wabbybabb0 (fold E) and one eval more
    d = diagnose(rouge_state(tmp_path, rouge=lambda i: 100 * vals[i], evals=evals, n_val=n_val, steps=100))
    q = (vals[-1] * 50 + 1) / 52
    if bound:
        assert d.features["val_metric_noise"] == pytest.approx(math.sqrt(q * (1 - q) / 50))
        assert not d.fired("undertrained", active_only=False)  # a 0.034 late gain is 0.5 of the bound's 0.064
    else:
        assert d.features["val_metric_noise"] == pytest.approx(curve_jitter(vals, floor=0.005))


# ---- a run that nothing marks as a classifier is not read as one (Facico, fold K: LLaMA-7B LoRA, only the state) ----

@pytest.mark.parametrize("classes, metric, log_every, classifier", [
    (None, None, 20, None),  # no side file, no metric, first log after step 10 (no class count read): a guess
    (10, None, 20, 1.0),  # config.json's id2label: a classifier
    (None, lambda f: 0.5 + 0.3 * f, 20, 1.0),  # a val accuracy logged
    (None, None, 5, 1.0),  # the first train loss at step 5 ~ ln(classes): a class count read from it
])
def test_the_classifier_flag_needs_something_that_says_so(tmp_path, classes, metric, log_every, classifier):
    folder = trainer_state(tmp_path, train=exp_decay(L10, 0.9, 6), val=exp_decay(2.0, 1.0, 6), metric=metric,
                           classes=classes, n_val=None, log_every=log_every, steps=400, evals=20)
    d = diagnose(folder)
    assert d.features["classifier"] == classifier
    if classifier is None:
        assert d.features.missing["classifier"].startswith("nothing says this run is a classifier")


@pytest.mark.parametrize("classes, underfit", [(None, False), (10, True)])
def test_a_plateau_at_a_share_of_its_start_is_no_classifier_underfit_without_a_classifier(tmp_path, classes,
                                                                                          underfit):
    # train 2.3 -> 0.44 of its start, flat over the second half, val loss plateaued early: with id2label the
    # classifier reading (start ~ ln(classes) as the reference) calls it underfit; with nothing saying it is a
    # classifier, 0.44 of an unknown start is no evidence of a high loss
    d = diagnose(trainer_state(tmp_path, train=exp_decay(L10, 0.44 * L10, 12), val=exp_decay(1.3, 1.04, 12),
                               classes=classes, n_val=None, log_every=20, steps=400, evals=20))
    assert d.features["train_loss_final_over_start"] >= 0.3 and d.features["train_loss_late_drop"] < 0.1
    assert d.fired("underfit-capacity", active_only=False) is underfit


def test_a_small_val_loss_rise_far_beyond_the_noise_while_the_train_loss_falls_is_overfit(tmp_path):
    # protocol 5b: the val loss passed its minimum and stays above it by more than the noise. A 3-10% rise counts
    # when it clears twice the band (rise_noise_strong_min) while the train loss still falls (fold L's Dekanenko)
    kw = dict(train=exp_decay(2.0, 0.5, 3), classes=None, n_val=None, evals=20)
    d = diagnose(trainer_state(tmp_path / "far", val=u_shape(1.0, 0.40, 0.6, 0.424), noise=0.002, **kw))
    f = d.features
    assert 0.03 <= f["val_loss_rise"] < 0.10 and f["val_loss_rise_noise"] >= 4 and f["train_loss_late_drop"] >= 0.1
    assert d.verdict == "overfit-capacity"
    # a 9.5% rise at 3.2 noise units: inside twice the band, and under the 10% floor
    d = diagnose(trainer_state(tmp_path / "near", val=u_shape(1.0, 0.40, 0.6, 0.424), noise=0.03, seed=0, **kw))
    assert d.features["val_loss_rise"] < 0.10 and d.features["val_loss_rise_noise"] < 4
    assert d.verdict != "overfit-capacity"
    # far beyond the noise but a 2% rise: under val_loss_rise_small_min
    d = diagnose(trainer_state(tmp_path / "tiny", val=u_shape(1.0, 0.40, 0.6, 0.408), noise=0.002, **kw))
    assert d.features["val_loss_rise"] < 0.03 and d.verdict != "overfit-capacity"
    # the same 6% rise with the train loss flat over the second half: no gap widening to read
    flat = {**kw, "train": exp_decay(2.0, 0.5, 12)}
    d = diagnose(trainer_state(tmp_path / "flat", val=u_shape(1.0, 0.40, 0.6, 0.424), noise=0.002, **flat))
    assert d.features["train_loss_late_drop"] < 0.1 and d.verdict != "overfit-capacity"


def test_a_train_loss_rounded_to_zero_is_lowest_at_the_last_zero(tmp_path):
    # the notebook table shows 6 decimals: a loss still falling below 5e-7 reads 0.000000 at every later row. Read as
    # lowest at the first zero, the early bump (+0.011) looked like a loss that climbed and never came back
    # (lr-too-large, fold L's Meenusj); lowest at the last, it is a fitted training set with a rising val loss
    train = lambda f: 0.0 if f > 0.35 else 0.063 + (0.011 if 0.1 < f <= 0.2 else 0.0)  # noqa: E731
    d = diagnose(trainer_state(tmp_path, train=train, val=u_shape(0.074, 0.073, 0.4, 0.113), classes=None,
                               n_val=None, noise=0.002, log_every=20))
    assert d.features["train_loss_min_fraction"] == 1.0 and d.features["train_loss_max_rise"] > 0.15
    assert d.verdict == "overfit-capacity", [(x.rule_id, x.suppressed_by) for x in d.findings]


def _per_eval(values):
    """A curve of one value per eval (evals = len(values)), as a notebook's per-epoch table logs it."""
    return lambda f: values[min(len(values) - 1, max(0, round(f * len(values)) - 1))]


def test_a_short_curve_whose_every_later_eval_stays_above_its_minimum_is_overfit(tmp_path):
    # 5 evals: the jitter of 3 second differences is mostly the turn, so a 16% rise reads ~1 noise unit. Every eval
    # after the minimum staying >= 10% above it (val_loss_rise_held) is no single noisy point (fold M's Henry-325)
    train = _per_eval([0.058, 0.0331, 0.0153, 0.0052, 0.0017])
    kw = dict(train=train, classes=None, n_val=None, evals=5, log_every=40)
    d = diagnose(trainer_state(tmp_path / "held", val=_per_eval([1.06, 1.03, 1.20, 1.186, 1.196]), **kw))
    assert d.features["val_loss_rise_noise"] < 2 and d.features["val_loss_rise_held"] == pytest.approx(0.1515, abs=1e-3)
    assert d.verdict == "overfit-capacity"
    # one later eval back within 7% of the minimum: the rise is not held, and the band decides (inside it)
    d = diagnose(trainer_state(tmp_path / "dips", val=_per_eval([1.06, 1.03, 1.20, 1.10, 1.196]), **kw))
    assert d.features["val_loss_rise_held"] < 0.1 and d.verdict != "overfit-capacity"
    # a minimum at the last-but-one eval: one later point is no repeated rise
    d = diagnose(trainer_state(tmp_path / "late", val=_per_eval([1.06, 1.05, 1.04, 1.03, 1.20]), **kw))
    assert "val_loss_rise_held" in d.features.missing


def test_a_short_curve_whose_val_loss_rises_at_every_later_eval_is_overfit(tmp_path):
    # 5 evals, the val loss up at each eval after its minimum (+0.4%, +3.4%, +8.4%) while the train loss still falls:
    # a rise that grows is a trend, not one noisy point (fold L's Caarevalor), though it reads < 4 noise units
    train = _per_eval([2.0, 1.43, 1.23, 1.07, 0.917])
    kw = dict(train=train, classes=None, n_val=None, evals=5, log_every=40)
    d = diagnose(trainer_state(tmp_path / "steady", val=_per_eval([1.534, 1.495, 1.501, 1.546, 1.621]), **kw))
    assert d.features["val_loss_rise_steady"] == 1 and d.features["val_loss_rise_held"] < 0.1
    assert d.features["val_loss_rise"] == pytest.approx(0.0843, abs=1e-3)
    assert d.verdict == "overfit-capacity", [(x.rule_id, x.suppressed_by) for x in d.findings]
    # one later eval back down: no steady rise
    d = diagnose(trainer_state(tmp_path / "dip", val=_per_eval([1.534, 1.495, 1.546, 1.501, 1.621]), **kw))
    assert d.features["val_loss_rise_steady"] == 0 and d.verdict != "overfit-capacity"
    # steady but small: +1.3% at the end, under val_loss_rise_small_min
    d = diagnose(trainer_state(tmp_path / "small", val=_per_eval([1.534, 1.495, 1.497, 1.502, 1.515]), **kw))
    assert d.features["val_loss_rise_steady"] == 1 and d.verdict != "overfit-capacity"
    # steady, with the train loss flat over the second half: no widening gap to read
    flat = {**kw, "train": _per_eval([2.0, 1.43, 1.42, 1.42, 1.41])}
    d = diagnose(trainer_state(tmp_path / "flat", val=_per_eval([1.534, 1.495, 1.501, 1.546, 1.621]), **flat))
    assert d.features["train_loss_late_drop"] < 0.1 and d.verdict != "overfit-capacity"


def test_a_val_metric_still_improving_vetoes_the_steady_small_rise(tmp_path):
    # the same steady rise (+8.4% over 3 later evals, train loss still falling) beside a val metric: where the metric
    # set a new best beyond its noise over the last third, the rise is the loss's confidence, not overfit (fold Y's
    # sccn: WER best at the last eval); where it ties its earlier best, the rise reads overfit as without a metric
    train = _per_eval([2.0, 1.43, 1.23, 1.07, 0.917])
    val = _per_eval([1.534, 1.495, 1.501, 1.546, 1.621])
    kw = dict(train=train, val=val, classes=None, n_val=400, evals=5, log_every=40)
    d = diagnose(trainer_state(tmp_path / "rising", metric=_per_eval([0.70, 0.76, 0.80, 0.84, 0.88]), **kw))
    assert d.features["val_loss_rise_steady"] == 1 and d.features["still_improving"] == 1
    assert d.features["val_metric_late_gain_se"] >= 2 and d.verdict != "overfit-capacity"
    d = diagnose(trainer_state(tmp_path / "tied", metric=_per_eval([0.70, 0.76, 0.80, 0.80, 0.805]), **kw))
    assert d.features["val_loss_rise_steady"] == 1 and d.features["still_improving"] == 0
    assert d.verdict == "overfit-capacity", [(x.rule_id, x.suppressed_by) for x in d.findings]


def test_a_bumpy_train_loss_that_fitted_the_training_set_is_not_lr_too_large(tmp_path):
    # per-epoch train losses bump (0.10 -> 0.20) on the way to 7% of their start while the val loss rises: the
    # training set was fitted, so the rise is overfit, not an lr that could not descend (fold M's atikulmunna)
    val = _per_eval([0.339, 0.314, 0.267, 0.357, 0.338, 0.366, 0.495, 0.526, 0.476, 0.481])
    kw = dict(val=val, classes=None, n_val=None, evals=10, log_every=20)
    fitted = _per_eval([0.41, 0.33, 0.25, 0.17, 0.10, 0.20, 0.08, 0.105, 0.0034, 0.03])
    d = diagnose(trainer_state(tmp_path / "fitted", train=fitted, **kw))
    assert d.features["train_loss_max_rise"] > 0.15 and d.features["train_loss_final_over_start"] < 0.25
    assert d.verdict == "overfit-capacity", [(x.rule_id, x.suppressed_by) for x in d.findings]
    # the same bumps on a train loss that stays at 0.6 of its start: the oscillation reading stands
    stuck = _per_eval([0.41, 0.33, 0.25, 0.27, 0.30, 0.38, 0.28, 0.31, 0.26, 0.25])
    assert diagnose(trainer_state(tmp_path / "stuck", train=stuck, **kw)).verdict == "lr-too-large"


EXTERNAL = Path(__file__).resolve().parents[1] / "fixtures" / "external"


def test_one_logged_train_loss_is_no_trend(tmp_path):
    # logging_steps longer than the run: the Trainer logs the train loss once, its mean over the whole run. A fall of
    # 0 read from one value made a converged 4-epoch run inconclusive (fold O's KoontzP); it is no fall measured
    val, acc = [0.531, 0.239, 0.1895, 0.1792], [0.831, 0.9215, 0.932, 0.9315]
    log = [{"step": 125 * (i + 1), "epoch": i + 1.0, "eval_loss": v, "eval_accuracy": a, "eval_runtime": 20.0,
            "eval_samples_per_second": 100.0} for i, (v, a) in enumerate(zip(val, acc))]
    log.insert(3, {"step": 500, "epoch": 4.0, "loss": 0.456, "learning_rate": 1e-7})
    log.append({"step": 500, "epoch": 4.0, "train_runtime": 100.0, "train_loss": 0.456})
    (tmp_path / "trainer_state.json").write_text(json.dumps({"global_step": 500, "max_steps": 500,
                                                             "num_train_epochs": 4, "logging_steps": 500,
                                                             "log_history": log}))
    (tmp_path / "config.json").write_text(json.dumps({"id2label": {str(i): f"c{i}" for i in range(6)}}))
    d = diagnose(tmp_path)
    assert "train_loss_drop" in d.features.missing and "one train loss logged" in d.features.missing["train_loss_drop"]
    assert d.verdict == "healthy", [(f.rule_id, f.suppressed_by) for f in d.findings]
    # two logged values: a trend again
    d = diagnose(trainer_state(tmp_path / "two", train=exp_decay(0.9, 0.4, 3), val=exp_decay(0.53, 0.17, 4),
                               evals=4, steps=200, log_every=25, classes=6, n_val=2000))
    assert d.features["train_loss_drop"] > 0.3


def test_a_memorised_train_loss_beside_a_val_loss_rising_beyond_noise_is_overfit_not_lr(tmp_path):
    # fold O's stanleyKS: 100 epochs, the train loss 1.10 -> 0.0008 after an early bump, the val loss +231% at 8 noise
    # units, accuracy on 40 rows swinging: overfit (protocol 3), not an oscillating lr
    run = EXTERNAL / "public_o" / "stanleyKS__judgement-statement-classification-based-on-transformer-model__electra"
    m = {r["name"]: r for r in json.loads((EXTERNAL / "public_o" / "manifest.json").read_text())["runs"]}
    from loratune.history_io import read_notebook

    d = diagnose(read_notebook(run / "notebook.ipynb", table=m[run.name]["table_index"]))
    f = d.features
    # (its bump, read on the 3-window moving mean of its 100 windows, is a 10% climb: RISE_SMOOTH_WINDOWS_PER)
    assert f["train_loss_final_over_start"] < 0.1 and f["val_loss_rise_noise"] > 2 and f["train_loss_max_rise"] > 0.1
    assert d.verdict == "overfit-capacity", [(x.rule_id, x.suppressed_by) for x in d.findings]
    # near miss, fold J's jerichomcleod: memorised too, but its val loss swings inside its noise: still lr-too-large
    jm = [r for r in json.loads((EXTERNAL / "public_j" / "manifest.json").read_text())["runs"]
          if r["name"].startswith("jerichomcleod")][0]
    d = diagnose(load_run(EXTERNAL / "public_j" / jm["name"]))
    assert d.features["train_loss_final_over_start"] < 0.1 and d.features["val_loss_rise_noise"] < 2
    assert d.verdict == "lr-too-large"


def test_a_short_curve_whose_fall_ran_out_is_not_lr_too_small(tmp_path):
    # 3 evals of a language model fine-tune, both losses down little, the val loss's falls shrinking (-0.079, -0.026)
    # with 0.7% of it left at that pace: converged for its schedule, not slow (fold O's Areeb196)
    val = _per_eval([1.9135, 1.8343, 1.8084])
    # (at 5e-5: a step below LoRA's usual range, so a fall still going reads as too small a step)
    kw = dict(train=_per_eval([1.973, 1.873, 1.819]), classes=None, n_val=None, evals=3, steps=120, log_every=40,
              lr=5e-5)
    d = diagnose(trainer_state(tmp_path / "ran_out", val=val, **kw))
    assert d.features["val_loss_remaining_gain"] < 0.02 and d.verdict != "lr-too-small"
    # near miss: falls that do not shrink (-0.05, -0.05) leave more than 2% to lose: still slow
    d = diagnose(trainer_state(tmp_path / "steady", val=_per_eval([1.9135, 1.8635, 1.8135]), **kw))
    assert d.features["val_loss_remaining_gain"] >= 0.02 and d.verdict == "lr-too-small"


@pytest.mark.parametrize("acc, train_end, healthy", [
    ([0.927, 0.940, 0.946], 0.19, True),  # fold P's saulleyva: token F1 at its best at the end, the train loss -81%
    ([0.527, 0.540, 0.546], 0.19, False),  # near miss: a metric at an underfit's level (< underfit_metric_max)
    ([0.927, 0.976, 0.946], 0.19, False),  # near miss: ended 3 points below its best
    ([0.927, 0.940, 0.946], 0.80, False),  # near miss: the train loss down 20%, under healthy_loss_drop_min
])
def test_a_short_run_whose_gain_came_before_its_first_eval_is_healthy_when_nothing_is_wrong(tmp_path, acc, train_end,
                                                                                          healthy):
    # 3 evals, one per epoch, no eval size: the metric's gain after the first eval is not measured against noise, and
    # most of the learning came before it; the val loss flat inside its band (+1.8%)
    kw = dict(classes=None, n_val=None, evals=3, steps=120, log_every=40)
    d = diagnose(trainer_state(tmp_path, train=_per_eval([1.0, 0.5, train_end]), val=_per_eval([0.145, 0.146, 0.1476]),
                               metric=_per_eval(acc), **kw))
    assert d.features["val_loss_rise_noise"] < 2
    assert (d.verdict == "healthy") == healthy, [(f.rule_id, f.suppressed_by) for f in d.findings]


@pytest.mark.parametrize("best_at, healthy", [(0.8, True), (0.33, False)])
def test_a_metric_only_run_that_gained_and_held_is_healthy_when_its_best_came_late(tmp_path, best_at, healthy):
    # no eval loss logged (fold M's JachinLin2022: first-token accuracy on 815 rows, 75 evals): the metric's gain beyond
    # its noise and its hold, with its best late in the run, read on the metric alone; near miss: its best a third in
    n, log = 20, []
    for i in range(1, n + 1):
        f = i / n
        acc = 0.79 + 0.05 * min(f, best_at) / best_at - (0.008 * (f - best_at) / (1 - best_at) if f > best_at else 0)
        log.append({"step": 10 * i, "epoch": f, "loss": 1.0 * (1 - 0.85 * f), "learning_rate": 3e-4 * (1 - f)})
        log.append({"step": 10 * i, "epoch": f, "eval_accuracy": acc, "eval_runtime": 8.15,
                    "eval_samples_per_second": 100.0})
    log.append({"step": 10 * n, "epoch": 1.0, "train_runtime": 100.0, "train_loss": 0.5})
    (tmp_path / "trainer_state.json").write_text(json.dumps({"global_step": 10 * n, "max_steps": 10 * n,
                                                             "log_history": log}))
    d = diagnose(tmp_path)
    assert "val_loss_rise_noise" in d.features.missing and d.features["val_metric_gain_se"] >= 2
    assert d.features["val_metric_final_drop_se"] < 2
    assert (d.verdict == "healthy") == healthy, [(f.rule_id, f.suppressed_by) for f in d.findings]


@pytest.mark.parametrize("val, train_end, healthy", [
    ([1.160, 1.122, 1.157], 0.63, True),  # fold Q's Abhis-123: +3.2% at its last eval, inside its band, train -37%
    ([1.160, 1.122, 1.257], 0.63, False),  # near miss: +12%, over val_loss_rise_min
    ([1.160, 1.122, 1.157], 0.80, False),  # near miss: the train loss down 20%
])
def test_a_short_loss_only_curve_that_ties_its_minimum_is_healthy(tmp_path, val, train_end, healthy):
    kw = dict(classes=None, n_val=None, evals=3, steps=120, log_every=40)
    d = diagnose(trainer_state(tmp_path, train=_per_eval([1.0, 0.8, train_end]), val=_per_eval(val), **kw))
    assert (d.verdict == "healthy") == healthy, [(f.rule_id, f.suppressed_by) for f in d.findings]


@pytest.mark.parametrize("acc, healthy", [
    ([0.839, 0.831, 0.856], True),  # fold Q's UmaKrishnaPrasadB: val loss +7.8% at 2.7 noise units, accuracy at its best
    ([0.839, 0.886, 0.856], False),  # near miss: accuracy ended 3 points below its best
])
def test_a_small_val_loss_rise_beside_a_metric_at_its_best_is_not_overfit(tmp_path, acc, healthy):
    kw = dict(classes=3, n_val=None, evals=3, steps=120, log_every=40)
    d = diagnose(trainer_state(tmp_path, train=_per_eval([0.487, 0.362, 0.237]), val=_per_eval([0.446, 0.431, 0.465]),
                               metric=_per_eval(acc), **kw))
    assert 0.03 < d.features["val_loss_rise"] < 0.1 and d.features["val_loss_rise_noise"] >= 2
    assert (d.verdict == "healthy") == healthy, [(f.rule_id, f.suppressed_by) for f in d.findings]


# ---- the L-Q round (two blind reviews agreeing against loratune): each change with its near misses ----------------

@pytest.mark.parametrize("val, adapter, healthy", [
    # fold P's satojkovic (distilgpt2, ELI5): train -3%, val 3.8286 -> 3.8179 -> 3.8167, its falls collapsing
    ([3.8286, 3.8179, 3.8167], {"task_type": "CAUSAL_LM", "r": 8, "lora_alpha": 16}, True),
    # near miss: still falling without slowing (2%+ of itself left to lose at its pace): not converged
    ([3.8286, 3.7500, 3.6700], {"task_type": "CAUSAL_LM", "r": 8, "lora_alpha": 16}, False),
    # near miss: a classifier's train loss down 3% is no fit (no entropy floor to settle on)
    ([3.8286, 3.8179, 3.8167], None, False),
])
def test_a_short_language_model_curve_that_converged_with_a_small_train_loss_fall_is_healthy(tmp_path, val, adapter,
                                                                                             healthy):
    kw = dict(classes=None if adapter else 5, n_val=None, evals=3, steps=120, log_every=40, adapter=adapter)
    d = diagnose(trainer_state(tmp_path, train=_per_eval([3.943, 3.855, 3.823]), val=_per_eval(val), **kw))
    assert d.features["train_loss_drop"] < 0.3 and d.features["val_loss_rise"] == 0
    assert (d.verdict == "healthy") == healthy, [(f.rule_id, f.suppressed_by) for f in d.findings]


def test_a_long_train_curve_is_read_on_its_moving_mean_for_a_climb_back_up(tmp_path):
    # fold P's 4g: 469 table rows of a batch-of-4 loss jittering +-9% about a slow fall; the worst single window above
    # its running minimum is the extreme of that noise, not a climb (lr-too-large's osc_loss_rise is 15%)
    from loratune.features import RISE_SMOOTH_WINDOWS_PER
    rng = random.Random(1)
    noise = [rng.uniform(-0.09, 0.09) for _ in range(400)]
    kw = dict(val=lambda f: 0.3, log_every=1, classes=5)

    def train(f):
        return (0.9 - 0.1 * f) * (1 + noise[min(399, round(f * 400) - 1)])

    long = diagnose(trainer_state(tmp_path / "long", train=train, steps=400, evals=400, **kw))
    assert long.features["n_eval_points"] == 400
    assert 0 < long.features["train_loss_max_rise"] < 0.15
    # ...while a climb that lasts (a quarter of the run 40% up) is still one, however long the curve
    climb = diagnose(trainer_state(tmp_path / "climb", train=lambda f: 0.9 - 0.2 * f + (0.36 if 0.5 < f < 0.75 else 0),
                                   steps=400, evals=400, **kw))
    assert climb.features["train_loss_max_rise"] >= 0.35
    # ...and a curve of under 2 x RISE_SMOOTH_WINDOWS_PER windows is read window by window, as logged
    n = 2 * RISE_SMOOTH_WINDOWS_PER - 20
    short = diagnose(trainer_state(tmp_path / "short", train=lambda f: 0.9 + (0.3 if round(f * n) == n // 2 else 0),
                                   steps=n, evals=n, **kw))
    assert short.features["train_loss_max_rise"] == pytest.approx(0.3 / 0.9, rel=0.01)


@pytest.mark.parametrize("val_min_at, val_late_fall, overfit", [
    (0.5, 0.0, True),  # fold M's ALFA-group: train 3.04 -> 0.40 over 50 evals, val flat +-0.1 about 2.7 after a dip
    (1.0, 0.0, False),  # near miss: flat but at its minimum at the end: converged and held (fold C's WELCOME-project)
    (0.5, 0.06, False),  # near miss: the val loss still fell 6% over the second half: the gap is not all memorisation
])
def test_a_long_flat_val_loss_beside_a_train_loss_falling_to_a_fitted_share_is_overfit(tmp_path, val_min_at,
                                                                                       val_late_fall, overfit):
    n = 20

    def val(f):
        i = max(1, round(f * n))
        if abs(i / n - val_min_at) < 1e-9:
            return 2.55  # the dip (or the last eval's low)
        late = val_late_fall * 2.7 * max(0.0, (f - 0.5) / 0.5)
        return 2.7 + (0.05 if i % 2 else -0.05) - late

    d = diagnose(trainer_state(tmp_path, train=exp_decay(3.04, 0.2, 3.0), val=val, evals=n, steps=400, log_every=10,
                               classes=None, n_val=None, adapter={"task_type": "CAUSAL_LM", "r": 8, "lora_alpha": 16}))
    assert d.features["train_loss_final_over_start"] <= 0.25 and d.features["train_loss_late_drop"] >= 0.1
    assert d.features["val_loss_rise_noise"] < 2 or val_min_at == 1.0
    assert (d.verdict == "overfit-capacity") == overfit, [(f.rule_id, f.suppressed_by) for f in d.findings]


@pytest.mark.parametrize("architecture, healthy", [
    ("RobertaForMaskedLM", True),  # fold R's priyashah23: MLM domain adaptation, train -8%, val -0.037 then -0.014
    ("RobertaForSequenceClassification", False),  # near miss: a classifier's train loss down 8% is no fit
])
def test_a_masked_language_model_has_an_entropy_floor_as_a_causal_one_does(tmp_path, architecture, healthy):
    folder = trainer_state(tmp_path, train=_per_eval([2.247, 2.105, 2.066]), val=_per_eval([2.0221, 1.9855, 1.9717]),
                           classes=None, n_val=None, evals=3, steps=120, log_every=40)
    d = diagnose(_kind(folder, architecture))
    assert (d.features["generative"] == 1.0) == healthy and d.features["train_loss_drop"] < 0.3
    assert (d.verdict == "healthy") == healthy, [(f.rule_id, f.suppressed_by) for f in d.findings]


# ---- the fold-S round (S in-sample after its held-out scoring): each change with its near misses --------------------

@pytest.mark.parametrize("turn_at, overfit", [
    (7, True),  # fold S's lionelmesnam: val minimum at epoch 7 of 20, +8% at ~8 noise units, accuracy flat within SE
    (13, False),  # near miss: the same rise from a minimum in the second half, the metric holding: not overfit
])
def test_a_val_loss_that_turned_early_and_rose_far_beyond_its_noise_is_overfit_beside_a_holding_metric(
        tmp_path, turn_at, overfit):
    n = 20
    val = [1.766 - (1.766 - 1.265) * min(i, turn_at) / turn_at + (0.104 * (i - turn_at) / (n - turn_at) if i > turn_at
           else 0) + (0.006 if i % 2 else -0.006) for i in range(1, n + 1)]
    acc = [0.31 + 0.29 * min(i, turn_at) / turn_at + (0.004 if i % 2 else 0) for i in range(1, n + 1)]
    train = [1.904 - 1.08 * (1 - math.exp(-3 * i / n)) / (1 - math.exp(-3)) for i in range(1, n + 1)]
    d = diagnose(trainer_state(tmp_path, train=_per_eval(train), val=_per_eval(val), metric=_per_eval(acc), evals=n,
                               steps=20 * n, log_every=20, classes=7, n_val=343))
    f = d.features
    assert 0.03 <= f["val_loss_rise"] < 0.1 and f["val_loss_rise_noise"] >= 4 and f["train_loss_late_drop"] >= 0.1
    assert f["train_loss_final_over_start"] > 0.25 and f["val_metric_final_drop_se"] < 2
    assert (d.verdict == "overfit-capacity") == overfit, [(x.rule_id, x.suppressed_by) for x in d.findings]


@pytest.mark.parametrize("acc_best, overfit", [
    (1.0, False),  # fold S's Cansutunc: accuracy 1.000 then 0.9956 (one of 227), val loss 0.0156 -> 0.0208: solved
    (0.95, True),  # near miss: the same val loss beside a metric below its ceiling: every later eval held above
])
def test_a_short_val_loss_held_above_its_minimum_beside_a_metric_at_its_ceiling_is_not_overfit(tmp_path, acc_best,
                                                                                              overfit):
    acc = [acc_best, acc_best - 0.0044, acc_best - 0.0044, acc_best - 0.0044, acc_best - 0.0044]
    d = diagnose(trainer_state(tmp_path, train=_per_eval([0.3, 0.1, 0.03, 0.01, 0.004]),
                               val=_per_eval([0.0214, 0.0156, 0.0221, 0.0217, 0.0208]), metric=_per_eval(acc),
                               evals=5, steps=100, log_every=20, classes=4, n_val=227))
    assert d.features["val_loss_rise_held"] >= 0.1 and d.features["n_eval_points"] == 5
    assert (d.verdict == "overfit-capacity") == overfit, [(x.rule_id, x.suppressed_by) for x in d.findings]


# ---- the fold-T round (T in-sample after its held-out scoring): each change with its near misses --------------------

KARLSON_VAL = [0.296, 0.321, 0.25, 0.281, 0.246, 0.246, 0.292, 0.261, 0.208, 0.285, 0.324, 0.324, 0.333, 0.363, 0.339]
KARLSON_ACC = [0.883, 0.849, 0.898, 0.902, 0.908, 0.918, 0.919, 0.928, 0.925, 0.924, 0.923, 0.916, 0.926, 0.923, 0.923]


@pytest.mark.parametrize("train, verdict", [
    # fold T's KarlsonAV: single logged batches bump (0.246 -> 0.384, 0.111 -> 0.281) on a train loss still descending
    # after the val loss's minimum at 60% (53% of its fall after it) while the val loss rises 63%: overfit
    ([0.387, 0.413, 0.328, 0.294, 0.246, 0.384, 0.177, 0.111, 0.281, 0.198, 0.106, 0.084, 0.113, 0.058, 0.16],
     "overfit-capacity"),
    # near miss: the same bumps and end, the fall made before the val loss turned, level after it: an oscillating lr
    ([0.387, 0.30, 0.22, 0.17, 0.15, 0.26, 0.14, 0.15, 0.16, 0.25, 0.17, 0.15, 0.22, 0.16, 0.16], "lr-too-large"),
])
def test_a_bumpy_train_loss_still_descending_after_the_val_loss_turned_is_overfit_not_lr(tmp_path, train, verdict):
    d = diagnose(trainer_state(tmp_path, train=_per_eval(train), val=_per_eval(KARLSON_VAL),
                               metric=_per_eval(KARLSON_ACC), evals=15, steps=7500, log_every=500, lr=2e-5,
                               classes=2, n_val=722))
    f = d.features
    assert f["train_loss_max_rise"] >= 0.15 and 0.1 < f["train_loss_final_over_start"] < 0.5
    assert f["val_loss_rise"] > 0.5 and f["val_loss_min_fraction"] == pytest.approx(0.6)
    assert (f["train_loss_fall_after_val_min"] >= 0.5) == (verdict == "overfit-capacity")
    assert d.verdict == verdict, [(x.rule_id, x.suppressed_by) for x in d.findings]


def _notebook_curves(fold: str, prefix: str) -> tuple[list[float], list[float]]:
    """The train and val loss per eval of a committed public notebook run (the table its manifest names)."""
    from loratune.history_io import read_notebook

    folder = EXTERNAL / f"public_{fold}"
    run = next(r for r in json.loads((folder / "manifest.json").read_text())["runs"] if r["name"].startswith(prefix))
    h = read_notebook(folder / run["name"] / "notebook.ipynb", table=run["table_index"])
    return [p["train/loss"] for p in h.points if "train/loss" in p], [p["val/loss"] for p in h.points if "val/loss" in p]


@pytest.mark.parametrize("dip, overfit", [
    (None, True),  # fold T's Mostafa-Elnabawy: the third epoch's 32 evals all 2.8+ noise units above the minimum at 67%
    (0.01, False),  # near miss: one of them back within the band of the minimum (+0.01, under half a noise unit)
])
def test_a_long_val_loss_whose_every_later_eval_holds_beyond_the_noise_is_overfit_on_a_small_rise(tmp_path, dip,
                                                                                                 overfit):
    train, val = _notebook_curves("t", "Mostafa-Elnabawy")
    i_min = val.index(min(val))
    if dip is not None:
        val[i_min + 10] = val[i_min] + dip
    n = len(val)
    d = diagnose(trainer_state(tmp_path, train=_per_eval(train), val=_per_eval(val), evals=n, steps=10 * n,
                               log_every=10, lr=5e-5, classes=18, n_val=None))
    f = d.features
    assert n == 96 and 0.03 < f["val_loss_rise"] < 0.1 and f["val_loss_rise_noise"] < 4
    assert f["train_loss_late_drop"] > 0.1 and f["val_loss_min_fraction"] == pytest.approx(2 / 3, abs=0.01)
    assert (f["val_loss_rise_held_noise"] >= 2) == overfit
    assert (d.verdict == "overfit-capacity") == overfit, [(x.rule_id, x.suppressed_by) for x in d.findings]
    assert overfit or d.verdict == "healthy"


@pytest.mark.parametrize("lr, too_small", [
    (1e-6, True),  # fold T's b-paisley: DistilBERT-NER at 1e-6 linear to 0, train 0.64x its start after 30 epochs
    (1e-5, False),  # near miss: the same curve at the low end of protocol 1's range: read on the curve alone
])
def test_a_classifier_far_below_the_usual_lr_that_did_not_fit_is_lr_too_small(tmp_path, lr, too_small):
    train, val = _notebook_curves("t", "b-paisley")
    n = len(val)
    d = diagnose(trainer_state(tmp_path, train=_per_eval(train), val=_per_eval(val), metric=lambda x: 0.52 + 0.12 * x,
                               evals=n, steps=10 * n, log_every=10, lr=lr, classes=9, n_val=1455))
    f = d.features
    assert n == 30 and f["classifier"] == 1 and 0.25 < f["train_loss_final_over_start"] < 0.7
    assert f["val_loss_rise"] < 0.1 and f["val_loss_remaining_gain"] < 0.02
    assert (d.verdict == "lr-too-small") == too_small, [(x.rule_id, x.suppressed_by) for x in d.findings]


@pytest.mark.parametrize("val, lr, verdict_is_collapsed", [
    # fold N's pramanik-souvik: DeBERTa full fine-tune at 2e-5, binary (unbalanced, the class count unknown to the
    # run), accuracy 0.6929 (the majority share) at all 10 evals, the val loss pinned where its first eval left it
    ([0.6311, 0.6177, 0.6169, 0.6169, 0.6188, 0.6174, 0.6171, 0.6173, 0.6173, 0.6175], 2e-5, True),
    # near miss (fold R's Zaitun-dev): the same frozen metric beside a val loss creeping down at every eval: moving
    ([0.9794, 0.9791, 0.9786, 0.9780, 0.9769, 0.9758, 0.9750, 0.9741, 0.9733, 0.9725], 2e-5, False),
    # near miss: the pinned val loss at a peak lr under usual_lr_min: steps too small to move a prediction
    ([0.6311, 0.6177, 0.6169, 0.6169, 0.6188, 0.6174, 0.6171, 0.6173, 0.6173, 0.6175], 0.8e-5, False),
])
def test_a_frozen_val_metric_beside_a_pinned_val_loss_is_a_collapse_without_a_class_count(tmp_path, val, lr,
                                                                                         verdict_is_collapsed):
    train = [0.6256, 0.6647, 0.5983, 0.5828, 0.5991, 0.6106, 0.6282, 0.6006, 0.5906, 0.6051]
    d = diagnose(trainer_state(tmp_path, train=_per_eval(train), val=_per_eval(val), metric=lambda f: 0.6929,
                               evals=10, steps=700, log_every=70, lr=lr, classes=None, n_val=280))
    f = d.features
    assert f["val_metric_repeat_share"] == 1 and f["train_loss_vs_chance"] is None and f["val_loss_drop"] < 0.05
    assert (f["val_loss_rise_share"] > 0) == (val[0] < 0.9)
    assert (d.verdict == "collapsed") == verdict_is_collapsed, [(x.rule_id, x.suppressed_by) for x in d.findings]


# ---- fold Z's two healthy on an unforgivable label: a val loss that fell beside a metric that never moved ----------

@pytest.mark.parametrize("acc, healthy", [
    # fold Z's Munna-Prasad-Gupta (t5-small En->Hi, labels padded without -100): exact match 0.943 -> 0.946 over 6
    # evals on 2000 rows (0.6 SE) while the val loss fell 12%: the loss scores the padding, not the translation
    ([0.943, 0.9435, 0.944, 0.9445, 0.945, 0.946], False),
    # near miss: the metric rose 3 points (6 SE) with the loss: a fit
    ([0.913, 0.925, 0.933, 0.938, 0.941, 0.943], True),
    # near miss: the metric flat at its ceiling (nothing left to gain): the loss alone reads the fit
    ([0.998, 0.998, 0.999, 0.999, 0.999, 0.999], True),
])
def test_a_val_loss_that_fell_beside_a_val_metric_that_never_moved_is_not_healthy(tmp_path, acc, healthy):
    kw = dict(classes=None, n_val=2000, evals=6, steps=600, log_every=100,
              adapter={"task_type": "SEQ_2_SEQ_LM", "r": 8, "lora_alpha": 16})
    d = diagnose(trainer_state(tmp_path, train=_per_eval([0.050, 0.042, 0.047, 0.049, 0.042, 0.038]),
                               val=_per_eval([0.0466, 0.0444, 0.0427, 0.0415, 0.0410, 0.0412]), metric=_per_eval(acc),
                               **kw))
    f = d.features
    assert f["val_loss_drop_noise"] >= 2 and f["val_loss_rise_noise"] < 2
    assert (f["val_metric_gain_se"] < 1) != healthy
    assert (d.verdict == "healthy") == healthy, [(x.rule_id, x.suppressed_by) for x in d.findings]
    assert d.fired("eval-metric-unmoved") != healthy
    if not healthy:  # the terminal view and the report say what held the verdict back
        assert d.verdict == "inconclusive"
        assert d.inconclusive_why == "no curve rule stands: healthy suppressed by eval-metric-unmoved"


@pytest.mark.parametrize("f1, healthy", [
    # fold Z's Warzkos (bert-base NER, conll2003, 4 epochs, one train loss logged at step 500): entity F1 +1.7 points,
    # best at the end; the val loss's fall is 1.1 noise units beside a +7% bump inside its band
    ([0.9196, 0.9340, 0.9339, 0.9370], True),
    # near miss: the metric ended 1.7 points below its best (beyond its noise)
    ([0.9196, 0.9340, 0.9339, 0.9170], False),
    # near miss: the metric's gain inside its noise
    ([0.9300, 0.9340, 0.9339, 0.9350], False),
])
def test_a_run_with_no_train_trend_is_healthy_on_a_val_metric_that_gained_and_held(tmp_path, f1, healthy):
    log = [{"step": 500, "epoch": 2.27, "loss": 0.105, "grad_norm": 1.0, "learning_rate": 2.2e-5}]
    for i, (v, m) in enumerate(zip([0.0560, 0.0482, 0.0521, 0.0515], f1), start=1):
        log.append({"step": 220 * i, "epoch": float(i), "eval_loss": v, "eval_f1": m, "eval_runtime": 32.5,
                    "eval_samples_per_second": 100.0})
    log.sort(key=lambda e: e["step"])
    log.append({"step": 880, "epoch": 4.0, "train_runtime": 300.0, "train_loss": 0.08})
    (tmp_path / "trainer_state.json").write_text(json.dumps({"global_step": 880, "max_steps": 880, "num_train_epochs": 4,
                                                             "logging_steps": 500, "log_history": log}))
    d = diagnose(tmp_path)
    f = d.features
    assert f["train_loss_untracked"] == 1 and f["val_loss_drop_noise"] < 2 and f["val_loss_rise_noise"] < 2
    assert (d.verdict == "healthy") == healthy, [(x.rule_id, x.suppressed_by) for x in d.findings]


@pytest.mark.parametrize("train_start, train_end, diverged", [
    # fold AC's hyeonggeonkim (the fifth training in a row of one t5-small): 0.0009 -> 0.0068, 7.6x its start and still
    # near 0: a memorised model wobbling, not an explosion
    (0.0009, 0.0068, False),
    (0.12, 0.52, False),  # fold N's Aditi-Baskar: 4.5x its start, half a nat
    (0.70, 6.7, True),  # an explosion from an untrained start (the corpus's oos-diverged-e)
    (0.60, 1.2, True),  # just past both: twice its start, above the floor
])
def test_a_loss_that_multiplied_its_start_has_diverged_only_above_the_floor(tmp_path, train_start, train_end, diverged):
    kw = dict(classes=None, adapter={"task_type": "SEQ_2_SEQ_LM", "r": 8, "lora_alpha": 16})
    d = diagnose(trainer_state(tmp_path, train=lambda f: train_start + (train_end - train_start) * f,
                               val=lambda f: 0.5, **kw))
    assert d.features["train_loss_final_over_start"] >= 1.5
    assert d.fired("diverged", active_only=False) == diverged, [(x.rule_id, x.suppressed_by) for x in d.findings]


@pytest.mark.parametrize("acc, lattice", [
    # fold AC's 123yunnandaxue: accuracy on 80 multiple-choice rows (21-26 correct), no val size logged
    ([0.2625, 0.2875, 0.3125, 0.325, 0.3125], 80),
    # 559, 564, 579, 584 and 583 of 640 rows, as a notebook's table prints them (6 decimals, rounded)
    ([0.873438, 0.88125, 0.904688, 0.9125, 0.910938], 640),
    # 873 ... 911 of 1000 printed as 0.873000: three decimals, which 50 rows could put on a lattice by luck
    ([0.873, 0.881, 0.905, 0.912, 0.911], None),
    ([0.5, 0.5, 0.5, 0.5, 0.5], None),  # one value: every n fits
    ([0.2625, 0.2875, 0.3125], None),  # three evals: too few for the lattice to stand out from chance
    ([0.8731234, 0.8812345, 0.9051234, 0.9123456, 0.9114567], None),  # a macro-F1: on no lattice
])
def test_the_val_size_is_read_from_the_accuracys_lattice_when_no_size_is_logged(tmp_path, acc, lattice):
    assert accuracy_lattice_n(acc) == lattice
    d = diagnose(trainer_state(tmp_path, train=exp_decay(1.9, 1.38, 3), val=exp_decay(1.74, 1.355, 3), evals=len(acc),
                               metric=_per_eval(acc), n_val=None, classes=None))
    f = d.features
    if lattice is None:
        assert f.get("val_n") is None
    else:
        assert f["val_n"] == lattice
        assert f.details["val_n_source"] == f"the val accuracy's lattice: every val accuracy is k/{lattice}"
        # the binomial band of the lattice's size is a floor on the metric's noise: 80 rows at 0.31 -> 0.052, where
        # the five points' own jitter reads 0.0076 and +6 points would read as 8 noise units
        se = binomial_se(acc[-1], lattice)
        assert f["val_metric_noise"] >= se - 1e-12


@pytest.mark.parametrize("after, diverged", [
    # fold AD's amanichopra (ViT on 82 classes at lr 0.07, fp16): 8.83 in the first window, then 0.0 (every step of the
    # window non-finite: the Trainer's logging_nan_inf_filter logs an empty mean as 0), eval_loss NaN at every eval
    (0.0, True),
    (1e-4, False),  # near miss: a tiny but finite window is a (suspiciously fast) fall, not the filter's mark
])
def test_a_train_loss_logged_as_exactly_zero_after_a_high_window_is_non_finite_steps(tmp_path, after, diverged):
    log = [{"step": 92, "epoch": 1.0, "loss": 8.8258, "grad_norm": 1.0, "learning_rate": 0.07},
           {"step": 92, "epoch": 1.0, "eval_loss": float("nan"), "eval_accuracy": 0.00507}]
    for i in (2, 3, 4):
        log += [{"step": 92 * i, "epoch": float(i), "loss": after, "grad_norm": 1.0, "learning_rate": 0.07},
                {"step": 92 * i, "epoch": float(i), "eval_loss": float("nan"), "eval_accuracy": 0.00507}]
    (tmp_path / "trainer_state.json").write_text(json.dumps({"global_step": 368, "max_steps": 460, "log_history": log}))
    d = diagnose(tmp_path)
    f = d.features
    assert (f["nonfinite_values"] >= 1) == diverged
    assert (f["val_loss_nonfinite_evals"] == 0) == diverged  # the NaN evals are the model's, not the evaluation's
    assert (d.verdict == "diverged") == diverged, [(x.rule_id, x.suppressed_by) for x in d.findings]
    if not diverged:
        assert d.fired("eval-loss-broken")


@pytest.mark.parametrize("tail, diverged", [
    # fold AK's Prathyusha-Guduru (DPO of Mistral-7B, one optimizer step per logged window, no eval set): the loss
    # saturates to a logged 0.0 from windows of 0.0001-0.009, and one hard batch's 2.07 is followed by a 0.0 too
    ([0.0004, 0.0, 0.0002, 0.0, 2.067, 0.0, 0.0003, 0.0, 0.0001], False),
    # near miss: the same 2.07 -> 0.0 with no zero reached from near 0: the filter's mark, as before
    ([0.0404, 0.031, 0.0502, 0.022, 2.067, 0.0, 0.0, 0.0, 0.0], True),
])
def test_a_zero_after_a_high_window_is_not_the_filter_where_the_loss_reaches_zero_on_its_own(tmp_path, tail, diverged):
    head = [0.693, 0.61, 0.42, 0.27, 0.12, 0.063]
    log = [{"step": i + 1, "epoch": (i + 1) / 40, "loss": v, "grad_norm": 1.0, "learning_rate": 5e-6}
           for i, v in enumerate(head + tail)]
    (tmp_path / "trainer_state.json").write_text(json.dumps({"global_step": len(log), "max_steps": len(log),
                                                             "log_history": log}))
    d = diagnose(tmp_path)
    assert (d.features["nonfinite_values"] >= 1) == diverged
    assert (d.verdict == "diverged") == diverged, [(x.rule_id, x.suppressed_by) for x in d.findings]


@pytest.mark.parametrize("first, slow", [
    # fold AD's MingjunHu: bert-base-cased on 650k Yelp rows (5 classes), the first window (10,000 steps) already at
    # 0.54 x ln 5, then -22% to 0.68: -58% since ln 5, a classifier that learned at a fair pace, not too small a step
    (0.866, False),
    (1.55, True),  # near miss: the first window near ln 5 and the same slow fall: lost little from where it began
])
def test_a_classifiers_fall_is_counted_from_chance_when_its_first_window_sits_far_below_it(tmp_path, first, slow):
    L5 = math.log(5)
    d = diagnose(trainer_state(tmp_path, train=lambda f: first * (1 - 0.22 * f), val=lambda f: 0.82 - 0.10 * f,
                               metric=lambda f: 0.64 + 0.05 * f, classes=5, n_val=50000, lr=5e-5, steps=2000,
                               evals=10, log_every=200))
    fs = d.features
    assert fs["train_loss_drop"] < 0.3 and fs["train_loss_runs_to_fit"] >= 2
    assert (fs["train_loss_drop_since_chance"] >= 0.3) != slow, fs["train_loss_drop_since_chance"]
    assert (d.verdict == "lr-too-small") == slow, [(x.rule_id, x.suppressed_by) for x in d.findings]


# ---- fold AE's two healthy on an unforgivable label: a val loss frozen at one value, a DPO loss above ln 2 -------

@pytest.mark.parametrize("train, val, classes, lr, collapsed", [
    # fold AE's will-elsen (DistilBERT LoRA, 5 rating classes from 80 cards, 20 eval cards): the val loss repeats
    # 1.301563 at 3 of 5 evals, 0.81 x ln 5 (the label prior's entropy): every card gets one distribution
    ([1.452, 1.421, 1.401, 1.344, 1.284], [1.390625, 1.310938, 1.301563, 1.301563, 1.301563], 5, 1e-4, True),
    # near miss: the same values moving in the 5th decimal: outputs that still move
    ([1.452, 1.421, 1.401, 1.344, 1.284], [1.390625, 1.310938, 1.301563, 1.301571, 1.301549], 5, 1e-4, False),
    # near miss: two equal values can be rounding's coincidence
    ([1.452, 1.421, 1.401, 1.344, 1.284], [1.390625, 1.310938, 1.305156, 1.301563, 1.301563], 5, 1e-4, False),
    # near miss: a frozen val loss far below ln 5 beside a train loss that fell: fitted, not pinned
    ([1.452, 0.9, 0.5, 0.3, 0.2], [0.6, 0.41, 0.352344, 0.352344, 0.352344], 5, 1e-4, False),
    # fold AA's NLP613-Metaplexia (BERT span QA on squad_v2, lr 3e-4): eval_loss 6.238281 = ln 512 at all 3 evals, the
    # train loss not falling at all: a span head uniform over the positions (no class count: any task)
    ([6.2429, 6.2451, 6.2454], [6.238281, 6.238281, 6.238281], None, 3e-4, True),
    # near miss (fold W's Devesh176): a loss of 0 at every eval is a constant target fitted exactly, not a collapse
    ([0.0, 0.0, 0.0], [0.0, 0.0, 0.0], None, 2e-4, False),
])
def test_a_val_loss_that_repeats_one_value_at_most_evals_is_a_collapse_when_pinned(tmp_path, train, val, classes, lr,
                                                                                  collapsed):
    n = len(val)
    d = diagnose(trainer_state(tmp_path, train=_per_eval(train), val=_per_eval(val), evals=n, steps=20 * n,
                               log_every=20, lr=lr, classes=classes, n_val=20))
    f = d.features
    assert f["val_loss_repeats"] == max(val.count(v) for v in val)
    assert f["val_loss_repeat_share"] == pytest.approx(f["val_loss_repeats"] / n)
    assert (d.verdict == "collapsed") == collapsed, [(x.rule_id, x.suppressed_by) for x in d.findings]


def dpo_state(folder: Path, *, train, val, extra=None, lr=5e-5, every=700):
    """A TRL DPOTrainer's trainer_state.json: train windows and evals with the reward columns it logs."""
    log = []
    for i, (t, v) in enumerate(zip(train, val), start=1):
        log.append({"step": every * i, "epoch": i / len(val), "loss": t, "grad_norm": 5.0, "learning_rate": lr,
                    "rewards/chosen": -1.0, "rewards/rejected": -1.3, "rewards/accuracies": 0.6,
                    "rewards/margins": 0.3})
        e = {"step": every * i, "epoch": i / len(val), "eval_loss": v, "eval_rewards/chosen": -1.0,
             "eval_rewards/rejected": -1.3, "eval_rewards/accuracies": 0.6, "eval_rewards/margins": 0.3,
             "eval_logps/chosen": -250.0, "eval_logps/rejected": -260.0, "eval_runtime": 25.0,
             "eval_samples_per_second": 100.0}
        e.update(extra or {})
        log.append(e)
    steps = every * len(val)
    (folder / "trainer_state.json").write_text(json.dumps({"global_step": steps, "max_steps": steps,
                                                           "logging_steps": every, "log_history": log}))
    (folder / "adapter_config.json").write_text(json.dumps({"peft_type": "LORA", "task_type": "CAUSAL_LM", "r": 256,
                                                            "lora_alpha": 128}))
    return folder


JASON_TRAIN = [0.818, 0.891, 0.926, 0.995, 0.671, 0.612, 0.981, 0.713]
JASON_VAL = [0.876, 0.942, 0.854, 0.812, 0.785, 0.749, 0.755, 0.754]


@pytest.mark.parametrize("train, val, extra, too_large", [
    # fold AE's Jason-Toskov (Llama-3-8B QLoRA DPO at 5e-5): every eval above ln 2 = 0.693, where the policy starts as
    # its reference; worst after the warm-up, back to 0.749 only as the cosine decayed
    (JASON_TRAIN, JASON_VAL, None, True),
    # near miss: the same shape 0.1 lower: below ln 2 from its fifth eval, the policy beat its reference
    (JASON_TRAIN, [v - 0.1 for v in JASON_VAL], None, False),
    # near miss: a CPO / RPO table (an NLL term beside the preference loss): its loss does not start at ln 2
    (JASON_TRAIN, JASON_VAL, {"eval_nll_loss": 1.2}, False),
    # near miss: three evals only
    (JASON_TRAIN[:3], JASON_VAL[:3], None, False),
    # near miss (fold V's Tooba26): the train loss memorised its pairs while the val loss climbed: overfit, not lr
    ([0.79, 0.33, 0.12, 0.012, 0.009, 0.008, 0.007, 0.007], [0.755, 0.846, 1.14, 1.208, 1.588, 1.638, 1.6, 1.62], None,
     False),
])
def test_a_dpo_val_loss_that_never_beat_ln_2_is_lr_too_large(tmp_path, train, val, extra, too_large):
    d = diagnose(dpo_state(tmp_path, train=train, val=val, extra=extra))
    f = d.features
    if extra:
        assert f["val_loss_min_vs_reference"] is None
    else:
        assert f["val_loss_min_vs_reference"] == pytest.approx(min(val) / math.log(2))
    assert (d.verdict == "lr-too-large") == too_large, [(x.rule_id, x.suppressed_by) for x in d.findings]
    if train[-1] < 0.01:
        assert d.verdict == "overfit-capacity"


@pytest.mark.parametrize("peak, too_large", [
    # fold AC's bencejdanko (Mistral-7B adapter, binary sentiment at 2.6e-4): a train window at 1.98 x ln 2, the loss
    # ending at 1.03 x ln 2 and the F1 back at the one-class 0.333 mid-run
    (1.3739, True),
    # near miss: the same run whose first window sat just above a uniform guess (1.2 x ln 2): no blow-up to read
    (0.83, False),
])
def test_a_classifier_loss_half_again_above_chance_that_ended_at_chance_is_lr_too_large(tmp_path, peak, too_large):
    log = []
    for i, (t, v, f1) in enumerate(zip([None, peak, None, 0.8969, 0.7156], [0.776354, 0.688293, 0.820521, 0.678725,
                                                                             0.654689],
                                       [0.333333, 0.523621, 0.333333, 0.578648, 0.64]), start=1):
        if t is not None:
            log.append({"step": 313 * i, "epoch": float(i), "loss": t, "grad_norm": 3.0, "learning_rate": 2.58e-4})
        log.append({"step": 313 * i, "epoch": float(i), "eval_loss": v, "eval_f1": f1, "eval_runtime": 10.0,
                    "eval_samples_per_second": 100.0})
    (tmp_path / "trainer_state.json").write_text(json.dumps({"global_step": 1565, "max_steps": 1565,
                                                             "logging_steps": 500, "log_history": log}))
    (tmp_path / "config.json").write_text(json.dumps({"model_type": "mistral", "id2label": {"0": "neg", "1": "pos"}}))
    d = diagnose(tmp_path)
    f = d.features
    assert f["train_loss_vs_chance"] == pytest.approx(0.7156 / math.log(2))
    assert (f["train_loss_peak_vs_chance"] >= 1.5) == too_large
    assert (d.verdict == "lr-too-large") == too_large, [(x.rule_id, x.suppressed_by) for x in d.findings]


@pytest.mark.parametrize("val, overfit", [
    # fold AK's frserras (bert-base, 1,000 texts, 3 epochs, the train loss never logged): the val loss fell to its
    # minimum at epoch 2 and rose 17% at epoch 3, beyond its noise, the accuracy at its best: 5b's "passed its minimum"
    ([0.557, 0.332, 0.389], True),
    # near miss: the last eval 6% above the minimum (under val_loss_rise_min)
    ([0.557, 0.332, 0.352], False),
    # near miss: two evals (epochs 1 and 2 of 2): one rise after the first eval, no fall seen before it
    ([0.332, 0.389], False),
])
def test_a_three_eval_curve_with_no_train_trend_that_rose_at_its_last_eval_is_overfit(tmp_path, val, overfit):
    log = []
    for i, (v, acc) in enumerate(zip(val, [0.770, 0.896, 0.900]), start=1):
        log.append({"step": 125 * i, "epoch": float(i), "eval_loss": v, "eval_accuracy": acc})
    end = 125 * len(val)
    log.append({"step": end, "epoch": float(len(val)), "train_runtime": 60.0, "train_loss": 0.3})
    (tmp_path / "trainer_state.json").write_text(json.dumps({"global_step": end, "max_steps": end,
                                                             "num_train_epochs": len(val), "logging_steps": 500,
                                                             "log_history": log}))
    d = diagnose(tmp_path)
    assert d.features["train_loss_untracked"] == 1 and d.features["n_eval_points"] == len(val)
    assert (d.verdict == "overfit-capacity") == overfit, [(x.rule_id, x.suppressed_by) for x in d.findings]


def test_an_adalora_adapter_reads_its_rank_from_init_r_not_the_unused_r(tmp_path):
    """peft's AdaLoRA builds its matrices at init_r (pruned towards target_r) and ignores `r`, whose default 8 is
    still written to adapter_config.json; its scale is lora_alpha / init_r."""
    folder = trainer_state(tmp_path, train=exp_decay(L10, 0.1, 6), val=exp_decay(1.5, 0.4, 6),
                           adapter={"r": 8, "lora_alpha": 32, "init_r": 12, "target_r": 4})
    cfg = json.loads((folder / "adapter_config.json").read_text())
    (folder / "adapter_config.json").write_text(json.dumps({**cfg, "peft_type": "ADALORA"}))
    f = load_run(folder).facts
    assert f["r"].value == 12 and "init_r" in f["r"].source and "target_r 4" in f["r"].source
    assert f["lora_scale"].value == pytest.approx(32 / 12) and "init_r" in f["lora_scale"].source


def test_the_remaining_fall_of_near_constant_falls_is_at_most_the_loss_itself():
    """Falls that barely shrink (q -> 1) extrapolate geometrically to many times the loss (1.0, 0.9, 0.801 read as
    1,224% left; 2.2, 1.9, 1.6 as 1e16 %, the float error of two equal falls): a loss cannot fall below zero."""
    from loratune.features import remaining_fall
    assert remaining_fall([1.0, 0.9, 0.801]) == pytest.approx(0.801)
    assert remaining_fall([2.2, 1.9, 1.6]) <= 1.6
    assert remaining_fall([1.0, 0.9, 0.85]) == pytest.approx(0.05)  # a fall that halves: unchanged


def test_a_feature_exactly_at_its_threshold_meets_at_least_and_fails_below():
    """val loss 0.40 -> 0.44 is a 10% rise, computed as 0.09999999999999995: it meets overfit's `>= 10%` and
    fails healthy's `< 10%`, as the rule table reads (both read it the other way before)."""
    from loratune.diagnose import RULE_OPS
    rise = (0.44 - 0.40) / 0.40
    assert rise < 0.1  # the float the feature holds
    assert RULE_OPS[">="](rise, 0.1) and not RULE_OPS["<"](rise, 0.1)
    assert RULE_OPS["<="](0.1 + 1e-17, 0.1) and not RULE_OPS[">"](0.30000000000000004, 0.3)
    assert RULE_OPS["<"](0.0999, 0.1) and RULE_OPS[">="](0.1001, 0.1)  # a real difference still counts


def test_the_summary_calls_a_tie_with_the_band_the_rules_read(tmp_path):
    """An overridden drop_se_min moves the summary's 'tie' line with the rules (it was frozen at import)."""
    folder = trainer_state(tmp_path, train=exp_decay(L10, 0.05, 8), val=exp_decay(1.5, 0.5, 6),
                           metric=lambda f: 0.86 if f < 0.55 else 0.825, n_val=400)
    default = diagnose(folder)
    drop = default.features.values["val_metric_final_drop_se"]
    assert 1.0 < drop < 2.0  # between the override and the table's band
    assert any("a tie" in line for line in default.curve_summary())
    loose = diagnose(folder, thresholds={"drop_se_min": 1.0})
    assert not any("a tie" in line for line in loose.curve_summary())
    assert any("noise units below the best" in line for line in loose.curve_summary())


@pytest.mark.parametrize("warmup,log_every,shape", [(33, 10, "linear"), (33, 5, "linear"), (50, 20, "cosine"),
                                                    (7, 4, "linear")])
def test_the_peak_lr_and_warmup_are_read_where_the_rise_meets_the_decay(tmp_path, warmup, log_every, shape):
    """The largest logged rate lies up to a logging interval past the warm-up's end: a decay fitted from there read
    5e-4 (warm-up 33, logged every 10) as 4.94e-4 with a warm-up of 39, so two runs differing only in rank did not
    compare (their lrs read 1.2% apart)."""
    steps, peak = 500, 5e-4

    def lr_at(k):  # the Trainer's schedule after k scheduler steps (linear warm-up for every shape)
        if k < warmup:
            return peak * k / warmup
        x = (k - warmup) / (steps - warmup)
        return peak * (1 - x if shape == "linear" else 0.5 * (1 + math.cos(math.pi * x)))

    log = [{"step": s, "loss": 2.0 - s / 1000, "learning_rate": lr_at(s - 1)} for s in range(log_every, steps + 1,
                                                                                             log_every)]
    log += [{"step": s, "eval_loss": 1.5 - s / 2000} for s in range(50, steps + 1, 50)]
    log.sort(key=lambda e: e["step"])
    tmp_path.joinpath("trainer_state.json").write_text(json.dumps({"global_step": steps, "max_steps": steps,
                                                                   "log_history": log}))
    f = load_run(tmp_path).facts
    assert f["learning_rate"].value == pytest.approx(peak, rel=2e-3) and f["lr_schedule"].value == shape
    assert f["warmup_steps"].value == pytest.approx(warmup, abs=1)


# ---- fold AV: a val loss that turned early and climbed as a whole in a zigzag (a rank trend) ----------------------

RAMY = (1.947, 1.887, 1.885, 1.897, 1.916, 2.024, 2.000, 2.139, 2.098)  # RamyHamrouni (AV): +11%, tau 0.81


@pytest.mark.parametrize("vals, overfit", [
    (RAMY, True),  # the fold-AV run: every later step inside the band (1.5 noise units at the end), tau 0.81
    ((1.947, 1.887, 1.885, 2.024, 1.897, 2.139, 1.916, 2.098, 2.000), False),  # near miss: the same values shuffled
    # into a zigzag with no trend (tau 0.52)
    ((1.947, 1.887, 1.885, 1.897, 1.916, 1.960, 1.950, 2.010, 1.995), False),  # near miss: the same zigzag climb
    # to +5.8% only
    ((1.947, 1.947, 1.947, 1.947, 1.887, 1.885, 1.916, 2.139, 2.098), False),  # near miss: minimum past half, 4 evals
])
def test_a_val_loss_that_turned_early_and_climbed_as_a_whole_is_overfit_by_its_rank_trend(tmp_path, vals, overfit):
    d = diagnose(trainer_state(tmp_path, train=exp_decay(2.1, 0.8, 3), val=lambda f: vals[round(f * 9) - 1],
                               evals=9, steps=459, log_every=3, classes=None, n_val=None, lr=2e-4,
                               adapter={"task_type": "CAUSAL_LM", "r": 16, "lora_alpha": 16}))
    tau = d.features["val_loss_rise_trend"]
    assert d.features["val_loss_rise_noise"] < 2 or not overfit  # the band alone does not settle the fold-AV run
    assert (tau is not None and tau >= 0.7 and d.features["val_loss_rise"] >= 0.1
            and d.features["val_loss_min_fraction"] <= 0.5) == overfit, tau
    assert (d.verdict == "overfit-capacity") == overfit, [(f.rule_id, f.suppressed_by) for f in d.findings]


def test_kendall_tau_counts_concordant_minus_discordant_pairs():
    from loratune.features import kendall_tau
    assert kendall_tau([1, 2, 3, 4]) == 1.0 and kendall_tau([4, 3, 2, 1]) == -1.0
    assert kendall_tau([1, 3, 2, 4]) == pytest.approx(4 / 6)  # 5 concordant, 1 discordant of 6
    assert kendall_tau([1.885, 1.897, 1.916, 2.024, 2.000, 2.139, 2.098]) == pytest.approx(17 / 21)


@pytest.mark.parametrize("fold, name, verdict", [
    # MSDS-Capstone (AV): GPT-2 LoRA r=8 (peft_type LORA read from its LoraConfig) at 5e-3 linear to 0, both losses
    # falling steadily to the end: a LoRA adapter at the top of its lr range has no smaller step to blame
    ("public_av", "MSDS-Capstone-Project__LLM_FineTuning__LoRA_Tuning", "undertrained"),
    # near miss: roxyrong (W), T5 soft prompt tuning at 0.3 (no LoRA adapter read): its high lr stays slow
    ("public_w", "roxyrong__w266_project__t5_soft_prompt_tuning_lambdalabs", "lr-too-small"),
])
def test_a_lora_language_model_at_the_top_of_loras_lr_range_still_falling_is_not_too_small_a_step(fold, name, verdict):
    from loratune.history_io import read_notebook
    run = next(r for r in json.loads((EXTERNAL / fold / "manifest.json").read_text())["runs"] if r["name"] == name)
    d = diagnose(read_notebook(EXTERNAL / fold / name / "notebook.ipynb", table=run["table_index"]))
    assert d.features["peak_lr"] >= 1.5e-3 and d.features["val_loss_still_falling"] == 1
    assert d.verdict == verdict, [(f.rule_id, f.suppressed_by) for f in d.findings]


def test_a_val_metric_at_zero_at_every_eval_is_never_healthy(tmp_path):
    """Zain1796 (AW): a RoBERTa NER run whose entity F1 is exactly 0 at all 3 evals (token accuracy 0.977634, the 'O'
    share, at each) while its val loss fell 13% read healthy on its validation side ('the val side improved beyond
    its noise and settled'). A model that never predicted the classes it scores is not healthy; the same curve
    with a metric that rose above 0 still is."""
    from loratune.history_io import read_notebook
    name = "Zain1796__Lucky-Cement-AI-System__NER_training"
    run = next(r for r in json.loads((EXTERNAL / "public_aw" / "manifest.json").read_text())["runs"]
               if r["name"] == name)
    d = diagnose(read_notebook(EXTERNAL / "public_aw" / name / "notebook.ipynb", table=run["table_index"]))
    assert d.features["val_metric_best"] == 0.0 and d.features["val_loss_drop"] > 0.1
    assert d.verdict != "healthy", [(f.rule_id, f.suppressed_by) for f in d.findings]
    # near miss: the same val loss with an entity F1 that rose above 0 (no train-loss trend logged, as there)
    log = [{"step": s, "epoch": s / 39, "eval_loss": v, "eval_f1": m, "eval_runtime": 1.0}
           for s, v, m in ((39, 0.1357, 0.0), (78, 0.1194, 0.21), (117, 0.1182, 0.34))]
    log.append({"step": 117, "epoch": 3.0, "train_runtime": 10.0, "train_loss": 0.3})
    (tmp_path / "trainer_state.json").write_text(json.dumps({"global_step": 117, "max_steps": 117,
                                                             "num_train_epochs": 3, "log_history": log}))
    d = diagnose(tmp_path)
    assert d.features["val_metric_best"] == pytest.approx(0.34)
    assert d.verdict == "healthy", [(f.rule_id, f.suppressed_by) for f in d.findings]


@pytest.mark.parametrize("start, best, n_val, val, lr_too_large", [
    # a token tagger at lr 1e-2 (a hunt's BertForTokenClassification run): 0.993 at its first eval, ten steps in,
    # then 1.000; its val loss -99.7% to its low at the last eval. It read lr-too-large, 'a val metric that never
    # gained'
    (0.993, 1.0, 20, (0.303, 0.0205, 0.0029, 0.0009), False),
    # the first eval within no_gain_max of 1 (0.007 of room): nothing to gain that counts, whatever the loss
    (0.993, 1.0, 20, (0.303, 0.12, 0.07, 0.05), False),
    # room (0.1), but a val loss fallen to ~0 at the end: it learned its val set
    (0.9, 0.94, 2000, (0.303, 0.0205, 0.0029, 0.0009), False),
    # near miss: a first eval that blew up (3.5), the val loss falling back towards ln(classes) beyond its noise to
    # its low at the end, the metric flat at the one-class level (folds A and B's diverged runs at lr 1e-1)
    (0.018, 0.018, 400, (3.5, 2.9, 2.6, 2.4), True),
])
def test_a_val_metric_with_no_room_to_gain_or_beside_a_val_loss_fallen_to_zero_is_no_never_gained(
        tmp_path, start, best, n_val, val, lr_too_large):
    at = dict(zip((0.25, 0.5, 0.75, 1.0), val))
    d = diagnose(trainer_state(tmp_path, train=exp_decay(3.0, 0.3, 3) if lr_too_large else exp_decay(1.5, 0.003, 8),
                               val=lambda f: at[round(f, 2)], metric=lambda f: start if f < 0.3 else best,
                               steps=40, evals=4, log_every=2, lr=2e-2, n_val=n_val, classes=5))
    assert d.features["peak_lr"] >= 1e-2 and d.features["val_metric_gain"] < 0.05
    assert d.features["val_loss_min_fraction"] == 1.0
    assert (d.features["val_metric_room"] >= 0.05) == (start < 0.99)  # the first eval's room below 1, in points
    finding = d.finding("lr-too-large")
    if lr_too_large:
        assert d.verdict == "lr-too-large" and finding.route == (
            "an lr far above the usual range with a val metric that never gained",)
        assert d.features["val_loss_drop_noise"] >= 2 and d.features["val_loss_final"] > 0.0035
    else:
        assert finding is None, finding.route
        assert d.verdict == "healthy", [(f.rule_id, f.suppressed_by) for f in d.findings]
        assert d.features["val_metric_room"] == pytest.approx(1 - start)


@pytest.mark.parametrize("share, n_val, never_gained", [
    # a binary classifier collapsed to a 90% majority at lr 2e-2, accuracy 0.900 at every eval of 40 val rows (noise
    # 0.05): 0.1 left to gain and none gained. Room counted in noise units (1.95, under 2) hid it: inconclusive
    (0.9, 40, True),
    (0.8, 12, True),  # an 80% majority, 12 val rows (noise 0.12): 0.2 of room, 1.6 noise units
    (0.95, 20, True),  # room just no_gain_max, inside its noise (0.064)
    # near misses: a first eval less than no_gain_max below a perfect score, whatever its noise (0.09, 0.04)
    (0.96, 12, False),
    (0.96, 40, False),
])
def test_a_val_metric_pinned_with_room_to_gain_never_gained_however_wide_its_noise_band(
        tmp_path, share, n_val, never_gained):
    entropy = -(share * math.log(share) + (1 - share) * math.log(1 - share))  # the loss of the majority answer
    d = diagnose(trainer_state(tmp_path, train=lambda f: entropy + 0.02 * math.sin(20 * f),
                               val=lambda f: entropy + 0.005 * math.sin(9 * f), metric=lambda f: share, n_val=n_val,
                               classes=2, lr=2e-2, evals=10, steps=200))
    assert d.features["val_metric_gain"] == 0.0 and d.features["val_metric_room"] == pytest.approx(1 - share)
    assert d.features["val_metric_noise"] > 0.03
    finding = d.finding("lr-too-large")
    route = "an lr far above the usual range with a val metric that never gained"
    if never_gained:
        assert d.verdict == "lr-too-large" and finding.route == (route,)
    else:
        assert finding is None or route not in finding.route
