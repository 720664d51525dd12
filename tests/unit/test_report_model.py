"""The report models (plain data built from run / study records) and the HTML they render to.

Run directories are written here in the run-record format (docs/run-record.md): no training."""

from __future__ import annotations

import json
import math
import random
import re
from pathlib import Path

import pytest

from loratune.errors import UserError
from loratune.report.model import (build_confusion, build_run_report, is_run_dir, is_study_dir,
                                   outside_matrix_note, pairs_missing_why, truncation_note)
from loratune.report.render import render_run

from support import flat

# ---------------------------------------------------------------------------------------------
# A synthetic run directory
# ---------------------------------------------------------------------------------------------


def write_run(path: Path, *, k: int = 6, long_tail: bool = True, n_evals: int = 6, status: str = "completed",
              confusion: bool = True, per_class: bool = True, seed: int = 0, steps_per_eval: int = 10,
              rank: int = 4, learning_rate: float = 0.001) -> Path:
    """A run of k classes: curves that learn, per-class keys, a long-tailed (or flat) label distribution
    and a confusion matrix whose errors go mostly to the 'next' class (so pairs are predictable)."""
    rng = random.Random(seed)
    path.mkdir(parents=True, exist_ok=True)
    labels = [f"intent_{i:03d}" for i in range(k)]
    train = {lab: (max(3, int(200 / (1 + i) ** 0.9)) if long_tail else 40) for i, lab in enumerate(labels)}
    val = {lab: max(2, n // 5) for lab, n in train.items()}
    # class i is right with a probability that grows with its train count; errors go to class i+1
    hit = {lab: min(0.97, 0.35 + 0.6 * math.log1p(train[lab]) / math.log1p(max(train.values())))
           for lab in labels}
    matrix = [[0] * k for _ in range(k)]
    for i, lab in enumerate(labels):
        right = round(val[lab] * hit[lab])
        matrix[i][i] = right
        wrong = val[lab] - right
        matrix[i][(i + 1) % k] += wrong - wrong // 3
        matrix[i][(i + 7) % k] += wrong // 3
    points = []
    last = n_evals * steps_per_eval
    for e in range(n_evals + 1):
        step = e * steps_per_eval
        f = step / last
        p = {"step": step, "epoch": step / 20, "examples_seen": step * 16, "wall_s": step * 0.5,
             "lr": 1e-3 * (1 - f), "val/loss": math.log(k) * (1 - 0.7 * f) + 0.05 * f * f,
             "val/macro_f1": 0.85 * (1 - math.exp(-4 * f)), "val/accuracy": 0.87 * (1 - math.exp(-4 * f)),
             "train_eval/loss": math.log(k) * (1 - 0.8 * f), "train_eval/macro_f1": 0.92 * (1 - math.exp(-4 * f)),
             "val/n": sum(val.values())}
        if e:
            p["train/loss"] = math.log(k) * (1 - 0.75 * f) * (1 + 0.02 * rng.uniform(-1, 1))
            p["train/grad_norm"] = 1.0
        if per_class:
            for i, lab in enumerate(labels):
                r = matrix[i][i] / val[lab] * f
                p[f"val/recall/{lab}"] = r
                p[f"val/precision/{lab}"] = min(1.0, r + 0.05)
                p[f"val/f1/{lab}"] = r
                p[f"val/support/{lab}"] = val[lab]
                p[f"train_eval/recall/{lab}"] = min(1.0, r + 0.1)
            p["val/confused_pairs"] = [{"true": labels[0], "pred": labels[1], "count": 3}]
        points.append(p)
    best = points[-1]
    run = {"status": status, "reason": "planned steps done" if status == "completed" else None,
           "task": "single_label", "labels": labels, "label_counts": {"train": train, "val": val},
           "model": {"name_or_path": "tiny", "model_type": "bert", "num_layers": 2},
           "params": {"total": 1000, "trainable": 100, "adapter": 60, "head": 40, "adapted_weights": 600,
                      "share_of_total": 0.1},
           "rows": {"train": sum(train.values()), "val": sum(val.values())},
           "steps_planned": last, "steps_done": last, "examples_seen": last * 16, "wall_s": last * 0.5,
           "best": best, "final": points[-1]}
    (path / "run.json").write_text(json.dumps(run), encoding="utf-8")
    (path / "history.jsonl").write_text("".join(json.dumps(p) + "\n" for p in points), encoding="utf-8")
    (path / "config.yaml").write_text(
        "model:\n  name_or_path: tiny\n  max_length: 32\ndata:\n  dataset_name: synth\nadapter:\n  method: lora\n"
        f"  r: {rank}\n  lora_alpha: {2 * rank}\n  target_modules: [attn.q, attn.v]\ntrain:\n"
        f"  learning_rate: {learning_rate}\n  seed: 1\n",
        encoding="utf-8")
    if confusion:
        (path / "confusion.json").write_text(json.dumps({"labels": labels, "matrix": matrix, "step": last}),
                                             encoding="utf-8")
    return path


# ---------------------------------------------------------------------------------------------
# Run report model
# ---------------------------------------------------------------------------------------------


def test_run_report_reads_every_section(tmp_path):
    r = build_run_report(write_run(tmp_path / "r", k=12))
    assert r.status == "completed" and r.metric == "val/macro_f1" and r.n_classes == 12
    assert r.best["step"] == 60 and r.best["val/macro_f1"] == pytest.approx(0.85 * (1 - math.exp(-4)))
    assert r.start_metric == 0.0
    panels = {p.id: p for p in r.curves}
    assert set(panels) == {"loss", "metric", "lr"}
    loss_keys = [c.key for c in panels["loss"].curves]
    assert loss_keys == ["train/loss", "train_eval/loss", "val/loss"]
    assert len(panels["loss"].curves[2].points) == 7  # one per eval point
    assert len(panels["loss"].curves[0].points) == 6  # train loss is absent at step 0
    assert panels["metric"].best_step == 60
    # the diagnosis ran: a verdict and findings with evidence
    assert r.diagnosis.error is None and r.diagnosis.verdict
    assert all(f.evidence for f in r.diagnosis.findings)
    # parameters
    keys = {(p.group, p.key): p.value for p in r.params}
    assert keys[("Model", "trainable parameters")] == 100 and keys[("Adapter", "r")] == 4
    assert keys[("Training", "learning_rate")] == 0.001
    assert "r: 4" in r.config_yaml
    d = r.to_dict()
    json.dumps(d)  # plain data all the way down
    assert d["kind"] == "run" and d["classes"]["frequency_vs_f1"]


def test_classes_sorted_worst_first_and_long_tail_marked(tmp_path):
    r = build_run_report(write_run(tmp_path / "r", k=20, long_tail=True))
    t = r.classes
    recalls = [row.recall for row in t.rows]
    assert recalls == sorted(recalls)
    assert t.long_tail and t.head_tail_ratio >= 2
    tails = {row.label for row in t.rows if row.tail}
    counts = {row.label: row.train_count for row in t.rows}
    assert tails and all(counts[lab] <= t.tail_max_count for lab in tails)
    assert all(counts[lab] > t.tail_max_count for lab in counts if lab not in tails)
    assert t.tail_recall < t.head_recall
    assert len(t.frequency_vs_f1) == 20 and {x[3] for x in t.frequency_vs_f1} == {True, False}


def test_balanced_labels_mark_no_tail(tmp_path):
    t = build_run_report(write_run(tmp_path / "r", k=8, long_tail=False)).classes
    assert not t.long_tail and not any(row.tail for row in t.rows) and t.head_tail_ratio is None  # none under 20


def test_a_class_with_no_val_row_and_no_prediction_has_no_f1_in_show_or_the_report(tmp_path, capsys):
    """The per-class numbers as training writes them (metrics.prediction_scores, then store.json_safe): intent_003
    has no validation row and is never predicted, so it has no recall, no precision and no F1, as macro-F1 says (it
    leaves it out). Before, its F1 was written 0.0: `show` printed F1 0.000, the report put it in the F1
    distribution's [0.0, 0.1) bar and among the weakest classes."""
    import numpy as np

    from loratune.cli import main
    from loratune.metrics import prediction_scores
    from loratune.store import json_safe

    run = write_run(tmp_path / "run", k=4, long_tail=False, n_evals=2)
    labels = [f"intent_{i:03d}" for i in range(4)]
    y = np.array([0, 0, 1, 1, 2, 2])
    pred = np.array([0, 1, 1, 1, 2, 0])  # F1: 0.5, 0.8, 2/3; intent_003 absent from both
    scores, _ = prediction_scores("val", pred, y, tuple(labels))
    points = [json.loads(line) for line in (run / "history.jsonl").read_text().splitlines()]
    for p in points:
        p.update({k: v for k, v in json_safe(scores).items() if k.count("/") == 2})
    (run / "history.jsonl").write_text("".join(json.dumps(p) + "\n" for p in points), encoding="utf-8")
    assert json.loads((run / "history.jsonl").read_text().splitlines()[-1])["val/f1/intent_003"] is None

    t = build_run_report(run).classes
    absent = next(r for r in t.rows if r.label == "intent_003")
    assert (absent.recall, absent.precision, absent.f1, absent.val_support) == (None, None, None, 0)
    assert t.rows[-1] is absent  # classes without val rows last
    assert [(lab, round(f1, 3)) for lab, _, f1, _ in t.frequency_vs_f1] == [
        ("intent_000", 0.5), ("intent_002", 0.667), ("intent_001", 0.8)]
    assert [r.label for r in t.weakest()] == ["intent_000", "intent_002", "intent_001"]

    text = re.sub(r"\s+", " ", re.sub(r"<[^>]+>", " ", render_run(build_run_report(run))))
    assert "0 classes with val F1 in [0.0, 0.1)" in text and "The 3 weakest classes" in text
    assert "intent_000: recall 0.500, F1 0.500" in text and "intent_003: recall" not in text  # no recall bar

    assert main(["show", str(run)]) == 0
    out = capsys.readouterr().out
    assert not any(line.startswith("intent_003") for line in out.splitlines())  # not ranked (ClassTable.ranked)
    assert "1 class(es) without val rows (no recall, not ranked): intent_003" in out


def test_report_table_summary_tile_and_show_rank_the_same_weakest_classes(tmp_path, capsys):
    """One rule (ClassTable.ranked: a class with a val recall) for the weakest classes. Before, three: the report's
    table took classes with a recall or an F1 (intent_003, predicted but without val rows: F1 0.0, no recall, listed
    after every ranked class), the summary tile those with a recall, `show` the first N rows whatever they had
    (intent_003 and intent_004, neither val row nor prediction, listed with dashes)."""
    import numpy as np

    from loratune.cli import main
    from loratune.metrics import prediction_scores
    from loratune.store import json_safe

    run = write_run(tmp_path / "run", k=5, long_tail=False, n_evals=2)
    labels = tuple(f"intent_{i:03d}" for i in range(5))
    scores, _ = prediction_scores("val", np.array([0, 1, 1, 1, 2, 3]), np.array([0, 0, 1, 1, 2, 2]), labels)
    points = [json.loads(line) for line in (run / "history.jsonl").read_text().splitlines()]
    for p in points:
        p.update({k: v for k, v in json_safe(scores).items() if k.count("/") == 2})
    (run / "history.jsonl").write_text("".join(json.dumps(p) + "\n" for p in points), encoding="utf-8")

    t = build_run_report(run).classes
    ranked = ["intent_000", "intent_002", "intent_001"]  # recall 0.5 (F1 0.667), 0.5 (F1 0.667), 1.0
    assert [r.label for r in t.ranked] == ranked and [r.label for r in t.weakest()] == ranked
    assert [r.label for r in t.unranked] == ["intent_003", "intent_004"]
    assert next(r for r in t.rows if r.label == "intent_003").f1 == 0.0  # predicted: an F1, still no recall

    html = render_run(build_run_report(run))
    table = re.search(r'id="worst-classes".*?</table>', html, re.S).group(0)
    assert list(dict.fromkeys(re.findall(r"intent_\d+", table))) == ranked
    tile = re.search(r'data-key="weakest".*?<div class="d">(.*?)</div>', html, re.S).group(1)
    assert list(dict.fromkeys(re.findall(r"intent_\d+", tile))) == ranked  # WEAKEST_TILE = 3

    assert main(["show", str(run)]) == 0
    listed = [line.split()[0] for line in capsys.readouterr().out.splitlines() if line.startswith("intent_")]
    assert listed == ranked
    assert main(["show", str(run), "--classes", "2"]) == 0
    out = capsys.readouterr().out
    assert [line.split()[0] for line in out.splitlines() if line.startswith("intent_")] == ranked[:2]
    assert "2 class(es) without val rows (no recall, not ranked): intent_003, intent_004" in out


def test_confusion_focus_holds_the_most_confused_classes_with_pairs_adjacent():
    labels = [f"c{i}" for i in range(40)]
    m = [[10 if i == j else 0 for j in range(40)] for i in range(40)]
    m[5][9] = 7  # the biggest confusion
    m[9][5] = 2
    m[30][31] = 4
    m[12][2] = 1
    c = build_confusion({"labels": labels, "matrix": m, "step": 8}, None, focus_k=4)
    assert c.n_classes == 40 and c.errors == 14 and c.total == 400 + 14
    assert set(c.focus) == {"c5", "c9", "c30", "c31"}  # c2 / c12 have less off-diagonal mass
    assert c.focus[:2] in (("c5", "c9"), ("c9", "c5")) and set(c.focus[2:]) == {"c30", "c31"}
    i5, i9 = c.focus.index("c5"), c.focus.index("c9")
    assert c.focus_matrix[i5][i9] == 7 and c.focus_matrix[i9][i5] == 2
    assert c.focus_support[i5] == 17 and c.focus_errors == 13
    assert c.focus_share == pytest.approx(13 / 14)
    assert (5, 9, 7) in c.cells and len(c.cells) == 40 + 4


def test_confusion_missing_or_malformed_says_why():
    assert build_confusion(None, "no confusion.json").missing.startswith("no confusion.json")
    bad = build_confusion({"labels": ["a", "b"], "matrix": [[1, 2]]}, None)
    assert "square" in bad.missing


def test_pairs_come_from_the_matrix_with_rates_and_reverse(tmp_path):
    r = build_run_report(write_run(tmp_path / "r", k=10))
    assert r.pairs and r.examples_note  # examples not computed: said so
    counts = [p.count for p in r.pairs]
    assert counts == sorted(counts, reverse=True)
    top = r.pairs[0]
    sup = next(row.val_support for row in r.classes.rows if row.label == top.true)
    assert top.rate == pytest.approx(top.count / sup) and top.examples is None
    ex = {(top.true, top.pred): ["why is my card declined"]}
    r2 = build_run_report(tmp_path / "r", examples=ex)
    assert r2.pairs[0].examples == ("why is my card declined",) and r2.examples_note is None
    assert r2.pairs[1].examples == ()


def test_pairs_fall_back_to_history_without_confusion_json(tmp_path):
    r = build_run_report(write_run(tmp_path / "r", k=6, confusion=False))
    assert r.confusion.missing and [(p.true, p.pred, p.count) for p in r.pairs] == [("intent_000", "intent_001", 3)]


def _generative_run(path: Path, matrix: list[list[int]], unknown_outputs: list[dict]) -> Path:
    """A generative classifier (causal-lm, label_format=generate) of 4 classes x 5 val rows whose saved point's
    outputs mostly name no label: those rows are errors of their class in no cell of confusion.json."""
    run = write_run(path, k=4, long_tail=False, n_evals=2)
    labels = [f"intent_{i:03d}" for i in range(4)]
    points = [json.loads(x) for x in (run / "history.jsonl").read_text(encoding="utf-8").splitlines()]
    unknown = sum(q["count"] for q in unknown_outputs)
    points[-1].update({"val/n": 20, "val/accuracy": sum(matrix[i][i] for i in range(4)) / 20,
                       "val/unknown_rate": unknown / 20, "val/unknown_outputs": unknown_outputs,
                       **{f"val/support/{lab}": 5 for lab in labels},
                       **{f"val/recall/{lab}": matrix[i][i] / 5 for i, lab in enumerate(labels)}})
    (run / "history.jsonl").write_text("".join(json.dumps(p) + "\n" for p in points), encoding="utf-8")
    record = json.loads((run / "run.json").read_text(encoding="utf-8"))
    record.update(task="causal-lm", label_format="generate", best=points[-1], final=points[-1])
    (run / "run.json").write_text(json.dumps(record), encoding="utf-8")
    (run / "confusion.json").write_text(json.dumps({"labels": labels, "matrix": matrix, "step": points[-1]["step"]}),
                                        encoding="utf-8")
    return run


def test_a_generative_classifier_counts_its_outputs_that_name_no_label_as_errors(tmp_path, capsys):
    """16 of 20 val outputs name no label, 3 name a wrong one, 1 is right (val/accuracy 0.05): the report read the
    errors and the pair rates off confusion.json alone (3 errors in 4 rows, each pair 100% of its class), and never
    said the unknown rate; the errors are the val split's (19 of 20), a pair's rate is over its class's 5 val rows
    (1/5, as diagnose's confused_top_rate), and the outputs that name no label are said."""
    from loratune.cli import main

    m = [[0, 0, 1, 0], [0, 0, 1, 0], [0, 0, 1, 0], [0, 0, 1, 0]]
    run = _generative_run(tmp_path / "gen", m, [{"output": "", "count": 15}, {"output": "card", "count": 1}])
    r = build_run_report(run)
    c = r.confusion
    assert (c.total, c.errors, c.cell_errors, c.unknown) == (20, 19, 3, 16)
    assert c.support == (5, 5, 5, 5) and c.unknown_outputs == (("", 15), ("card", 1))
    assert [(p.true, p.pred, p.count, p.rate) for p in r.pairs] == [
        (f"intent_00{i}", "intent_002", 1, 0.2) for i in (0, 1, 3)]
    html = render_run(r)
    assert "19 errors in 20 rows (95.0%)" in html and "16 of the 20 val rows (80%, `val/unknown_rate`)" in html
    assert main(["show", str(run)]) == 0
    out = " ".join(capsys.readouterr().out.split())
    assert "19 errors in 20 val rows" in out and "(20% of intent_000)" in out and "100%" not in out
    assert "16 of the 20 val rows (80%, `val/unknown_rate`) got a generated output that names no label " \
           "(most frequent: (empty) ×15, 'card' ×1)" in out

    # every output names no label: an all-zero matrix, a single-label run with confusion.json (no multi-label's lack)
    run = _generative_run(tmp_path / "none", [[0] * 4 for _ in range(4)], [{"output": "now", "count": 20}])
    r = build_run_report(run)
    assert (r.confusion.total, r.confusion.errors, r.confusion.unknown, r.pairs) == (20, 20, 20, ())
    assert "20 errors in 20 rows (100.0%)" in render_run(r)
    why = pairs_missing_why(r)
    assert why.startswith("no confused pairs: none of the 20 validation errors predicts another class; 20 of the 20")
    assert "multi-label" not in why
    # a classifier's matrix holds every row: nothing said beside it
    assert outside_matrix_note(build_run_report(write_run(tmp_path / "cls", k=6)).confusion) is None


def test_a_generative_classifier_without_its_history_counts_the_rows_outside_the_matrix_from_run_json(tmp_path):
    """history.jsonl gone (run.json's `best` is the step of confusion.json): the point of the confusion's step was
    looked up in the history alone, so the report fell back to confusion.json's 4 rows (3 errors in 4, each pair 100%
    of its class, the 16 outputs that name no label unsaid); run.json's `best` at that step counts them (19 of 20)."""
    m = [[0, 0, 1, 0], [0, 0, 1, 0], [0, 0, 1, 0], [0, 0, 1, 0]]
    run = _generative_run(tmp_path / "gen", m, [{"output": "", "count": 16}])
    (run / "history.jsonl").unlink()
    r = build_run_report(run)
    c = r.confusion
    assert (c.total, c.errors, c.cell_errors, c.unknown, c.support) == (20, 19, 3, 16, (5, 5, 5, 5))
    assert [(p.true, p.pred, p.count, p.rate) for p in r.pairs] == [
        (f"intent_00{i}", "intent_002", 1, 0.2) for i in (0, 1, 3)]
    assert "19 errors in 20 rows (95.0%)" in render_run(r)
    # run.json's `best` of another step says nothing of confusion.json's rows: the matrix's own counts stand
    record = json.loads((run / "run.json").read_text(encoding="utf-8"))
    record["best"] = {**record["best"], "step": record["best"]["step"] - 1}
    (run / "run.json").write_text(json.dumps(record), encoding="utf-8")
    c = build_run_report(run).confusion
    assert (c.total, c.errors, c.unknown) == (4, 3, None)


@pytest.mark.parametrize("labels, matrix, point, errors, note", [
    # 3 val rows of a label train never had, each with an output that names no label: among the 16 unknown outputs,
    # so 16 rows are outside the matrix (they were counted twice: 16 + 3)
    ("abcd", [[0, 0, 1, 0]] * 4, {"val/n": 20, "val/unknown_rate": 0.8, "support": (5, 5, 5, 2)}, 19,
     "16 of the 20 val rows (80%, `val/unknown_rate`) got a generated output that names no label; 3 val rows are of a "
     "label train never had, all 3 among the 16 above: 16 errors without a cell in the matrix"),
    # the same rows with outputs that name a label (no overlap: 13 + 3)
    ("abcd", [[0, 0, 1, 0]] * 4, {"val/n": 20, "val/unknown_rate": 0.65, "support": (5, 5, 5, 2)}, 19,
     "13 of the 20 val rows (65%, `val/unknown_rate`) got a generated output that names no label; 3 val rows are of a "
     "label train never had: 16 errors without a cell in the matrix"),
    # one of them with an output that names no label: 14 + 3 - 1
    ("abcd", [[0, 0, 1, 0]] * 4, {"val/n": 20, "val/unknown_rate": 0.7, "support": (5, 5, 5, 2)}, 19,
     "14 of the 20 val rows (70%, `val/unknown_rate`) got a generated output that names no label; 3 val rows are of a "
     "label train never had, 1 of them among the 14 above: 16 errors without a cell in the matrix"),
    ("ab", [[1, 0], [0, 1]], {"val/n": 6, "val/unknown_rate": 4 / 6, "support": (3, 2)}, 4,
     "4 of the 6 val rows (67%, `val/unknown_rate`) got a generated output that names no label; 1 val row is of a "
     "label train never had, among the 4 above: 4 errors without a cell in the matrix"),
    # a classifier (no unknown rate): the rows of a label train never had alone
    ("ab", [[4, 1], [2, 3]], {"val/n": 12, "support": (5, 5)}, 5,
     "2 val rows are of a label train never had: 2 errors without a cell in the matrix"),
    ("ab", [[4, 1], [2, 3]], {"val/n": 11, "support": (5, 5)}, 4,
     "1 val row is of a label train never had: 1 error without a cell in the matrix"),
], ids=["all-overlap", "no-overlap", "one-overlap", "one-row-overlap", "classifier", "classifier-one-row"])
def test_the_rows_outside_the_matrix_are_counted_once(labels, matrix, point, errors, note):
    """A val row of a label train never had whose output names no label is in val/unknown_rate and in no row of the
    matrix alike: the note said both counts as if apart (16 + 3 of 20 rows, 16 outside the matrix); it says the
    overlap and counts those rows once."""
    point = {**{k: v for k, v in point.items() if k != "support"},
             **{f"val/support/{lab}": n for lab, n in zip(labels, point["support"])}}
    c = build_confusion({"labels": list(labels), "matrix": matrix, "step": 8}, None, point=point)
    assert c.errors == errors and c.total - sum(v for _, _, v in c.cells) == int(note.split(": ")[-1].split()[0])
    assert outside_matrix_note(c) == note


def test_partial_records_still_give_a_report(tmp_path):
    from loratune.store import RunLock

    d = write_run(tmp_path / "r", k=5, per_class=False, confusion=False, status="running")
    (d / "history.jsonl").write_text((d / "history.jsonl").read_text() + '{"step": 70, "val/lo', encoding="utf-8")
    assert build_run_report(d).status == "died"  # `running`, but no process holds run.lock
    live = RunLock(d)  # a live training process
    live.acquire()
    try:
        r = build_run_report(d)
    finally:
        live.release()
    assert r.status == "running"
    assert any("still training" in n for n in r.notes) and any("torn" in n for n in r.notes)
    assert r.classes.rows == () and "per-class" in r.classes.missing
    html = render_run(r)
    assert 'data-missing="1"' in html


def test_empty_history_and_not_a_run(tmp_path):
    d = tmp_path / "r"
    d.mkdir()
    (d / "run.json").write_text(json.dumps({"status": "running"}), encoding="utf-8")
    r = build_run_report(d)
    assert r.curves == () and r.diagnosis.error and any("no eval points" in n for n in r.notes)
    render_run(r)
    with pytest.raises(UserError):
        build_run_report(tmp_path / "nothing")
    (tmp_path / "empty").mkdir()
    with pytest.raises(UserError):
        build_run_report(tmp_path / "empty")
    assert is_run_dir(d) and not is_study_dir(d)


def test_fixture_runs_in_the_repo_render(tmp_path):
    root = Path(__file__).resolve().parents[1] / "fixtures" / "runs"
    runs = [p for p in sorted(root.glob("*")) if (p / "history.jsonl").is_file()] if root.is_dir() else []
    if not runs:
        pytest.skip("no fixture runs in this checkout")
    for run in runs:
        r = build_run_report(run)
        assert r.curves and r.diagnosis.verdict
        assert "<svg" in render_run(r)


# ---------------------------------------------------------------------------------------------
# HTML: self-contained, small, the key elements present
# ---------------------------------------------------------------------------------------------


def test_html_is_self_contained_and_small_for_150_classes(tmp_path):
    r = build_run_report(write_run(tmp_path / "r", k=150, n_evals=10))
    html = render_run(r)
    size = len(html.encode("utf-8"))
    assert size < 5 * 1024 * 1024, size
    assert not re.search(r'(src|href)=["\']?(https?:)?//', html)  # no network fetch of any kind
    assert "@import" not in html and "url(http" not in html
    for marker in ('id="summary"', 'id="curves"', 'id="diagnosis"', 'id="classes"', 'id="confusion"',
                   'id="pairs"', 'id="params"', 'data-chart="loss"', 'data-chart="metric"', 'data-chart="recall"',
                   'data-chart="freq-f1"', 'data-chart="confusion-focus"', 'data-chart="confusion-overview"'):
        assert marker in html, marker
    assert html.count('class="finding ') == len(r.diagnosis.findings)
    assert len(r.confusion.focus) == 25 and r.confusion.n_classes == 150


def test_html_escapes_label_text(tmp_path):
    d = write_run(tmp_path / "r", k=5)
    run = json.loads((d / "run.json").read_text())
    bad = "<script>alert(1)</script>"
    conf = json.loads((d / "confusion.json").read_text())
    conf["labels"][0] = bad
    (d / "confusion.json").write_text(json.dumps(conf))
    html = render_run(build_run_report(d, examples={(bad, conf["labels"][1]): ["<b>x</b>"]}))
    assert bad not in html and "&lt;script&gt;" in html and "<b>x</b>" not in html
    assert run["labels"]


def write_sft_run(path: Path) -> Path:
    """A causal-lm run (open generation, a prompt set): full points at steps 0 and 6 generate, the val-loss-only
    points at 2 and 4 do not; the saved model is step 4 (its lowest val loss)."""
    path.mkdir(parents=True, exist_ok=True)
    loss = {0: 2.3, 2: 2.1, 4: 2.0, 6: 2.05}
    hist = []
    for step, v in loss.items():
        p = {"step": step, "val/loss": v, "val/token_accuracy": 0.5 + step / 100}
        if step:
            p["train/loss"] = v - 0.2
        if step in (0, 6):
            p.update({"val/prompt_familiar_chrf": 0.2 + step / 100, "val/prompt_novel_chrf": 0.1 + step / 200,
                      "val/prompt_novel_exact_match": 0.0, "train_eval/loss": v - 0.3 if step else None})
        hist.append({k: x for k, x in p.items() if x is not None})
    (path / "history.jsonl").write_text("".join(json.dumps(p) + "\n" for p in hist))
    gens = [{"step": step, "group": g, "prompt": f"{g} prompt {i} <tag>", "reference": f"ref {i}",
             "output": f"out {g} {i} at {step}"} for step in (0, 6) for g in ("familiar", "novel") for i in range(4)]
    (path / "generations.jsonl").write_text("".join(json.dumps(r) + "\n" for r in gens))
    (path / "run.json").write_text(json.dumps({
        "status": "completed", "task": "causal-lm", "objective": "val/loss", "adapter_step": 4,
        "best": hist[2], "final": hist[3], "steps_done": 6, "steps_planned": 6}))
    return path


def test_a_causal_lm_report_shows_its_prompt_set_in_place_of_classes(tmp_path):
    from loratune.report.model import PROMPT_ROWS_PER_GROUP

    r = build_run_report(write_sft_run(tmp_path / "sft"))
    ps = r.prompts
    assert ps is not None and ps.step == 6 and ps.missing is None
    # chrF per group at the points that generated; the marker at the saved model (a loss-only point)
    assert {c.key: [s for s, _ in c.points] for c in ps.panel.curves} == {
        "val/prompt_familiar_chrf": [0, 6], "val/prompt_novel_chrf": [0, 6]}
    assert ps.panel.best_step == 4 == r.best["step"] and r.objective == "val/loss"
    # the first prompts of each group, the base model's output beside the last generation's
    assert [(g.group, g.prompt) for g in ps.rows] == [
        (g, f"{g} prompt {i} <tag>") for g in ("familiar", "novel") for i in range(PROMPT_ROWS_PER_GROUP)]
    assert all(g.before == f"out {g.group} {g.prompt.split()[2]} at 0" and g.after.endswith("at 6") for g in ps.rows)
    assert ps.scores == {"val/prompt_familiar_chrf": 0.26, "val/prompt_novel_exact_match": 0.0,
                         "val/prompt_novel_chrf": 0.13}
    html = render_run(r)
    assert 'id="prompts"' in html and 'href="#prompts"' in html and "step 6 (the last generation)" in html
    assert "&lt;tag&gt;" in html and "<tag>" not in html  # outputs and prompts are escaped
    # an open-generation run has no classes: no class, confusion or pairs sections, no links to them
    assert not any(f'id="{s}"' in html or f'href="#{s}"' in html for s in ("classes", "confusion", "pairs"))
    # the outputs file gone (a copied record): the chrF chart stays, and the section says what is missing
    (tmp_path / "sft" / "generations.jsonl").unlink()
    gone = build_run_report(tmp_path / "sft").prompts
    assert gone.rows == () and gone.panel is not None and gone.missing == "no generations.jsonl"
    section = render_run(build_run_report(tmp_path / "sft")).split('id="prompts"')[1].split("</section>")[0]
    assert 'data-chart="prompts"' in section and "no generations.jsonl" in section and "prompts-table" not in section
    # a classifier's report has no prompt set
    plain = build_run_report(write_run(tmp_path / "clf", k=4))
    assert plain.prompts is None and 'id="prompts"' not in render_run(plain) and 'id="classes"' in render_run(plain)


# ---------------------------------------------------------------------------------------------
# Study report model: a study played by a scripted world (no training), finished by `tune`'s own code
# ---------------------------------------------------------------------------------------------

LR, R = "train.learning_rate", "adapter.r"


def scripted_study(study_dir: Path, *, finish: bool = True, run_dirs: bool = False):
    """The protocol on a world where lr binds (F1 peaks at lr 4e-3, rank barely matters), with the
    decision trail in <study_dir>/decisions.jsonl and, when `finish`, final/study.json."""
    from loratune.search.budget import Budget, CostModel, Meter
    from loratune.search.context import SearchContext
    from loratune.search.protocol import ProtocolSettings, Start, run_protocol
    from loratune.search.summary import finish as finish_study
    from loratune.search.trial import TrialResult
    from memory_store import MemoryStore

    start = Start(point={R: 8, "adapter.lora_alpha": 16.0, "adapter.target_modules": ["attn.q", "attn.v"],
                         "adapter.layers_to_transform": "all", "adapter.lora_dropout": 0.1, LR: 1e-3},
                  ceiling_r=32, lr_centre=1e-3)

    def f1(p):
        if p.get("adapter.method") == "full":
            return 0.70
        x = round(math.log2(p[LR] / 1e-3))
        seed = {42: 0.0, 43: -0.004, 44: 0.003}.get(p.get("train.seed", 42), 0.0)
        return {-1: 0.50, 0: 0.60, 1: 0.70, 2: 0.78, 3: 0.75}.get(x, 0.4) + 0.001 * math.log2(p[R] / 8) + seed

    class Runner:
        def run(self, spec, run_dir, watch=None):
            p = spec.point
            full = p.get("adapter.method") == "full"
            v = f1(p)
            r = int(p.get(R, 8))
            params = ({"total": 1_000_000, "trainable": 1_000_000, "adapter": 0, "adapted_weights": 0} if full else
                      {"total": 1_000_000, "trainable": 1000 * r + 5000, "adapter": 1000 * r,
                       "adapted_weights": 300_000})
            verdict = "healthy" if full or p[LR] >= 4e-3 else "lr-too-small"
            if run_dirs:
                write_run(Path(run_dir), k=4, long_tail=False, seed=r, rank=r, learning_rate=p[LR])
            return TrialResult(
                status="completed", value=v, examples=1000, wall_s=10.0, steps_planned=100, steps_done=100,
                mean_step_s=0.30 if full else 0.10 + 0.001 * r, peak_memory_mb=1500.0 if full else 500.0 + r,
                params=params, best={"step": 100, "val/macro_f1": v}, curve=((0, 0.0), (50, v / 2), (100, v)),
                verdict=verdict, findings=({"rule_id": verdict, "verdict": verdict, "moves": ["lr x2"],
                                            "evidence": [f"scripted {verdict}"]},),
                features={"val_metric_se": 0.01, "val_loss_min": 1 - v, "gap_f1": 0.05, "best_step_fraction": 1.0,
                          "still_improving": 0.0, "val_metric_final_drop": 0.0, "val_loss_rise": 0.0})

        def compare(self, run_dirs):
            return None

        def evaluate(self, run_dir, split="test"):
            return {"test/macro_f1": 0.77, "test/n": 500}

    study_dir.mkdir(parents=True, exist_ok=True)
    store = MemoryStore(study_dir, decisions_path=study_dir / "decisions.jsonl")
    ctx = SearchContext(store=store, runner=Runner(), meter=Meter(Budget.parse("100trials")), trial_examples=1000,
                        costs=CostModel())
    ctx.state["start"] = start
    run_protocol(ctx, start, ProtocolSettings())
    if finish:
        finish_study(ctx, study_dir / "final", "protocol")
    return ctx


def test_study_report_reads_a_finished_study(tmp_path):
    from loratune.report.study import build_study_report

    ctx = scripted_study(tmp_path / "study")
    s = build_study_report(tmp_path / "study")
    assert s.finished and s.strategy == "protocol" and not s.notes
    assert [t.number for t in s.trials] == [r.number for r in ctx.records]
    assert len(s.trail) == len(ctx.decisions) and s.trail[0].seq == 0
    assert {d.phase for d in s.trail} >= {"phase1-lr-grid", "pair", "rank-sweep", "lora-vs-full", "finish"}
    # best so far never falls and ends at the best trial
    bsf = [p.best_so_far for p in s.best_vs_compute]
    assert bsf == sorted(bsf) and bsf[-1] == pytest.approx(max(t.value for t in s.trials))
    assert s.best_vs_compute[-1].examples_cum == 1000 * len(s.trials)
    # rank: the sweep found the plateau at r=8; shares grow with r; a breakeven rank is known
    assert s.rank.plateau_r == 8 and s.rank.breakeven_r and s.rank.missing is None
    assert any(p.in_sweep and p.r == 32 for p in s.rank.points)
    shares = dict((r, a) for r, a, _ in s.rank.shares)
    assert shares[8] == pytest.approx(8000 / 1e6) and shares[32] == pytest.approx(32000 / 1e6)
    # the pair: lr arm +0.08, rank arm +0.001, noise from the val SE; lr binds
    assert s.pair.missing is None and s.pair.binding == "optimization"
    deltas = {a.knob: a.delta for a in s.pair.arms}
    assert deltas["lr"] == pytest.approx(0.08) and deltas["r"] == pytest.approx(0.001)
    assert s.pair.noise == pytest.approx(2 * 0.01)  # protocol 6: 2 x the val SE, no seeds
    # LoRA vs full: the full probe (0.70) loses to LoRA (0.78)
    assert s.lora_vs_full.choice == "lora" and len(s.lora_vs_full.table) >= 2
    assert {rid for rid, _, _ in s.lora_vs_full.reasons} >= {"param-share", "performance-gap"}
    # recommendation: lr 4e-3, r 8, with the test score
    rec = s.recommendation
    assert rec.point[LR] == 4e-3 and rec.point[R] == 8 and rec.test["test/macro_f1"] == 0.77
    assert s.seed_sigma is not None and len(s.seeds) == 3
    json.dumps(s.to_dict())


def test_unfinished_study_is_rebuilt_from_the_trail_and_the_trial_dirs(tmp_path):
    from loratune.report.study import build_study_report

    scripted_study(tmp_path / "study", finish=False, run_dirs=True)
    s = build_study_report(tmp_path / "study")
    assert not s.finished and any("not finished" in n for n in s.notes)
    assert s.trail and s.trials and all(t.curve for t in s.trials)  # curves from the trial directories
    assert s.trials[0].link == "trials/00-start"
    assert s.best_vs_compute and s.best_vs_compute[-1].best_so_far == pytest.approx(max(t.value for t in s.trials))
    assert s.recommendation.missing and "not finished" in s.recommendation.missing
    assert s.rank.points and s.rank.missing  # ranks from the trials; no plateau marks yet
    assert s.pair.missing is None or s.pair.binding  # the pair data lives in the trail
    html = render_study_html(s)
    assert 'id="trail"' in html and 'data-missing="1"' in html


def test_empty_study_dir_says_what_is_missing(tmp_path):
    from loratune.report import build_report
    from loratune.report.study import StudyReport, build_study_report

    d = tmp_path / "study"
    (d / "trials").mkdir(parents=True)
    s = build_report(d)
    assert isinstance(s, StudyReport) and not s.trials and not s.trail
    assert s.rank.missing and s.pair.missing and s.lora_vs_full.missing and s.recommendation.missing
    html = render_study_html(s)
    assert html.count('data-missing="1"') >= 5
    with pytest.raises(UserError):
        build_study_report(tmp_path / "nope")


def test_study_html_has_every_section_and_links_each_trial(tmp_path):
    scripted_study(tmp_path / "study")
    from loratune.report.study import build_study_report

    s = build_study_report(tmp_path / "study")
    html = render_study_html(s)
    for marker in ('id="summary"', 'id="recommendation"', 'id="trail"', 'id="compute"', 'id="rank"', 'id="pair"',
                   'id="lora-vs-full"', 'id="trials"', 'data-chart="rank"', 'data-chart="pair"',
                   'data-chart="best-vs-examples"', 'id="lora-full-table"'):
        assert marker in html, marker
    for t in s.trials:
        assert f'id="trial-{t.number}"' in html and f'href="#trial-{t.number}"' in html
        assert t.link is None  # the scripted trials wrote no run directory: no link to a folder that is not there
    assert not re.search(r'(src|href)=["\']?(https?:)?//', html) and 'href="trials/' not in html


def render_study_html(s) -> str:
    from loratune.report.render import render

    return render(s)


def test_report_model_and_html_import_no_torch(tmp_path):
    import subprocess
    import sys

    run = write_run(tmp_path / "r", k=5)
    code = ("import sys\nfrom loratune.report import build_report\nfrom loratune.report.render import render\n"
            f"render(build_report({str(run)!r}, examples=False))\n"
            "assert 'torch' not in sys.modules and 'transformers' not in sys.modules, 'heavy import'\n")
    subprocess.run([sys.executable, "-c", code], check=True)


def test_a_loss_study_is_shown_as_losses_with_gains_where_the_loss_fell(tmp_path):
    """study.json of a val-loss study holds the search's scores (minus the loss) in its curves, rank points,
    pair and seeds: the report turns each back into the loss, and a fall of the loss counts as a gain."""
    from loratune.report.study import build_study_report

    d = tmp_path / "study"
    (d / "final").mkdir(parents=True)
    (d / "final" / "config.yaml").write_text("train:\n  learning_rate: 0.002\n")
    losses = {0: 2.0, 1: 1.8, 2: 1.99}
    trials = [{"trial": n, "name": f"t{n}", "phase": "phase1-lr-grid", "status": "completed", "val_macro_f1": None,
               "objective": "val/loss", "objective_value": v, "examples": 100, "wall_s": 1.0,
               "point": {R: 16 if n == 2 else 8, LR: 2e-3 if n == 1 else 1e-3}} for n, v in losses.items()]
    bsf = [-2.0, -1.8, -1.8]
    summary = {
        "objective": "val/loss", "strategy": "protocol", "trials": trials,
        "best_vs_compute": [{"trial": n, "value": -v, "examples_cum": 100 * (n + 1), "wall_s_cum": n + 1.0,
                             "best_so_far": bsf[n]} for n, v in losses.items()],
        "rank_vs_metric": {"trials": [{"r": t["point"][R], "value": -t["objective_value"], "trial": t["trial"],
                                       "phase": t["phase"]} for t in trials], "threshold": 0.05, "plateau_r": 8},
        "pair": {"from": 0, "base": -2.0, "lr": [1e-3, 2e-3], "lr_trial": 1, "lr_value": -1.8, "lr_delta": 0.2,
                 "r": [8, 16], "r_trial": 2, "r_value": -1.99, "r_delta": 0.01, "noise": 0.05,
                 "noise_source": "2 x seed sigma", "binding": "optimization", "how": "only the lr moved it"},
        "seeds": {"sigma": 0.02, "values": [-1.8, -1.82]},
        "recommendation": {"trial": 1, "name": "t1", "point": trials[1]["point"], "val_macro_f1": None,
                           "objective": "val/loss", "objective_value": 1.8, "verdict": "healthy",
                           "test": {"test/loss": 1.85, "test/perplexity": math.exp(1.85)}}}
    (d / "final" / "study.json").write_text(json.dumps(summary))
    s = build_study_report(d)
    assert s.obj.name == "val loss" and s.best.number == 1 and s.recommendation.value == 1.8
    assert [p.best_so_far for p in s.best_vs_compute] == [2.0, 1.8, 1.8] and s.seeds == (1.8, 1.82)
    assert sorted((p.r, p.value) for p in s.rank.points) == [(8, 1.8), (8, 2.0), (16, 1.99)]
    arms = {a.knob: a for a in s.pair.arms}
    assert s.pair.base == 2.0 and (arms["lr"].value, arms["lr"].delta) == (1.8, -0.2)  # the loss fell 0.2
    html = render_study_html(s)
    # the lr arm's fall of 0.2 is a gain beyond the noise 0.05; the rank arm's 0.01 is within it
    assert '<g class="series s-good"><rect class="bar"' in html and '<g class="series s-neutral">' in html
    assert 'class="series s-bad"' not in html and "macro-F1" not in html
    assert "change of val loss (lower is better)" in html
    assert re.search(r'data-key="test"><div class="k">test loss</div><div class="v[^"]*">1.850</div>', html)
    assert re.search(r"<td[^>]*>8</td><td[^>]*>1.800</td>", html)  # best per rank: the lowest loss at r=8


FIXTURES = Path(__file__).resolve().parents[1] / "fixtures" / "external"


def test_a_trainer_output_dir_gets_a_report_of_its_curves_diagnosis_and_facts(tmp_path, capsys):
    import shutil

    from loratune.cli import main
    from loratune.diagnose import diagnose

    run = tmp_path / "out"
    shutil.copytree(FIXTURES / "trainer" / "banking77-diverged-a", run)
    (run / "adapter_config.json").write_text(json.dumps(  # trainer.save_model() writes it beside the state
        {"peft_type": "LORA", "r": 8, "lora_alpha": 16, "target_modules": ["query", "value"],
         "base_model_name_or_path": "sentence-transformers/all-MiniLM-L6-v2"}))
    assert main(["report", str(run)]) == 0
    assert "report.html" in capsys.readouterr().out
    html = (run / "report.html").read_text()
    verdict = diagnose(run).verdict
    report = build_report_of(run)
    assert report.source == "hf-trainer" and report.diagnosis.verdict == verdict
    assert report.method == "lora" and report.model_name == "sentence-transformers/all-MiniLM-L6-v2"
    facts = {p.key: (p.value, p.note) for p in report.params}
    assert facts["r"] == (8, "adapter_config.json") and facts["lora_scale"][0] == 2.0
    assert facts["learning_rate"][1].startswith("log_history")
    assert report.classes.missing and "per-class" in report.classes.missing and report.pairs == ()
    assert report.curves and report.curves[0].id == "loss"
    assert verdict in html and ("Read from the run&#x27;s files" in html or "Read from the run's files" in html)
    assert "LoRA r=8" in html and "not a scored train subsample" in html and "resolved config" not in html


def build_report_of(path):
    from loratune.report import build_report

    return build_report(path, examples=False)


def test_a_notebook_report_is_written_beside_it(tmp_path, capsys):
    import shutil

    from loratune.cli import main

    src = FIXTURES / "public_n" / "49emily__cs229-hateful-memes__bert" / "notebook.ipynb"
    nb = tmp_path / "run.ipynb"
    shutil.copy(src, nb)
    assert main(["report", str(nb)]) == 0
    out = tmp_path / "run.report.html"
    assert out.is_file() and str(out) in capsys.readouterr().out
    report = build_report_of(nb)
    assert report.source == "notebook" and report.method == "unknown" and report.steps_done == 10630
    assert report.notes[0].startswith("a notebook run, not made by loratune")
    html = out.read_text()
    assert "method unknown" in html and "at its first eval" in html and "(saved model)" not in html
    assert report.name == f"{tmp_path.name}/run.ipynb" and "of 10,630 planned" in html


def test_a_notebook_tables_report_is_its_own_file_beside_it(tmp_path, capsys):
    import shutil

    from loratune.cli import main

    # fold L's Gokhan-Ergul: three progress tables, the first never evaluated, the second a 1,377-step run
    src = FIXTURES / "public_l" / "Gokhan-Ergul__Getting-Started-with-LLM-Fine-Tuning__fine_tuning" / "notebook.ipynb"
    nb = tmp_path / "run.ipynb"
    shutil.copy(src, nb)
    assert main(["report", f"{nb}#2"]) == 0
    out = tmp_path / "run.table-2.report.html"
    assert out.is_file() and str(out) in capsys.readouterr().out
    assert build_report_of(f"{nb}#2").steps_done == 1377 and build_report_of(nb).steps_done == 690
    assert main(["report", f"{nb}#1"]) == 2
    assert "table 1 of 3 has no evaluated row" in capsys.readouterr().err
    assert not (tmp_path / "run.table-1.report.html").exists()


def test_a_folder_that_is_no_run_is_a_clear_error(tmp_path, capsys):
    from loratune.cli import main

    (tmp_path / "notes.md").write_text("nothing")
    assert main(["report", str(tmp_path)]) == 2
    err = capsys.readouterr().err
    assert "trainer_state.json" in err and "Jupyter notebook" in err and "Traceback" not in err


def test_a_finding_shows_the_route_that_made_it_fire_and_folds_the_others(tmp_path, capsys):
    import shutil

    from loratune.cli import main

    # fold AA's hdthai2005 (Whisper): lr-too-large fires on its climb-back route; its collapse, oscillation and DPO
    # routes are evaluated too, and their failed clauses (a peak lr >= 0.01, ...) are not why it fired
    src = FIXTURES / "public_aa" / "hdthai2005__Whisper_Finetuning__train_whisper" / "notebook.ipynb"
    nb = tmp_path / "run.ipynb"
    shutil.copy(src, nb)
    assert main(["diagnose", str(nb)]) == 0
    out = capsys.readouterr().out
    card = out[out.index("lr-too-large (optimization)"):out.index("also matched")]
    assert "✗" not in card and "largest learning rate logged" not in card
    assert "from the val loss's minimum on, the train loss climbed back up by 751.6%" in card
    assert "clause(s) of the rule's other routes" in card
    assert "read: the train loss climbed back up while the val loss rose or swung" in card
    assert main(["report", str(nb)]) == 0
    html = (tmp_path / "run.report.html").read_text()
    card = html[html.index('data-rule="lr-too-large"'):]
    card = card[:card.index('<div class="moves">')]
    shown, folded = card.split("<details", 1)
    assert "largest learning rate logged" in folded and "largest learning rate logged" not in shown
    assert 'class="fail"' not in shown
    assert "<b>read:</b> the train loss climbed back up while the val loss rose or swung" in shown


# ---------------------------------------------------------------------------------------------
# report / show as a user runs them (hunt 2)
# ---------------------------------------------------------------------------------------------

CSV_RUN = "step,train_loss,val_loss,val_f1\n10,2.0,1.9,0.2\n20,1.5,1.4,0.5\n30,1.2,1.3,0.6\n"


def test_report_o_never_replaces_the_run_it_reads(tmp_path, capsys):
    """`report r.csv -o r.csv` turned the CSV into HTML (and -o RUN/run.json the run's record)."""
    from loratune.cli import main

    csv = tmp_path / "r.csv"
    csv.write_text(CSV_RUN, encoding="utf-8")
    run = write_run(tmp_path / "run")
    before = (run / "run.json").read_bytes()
    assert main(["report", str(csv), "-o", str(csv)]) == 2
    assert main(["report", str(run), "-o", str(run / "run.json")]) == 2
    assert main(["report", str(run), "-o", str(run / "history.jsonl")]) == 2
    assert "not a report loratune wrote" in capsys.readouterr().err
    assert csv.read_text(encoding="utf-8") == CSV_RUN and (run / "run.json").read_bytes() == before
    assert main(["report", str(csv), "-o", str(tmp_path / "r.html")]) == 0
    assert main(["report", str(csv), "-o", str(tmp_path / "r.html")]) == 0  # its own earlier report: replaced


def test_a_name_too_long_for_the_file_system_is_a_clear_error_not_a_traceback(tmp_path, capsys):
    """A 300-byte name (report -o, report --json -o, a RUN of show / report / diagnose) raised ENAMETOOLONG from the
    first stat (exit 1, a traceback); it is refused as train refuses its output_dir (store.check_name_length)."""
    from loratune.cli import main
    from loratune.report import OUT_OPTION

    run, long, opt = write_run(tmp_path / "run"), "a" * 300, f"{OUT_OPTION} '"  # api.report's out= says the same
    for args, said, fix in (
            (["report", str(run), "-o", str(tmp_path / f"{long}.html")], opt, f"give {OUT_OPTION} a shorter name"),
            (["report", str(run), "--json", "-o", str(tmp_path / f"{long}.json")], opt, "e.g. -o report.json"),
            (["show", str(tmp_path / long)], "RUN '", "no file or folder can have such a name"),
            (["report", str(tmp_path / long)], "RUN '", "no file or folder can have such a name"),
            (["diagnose", str(tmp_path / long / "run.json")], "RUN '", "no file or folder can have such a name")):
        assert main(args) == 2, args
        err = flat(capsys.readouterr().err)
        name = "a file name of 305" if said == opt else "a folder name of 300" if "diagnose" in args \
            else "a file or folder name of 300"
        assert said in err and f"has {name} bytes; file systems take at most 255" in err and fix in err, args
        assert "Traceback" not in err
    assert sorted(x.name for x in tmp_path.iterdir()) == ["run"]  # nothing written

    # no -o: the default path beside a CSV of a 248-byte name (+ .report.html: 260) is named as the default, not as -o
    csv = tmp_path / f"{'b' * 248}.csv"
    csv.write_text(CSV_RUN, encoding="utf-8")
    assert main(["report", str(csv), "--no-examples"]) == 2
    err = flat(capsys.readouterr().err)
    assert f"the default report path '{tmp_path / ('b' * 248)}.report.html' has a file name of 260 bytes; file " \
           "systems take at most 255" in err
    assert f"give a shorter report path with {OUT_OPTION}, e.g. -o report.html" in err
    assert "-o '" not in err and "Traceback" not in err
    assert sorted(x.name for x in tmp_path.iterdir()) == [csv.name, "run"]


def test_report_json_goes_to_the_o_file_when_one_is_given(tmp_path, capsys):
    from loratune.cli import main

    csv = tmp_path / "r.csv"
    csv.write_text(CSV_RUN, encoding="utf-8")
    assert main(["report", str(csv), "--json", "-o", str(tmp_path / "out.json")]) == 0
    data = json.loads((tmp_path / "out.json").read_text(encoding="utf-8"))
    assert data["best"]["val/macro_f1"] == 0.6 and "wrote" in capsys.readouterr().out
    assert main(["report", str(csv), "--json", "-o", str(csv)]) == 2  # never the run itself


def test_a_closed_pipe_ends_a_command_quietly(tmp_path, monkeypatch, capsys):
    """`loratune report RUN --json | head -1` ended in a BrokenPipeError traceback."""
    import os
    import sys

    from loratune import cli

    csv = tmp_path / "r.csv"
    csv.write_text(CSV_RUN, encoding="utf-8")
    read_end, write_end = os.pipe()
    os.close(read_end)
    saved = os.dup(1)
    try:
        os.dup2(write_end, 1)
        with open(os.devnull, "w") as sink:  # stdout as a stream on fd 1, whose reader has gone
            stream = os.fdopen(1, "w", closefd=False)
            monkeypatch.setattr(sys, "stdout", stream)
            rc = cli.main(["report", str(csv), "--json"])
            del sink
    finally:
        os.dup2(saved, 1)
        os.close(saved)
        os.close(write_end)
    assert rc == 0  # the report was made: the command's own code (cli._ReaderMayLeave), not a failure's


def test_show_classes_needs_at_least_one(tmp_path, capsys):
    from loratune.cli import main

    run = write_run(tmp_path / "run")
    for n in ("0", "-3", "x"):
        with pytest.raises(SystemExit) as exc:
            main(["show", str(run), "--classes", n])
        assert exc.value.code == 2
    assert "1 or more" in capsys.readouterr().err


def test_an_exploded_loss_is_written_in_scientific_notation(tmp_path, capsys):
    from loratune.cli import main
    from loratune.features import format_value
    from loratune.report.charts import fmt

    csv = tmp_path / "o.csv"
    csv.write_text("step,train_loss,val_loss,val_accuracy\n10,2.1,2.0,.3\n20,1.5,1.6,.5\n30,3.4e38,2.5e12,.2\n",
                   encoding="utf-8")
    assert main(["show", str(csv)]) == 0
    out = capsys.readouterr().out
    assert "3.4e+38" in out and "2.5e+12" in out and "339999" not in out
    assert format_value("fraction", -1.619e38) == "-1.62e+40%" and format_value("ratio", 1.62e38) == "1.62e+38x"
    assert format_value("loss", 2.5) == "2.500" and format_value("count", 10**7) == "10000000"
    assert fmt(3e32) == "3.0e32" and fmt(3e6) == "3M"


def test_show_of_a_bare_file_name_names_its_folder(tmp_path, monkeypatch, capsys):
    from loratune.cli import main

    (tmp_path / "logs").mkdir()
    (tmp_path / "logs" / "basic.csv").write_text(CSV_RUN, encoding="utf-8")
    monkeypatch.chdir(tmp_path / "logs")
    assert main(["show", "basic.csv"]) == 0
    assert "logs/basic.csv" in capsys.readouterr().out


@pytest.mark.parametrize("kind", ["loratune", "trainer"])
def test_a_run_read_as_dot_is_named_after_its_folder(tmp_path, monkeypatch, capsys, kind):
    # Path('.').name is '': `cd run && loratune report .` titled the report ' · loratune run report'
    import shutil

    from loratune.cli import main
    from loratune.diagnose import diagnose

    run = tmp_path / "my-run"
    if kind == "loratune":
        write_run(run)
    else:  # a Trainer output dir holding only its checkpoint: read from inside the checkpoint too
        shutil.copytree(FIXTURES / "trainer" / "banking77-diverged-a", run / "checkpoint-40")
    monkeypatch.chdir(run)
    assert build_report_of(".").name == "my-run" and diagnose(".").run == "my-run"
    assert main(["report", ".", "--no-examples"]) == 0
    assert "<title>my-run · loratune run report" in (run / "report.html").read_text()
    capsys.readouterr()
    assert main(["show", "."]) == 0
    assert "my-run" in capsys.readouterr().out.splitlines()[0]
    if kind == "trainer":
        monkeypatch.chdir(run / "checkpoint-40")  # a checkpoint's state is named after the run folder above it
        assert diagnose(".").run == diagnose("trainer_state.json").run == "my-run"
        assert build_report_of("..").name == "my-run"


def test_show_prints_a_step_count_of_0_the_record_holds(tmp_path, capsys):
    # a loss that was NaN at step 1: the run stopped with 0 steps done, which show printed as '?' (unknown)
    from loratune.cli import main

    d = write_run(tmp_path / "nan1", n_evals=1, status="diverged")
    run = json.loads((d / "run.json").read_text())
    (d / "run.json").write_text(json.dumps({**run, "steps_done": 0, "examples_seen": 0}))
    assert main(["show", str(d)]) == 0
    out = " ".join(capsys.readouterr().out.split())
    assert "0 examples in 0/10 steps" in out and "?/10" not in out
    (d / "run.json").write_text(json.dumps({k: v for k, v in run.items() if k != "steps_done"}))
    assert main(["show", str(d)]) == 0  # no count in the record: the last eval point's step
    assert "in 10/10 steps" in " ".join(capsys.readouterr().out.split())


def test_the_best_step_is_called_the_saved_model_only_when_it_is(tmp_path, capsys):
    """A run that diverged before any trained evaluation saved no model; a run another tool made says nothing of
    which checkpoint it kept."""
    from loratune.cli import main
    from loratune.report.model import build_outside_report

    run = write_run(tmp_path / "run")
    record = json.loads((run / "run.json").read_text(encoding="utf-8"))
    assert not build_run_report(run).saved_model  # no saved_model field and no weights: killed before it saved
    (run / "adapter").mkdir()
    (run / "adapter" / "adapter_model.safetensors").write_bytes(b"")
    assert build_run_report(run).saved_model  # a record from before the field, with its weights: the best step's
    record["saved_model"] = {"step": None, "note": "no model saved: the run diverged"}
    (run / "run.json").write_text(json.dumps(record), encoding="utf-8")
    r = build_run_report(run)
    assert not r.saved_model
    html = render_run(r)
    assert "the saved model" not in html and "saved model)" not in html
    assert main(["show", str(run)]) == 0
    out = capsys.readouterr().out
    assert "(no model saved)" in out and "(the saved model)" not in out
    record["saved_model"] = {"step": record["best"]["step"], "note": "adapter/ holds it"}
    (run / "run.json").write_text(json.dumps(record), encoding="utf-8")
    assert build_run_report(run).saved_model and "(the best step: the saved model)" in render_run(
        build_run_report(run))
    csv = tmp_path / "r.csv"
    csv.write_text(CSV_RUN, encoding="utf-8")
    assert not build_outside_report(csv).saved_model
    assert main(["show", str(csv)]) == 0
    assert "saved model" not in capsys.readouterr().out


@pytest.mark.parametrize("status", ["died", "interrupted"])
def test_a_run_that_did_not_finish_reads_its_best_from_the_history_not_the_lagging_snapshot(status, tmp_path, capsys):
    """A history point is appended before its model is saved and run.json rewritten: a run killed in between has a
    run.json `best` (and saved model) of an earlier step. Its best is the history's; the saved model is said apart."""
    from loratune.cli import main

    run = write_run(tmp_path / "run", status=status, n_evals=2, steps_per_eval=20)
    record = json.loads((run / "run.json").read_text(encoding="utf-8"))
    points = [json.loads(x) for x in (run / "history.jsonl").read_text(encoding="utf-8").splitlines()]
    points[1]["val/macro_f1"] = 0.083  # step 20 below the start: the snapshot's best lags at it
    (run / "history.jsonl").write_text("".join(json.dumps(p) + "\n" for p in points), encoding="utf-8")
    record.update(best=points[1], objective="val/macro_f1", saved_model={"step": 20, "note": "adapter/ holds it"})
    (run / "run.json").write_text(json.dumps(record), encoding="utf-8")
    r = build_run_report(run)
    assert r.best["step"] == 40 and r.best["val/macro_f1"] == pytest.approx(points[2]["val/macro_f1"])
    assert r.best["val/macro_f1"] >= r.final["val/macro_f1"]
    assert all(p.best_step == 40 for p in r.curves)
    assert not r.saved_model and r.saved_step == 20
    assert "the saved model" not in render_run(r)
    assert main(["show", str(run)]) == 0
    out = capsys.readouterr().out
    assert f"best val/macro_f1 {points[2]['val/macro_f1']:.3f} at step 40 (not saved; the saved model is step 20's)" \
        in out
    assert re.search(r"^\s*40 \*", out, re.M) and not re.search(r"^\s*20 \*", out, re.M)
    record["saved_model"] = {"step": None, "note": "writing the model of step 40 (the best so far)"}
    (run / "run.json").write_text(json.dumps(record), encoding="utf-8")
    assert main(["show", str(run)]) == 0
    assert "at step 40 (no model saved)" in capsys.readouterr().out
    # a loss objective (a causal LM): its best is the lowest
    record["objective"] = "val/loss"
    (run / "run.json").write_text(json.dumps(record), encoding="utf-8")
    low = min(points, key=lambda p: p["val/loss"])["step"]
    assert build_run_report(run).best["step"] == low


@pytest.mark.parametrize("status", ["died", "interrupted"])
def test_an_unfinished_run_breaks_a_tied_best_as_its_training_kept_it(status, tmp_path, capsys):
    """A generative classifier (causal-lm, label_format=generate) ties its val macro-F1 at steps 20 and 40 and keeps
    step 40's model (the lower val loss: objectives.keep_order). Killed or interrupted, its best read from the
    history is step 40, the saved model, with nothing claiming a better model was lost; a classifier's training
    keeps the first of ties, and so does its report."""
    from loratune.cli import main

    run = write_run(tmp_path / "run", status=status, n_evals=3, steps_per_eval=20)
    record = json.loads((run / "run.json").read_text(encoding="utf-8"))
    points = [json.loads(x) for x in (run / "history.jsonl").read_text(encoding="utf-8").splitlines()]
    points[1].update({"val/macro_f1": 0.8393, "val/loss": 0.9297})
    points[2].update({"val/macro_f1": 0.8393, "val/loss": 0.6336})
    points[3].update({"val/macro_f1": 0.8125, "val/loss": 0.7})
    (run / "history.jsonl").write_text("".join(json.dumps(p) + "\n" for p in points), encoding="utf-8")
    record.update(task="causal-lm", label_format="generate", objective="val/macro_f1", best=points[2],
                  final=points[3], adapter_step=40, saved_model={"step": 40, "note": "adapter/ holds it"})
    (run / "run.json").write_text(json.dumps(record), encoding="utf-8")
    conf = json.loads((run / "confusion.json").read_text(encoding="utf-8"))
    (run / "confusion.json").write_text(json.dumps({**conf, "step": 40}), encoding="utf-8")
    r = build_run_report(run)
    assert r.best["step"] == 40 and r.best["val/loss"] == 0.6336
    assert all(p.best_step == 40 for p in r.curves)
    assert r.saved_model and r.saved_step == 40
    assert not any("confusion.json is from step" in n for n in r.notes)
    assert main(["show", str(run)]) == 0
    out = capsys.readouterr().out
    assert "best val/macro_f1 0.839 at step 40" in out and "not saved" not in out
    assert main(["report", str(run), "--json"]) == 0
    rep = json.loads(capsys.readouterr().out)
    assert rep["best"]["step"] == 40 and not any("best val metric from step" in n for n in rep["notes"])
    # a classifier's training keeps the first of tied scores (train.py): its report reads step 20
    record.update(task="single_label", best=points[1], adapter_step=20, saved_model={"step": 20, "note": "held"})
    (run / "run.json").write_text(json.dumps(record), encoding="utf-8")
    r = build_run_report(run)
    assert r.best["step"] == 20 and r.saved_model


@pytest.mark.parametrize("status", ["died", "interrupted", "running"])
def test_an_unfinished_run_whose_metric_ties_at_step_0_reports_the_saved_trained_model(status, tmp_path, capsys,
                                                                                        monkeypatch):
    """Val macro-F1 0.0333 at steps 0, 50 and 100 (a tiny run killed early): training keeps the first *trained* point
    of a tie (objectives.keeps), step 50, and saved it. The report read step 0's untrained model as the best ("best
    0.033 at step 0 (not saved; the saved model is step 50's)", the curves' marker and the per-class table from step
    0, train recall all '-') beside step 50's confusion matrix: every section is step 50's now."""
    import loratune.store
    from loratune.cli import main

    if status == "running":  # a live run (its lock held): read as it stands, not as died
        monkeypatch.setattr(loratune.store, "liveness", lambda d: ("alive", ""))
    run = write_run(tmp_path / "run", status=status, n_evals=2, steps_per_eval=50)
    record = json.loads((run / "run.json").read_text(encoding="utf-8"))
    points = [json.loads(x) for x in (run / "history.jsonl").read_text(encoding="utf-8").splitlines()]
    for p in points:
        p["val/macro_f1"] = 0.03333333333333333
    points[0] = {k: v for k, v in points[0].items() if not k.startswith("train_eval/")}  # step 0 scores val alone
    (run / "history.jsonl").write_text("".join(json.dumps(p) + "\n" for p in points), encoding="utf-8")
    record.update(best=points[1], objective="val/macro_f1", adapter_step=50,
                  saved_model={"step": 50, "note": "adapter/ holds the model of step 50, the best so far"})
    (run / "run.json").write_text(json.dumps(record), encoding="utf-8")
    conf = json.loads((run / "confusion.json").read_text(encoding="utf-8"))
    (run / "confusion.json").write_text(json.dumps({**conf, "step": 50}), encoding="utf-8")
    r = build_run_report(run)
    assert r.status == status
    assert r.best["step"] == 50 and r.best["train/loss"] == pytest.approx(points[1]["train/loss"])
    assert all(p.best_step == 50 for p in r.curves)
    assert r.classes.step == 50 and all(row.train_recall is not None for row in r.classes.rows)
    assert r.confusion.step == 50 and not any("confusion.json is from step" in n for n in r.notes)
    assert r.saved_model and r.saved_step == 50
    assert main(["show", str(run)]) == 0
    out = capsys.readouterr().out
    assert "best val/macro_f1 0.033 at step 50" in " ".join(out.split()) and "not saved" not in out
    assert re.search(r"^\s*50 \*", out, re.M) and not re.search(r"^\s*0 \*", out, re.M)


@pytest.mark.parametrize("peak,ticks", [(2e-3, ["0", "5e-4", "1e-3", "1.5e-3", "2e-3"]),
                                        (1e-3, ["0", "2.5e-4", "5e-4", "7.5e-4", "1e-3"])])
def test_the_learning_rate_axis_labels_each_tick_with_its_own_value(peak, ticks, tmp_path):
    """One significant figure read a 1.5e-3 tick as "2e-3" beside the real 2e-3 tick (and 2.5e-4 as "2e-4"), and 0
    as "0e+00": each tick reads its value now."""
    run = write_run(tmp_path / "run")
    points = [json.loads(x) for x in (run / "history.jsonl").read_text(encoding="utf-8").splitlines()]
    for p in points:
        p["lr"] = p["lr"] / 1e-3 * peak
    (run / "history.jsonl").write_text("".join(json.dumps(p) + "\n" for p in points), encoding="utf-8")
    html = render_run(build_run_report(run))
    fig = re.search(r'<figure data-chart="lr">(.*?)</figure>', html, re.S).group(1)
    labels = re.findall(r'text-anchor="end">([^<]*)</text>', fig)
    assert labels == ticks and len(set(labels)) == len(labels)
    from loratune.report.charts import fmt_sci

    assert [fmt_sci(v) for v in (0.0, 1.5e-3, 2.5e-4, 2e-3, 1.25e-5, -7.5e-4)] == \
        ["0", "1.5e-3", "2.5e-4", "2e-3", "1.25e-5", "-7.5e-4"]


def test_a_folder_far_above_a_tensorboard_log_is_not_searched_to_the_bottom(tmp_path):
    from loratune.history_io import find_event_files

    deep = tmp_path / "a" / "b" / "c" / "d"
    deep.mkdir(parents=True)
    (deep / "events.out.tfevents.1.host").write_bytes(b"")
    assert find_event_files(tmp_path) == []  # 4 folders down: someone else's run
    assert find_event_files(tmp_path / "a") == [deep / "events.out.tfevents.1.host"]  # OUTPUT/runs/<date>/ and one


def test_a_starting_trial_of_a_live_study_reads_running_not_died(tmp_path):
    """A trial the study has started but whose run directory (or run.lock) is not written yet reads `running` while
    the process it was given to lives (every trial of a live study read `died` in that window), `died` once gone."""
    import os
    import socket
    import subprocess
    import sys

    import optuna

    from loratune.report.study import build_study_report

    gone = subprocess.Popen([sys.executable, "-c", "pass"])
    gone.wait()
    d = tmp_path / "study"
    d.mkdir()
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    study = optuna.create_study(study_name="loratune", storage=f"sqlite:///{d / 'study.db'}")
    host = socket.gethostname()
    for n, (pid, dir_made) in enumerate(((os.getpid(), False), (os.getpid(), True), (gone.pid, False))):
        t = study.ask()
        run_dir = d / "trials" / f"{n:02d}-t{n}"
        if dir_made:  # the directory exists, run.lock not yet
            run_dir.mkdir(parents=True)
        for k, v in (("name", f"t{n}"), ("phase", "phase1-lr-grid"), ("status", "running"),
                     ("run_dir", str(run_dir)), ("worker", f"pid {pid} on {host}")):
            t.set_user_attr(k, v)
    s = build_study_report(d)
    assert [t.status for t in s.trials] == ["running", "running", "died"]


@pytest.mark.parametrize("how", ["copy", "move"])
def test_a_copied_or_moved_study_reads_and_writes_its_own_trial_dirs(tmp_path, how):
    """tune records absolute run directories: a copy's report read (and --trial-reports wrote into) the original's
    trials, a moved study's report showed dead paths without links. The study's own <study>/trials/<n>-<name> count."""
    import argparse
    import shutil

    from loratune.commands import report as report_cmd
    from loratune.report.study import build_study_report

    orig = tmp_path / "s1"
    scripted_study(orig, run_dirs=True)
    (orig / "final" / "adapter").mkdir()
    summary = json.loads((orig / "final" / "study.json").read_text())
    summary["recommendation"]["files"]["adapter"] = str(orig / "final" / "adapter")
    (orig / "final" / "study.json").write_text(json.dumps(summary))
    other = tmp_path / "s1other"
    (shutil.copytree if how == "copy" else shutil.move)(orig, other)
    report_cmd.run(argparse.Namespace(path=str(other), output=str(tmp_path / "out.html"), no_examples=True,
                                      json=False, trial_reports=True))
    s = build_study_report(other)
    assert s.trials and all(Path(t.run_dir).parent == other / "trials" for t in s.trials)
    assert [t.link for t in s.trials] == [f"trials/{Path(t.run_dir).name}" for t in s.trials]
    assert all(t.report_link and (other / t.report_link).is_file() for t in s.trials)
    assert s.recommendation.files["adapter"] == str(other / "final" / "adapter")
    assert not list(orig.glob("trials/*/report.html"))  # nothing written into the study it was copied from


def test_each_rank_shows_its_own_share_of_the_model(tmp_path):
    """Trials of a TPE study adapt different modules: every rank's share was scaled from one trial's adapter
    (r=4 13.38%, r=8 26.76%); each rank reads its own counts (r=4 q/v 1024/26020, r=8 attn+ffn 7168/32164)."""
    from loratune.report.study import build_study_report

    d = tmp_path / "study"
    (d / "final").mkdir(parents=True)
    counts = {0: (8, 7168, 32164, 20000), 1: (4, 1024, 26020, 4000), 2: (8, 2048, 27044, 4000)}
    trials = [{"trial": n, "name": f"t{n}", "phase": "tpe", "status": "completed", "objective": "val/macro_f1",
               "objective_value": v, "examples": 100, "wall_s": 1.0, "point": {R: counts[n][0], LR: 1e-3},
               "_params": {"adapter": counts[n][1], "total": counts[n][2], "adapted_weights": counts[n][3]}}
              for n, v in ((0, 0.5), (1, 0.4), (2, 0.3))]
    summary = {"objective": "val/macro_f1", "strategy": "tpe", "trials": trials,
               "rank_vs_metric": {"trials": [{"r": t["point"][R], "value": t["objective_value"], "trial": t["trial"],
                                              "phase": "tpe"} for t in trials]}}
    (d / "final" / "study.json").write_text(json.dumps(summary))
    s = build_study_report(d)
    shares = {r: (a, b) for r, a, b in s.rank.shares}
    assert shares[4] == pytest.approx((1024 / 26020, 1024 / 4000))
    assert shares[8] == pytest.approx((7168 / 32164, 7168 / 20000))  # r=8's best trial (#0), its own modules


def test_a_rank_without_trials_scales_loras_per_rank_count_not_the_trained_biases(tmp_path):
    """bias=all trains the model's biases (here 5,000, not growing with r): a rank with no trial of its own (the
    breakeven's) was scaled as adapter / r x r', the biases with it, and the "LoRA = 10% of the model" mark sat at
    total / 10 / (adapter / r); both now grow by LoRA's A and B per rank (run.json params.per_rank) only."""
    from loratune.report.study import build_study_report

    d = tmp_path / "study"
    (d / "final").mkdir(parents=True)
    trials = [{"trial": 0, "name": "t0", "phase": "tpe", "status": "completed", "objective": "val/macro_f1",
               "objective_value": 0.5, "examples": 100, "wall_s": 1.0, "point": {R: 4, LR: 1e-3},
               "_params": {"adapter": 4 * 1000 + 5000, "per_rank": 1000, "total": 1_000_000,
                           "adapted_weights": 30_000}}]
    summary = {"objective": "val/macro_f1", "strategy": "tpe", "trials": trials,
               "rank_vs_metric": {"breakeven_r": 10, "trials": [{"r": 4, "value": 0.5, "trial": 0, "phase": "tpe"}]}}
    (d / "final" / "study.json").write_text(json.dumps(summary))
    s = build_study_report(d)
    shares = {r: (a, b) for r, a, b in s.rank.shares}
    assert shares[4] == pytest.approx((9000 / 1_000_000, 9000 / 30_000))  # its own counts
    assert shares[10] == pytest.approx((15_000 / 1_000_000, 15_000 / 30_000))  # 10 x 1,000 + the 5,000 biases
    assert s.rank.breakeven_r == 10
    # where LoRA's A and B reach 1% / 10% of the model (`loratune params`' rank_at_10pct: per rank only)
    assert [r for r, _ in s.rank.share_marks] == pytest.approx([10.0, 100.0])


@pytest.mark.parametrize("old_first", [True, False])
def test_the_rank_shares_take_a_recorded_per_rank_whatever_the_trials_order(tmp_path, old_first):
    """A resumed study mixes records from before params.per_rank (r=4, bias=all: 4 x 1,000 + 5,000 biases, no
    per_rank) with new ones (r=8, per_rank 1,000): the shares took the first LoRA trial's counts, so the old one first
    put the 1% / 10% marks at 4.44 / 44.4 and the breakeven rank 10 at 75% of the adapted weights (10 / 100, 50%
    with the new one first). The recorded per_rank is taken whichever comes first, and no estimate note is shown."""
    from loratune.report.render_study import rank_section
    from loratune.report.study import build_study_report

    d = tmp_path / "study"
    (d / "final").mkdir(parents=True)

    def trial(i, r, params):
        return {"trial": i, "name": f"t{i}", "phase": "tpe", "status": "completed", "objective": "val/macro_f1",
                "objective_value": 0.5 + i / 100, "examples": 100, "wall_s": 1.0, "point": {R: r, LR: 1e-3},
                "_params": params}

    old = {"adapter": 4 * 1000 + 5000, "total": 1_000_000, "adapted_weights": 30_000}
    new = {"adapter": 8 * 1000 + 5000, "per_rank": 1000, "total": 1_000_000, "adapted_weights": 30_000}
    trials = [trial(0, 4, old), trial(1, 8, new)] if old_first else [trial(0, 8, new), trial(1, 4, old)]
    summary = {"objective": "val/macro_f1", "strategy": "tpe", "trials": trials,
               "rank_vs_metric": {"breakeven_r": 10, "trials": [
                   {"r": t["point"][R], "value": t["objective_value"], "trial": t["trial"], "phase": "tpe"}
                   for t in trials]}}
    (d / "final" / "study.json").write_text(json.dumps(summary))
    s = build_study_report(d)
    shares = {r: (a, b) for r, a, b in s.rank.shares}
    assert shares[10] == pytest.approx((15_000 / 1_000_000, 15_000 / 30_000))  # 10 x 1,000 + the 5,000 biases
    assert [r for r, _ in s.rank.share_marks] == pytest.approx([10.0, 100.0])
    assert s.rank.share_note == ""
    assert "per rank taken as" not in rank_section(s, {})


def test_the_rank_shares_say_when_they_take_an_older_records_adapter_over_r(tmp_path):
    """Only records from before params.per_rank: the shares scale adapter / r (exact for bias none, no DoRA) and the
    report says so, in the HTML rank section's facts and the console's; no counts at all: the cost table's, said."""
    from loratune.report.render_study import rank_section
    from loratune.report.study import _share_ref, build_study_report

    d = tmp_path / "study"
    (d / "final").mkdir(parents=True)
    trials = [{"trial": 3, "name": "t3", "phase": "tpe", "status": "completed", "objective": "val/macro_f1",
               "objective_value": 0.5, "examples": 100, "wall_s": 1.0, "point": {R: 4, LR: 1e-3},
               "_params": {"adapter": 4000, "total": 1_000_000, "adapted_weights": 30_000}}]
    summary = {"objective": "val/macro_f1", "strategy": "tpe", "trials": trials,
               "rank_vs_metric": {"breakeven_r": 10, "trials": [{"r": 4, "value": 0.5, "trial": 3, "phase": "tpe"}]}}
    (d / "final" / "study.json").write_text(json.dumps(summary))
    s = build_study_report(d)
    assert dict((r, a) for r, a, _ in s.rank.shares)[10] == pytest.approx(10_000 / 1_000_000)
    assert s.rank.share_note.startswith("trial #3's LoRA parameters per rank taken as the record's adapter count "
                                        "/ r = 4000 / 4: a record written before params.per_rank")
    assert s.rank.share_note in rank_section(s, {}).replace("&#x27;", "'")
    import io

    from rich.console import Console

    from loratune.report.study import show_study

    buf = io.StringIO()
    show_study(Console(file=buf, width=2000, highlight=False, color_system=None), s)
    assert f"shares: {s.rank.share_note}" in buf.getvalue()
    table = [{"method": "lora", "adapter": 8000, "r": 8, "share_total": 0.008, "share_adapted": 0.8 / 3}]
    per_r, fixed, total, adapted, note = _share_ref((), table)
    assert (per_r, fixed, total, adapted) == pytest.approx((1000, 0.0, 1_000_000, 30_000))
    assert note.startswith("no trial records its parameter counts: LoRA parameters per rank taken as the LoRA-vs-full "
                           "cost table's adapter count / r = 8000 / 8")
    assert _share_ref((), ()) is None


def test_each_rank_chart_dot_shows_its_own_trials_share(tmp_path):
    """Two r=8 trials adapt other modules (q/v 2048/27044 = 7.57%, attn+ffn 7168/32164 = 22.29%): every r=8 dot
    said the rank's best trial's share (22.29%); each says its own trial's, and a trial with no counts the rank's,
    worded as the rank's."""
    from loratune.report.render_study import rank_section
    from loratune.report.study import build_study_report

    d = tmp_path / "study"
    (d / "final").mkdir(parents=True)
    counts = {0: {"adapter": 7168, "total": 32164}, 1: {"adapter": 2048, "total": 27044}, 2: {}}
    trials = [{"trial": n, "name": f"t{n}", "phase": "tpe", "status": "completed", "objective": "val/macro_f1",
               "objective_value": v, "examples": 100, "wall_s": 1.0, "point": {R: 8, LR: 1e-3}, "_params": counts[n]}
              for n, v in ((0, 0.5), (1, 0.4), (2, 0.3))]
    summary = {"objective": "val/macro_f1", "strategy": "tpe", "trials": trials,
               "rank_vs_metric": {"trials": [{"r": 8, "value": t["objective_value"], "trial": t["trial"],
                                              "phase": "tpe"} for t in trials]}}
    (d / "final" / "study.json").write_text(json.dumps(summary))
    s = build_study_report(d)
    assert {p.trial: p.share for p in s.rank.points} == pytest.approx({0: 7168 / 32164, 1: 2048 / 27044, 2: None})
    titles = re.findall(r"<title>(#\d[^<]*)</title>", rank_section(s, {}))
    assert [t.split("; ", 1)[1] for t in titles] == [
        "LoRA = 22.29% of the model", "LoRA = 7.57% of the model", "r=8: LoRA ≈ 22.29% of the model"]


def test_the_compute_tile_says_what_the_budget_spent_after_a_resume(tmp_path):
    """A resumed study whose trial #1 was cut: the tile counted 3 trials (the cut one too) but not its examples or
    time, while the lede (the budget) said 2 trials; both now read the budget's spent, the cut trial named."""
    from loratune.report.render_study import summary_section
    from loratune.report.study import build_study_report

    d = tmp_path / "study"
    (d / "final").mkdir(parents=True)
    rows = [{"trial": n, "name": f"t{n}", "phase": "phase1-lr-grid", "status": st, "objective": "val/macro_f1",
             "objective_value": v, "examples": ex, "wall_s": w, "point": {R: 4, LR: 1e-3}}
            for n, st, v, ex, w in ((0, "completed", 0.5, 96, 6.0), (1, "interrupted", None, 16, 0.5),
                                    (2, "completed", 0.6, 96, 2.0))]
    summary = {"objective": "val/macro_f1", "strategy": "protocol", "trials": rows,
               "budget": {"budget": {"text": "2trials"}, "spent": {"trials": 2, "examples": 208, "wall_s": 100.0}},
               "best_vs_compute": [{"trial": 0, "value": 0.5, "examples_cum": 96, "wall_s_cum": 6.0, "best_so_far": 0.5},
                                   {"trial": 2, "value": 0.6, "examples_cum": 192, "wall_s_cum": 8.0,
                                    "best_so_far": 0.6}]}
    (d / "final" / "study.json").write_text(json.dumps(summary))
    s = build_study_report(d)
    assert s.budget.startswith("spent 2 trials, 208 training examples")
    html = summary_section(s)
    assert re.search(r'data-key="compute"><div class="k">compute</div><div class="v">2 trials</div>'
                     r'<div class="d">208 training examples · 1.7 min · 1 cut trial counted in examples and time</div>',
                     html), html


def test_the_rank_noise_band_is_anchored_at_the_sweep_not_at_a_long_run(tmp_path):
    """The band hung from each rank's best value, a 60-step long run's included: the plateau point (a short sweep
    trial) fell outside its own band. It hangs from the sweep's best."""
    from loratune.report.render_study import rank_band, rank_section
    from loratune.report.study import build_study_report

    d = tmp_path / "study"
    (d / "final").mkdir(parents=True)
    pts = [(0, 4, 0.30, "rank-sweep"), (1, 8, 0.32, "rank-sweep"), (2, 4, 0.70, "final-train")]
    summary = {"objective": "val/macro_f1", "strategy": "protocol",
               "trials": [{"trial": n, "name": f"t{n}", "phase": ph, "status": "completed", "objective_value": v,
                           "point": {R: r, LR: 1e-3}} for n, r, v, ph in pts],
               "rank_vs_metric": {"trials": [{"r": r, "value": v, "trial": n, "phase": ph} for n, r, v, ph in pts],
                                  "sweep": [{"trial": 0, "r": 4}, {"trial": 1, "r": 8}], "plateau_r": 4,
                                  "threshold": 0.05}}
    (d / "final" / "study.json").write_text(json.dumps(summary))
    s = build_study_report(d)
    assert rank_band(s) == pytest.approx((0.27, 0.32))
    lo, hi = rank_band(s)
    assert lo <= 0.30 <= hi  # the plateau point lies in the band
    html = rank_section(s, {})
    assert re.search(r"within the gain threshold 0\.050 of the sweep(&#x27;|&#39;|')s best", html)


def test_the_truncation_note_gives_each_splits_share_of_cut_rows_or_nothing():
    run = {"truncated": {"train": 50, "val": 10, "max_length": 24},
           "rows": {"train": 100, "train_eval": 100, "val": 20}}
    note = truncation_note(run)
    assert note.startswith("50 of 100 train rows (50%) and 10 of 20 val rows (50%) longer than max_length=24 tokens")
    assert truncation_note({"truncated": {"train": 3, "val": 0, "max_length": 32}, "rows": {"train": 12, "val": 4}}) \
        .startswith("3 of 12 train rows (25%) longer than max_length=32")
    assert truncation_note({"truncated": {"train": 0, "val": 0, "max_length": 32}, "rows": {"train": 12}}) is None
    assert truncation_note({"rows": {"train": 12}}) is None  # a classifier run records no count


@pytest.mark.parametrize("text", ["[1, 2]", "null", '"x"', "42"])
def test_a_run_json_that_is_valid_json_but_no_object_reads_as_unknown(text, tmp_path, capsys):
    """report / diagnose / show read such a run.json as they read a damaged one (a note: status unknown), and
    the commands that need its fields refuse it with exit 2, never an AttributeError."""
    from loratune.cli import main
    from loratune.history_io import load_run

    d = write_run(tmp_path / "r", k=4)
    (d / "run.json").write_text(text, encoding="utf-8")
    r = build_run_report(d)
    assert r.status == "unknown"
    assert any("run.json is not a JSON object" in n for n in r.notes)
    assert any("not a JSON object" in n for n in load_run(d).notes) and load_run(d).meta == {}
    assert main(["report", str(d), "--no-examples", "-o", str(tmp_path / "r.html")]) == 0
    assert main(["diagnose", str(d)]) == 0 and main(["show", str(d)]) == 0
    capsys.readouterr()
    assert main(["predict", str(d), "hello"]) == 2
    assert "is not a JSON object" in capsys.readouterr().err


@pytest.mark.parametrize("name", ["history.jsonl", "run.json"])
def test_a_runs_own_file_gets_the_report_of_its_folder(name, tmp_path, capsys):
    """`loratune report RUN/history.jsonl` (or RUN/run.json) is the report of RUN: the status and best run.json
    records (a diverged run's kept best is its step 0), its per-class numbers, no 'not made by loratune' note;
    diagnose and show read the folder too, not a trainer_state.json."""
    from loratune.cli import main
    from loratune.history_io import load_run
    from loratune.report.model import build_outside_report

    d = write_run(tmp_path / "r", k=4, status="diverged")
    run = json.loads((d / "run.json").read_text())
    points = [json.loads(x) for x in (d / "history.jsonl").read_text().splitlines()]
    run["best"], run["steps_done"] = points[0], 40  # nothing trained was kept: the untrained model's point
    (d / "run.json").write_text(json.dumps(run), encoding="utf-8")
    folder = build_report_of(d)
    for report in (build_report_of(d / name), build_outside_report(d / name)):
        assert report.status == folder.status == "diverged"
        assert report.best["step"] == folder.best["step"] == 0
        assert report.classes.rows and not report.classes.missing
        assert not any("not made by loratune" in n for n in report.notes)
    assert load_run(d / name).source == "loratune" and load_run(d / name).meta["status"] == "diverged"
    assert main(["diagnose", str(d / name)]) == 0 and main(["show", str(d / name)]) == 0
    assert main(["report", str(d / name), "--no-examples", "-o", str(tmp_path / "f.html")]) == 0
    html = (tmp_path / "f.html").read_text()
    assert "diverged" in html and "not made by loratune" not in html and "log no per-class" not in html


def test_an_outside_runs_final_card_is_its_last_eval_point_not_a_train_only_row(tmp_path):
    """A log that ends with a train-only row (the loss a Trainer logs after its last eval): the Summary's final is
    the last eval point, as the diagnosis reads it, not '–'."""
    from loratune.report.model import build_outside_report

    csv = tmp_path / "log.csv"
    csv.write_text("step,loss,eval_loss,eval_macro_f1\n10,1.9,,\n20,1.5,1.6,0.40\n30,1.2,,\n40,0.9,1.2,0.55\n"
                   "50,0.7,,\n60,0.5,1.1,0.61\n70,0.4,,\n", encoding="utf-8")
    state = tmp_path / "trainer_state.json"
    log = [{"step": 10, "loss": 1.9}, {"step": 20, "eval_loss": 1.6, "eval_f1": 0.40}, {"step": 30, "loss": 1.2},
           {"step": 40, "eval_loss": 1.1, "eval_f1": 0.61}, {"step": 50, "loss": 0.9}]
    state.write_text(json.dumps({"global_step": 50, "max_steps": 50, "log_history": log}), encoding="utf-8")
    for path, step, f1, loss in ((csv, 60, 0.61, 1.1), (state, 40, 0.61, 1.1)):
        r = build_outside_report(path)
        assert r.final["step"] == step and r.final[r.metric] == pytest.approx(f1)
        assert r.final["val/loss"] == pytest.approx(loss)
        assert 'final' in render_run(r)
    # ...and a last eval that logged its loss but not the metric: the final card is the last point with the metric
    state.write_text(json.dumps({"global_step": 60, "max_steps": 60, "log_history": log + [
        {"step": 60, "eval_loss": 1.05}]}), encoding="utf-8")
    r = build_outside_report(state)
    assert r.final["step"] == 40 and r.final[r.metric] == pytest.approx(0.61)


def test_a_study_in_a_folder_named_with_hash_percent_or_question_mark_links_its_trials(tmp_path):
    """The study page's links to trial folders and their reports are percent-encoded: 'studies/s #1' linked to
    '../studies/s ' (the '#' ended the path), '%' and '?' broke it the same way."""
    from urllib.parse import unquote

    from loratune.report import write_report
    from loratune.report.study import build_study_report

    study = tmp_path / "studies" / "s #1 50% ?"
    scripted_study(study, run_dirs=True)
    out = write_report(study, tmp_path / "out" / "s1.html", examples=False)
    hrefs = re.findall(r'href="(\.\./[^"]*)"', out.read_text())
    assert hrefs and all(h.startswith("../studies/s%20%231%2050%25%20%3F/trials/") for h in hrefs)
    links = {t.link for t in build_study_report(study).trials}
    for h in hrefs:  # each resolves to the trial folder (or its report) it names
        target = (out.parent / unquote(h)).resolve()
        assert target.relative_to(study.resolve()).parts[1] in {Path(x).name for x in links}


def test_a_multi_label_runs_metric_panel_plots_its_objective_with_the_marker_on_it(tmp_path):
    """A run kept by subset accuracy (multi-label): the metric chart plots val/subset_accuracy with macro-F1 beside,
    and its best-step marker sits on the objective's best (it plotted only macro-F1, the marker off its peak)."""
    d = write_run(tmp_path / "r", k=4, n_evals=3)
    points = [json.loads(x) for x in (d / "history.jsonl").read_text().splitlines()]
    subset = [0.1, 0.15, 0.2, 0.3]  # rises to the end, while macro-F1 peaks at step 20
    f1 = [0.3, 0.4, 0.6, 0.5]
    for p, s, f in zip(points, subset, f1):
        p["val/subset_accuracy"], p["val/macro_f1"] = s, f
    (d / "history.jsonl").write_text("".join(json.dumps(p) + "\n" for p in points), encoding="utf-8")
    run = json.loads((d / "run.json").read_text())
    run.update(task="multi_label", objective="val/subset_accuracy", best=points[-1])
    (d / "run.json").write_text(json.dumps(run), encoding="utf-8")
    r = build_run_report(d)
    assert r.metric == "val/subset_accuracy" and r.best["step"] == 30
    panel = next(c for c in r.curves if c.id == "metric")
    series = {c.key: c.points for c in panel.curves}
    assert series["val/subset_accuracy"] == tuple((float(p["step"]), s) for p, s in zip(points, subset))
    assert "val/macro_f1" in series and panel.best_step == 30
    assert max(series["val/subset_accuracy"], key=lambda sv: sv[1])[0] == panel.best_step


def test_a_diverged_run_that_kept_its_untrained_start_says_so_on_the_best_card(tmp_path):
    """Every trained point diverged: run.json's best is step 0 and no model is saved. The Summary's best card and the
    charts' marker say it is the untrained start (they read 'best val Macro-F1 ..., step 0' beside a diagnosis
    whose best was the diverged point's); a run that kept a trained point reads as before."""
    d = write_run(tmp_path / "r", k=4, status="diverged")
    run = json.loads((d / "run.json").read_text())
    points = [json.loads(x) for x in (d / "history.jsonl").read_text().splitlines()]
    run.update(best=points[0], steps_done=40, saved_model={"step": None, "note": "no model saved"}, adapter_step=None)
    (d / "run.json").write_text(json.dumps(run), encoding="utf-8")
    r = build_run_report(d)
    assert r.kept_untrained and r.best["step"] == 0 and r.saved_step is None
    html = render_run(r)
    assert "no trained point kept (the run diverged): best kept = the untrained model, step 0 · no model saved" in html
    assert "best kept: the untrained start" in html
    ok = build_run_report(write_run(tmp_path / "ok", k=4))
    assert not ok.kept_untrained and "no trained point kept" not in render_run(ok)
    # an interrupted run stopped before its first trained eval: nothing diverged, nothing was evaluated yet
    d = write_run(tmp_path / "int", k=4, status="interrupted")
    points = [json.loads(x) for x in (d / "history.jsonl").read_text().splitlines()]
    (d / "history.jsonl").write_text(json.dumps(points[0]) + "\n", encoding="utf-8")
    run = json.loads((d / "run.json").read_text())
    run.update(best=points[0], steps_done=80, saved_model={"step": None, "note": "no model saved"}, adapter_step=None)
    (d / "run.json").write_text(json.dumps(run), encoding="utf-8")
    html = render_run(build_run_report(d))
    assert "no trained point kept (no trained eval point before the run stopped)" in html
    assert "diverged" not in html.split("no trained point kept")[1][:80]


def test_the_lora_vs_full_table_says_which_share_and_which_lora_it_shows(tmp_path):
    """Its share row is the adapter's alone (decide.CostPoint.share_total; a trial's run report counts the head too)
    and says so, and its LoRA column is the best trial when the probe ran, named by number (it said '(chosen)' of a
    trial the study's later pick replaced)."""
    from loratune.report.study import build_study_report

    scripted_study(tmp_path / "study")
    s = build_study_report(tmp_path / "study")
    html = render_study_html(s)
    assert "share of the model (LoRA: adapter only)" in html and "(chosen)" not in html
    first = s.lora_vs_full.table[0]
    assert first["label"] == f"LoRA r={first['r']} (best at the probe, #{first['trial']})"


def test_a_multi_label_study_shows_its_objective_in_the_cost_table_and_keeps_the_test_prefixes(tmp_path):
    """The LoRA-vs-full table held subset accuracy under `val_macro_f1` (now `objective_value`, an old study.json's
    `val_macro_f1` still read), and the recommendation's test line cut `test_compound/` and `test_single/` off:
    'subset_accuracy 0.688, ..., subset_accuracy 0.429, n 35, subset_accuracy 0.917'."""
    from loratune.report.study import build_study_report

    d = tmp_path / "study"
    (d / "final").mkdir(parents=True)
    (d / "final" / "config.yaml").write_text("train:\n  learning_rate: 0.005\n")
    trials = [{"trial": n, "name": f"t{n}", "phase": "phase1-lr-grid", "status": "completed", "val_macro_f1": None,
               "objective": "val/subset_accuracy", "objective_value": v, "examples": 100, "wall_s": 1.0,
               "point": {R: 8, LR: 5e-3}} for n, v in ((0, 0.229), (1, 0.31))]
    table = [{"label": "LoRA r=8 (chosen)", "method": "lora", "r": 8, "trial": 1, "objective": "val/subset_accuracy",
              "objective_value": 0.31, "trainable": 1000},
             {"label": "full fine-tuning", "method": "full", "r": None, "trial": 0, "val_macro_f1": 0.229,
              "trainable": 9000}]  # a row written before objective_value: its score under val_macro_f1
    summary = {"objective": "val/subset_accuracy", "strategy": "protocol", "trials": trials,
               "lora_vs_full": {"choice": "lora", "summary": "LoRA", "reasons": [], "table": table, "full_trial": 0},
               "recommendation": {"trial": 1, "name": "t1", "point": trials[1]["point"], "val_macro_f1": None,
                                  "objective": "val/subset_accuracy", "objective_value": 0.31, "verdict": "healthy",
                                  "test": {"test/subset_accuracy": 0.688, "test/n": 80,
                                           "test_compound/subset_accuracy": 0.429, "test_compound/n": 35,
                                           "test_single/subset_accuracy": 0.917}}}
    (d / "final" / "study.json").write_text(json.dumps(summary))
    s = build_study_report(d)
    assert [t["objective_value"] for t in s.lora_vs_full.table] == [0.31, 0.229]
    html = render_study_html(s)
    test_line = re.search(r"<dt>test</dt><dd>([^<]*)", html).group(1)
    assert test_line == ("subset_accuracy 0.688, n 80, test_compound/subset_accuracy 0.429, test_compound/n 35, "
                         "test_single/subset_accuracy 0.917")
    table_html = html[html.index('id="lora-full-table"'):]
    assert re.search(r"<td>val subset accuracy</td><td[^>]*><b>0.310</b></td><td[^>]*><b>0.229</b></td>",
                     table_html)


def test_an_interrupted_studys_report_counts_what_its_cut_trial_trained(tmp_path):
    """Ctrl-C during trial #1: its run.json says 20 steps, 320 examples, a best val at step 20, but the trial has no
    record. The report of the unfinished study showed it with no examples, time or val and under-counted the
    compute; it reads them from the trial's run directory (what a resume charges for it)."""
    from loratune.report.render_study import summary_section
    from loratune.report.study import build_study_report
    from loratune.search.study import Study
    from loratune.search.trial import TrialResult, TrialSpec

    d = tmp_path / "study"
    store = Study.open(d, meta={"strategy": "protocol"})
    done = TrialSpec("start", "phase1-lr-grid", {R: 4, LR: 1e-3})
    trial, run_dir = store.start(done)
    write_run(Path(run_dir), k=4, n_evals=2, steps_per_eval=6)  # 12 steps, 192 examples, 6 s
    store.finish(trial, done, run_dir, TrialResult(status="completed", value=0.5, examples=192, wall_s=6.0,
                                                   best={"step": 12, "val/macro_f1": 0.5}))
    cut = TrialSpec("lr2e-3", "phase1-lr-grid", {R: 4, LR: 2e-3})
    trial, run_dir = store.start(cut)
    write_run(Path(run_dir), k=4, n_evals=2, steps_per_eval=10, status="interrupted")  # 20 steps, 320 examples, 10 s
    store.fail(trial, "interrupted by the user; trained again on --resume")
    store.close()
    s = build_study_report(d)
    t = s.trial(1)
    assert t.status == "interrupted" and t.examples == 320 and t.wall_s == pytest.approx(10.0)
    assert t.value is None  # its val so far is no result: the finished #0 stays the best, in the tile and the curve
    assert s.best.number == 0 and s.best_vs_compute[-1].best_so_far == pytest.approx(0.5)
    assert s.best_vs_compute[-1].examples_cum == 192 + 320
    assert "512 training examples · 16 s" in summary_section(s)


def test_a_study_read_from_its_trial_folders_never_takes_a_cut_trials_val_as_its_best(tmp_path):
    """No study.db, no final/: the report rebuilt the trials from their folders and an interrupted trial's val so far
    (0.834) stood as the study's best over a finished one (0.5)."""
    from loratune.report.study import build_study_report

    for name, status, val in (("00-r4", "completed", 0.5), ("01-r8", "interrupted", 0.834)):
        (tmp_path / "trials" / name).mkdir(parents=True)
        (tmp_path / "trials" / name / "run.json").write_text(json.dumps(
            {"status": status, "objective": "val/macro_f1", "best": {"step": 5, "val/macro_f1": val},
             "examples_seen": 100, "wall_s": 5}))
    (tmp_path / "decisions.jsonl").write_text(json.dumps(
        {"seq": 0, "phase": "phase0", "kind": "start-config", "code": "start-config", "trials": [], "verdict": "v",
         "move": "m", "evidence": [], "data": {}}) + "\n")
    s = build_study_report(tmp_path)
    assert s.best.number == 0 and s.best.value == pytest.approx(0.5)
    assert [(t.number, t.value) for t in s.trials] == [(0, pytest.approx(0.5)), (1, None)]


def test_a_single_label_run_without_predictions_is_not_called_multi_label(tmp_path):
    # a tune trial whose config was refused leaves run.json with its status and reason only: show said 'no confusion
    # matrix ... (a multi-label run has none)' of a single-label run
    run = tmp_path / "refused"
    run.mkdir()
    (run / "run.json").write_text(json.dumps({"status": "failed", "reason": "the trial's config was refused"}))
    why = pairs_missing_why(build_run_report(run))
    assert why == ("no confusion matrix and no `val/confused_pairs` in the history "
                   "(no validation predictions were recorded)")


def _with_extras(d: Path, robustness: dict) -> Path:
    """write_run's run with a saved model at step 40, probe-set scores in its history and a robustness record."""
    run = json.loads((d / "run.json").read_text())
    run.update(saved_model={"step": 40, "note": "adapter/ holds the model of step 40"}, robustness=robustness)
    (d / "run.json").write_text(json.dumps(run))
    points = [json.loads(line) for line in (d / "history.jsonl").read_text().splitlines()]
    for p in points:
        p.update({"probe/accuracy": p["step"] / 80, "probe/n": 8})  # step 40: 0.5; the last point (60): 0.75
    (d / "history.jsonl").write_text("".join(json.dumps(p) + "\n" for p in points))
    return d


ROBUSTNESS = {"clean_accuracy": 0.9, "rows": 256,
              "typo": {"accuracy": 0.875, "drop": 0.025, "texts_changed": 0.97},
              "drop_word": {"accuracy": 0.8125, "drop": 0.0875, "texts_changed": 1.0},
              "case": {"accuracy": 0.9, "drop": 0.0, "texts_changed": 0.99},
              "punctuation": {"accuracy": 0.85, "drop": 0.05, "texts_changed": 0.42}}


def test_show_and_the_report_give_the_robustness_and_probe_set_the_record_holds(tmp_path, capsys):
    # run.json robustness and the history's probe/accuracy were recorded but shown nowhere
    from loratune.cli import main

    d = _with_extras(write_run(tmp_path / "r"), ROBUSTNESS)
    assert main(["show", str(d)]) == 0
    out = [" ".join(line.split()) for line in capsys.readouterr().out.splitlines()]
    assert "probe set: accuracy 0.500 on 8 texts at step 40" in out  # the saved model's step, not the last (0.75)
    assert "robustness: clean accuracy 0.900 on 256 validation rows" in out
    for kind in ("typo", "drop_word", "case", "punctuation"):
        v = ROBUSTNESS[kind]
        assert f"{kind} {v['accuracy']:.3f} {v['drop']:.3f} {v['texts_changed']:.0%}" in out
    r = build_run_report(d)
    assert (r.probe.step, r.probe.accuracy, r.probe.n) == (40, 0.5, 8)
    assert r.robustness.kinds[1] == ("drop_word", 0.8125, 0.0875, 1.0)
    html = render_run(r)
    assert 'id="extras"' in html and "accuracy <b>0.500</b> on 8 texts at step 40" in html
    assert '<td class="">drop_word</td><td class="num" data-v="0.8125">0.812</td>' in html


@pytest.mark.parametrize("why", ["skipped", "failed"])
def test_show_says_why_robustness_was_not_scored(tmp_path, capsys, why):
    from loratune.cli import main

    d = _with_extras(write_run(tmp_path / "r"), {why: "its 1024 predictions would take evaluation past budget_rows"})
    assert main(["show", str(d)]) == 0
    out = " ".join(capsys.readouterr().out.split())
    assert f"robustness {why}: its 1024 predictions would take evaluation past budget_rows" in out
    assert "clean accuracy" not in out


def test_show_has_no_extras_section_without_them(tmp_path, capsys):
    from loratune.cli import main

    assert main(["show", str(write_run(tmp_path / "r"))]) == 0
    assert "probe set and robustness" not in capsys.readouterr().out
    assert 'id="extras"' not in render_run(build_run_report(tmp_path / "r"))


@pytest.mark.parametrize("weights", [True, False])
def test_the_probe_set_of_a_record_without_saved_model_is_at_the_best_step_its_adapter_holds(tmp_path, capsys,
                                                                                            weights):
    # run.json from before saved_model (written 2026-11-22 to 12-01): the section lost the probe set (no step); the
    # saved model is then the best step's when adapter/ holds weights, as report.model._saved_at takes it
    from loratune.cli import main

    d = _with_extras(write_run(tmp_path / "r"), ROBUSTNESS)
    run = json.loads((d / "run.json").read_text())
    del run["saved_model"]
    run["best"] = next(json.loads(line) for line in (d / "history.jsonl").read_text().splitlines()
                       if json.loads(line)["step"] == 40)
    (d / "run.json").write_text(json.dumps(run))
    if weights:
        (d / "adapter").mkdir()
        (d / "adapter" / "adapter_model.safetensors").write_bytes(b"x")
    r = build_run_report(d)
    assert r.saved_model is weights and r.saved_step == (40 if weights else None)
    assert main(["show", str(d)]) == 0
    out = [" ".join(line.split()) for line in capsys.readouterr().out.splitlines()]
    if weights:
        assert (r.probe.step, r.probe.accuracy, r.probe.n) == (40, 0.5, 8)
        assert "probe set: accuracy 0.500 on 8 texts at step 40" in out
        assert "accuracy <b>0.500</b> on 8 texts at step 40" in render_run(r)
    else:  # no model saved: no probe-set score to show, robustness still shown
        assert r.probe is None and not any(line.startswith("probe set:") for line in out)
        assert "robustness: clean accuracy 0.900 on 256 validation rows" in out


def test_report_help_names_the_probe_set_and_robustness(capsys):
    # the run sections `report --help` lists lacked the probe set and robustness section
    from loratune.cli import main

    with pytest.raises(SystemExit) as exc:
        main(["report", "--help"])
    assert exc.value.code == 0
    out = " ".join(capsys.readouterr().out.split())
    assert ("the probe set's score at the saved model's step and the robustness probe (accuracy under each "
            "perturbation)") in out


def _cost_table_study(d, table, memory_per_trial=None):
    (d / "final").mkdir(parents=True)
    (d / "final" / "config.yaml").write_text("train:\n  learning_rate: 0.005\n")
    trials = [{"trial": n, "name": f"t{n}", "phase": "phase1-lr-grid", "status": "completed", "val_macro_f1": v,
               "objective": "val/macro_f1", "objective_value": v, "examples": 100, "wall_s": 1.0,
               "point": {R: 8, LR: 5e-3}} for n, v in ((4, 0.31), (7, 0.2), (13, 0.25))]
    lvf = {"choice": "lora", "summary": "LoRA", "reasons": [], "table": table, "full_trial": 13,
           **({"memory_per_trial": memory_per_trial} if memory_per_trial is not None else {})}
    summary = {"objective": "val/macro_f1", "strategy": "protocol", "trials": trials, "lora_vs_full": lvf,
               "recommendation": {"trial": 4, "name": "t4", "point": trials[0]["point"], "val_macro_f1": 0.31,
                                  "objective": "val/macro_f1", "objective_value": 0.31, "verdict": "healthy",
                                  "test": {}}}
    (d / "final" / "study.json").write_text(json.dumps(summary))


def test_the_lora_vs_full_table_names_its_memory_and_the_trial_each_number_was_measured_on(tmp_path):
    """It labelled 'peak MB' a trial's memory above the process's memory at its start, and showed under #13 a step
    time and memory measured on #7 (the least over same-shape trials): full 0.009 s / 1 MB where #13's run.json
    said 0.0185 s / 644 MB."""
    import io

    from rich.console import Console

    from loratune.report.study import build_study_report, show_study

    table = [{"label": "LoRA r=8 (best at the probe, #4)", "method": "lora", "r": 8, "trial": 4,
              "objective_value": 0.31, "trainable": 1000, "mean_step_s": 0.094, "peak_memory_mb": 632.0,
              "step_trial": 4, "memory_trial": 4, "memory_kind": "above-start"},
             {"label": "full fine-tuning", "method": "full", "r": None, "trial": 13, "objective_value": 0.25,
              "trainable": 9000, "mean_step_s": 0.009, "peak_memory_mb": 1.0, "step_trial": 7, "memory_trial": 7,
              "memory_kind": "above-start"}]
    _cost_table_study(tmp_path / "s", table)
    s = build_study_report(tmp_path / "s")
    buf = io.StringIO()
    show_study(Console(file=buf, width=300, highlight=False, color_system=None), s)
    text = buf.getvalue()
    block = text[text.index("LoRA vs full fine-tuning"):]
    assert "peak MB" not in block and "memory above the trial's start (MB)" in block
    full_line = next(line for line in block.splitlines() if line.startswith("full fine-tuning"))
    assert "0.009 (#7)" in full_line and "1 (#7)" in full_line
    lora_line = next(line for line in block.splitlines() if line.startswith("LoRA r=8"))
    assert "0.094" in lora_line and "632" in lora_line and "(#" not in lora_line.split(")", 1)[1]
    html = render_study_html(s)
    table_html = html[html.index('id="lora-full-table"'):html.index("</table>", html.index('id="lora-full-table"'))]
    assert re.search(r"<td>memory above the trial(&#x27;|&#39;|')s start</td>", table_html)
    assert "0.009 s (#7)" in table_html and "1 MB (#7)" in table_html and "0.094 s</td>" in table_html
    assert "peak memory" not in table_html
    # a study written before the rows named their memory: the decision's memory_per_trial names it
    old = [{k: v for k, v in row.items() if k not in ("step_trial", "memory_trial", "memory_kind")} for row in table]
    _cost_table_study(tmp_path / "old", old, memory_per_trial=False)
    html = render_study_html(build_study_report(tmp_path / "old"))
    assert "<td>process peak memory</td>" in html and "(#7)" not in html


def test_the_cost_table_rows_name_the_trials_their_least_measurements_came_from():
    from loratune.decide import CostPoint, DecideInputs, cost_table

    lora = CostPoint.from_run("LoRA r=8", "lora", 8, 0.8, {}, 0.1, 600.0, trial=4)
    full = CostPoint.from_run("full fine-tuning", "full", None, 0.7, {}, 0.009, 1.0, trial=13, step_trial=7,
                              memory_trial=7, memory_kind="above-start")
    rows = cost_table(DecideInputs(chosen=lora, highest=None, full=full, noise=0.01))
    assert [(r["trial"], r["step_trial"], r["memory_trial"], r["memory_kind"]) for r in rows] == [
        (4, 4, 4, "process-peak"), (13, 7, 7, "above-start")]


def test_a_runs_settings_say_it_used_dora_and_loraplus():
    """show/report of a DoRA + LoRA+ run listed neither use_dora nor the optimizer, its ratio or the head's lr."""
    from loratune.report.model import build_params

    config = {"adapter": {"method": "lora", "r": 8, "use_dora": True},
              "train": {"learning_rate": 1e-3, "optimizer": "loraplus", "loraplus_lr_ratio": 4.0,
                        "head_learning_rate": 5e-3}}
    rows = {(p.group, p.key): p.value for p in build_params({"method": "lora"}, config)}
    assert rows[("Adapter", "use_dora")] is True and rows[("Training", "optimizer")] == "loraplus"
    assert rows[("Training", "loraplus_lr_ratio")] == 4.0 and rows[("Training", "head_learning_rate")] == 5e-3
    plain = {"adapter": {"method": "lora", "r": 8, "use_dora": False},
             "train": {"learning_rate": 1e-3, "optimizer": "adamw", "loraplus_lr_ratio": 16.0,
                       "head_learning_rate": None}}
    rows = {(p.group, p.key): p.value for p in build_params({"method": "lora"}, plain)}
    assert rows[("Training", "optimizer")] == "adamw" and ("Training", "loraplus_lr_ratio") not in rows
    assert ("Training", "head_learning_rate") not in rows and rows[("Adapter", "use_dora")] is False


def test_a_study_reports_best_is_the_trial_its_own_ranking_names_on_a_tie(tmp_path):
    """A generative classifier's trials all tied at val macro-F1 0.0 (d2only: 8 trials): the study ranks them by
    TrialRecord.rank (the kept point's val loss breaks the tie: #4, val loss 2.188), but the report's best (the
    "best val ..." tile, show's "best so far") kept its own older order and named #0 (val loss 2.533). It ranks by
    the same rule, with the task from the record, or, for a record written before it kept the task, run.json's."""
    import io

    from rich.console import Console

    from loratune.report.render_study import summary_section
    from loratune.report.study import build_study_report, show_study
    from loratune.search.study import Study
    from loratune.search.trial import TrialRecord, TrialResult, TrialSpec

    def study(name: str, task: str):
        d = tmp_path / name
        store = Study.open(d, meta={"strategy": "protocol"})
        records = []
        for n, loss in enumerate((2.533, 2.188, 2.476)):
            spec = TrialSpec(f"t{n}", "phase1-lr-grid", {R: 8, LR: 1e-2 / (n + 1)})
            trial, run_dir = store.start(spec)
            Path(run_dir).mkdir(parents=True, exist_ok=True)
            (Path(run_dir) / "run.json").write_text(json.dumps({"status": "completed", "task": "causal-lm"}))
            res = TrialResult(status="completed", value=0.0, examples=80, wall_s=1.0, task=task,
                              best={"step": 10, "val/macro_f1": 0.0, "val/loss": loss})
            store.finish(trial, spec, run_dir, res)
            records.append(TrialRecord(n, spec, run_dir, res))
        store.close()
        return d, records

    d, records = study("new", "causal-lm")
    assert max(records, key=lambda r: r.rank).number == 1  # the study's own rule (context.best)
    s = build_study_report(d)
    assert s.best.number == 1 and s.best.kept["val/loss"] == 2.188
    assert "trial #1 t1" in summary_section(s)
    con = Console(file=io.StringIO(), width=200)
    show_study(con, s)
    assert "best so far: #1 t1" in con.file.getvalue()
    d, old = study("old", "")  # records without the task: run.json's (the rule the runs kept their models by)
    assert build_study_report(d).best.number == 1
    # ... and the study reads them back the same (trial.recorded_task, one place): a resumed old study's records and
    # a key's record found finished carry run.json's task, so context.best's max(rank) names the report's #1 (it
    # named #0: task "" took no val-loss tie-break, every rank (0.0, 0.0, -n))
    store = Study.open(d, meta={"strategy": "protocol"}, resume=True)
    try:
        loaded = store.records()
        assert [r.result.task for r in loaded] == ["causal-lm"] * 3
        assert [r.rank for r in loaded] == [(0.0, -2.533, 0), (0.0, -2.188, -1), (0.0, -2.476, -2)]
        assert max(loaded, key=lambda r: r.rank).number == build_study_report(d).best.number == 1
        how, rec = store.await_key(old[1].key, old[1].spec)
        assert how == "record" and rec.number == 1 and rec.result.task == "causal-lm"
        assert rec.rank == (0.0, -2.188, -1) and rec.run_dir == loaded[1].run_dir
    finally:
        store.close()


def test_a_robustness_record_without_its_row_count_says_it_is_not_recorded(tmp_path, capsys):
    """The oldest records kept no `rows` beside the clean accuracy: show printed 'on ? validation rows'."""
    from loratune.cli import main

    old = {k: v for k, v in ROBUSTNESS.items() if k != "rows"}  # as an older loratune wrote it
    d = _with_extras(write_run(tmp_path / "r"), old)
    assert main(["show", str(d)]) == 0
    out = " ".join(capsys.readouterr().out.split())
    said = "robustness: clean accuracy 0.900 on the validation rows (their count is not recorded)"
    assert said in out and "on ? validation rows" not in out
    r = build_run_report(d)
    assert r.robustness.rows is None and r.robustness.rows_text == said.split("0.900 ", 1)[1]


def test_the_rank_view_compares_the_rank_sweeps_own_trials_not_a_long_run_or_other_targets(tmp_path, capsys):
    """Hunt 19 (s2): the view said r=1 best 0.709 over 9 trials (a 60-step final-train run and the all-linear target
    sweep's trials among them) while the rank sweep measured r 1 -> 4: 0.598 -> 0.337. It compares like with like: the
    trials that differ from the sweep's working point only in r, alpha, rsLoRA, lr or seed (an older study.json lists
    every LoRA trial: filtered on reading), says what it left out, and carries the chosen rank and the threshold's
    source."""
    from loratune.cli import main
    from loratune.report.study import build_study_report

    d = tmp_path / "study"
    (d / "final").mkdir(parents=True)
    qv = {R: 1, "adapter.lora_alpha": 2.0, "adapter.target_modules": ["attn.q", "attn.v"], LR: 0.01}
    pts = [(0, "phase1-lr-grid", 0.598, qv), (4, "seeds", 0.500, {**qv, "train.seed": 43}),
           (6, "rank-sweep", 0.337, {**qv, R: 4, "adapter.lora_alpha": 4.0, "adapter.use_rslora": True}),
           (7, "target-sweep", 0.5978, {**qv, "adapter.target_modules": "all-linear"}),
           (12, "final-train", 0.709, {**qv, "train.max_steps": 60}),
           (11, "lora-vs-full", 0.647, {LR: 2.5e-4, "adapter.method": "full"})]
    summary = {"objective": "val/macro_f1", "strategy": "protocol",
               "trials": [{"trial": n, "name": f"t{n}", "phase": ph, "status": "completed", "objective_value": v,
                           "point": p} for n, ph, v, p in pts],
               "rank_vs_metric": {"trials": [{"r": p[R], "value": v, "trial": n, "phase": ph}
                                             for n, ph, v, p in pts if R in p],
                                  "sweep": [{"trial": 0, "r": 1}, {"trial": 6, "r": 4}], "plateau_r": 1, "chosen_r": 1,
                                  "threshold": 0.2, "threshold_source": "max(0.005, 2 x seed sigma 0.0998 over 3 seeds)"}}
    (d / "final" / "study.json").write_text(json.dumps(summary))
    rk = build_study_report(d).rank
    assert [(p.trial, p.r, p.value) for p in rk.points] == [(0, 1, 0.598), (4, 1, 0.5), (6, 4, 0.337)]
    assert rk.chosen_r == 1 and rk.threshold_source.startswith("max(0.005, 2 x seed sigma")
    assert "2 other LoRA trial(s)" in rk.scope and "working point #0" in rk.scope
    assert main(["show", str(d)]) == 0
    out = " ".join(capsys.readouterr().out.split())
    assert "r=1 best 0.598 over 2 trial(s)" in out and "r=4 best 0.337 over 1 trial(s)" in out
    assert "0.709" not in out.split("rank vs")[1].split("minimal-intervention")[0]
    assert "gain threshold 0.200 (max(0.005, 2 x seed sigma 0.0998 over 3 seeds))" in out


def test_a_rank_sweep_of_one_point_scopes_the_rank_view_as_study_json_does(tmp_path, capsys):
    """Review of hunt 19 (s1: the sweep stopped at the ceiling after one point): study.json's rank view held 5 of the 9
    LoRA trials (summary.rank_vs_metric filters on any sweep point) but show/report printed no scope line (the view
    scoped only a sweep of two points or more). One working-point rule (trial.rank_sweep_working) for both."""
    from loratune.cli import main
    from loratune.report.study import build_study_report

    d = tmp_path / "study"
    (d / "final").mkdir(parents=True)
    qv = {R: 8, "adapter.lora_alpha": 16.0, "adapter.target_modules": ["attn.q", "attn.v"], LR: 0.04}
    pts = [(0, "phase1-lr-grid", 0.62, qv), (4, "seeds", 0.50, {**qv, "train.seed": 43}),
           (5, "rank-sweep", 0.60, {**qv, R: 16, "adapter.lora_alpha": 32.0}),
           (7, "target-sweep", 0.55, {**qv, "adapter.target_modules": "all-linear"}),
           (12, "final-train", 0.70, {**qv, "train.max_steps": 60})]
    sweep = [{"trial": 5, "r": 16}]
    summary = {"objective": "val/macro_f1", "strategy": "protocol",
               "trials": [{"trial": n, "name": f"t{n}", "phase": ph, "status": "completed", "objective_value": v,
                           "point": p} for n, ph, v, p in pts],
               "rank_vs_metric": {"trials": [{"r": p[R], "value": v, "trial": n, "phase": ph}
                                             for n, ph, v, p in pts if n in (0, 4, 5)],
                                  "sweep": sweep, "plateau_r": None, "chosen_r": 16, "threshold": 0.2,
                                  "threshold_source": "floor"}}
    (d / "final" / "study.json").write_text(json.dumps(summary))
    rk = build_study_report(d).rank
    assert [(p.trial, p.r) for p in rk.points] == [(0, 8), (4, 8), (5, 16)]
    assert "working point #5" in rk.scope and "2 other LoRA trial(s)" in rk.scope
    assert main(["show", str(d)]) == 0
    out = " ".join(capsys.readouterr().out.split())
    assert "trials like the rank sweep's working point #5" in out and "2 other LoRA trial(s)" in out
    from loratune.search.trial import rank_sweep_working

    assert rank_sweep_working(sweep, {n: p for n, _, _, p in pts}) == (5, pts[2][3])
    assert rank_sweep_working([], {n: p for n, _, _, p in pts}) is None


def test_a_study_whose_study_db_is_damaged_says_so_not_an_empty_study(tmp_path):
    """show / report of a study whose study.db is damaged (a SQLite header over garbage: 'file is not a database')
    read as a study of 0 trials 'rebuilt from ... the Optuna records', never saying the file could not be read
    (fuzz hunt): a note says it, on one line, with the fix."""
    from loratune.report.study import build_study_report

    study = tmp_path / "s"
    study.mkdir()
    (study / "study.db").write_bytes(b"SQLite format 3\x00" + bytes(range(256)) * 8)
    notes = build_study_report(study).notes
    said = [n for n in notes if "study.db could not be read" in n]
    assert len(said) == 1 and "not a database" in said[0] and "new --study-dir" in said[0]
    assert "\n" not in said[0] and "sqlalche.me" not in said[0]


# ---------------------------------------------------------------------------------------------
# Curves: non-finite points, off-scale spikes, the train loss as logged, tick labels (visual hunt)
# ---------------------------------------------------------------------------------------------


def write_trainer_state(d: Path, log: list, max_steps: int) -> Path:
    d.mkdir(parents=True, exist_ok=True)
    state = {"log_history": log, "max_steps": max_steps, "global_step": log[-1]["step"], "epoch": 1.0,
             "train_batch_size": 16, "logging_steps": 10}
    (d / "trainer_state.json").write_text(json.dumps(state), encoding="utf-8")  # NaN / Infinity as json writes them
    return d


def loss_svg(report) -> str:
    from loratune.report.render import curve_figure

    return curve_figure(next(p for p in report.curves if p.id == "loss"))


def svg_titles(svg: str, cls: str) -> list[str]:
    return re.findall(rf'class="{cls}"[^>]*><title>([^<]*)</title>', svg)


def x_ticks(svg: str) -> list[str]:
    return re.findall(r'<text x="[\d.]+" y="[\d.]+" text-anchor="middle">([^<]*)</text>', svg)


def test_a_diverged_runs_non_finite_losses_are_marked_and_break_the_line_over_the_whole_run(tmp_path):
    """A diverged run's loss chart dropped its NaN / inf points without a mark: the curve just stopped (x to 300 while
    the accuracy chart ran to 600), and a NaN between finite losses was bridged by the line (visual hunt). Each
    non-finite step is marked at the top edge with its step, the line breaks there, and the x axis covers the run."""
    log = []
    for s in range(10, 601, 10):
        loss = float("nan") if s in (250,) or s >= 320 else 2.0 * math.exp(-s / 200) + 0.4
        log.append({"step": s, "epoch": s / 200, "loss": loss, "learning_rate": 5e-3})
        if s % 100 == 0:
            log.append({"step": s, "epoch": s / 200, "eval_loss": 1.5 if s < 300 else float("nan"),
                        "eval_accuracy": 0.6 if s < 300 else 0.1})
    report = build_report_of(write_trainer_state(tmp_path / "div", log, 600))
    loss = {c.key: c for c in next(p for p in report.curves if p.id == "loss").curves}
    assert loss["train/loss"].logged_nonfinite == (250.0, *range(320, 601, 10))
    assert [s for s, _ in loss["train/loss"].logged][-2:] == [300.0, 310.0]
    assert loss["val/loss"].nonfinite == (300.0, 400.0, 500.0, 600.0)
    svg = loss_svg(report)
    marks = svg_titles(svg, "nonfinite")
    assert "train (as logged): non-finite (nan/inf) at optimizer step 250" in marks
    # a run of non-finite steps with no finite point between them is one mark
    assert "train (as logged): non-finite (nan/inf) from optimizer step 320 to 600 (29 points)" in marks
    assert "validation: non-finite (nan/inf) from optimizer step 300 to 600 (4 points)" in marks and len(marks) == 3
    # the train line is cut at step 250: one path up to 240, another from 260
    train = re.search(r'<g class="series s-train">(.*?)</g>', svg).group(1)
    assert train.count('<path class="line"') == 2
    assert "600" in x_ticks(svg)  # the x axis reaches the run's end, as the accuracy chart's does


def test_one_loss_spike_is_drawn_off_scale_and_sets_no_axis(tmp_path):
    """One train loss of 850 among values of 1-2 set the loss chart's y axis (0-900) and drew every other point flat
    (visual hunt). charts.OFFSCALE_RATIO: the spike is drawn at the top edge, marked, its value in its tooltip, and
    the axis is the other points'."""
    from loratune.report import charts as ch

    log = []
    for s in range(10, 1001, 10):
        log.append({"step": s, "epoch": s / 500, "loss": 850.0 if s == 500 else 2.0 * math.exp(-s / 200) + 0.4,
                    "learning_rate": 1e-4})
        if s % 100 == 0:
            log.append({"step": s, "epoch": s / 500, "eval_loss": 1.8 * math.exp(-s / 250) + 0.5,
                        "eval_accuracy": 0.7})
    svg = loss_svg(build_report_of(write_trainer_state(tmp_path / "spike", log, 1000)))
    off = svg_titles(svg, "offscale")
    assert len(off) == 1 and off[0].startswith("train (as logged): off-scale 850 at optimizer step 500")
    y_ticks = [float(t) for t in re.findall(r'text-anchor="end">([\d.]+)</text>', svg)]
    assert max(y_ticks) < 3  # the axis is the learning curve's (2.3 down to 0.4), not the spike's
    assert ch.offscale_points([ch.Series("a", "s", [(0, 2.0), (1, 850.0)])]) == [{1}]
    assert ch.offscale_points([ch.Series("a", "s", [(0, -1.0), (1, 850.0)])]) is None  # not a loss: no rule
    # the accuracy and lr charts keep every point on scale
    assert "offscale" not in ch.line_chart([ch.Series("lr", "s-lr", [(0, 1e-6), (10, 1e-4)])])


def test_a_run_that_evaluated_once_draws_its_logged_train_loss_over_its_steps(tmp_path):
    """A run with one eval (at the end) drew near-empty charts on a made-up 980-1,020 x range with the right tick
    cut, and its 100 logged train losses never (the train curve held only eval-aligned window means) (visual hunt).
    The train curve is the train loss as logged, the x axis the run's steps from 0, every tick label inside."""
    log = [{"step": s, "epoch": s / 500, "loss": 2.0 * math.exp(-s / 200) + 0.4, "learning_rate": 1e-4}
           for s in range(10, 1001, 10)]
    log.append({"step": 1000, "epoch": 2.0, "eval_loss": 0.61, "eval_accuracy": 0.83})
    log.append({"step": 1000, "epoch": 2.0, "train_runtime": 100.0, "train_loss": 0.7})
    report = build_report_of(write_trainer_state(tmp_path / "evalend", log, 1000))
    train = next(c for c in report.curves[0].curves if c.key == "train/loss")
    assert len(train.logged) == 100 and train.logged[0] == (10.0, pytest.approx(2.0 * math.exp(-0.05) + 0.4))
    assert train.from_log and [s for s, _ in train.points] == [1000.0]  # `points`: the eval points (show's table)
    svg = loss_svg(report)
    assert x_ticks(svg)[:2] == ["0", "200"] and x_ticks(svg)[-1] == "1,000"
    width = float(re.search(r'viewBox="0 0 (\d+)', svg).group(1))
    for x, text in re.findall(r'<text x="([\d.]+)" y="[\d.]+" text-anchor="middle">([^<]*)</text>', svg):
        assert 0 <= float(x) - len(text) * 3.1 and float(x) + len(text) * 3.1 <= width
    # the logged curve is a line (its points are no eval points); the one eval point keeps its marker
    assert svg.count('class="dot"') == 1


def test_no_two_ticks_of_an_axis_share_a_label():
    """The study's peak-memory chart labelled the ticks 0, 0.5, 1 as 0, 0, 1 ({v:,.0f}) (visual hunt): the shared
    tick formatter gives them the decimals their step needs."""
    from loratune.report import charts as ch

    assert ch.tick_texts([0, 0.5, 1], lambda v: f"{v:,.0f}") == ["0.0", "0.5", "1.0"]
    assert ch.tick_texts([0, 2.5, 5], lambda v: f"{v:,.0f}") == ["0.0", "2.5", "5.0"]  # 2.5 never read as 2
    assert ch.tick_texts([0, 500, 1000], lambda v: f"{v:,.0f}") == ["0", "500", "1,000"]
    assert ch.tick_texts([10000, 20000], ch.fmt) == ["10k", "20k"]
    bars = [ch.Bar("lora", 0.9, "s-c0", "lora"), ch.Bar("full", 1.1, "s-c2", "full")]
    svg = ch.column_chart(bars, y_fmt=lambda v: f"{v:,.0f}")
    labels = re.findall(r'text-anchor="end">([^<]*)</text>', svg)
    assert len(labels) == len(set(labels)) >= 3


def test_a_one_rank_studys_chart_marks_the_tables_best_trial_not_the_lone_sweep_point(tmp_path):
    """One rank in the study: the 'best per rank' line was one point (a path that draws nothing), so the only dot in
    its colour was the lone in-sweep trial #0 at 0.225 while the table said the best at r=8 is 0.311, trial #3
    (visual hunt). Without a sweep of 2+ points the best of each rank is drawn, ringed, in the line's colour."""
    from loratune.report.render_study import rank_section
    from loratune.report.study import build_study_report

    d = tmp_path / "study"
    (d / "final").mkdir(parents=True)
    vals = ((0, "phase1-lr-grid", 0.225), (1, "phase1-lr-grid", 0.171), (3, "seeds", 0.311), (4, "seeds", 0.115))
    trials = [{"trial": n, "name": f"t{n}", "phase": ph, "status": "completed", "objective": "val/macro_f1",
               "objective_value": v, "examples": 100, "wall_s": 1.0, "point": {R: 8, LR: 1e-3}} for n, ph, v in vals]
    summary = {"objective": "val/macro_f1", "strategy": "protocol", "trials": trials,
               "rank_vs_metric": {"trials": [{"r": 8, "value": v, "trial": n, "phase": ph} for n, ph, v in vals],
                                  "sweep": [{"trial": 0, "r": 8}]}}
    (d / "final" / "study.json").write_text(json.dumps(summary))
    s = build_study_report(d)
    assert [p.trial for p in s.rank.points if p.in_sweep] == [0]
    html = rank_section(s, {"phase1-lr-grid": "c0", "seeds": "c1"})
    in_val = re.findall(r'<g class="series s-val[^"]*"><circle[^>]*><title>([^<]*)</title>', html)
    assert in_val == ["best val macro-F1 at r=8: 0.311 (trial #3)"]  # trial #0 wears its phase's colour
    assert re.search(r'<g class="series s-val ring"><circle class="pt" cx="[\d.]+" cy="[\d.]+" r="7"', html)
    assert "best val macro-F1 per rank" in html


def test_a_csv_runs_end_is_unknown_unless_it_holds_the_trainers_end_entry(tmp_path, capsys):
    """A CSV of curves was badged `finished` though it cannot say the run ended (a TensorBoard log with the same lack
    reads 'end unknown'), and its steps tile read '–' of '–' planned beside a best card at step 1,000 (visual hunt).
    The CSV reader marks its end unknown (END_UNKNOWN_KEY) unless a train_runtime value says the run ended; show and
    the report say the same; the steps tile gives the last step logged."""
    from loratune.cli import main
    from loratune.history_io import END_UNKNOWN_KEY, load_run
    from loratune.report.render import render_run

    rows = "".join(f"{s},{s / 500},{2 * math.exp(-s / 200) + 0.4:.4f},{1.8 * math.exp(-s / 250) + 0.5:.4f},"
                   f"{0.5 + 0.3 * (1 - math.exp(-s / 300)):.4f}\n" for s in range(50, 1001, 50))
    csv = tmp_path / "export.csv"
    csv.write_text("step,epoch,train_loss,eval_loss,eval_accuracy\n" + rows, encoding="utf-8")
    assert load_run(csv).meta.get(END_UNKNOWN_KEY) is True
    report = build_report_of(csv)
    assert report.status == "end unknown" and report.steps_done == 1000
    assert 'data-key="compute"><div class="k">steps</div><div class="v">1,000</div>' in render_run(report)
    assert main(["show", str(csv)]) == 0
    assert "end unknown" in capsys.readouterr().out
    ended = tmp_path / "ended.csv"
    ended.write_text("step,epoch,train_loss,eval_loss,eval_accuracy,train_runtime\n" + rows
                     + "1000,2.0,,,,100.5\n", encoding="utf-8")
    assert END_UNKNOWN_KEY not in load_run(ended).meta and build_report_of(ended).status == "finished"


def test_a_long_class_label_or_verdict_stays_inside_its_summary_tile(tmp_path):
    """A 38-character class label in the weakest-classes tile (and the SFT verdict chip) ran out of its tile, the
    page scrolling sideways at 1280 px (visual hunt): tiles may shrink and wrap anywhere, and a weakest class's name
    is cut with an ellipsis, its full name in the title."""
    from loratune.report.html import page

    css = page("t", "run", "")
    assert re.search(r"\.tile \{[^}]*min-width: 0", css)
    assert re.search(r"\.tile \.v, \.tile \.d \{[^}]*overflow-wrap: anywhere", css)
    assert re.search(r"\.tile \.d \.clip \{[^}]*text-overflow: ellipsis", css)
    run = write_run(tmp_path / "run", k=4)
    html = render_run(build_run_report(run))
    tile = re.search(r'data-key="weakest">(.*?)</div></div>', html).group(1)
    assert re.search(r'<span class="clip" title="intent_\d{3}">intent_\d{3}</span>', tile), tile


def test_diagnose_show_and_report_name_a_tensorboard_log_after_its_own_folder(tmp_path):
    """`loratune diagnose in/tb` titled the run `in` (the folder above the events file's) while show / report titled
    it `tb` (visual hunt): one rule, the events file's folder, unless it is a Trainer's logging_dir runs/<date>."""
    tb = pytest.importorskip("torch.utils.tensorboard")
    from loratune.diagnose import diagnose

    for d in (tmp_path / "in" / "tb", tmp_path / "out" / "runs" / "Jan01_host"):
        w = tb.SummaryWriter(str(d))
        for s in range(10, 101, 10):
            w.add_scalar("train/loss", 2.0 - s / 100, s)
            w.add_scalar("eval/loss", 2.1 - s / 100, s)
        w.close()
    assert diagnose(str(tmp_path / "in" / "tb")).run == build_report_of(tmp_path / "in" / "tb").name == "tb"
    assert diagnose(str(tmp_path / "out")).run == build_report_of(tmp_path / "out").name == "out"
    # given as the logging_dir itself or its runs/ folder, the run is still `out` in all three (show / report named
    # it `Jan01_host` and `runs`, review of the visual fixes)
    for given in (tmp_path / "out" / "runs" / "Jan01_host", tmp_path / "out" / "runs"):
        assert diagnose(str(given)).run == build_report_of(given).name == "out", given


def test_a_long_train_log_is_drawn_as_about_a_point_per_pixel(tmp_path, capsys):
    """Every logged train loss was drawn: a 200k-step log made a 2.9 MB report that took 11 s to open and a solid grey
    band ~500 px wide, and `show` listed every log as an 'eval point' row (visual review). The logged line is cut to
    about charts.LINE_POINTS (bucket means) before charting, its first and last points exact and every non-finite
    step kept; the curve's points stay the eval points."""
    from loratune.cli import main
    from loratune.report import charts as ch

    log = []
    for s in range(1, 20001):
        log.append({"step": s, "epoch": s / 2000, "learning_rate": 1e-4,
                    "loss": float("nan") if s == 7000 else 2.0 * math.exp(-s / 4000) + 0.4 + 0.3 * (s % 7 - 3) / 3})
        if s % 2000 == 0:
            log.append({"step": s, "epoch": s / 2000, "eval_loss": 1.8 * math.exp(-s / 5000) + 0.5,
                        "eval_accuracy": 0.7})
    run = write_trainer_state(tmp_path / "long", log, 20000)
    report = build_report_of(run)
    train = next(c for c in report.curves[0].curves if c.key == "train/loss")
    assert ch.LINE_POINTS <= len(train.logged) <= ch.LINE_POINTS + 3
    assert train.logged[0] == (1.0, pytest.approx(log[0]["loss"])) and train.logged[-1][0] == 20000.0
    assert train.logged[-1][1] == pytest.approx(next(e["loss"] for e in reversed(log) if "loss" in e))
    assert train.logged_nonfinite == (7000.0,)
    assert {s for s, _ in train.points} | set(train.nonfinite) == {float(s) for s in range(2000, 20001, 2000)}
    # no bucket mixes the steps either side of a non-finite one
    line = [(float(x), 1.0) for x in range(100) if x != 40]
    assert ch.thin_line(line, [40.0], n=4) == ((0.0, 1.0), (12.5, 1.0), (32.0, 1.0), (45.0, 1.0), (62.0, 1.0),
                                               (86.5, 1.0), (99.0, 1.0))
    assert ch.thin_line(line[:4], n=4) == tuple(line[:4])  # a short line as it is
    # the bucket means keep the curve: the noise (period 7) averages out to the trend
    mid = [y for x, y in train.logged if 9000 < x < 11000]
    assert all(abs(y - (2.0 * math.exp(-10000 / 4000) + 0.4)) < 0.08 for y in mid)
    svg = loss_svg(report)
    assert len(svg) < 40_000 and svg.count("<title>") < 30
    assert main(["show", str(run)]) == 0
    out = capsys.readouterr().out
    assert "20000 *" in out or "20000" in out
    assert out.count("\n") < 80  # the eval points' rows, not 20,000 logs


def test_a_long_run_of_non_finite_losses_is_one_mark_and_charts_fast():
    """A diverged run's 10,000 NaN steps after 10,000 finite ones: _segments scanned every break for every point and
    each NaN step drew its own cross (14.7 s and a 1.25 MB svg for one chart; 20k: 68 s) (visual review). Breaks are
    found in one pass and consecutive non-finite steps are one mark, 'from step A to B (N points)'."""
    import time

    from loratune.report import charts as ch

    pts = [(float(s), 2.0 - s / 20000) for s in range(1, 10001)]
    bad = [float(s) for s in range(10001, 20001)]
    t = time.perf_counter()
    svg = ch.line_chart([ch.Series("train", "s-train", pts, markers=False, nonfinite=bad)], x_label="step")
    assert time.perf_counter() - t < 2.0
    assert svg_titles(svg, "nonfinite") == ["train: non-finite (nan/inf) from step 10k to 20k (10,000 points)"]
    assert len(svg) < 200_000 and svg.count('<path class="span"') == 1  # the span dotted: no value line at the top
    # breaks between and on points cut the line; runs split where a finite point lies between them
    segs = ch._segments([(1, 1), (2, 1), (4, 1), (5, 1), (7, 1)], [3, 5, 6])
    assert [[x for x, _ in seg] for seg in segs] == [[1, 2], [4], [5], [7]]
    assert ch.nonfinite_runs([1, 2, 4, 7], [3, 5, 6, 8, 9]) == [(3, 3, 1), (5, 6, 2), (8, 9, 2)]


def css_value(css: str, chain: list[str], prop: str) -> str | None:
    """The value of `prop` the cascade gives the last element of `chain` (each 'tag.class.class', outermost first):
    descendant selectors only, ranked by specificity then order (enough to check which of two rules wins)."""
    css = re.sub(r"/\*.*?\*/", "", css, flags=re.S)
    els = [(e.split(".")[0], set(e.split(".")[1:])) for e in chain]

    def compound_ok(c: str, el) -> bool:
        tag, classes = c.split(".")[0], set(c.split(".")[1:])
        return (not tag or tag == el[0]) and classes <= el[1]

    def matches(sel: str) -> bool:
        parts = sel.split()
        if any(ch in sel for ch in ":>+~[#*") or not parts or not compound_ok(parts[-1], els[-1]):
            return False
        i = len(els) - 2
        for c in reversed(parts[:-1]):
            while i >= 0 and not compound_ok(c, els[i]):
                i -= 1
            if i < 0:
                return False
            i -= 1
        return True

    best = None
    for order, (sels, body) in enumerate(re.findall(r"([^{}]+)\{([^{}]*)\}", css)):
        value = next((v.strip() for k, v in (d.split(":", 1) for d in body.split(";") if ":" in d)
                      if k.strip() == prop), None)
        for sel in sels.split(","):
            if value is not None and matches(sel.strip()):
                parts = sel.split()
                rank = (sum(p.count(".") for p in parts), sum(1 for p in parts if p.split(".")[0]), order)
                best = max(best, (rank, value)) if best else (rank, value)
    return best[1] if best else None


def test_a_tiles_verdict_chip_wraps_inside_its_tile():
    """The SFT verdict chip ('→ phase 2: tune learning_rate') kept .chip's white-space: nowrap and ran 19 px out of
    its tile at 1280 px (review of the visual fixes): in a tile a chip wraps; elsewhere it stays one line."""
    from loratune.report.html import page

    css = page("t", "run", "")
    assert css_value(css, ["html", "div.tiles", "div.tile", "div.d", "div", "span.chip.move"], "white-space") == "normal"
    assert css_value(css, ["html", "div.tile", "span.chip"], "max-width") == "100%"
    assert css_value(css, ["html", "div.card", "span.chip.move"], "white-space") == "nowrap"  # elsewhere: one line


def test_the_best_per_rank_ring_is_a_ring_over_the_trials_own_dot():
    """The best-per-rank ring was a filled disk hiding the best trial's own phase-coloured dot: `svg .ring .pt`
    {fill: none} came before `svg .series .pt` {fill: currentColor} with the same specificity, so the later won
    (review of the visual fixes). The ring's rule wins by its selector, wherever it stands."""
    from loratune.report.html import page

    css = page("t", "study", "")
    ring = ["html", "body", "svg", "g.series.s-val.ring", "circle.pt"]
    assert css_value(css, ring, "fill") == "none"
    assert css_value(css, ["html", "body", "svg", "g.series.s-c1", "circle.pt"], "fill") == "currentColor"
    # the order does not decide it: moved before or after the dots' rule, the ring stays a ring
    rule = re.search(r"\n(svg [^{\n]*\.ring \.pt \{[^}]*\})", css).group(1)
    dots = re.search(r"\n(svg \.series \.pt \{[^}]*\})", css).group(1)
    for moved in (css.replace(rule, "").replace(dots, rule + "\n" + dots),
                  css.replace(rule, "").replace(dots, dots + "\n" + rule)):
        assert css_value(moved, ring, "fill") == "none"


def test_a_curve_that_climbs_stays_on_scale_and_an_off_scale_point_is_captioned(tmp_path):
    """The 10x-the-start rule drew real shapes at the top edge after a low start (a train loss 0.05 -> 3.2 diverging
    step by step, a val loss overfitting 0.33 -> 3.5: its last point a triangle), and an off-scale value was only in
    a tooltip, which a printed page loses (review of the visual fixes). A point is off scale only where it also jumps
    OFFSCALE_RATIO x past its curve's last in-scale value; a caption under the chart says how many, the largest,
    where."""
    from loratune.report import charts as ch

    climb = [(float(s), 0.05 * 1.09 ** max(0, s - 50)) for s in range(1, 101)]  # 0.05 ... 3.2, step by step
    overfit = [(float(s), 0.33 + 0.0316 * (s - 1)) for s in range(1, 101, 10)]  # 0.33 ... 3.2
    assert ch.offscale_points([ch.Series("t", "s", climb), ch.Series("v", "s", overfit)]) == [set(), set()]
    spike = [(float(s), 850.0 if s == 50 else 2.0 - s / 100) for s in range(1, 101)]
    plateau = [(float(s), 1.2e6 if s >= 30 else 2.0 - s / 100) for s in range(1, 101)]  # a jump, then held there
    assert ch.offscale_points([ch.Series("t", "s", spike)]) == [{49}]
    assert ch.offscale_points([ch.Series("t", "s", plateau)]) == [set(range(29, 100))]
    log = []
    for s in range(10, 1001, 10):
        log.append({"step": s, "epoch": s / 500, "loss": 850.0 if s == 500 else 0.05 * 1.05 ** max(0, s / 10 - 40),
                    "learning_rate": 1e-4})
        if s % 100 == 0:
            log.append({"step": s, "epoch": s / 500, "eval_loss": 0.3 + 0.003 * s, "eval_accuracy": 0.7})
    svg = loss_svg(build_report_of(write_trainer_state(tmp_path / "low", log, 1000)))
    assert len(svg_titles(svg, "offscale")) == 1  # the spike; the climb to 3.9 and the val rise to 3.3 on scale
    assert max(float(t) for t in re.findall(r'text-anchor="end">([\d.]+)</text>', svg)) >= 3
    assert '<div class="muted small">▲ 1 point off scale (max 850 at optimizer step 500), drawn at the top edge</div>' \
        in svg


def test_a_spike_in_a_long_log_stays_off_scale_with_its_logged_value_and_step(tmp_path):
    """thin_line averaged a spike into its bucket before the off-scale rule saw it (review of the visual fixes): a
    loss of 850 at step 10,001 of a 20k-step log (2.3 -> 0.3) drew no off-scale mark, the bucket mean 22.7 set the
    axis to ~22 and flattened every curve; at 200k steps a 1e4 spike read 'max 26.5 at step 100k' (never logged). An
    off-scale point of the raw log is in no mean: it stays as logged, marked at the top edge and captioned."""
    from loratune.report import charts as ch

    log = []
    for s in range(1, 20001):
        log.append({"step": s, "epoch": s / 20000, "loss": 850.0 if s == 10001 else float("nan")
                    if 15000 <= s <= 15009 else 0.3 + 2.0 * math.exp(-s / 5000), "learning_rate": 1e-4})
        if s % 1000 == 0:
            log.append({"step": s, "epoch": s / 20000, "eval_loss": 0.5 + 1.8 * math.exp(-s / 6000),
                        "eval_accuracy": 0.5})
    report = build_report_of(write_trainer_state(tmp_path / "spike", log, 20000))
    train = next(c for c in report.curves[0].curves if c.key == "train/loss")
    assert [p for p in train.logged if p[1] > 2.31] == [(10001.0, 850.0)]  # as logged, in no bucket's mean
    svg = loss_svg(report)
    # the exact steps in the tooltips and the caption (the ticks' compact '10k' read a spike at 10,001 as 'step 10k'
    # and NaN at 15,000-15,009 as 'from step 15k to 15k'); the ticks stay compact
    assert [t.split(" (axis top")[0] for t in svg_titles(svg, "offscale")] == [
        "train (as logged): off-scale 850 at optimizer step 10,001"]
    assert max(float(t) for t in re.findall(r'text-anchor="end">([\d.]+)</text>', svg)) < 3
    assert "▲ 1 point off scale (max 850 at optimizer step 10,001), drawn at the top edge" in svg
    assert re.findall(r'class="nonfinite"><title>([^<]*)</title>', svg) == [
        "train (as logged): non-finite (nan/inf) from optimizer step 15,000 to 15,009 (10 points)"]
    assert "10k" in x_ticks(svg) and "10,000" not in x_ticks(svg)
    big = [(float(s), 1e4 if s == 100001 else 1.5) for s in range(1, 200001)]
    thin = ch.thin_line(big)
    assert (100001.0, 1e4) in thin and max(y for x, y in thin if x != 100001.0) == 1.5
    assert len(thin) <= ch.LINE_POINTS + 3


def test_thin_line_means_do_not_overflow_at_the_largest_floats():
    """A bucket's sum of 1e308s overflowed to inf: 500 of 502 points of a 2,000-point line at 1e308 dropped silently
    as non-finite (review of the visual fixes). The means run: each bucket's is 1e308."""
    from loratune.report import charts as ch

    thin = ch.thin_line([(float(s), 1e308) for s in range(2000)])
    assert len(thin) == ch.LINE_POINTS + 2 and all(y == 1e308 for _, y in thin)


def test_train_and_val_non_finite_marks_at_the_same_steps_do_not_hide_each_other():
    """Every series' non-finite marks were drawn at the same y (the top edge + 4): a train and a val loss both NaN
    from step 300 drew one cross over the other (second review of the visual fixes). Each series with non-finite
    marks has its own row, charts.NONFINITE_ROW_PX apart."""
    from loratune.report import charts as ch

    svg = ch.line_chart([ch.Series("train", "s-train", [(s, 2.0 - s / 1000) for s in range(0, 300, 10)],
                                   nonfinite=[float(s) for s in range(300, 401, 10)]),
                         ch.Series("val", "s-val", [(s, 2.1 - s / 1000) for s in range(0, 300, 100)],
                                   nonfinite=[300.0, 400.0])], offscale=True)
    ys = [float(y) for y in re.findall(r'class="nonfinite"><title>[^<]*</title><path d="M[\d.]+,([\d.]+)', svg)]
    assert len(ys) == 2 and ys[1] - ys[0] == ch.NONFINITE_ROW_PX


def test_the_curves_note_says_what_a_sources_train_loss_is(tmp_path):
    """Every non-loratune report said its train loss was 'a line of the training loss as logged ... about one point
    per pixel', yet a CSV has no training log: its train curve is the value at each eval point, legend 'train
    (running mean)' (review of the integrated branch). The note follows the curve: from the log, or at eval points."""
    def text(r) -> str:
        return re.sub(r"\s+", " ", re.sub(r"<[^>]+>", " ", render_run(r)))

    csv = build_report_of(Path(__file__).resolve().parents[1] / "fixtures" / "wrappers"
                          / "st_training_progress_scores.csv")
    assert [c.label for c in csv.curves[0].curves if c.key == "train/loss"] == ["train (running mean)"]
    assert "training loss as logged" not in text(csv) and "one point per pixel" not in text(csv)
    assert ("the train loss is the value recorded with each eval point (the run has no per-step training log)"
            in text(csv))
    log = [{"step": s, "epoch": s / 100, "loss": 2.0 - s / 100, "learning_rate": 1e-4} for s in range(10, 101, 10)]
    log += [{"step": s, "epoch": s / 100, "eval_loss": 1.5, "eval_accuracy": 0.6} for s in (50, 100)]
    logged = build_report_of(write_trainer_state(tmp_path / "logged", log, 100))
    assert "the train loss is a line of the training loss as logged" in text(logged)
