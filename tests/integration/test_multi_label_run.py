"""Multi-label runs end to end on the tiny BERT (issue 19): the loss switch, thresholds tuned on validation
that round-trip through the saved adapter, `predict` and `evaluate`, the decoding rules, the record's keys."""

from __future__ import annotations

import json
import re
from pathlib import Path

import numpy as np
import pytest

from loratune import api
from loratune.config import load_config
from loratune.errors import UserError
from loratune.inference import load_trained
from loratune.metrics import Decoding, decode, sigmoid
from loratune.store import RunStore

from support import make_rows, overrides, write_jsonl


@pytest.fixture(scope="module")
def multi_data(tmp_path_factory):
    """Every third row also asks for its balance (two labels), the rest carry one."""
    folder = tmp_path_factory.mktemp("multi")
    for name, n, seed in (("train", 10, 4), ("validation", 5, 5), ("test", 5, 6)):
        rows = make_rows(n, seed=seed)
        for i, r in enumerate(rows):
            if i % 3 == 0 and r["label"] != "balance":
                r["text"] += " and what is my balance"
                r["label"] = [r["label"], "balance"]
            else:
                r["label"] = [r["label"]]
        write_jsonl(folder / f"{name}.jsonl", rows)
    return folder


def _train(model, data, out, **extra):
    cfg = load_config(None, overrides(model, data, out, **extra))
    return api.train(cfg, progress=False)


@pytest.fixture(scope="module")
def trained_run(tiny_bert, multi_data, tmp_path_factory):
    out = tmp_path_factory.mktemp("ml") / "run"
    run = _train(tiny_bert, multi_data, out, max_steps=16, multi_label_loss="bce_pos_weight")
    return out, run


def test_record_holds_the_multi_intent_metrics(trained_run):
    _, run = trained_run
    assert run["task"] == "multi_label" and run["objective"] == "val/subset_accuracy"
    assert run["loss"]["kind"] == "bce_pos_weight" and len(run["loss"]["pos_weight"]) == 4
    for key in ("val/subset_accuracy", "val/micro_f1", "val/macro_f1", "val/samples_f1", "val/recall/balance",
                "val_compound/subset_accuracy", "val_compound/n", "val_single/subset_accuracy",
                "train_eval/subset_accuracy", "train_eval_compound/subset_accuracy"):
        assert key in run["final"], key
    assert run["final"]["val_compound/n"] > 0 and run["final"]["val_single/n"] > 0
    # the compound slice of multi-label data is the rows with two or more labels, scored the same way
    assert run["final"]["val_compound/accuracy"] == run["final"]["val_compound/subset_accuracy"]
    # the saved model is the best trained point by the objective, of tied points the one of the lower val loss
    trained = [json.loads(line) for line in (trained_run[0] / "history.jsonl").read_text().splitlines()][1:]
    assert run["adapter_step"] == max(trained, key=lambda p: (p["val/subset_accuracy"], -p["val/loss"]))["step"]


def test_thresholds_round_trip_through_save_load_and_predict(trained_run):
    out, run = trained_run
    meta = json.loads((out / "adapter" / "label_map.json").read_text())
    saved = meta["decoding"]
    assert saved["thresholds"] == run["decoding"]["thresholds"]
    assert run["decoding"]["tuned_on"] == "validation" and run["decoding"]["step"] == run["adapter_step"]
    assert saved["min_labels"] == 1 and saved["max_labels"] == 2  # the most labels a training row carries
    trained = load_trained(out)
    assert trained.decoding.thresholds.tolist() == [saved["thresholds"][lab] for lab in trained.space.labels]
    texts = ["lost my card", "what is my balance", "change my pin and what is my balance", "hello"]
    expected = decode(sigmoid(trained.logits(texts)), trained.decoding)
    preds = api.predict(out, texts)
    for p, row in zip(preds, expected):
        assert p["labels"] == [trained.space.labels[i] for i in np.flatnonzero(row)]
        assert 1 <= len(p["labels"]) <= 2


