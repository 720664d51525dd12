"""bench/multi_intent.py's report header (markdown) on synthetic per-seed results: the command is the call that
made the report (a --report-only call trained nothing), the runs' seeds and configs come from what they recorded,
not the fixed 'LoRA r 8, lr 2e-3, batch 32'. No training."""

from __future__ import annotations

import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT / "bench"))

import multi_intent as bm  # noqa: E402

SPLIT = {"rows": 10, "compound": 2, "compound_share": 0.2, "distinct_pairs": 2, "label_rows_min": 1,
         "label_rows_max": 3}
INFO = {"train": SPLIT, "validation": SPLIT, "test": SPLIT, "dropped_by_duplicate_check": 0}


def scores(overrides=None, steps: int = 124) -> dict:
    s = {k: 0.5 for k in ("subset_accuracy", "macro_f1", "micro_f1", "samples_f1", "compound_subset_accuracy",
                          "single_subset_accuracy", "labels_per_row")}
    s.update(wall_s=1.0, examples_seen=steps * 32, steps=steps)
    if overrides is not None:
        s["overrides"] = overrides
    return s


def test_report_only_call_states_each_runs_recorded_seeds_and_config():
    """head_lr rows trained with 3 seeds and --set lr overrides, reported by a --report-only call over 5 seeds: the
    md named the report call as what trained them and fixed 'lr 2e-3'."""
    lr = ["learning_rate=5e-4", "r=4"]
    results = {"multi-focal plain": {s: scores(lr + [f"seed={s}"]) for s in range(5)},
               "multi-focal-head_lr all": {s: scores(lr + [f"seed={s}", "head_learning_rate=2e-2"])
                                           for s in range(3)},
               "combinations": {s: scores() for s in range(5)}}
    record = {"command": "python bench/multi_intent.py --seeds 0 1 2 3 4 --report-only", "report_only": True,
              "epochs": None}
    md = bm.markdown(bm.summarize(results), results, INFO, record)
    assert "r 8, lr 2e-3, batch 32" not in md
    assert ("Scored by `python bench/multi_intent.py --seeds 0 1 2 3 4 --report-only`, which trained nothing"
            in md)
    assert "- multi-focal: seeds 0, 1, 2, 3, 4; 124 steps / 3968 examples; config learning_rate=5e-4 r=4" in md
    assert ("- multi-focal-head_lr: seeds 0, 1, 2; 124 steps / 3968 examples; config learning_rate=5e-4 r=4 "
            "head_learning_rate=2e-2") in md
    assert "- combinations: seeds 0, 1, 2, 3, 4; 124 steps / 3968 examples; config not recorded" in md


def test_training_call_is_the_command():
    results = {"combinations": {0: scores(["learning_rate=2e-3", "seed=0"])}}
    record = {"command": "python bench/multi_intent.py --seeds 0 --epochs 1", "report_only": False, "epochs": 1.0}
    md = bm.markdown(bm.summarize(results), results, INFO, record)
    assert "Command: `python bench/multi_intent.py --seeds 0 --epochs 1`" in md and "1 epochs," in md


def _tiny_data() -> dict:
    rows = [{"text": "a", "labels": ("x",), "parts": ("a",)}, {"text": "b", "labels": ("y",), "parts": ("b",)},
            {"text": "a and b", "labels": ("x", "y"), "parts": ("a2", "b2")}]
    return {"splits": {s: list(rows) for s in ("train", "validation", "test")}, "intents": {"t": ["x", "y"]},
            "dropped": {"validation": 0, "test": 0}}


