"""Runs of the trainers that wrap the Hugging Face Trainer or write their own logs (sentence-transformers, SetFit,
PyTorch Lightning, simpletransformers, torchtune, LLaMA-Factory), as a nineteenth bug hunt found them read wrongly.
Fixtures: tests/fixtures/wrappers (the Lightning event files built by its pl/mk*.py)."""

from __future__ import annotations

import json
import math
import shutil
from pathlib import Path

import pytest

from loratune.cli import main
from loratune.diagnose import diagnose
from loratune.history_io import EMBEDDING_TASK, load_run

FIXTURES = Path(__file__).resolve().parents[1] / "fixtures" / "wrappers"


def test_a_sentence_transformers_run_is_no_classifier(tmp_path):
    """A SentenceTransformerTrainer's STS run (config.json BertModel, no id2label; modules.json beside it) read as a
    3-class head from its first loss (1.109 ~ ln 3), and its slow run got `lr-too-small, learning_rate x2` on the
    clause "the run is a classifier: yes"."""
    h = load_run(FIXTURES / "stt_slow")
    assert h.meta["task"] == EMBEDDING_TASK and "n_classes" not in h.facts and "n_classes" not in h.meta
    assert "architecture BertModel" in h.facts["task"].source
    d = diagnose(h)
    assert d.features["classifier"] is None and d.features.get("n_classes") is None
    assert d.verdict != "lr-too-small"
    # the folder's sentence-transformers files say so with no architecture to read (a config without one)
    run = tmp_path / "st"
    shutil.copytree(FIXTURES / "stt_slow", run)
    (run / "config.json").write_text(json.dumps({"model_type": "bert"}))
    h = load_run(run)
    assert h.meta["task"] == EMBEDDING_TASK and "n_classes" not in h.facts
    assert h.facts["task"].source.startswith("modules.json")
    # a classifier's head still reads as one (the bare-Model row comes after every head's)
    (run / "config.json").write_text(json.dumps({"architectures": ["BertForSequenceClassification"],
                                                 "id2label": {"0": "a", "1": "b", "2": "c"}}))
    for f in ("modules.json", "config_sentence_transformers.json"):
        (run / f).unlink()
    h = load_run(run)
    assert h.meta["task"] == "single_label" and h.facts["n_classes"].value == 3


def test_a_setfit_run_reads_its_embedding_losses_its_lr_and_its_step_checkpoints(tmp_path):
    """SetFit logs `embedding_loss` / `eval_embedding_loss` (learning_rate on every entry) and saves
    checkpoints/step_N/trainer_state.json: it read "no train-loss trend logged", "no `lr` in the history", an eval set
    named 'embedding', and `diagnose checkpoints` exited 2 (only checkpoint-* was looked for)."""
    h = load_run(FIXTURES / "setfit_checkpoints" / "step_160")
    state = json.loads((FIXTURES / "setfit_checkpoints" / "step_160" / "trainer_state.json").read_text())
    train = [e["embedding_loss"] for e in state["log_history"] if "embedding_loss" in e]
    val = [e["eval_embedding_loss"] for e in state["log_history"] if "eval_embedding_loss" in e]
    assert [p["val/loss"] for p in h.points if "val/loss" in p] == pytest.approx(val)
    assert h.points[0]["train/loss"] == pytest.approx(sum(train[:3]) / 3)  # steps 1, 10, 20: the first eval's window
    assert h.points[-1]["train/loss_last"] == pytest.approx(train[-1])
    assert h.facts["learning_rate"].value == pytest.approx(2e-5, rel=0.01)
    assert not any("'embedding'" in n for n in h.notes)
    assert any("embedding_loss" in n and "train loss" in n for n in h.notes)
    d = diagnose(h)
    assert d.features["train_loss_untracked"] is None and d.features["peak_lr"] == pytest.approx(2e-5, rel=0.01)
    assert h.meta["task"] == EMBEDDING_TASK  # config.json MPNetModel: the body, trained contrastively
    # the output_dir: its newest step_N checkpoint, by N (step_80 sorts after step_160 by name)
    run = load_run(FIXTURES / "setfit_checkpoints")
    assert run.meta["steps_done"] == 160 and run.points[-1]["step"] == 160
    assert main(["diagnose", str(FIXTURES / "setfit_checkpoints")]) == 0
    # a rate logged only on the eval entries is read too
    log = [{"step": s, "loss": 2.0 - s / 100} for s in range(10, 101, 10)]
    log += [{"step": s, "eval_loss": 2.1 - s / 110, "learning_rate": 1e-4 * (1 - (s - 1) / 100)}
            for s in range(20, 101, 20)]
    (tmp_path / "r").mkdir()
    (tmp_path / "r" / "trainer_state.json").write_text(json.dumps({"log_history": log}))
    assert load_run(tmp_path / "r").facts["learning_rate"].value == pytest.approx(1e-4, rel=0.05)