def test_predict_and_evaluate_use_the_saved_thresholds(trained_run, tmp_path):
    import shutil

    out = tmp_path / "run"
    shutil.copytree(trained_run[0], out)
    path = out / "adapter" / "label_map.json"
    meta = json.loads(path.read_text())
    labels = meta["labels"]
    meta["decoding"] = {"thresholds": {lab: 0.001 for lab in labels}, "min_labels": 1, "max_labels": 4,
                        "none_label": None}
    path.write_text(json.dumps(meta))
    preds = api.predict(out, ["lost my card", "hello"])
    assert all(set(p["labels"]) == set(labels) for p in preds)  # every label passes its threshold
    scores = api.evaluate(out, "test")
    assert scores["test/labels_per_row"] == 4.0 and scores["test/subset_accuracy"] == 0.0
    meta["decoding"] = {"thresholds": {lab: 0.999 for lab in labels}, "min_labels": 1, "max_labels": 4,
                        "none_label": None}
    path.write_text(json.dumps(meta))
    assert all(len(p["labels"]) == 1 for p in api.predict(out, ["lost my card", "hello"]))  # at least one
    scores = api.evaluate(out, "test")
    assert scores["test/labels_per_row"] == 1.0
    assert RunStore(out).read_run()["test"]["test/labels_per_row"] == 1.0


def test_evaluate_on_validation_says_its_thresholds_were_tuned_there(trained_run, tmp_path, capsys):
    """`evaluate --split validation` scored the split the saved thresholds were tuned on (their per-label F1 in-sample)
    under the record's own val/* names, nothing said; the note quotes the run's cross-fitted val numbers beside them."""
    import shutil

    from loratune.cli import main
    from loratune.inference import IN_SAMPLE

    out = tmp_path / "run"
    shutil.copytree(trained_run[0], out)
    before = RunStore(out).read_run()
    assert main(["evaluate", str(out), "--split", "validation"]) == 0
    said = " ".join(capsys.readouterr().out.split())
    after = RunStore(out).read_run()
    scored = after["eval"]["validation"]
    note = scored[f"val/{IN_SAMPLE}"]
    best = before["best"]

    def versus(m):  # each comparison as the numbers have it, never "flattered" where the in-sample one is lower
        rel = "above" if scored[m] > best[m] else "below" if scored[m] < best[m] else "equal to"
        return f"{m} {scored[m]:.4f} here, {rel} {best[m]:.4f}"

    assert note == (f"the per-label thresholds (label_map.json decoding) were tuned on this validation split at step "
                    f"{before['adapter_step']}, each to maximise its label's F1: the per-label F1 scores here are "
                    f"in-sample; against the run's own val numbers at that step, thresholds cross-fitted on the other "
                    f"half (run.json best): {versus('val/macro_f1')}; {versus('val/subset_accuracy')}")
    assert f"note: {note}" in said
    # the run's own val numbers stay as trained: the in-sample ones live under eval/validation only
    assert after["best"] == best and after["final"] == before["final"] and "test" not in after
    # the scores are those of the saved thresholds on validation: in-sample by construction
    trained = load_trained(out)
    from loratune.data import load_dataset

    val = load_dataset(trained.cfg.data, seed=trained.cfg.train.seed).validation
    pred = decode(sigmoid(trained.logits(list(val.texts))), trained.decoding)
    exact = np.mean([set(np.asarray(trained.space.labels)[np.flatnonzero(r)]) == set(labs)
                     for r, labs in zip(pred, val.labels)])
    assert after["eval"]["validation"]["val/subset_accuracy"] == pytest.approx(exact)
    # the test split and a run whose thresholds were never tuned: no such note
    assert f"test/{IN_SAMPLE}" not in api.evaluate(out, "test")
    rec = RunStore(out).read_run()
    rec["decoding"]["tuned_on"] = None
    RunStore(out).write_run(rec)
    assert f"val/{IN_SAMPLE}" not in api.evaluate(out, "validation")


