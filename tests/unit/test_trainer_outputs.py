"""Hugging Face Trainer output dirs read the way a fifth hunt (wave 18) found them read wrongly: a run learning at
a large lr read as a collapse, the val size advised where the val metric was missing, a resumed run's restarted lr
paired as a one-knob point, a pair's noise band taken from unrelated runs, a string metric called a number written
as text, and one run given twice read as two."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest

from loratune.cli import main

# a tiny BERT on 4 balanced classes, lr 0.06 linear to 0 over 40 steps, evaluated every 5 steps on 20 rows (the
# hunt's runs/sw_06: macro-F1 0.10 -> 0.783, val loss falling at every eval, train loss 1.387 -> 1.117)
SW06_TRAIN = [1.3867, 1.3449, 1.4628, 1.4597, 1.7095, 1.4145, 1.2625, 1.421, 1.5056, 1.4061, 1.4565, 1.3687, 1.3651,
              1.3647, 1.3769, 1.3509, 1.3469, 1.3997, 1.332, 1.3263, 1.4171, 1.3011, 1.338, 1.3552, 1.2678, 1.2531,
              1.235, 1.2144, 1.1734, 1.1739, 1.1433, 1.0646, 1.1495, 1.069, 1.0676, 1.2304, 1.1307, 1.0242, 1.0678,
              1.1336]
SW06_EVAL = [(1.41545, 0.25, 0.1), (1.38948, 0.25, 0.1), (1.37718, 0.25, 0.1), (1.35061, 0.6, 0.51992),
             (1.26470, 0.3, 0.19697), (1.14135, 0.75, 0.74647), (1.05317, 0.8, 0.78283), (1.02127, 0.8, 0.78283)]


def trainer_log(train=SW06_TRAIN, evals=SW06_EVAL, lr: float = 0.06, metric_keys=("accuracy", "macro_f1"),
                lrs=None) -> list[dict]:
    """A Trainer log_history: a train loss at every step, an eval every 5 steps on 20 rows."""
    n, out = len(train), []
    for s, loss in enumerate(train, start=1):
        rate = lrs[s - 1] if lrs else lr * (1 - (s - 1) / n)
        out.append({"epoch": s / 6, "step": s, "loss": loss, "learning_rate": rate, "grad_norm": 1.0})
        if s % 5 == 0 and s // 5 <= len(evals):
            vloss, acc, f1 = evals[s // 5 - 1]
            point = {"epoch": s / 6, "step": s, "eval_loss": vloss, "eval_runtime": 0.05,
                     "eval_samples_per_second": 400.0}
            point.update({f"eval_{k}": v for k, v in zip(metric_keys, (acc, f1))})
            out.append(point)
    return out


def write_run(folder: Path, log: list[dict], n_classes: int = 4, **state) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    steps = max(p["step"] for p in log)
    (folder / "trainer_state.json").write_text(json.dumps({
        "log_history": log, "global_step": steps, "max_steps": steps, "logging_steps": 1, "eval_steps": 5,
        "train_batch_size": 8, **state}), encoding="utf-8")
    (folder / "config.json").write_text(json.dumps({"num_labels": n_classes}), encoding="utf-8")
    (folder / "adapter_config.json").write_text(json.dumps({
        "peft_type": "LORA", "task_type": "SEQ_CLS", "r": 4, "lora_alpha": 8, "lora_dropout": 0.0,
        "target_modules": ["query", "value"]}), encoding="utf-8")
    return folder


def diagnose_json(capsys, *folders: Path) -> dict:
    capsys.readouterr()
    assert main(["diagnose", *map(str, folders), "--json"]) == 0
    return json.loads(capsys.readouterr().out)


def test_a_run_learning_at_a_large_lr_is_no_collapse(tmp_path, capsys):
    """lr-too-large's second route (lr >= collapse_lr_min, train loss >= 0.8 x ln C) read a run whose macro-F1 rose
    7 noise units and whose val loss fell at every eval as 'collapsed to one class, learning_rate /2'."""
    run = diagnose_json(capsys, write_run(tmp_path / "sw_06", trainer_log()))["runs"][0]
    f = run["features"]["values"]
    assert f["train_loss_vs_chance"] >= 0.8 and f["val_metric_gain_se"] > 7 and f["val_loss_vs_chance"] < 0.8
    assert run["verdict"] == "undertrained"
    lr_large = [x for x in run["findings"] if x["rule_id"] == "lr-too-large"]
    assert lr_large == []


def test_a_run_pinned_at_a_large_lr_still_collapses(tmp_path, capsys):
    """The same route keeps a run whose train and val losses sit at ln C and whose metric never left one class."""
    flat_train = [math.log(4) * (1 + 0.01 * math.sin(s)) for s in range(40)]
    flat_eval = [(math.log(4) * (1 + 0.002 * (i % 2)), 0.25, 0.1) for i in range(8)]
    run = diagnose_json(capsys, write_run(tmp_path / "pinned", trainer_log(flat_train, flat_eval)))["runs"][0]
    assert run["verdict"] == "lr-too-large"
    assert run["findings"][0]["route"] == ["an lr far above the usual range with the train loss pinned near "
                                           "ln(classes) and the val metric and loss not learning"]


def _advice(run: dict) -> dict[str, list[str]]:
    return {a["signal"]: a["rules"] for a in run["advice"]}


def test_a_run_with_no_val_metric_is_advised_to_log_one_not_its_known_val_size(tmp_path, capsys):
    """A plain Trainer (no compute_metrics) run with its val size read (20 rows) was advised 'the val size (for
    eval-too-noisy): keep eval_runtime and eval_samples_per_second in the log', never to log a val metric."""
    run = diagnose_json(capsys, write_run(tmp_path / "lossonly", trainer_log(metric_keys=())))["runs"][0]
    assert run["facts"]["val_n"]["value"] == 20
    advice = _advice(run)
    assert advice.get("a val metric (macro-F1 or accuracy)") == ["eval-too-noisy"]
    assert "the val size" not in advice
    how = next(a["how"] for a in run["advice"] if a["signal"] == "a val metric (macro-F1 or accuracy)")
    assert "compute_metrics" in how and "average='macro'" in how


