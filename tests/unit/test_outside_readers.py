"""The readers of runs people already have, on the shapes a third bug hunt found read wrongly: a resumed or
reused TensorBoard logging_dir, TF2-style tensor scalars, W&B / Trainer column names and decimal commas in a CSV,
a stale top-level trainer_state.json, text where numbers belong, max_steps -1, num_labels, rsLoRA groups, LoRA
variants' notes and a V-shaped second half."""

from __future__ import annotations

import importlib.util
import json
import math
import os
import time
from pathlib import Path

import pytest

from loratune.cli import main
from loratune.errors import UserError
from loratune.history_io import load_run


def _log(n: int = 200, lr: float = 1e-3, first: int = 10) -> list[dict]:
    out = []
    for s in range(first, n + 1, 10):
        out.append({"step": s, "epoch": s / 13, "loss": 2.3 * math.exp(-s / 100), "learning_rate": lr * (1 - (s - 1) / n)})
        if s % 20 == 0:
            out.append({"step": s, "epoch": s / 13, "eval_loss": 2.2 * math.exp(-s / 110),
                        "eval_f1": 0.45 + 0.4 * (1 - math.exp(-s / 50))})
    return out


def _state(folder: Path, log: list[dict], adapter: dict | None = None, config: dict | None = None, **state) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "trainer_state.json").write_text(json.dumps({"log_history": log, **state}), encoding="utf-8")
    if adapter is not None:
        (folder / "adapter_config.json").write_text(json.dumps(adapter), encoding="utf-8")
    if config is not None:
        (folder / "config.json").write_text(json.dumps(config), encoding="utf-8")
    return folder


def _tb(folder: Path, first: int, last: int, lr: float = 1e-3) -> None:
    pytest.importorskip("tensorboard")
    from torch.utils.tensorboard import SummaryWriter

    w = SummaryWriter(str(folder))
    for s in range(first, last + 1, 10):
        w.add_scalar("train/loss", 2.3 * math.exp(-s / 100), s)
        w.add_scalar("train/learning_rate", lr, s)
        if s % 20 == 0:
            w.add_scalar("eval/loss", 2.2 * math.exp(-s / 110), s)
    w.close()


LORA = {"peft_type": "LORA", "r": 8, "lora_alpha": 16, "target_modules": ["query", "value"], "task_type": "SEQ_CLS"}


def test_a_resumed_runs_tensorboard_folders_are_joined_into_one_curve(tmp_path):
    """The Trainer opens a new runs/<date> folder when it resumes: only the newest (steps 110-200) was read, and
    it outranked the checkpoint's state, which held the run from its start."""
    run = tmp_path / "r"
    _tb(run / "runs" / "Dec01_first", 10, 120)
    time.sleep(1.1)
    _tb(run / "runs" / "Dec02_resumed", 110, 200)
    h = load_run(run)
    assert h.source == "tensorboard" and h.points[0]["step"] == 20 and h.points[-1]["step"] == 200
    assert any("2 event files joined" in n for n in h.notes)


def test_a_checkpoint_state_outranks_a_tensorboard_log_that_misses_the_runs_start(tmp_path):
    run = tmp_path / "r"
    _tb(run / "runs" / "Dec02_resumed", 110, 200)  # the first session's log was deleted
    _state(run / "checkpoint-180", [e for e in _log() if e["step"] <= 180], global_step=180)
    h = load_run(run)
    assert h.source == "hf-trainer" and h.points[0]["step"] == 20
    assert any("starts at step 120" in n and "read the checkpoint's trainer_state.json" in n for n in h.notes)


def test_two_runs_in_one_logging_dir_are_not_stitched(tmp_path):
    """A second run written into the same folder: its steps 10-100 were merged with the first's 110-200."""
    run = tmp_path / "r"
    _tb(run, 10, 200, lr=1e-3)
    time.sleep(1.1)
    _tb(run, 10, 100, lr=1e-4)
    h = load_run(run)
    assert h.points[-1]["step"] == 100
    assert {round(p["lr"], 6) for p in h.points if p.get("lr")} == {1e-4}
    assert any("hold 2 runs" in n for n in h.notes)


def _trainer_tb(folder: Path, steps: range, lr_of, loss_of) -> None:
    """An event file as the Trainer writes it: a loss and a learning rate at each logging step, an eval every 10."""
    pytest.importorskip("tensorboard")
    from torch.utils.tensorboard import SummaryWriter

    w = SummaryWriter(str(folder))
    for s in steps:
        w.add_scalar("train/loss", loss_of(s), s)
        w.add_scalar("train/learning_rate", lr_of(s), s)
        if s % 10 == 0:
            w.add_scalar("eval/loss", 1.3 * math.exp(-s / 50), s)
    w.close()


def test_a_second_run_that_logs_less_often_is_not_stitched_to_the_first(tmp_path):
    """Two train() runs into one output_dir: lr 0.1 logging every 5 steps to 30, then lr 0.01 logging every 10 to 60.
    The second's first step (10) is past the first's (5), so it was joined as a resume: the old run's losses at 5, 15,
    25 averaged into the new run's windows and its lr 0.087 read as the run's."""
    first = tmp_path / "a" / "runs"
    _trainer_tb(first / "Dec05_first", range(5, 31, 5), lambda s: 0.1 * (1 - (s - 1) / 30),
                lambda s: 3.0 * math.exp(-s / 40))
    time.sleep(1.1)
    _trainer_tb(first / "Dec05_second", range(10, 61, 10), lambda s: 0.01 * (1 - (s - 1) / 60),
                lambda s: 1.4 * math.exp(-s / 40))
    h = load_run(tmp_path / "a")
    assert [p["step"] for p in h.points] == [10, 20, 30, 40, 50, 60]
    assert h.points[0]["train/loss"] == pytest.approx(1.4 * math.exp(-10 / 40), rel=1e-6)  # the new run's only
    assert h.facts["learning_rate"].value == pytest.approx(0.01, rel=0.05)
    assert any("hold 2 runs" in n and "logs from its start: its first logged step, 10, is within its logging "
               "interval of 10 steps from step 0" in n for n in h.notes)
    assert not any("joined" in n for n in h.notes)


@pytest.mark.parametrize("lr_of", [lambda s: 1e-2 * (1 - s / 60), lambda s: 2e-4], ids=["same-linear", "constant"])
def test_two_runs_on_the_same_schedule_are_not_stitched(tmp_path, lr_of):
    """A rerun of the same config logging every 10 where the first logged every 5: every rate both logged agrees, so
    a rule that split runs on another learning rate at a shared step joined them (the old run's losses at 5, 15, ...
    averaged into the new run's windows: 1.7131 for the new run's 0.7788 at step 10)."""
    runs = tmp_path / "r" / "runs"
    _trainer_tb(runs / "Dec05_first", range(5, 61, 5), lr_of, lambda s: 3.0 * math.exp(-s / 40))
    time.sleep(1.1)
    _trainer_tb(runs / "Dec05_second", range(10, 61, 10), lr_of, lambda s: 1.0 * math.exp(-s / 40))
    h = load_run(tmp_path / "r")
    assert [p["train/loss"] for p in h.points] == pytest.approx([math.exp(-s / 40) for s in range(10, 61, 10)],
                                                                rel=1e-6)
    assert any("hold 2 runs" in n and "logs from its start" in n for n in h.notes)
    assert not any("joined" in n for n in h.notes)