PL = FIXTURES / "pl"
# the val curve pl/mk.py and mk3.py log, one value an epoch
PL_VAL_LOSS = [0.90, 0.70, 0.58, 0.52, 0.50, 0.51, 0.55, 0.60, 0.66, 0.73]
PL_VAL_ACC = [0.60, 0.70, 0.76, 0.79, 0.80, 0.80, 0.795, 0.79, 0.785, 0.78]


@pytest.mark.parametrize("run, train_tag", [("A", "train_loss"), ("C", "train_loss_step"), ("E", "train/loss_step")])
def test_a_lightning_tensorboard_log_reads_its_tags_as_its_csv_columns_are_read(run, train_tag):
    """Lightning's TensorBoardLogger tags: `train_loss`, `val_loss`, `val_acc` (A; C with self.log(on_step=True,
    on_epoch=True)'s `train_loss_step`) were refused with a fix about report_to; `train/loss_step` (E) was dropped,
    the run read with no train loss. The CSV reader reads these names (its columns of a CSVLogger's metrics.csv); the
    epoch means (`train/loss_epoch`) only where no step values are there. Lightning writes no train_runtime: no
    'partial run' claim."""
    pytest.importorskip("tensorboard")
    h = load_run(PL / run)
    assert h.source == "tensorboard"
    assert [p["val/loss"] for p in h.points if "val/loss" in p] == pytest.approx(PL_VAL_LOSS)
    assert [p["val/accuracy"] for p in h.points if "val/accuracy" in p] == pytest.approx(PL_VAL_ACC)
    # the step losses (1.1 exp(-s/300) + 0.05 at s = 49, 99: the first epoch's window), never an epoch mean
    first = [1.1 * math.exp(-s / 300) + 0.05 for s in (49, 99)]
    assert h.points[0]["train/loss"] == pytest.approx(sum(first) / 2, rel=1e-5)
    assert h.points[0]["train/loss_first"] == pytest.approx(first[0], rel=1e-5)
    assert any(f"'{train_tag}' -> train/loss" in n for n in h.notes)
    assert not h.meta.get("partial") and not any("partial run" in n for n in h.notes)
    assert any("no end-of-training entry" in n and "Lightning" in n for n in h.notes)
    if run == "E":
        assert any("'train/loss_epoch'" in n and "not read" in n for n in h.notes)
    if run == "A":  # LearningRateMonitor's lr-AdamW, as the CSV reader reads that column
        assert h.points[0]["lr"] == pytest.approx(1e-3 * (1 - 99 / 1000), rel=1e-5)


def test_two_lightning_versions_are_named_by_their_version_folders(capsys):
    """`diagnose D/lightning_logs/version_0 D/lightning_logs/version_1` named both runs `lightning_logs`."""
    pytest.importorskip("tensorboard")
    v0, v1 = (load_run(PL / "D" / "lightning_logs" / f"version_{i}") for i in (0, 1))
    assert (v0.name, v1.name) == ("version_0", "version_1")
    assert load_run(PL / "D" / "lightning_logs").name == "D"
    assert main(["diagnose", str(PL / "D" / "lightning_logs" / "version_0"),
                 str(PL / "D" / "lightning_logs" / "version_1")]) == 0
    out = capsys.readouterr().out
    assert "version_0" in out and "version_1" in out and "lightning_logs#2" not in out


def test_a_trainer_tensorboard_log_without_its_end_entry_is_still_partial():
    """The Trainer writes train/train_runtime at the end (and train/epoch with every log): its log without the end
    entry stays a partial run (fixture: trainer_tb_no_end/mk.py)."""
    pytest.importorskip("tensorboard")
    h = load_run(FIXTURES / "trainer_tb_no_end")
    assert h.meta.get("partial") is True and h.name == "trainer_tb_no_end"
    assert h.points[-1]["train/loss_last"] == pytest.approx(2.3 * math.exp(-1), rel=1e-5)
    assert not any("->" in n and "TensorBoard tags" in n for n in h.notes)  # the Trainer's own tags: nothing to say