def test_a_run_with_a_metric_and_no_val_size_is_still_advised_the_val_size(tmp_path, capsys):
    log = [{k: v for k, v in p.items() if k not in ("eval_runtime", "eval_samples_per_second")}
           for p in trainer_log()]
    run = diagnose_json(capsys, write_run(tmp_path / "nosize", log))["runs"][0]
    assert "val_n" not in run["facts"]
    assert "eval-too-noisy" in _advice(run).get("the val size", [])


def test_scikit_learn_names_accuracy_score_is_read_and_f1_score_is_said_not_read(tmp_path, capsys):
    """eval_accuracy_score / eval_f1_score (compute_metrics returning sklearn's function names) gave no val metric.
    accuracy_score is a share of rows; f1_score does not say its averaging (sklearn's default is 'binary')."""
    run = diagnose_json(capsys, write_run(tmp_path / "oddonly", trainer_log(
        metric_keys=("accuracy_score", "f1_score"))))["runs"][0]
    assert run["features"]["details"]["val_metric"] == "val/accuracy"
    assert run["features"]["values"]["val_metric_best"] == 0.8
    assert any(n.startswith("eval_f1_score not read as macro-F1: its name does not say its averaging")
               for n in run["notes"])
    assert "a val metric (macro-F1 or accuracy)" not in _advice(run)