@pytest.mark.parametrize("max_steps", [60, 120], ids=["same-schedule", "max-steps-raised"])
def test_a_resume_is_joined_whatever_its_schedule(tmp_path, max_steps):
    """A run of 60 steps (lr 1e-2 linear, logging every 5) dies after step 35; it is resumed from checkpoint-20, as it
    was or with max_steps raised to 120 (the Trainer rebuilds the linear decay over 120 steps, so every rate the resume
    logs at 25-35 differs from the first session's): both are one run, read from step 5. A rule that split on another
    rate at a shared step read the raised one's resume alone, its steps 0-20 lost."""
    runs = tmp_path / "r" / "runs"
    _trainer_tb(runs / "Dec05_first", range(5, 36, 5), lambda s: 1e-2 * (1 - s / 60), lambda s: 1.4 * math.exp(-s / 40))
    time.sleep(1.1)
    _trainer_tb(runs / "Dec05_resumed", range(25, max_steps + 1, 5), lambda s: 1e-2 * (1 - s / max_steps),
                lambda s: 1.4 * math.exp(-s / 40))
    h = load_run(tmp_path / "r")
    assert [p["step"] for p in h.points] == list(range(10, max_steps + 1, 10))
    assert h.points[0]["train/loss"] == pytest.approx((1.4 * math.exp(-5 / 40) + 1.4 * math.exp(-10 / 40)) / 2, rel=1e-6)
    assert any("2 event files joined" in n for n in h.notes) and not any("runs (" in n for n in h.notes)
    assert h.points[2]["lr"] == pytest.approx(1e-2 * (1 - 30 / max_steps), rel=1e-6)  # the resume's rate at 30


def test_tensor_scalars_written_the_tf2_way_are_read(tmp_path):
    pytest.importorskip("tensorboard")
    import numpy as np
    from tensorboard.compat.proto.event_pb2 import Event
    from tensorboard.compat.proto.summary_pb2 import Summary
    from tensorboard.compat.proto.tensor_pb2 import TensorProto
    from tensorboard.summary.writer.event_file_writer import EventFileWriter

    w = EventFileWriter(str(tmp_path / "r"))
    for s in range(10, 110, 10):
        values = [Summary.Value(tag="train/loss", tensor=TensorProto(dtype=1, tensor_content=np.float32(
            2.0 - s / 100).tobytes()))]
        if s % 20 == 0:
            values.append(Summary.Value(tag="eval/loss", tensor=TensorProto(dtype=1, tensor_content=np.float32(
                2.1 - s / 120).tobytes())))
        w.add_event(Event(step=s, wall_time=time.time(), summary=Summary(value=values)))
    w.close()
    h = load_run(tmp_path / "r")
    assert [p["step"] for p in h.points] == [20, 40, 60, 80, 100]
    assert h.points[-1]["val/loss"] == pytest.approx(2.1 - 100 / 120, rel=1e-6)


def test_a_csv_with_the_trainers_wandb_names_reads_steps_and_lr(tmp_path):
    rows = ["_step,train/global_step,train/epoch,train/loss,train/learning_rate,eval/loss,eval/accuracy"]
    for i, s in enumerate(range(20, 201, 20)):
        rows.append(f"{i},{s},{s / 50},{2.3 * math.exp(-s / 100):.4f},{1e-3 * (1 - s / 200):.6f},"
                    f"{2.2 * math.exp(-s / 110):.4f},{0.5 + s / 1000:.3f}")
    (tmp_path / "r.csv").write_text("\n".join(rows) + "\n")
    h = load_run(tmp_path / "r.csv")
    assert [p["step"] for p in h.points][:2] == [20, 40] and h.points[-1]["step"] == 200
    assert h.points[0]["lr"] == pytest.approx(9e-4) and h.points[0]["epoch"] == pytest.approx(0.4)


def test_a_wandb_chart_export_reads_its_first_run_and_skips_the_bands(tmp_path):
    rows = ['Step,"a - train/loss","a - train/loss__MIN","a - train/loss__MAX","b - train/loss","a - eval/loss"']
    rows += [f"{s},{2 - s / 100},{1.9 - s / 100},{2.1 - s / 100},{9 - s / 100},{2.1 - s / 120}" for s in (20, 40, 60)]
    (tmp_path / "chart.csv").write_text("\n".join(rows) + "\n")
    h = load_run(tmp_path / "chart.csv")
    assert [p["train/loss"] for p in h.points] == pytest.approx([1.8, 1.6, 1.4])
    assert any("chart export of 2 runs" in n for n in h.notes)


def test_decimal_commas_are_read_and_a_csv_with_no_number_is_refused(tmp_path, capsys):
    (tmp_path / "semi.csv").write_text("step;train_loss;val_loss;val_f1\n20;2,1;2,0;0,5\n40;1,5;1,6;0,6\n")
    h = load_run(tmp_path / "semi.csv")
    assert [p["val/loss"] for p in h.points] == [2.0, 1.6] and h.points[1]["val/macro_f1"] == 0.6
    (tmp_path / "words.csv").write_text("step,train_loss,val_loss\n20,high,higher\n40,low,lower\n")
    assert main(["diagnose", str(tmp_path / "words.csv")]) == 2
    assert "no number in its loss or metric columns" in " ".join(capsys.readouterr().err.split())


def test_a_newer_checkpoint_outranks_a_stale_top_level_state(tmp_path):
    run = _state(tmp_path / "r", _log(200), global_step=200)
    # resumed from step 200 and trained on: the checkpoint's log holds the first 200 steps' entries as they were
    _state(run / "checkpoint-400", _log(200) + [e for e in _log(400) if e["step"] > 200], global_step=400,
           max_steps=500)
    h = load_run(run)
    assert h.points[-1]["step"] == 400
    assert any("checkpoint-400/trainer_state.json reaches step 400" in n for n in h.notes)


