"""`loratune diagnose` and `loratune rules` end to end: run directories, CSVs, JSON and terminal output,
threshold overrides, user errors, and no torch import."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

import synth_runs as s
from loratune.cli import main
from loratune.rules import RULES, THRESHOLDS

LABELS = [f"c{i}" for i in range(10)]


def write_run(folder: Path, points, *, lr=1e-4, r=8, alpha=16, seed=42, status="completed") -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "history.jsonl").write_text("".join(json.dumps(p) + "\n" for p in points))
    (folder / "run.json").write_text(json.dumps({"status": status, "task": "single_label", "labels": LABELS}))
    cfg = {"model": {"name_or_path": "embedded:minilm"}, "adapter": {"r": r, "lora_alpha": alpha},
           "train": {"learning_rate": lr, "seed": seed, "output_dir": str(folder)}}
    (folder / "config.yaml").write_text(yaml.safe_dump(cfg))
    return folder


def run_cli(capsys, *argv) -> tuple[int, str, str]:
    code = main(list(argv))
    out = capsys.readouterr()
    return code, out.out, out.err


def test_json_output_for_one_run(tmp_path, capsys):
    d = write_run(tmp_path / "ov", s.overfit())
    code, out, _ = run_cli(capsys, "diagnose", str(d), "--json")
    assert code == 0
    data = json.loads(out)
    run = data["runs"][0]
    assert run["verdict"] == "overfit-capacity" and data["comparison"] is None
    f = run["findings"][0]
    assert f["rule_id"] == "overfit-capacity" and f["moves"] == ["r /2", "-ffn", "lora_dropout up"]
    assert f["confidence_label"] in ("high", "medium")
    assert any(e["feature"] == "val_loss_rise" and e["passed"] for e in f["evidence"])
    assert run["features"]["values"]["n_classes"] == 10


def test_terminal_view_shows_verdict_evidence_against_thresholds_and_next_move(tmp_path, capsys):
    d = write_run(tmp_path / "slow", s.lr_too_small())
    code, out, _ = run_cli(capsys, "diagnose", str(d))
    assert code == 0
    assert "verdict: lr-too-small" in out
    assert "next move: learning_rate x2" in out
    assert "val loss fell" in out and "rule needs <" in out
    assert "not evaluated" in out and "long-tail-collapse" in out  # no per-class data: named, not crashed


def test_runs_differing_in_one_knob_are_compared(tmp_path, capsys):
    a = write_run(tmp_path / "base", s.healthy())
    b = write_run(tmp_path / "lr2", s.undertrained(), lr=2e-4)
    code, out, _ = run_cli(capsys, "diagnose", str(a), str(b), "--json")
    data = json.loads(out)
    groups = data["comparison"]["groups"]
    assert [g["knob"] for g in groups] == ["learning_rate"]
    assert {r["run"] for r in groups[0]["runs"]} == {"base", "lr2"}
    code, out, _ = run_cli(capsys, "diagnose", str(a), str(b))
    assert "comparison" in out and "learning_rate" in out and "binomial" in out


def test_threshold_overrides_from_yaml(tmp_path, capsys):
    d = write_run(tmp_path / "ov", s.overfit())
    t = tmp_path / "t.yaml"
    # the overfit routes this run meets: the val loss's rise, the metric's fall, the flat val loss beside a fitted train
    # loss (a late val fall under late_val_drop_min), a smaller rise far beyond the noise after an early turn, or held
    # beyond the band by every later eval (rise_noise_min)
    t.write_text("thresholds:\n  val_loss_rise_min: 9.0\n  val_metric_drop_min: 0.9\n  late_val_drop_min: -9.0\n"
                 "  rise_noise_strong_min: 1000000.0\n  rise_noise_min: 1000000.0\n")
    code, out, _ = run_cli(capsys, "diagnose", str(d), "--json", "--thresholds", str(t))
    data = json.loads(out)
    assert data["runs"][0]["verdict"] != "overfit-capacity"
    assert data["thresholds_overridden"] == {"val_loss_rise_min": 9.0, "val_metric_drop_min": 0.9,
                                             "late_val_drop_min": -9.0, "rise_noise_strong_min": 1000000.0,
                                             "rise_noise_min": 1000000.0}
    code, out, _ = run_cli(capsys, "diagnose", str(d), "--json")
    assert json.loads(out)["runs"][0]["verdict"] == "overfit-capacity"


@pytest.mark.parametrize("setup, message", [
    (lambda p: p / "missing", "does not exist"),
    (lambda p: (p / "empty").mkdir() or p / "empty", "no history.jsonl, trainer_state.json or TensorBoard"),
    (lambda p: (p / "x.csv").write_text("a,b\n1,2\n") and p / "x.csv", "no loss or metric column"),
    (lambda p: (p / "s.json").write_text("{}") and p / "s.json", "no `log_history`"),
])
def test_bad_input_is_a_user_error(tmp_path, capsys, setup, message):
    code, _, err = run_cli(capsys, "diagnose", str(setup(tmp_path)))
    assert code == 2 and message in err and "fix:" in err


def test_bad_thresholds_file_is_a_user_error(tmp_path, capsys):
    d = write_run(tmp_path / "ov", s.overfit())
    t = tmp_path / "t.yaml"
    t.write_text("overfit_gap: 0.2\n")
    code, _, err = run_cli(capsys, "diagnose", str(d), "--thresholds", str(t))
    assert code == 2 and "unknown threshold 'overfit_gap'" in err and "overfit_gap_min" in err


@pytest.mark.parametrize("text,said", [
    ("diverged_loss_ratio: -5", "got -5; allowed: a number >= 0 (a ratio"),
    ("diverged_loss_ratio: .nan", "got nan; allowed: a finite number"),
    ("osc_metric_drop: .inf", "got inf; allowed: a finite number"),
    ("flag_on: 0", "got 0; allowed: a number > 0 and <= 1 (yes/no features are 0 or 1"),
    ("flag_on: 2", "got 2; allowed: a number > 0 and <= 1"),
    ("nonfinite_min: -1", "got -1; allowed: a number >= 0"),
])
def test_a_threshold_outside_its_meaningful_range_is_refused(text, said, tmp_path, capsys):
    # each was taken: a healthy run read as diverged (flag_on 0, diverged_loss_ratio -5), nan silently off
    d = write_run(tmp_path / "ok", s.healthy())
    t = tmp_path / "t.yaml"
    t.write_text(text + "\n")
    name = text.split(":")[0]
    for argv in (("diagnose", "--json", str(d)), ("rules",)):
        code, out, err = run_cli(capsys, *argv, "--thresholds", str(t))
        assert code == 2 and f"threshold '{name}': {said}" in " ".join(err.split()) and "fix:" in err, err
        assert out == ""


def test_signed_thresholds_still_take_a_negative_value_and_flag_on_1_keeps_the_verdict(tmp_path, capsys):
    d = write_run(tmp_path / "ok", s.healthy())
    code, out, _ = run_cli(capsys, "diagnose", "--json", str(d))
    verdict = json.loads(out)["runs"][0]["verdict"]
    t = tmp_path / "t.yaml"
    t.write_text("flag_on: 1\nosc_metric_drop: -0.5\n")  # a gain or drop in points is signed; a flag is 0 or 1
    code, out, _ = run_cli(capsys, "diagnose", "--json", "--thresholds", str(t), str(d))
    assert code == 0 and json.loads(out)["runs"][0]["verdict"] == verdict


def test_the_callbacks_thresholds_are_checked_as_a_files_are():
    pytest.importorskip("transformers")
    from loratune.integrations.trainer import LoratuneCallback

    with pytest.raises(ValueError, match="threshold 'flag_on': got 0; allowed: a number > 0 and <= 1"):
        LoratuneCallback(thresholds={"flag_on": 0})
    with pytest.raises(ValueError, match="threshold 'diverged_loss_ratio': got nan; allowed: a finite number"):
        LoratuneCallback(thresholds={"diverged_loss_ratio": float("nan")})


def test_csv_with_loose_column_names(tmp_path, capsys):
    rows = ["Global Step;Training Loss;eval_loss;Val F1;notes"]
    for p in s.overfit():
        tl = p.get("train/loss", "")
        rows.append(f"{p['step']};{tl};{p['val/loss']};{p['val/macro_f1']};x")
    path = tmp_path / "curves.csv"
    path.write_text("\n".join(rows) + "\n")
    code, out, _ = run_cli(capsys, "diagnose", str(path), "--json")
    run = json.loads(out)["runs"][0]
    assert code == 0 and run["source"] == "csv"
    notes = " ".join(run["notes"])
    for part in ("'Global Step' -> step", "'Training Loss' -> train/loss", "'eval_loss' -> val/loss",
                 "'Val F1' -> val/macro_f1", "ignored: 'notes'", "taken as macro-F1"):
        assert part in notes
    assert run["verdict"] == "overfit-capacity"  # from the losses alone: no train-eval metric in the CSV
    f = run["findings"][0]
    assert not f["tentative"]
    passed = {e["feature"] for e in f["evidence"] if e["passed"]}
    assert {"train_loss_final_over_start", "val_loss_rise", "val_loss_rise_noise"} <= passed


def test_csv_without_step_uses_row_numbers_and_nan_counts_as_non_finite(tmp_path, capsys):
    path = tmp_path / "c.csv"
    path.write_text("loss,val_loss,accuracy\n2.3,2.3,0.1\n1.5,1.6,0.4\nnan,nan,0.1\n")
    code, out, _ = run_cli(capsys, "diagnose", str(path), "--json")
    run = json.loads(out)["runs"][0]
    assert any(n.startswith("no step column: row numbers (from 1) used as steps") for n in run["notes"])
    assert run["features"]["values"]["nonfinite_values"] == 2
    assert run["verdict"] == "diverged"


def test_csv_without_step_counts_rows_not_steps_in_the_header_and_json(tmp_path, capsys):
    path = tmp_path / "c.csv"
    path.write_text("epoch,loss,eval_loss,eval_accuracy\n0.5,2.0,,\n1,1.5,1.4,0.5\n1.5,1.2,,\n2,1.0,1.1,0.6\n"
                    "2.5,0.9,,\n3,0.8,1.0,0.65\n")
    code, out, _ = run_cli(capsys, "diagnose", str(path))
    assert code == 0 and "3 eval points, 6 rows" in out and "6 steps" not in out
    run = json.loads(run_cli(capsys, "diagnose", str(path), "--json")[1])["runs"][0]
    assert run["step_unit"] == "row"
    with_steps = tmp_path / "s.csv"
    with_steps.write_text("step,loss,eval_loss\n10,2.0,1.9\n20,1.5,1.4\n30,1.2,1.1\n")
    code, out, _ = run_cli(capsys, "diagnose", str(with_steps))
    assert code == 0 and "30 steps" in out
    assert json.loads(run_cli(capsys, "diagnose", str(with_steps), "--json")[1])["runs"][0]["step_unit"] == "step"


def test_torn_history_line_is_tolerated(tmp_path, capsys):
    d = write_run(tmp_path / "torn", s.overfit())
    with open(d / "history.jsonl", "a") as f:
        f.write('{"step": 220, "val/lo')
    code, out, _ = run_cli(capsys, "diagnose", str(d), "--json")
    run = json.loads(out)["runs"][0]
    assert code == 0 and run["verdict"] == "overfit-capacity"
    assert any("torn" in n for n in run["notes"])


def test_rules_command_prints_every_rule_and_threshold(capsys):
    code, out, _ = run_cli(capsys, "rules")
    assert code == 0
    for r in RULES:
        assert r.id in out
    assert "train_loss_late_drop < plateau_late_drop_max" in out
    code, out, _ = run_cli(capsys, "rules", "--json", "--features")
    data = json.loads(out)
    assert [r["id"] for r in data["rules"]] == [r.id for r in RULES]
    assert set(data["thresholds"]) == set(THRESHOLDS)
    assert "train_loss_late_drop" in data["features"] and "r_effect_noise" in data["features"]
    under = next(r for r in data["rules"] if r["id"] == "underfit-capacity")

    def nodes(c):  # every condition of the tree (since the full-fine-tune ranges a gate, `gate: true`, is one)
        yield c
        for sub in c.get("all", []) + c.get("any", []):
            yield from nodes(sub)

    assert {"feature": "train_loss_late_drop", "op": "<", "threshold": "plateau_late_drop_max",
            "required": False} in list(nodes(under["when"]))
    assert any(c.get("gate") for c in nodes(under["when"]))


def test_rules_command_shows_overrides(tmp_path, capsys):
    t = tmp_path / "t.yaml"
    t.write_text("eval_se_max: 0.05\n")
    code, out, _ = run_cli(capsys, "rules", "--json", "--thresholds", str(t))
    assert json.loads(out)["thresholds"]["eval_se_max"] == {"value": 0.05, "default": 0.025,
                                                           "unit": "points", "doc": THRESHOLDS["eval_se_max"].doc}


def test_diagnose_and_rules_do_not_import_torch(tmp_path):
    d = write_run(tmp_path / "ov", s.overfit())
    code = (
        "import sys, io, contextlib\n"
        "from loratune.cli import main\n"
        "buf = io.StringIO()\n"
        "with contextlib.redirect_stdout(buf):\n"
        f"    assert main(['diagnose', {str(d)!r}]) == 0\n"
        f"    assert main(['diagnose', {str(d)!r}, '--json']) == 0\n"
        "    assert main(['rules']) == 0\n"
        "heavy = sorted(m for m in ('torch', 'transformers', 'peft') if m in sys.modules)\n"
        "print('HEAVY', heavy)\n"
    )
    res = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert res.returncode == 0, res.stderr
    assert "HEAVY []" in res.stdout, res.stdout


def _state(logs):
    return json.dumps({"global_step": logs[-1]["step"], "max_steps": 30, "log_history": logs})


def test_trainer_output_dir_uses_the_latest_checkpoint_and_maps_keys(tmp_path, capsys):
    old = tmp_path / "out" / "checkpoint-10"
    new = tmp_path / "out" / "checkpoint-20"
    for d in (old, new):
        d.mkdir(parents=True)
    (old / "trainer_state.json").write_text(_state([{"step": 10, "loss": 1.0}]))
    logs = [{"step": s, "epoch": s / 10, "loss": 2.0 - 0.05 * s, "grad_norm": 1.0, "learning_rate": 1e-4}
            for s in range(1, 21)]
    logs += [{"step": s, "epoch": s / 10, "eval_loss": 2.0 - 0.04 * s, "eval_f1": 0.04 * s, "eval_runtime": 0.5,
              "eval_samples_per_second": 400.0} for s in (5, 10, 15, 20)]
    logs.append({"step": 20, "train_runtime": 3.0, "train_loss": 1.5})
    (new / "trainer_state.json").write_text(_state(sorted(logs, key=lambda e: e["step"])))
    (new / "config.json").write_text(json.dumps({"id2label": {"0": "a", "1": "b", "2": "c"}}))
    code, out, _ = run_cli(capsys, "diagnose", str(tmp_path / "out"), "--json")
    run = json.loads(out)["runs"][0]
    assert code == 0 and run["path"].endswith("checkpoint-20/trainer_state.json")
    v = run["features"]["values"]
    assert v["n_eval_points"] == 4 and v["n_classes"] == 3 and v["val_n"] == 200
    assert v["val_metric_final"] == pytest.approx(0.8)
    assert v["train_loss_final"] == pytest.approx(sum(2.0 - 0.05 * s for s in range(16, 21)) / 5)
    assert any("eval_f1 taken as macro-F1" in n for n in run["notes"])


def test_trainer_nan_losses_and_train_only_logs(tmp_path, capsys):
    logs = [{"step": s, "loss": (float("nan") if s > 6 else 2.0 - 0.1 * s)} for s in range(1, 10)]
    path = tmp_path / "trainer_state.json"
    path.write_text(_state(logs))  # json writes NaN as the NaN token, as the Trainer's json.dump does
    code, out, _ = run_cli(capsys, "diagnose", str(path), "--json")
    run = json.loads(out)["runs"][0]
    assert run["verdict"] == "diverged"
    assert run["features"]["values"]["nonfinite_values"] == 3
    assert any("no evaluation entries" in n for n in run["notes"])


def test_one_thresholds_file_serves_diagnose_and_assess(tmp_path, capsys):
    """A file that also sets assess's long_tail_count (a name `loratune rules` lists) is no unknown threshold to
    diagnose: it takes its own names and reports only those as overridden."""
    d = write_run(tmp_path / "ov", s.overfit())
    t = tmp_path / "t.yaml"
    t.write_text("long_tail_count: 30\nshare_total: 0.2\nval_loss_rise_min: 9.0\n")
    code, out, _ = run_cli(capsys, "diagnose", str(d), "--json", "--thresholds", str(t))
    assert code == 0 and json.loads(out)["thresholds_overridden"] == {"val_loss_rise_min": 9.0}
    t.write_text("long_tail_count: 2.5\n")
    code, _, err = run_cli(capsys, "diagnose", str(d), "--thresholds", str(t))
    assert code == 2 and "threshold 'long_tail_count': got 2.5; allowed: a whole number" in err


@pytest.mark.parametrize("command", ["show", "report"])
def test_show_and_report_read_a_run_whose_config_yaml_is_not_utf8(tmp_path, capsys, command):
    """A run folder whose config.yaml is latin-1 (a hand edit: 'é' as one byte) gave show / report a traceback
    (UnicodeDecodeError: read_text outside the YAML parse's try): the file is no valid YAML, said in a note."""
    d = write_run(tmp_path / "run", s.overfit())
    (d / "config.yaml").write_bytes("model:\n  name_or_path: caf\u00e9\n".encode("latin-1"))
    argv = [command, str(d)] + (["-o", str(tmp_path / "r.html")] if command == "report" else [])
    code, out, err = run_cli(capsys, *argv)
    assert code == 0 and "Traceback" not in err
    assert command == "report" or "config.yaml is not valid YAML" in out + err