def test_a_run_whose_lr_restarted_is_no_one_knob_lr_point(tmp_path, capsys):
    """A run resumed with a longer max_steps (lr 0.03 decaying to 0 at step 21, then 0.01425 decaying again) was the
    middle lr point between two runs that decayed once: its schedule, not its lr alone, differs."""
    resumed = [0.03 * (1 - (s - 1) / 20) if s <= 21 else 0.01425 * (1 - (s - 22) / 19) for s in range(1, 41)]
    ext = write_run(tmp_path / "ext", trainer_log(lrs=resumed))
    low = write_run(tmp_path / "low", trainer_log(lr=0.015))
    high = write_run(tmp_path / "high", trainer_log(lr=0.06))
    out = diagnose_json(capsys, ext, low, high)
    assert out["runs"][0]["facts"]["lr_restart_step"]["value"] == 21
    assert "lr_restart_step" not in out["runs"][1]["facts"]
    groups = out["comparison"]["groups"]
    lr_groups = [sorted(r["run"] if isinstance(r, dict) else r[0] for r in g["runs"]) for g in groups
                 if g["knob"] == "learning_rate"]
    assert lr_groups == [["high", "low"]]
    assert any("compared only with runs that restarted at the same step: ext (restarts after step 21)" in n
               for n in out["comparison"]["notes"])


def test_a_string_metric_is_said_non_numeric_and_ignored_not_a_number_written_as_text(tmp_path, capsys):
    """compute_metrics returning {"report": "ok"} was noted as '8 ... values written as text (e.g. "2.3"), not as
    numbers'; a quoted number still is."""
    log = trainer_log()
    for p in log:
        if "eval_loss" in p:
            p["eval_report"] = "ok"
    log[0]["loss"] = "1.3867"
    run = diagnose_json(capsys, write_run(tmp_path / "strmetric", log))["runs"][0]
    assert "non-numeric values (text that is no number) under eval_report: ignored" in run["notes"]
    assert any(n.startswith('1 loss, rate or eval values written as text (e.g. "2.3")') for n in run["notes"])
    assert run["verdict"] == "undertrained"


def test_the_callbacks_record_and_its_trainer_output_dir_are_one_run(tmp_path, capsys):
    """`diagnose out out/loratune`: LoratuneCallback's record inside a Trainer output dir was read as a second run,
    both in the pooled noise of the comparison."""
    from loratune.history_io import CALLBACK_RECORD_DIR, load_run
    from loratune.store import CALLBACK_RECORD_SOURCE

    out = write_run(tmp_path / "cbmulti", trainer_log())
    rec = out / CALLBACK_RECORD_DIR
    rec.mkdir()
    h = load_run(out)
    rows = [{"step": p["step"], **{k: v for k, v in p.items() if k != "step"}} for p in h.points]
    (rec / "history.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    (rec / "run.json").write_text(json.dumps({"status": "completed", "source": CALLBACK_RECORD_SOURCE,
                                              "config": h.config, "steps_planned": 40, "steps_done": 40}),
                                  encoding="utf-8")
    assert load_run(rec).source == CALLBACK_RECORD_SOURCE
    cmp = diagnose_json(capsys, out, rec)["comparison"]
    same = [n for n in cmp["notes"] if "the same run as cbmulti" in n]
    assert len(same) == 1 and "left out of the knob comparison" in same[0]
    assert "root mean square" not in cmp["features"]["details"]["noise_source"]  # one run's SE, not two pooled


def test_runs_that_differ_in_no_compared_knob_alone_are_said_to_differ_in_their_keys(tmp_path, capsys):
    """k_r4 vs k_do (lora_dropout), k_do vs k_lr (lora_dropout and the lr): the comparison said only 'no two runs
    differ in exactly one of learning_rate, r, lora_alpha, seed', never which keys it found differing."""
    base = write_run(tmp_path / "k_r4", trainer_log(lr=0.06))
    drop = write_run(tmp_path / "k_do", trainer_log(lr=0.06))
    adapter = json.loads((drop / "adapter_config.json").read_text())
    (drop / "adapter_config.json").write_text(json.dumps({**adapter, "lora_dropout": 0.1}))
    lr = write_run(tmp_path / "k_lr", trainer_log(lr=0.03))
    (lr / "adapter_config.json").write_text(json.dumps({**adapter, "lora_dropout": 0.1, "r": 4}))
    notes = diagnose_json(capsys, base, drop)["comparison"]["notes"]
    assert ("no two runs differ in exactly one of learning_rate, r, lora_alpha, seed: k_do vs k_r4 differ in "
            "lora_dropout") in notes
    notes = diagnose_json(capsys, base, lr)["comparison"]["notes"]
    assert any(n.endswith("k_lr vs k_r4 differ in learning_rate, lora_dropout") for n in notes)