def test_a_hand_edited_label_map_is_refused_by_predict_and_evaluate(trained_run, tmp_path, capsys):
    """A threshold edited to "high" in adapter/label_map.json (or labels: 5) raised ValueError/TypeError with a
    traceback, exit 1."""
    import shutil

    from loratune.cli import main

    out = tmp_path / "run"
    shutil.copytree(trained_run[0], out)
    path = out / "adapter" / "label_map.json"
    meta = json.loads(path.read_text())
    meta["decoding"]["thresholds"]["balance"] = "high"
    path.write_text(json.dumps(meta))
    for argv in (["predict", str(out), "lost my card"], ["evaluate", str(out), "--split", "test"]):
        assert main(argv) == 2
        err = " ".join(capsys.readouterr().err.split())
        assert (f"'{path}' has a decoding predict and evaluate cannot use: decoding.thresholds.balance: 'high' (a "
                "number in [0, 1])") in err and "fix: set each named value as allowed" in err
    meta["labels"] = 5
    path.write_text(json.dumps(meta))
    assert main(["predict", str(out), "lost my card"]) == 2
    assert (f"'{path}' is not a label map training writes: labels: 5 (a list of at least two label names)"
            in " ".join(capsys.readouterr().err.split()))


@pytest.mark.parametrize("edit,problem", [
    (lambda d: d["thresholds"].pop("pin"), "decoding.thresholds: no threshold for 'pin' (a number in [0, 1] per "
                                           "label of the run)"),
    (lambda d: d.pop("thresholds"), "decoding.thresholds: missing (an object of label -> a number in [0, 1], one per "
                                    "label of the run)"),
])
def test_a_label_map_with_a_threshold_left_out_is_refused_by_predict_and_evaluate(trained_run, tmp_path, capsys,
                                                                                    edit, problem):
    """label_map.json with one label's threshold (or the thresholds object) deleted was taken, exit 0: the label
    decoded at 0.5, changing predict's answers and evaluate's recorded test scores, unsaid."""
    import shutil

    from loratune.cli import main

    out = tmp_path / "run"
    shutil.copytree(trained_run[0], out)
    path = out / "adapter" / "label_map.json"
    meta = json.loads(path.read_text())
    assert set(meta["decoding"]["thresholds"]) == set(meta["labels"])  # training writes every label's threshold
    edit(meta["decoding"])
    path.write_text(json.dumps(meta))
    before = (out / "run.json").read_text()
    for argv in (["predict", str(out), "change my pin"], ["evaluate", str(out), "--split", "test"]):
        assert main(argv) == 2
        err = " ".join(capsys.readouterr().err.split())
        assert f"'{path}' has a decoding predict and evaluate cannot use: {problem}" in err, err
        assert "fix: set each named value as allowed" in err and "Traceback" not in err
    assert (out / "run.json").read_text() == before  # no test scores recorded from the changed decoding


class _OnDisk:
    """At each evaluation point (run.json just written), what a `kill -9` there would leave: run.json's decoding
    and the saved model's."""

    def __init__(self, out: Path):
        self.out, self.seen = out, []

    def on_step(self, step, examples_seen):
        return None

    def on_eval(self, point, run):
        rec = json.loads((self.out / "run.json").read_text())
        label_map = self.out / "adapter" / "label_map.json"
        if rec["saved_model"] and rec["saved_model"]["step"] is not None:
            self.seen.append((rec["saved_model"]["step"], rec["decoding"], json.loads(label_map.read_text())))
        return None


def test_a_running_or_killed_runs_record_names_the_saved_models_thresholds(tiny_bert, multi_data, tmp_path):
    from loratune.data import load_dataset
    from loratune.train import train

    out = tmp_path / "run"
    cfg = load_config(None, overrides(tiny_bert, multi_data, out, max_steps=12, learning_rate=2e-2))
    cb = _OnDisk(out)
    train(cfg, load_dataset(cfg.data), RunStore(out), progress=False, callback=cb)
    assert cb.seen  # a best model was saved while the run went on
    tuned = 0
    for step, record, label_map in cb.seen:
        assert record["thresholds"] == label_map["decoding"]["thresholds"]
        assert record["tuned_on"] == "validation" and record["step"] == step
        tuned += set(record["thresholds"].values()) != {0.5}
    assert tuned  # thresholds tuned away from 0.5: the record said 0.5 everywhere until the run's end


@pytest.mark.parametrize("loss", ["bce", "focal"])
def test_each_loss_and_threshold_switch_trains(tiny_bert, multi_data, tmp_path, loss):
    run = _train(tiny_bert, multi_data, tmp_path / "run", max_steps=4, multi_label_loss=loss,
                 threshold_tuning="false", allow_empty="true", max_labels_per_row=3)
    assert run["status"] == "completed" and run["loss"]["kind"] == loss
    d = run["decoding"]
    assert set(d["thresholds"].values()) == {0.5} and d["tuned_on"] is None
    assert d["min_labels"] == 0 and d["max_labels"] == 3


