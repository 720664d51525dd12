"""Which step's weights adapter/ holds and which step run.json's `best`, `saved_model`, `adapter_step` and
confusion.json describe stay one step whatever stops a run: a Ctrl-C while run.json announces a newer best (it saved
the newer weights under the older step), or right after the newer best is swapped in (it recorded the newer step beside
the older `best` and confusion.json), and a save that fails on an output fault (the final run.json was never written:
`running` over a dead process). The faults are injected: the writer or the swap is patched to raise at that moment."""

from __future__ import annotations

import errno
import json
import re
from pathlib import Path

import pytest

from loratune.cli import main
from loratune.store import SAVED_STEP, RunStore

from support import overrides

SHORT = dict(max_steps=24, eval_steps=2, learning_rate=2e-2, num_threads=1, slices="false", robustness_probe="false")


def _consistent(out: Path) -> int:
    """The step the record names, after checking every part of the record names it."""
    run = json.loads((out / "run.json").read_text())
    step = run["saved_model"]["step"]
    assert step is not None
    assert run["adapter_step"] == run["best"]["step"] == step
    assert json.loads((out / "adapter" / SAVED_STEP).read_text()) == {"step": step}
    assert json.loads((out / "confusion.json").read_text())["step"] == step
    return step


def _evaluated_f1(out: Path, capsys) -> float:
    capsys.readouterr()
    assert main(["evaluate", str(out), "--split", "validation"]) == 0
    return float(re.search(r"val/macro_f1: ([0-9.]+)", capsys.readouterr().out).group(1))


@pytest.mark.parametrize("where", ["announcing", "after the swap"])
def test_ctrl_c_at_a_newer_best_leaves_one_step_everywhere(where, tiny_bert, intent_data, tmp_path, monkeypatch,
                                                           capsys):
    import loratune.store as S

    out, stopped = tmp_path / "run", []
    if where == "announcing":  # the write_run that says a newer best (replacing a saved one) is being written
        real = S.RunStore.write_run

        def write_run(self, run):
            saved = run.get("saved_model") or {}
            if saved.get("writing") is not None and saved.get("step") is not None and not stopped:
                stopped.append(saved["writing"])
                raise KeyboardInterrupt
            return real(self, run)

        monkeypatch.setattr(S.RunStore, "write_run", write_run)
    else:  # the second swap: a newer best is in adapter/, run.json not yet written again
        real_swap, swaps = S._swap_in, []

        def swap(new, target):
            real_swap(new, target)
            swaps.append(json.loads((target / SAVED_STEP).read_text())["step"])
            if len(swaps) == 2:
                stopped.append(swaps[1])
                raise KeyboardInterrupt

        monkeypatch.setattr(S, "_swap_in", swap)
    assert main(["train", "-q", *overrides(tiny_bert, intent_data, out, **SHORT)]) == 130
    assert stopped, "no save replaced an earlier one"
    monkeypatch.undo()
    run = RunStore(out).read_run()
    assert run["status"] == "interrupted" and run["partial"] is True
    # the newest best is the model kept, and everything names it
    assert _consistent(out) == stopped[0]
    point = next(p for p in RunStore(out).read_history() if p["step"] == stopped[0] and "val/macro_f1" in p)
    assert run["best"]["val/macro_f1"] == pytest.approx(point["val/macro_f1"])
    # the weights are that step's: evaluate scores what history recorded for it
    assert _evaluated_f1(out, capsys) == pytest.approx(point["val/macro_f1"], abs=1e-4)


def test_ctrl_c_after_the_swap_in_an_sft_run_leaves_one_step(tmp_path, monkeypatch):
    import loratune.store as S
    from sft_support import tiny_sft_inputs

    model, data = tiny_sft_inputs(tmp_path, val_per_label=2)
    out = tmp_path / "run"
    real_swap, swaps = S._swap_in, []

    def swap(new, target):
        real_swap(new, target)
        swaps.append(json.loads((target / SAVED_STEP).read_text())["step"])
        if len(swaps) == 2:
            raise KeyboardInterrupt

    monkeypatch.setattr(S, "_swap_in", swap)
    args = {"task": "causal-lm", "name_or_path": model, "dataset_name": str(data), "output_dir": str(out),
            "max_steps": 16, "eval_steps": 2, "per_device_train_batch_size": 4, "r": 2, "lora_alpha": 4,
            "max_length": 32, "max_new_tokens": 2, "learning_rate": 1e-2, "num_threads": 1}
    assert main(["train", "-q", *[f"{k}={v}" for k, v in args.items()]]) == 130
    assert len(swaps) >= 2, "no save replaced an earlier one"
    run = json.loads((out / "run.json").read_text())
    assert run["status"] == "interrupted"
    assert run["saved_model"]["step"] == run["adapter_step"] == run["best"]["step"] == swaps[1]
    assert json.loads((out / "adapter" / SAVED_STEP).read_text()) == {"step": swaps[1]}


def _too_large(after: int):
    """A model save that writes `after` models, then fails as a file-size limit makes it (ulimit -f)."""
    import loratune.store as S

    real, seen = S.RunStore.replace_adapter, []

    def replace_adapter(self, step, write):
        seen.append(step)
        if len(seen) > after:
            raise OSError(errno.EFBIG, "File too large")
        return real(self, step, write)

    return replace_adapter


@pytest.mark.parametrize("after", [0, 1])
def test_a_save_failing_on_an_output_fault_still_writes_the_final_record(after, tiny_bert, intent_data, tmp_path,
                                                                        monkeypatch, capsys):
    import loratune.store as S

    out = tmp_path / "run"
    monkeypatch.setattr(S.RunStore, "replace_adapter", _too_large(after))
    assert main(["train", "-q", *overrides(tiny_bert, intent_data, out, **SHORT)]) == 2
    err = capsys.readouterr().err
    assert "largest size allowed" in err and "Traceback" not in err
    monkeypatch.undo()
    run = json.loads((out / "run.json").read_text())
    assert run["status"] == "failed" and run["partial"] is True
    assert run["reason"].startswith("saving the model failed: OSError") and "File too large" in run["reason"]
    assert run["reason"].count("File too large") == 1  # the loop's error and the end's save: the same fault, once
    if after == 0:  # nothing saved, and the record says so
        assert run["saved_model"]["step"] is None and run["adapter_step"] is None
        assert not (out / "adapter").exists()
    else:  # the earlier best is still in adapter/, and named
        assert _consistent(out) is not None
    assert main(["show", str(out)]) == 0
    assert "died" not in capsys.readouterr().out


def test_an_sft_save_failing_on_an_output_fault_still_writes_the_final_record(tmp_path, monkeypatch, capsys):
    import loratune.store as S
    from sft_support import tiny_sft_inputs

    model, data = tiny_sft_inputs(tmp_path, val_per_label=2)
    out = tmp_path / "run"
    monkeypatch.setattr(S.RunStore, "replace_adapter", _too_large(0))
    args = {"task": "causal-lm", "name_or_path": model, "dataset_name": str(data), "output_dir": str(out),
            "max_steps": 4, "eval_steps": 2, "per_device_train_batch_size": 4, "r": 2, "lora_alpha": 4,
            "max_length": 32, "max_new_tokens": 2, "learning_rate": 1e-2, "num_threads": 1}
    assert main(["train", "-q", *[f"{k}={v}" for k, v in args.items()]]) == 2
    assert "largest size allowed" in capsys.readouterr().err
    run = json.loads((out / "run.json").read_text())
    assert run["status"] == "failed" and run["partial"] is True and "File too large" in run["reason"]
    assert run["saved_model"]["step"] is None and run["adapter_step"] is None