def test_a_stale_checkpoint_of_another_run_in_a_reused_output_dir_does_not_outrank_the_finished_state(tmp_path):
    """output_dir reused: an older 500-step run at lr 2e-4 left checkpoint-500; the new run (300 steps, lr 1e-4)
    finished and wrote the top-level state. The checkpoint won on its step number alone and the run read lr 2e-4."""
    def log(total: int, peak: float) -> list[dict]:
        out = [{"step": s, "loss": 0.3 + 2.0 * math.exp(-s / 60), "learning_rate": peak * (total - s) / total}
               for s in range(10, total + 1, 10)]
        out += [{"step": s, "eval_loss": 0.5 + 1.5 * math.exp(-s / 80)} for s in range(50, total + 1, 50)]
        return sorted(out, key=lambda e: e["step"])

    run = _state(tmp_path / "r", log(300, 1e-4) + [{"step": 300, "train_runtime": 60.0, "train_loss": 0.8}],
                 global_step=300, max_steps=300)
    ckpt = _state(run / "checkpoint-500", log(500, 2e-4), global_step=500, max_steps=500) / "trainer_state.json"
    top = (run / "trainer_state.json").stat().st_mtime
    os.utime(ckpt, (top - 86400, top - 86400))  # the older run's, a day before the new run's end
    h = load_run(run)
    assert h.points[-1]["step"] == 300 and h.facts["max_steps"].value == 300
    assert h.facts["learning_rate"].value == pytest.approx(1e-4, rel=0.05)
    assert any("checkpoint-500/trainer_state.json reaches step 500" in n and "their logs differ from step 10 on" in n
               and "the top-level state is read" in n for n in h.notes)
    # near miss: the same checkpoint written after the top-level state is the newest work (a re-run into the same
    # output_dir, killed after its checkpoint; or a resume whose log forks mid-window): it is read, never "stale"
    os.utime(ckpt, (top + 60, top + 60))
    h = load_run(run)
    assert h.points[-1]["step"] == 500 and h.facts["max_steps"].value == 500
    assert not any("stale" in n for n in h.notes)


@pytest.mark.parametrize("log,said", [([], "log_history is empty"),
                                      ([{"epoch": 1.0, "loss": 2.0}, {"epoch": 1.0, "eval_loss": 1.0}],
                                       "none with a numeric `step`")])
def test_a_log_history_with_nothing_on_a_step_is_refused(log, said, tmp_path, capsys):
    run = _state(tmp_path / "r", log)
    assert main(["diagnose", str(run)]) == 2
    assert said in " ".join(capsys.readouterr().err.split())


def test_losses_written_as_text_are_no_divergence(tmp_path):
    """Quoted numbers read as non-finite values, and the run as diverged with confidence 0.95."""
    from loratune.diagnose import diagnose

    run = _state(tmp_path / "r", [{"step": 10, "loss": "2.3"}, {"step": 20, "loss": "2.0"},
                                  {"step": 20, "eval_loss": "1.2"}, {"step": 30, "loss": 1.1},
                                  {"step": 40, "loss": 0.9}, {"step": 40, "eval_loss": 1.0}])
    h = load_run(run)
    assert any("3 loss, rate or eval values written as text" in n for n in h.notes)
    assert diagnose(h).verdict != "diverged"


def test_max_steps_minus_one_is_no_planned_length(tmp_path):
    run = _state(tmp_path / "r", [e for e in _log() if e["step"] <= 100], global_step=100, max_steps=-1)
    h = load_run(run)
    assert "max_steps" not in h.facts and h.meta.get("steps_planned") is None


def test_num_labels_gives_the_class_count_and_named_id2label_keys_are_read(tmp_path):
    run = _state(tmp_path / "a", _log(), config={"model_type": "bert", "num_labels": 5})
    assert load_run(run).facts["n_classes"].value == 5
    assert load_run(run).facts["n_classes"].source == "config.json num_labels"
    run = _state(tmp_path / "b", _log(), config={"model_type": "bert", "id2label": {"neg": "neg", "pos": "pos",
                                                                                      "mid": "mid"}})
    assert load_run(run).facts["n_classes"].value == 3


def test_the_class_count_of_config_json_reaches_the_report_header(tmp_path):
    """config.json's id2label (or num_labels) gave the diagnosis its class count but not the report's header or `show`'s
    title ('? classes'), which read meta, where only the estimates from the weights or the first loss wrote it."""
    from loratune.report.model import build_outside_report

    for name, config, source in (("ids", {"model_type": "bert", "id2label": {str(i): f"c{i}" for i in range(4)}},
                                  "config.json id2label"),
                                 ("num", {"model_type": "bert", "num_labels": 5}, "config.json num_labels")):
        run = _state(tmp_path / name, _log(), config=config)
        h = load_run(run)
        assert h.meta["n_classes"] == h.facts["n_classes"].value == len(config.get("id2label") or "abcde")
        assert h.facts["n_classes"].source == source
        assert build_outside_report(run).n_classes == h.meta["n_classes"]
    # a language model's config: no class count in meta either (its id2label is the default pair)
    run = _state(tmp_path / "lm", _log(), config={"model_type": "llama", "architectures": ["LlamaForCausalLM"],
                                                   "id2label": {"0": "LABEL_0", "1": "LABEL_1"}, "num_labels": 2})
    assert "n_classes" not in load_run(run).meta


def test_an_evaluation_repeated_by_a_resume_is_not_blamed_on_an_evaluate_after_training(tmp_path):
    """A run resumed from checkpoint-100 with eval_on_start evaluates step 100 again: the note said it was a
    trainer.evaluate() after training, at a step half way through the log."""
    log = _log()  # evals every 20 steps to 200
    at = next(i for i, e in enumerate(log) if e["step"] == 100 and "eval_loss" in e)
    again = {**log[at], "eval_loss": log[at]["eval_loss"] + 0.01}  # the resumed run's own evaluation of step 100
    h = load_run(_state(tmp_path / "resumed", log[:at + 1] + [again] + log[at + 1:], global_step=200))
    assert next(p for p in h.points if p["step"] == 100)["val/loss"] == log[at]["eval_loss"]  # the first is read
    notes = [n for n in h.notes if "logged again" in n]
    assert notes == ["1 evaluation(s) logged again at step(s) 100, already evaluated, before the log's end (a run "
                     "resumed from a checkpoint there evaluates it again, with eval_on_start): the first is read"]
    # an evaluate() after training logs at the last step: that one is said as such
    last = {**log[-1], "eval_loss": 0.1}
    h = load_run(_state(tmp_path / "after", log + [last], global_step=200))
    assert [n for n in h.notes if "logged again" in n] == [
        "1 evaluation(s) logged again at the last step (200), already evaluated (trainer.evaluate() after training): "
        "the first, made while training, is read"]
    assert h.points[-1]["val/loss"] == log[-1]["eval_loss"]