def test_a_run_with_no_val_metric_and_no_val_size_is_advised_both(tmp_path, capsys):
    """A plain Trainer run with eval_runtime / eval_samples_per_second dropped lacks the metric AND the size that
    eval-too-noisy reads: it was advised the val metric only (the val size, still unknown, went unsaid)."""
    log = [{k: v for k, v in p.items() if k not in ("eval_runtime", "eval_samples_per_second")}
           for p in trainer_log(metric_keys=())]
    run = diagnose_json(capsys, write_run(tmp_path / "lossonly_nosize", log))["runs"][0]
    assert "val_n" not in run["facts"] and run["features"]["details"].get("val_metric") is None
    advice = _advice(run)
    assert advice.get("a val metric (macro-F1 or accuracy)") == ["eval-too-noisy"]
    assert advice.get("the val size") == ["eval-too-noisy"]
    order = [a["signal"] for a in run["advice"]]
    assert order.index("a val metric (macro-F1 or accuracy)") < order.index("the val size")


def _cosine_with_restarts(peak: float, cycles: int, n: int = 40, warm: int = 5) -> list[float]:
    """transformers' cosine_with_restarts schedule: a linear warm-up, then `cycles` cosine decays to 0."""
    out = []
    for step in range(n):
        p = (step - warm) / (n - warm)
        out.append(peak * step / warm if step < warm else
                   peak * max(0.0, 0.5 * (1 + math.cos(math.pi * ((cycles * p) % 1.0)))))
    return out


def test_one_restarting_schedule_logged_at_different_intervals_pairs(tmp_path, capsys):
    """The same cosine_with_restarts schedule read 'restarts after step 23 / 22 / 21' logged every 1 / 2 / 3 steps, so
    two runs differing only in lr, logged at different intervals, were no lr pair; a run restarting elsewhere
    (3 cycles: after step 17) still pairs with none of them."""
    def every(k: int, lr: float, cycles: int = 2) -> list[dict]:
        return [p for p in trainer_log(lrs=_cosine_with_restarts(lr, cycles)) if p["step"] % k == 0 or "eval_loss" in p]

    hi = write_run(tmp_path / "hi", every(1, 0.06))
    lo2 = write_run(tmp_path / "lo_log2", every(2, 0.03))
    lo3 = write_run(tmp_path / "lo_log3", every(3, 0.015))
    three = write_run(tmp_path / "three_cycles", every(1, 0.12, cycles=3))
    out = diagnose_json(capsys, hi, lo2, lo3, three)
    facts = {r["run"] if "run" in r else r["name"]: r["facts"] for r in out["runs"]}
    assert [(facts[n]["lr_restart_step"]["value"], facts[n]["lr_restart_step_by"]["value"])
            for n in ("hi", "lo_log2", "lo_log3", "three_cycles")] == [(23, 23), (22, 23), (21, 23), (17, 17)]
    lr_groups = [sorted(r["run"] for r in g["runs"]) for g in out["comparison"]["groups"]
                 if g["knob"] == "learning_rate"]
    assert lr_groups == [["hi", "lo_log2", "lo_log3"]]
    assert any("lo_log3 (restarts after step 21-23)" in n and "three_cycles (restarts after step 17)" in n
               for n in out["comparison"]["notes"])


