"""A run stopped while it saves a newer best model (kill -9 mid-save): adapter/ still holds the previous best, whole,
and run.json names it; a record that names no model, or another step than adapter/ holds, is refused by predict and
evaluate. The kill is simulated: the model's save is patched to copy the run directory (what a kill -9 at that moment
leaves on disk) after writing the weights, then to fail."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from loratune.cli import main
from loratune.store import ADAPTER_TMP, SAVED_STEP, RunStore

from support import overrides


def _files(folder: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in sorted(folder.iterdir()) if p.is_file()}


class KillMidSave:
    """Patches peft's save so that the first save replacing an earlier saved model writes its weights, then leaves
    `killed` (a copy of the run directory as it is at that moment) and raises."""

    def __init__(self, monkeypatch, out: Path, killed: Path):
        from peft import PeftModel

        self.out, self.killed, self.before, self.record = out, killed, None, None
        original = PeftModel.save_pretrained

        def save(model, folder, *args, **kwargs):
            original(model, folder, *args, **kwargs)  # the new weights are on disk (adapter/ itself, before the fix)
            if self.before is None and self.entry:
                self.before = self.entry
                shutil.copytree(out, killed)
                raise RuntimeError("simulated kill -9 mid-save")

        def entry(model, folder, *args, **kwargs):  # what adapter/ held when this save began
            adapter = out / "adapter"
            self.entry = _files(adapter) if adapter.is_dir() else None
            return save(model, folder, *args, **kwargs)

        monkeypatch.setattr(PeftModel, "save_pretrained", entry)


def test_a_kill_mid_save_keeps_the_previous_best_and_names_it(tiny_bert, intent_data, tmp_path, monkeypatch, capsys):
    out, killed = tmp_path / "run", tmp_path / "killed"
    kill = KillMidSave(monkeypatch, out, killed)
    with pytest.raises(RuntimeError, match="simulated"):  # an unexpected error goes up, after the record is written
        main(["train", "-q", *overrides(tiny_bert, intent_data, out, max_steps=24, eval_steps=2,
                                        learning_rate=2e-2, num_threads=1, slices="false", robustness_probe="false")])
    assert kill.before is not None, "no save replaced an earlier one"
    run = json.loads((killed / "run.json").read_text())
    held = run["saved_model"]["step"]
    # the record names the model adapter/ holds (it said "no model saved" over a complete folder), and says a newer
    # one is being written
    assert held is not None and run["adapter_step"] == held and run["best"]["step"] == held
    assert "is being written" in run["saved_model"]["note"]
    # adapter/ is the previous best, whole (the new weights had replaced its weights beside the old label map)
    assert _files(killed / "adapter") == kill.before
    assert json.loads((killed / "adapter" / SAVED_STEP).read_text()) == {"step": held}
    capsys.readouterr()
    assert main(["predict", str(killed), "lost my card"]) == 0
    # the half-written model is a hidden sibling, removed when the next run starts in the folder
    assert list(killed.glob(f"{ADAPTER_TMP[0]}*{ADAPTER_TMP[1]}"))
    store = RunStore(killed)
    store.create("{}\n")
    store.close()
    assert not list(killed.glob(f"{ADAPTER_TMP[0]}*{ADAPTER_TMP[1]}"))
    # the run that went on failed, and saved its best model at its end: the one run.json names
    final = RunStore(out).read_run()
    assert final["status"] == "failed" and "simulated" in final["reason"]
    step = json.loads((out / "adapter" / SAVED_STEP).read_text())["step"]
    assert final["saved_model"]["step"] == step == final["adapter_step"] and step is not None


def test_a_kill_mid_save_of_an_sft_run_keeps_the_previous_best(tmp_path, monkeypatch):
    from sft_support import tiny_sft_inputs

    model, data = tiny_sft_inputs(tmp_path, val_per_label=2)
    out, killed = tmp_path / "run", tmp_path / "killed"
    kill = KillMidSave(monkeypatch, out, killed)
    args = {"task": "causal-lm", "name_or_path": model, "dataset_name": str(data), "output_dir": str(out),
            "max_steps": 16, "eval_steps": 2, "per_device_train_batch_size": 4, "r": 2, "lora_alpha": 4,
            "max_length": 32, "max_new_tokens": 2, "learning_rate": 1e-2, "num_threads": 1}
    with pytest.raises(RuntimeError, match="simulated"):
        main(["train", "-q", *[f"{k}={v}" for k, v in args.items()]])
    assert kill.before is not None, "no save replaced an earlier one"
    run = json.loads((killed / "run.json").read_text())
    held = run["saved_model"]["step"]
    assert held is not None and run["adapter_step"] == run["best"]["step"] == held
    assert "is being written" in run["saved_model"]["note"]
    assert _files(killed / "adapter") == kill.before
    assert json.loads((killed / "adapter" / SAVED_STEP).read_text()) == {"step": held}


@pytest.mark.parametrize("command", ["predict", "evaluate"])
def test_a_model_the_record_does_not_name_is_refused(command, tiny_bert, intent_data, tmp_path, capsys):
    out = tmp_path / "run"
    assert main(["train", "-q", *overrides(tiny_bert, intent_data, out, num_threads=1, slices="false",
                                           robustness_probe="false")]) == 0
    args = [command, str(out), *(["lost my card"] if command == "predict" else [])]
    run = json.loads((out / "run.json").read_text())
    saved = dict(run["saved_model"])
    # the record says no model is saved (a run stopped while it saved its first one): adapter/ is not used
    run["saved_model"] = {"step": None, "note": "no model saved yet: a newer best is being written"}
    (out / "run.json").write_text(json.dumps(run))
    capsys.readouterr()
    assert main(args) == 2
    err = capsys.readouterr().err
    assert "has no saved model" in err and "Traceback" not in err
    # adapter/ holds another step than the record names (stopped between swapping a model in and recording it)
    run["saved_model"] = saved
    (out / "run.json").write_text(json.dumps(run))
    (out / "adapter" / SAVED_STEP).write_text(json.dumps({"step": saved["step"] + 1}))
    assert main(args) == 2
    err = capsys.readouterr().err
    assert f"holds the model of step {saved['step'] + 1}" in err and f"names the model of step {saved['step']}" in err
    # as recorded: used
    (out / "adapter" / SAVED_STEP).write_text(json.dumps({"step": saved["step"]}))
    assert main(args) == 0


def test_a_kill_right_after_the_swap_leaves_the_newer_best_as_the_saved_model(tiny_bert, intent_data, tmp_path,
                                                                               monkeypatch, capsys):
    """A kill after adapter/ was swapped for the newer best, before run.json was written again: run.json names the
    previous step and says the newer one is being written, adapter/ holds the newer one (the previous one is gone).
    That model is the run's saved model for predict, show and report; it is not refused as unrecorded."""
    import loratune.store as st
    from loratune.report.model import build_run_report as build_report

    out, killed = tmp_path / "run", tmp_path / "killed"
    original, swaps = st._swap_in, []

    def swap(new, target):
        original(new, target)
        swaps.append(json.loads((target / SAVED_STEP).read_text())["step"])
        if len(swaps) == 2:  # the first swap replacing a saved model: what a kill -9 here leaves on disk
            shutil.copytree(out, killed)

    monkeypatch.setattr(st, "_swap_in", swap)
    assert main(["train", "-q", *overrides(tiny_bert, intent_data, out, max_steps=24, eval_steps=2,
                                           learning_rate=2e-2, num_threads=1, slices="false",
                                           robustness_probe="false")]) == 0
    assert len(swaps) >= 2, "no save replaced an earlier one"
    run = json.loads((killed / "run.json").read_text())
    assert (run["saved_model"]["step"], run["saved_model"]["writing"]) == (swaps[0], swaps[1])
    assert json.loads((killed / "adapter" / SAVED_STEP).read_text()) == {"step": swaps[1]}
    assert st.adapter_step(run, killed) == (swaps[1], None)
    capsys.readouterr()
    assert main(["predict", str(killed), "lost my card"]) == 0
    report = build_report(killed)
    assert report.saved_step == swaps[1]
    assert report.saved_model == (report.best.get("step") == swaps[1])
    assert main(["show", str(killed)]) == 0
    shown = capsys.readouterr().out
    assert f"the saved model is step {swaps[0]}'s" not in shown
    # the step being written was never evaluated (a hand-made record): not vouched for
    run["saved_model"]["writing"] = swaps[1] + 1
    (killed / "adapter" / SAVED_STEP).write_text(json.dumps({"step": swaps[1] + 1}))
    (killed / "run.json").write_text(json.dumps(run))
    assert main(["predict", str(killed), "lost my card"]) == 2
    assert f"holds the model of step {swaps[1] + 1}" in capsys.readouterr().err