def test_a_trainer_tensorboard_log_is_known_by_any_of_its_own_tags(capsys):
    """A Trainer log filtered of train/epoch (train/loss, train/learning_rate, train/grad_norm, eval/runtime,
    eval/samples_per_second; stopped at step 100, no end entry) read as "not a Hugging Face Trainer's ... read as
    ended" (main: partial). And another writer's log (Lightning's) has no end entry to miss: its end is unknown, and
    show / report say so, never `finished`."""
    pytest.importorskip("tensorboard")
    h = load_run(FIXTURES / "trainer_tb_noepoch")
    assert h.meta.get("partial") is True and not h.meta.get("end_unknown")
    assert not any("another writer's" in n for n in h.notes)
    assert any("partial run" in n for n in h.notes)
    lightning = load_run(PL / "A")
    assert lightning.meta.get("end_unknown") is True and not lightning.meta.get("partial")
    assert any("whether the run ended is unknown" in n for n in lightning.notes)
    assert main(["show", str(PL / "A")]) == 0
    out = capsys.readouterr().out
    assert "end unknown" in out and "finished" not in out.splitlines()[0]


def test_a_csv_without_a_val_size_says_its_noise_is_the_curves_jitter():
    """simpletransformers' training_progress_scores.csv: the note said "no standard error, so noise checks are
    skipped", and the diagnosis then judged its val loss in noise units of the curve's own jitter."""
    h = load_run(FIXTURES / "st_training_progress_scores.csv")
    note = next(n for n in h.notes if n.startswith("no val size column"))
    assert "skipped" not in note and "eval-to-eval jitter" in note
    d = diagnose(h)
    assert d.features["val_loss_noise"] is not None  # the checks the note describes are made


@pytest.mark.parametrize("log, what, fix", [
    ("torchtune_log_1717000000.txt", "torchtune DiskLogger log", "step,train_loss,lr"),
    ("llamafactory_running_log.txt", "LLaMA-Factory's running_log.txt", "trainer_state.json"),
])
def test_a_trainers_own_text_log_is_refused_as_the_format_it_is(log, what, fix, capsys):
    """torchtune's DiskLogger log_*.txt and LLaMA-Factory's running_log.txt were refused with their first line read as
    a CSV header ("no loss or metric column among ['Step 1 ', 'loss:3.13...']", fix: name columns)."""
    assert main(["diagnose", str(FIXTURES / log)]) == 2
    err = capsys.readouterr().err
    assert what in err and "a format loratune does not read" in err and fix in err
    assert "name columns like" not in err and "Traceback" not in err


def _stt_run(tmp_path: Path, name: str, config: dict | None, *, accuracy: bool = False, loss_scale: float = 1.0,
             adapter: dict | None = None) -> Path:
    """The stt_slow run's log (its first loss 1.109 ~ ln 3) under another model's config.json: `accuracy` adds an
    eval_accuracy to each eval, `loss_scale` scales the train losses (2.77: a token loss's start), no
    sentence-transformers files beside it."""
    state = json.loads((FIXTURES / "stt_slow" / "trainer_state.json").read_text())
    log = []
    for e in state["log_history"]:
        e = {k: v for k, v in e.items() if "sts" not in k}
        if "loss" in e:
            e["loss"] = round(e["loss"] * loss_scale, 4)
        if accuracy and "eval_loss" in e:
            e["eval_accuracy"] = round(0.4 + 0.05 * e["step"] / 50, 3)
        log.append(e)
    state["log_history"] = log
    run = tmp_path / name
    run.mkdir()
    (run / "trainer_state.json").write_text(json.dumps(state))
    if config is not None:
        (run / "config.json").write_text(json.dumps(config))
    if adapter is not None:
        (run / "adapter_config.json").write_text(json.dumps(adapter))
    return run