def _plant(work: Path, name: str, seed: int, epochs: float) -> None:
    """A run already trained by an earlier call: its logits, label map and bench.json."""
    import json

    import numpy as np

    d = work / "runs" / f"{name}-s{seed}"
    (d / "adapter").mkdir(parents=True)
    (d / "adapter" / "label_map.json").write_text(json.dumps({"labels": ["x", "x+y", "y"]}))
    logits = np.array([[3.0, 0, 0], [0, 0, 3.0], [0, 3.0, 0]])
    np.savez(d / "logits.npz", validation=logits, test=logits)
    (d / "bench.json").write_text(json.dumps({"wall_s": 1.0, "examples_seen": 96, "steps": 3, "adapter_step": 3,
                                              "examples_per_s": 9.0,
                                              "overrides": bm.common(epochs, seed) + ["metric_for_best_model=accuracy"]}))


def test_a_training_call_that_trained_nothing_does_not_claim_its_command_and_epochs(tmp_path, monkeypatch):
    """Every asked-for run cached (combinations-s0 trained earlier with 4 epochs), called with --epochs 1: the md said
    'Command: ... --epochs 1' and '1 epochs' though nothing was trained, scored runs not asked for, and rewrote the
    md from scratch, losing its hand-written Reading."""
    work, results = tmp_path / "work", tmp_path / "results"
    results.mkdir()
    monkeypatch.setattr(bm, "build", lambda shared, seed=0: _tiny_data())
    monkeypatch.setattr(bm, "RESULTS", results)
    _plant(work, "combinations", 0, 4.0)
    _plant(work, "combinations-head_lr", 0, 4.0)  # there, but not asked for
    (results / "zz.md").write_text("# old\n\n## Reading (written by hand from the tables)\n\nkept words\n")
    argv = ["--work", str(work), "--seeds", "0", "--epochs", "1", "--runs", "combinations", "--results-name", "zz"]
    assert bm.main(argv) == 0
    md = (results / "zz.md").read_text()
    assert "Command: `" not in md and "1 epochs" not in md
    assert "which trained nothing: the runs were trained earlier" in md
    assert "num_train_epochs=4.0" in md
    assert "- combinations-head_lr:" not in md and "| combinations-head_lr | 0." not in md
    assert md.endswith("## Reading (written by hand from the tables)\n\nkept words\n")
    import json

    rec = json.loads((results / "zz.json").read_text())["record"]
    assert rec["trained"] == [] and rec["epochs"] is None


def test_a_call_that_trained_some_runs_names_them():
    results = {"combinations": {0: scores(["seed=0"]), 1: scores(["seed=1"])}}
    record = {"command": "python bench/multi_intent.py --seeds 0 1 --epochs 1", "report_only": False, "epochs": 1.0,
              "trained": ["combinations-s1"]}
    md = bm.markdown(bm.summarize(results), results, INFO, record)
    assert ("Command: `python bench/multi_intent.py --seeds 0 1 --epochs 1`; it trained combinations-s1 (1 epochs); "
            "combinations-s0 were trained earlier") in md
    assert "LoRA, 1 epochs" not in md


def test_switches_table_leaves_out_pairs_no_run_has():
    """multi_intent_1epoch has no head_lr runs: the table got 'multi-focal-head_lr all | multi-focal all | - | - | -'."""
    results = {"multi-focal plain": {0: scores()}, "multi-focal all": {0: scores()}, "combinations": {0: scores()}}
    md = bm.markdown(bm.summarize(results), results, INFO, {})
    assert "| multi-focal all | multi-focal plain | +0.000" in md
    assert "head_lr" not in md and "| - | - | - |" not in md


def test_committed_1epoch_page_is_its_json_rendered():
    """multi_intent_1epoch.md was never re-rendered: 'LoRA r 8, lr 2e-3, batch 32 ... the same for every run', no
    Runs section."""
    import json

    rec = json.loads((ROOT / "bench" / "results" / "multi_intent_1epoch.json").read_text(encoding="utf-8"))
    text = bm.markdown(rec["summary"], rec["per_seed"], rec["data"], rec.get("record") or {})
    md = (ROOT / "bench" / "results" / "multi_intent_1epoch.md").read_text(encoding="utf-8")
    assert md.startswith(text)
    assert "r 8, lr 2e-3, batch 32" not in md and "## Runs" in md and "head_lr" not in md