def test_none_label_takes_rows_without_labels(tiny_bert, tmp_path):
    rows = make_rows(6, seed=7)
    for i, r in enumerate(rows):
        r["label"] = [] if i % 4 == 0 else [r["label"]]
    write_jsonl(tmp_path / "train.jsonl", rows)
    write_jsonl(tmp_path / "validation.jsonl", rows[:10])
    run = _train(tiny_bert, tmp_path, tmp_path / "run", max_steps=4, multi_label="true", none_label="none")
    assert "none" in run["labels"] and run["decoding"]["none_label"] == "none"
    assert run["loss"]["kind"] == "bce_pos_weight"  # the default (ahead of combinations at 1 and 4 epochs)
    assert run["decoding"]["min_labels"] == 1  # an explicit none label answers instead of an empty set


def test_a_metric_the_task_lacks_is_said_before_training(tiny_bert, multi_data, tmp_path):
    with pytest.raises(UserError, match="not computed for multi-label"):
        _train(tiny_bert, multi_data, tmp_path / "run", metric_for_best_model="accuracy")


def test_terminal_show_and_report_carry_the_multi_intent_numbers(trained_run, capsys):
    import re

    from loratune.cli import main
    from loratune.commands.train import multi_label_note, print_summary
    from loratune.report.model import build_run_report
    from loratune.report.render import render_run

    out, run = trained_run
    from rich.console import Console

    con = Console(record=True, width=200)
    print_summary(con, run)
    text = con.export_text()
    for key in ("val/subset_accuracy", "val/samples_f1", "val_compound/subset_accuracy", "val_single/subset_accuracy"):
        assert key in text
    assert "multi-label: loss bce_pos_weight" in text and "at least one label per text" in text
    assert "thresholds tuned on validation" in multi_label_note(run)
    assert main(["show", str(out)]) == 0
    shown = " ".join(capsys.readouterr().out.split())
    from loratune.commands.show import show_run

    narrow = Console(record=True, width=60)  # the header's details do not fit one rule: they get their own line
    show_run(narrow, build_run_report(out))
    head = narrow.export_text().splitlines()[:3]
    assert "run  completed" in head[0] and "…" not in head[0], head
    assert head[1].startswith(str(run["model"]["name_or_path"])[:20]) and "classes" in " ".join(head[1:]), head
    assert re.search(r"exact match [\d.]+ · compound rows [\d.]+ \(n=\d+\) · single rows", shown)
    assert "no confusion matrix" in shown and "no confused pairs" not in shown  # show says what report says
    report = build_run_report(out)
    assert report.best["val_compound/subset_accuracy"] == run["best"]["val_compound/subset_accuracy"]
    assert 'data-key="multi"' in render_run(report)
    assert main(["evaluate", str(out), "--split", "test"]) == 0
    said = capsys.readouterr().out
    assert "test_compound/subset_accuracy" in said and "test/samples_f1" in said


def test_tune_on_multi_label_data_picks_by_subset_accuracy_with_thresholds(tiny_bert, multi_data, tmp_path,
                                                                         monkeypatch, capsys):
    from loratune.cli import main

    monkeypatch.setenv("LORATUNE_CACHE_DIR", str(tmp_path / "cache"))
    study = tmp_path / "study"
    ov = overrides(tiny_bert, multi_data, study / "unused", learning_rate=2e-2, num_threads=1)
    ov = [o for o in ov if not o.startswith(("max_steps=", "eval_steps=", "output_dir="))]
    rc = main(["tune", *ov, "--study-dir", str(study), "-q", "--budget", "3trials", "--trial-steps", "8"])
    assert rc == 0, capsys.readouterr().out
    summary = json.loads((study / "final" / "study.json").read_text())
    assert summary["objective"] == "val/subset_accuracy"
    picked = json.loads((study / "final" / "test.json").read_text())
    run = json.loads((Path(picked["run_dir"]) / "run.json").read_text())
    assert summary["decoding"]["thresholds"] == run["decoding"]["thresholds"]
    exported = json.loads((study / "final" / "adapter" / "label_map.json").read_text())
    assert exported["decoding"]["thresholds"] == run["decoding"]["thresholds"]  # the thresholds travel with the pick
    assert "test/subset_accuracy" in picked["scores"]