@pytest.mark.parametrize("name, config, accuracy, adapter, n_source", [
    ("bare_id2label", {"architectures": ["BertModel"], "id2label": {"0": "neg", "1": "neu", "2": "pos"}}, True, None,
     "config.json id2label"),
    ("bare_id2label_noacc", {"architectures": ["BertModel"], "id2label": {"0": "neg", "1": "neu", "2": "pos"}}, False,
     None, "config.json id2label"),
    ("custom_cls_model", {"architectures": ["RobertaClassificationModel"],
                          "id2label": {"0": "neg", "1": "neu", "2": "pos"}}, True, None, "config.json id2label"),
    ("custom_head", {"architectures": ["BertModel"]}, True, None, "first train loss"),
    ("peft_base", {"architectures": ["LlamaModel"]}, True,
     {"peft_type": "LORA", "r": 8, "lora_alpha": 16, "task_type": None}, "first train loss"),
])
def test_a_bare_model_config_with_classifier_evidence_is_a_classifier(tmp_path, name, config, accuracy, adapter,
                                                                       n_source):
    """A bare `*Model` architecture read as an embedding model over what says the run classifies: BertModel with
    id2label {neg, neu, pos} and eval_accuracy, a custom `RobertaClassificationModel`, a BertModel with a custom head
    logging accuracy, a peft adapter (task_type null) on a LlamaModel base logging eval_accuracy: all read
    sentence-embedding, no class count, healthy where the branch before them said lr-too-small of a 3-class head."""
    h = load_run(_stt_run(tmp_path, name, config, accuracy=accuracy, adapter=adapter))
    assert h.meta.get("task") != EMBEDDING_TASK
    assert h.facts["n_classes"].value == 3 and n_source in h.facts["n_classes"].source
    d = diagnose(h)
    assert d.features["classifier"] == 1.0 and d.features["n_classes"] == 3
    assert d.verdict == "lr-too-small"


def test_a_bare_model_config_without_classifier_evidence_stays_an_embedding_model(tmp_path):
    """No such evidence (default LABEL_N names, no accuracy): the bare-Model rule stands; and sentence-transformers'
    files stay decisive over an evaluator's accuracy."""
    h = load_run(_stt_run(tmp_path, "plain", {"architectures": ["BertModel"],
                                              "id2label": {"0": "LABEL_0", "1": "LABEL_1", "2": "LABEL_2"}}))
    assert h.meta["task"] == EMBEDDING_TASK and "n_classes" not in h.facts
    run = _stt_run(tmp_path, "st_acc", {"architectures": ["BertModel"]}, accuracy=True)
    (run / "modules.json").write_text("[]")
    h = load_run(run)
    assert h.meta["task"] == EMBEDDING_TASK and h.facts["task"].source.startswith("modules.json")


@pytest.mark.parametrize("arch", ["VisionEncoderDecoderModel", "EncoderDecoderModel", "SpeechEncoderDecoderModel",
                                  "WhisperModel"])
def test_an_encoder_decoder_model_is_seq2seq(tmp_path, arch):
    """TrOCR / Donut (VisionEncoderDecoderModel), EncoderDecoderModel, SpeechEncoderDecoderModel and WhisperModel end
    in a bare `Model`: they read as embedding models, where they train a decoder's token loss."""
    h = load_run(_stt_run(tmp_path, arch, {"architectures": [arch]}, loss_scale=2.5))
    assert h.meta["task"] == "seq2seq" and h.facts["task"].source == f"config.json architecture {arch}"
    assert diagnose(h).features["generative"] == 1.0


def test_step_folders_without_setfits_config_are_runs_of_their_own(tmp_path, capsys):
    """Any `step_N` folder counted as a checkpoint: a curriculum's step_1 and step_2 (each its own run's
    trainer_state.json) were both named `curriculum`, and `diagnose step_1 step_2` dropped the second as the same run.
    SetFit's step_N holds its config_setfit.json, and stays a checkpoint (the setfit_checkpoints fixture)."""
    stages = []
    for i in (1, 2):
        stage = tmp_path / "curriculum" / f"step_{i}"
        stage.mkdir(parents=True)
        shutil.copy(FIXTURES / "stt_slow" / "trainer_state.json", stage / "trainer_state.json")
        stages.append(stage)
    assert [load_run(s).name for s in stages] == ["step_1", "step_2"]
    assert main(["diagnose", *map(str, stages)]) == 0
    out = capsys.readouterr().out
    assert " step_1 " in out and " step_2 " in out and "curriculum" not in out
    assert load_run(FIXTURES / "setfit_checkpoints" / "step_80").name == "setfit_checkpoints"