def test_an_rslora_rank_sweep_groups_on_its_own_scale(tmp_path):
    from loratune.diagnose import compare

    a = _state(tmp_path / "a", _log(), adapter={**LORA, "use_rslora": True})
    b = _state(tmp_path / "b", _log(), adapter={**LORA, "r": 16, "lora_alpha": 32, "use_rslora": True})
    c = _state(tmp_path / "c", _log(), adapter={**LORA, "r": 16, "lora_alpha": 16 * math.sqrt(2), "use_rslora": True})
    groups = [(sorted(r[0] for r in g.runs), g.note) for g in compare([a, b, c]).groups if g.knob == "r"]
    # a (alpha 16 / sqrt 8 = 5.66) and c (22.6 / 4 = 5.66) keep the rsLoRA scale; a and b keep alpha/r, not the scale
    assert (["a", "c"], "scale lora_alpha/sqrt(r) fixed (rsLoRA)") in groups
    assert not any(g == ["a", "b"] and "scale" in n for g, n in groups)


def test_a_non_lora_adapter_and_rank_patterns_are_said_plainly(tmp_path):
    run = _state(tmp_path / "p", _log(), adapter={"peft_type": "PREFIX_TUNING", "num_virtual_tokens": 20,
                                                  "task_type": "SEQ_CLS", "base_model_name_or_path": "x"})
    notes = load_run(run).notes
    assert not any("no adapter_config.json" in n for n in notes)
    assert any("a PREFIX_TUNING adapter: no LoRA rank" in n for n in notes)
    run = _state(tmp_path / "q", _log(), adapter={**LORA, "rank_pattern": {"query": 4}, "alpha_pattern": {"value": 64}})
    note = next(n for n in load_run(run).notes if "rank_pattern" in n)
    assert "query: r 4, scale 4" in note and "value: r 8, scale 8" in note


def test_a_v_shaped_second_half_reads_a_bounded_late_fall():
    """A public run whose loss fell to ~2,170 and climbed back to ~8,546 over its second half: the fitted line's mid
    value sat near 0 and the late fall read -27,814.7%."""
    from loratune.features import compute_features

    h = load_run(Path(__file__).parents[1] / "fixtures/external/public/siasio__StressDetection__results")
    assert compute_features(h.points, h.meta, h.config).values["train_loss_late_drop"] == -1.0


def test_mnli_style_validation_sets_read_the_first_as_validation(tmp_path):
    log = []
    for s in (20, 40, 60):
        log += [{"step": s, "loss": 2 - s / 100},
                {"step": s, "eval_validation_matched_loss": 1.9 - s / 100, "eval_validation_matched_accuracy": 0.5},
                {"step": s, "eval_validation_mismatched_loss": 1.95 - s / 100}]
    h = load_run(_state(tmp_path / "m", log))
    assert [p["val/loss"] for p in h.points] == pytest.approx([1.7, 1.5, 1.3])
    assert any("'validation_matched' read as the validation set" in n for n in h.notes)


def _named_sets_then_evaluate() -> list[dict]:
    """eval_dataset={"validation": 20 rows, "train": 16 rows}, evaluated every 10 steps to 60, then
    `trainer.evaluate(val[:8])` after training: the plain eval_* keys, once, at the last step."""
    log = []
    for s in range(0, 61, 10):
        if s:
            log.append({"step": s, "epoch": s / 6, "loss": 1.4 * math.exp(-s / 30), "learning_rate": 0.01})
        log.append({"step": s, "epoch": s / 6, "eval_validation_loss": 1.39 * math.exp(-s / 35),
                    "eval_validation_macro_f1": 0.1 + s / 75, "eval_validation_runtime": 0.01,
                    "eval_validation_samples_per_second": 2000.0})
        log.append({"step": s, "epoch": s / 6, "eval_train_loss": 1.38 * math.exp(-s / 25),
                    "eval_train_macro_f1": 0.1 + s / 70, "eval_train_runtime": 0.01,
                    "eval_train_samples_per_second": 1600.0})
    log.append({"step": 60, "epoch": 10.0, "train_runtime": 1.5, "train_loss": 0.7, "total_flos": 5e8})
    log.append({"step": 60, "epoch": 10.0, "eval_loss": 0.1025, "eval_macro_f1": 1.0, "eval_runtime": 0.01,
                "eval_samples_per_second": 800.0})
    return log


def test_an_evaluate_after_training_does_not_replace_the_named_validation_sets_last_point(tmp_path):
    """The plain eval_loss of a trainer.evaluate(val[:8]) after training and the run's eval_validation_loss both read
    as val/loss: the later one replaced the step-60 point (val loss 0.10, macro-F1 1.0, 8 rows for 0.18, 0.90, 20
    rows), in the trainer_state and in the TensorBoard log alike."""
    log = _named_sets_then_evaluate()
    state = load_run(_state(tmp_path / "run", log, global_step=60, max_steps=60))
    readings = [state]
    if importlib.util.find_spec("tensorboard") is not None:  # the TensorBoard log of the same run, read the same
        from torch.utils.tensorboard import SummaryWriter

        w = SummaryWriter(str(tmp_path / "tb" / "runs" / "Dec05"))
        for e in log:
            for k, v in e.items():
                if k.startswith("eval_"):
                    w.add_scalar("eval/" + k[len("eval_"):], v, e["step"])
                elif k in ("loss", "learning_rate", "epoch", "train_loss", "train_runtime", "total_flos"):
                    w.add_scalar("train/" + k, v, e["step"])
        w.close()
        readings.append(load_run(tmp_path / "tb"))
    for h in readings:
        last = h.points[-1]
        assert last["step"] == 60
        assert last["val/loss"] == pytest.approx(1.39 * math.exp(-60 / 35), rel=1e-6)
        assert last["val/macro_f1"] == pytest.approx(0.1 + 60 / 75, rel=1e-6) and last["val/n"] == 20
        assert h.facts["val_n"].value == 20
        assert last["eval/loss"] == pytest.approx(0.1025, rel=1e-6)  # kept, under its own name
        assert [p["step"] for p in h.points if "val/loss" in p] == list(range(0, 61, 10))
        assert any("'validation' (evaluated at 7 step(s)) read as the validation set, the plain eval_* keys (at 1) "
                   "as eval/*" in n for n in h.notes)