def test_the_tune_runner_names_the_objective_of_its_data(tiny_bert, multi_data, intent_data, tmp_path):
    from loratune.data import load_dataset
    from loratune.search.runner import TrainingRunner

    for data, key in ((multi_data, "val/subset_accuracy"), (intent_data, "val/macro_f1")):
        cfg = load_config(None, overrides(tiny_bert, data, tmp_path / "unused"))
        assert TrainingRunner(cfg, load_dataset(cfg.data)).objective == key


def test_head_learning_rate_is_the_heads_own(tiny_bert, multi_data, tmp_path):
    import torch

    from loratune.adapt import apply_adapter
    from loratune.models import load_classifier
    from loratune.train import build_optimizer

    cfg = load_config(None, overrides(tiny_bert, multi_data, tmp_path / "r", head_learning_rate=0.05))
    model, _ = apply_adapter(load_classifier(cfg.model, 4, True), cfg.adapter)
    opt, _ = build_optimizer(model, cfg, 10, torch.device("cpu"))
    names = {id(p): n for n, p in model.named_parameters()}
    for g in (g for g in opt.param_groups if g["params"]):
        heads = {any(h in names[id(p)].split(".") for h in ("classifier", "pooler")) for p in g["params"]}
        assert len(heads) == 1  # a group is all head or no head
        assert g["initial_lr"] == (0.05 if heads == {True} else cfg.train.learning_rate)
    assert sum(len(g["params"]) for g in opt.param_groups) == sum(p.requires_grad for p in model.parameters())


def test_predict_top_k_shows_scores_of_a_multi_label_run(trained_run, capsys):
    """`predict --top-k 4` printed the same line as without it on a multi-label run; --json's scores could leave a
    predicted label out."""
    from loratune.cli import main

    out, _ = trained_run
    assert main(["predict", str(out), "lost my card"]) == 0
    plain = capsys.readouterr().out
    assert "(" not in plain
    assert main(["predict", str(out), "--top-k", "4", "lost my card"]) == 0
    shown = capsys.readouterr().out
    p = api.predict(out, ["lost my card"], top_k=4)[0]
    assert len(p["scores"]) == 4 and set(p["labels"]) <= set(p["scores"])
    alts = ", ".join(f"{lab} {v:.2f}" for lab, v in p["scores"].items())
    assert f"({alts})" in " ".join(shown.split())


def test_predict_quotes_a_label_that_holds_the_lists_comma(trained_run, tmp_path, capsys, monkeypatch):
    """Labels joined with ", " read 'always, bal,ance, pin' as four labels: a label with a comma (or a quote, or a
    line break: one line per text) is printed as a JSON string, the others as they are; FORCE_COLOR (CI) wraps no
    line in a pipe."""
    import shutil

    from loratune.cli import main

    out = tmp_path / "run"
    shutil.copytree(trained_run[0], out)
    path = out / "adapter" / "label_map.json"
    meta = json.loads(path.read_text())
    assert meta["labels"] == ["balance", "card_lost", "pin", "transfer"]
    meta["labels"] = ["bal,ance", "card_lost", 'p"in', "trans\nfer"]  # the head's rows keep their order
    meta["decoding"] = {"thresholds": {lab: 0.001 for lab in meta["labels"]}, "min_labels": 1, "max_labels": 4,
                        "none_label": None}  # every label predicted, listed in the head's order
    path.write_text(json.dumps(meta))
    monkeypatch.setenv("FORCE_COLOR", "1")  # rich's is_terminal says True under it, in a pipe too
    long = "what is my balance " + "please " * 20
    assert main(["predict", str(out), long]) == 0
    shown = re.sub(r"\x1b\[[0-9;]*m", "", capsys.readouterr().out)  # (FORCE_COLOR asks for colour, not wrapping)
    assert shown.strip() == '"bal,ance", card_lost, "p\\"in", "trans\\nfer"  ' + long.strip()
    assert main(["predict", str(out), "--top-k", "4", "what is my balance"]) == 0
    assert '"bal,ance" 0.' in capsys.readouterr().out  # the scores name it so too