def test_show_and_report_read_a_setfit_checkpoints_folder(tmp_path, capsys):
    """`diagnose checkpoints` read SetFit's checkpoints/step_N, `show` and `report` refused the same folder ("neither
    a run directory ... nor a Trainer / TRL output directory"): they looked for checkpoint-*/trainer_state.json only."""
    run = FIXTURES / "setfit_checkpoints"
    assert main(["show", str(run)]) == 0
    assert "setfit_checkpoints" in capsys.readouterr().out
    out = tmp_path / "r.html"
    assert main(["report", str(run), "-o", str(out)]) == 0
    assert out.is_file() and "setfit_checkpoints" in out.read_text(encoding="utf-8")


@pytest.mark.parametrize("run", ["G", "H"])
def test_lightning_learning_rate_monitor_tags_of_any_optimizer_and_param_group(run):
    """LearningRateMonitor's lr-AdamW/pg1, lr-AdamW/pg2 (param groups) and lr-RMSprop were not read (three fixed
    names: lr-AdamW, lr-Adam, lr-SGD): no lr, no schedule. One pattern (LIGHTNING_LR_TAG): the first group's rate is
    read, the others said, a `-momentum` tag is no rate (fixture: pl/mk4.py)."""
    pytest.importorskip("tensorboard")
    h = load_run(PL / run)
    assert h.points[0]["lr"] == pytest.approx(1e-3 * (1 - 99 / 1000), rel=1e-5)
    assert h.facts["learning_rate"].value == pytest.approx(1e-3, rel=0.05)
    if run == "G":
        note = next(n for n in h.notes if "LearningRateMonitor" in n)
        assert "'lr-AdamW/pg1' read" in note and "not read: 'lr-AdamW/pg2'" in note
        assert any("not read" in n and "'lr-SGD-momentum'" in n for n in h.notes)


@pytest.mark.parametrize("columns", [("lr-AdamW/pg1", "lr-AdamW/pg2"), ("lr-RMSprop",), ("lr-Adam-1",)])
def test_a_lightning_csv_logger_reads_its_learning_rate_columns(tmp_path, columns):
    """The CSVLogger's metrics.csv carries the same LearningRateMonitor names as columns."""
    rows = ["epoch,step,train_loss," + ",".join(columns) + ",val_loss"]
    for s in range(49, 1000, 50):
        lrs = [1e-3 * (1 - s / 1000) * (1 if i == 0 else 0.1) for i in range(len(columns))]
        val = f"{0.9 * math.exp(-s / 400) + 0.1}" if (s + 1) % 100 == 0 else ""
        rows.append(f"{s // 100},{s},{1.1 * math.exp(-s / 300) + 0.05}," + ",".join(map(str, lrs)) + f",{val}")
    (tmp_path / "metrics.csv").write_text("\n".join(rows) + "\n")
    h = load_run(tmp_path / "metrics.csv")
    assert h.points[0]["lr"] == pytest.approx(1e-3 * (1 - 99 / 1000), rel=1e-5)
    assert h.facts["learning_rate"].value == pytest.approx(1e-3, rel=0.05)
    if len(columns) > 1:
        assert any("'lr-AdamW/pg1' read" in n and "'lr-AdamW/pg2'" in n for n in h.notes)


def test_a_loops_own_tensorboard_tags_are_read_or_named_in_the_refusal(capsys):
    """A plain loop's SummaryWriter log with the PyTorch tutorial's tags (Loss/train, Loss/val, Accuracy/val) was
    refused, the error saying "(tags: none read)" of a file that holds three: the tutorial's tags are read as the CSV
    reader reads loss_train / loss_val / accuracy_val columns, and a log of tags no reader names is refused with its
    tags listed (fixture: tb_loop/mk.py)."""
    pytest.importorskip("tensorboard")
    h = load_run(FIXTURES / "tb_loop" / "tutorial")
    assert [p["val/accuracy"] for p in h.points if "val/accuracy" in p] == pytest.approx(
        [0.5 + 0.4 * s / 500 for s in range(50, 501, 50)], rel=1e-5)
    assert h.points[-1]["val/loss"] == pytest.approx(1.1 * math.exp(-2) + 0.15, rel=1e-5)
    assert h.points[0]["train/loss"] == pytest.approx(1.2 * math.exp(-50 / 200) + 0.1, rel=1e-5)
    assert main(["diagnose", str(FIXTURES / "tb_loop" / "other")]) == 2
    err = capsys.readouterr().err
    assert "Entropy/policy, Reward/mean" in err and "none read" not in err and "Traceback" not in err