def test_a_csv_export_with_an_evaluate_after_training_keeps_the_named_validation_curve(tmp_path):
    """The same run's W&B export (`eval/loss` once, from the evaluate after training, beside `eval/validation_*` at every
    eval) or MLflow pivot (the Trainer's keys): the fixed alias eval_loss -> val/loss took the one value, the named
    set's columns were dropped as a second val/loss, and the run's val curve was a single point at its last step."""
    log = _named_sets_then_evaluate()
    state = load_run(_state(tmp_path / "run", log, global_step=60, max_steps=60))
    keys = sorted({k for e in log for k in e})
    for fname, name_of in (("mlflow.csv", lambda k: k),
                           ("wandb.csv", lambda k: ("train/global_step" if k == "step" else
                                                    k.replace("eval_", "eval/", 1) if k.startswith("eval_") else
                                                    "train/" + k))):
        rows = [",".join(name_of(k) for k in keys)] + [",".join(str(e.get(k, "")) for k in keys) for e in log]
        (tmp_path / fname).write_text("\n".join(rows) + "\n")
        h = load_run(tmp_path / fname)
        for key in ("val/loss", "val/macro_f1", "val/n", "train_eval/loss"):
            got = [(p["step"], p[key]) for p in h.points if p.get(key) is not None]
            assert got == [(p["step"], pytest.approx(p[key])) for p in state.points if p.get(key) is not None], key
            assert len(got) == 7, key
        last = next(p for p in h.points if p["step"] == 60 and "val/loss" in p)
        assert last["val/n"] == 20 and last["eval/loss"] == pytest.approx(0.1025)
        assert any("'validation' (evaluated at 7 step(s)) read as the validation set" in n for n in h.notes), fname
        assert not any("validation" in n for n in h.notes if n.startswith("CSV columns ignored")), fname


def test_a_named_set_evaluated_as_often_as_an_evaluate_after_training_is_the_validation_set(tmp_path):
    """Named sets evaluated once while training (eval_strategy='epoch', one epoch), then trainer.evaluate(val[:8])
    logs the plain eval_* keys at the same last step: a tie of one step each. trainer_state read 'validation' (its
    entry came first), the TensorBoard log and a W&B export (both sets in one entry of the step) read the plain keys
    as the validation set: val loss 0.1025, macro-F1 1.0 of 8 rows for 0.40, 0.80 of 20."""
    log = [{"step": s, "epoch": s / 60, "loss": 1.4 * math.exp(-s / 30), "learning_rate": 0.01} for s in range(5, 61, 5)]
    log += [{"step": 60, "epoch": 1.0, "eval_validation_loss": 0.40, "eval_validation_macro_f1": 0.80,
             "eval_validation_runtime": 0.01, "eval_validation_samples_per_second": 2000.0},
            {"step": 60, "epoch": 1.0, "eval_train_loss": 0.35, "eval_train_macro_f1": 0.85},
            {"step": 60, "epoch": 1.0, "train_runtime": 1.5, "train_loss": 0.7, "total_flos": 5e8},
            {"step": 60, "epoch": 1.0, "eval_loss": 0.1025, "eval_macro_f1": 1.0, "eval_runtime": 0.01,
             "eval_samples_per_second": 800.0}]
    readings = {"trainer_state": load_run(_state(tmp_path / "run", log, global_step=60, max_steps=60))}
    keys = sorted({k for e in log for k in e})
    name_of = lambda k: ("train/global_step" if k == "step" else k.replace("eval_", "eval/", 1) if k.startswith("eval_")
                         else "train/" + k)
    rows = [",".join(name_of(k) for k in keys)] + [",".join(str(e.get(k, "")) for k in keys) for e in log]
    (tmp_path / "wandb.csv").write_text("\n".join(rows) + "\n")
    readings["csv"] = load_run(tmp_path / "wandb.csv")
    if importlib.util.find_spec("tensorboard") is not None:
        from torch.utils.tensorboard import SummaryWriter

        w = SummaryWriter(str(tmp_path / "tb" / "runs" / "Dec05"))
        for e in log:
            for k, v in e.items():
                if k.startswith("eval_"):
                    w.add_scalar("eval/" + k[len("eval_"):], v, e["step"])
                elif k in ("loss", "learning_rate", "epoch", "train_loss", "train_runtime", "total_flos"):
                    w.add_scalar("train/" + k, v, e["step"])
        w.close()
        readings["tensorboard"] = load_run(tmp_path / "tb")
    for reader, h in readings.items():
        last = next(p for p in h.points if "val/loss" in p)
        assert (last["step"], last["val/loss"], last["val/macro_f1"], last["val/n"]) == (
            60, pytest.approx(0.40), pytest.approx(0.80), 20), reader
        assert last["eval/loss"] == pytest.approx(0.1025), reader  # the evaluate() after training, under its own name
        assert any("'validation' (evaluated at 1 step(s)) read as the validation set, the plain eval_* keys (at 1) "
                   "as eval/*" in n for n in h.notes), reader


def test_a_large_csv_is_streamed_keeping_only_its_mapped_columns(tmp_path):
    """A W&B export with a hundred logged system columns: read row by row, the memory it takes stays under the file's
    size (the whole text, its lines and every cell as strings took ~10x), and the curve read is the same."""
    from support import traced_peak

    extra = ",".join(f"{(i * 37) % 100:.6f}" for i in range(100))
    lines = ["step,train_loss,val_loss,val_f1," + ",".join(f"sys/gpu{i}_util" for i in range(100))]
    for s in range(1, 2001):
        val = f"{1.1 - s / 4000:.6f},{0.5 + s / 8000:.6f}" if s % 100 == 0 else ","
        lines.append(f"{s},{1.0 - s / 4000:.6f},{val},{extra}")
    path = tmp_path / "export.csv"
    path.write_text("\n\n" + "\r\n".join(lines) + "\n")  # blank lines above the header, CRLF rows
    size = path.stat().st_size
    run, peak = traced_peak(load_run, path)
    assert peak < size, (peak, size)
    # one point per evaluation, the train rows since the one before its window (as a trainer_state is read)
    assert len(run.points) == 20
    first = run.points[0]
    assert first["step"] == 100 and first["val/loss"] == 1.075 and first["val/macro_f1"] == 0.5125
    assert first["train/loss"] == pytest.approx(1.0 - 50.5 / 4000)  # the mean of the losses at steps 1..100
    assert first["train/loss_first"] == pytest.approx(1.0 - 1 / 4000) and first["train/loss_last"] == 0.975
    assert any(n.startswith("CSV columns ignored: 'sys/gpu0_util'") for n in run.notes)