def test_a_csv_and_a_trainer_dir_that_agree_are_said_to_agree_not_to_differ_in_no_key(tmp_path, capsys):
    """A CSV (step, losses, metrics and its learning_rate column) beside a Trainer dir at the same lr: no key both
    know differs, the adapter's keys are the dir's alone, and the note read 'm1 vs run differ in no key both know'."""
    log = trainer_log(lr=0.002)
    evals = {p["step"]: p for p in log if "eval_loss" in p}
    rows = ["step,train_loss,val_loss,val_macro_f1,val_accuracy,learning_rate"]
    for p in log:
        if "loss" in p:
            e = evals.get(p["step"], {})
            rows.append(",".join(str(x) for x in (p["step"], p["loss"], e.get("eval_loss", ""),
                                                  e.get("eval_macro_f1", ""), e.get("eval_accuracy", ""),
                                                  p["learning_rate"])))
    csv_run = tmp_path / "run.csv"
    csv_run.write_text("\n".join(rows) + "\n", encoding="utf-8")
    notes = diagnose_json(capsys, write_run(tmp_path / "m1", log), csv_run)["comparison"]["notes"]
    assert ("no two runs differ in exactly one of learning_rate, r, lora_alpha, seed: m1 vs run agree on every key "
            "both know (learning_rate, lr_scheduler_type); the other keys are known to one run only") in notes
    assert not any("no key both know" in n for n in notes)


def test_a_pairs_noise_is_its_own_runs_not_a_run_passed_beside_it(tmp_path, capsys):
    """The noise band was the RMS of every measured run's SE, so a run passed beside a pair moved the pair's verdict:
    k_r4 vs k_a8 (macro-F1 0.783 vs 0.600 on 20 rows) 1.77 noise units, a tie; with k_r8 (r=8, 200 val rows, an r
    group of its own) passed beside them, 2.2 units, no tie. Each group is held against its own runs' noise."""
    base = write_run(tmp_path / "k_r4", trainer_log())
    a8 = write_run(tmp_path / "k_a8", trainer_log(evals=[(v, a, min(f, 0.6)) for v, a, f in SW06_EVAL]))
    adapter = json.loads((a8 / "adapter_config.json").read_text())
    (a8 / "adapter_config.json").write_text(json.dumps({**adapter, "lora_alpha": 16}))
    big_val = [{**p, "eval_samples_per_second": 4000.0} if "eval_loss" in p else p for p in trainer_log()]
    r8 = write_run(tmp_path / "k_r8", big_val)
    (r8 / "adapter_config.json").write_text(json.dumps({**adapter, "r": 8}))

    def se(p: float, n: int) -> float:
        q = (p * n + 1) / (n + 2)  # features.binomial_se
        return math.sqrt(q * (1 - q) / n)

    own = math.sqrt((se(0.78283, 20) ** 2 + se(0.6, 20) ** 2) / 2)
    three, two = (diagnose_json(capsys, *runs)["comparison"] for runs in ((base, a8, r8), (base, a8)))
    for cmp in (three, two):
        assert [f["rule_id"] for f in cmp["findings"] if not f.get("suppressed_by")] == ["differences-within-noise"]
        assert cmp["features"]["values"]["alpha_effect_noise"] == pytest.approx((0.78283 - 0.6) / own, rel=1e-3)
        assert cmp["features"]["values"]["max_effect_noise"] == pytest.approx(1.77, abs=0.01)
        alpha = next(g for g in cmp["groups"] if g["knob"] == "lora_alpha")
        assert alpha["noise"] == pytest.approx(own, rel=1e-3)
        assert "root mean square of 2 runs' SE" in alpha["noise_source"]
    r_group = next(g for g in three["groups"] if g["knob"] == "r")
    assert r_group["noise"] == pytest.approx(math.sqrt((se(0.78283, 20) ** 2 + se(0.78283, 200) ** 2) / 2), rel=1e-3)
    assert three["features"]["values"]["noise"] < own  # the comparison's noise over all three runs, as before