def test_the_no_val_size_note_and_the_jitter_share_one_point_count():
    """NO_VAL_SIZE_NOISE said "from 4 evals on" while curve_jitter read `len(values) < 4`: one constant."""
    from loratune.features import JITTER_POINTS_MIN, NO_VAL_SIZE_NOISE, curve_jitter

    assert f"from {JITTER_POINTS_MIN} evals on" in NO_VAL_SIZE_NOISE
    assert curve_jitter([1.0, 0.9, 0.85, 0.7, 0.72][:JITTER_POINTS_MIN - 1]) is None
    assert curve_jitter([1.0, 0.9, 0.85, 0.7, 0.72][:JITTER_POINTS_MIN]) is not None


def test_a_loops_tensorboard_log_with_a_learning_rate_tag_is_no_trainers_partial_run(tmp_path, capsys):
    """A loop's own SummaryWriter logging train/loss, train/learning_rate and eval/loss read as a Hugging Face
    Trainer's log cut short ('partial run (no end-of-run entry)'): train/learning_rate and train/grad_norm are any
    loop's tag names, only the Trainer's own (train/epoch, its end entry, eval timings) mark its log. Its end is
    unknown, and the same-run note of a comparison says so, not 'finished'."""
    pytest.importorskip("tensorboard")
    from torch.utils.tensorboard import SummaryWriter

    w = SummaryWriter(str(tmp_path / "exp1"))
    for s in range(50, 1001, 50):
        w.add_scalar("train/loss", 2.3 * math.exp(-s / 400), s)
        w.add_scalar("train/learning_rate", 1e-4 * (1 - s / 1000), s)
        w.add_scalar("train/grad_norm", 1.0, s)
        if s % 100 == 0:
            w.add_scalar("eval/loss", 2.2 * math.exp(-s / 450), s)
            w.add_scalar("eval/accuracy", 1 - 0.9 * math.exp(-s / 300), s)
    w.close()
    h = load_run(tmp_path / "exp1")
    assert h.meta.get("end_unknown") is True and not h.meta.get("partial")
    assert not any("partial run" in n for n in h.notes)
    assert main(["diagnose", str(tmp_path / "exp1"), str(tmp_path / "exp1")]) == 0
    out = capsys.readouterr().out
    said = " ".join(out.split())
    assert "#2 (end unknown): the same run as" in said and "(end unknown, " in said and "finished" not in said


@pytest.mark.parametrize("column", ["lr_adamw", "lr-adamw", "LR_ADAMW", "lr_adamw_pg1", "lr-rmsprop"])
def test_a_lower_cased_learning_rate_monitor_column_is_read_as_the_learning_rate(tmp_path, column):
    """A tracker's export that lower-cases LearningRateMonitor's `lr-AdamW` (`lr_adamw`, `lr-adamw`) was no longer
    read as the rate once the tag became a case-sensitive pattern: 'CSV columns ignored: lr_adamw', no peak lr. The
    pattern matches an optimizer's name without case; a lower-case `lr_decay` column is still no rate."""
    rows = [f"step,train_loss,{column},lr_decay,val_loss"]
    for s in range(100, 1001, 100):
        rows.append(f"{s},{1.1 * math.exp(-s / 300) + 0.05},{2e-4 * (1 - s / 2000)},0.5,{0.9 * math.exp(-s / 400) + 0.1}")
    (tmp_path / "metrics.csv").write_text("\n".join(rows) + "\n")
    h = load_run(tmp_path / "metrics.csv")
    assert [p["lr"] for p in h.points] == pytest.approx([2e-4 * (1 - s / 2000) for s in range(100, 1001, 100)])
    assert h.facts["learning_rate"].value == pytest.approx(2e-4, rel=0.05)
    assert not any(column in n for n in h.notes if "ignored" in n)
    assert any("'lr_decay'" in n for n in h.notes if "ignored" in n)