def test_a_long_csv_holds_its_points_and_one_window_not_its_rows(tmp_path):
    """20,000 narrow rows (step, loss, learning_rate; an eval every 1,000 steps): the reader held every row as a
    point, then as a train log, an eval entry and an lr sample at once (30x the file's size) for 20 points; windowed as
    the rows stream it holds the points, one window and the lr column. Rows out of step order, or a one-value summary
    column read instead of its curve, are read again: the same points."""
    from support import traced_peak

    def row(s: int) -> str:
        ev = f"{1.2 * math.exp(-s / 10000):.5f}" if s % 1000 == 0 else ""
        return f"{s},{1.4 * math.exp(-s / 8000) + 0.01 * (s % 7):.5f},{2e-4 * (1 - s / 20000):.6g},{ev}"

    rows = [row(s) for s in range(1, 20001)]
    path = tmp_path / "long.csv"
    path.write_text("step,loss,learning_rate,eval_loss\n" + "\n".join(rows) + "\n")
    run, peak = traced_peak(load_run, path)
    assert peak < 3 * path.stat().st_size, (peak, path.stat().st_size)
    assert [p["step"] for p in run.points] == list(range(1000, 20001, 1000))
    first = run.points[0]
    assert first["train/loss"] == pytest.approx(sum(float(r.split(",")[1]) for r in rows[:1000]) / 1000)
    assert first["val/loss"] == pytest.approx(1.2 * math.exp(-0.1), abs=1e-5) and first["lr"] == pytest.approx(1.9e-4)
    assert run.facts["learning_rate"].value == pytest.approx(2e-4) and run.facts["lr_schedule"].value == "linear"
    shuffled = tmp_path / "shuffled.csv"  # the second half first
    shuffled.write_text("step,loss,learning_rate,eval_loss\n" + "\n".join(rows[10000:] + rows[:10000]) + "\n")
    summary = tmp_path / "summary.csv"  # an MLflow pivot's train_loss: one value, the run's mean, at its end
    summary.write_text("step,train_loss,loss,learning_rate,eval_loss\n" + "\n".join(
        r.replace(",", ",0.7," if r.startswith("20000,") else ",,", 1) for r in rows) + "\n")
    for other in (shuffled, summary):
        h = load_run(other)
        assert h.points == run.points, other.name
        assert {k: f.value for k, f in h.facts.items()} == {k: f.value for k, f in run.facts.items()}, other.name
    assert any("'loss' read (a curve of 20000 values), 'train_loss' left out" in n for n in h.notes)


def test_log_history_entries_are_read_in_step_order_whatever_their_file_order(tmp_path):
    """A reversed (or shuffled) log_history built each eval's window, its first loss and the lr's warm-up and peak in
    file order: a diverged run read healthy, with a made-up warm-up and a constant schedule."""
    log = _log()
    fwd = load_run(_state(tmp_path / "fwd", log, max_steps=200))
    order = list(range(len(log)))
    order = order[::-1][: len(order) // 2] + order[: len(order) - len(order) // 2]  # reversed half, then the rest
    for name, entries in (("rev", log[::-1]), ("mixed", [log[i] for i in order])):
        h = load_run(_state(tmp_path / name, entries, max_steps=200))
        assert h.points == fwd.points
        assert h.points[0]["train/loss_first"] == pytest.approx(2.3 * math.exp(-0.1))
        assert "warmup_steps" not in h.facts
        assert {k: f.value for k, f in h.facts.items()} == {k: f.value for k, f in fwd.facts.items()}


def test_a_csv_export_estimates_the_val_size_from_eval_runtime_and_samples_per_second(tmp_path):
    """A CSV export of a run gave no val size where its trainer_state.json gave runtime x samples/s: the noise fell to
    its floor and the export read undertrained where the state read healthy."""
    rows = ["step,loss,eval_loss,eval_f1,eval_runtime,eval_samples_per_second"]
    rows += [f"{s},{2.3 - s / 100},{2.2 - s / 110},{0.5 + s / 1000}" + (",2.0,500.0" if s % 40 == 0 else ",,")
             for s in range(20, 201, 20)]
    (tmp_path / "r.csv").write_text("\n".join(rows) + "\n")
    h = load_run(tmp_path / "r.csv")
    assert [p.get("val/n") for p in h.points] == [None, 1000] * 5
    assert not any("eval_runtime" in p or "eval_samples_per_second" in p for p in h.points)
    assert not any("CSV columns ignored" in n or "no val size column" in n for n in h.notes)
    state = load_run(_state(tmp_path / "s", [{"step": 40, "eval_loss": 1.8, "eval_runtime": 2.0,
                                              "eval_samples_per_second": 500.0}]))
    assert state.points[0]["val/n"] == h.points[1]["val/n"]


def test_a_csv_with_epochs_and_no_step_keeps_its_first_train_loss_and_says_steps_are_rows(tmp_path):
    """Row 0 became step 0, where the features read a train loss as the untrained model's, so the first logged loss
    disappeared, and 99 optimizer steps were claimed without a word that they were rows."""
    from loratune.features import compute_features

    rows = ["epoch,loss,eval_loss,eval_f1,val_n"]
    rows += [f"{e / 20},{2.3 * math.exp(-e / 20)}" + (f",{2.2 - e / 100},{0.5 + e / 200},500" if e % 10 == 0 else ",,,")
             for e in range(1, 101)]
    (tmp_path / "r.csv").write_text("\n".join(rows) + "\n")
    h = load_run(tmp_path / "r.csv")
    assert [p["step"] for p in h.points] == list(range(10, 101, 10))  # one per evaluation (every 10th row)
    values = compute_features(h.points, h.meta, h.config).values
    assert values["train_loss_start"] == pytest.approx(2.3 * math.exp(-1 / 20))
    assert values["steps"] == 100
    assert any("no step column: row numbers (from 1) used as steps; the run's optimizer steps are unknown" in n
               for n in h.notes)
    # a first row at epoch 0 of a fractional epoch column (the Trainer's progress) was logged before any step: it
    # stays at step 0 (a whole-number column's epoch 0 is Keras' first epoch: test_csv_exports)
    (tmp_path / "z.csv").write_text("epoch,loss,eval_loss\n0,2.3,2.2\n0.5,1.5,1.6\n1.0,1.0,1.2\n")
    assert [p["step"] for p in load_run(tmp_path / "z.csv").points] == [0, 1, 2]


def test_a_csv_export_of_log_history_gets_the_class_count_and_verdict_of_its_trainer_state(tmp_path):
    # a 4-class run pinned at ln 4 under lr 0.02: its trainer_state.json reads lr-too-large from the class count its
    # first train loss gives; the CSV of the same log_history read no count, so no ln(classes), and was inconclusive
    import csv

    from loratune.diagnose import diagnose

    lh = []
    for s in range(1, 61):
        lh.append({"loss": 1.386 + 0.01 * math.sin(s), "grad_norm": 0.3, "learning_rate": 0.02 * (1 - (s - 1) / 60),
                   "epoch": s / 25, "step": s})
        if s % 10 == 0:
            lh.append({"eval_loss": 1.39 - 0.001 * s / 10, "eval_accuracy": 0.25, "eval_f1": 0.1 if s < 60 else 0.21,
                       "eval_runtime": 0.01, "eval_samples_per_second": 4000.0, "epoch": s / 25, "step": s})
    lh.append({"train_runtime": 5.0, "train_loss": 1.386, "epoch": 2.4, "step": 60})
    _state(tmp_path / "run", lh, max_steps=60, train_batch_size=8)
    keys = sorted({k for e in lh for k in e})
    with open(tmp_path / "run.csv", "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=keys)
        w.writeheader()
        w.writerows(lh)
    state, exported = load_run(tmp_path / "run"), load_run(tmp_path / "run.csv")
    assert exported.meta["n_classes"] == state.meta["n_classes"] == 4
    assert exported.facts["n_classes"].value == 4 and "first train loss" in exported.facts["n_classes"].source
    assert diagnose(exported).verdict == diagnose(state).verdict == "lr-too-large"
    # rows with no step column count rows, not optimizer steps: no estimate placed on them
    (tmp_path / "rows.csv").write_text("train_loss,val_loss,val_accuracy\n1.39,1.39,0.25\n1.38,1.39,0.25\n")
    assert "n_classes" not in load_run(tmp_path / "rows.csv").meta
    # an export of a TRL run (its mean_token_accuracy / entropy columns) is a language model's, as its trainer_state
    # reads it: task causal-lm, no class count from a first loss of ln 9 (a fresh head it never had)
    rows = "".join(f"{st},{2.2 - 0.001 * st},{2.15 - 0.0008 * st if st % 20 == 0 else ''},{0.5 + 0.001 * st},2e-4\n"
                   for st in range(1, 201))
    (tmp_path / "sft.csv").write_text("step,loss,eval_loss,mean_token_accuracy,learning_rate\n" + rows)
    sft = load_run(tmp_path / "sft.csv")
    assert sft.meta["task"] == "causal-lm" and "n_classes" not in sft.meta and "n_classes" not in sft.facts
    assert "mean_token_accuracy" in sft.facts["task"].source
    assert diagnose(sft).features["generative"] == 1


def test_a_csv_export_of_named_eval_sets_reads_the_validation_set_as_its_trainer_state_does(tmp_path):
    """eval_dataset={"validation": ..., "clinc": ...} exported as CSV (Trainer keys, or W&B's eval/... names): the
    eval_validation_* columns matched no fixed alias, so the export had no val curve and read inconclusive where its
    trainer_state.json read healthy."""
    lh = []
    for s in range(10, 101, 10):
        lh.append({"step": s, "epoch": s / 50, "loss": 2.0 * math.exp(-s / 60), "learning_rate": 1e-3})
        if s % 20 == 0:
            for name, acc in (("validation", 0.5 + s / 400), ("clinc", 0.3)):
                lh.append({"step": s, "epoch": s / 50, f"eval_{name}_loss": 1.9 * math.exp(-s / 70),
                           f"eval_{name}_accuracy": acc, f"eval_{name}_runtime": 2.0,
                           f"eval_{name}_samples_per_second": 150.0})
    state = load_run(_state(tmp_path / "run", lh, max_steps=100))
    keys = sorted({k for e in lh for k in e})
    for fname, name_of in (("trainer.csv", lambda k: k), ("wandb.csv", lambda k: k.replace("eval_", "eval/", 1))):
        rows = [",".join(name_of(k) for k in keys)] + [",".join(str(e.get(k, "")) for k in keys) for e in lh]
        (tmp_path / fname).write_text("\n".join(rows) + "\n")
        h = load_run(tmp_path / fname)
        for key in ("val/loss", "val/accuracy", "val/n", "eval_clinc/accuracy"):
            got = [p.get(key) for p in h.points if p.get(key) is not None]
            assert got == pytest.approx([p[key] for p in state.points if p.get(key) is not None]) and len(got) == 5
        assert h.points[-1]["val/n"] == 300
        assert not any("eval_validation" in n or "eval/validation" in n for n in h.notes if "ignored" in n)


def test_a_csv_export_windows_its_train_losses_between_evaluations_as_its_trainer_state_does(tmp_path):
    """A real 4-class run (batch 8, lr 0.01, a loss logged every 2 steps, an eval every 10): its trainer_state.json
    reads healthy, its W&B export read lr-too-large at confidence 0.80: each logged loss was its own point, so one
    batch's 0.031 then 0.446 read as the train loss climbing back up by 35% of its start."""
    from loratune.diagnose import diagnose

    losses = [1.388, 1.362, 1.434, 1.457, 1.398, 1.406, 1.394, 1.382, 1.365, 1.301, 1.213, 1.083, 0.808, 0.684, 0.464,
              0.572, 0.38, 0.251, 0.199, 0.175, 0.207, 0.081, 0.288, 0.546, 0.079, 0.109, 0.569, 0.241, 0.031, 0.446,
              0.048]
    evals = {0: (1.386, 0.1), 10: (1.385, 0.1), 20: (1.061, 0.567), 30: (0.393, 0.899), 40: (0.081, 1.0),
             50: (1.011, 0.667), 60: (0.186, 0.949)}
    log = []
    for step, loss in zip([1] + list(range(2, 61, 2)), losses):
        log.append({"step": step, "epoch": step / 6, "loss": loss, "grad_norm": 1.0, "learning_rate": 0.01})
    for step, (loss, f1) in evals.items():
        log.append({"step": step, "epoch": step / 6, "eval_validation_loss": loss, "eval_validation_macro_f1": f1,
                    "eval_validation_runtime": 0.01, "eval_validation_samples_per_second": 2000.0})
    log.sort(key=lambda e: e["step"])
    log.append({"step": 60, "epoch": 10.0, "train_runtime": 1.5, "train_loss": 0.7, "total_flos": 5e8})
    state = load_run(_state(tmp_path / "run", log, global_step=60, max_steps=60))
    keys = sorted({k for e in log for k in e})
    wandb = {**{k: "train/" + k for k in keys if not k.startswith("eval_")},
             **{k: "eval/" + k[len("eval_"):] for k in keys if k.startswith("eval_")}, "step": "train/global_step"}
    rows = [",".join(wandb[k] for k in keys)] + [",".join(str(e.get(k, "")) for k in keys) for e in log]
    (tmp_path / "wandb.csv").write_text("\n".join(rows) + "\n")
    exported = load_run(tmp_path / "wandb.csv")
    assert [p["step"] for p in exported.points] == [p["step"] for p in state.points] == list(range(0, 61, 10))
    for key in ("train/loss", "train/loss_std", "train/loss_first", "train/loss_last", "train/grad_norm", "lr",
                "val/loss", "val/macro_f1", "val/n"):
        assert [p.get(key) for p in exported.points] == pytest.approx([p.get(key) for p in state.points]), key
    assert exported.points[-1]["train/loss"] == pytest.approx(sum(losses[-5:]) / 5)  # steps 52..60, one window
    assert exported.facts["n_classes"].value == state.facts["n_classes"].value == 4
    assert diagnose(exported).verdict == diagnose(state).verdict == "healthy"


def test_a_csv_with_a_train_loss_summary_and_a_loss_curve_reads_the_curve(tmp_path):
    """An MLflow pivot: `train_loss` (the Trainer's one end-of-run mean) and `loss` (the per-step curve) both alias
    train/loss; the first in the header won, so the curve was a single value at the last step and read undertrained."""
    rows = ["step,train_loss,loss,eval_loss"] + [f"{s},,{2.0 - s / 200},{2.1 - s / 220 if s % 20 == 0 else ''}"
                                                 for s in range(10, 201, 10)]
    rows[-1] = rows[-1].replace("200,,", "200,0.8,")
    (tmp_path / "r.csv").write_text("\n".join(rows) + "\n")
    h = load_run(tmp_path / "r.csv")
    # the curve's losses, two to each eval's window: the first and last of each, never the summary's 0.8
    assert [v for p in h.points for v in (p["train/loss_first"], p["train/loss_last"])] == pytest.approx(
        [2.0 - s / 200 for s in range(10, 201, 10)])
    assert any("'loss' -> train/loss" in n for n in h.notes) and any("ignored: 'train_loss'" in n for n in h.notes)
    assert any("'loss' read (a curve of 20 values), 'train_loss' left out" in n for n in h.notes)
    # two curves under one key: the first in the header is read, as before
    (tmp_path / "two.csv").write_text("step,train_loss,loss\n10,2.0,9.0\n20,1.5,9.0\n30,1.2,9.0\n")
    assert [p["train/loss"] for p in load_run(tmp_path / "two.csv").points] == [2.0, 1.5, 1.2]


def _overfit_log(n: int = 400, lr: float = 3e-5) -> list[dict]:
    out = []
    for s in range(10, n + 1, 10):
        out.append({"step": s, "epoch": s / 40, "loss": 2.3 * math.exp(-s / 40) + 0.001, "learning_rate": lr})
        if s % 40 == 0:
            out.append({"step": s, "epoch": s / 40, "eval_loss": 1.0 + ((s - 120) / 200) ** 2,
                        "eval_accuracy": 0.7 - 0.1 * ((s - 120) / 280) ** 2})
    return out


def _weights(path: Path) -> None:
    """A whole model's model.safetensors (its JSON header and the bytes it names; a 10-class head)."""
    import struct

    header = json.dumps({"classifier.weight": {"dtype": "F32", "shape": [10, 4], "data_offsets": [0, 160]}}).encode()
    path.write_bytes(struct.pack("<Q", len(header)) + header + b"\0" * 160)


def test_a_trainer_folder_that_saved_a_whole_model_and_no_adapter_is_read_as_a_full_fine_tune(tmp_path, capsys):
    """A full fine-tune's Trainer folder (trainer_state.json, config.json, model.safetensors, no adapter_config.json)
    stayed `method unknown` and got LoRA's moves (overfit-capacity: r /2, -ffn, lora_dropout up). Whole-model weights in
    the run folder or a checkpoint-*, and no adapter file anywhere in it, say the method: full, and where it was read;
    only trainer_state.json (and config.json), or an adapter_config.json in a checkpoint beside the weights (a merged
    peft model), leave it unknown."""
    cfg = {"architectures": ["BertForSequenceClassification"], "id2label": {str(i): f"c{i}" for i in range(10)}}
    full = _state(tmp_path / "full", _overfit_log(), config=cfg)
    _weights(full / "model.safetensors")
    ckpt = _state(tmp_path / "ckpt_full" / "checkpoint-400", _overfit_log(), config=cfg)
    _weights(ckpt / "model.safetensors")
    bare = _state(tmp_path / "bare", _overfit_log(), config=cfg)
    merged = _state(tmp_path / "merged", _overfit_log(), config=cfg)
    _weights(merged / "model.safetensors")
    (merged / "checkpoint-400").mkdir()
    (merged / "checkpoint-400" / "adapter_config.json").write_text(json.dumps(LORA), encoding="utf-8")
    from loratune.diagnose import diagnose

    for folder, where in ((full, "model.safetensors"), (tmp_path / "ckpt_full", "checkpoint-400/model.safetensors")):
        run = load_run(folder)
        assert run.meta["method"] == "full" and run.facts["method"].value == "full", folder
        assert run.facts["method"].source.startswith(f"{where}: a whole model's weights"), run.facts["method"]
        d = diagnose(folder)
        assert d.verdict == "overfit-capacity" and d.primary.moves == ("weight_decay 0.1",), folder
        assert d.features.details["method"] == "full"
    for folder in (bare, merged):
        run = load_run(folder)
        assert "method" not in run.meta and "method" not in run.facts, folder
        assert diagnose(folder).primary.moves == ("r /2", "-ffn", "lora_dropout up"), folder
    assert main(["diagnose", str(full)]) == 0
    out = " ".join(capsys.readouterr().out.split())
    assert "method full (model.safetensors: a whole model's weights, no adapter_config.json in the run folder)" in out
    assert "next move: weight_decay 0.1" in out, out


def _named_weights(path: Path, names: list[str]) -> None:
    import struct

    header = json.dumps({n: {"dtype": "F32", "shape": [1], "data_offsets": [4 * i, 4 * i + 4]}
                         for i, n in enumerate(names)}).encode()
    path.write_bytes(struct.pack("<Q", len(header)) + header + b"\0" * (4 * len(names)))


def test_a_model_safetensors_holding_only_an_adapters_tensors_is_not_a_full_fine_tune(tmp_path):
    """method full was inferred from a model.safetensors whose header held only LoRA tensors (lora_A/lora_B,
    modules_to_save: what the HF Trainer writes for a wrapper around a PeftModel) with no adapter_config.json. Its
    tensor names (a safetensors header, a sharded model's index weight_map) say it is an adapter's: method stays
    unknown. A merged peft model (no lora_ tensor) still reads full: the folder cannot tell it from a full fine-tune."""
    cfg = {"architectures": ["BertForSequenceClassification"], "id2label": {str(i): f"c{i}" for i in range(10)}}
    lora = ["base_model.model.bert.encoder.layer.0.attention.self.query.lora_A.default.weight",
            "base_model.model.bert.encoder.layer.0.attention.self.query.lora_B.default.weight",
            "base_model.model.classifier.modules_to_save.default.weight"]
    wrapped = _state(tmp_path / "wrapped", _overfit_log(), config=cfg)
    _named_weights(wrapped / "model.safetensors", lora)
    sharded = _state(tmp_path / "sharded", _overfit_log(), config=cfg)
    (sharded / "model.safetensors.index.json").write_text(json.dumps({"weight_map": {n: "model-00001-of-00001.safetensors"
                                                                                     for n in lora}}))
    merged = _state(tmp_path / "merged", _overfit_log(), config=cfg)
    _named_weights(merged / "model.safetensors", ["bert.encoder.layer.0.attention.self.query.weight",
                                                  "classifier.weight"])
    for folder in (wrapped, sharded):
        run = load_run(folder)
        assert "method" not in run.meta and "method" not in run.facts, folder
    assert load_run(merged).meta["method"] == "full"
