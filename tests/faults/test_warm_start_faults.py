"""train.init_from given something a warm start cannot start from: the run's own output folder (which the run clears),
a damaged saved folder. Each is a UserError (exit 2) said before a record starts, in the dry run too, and the saved
model the user pointed at stays whole."""

from __future__ import annotations

import hashlib
import shutil

from loratune.cli import main

from support import flat, overrides


def _digest(folder) -> dict[str, str]:
    return {p.name: hashlib.sha256(p.read_bytes()).hexdigest() for p in sorted(folder.iterdir()) if p.is_file()}


def test_init_from_inside_the_runs_own_output_dir_is_refused(trained, tiny_bert, intent_data, tmp_path, capsys):
    """A copy of a run trained on into itself: the run would clear adapter/ (RunStore.create) before its first step
    and its record would name a starting model that is gone."""
    run = tmp_path / "runC"
    shutil.copytree(trained, run)
    before = _digest(run / "adapter")
    capsys.readouterr()
    for dry in (["--dry-run"], []):
        assert main(["train", "-q", *dry, *overrides(tiny_bert, intent_data, run, max_steps=4,
                                                     init_from=run / "adapter")]) == 2
        err = flat(capsys.readouterr().err)
        assert "train.init_from:" in err and "inside train.output_dir" in err and "copy it elsewhere" in err
        assert "Traceback" not in err
        assert _digest(run / "adapter") == before  # the starting model is still there
    # init_from the output folder itself is inside it too
    assert main(["train", "-q", "--dry-run", *overrides(tiny_bert, intent_data, run / "adapter",
                                                        init_from=run / "adapter")]) == 2
    # a copy elsewhere starts the run
    shutil.copytree(run / "adapter", tmp_path / "start")
    assert main(["train", "-q", *overrides(tiny_bert, intent_data, run, max_steps=4, eval_steps=4,
                                           init_from=tmp_path / "start")]) == 0


def test_a_damaged_init_from_folder_is_a_user_error(trained, tiny_bert, intent_data, tmp_path, capsys):
    """What a run killed while saving leaves: no weights file, a truncated one, a half-written adapter_config.json.
    Each is refused naming the file (exit 2, the dry run too), not huggingface_hub's, safetensors' or json's
    traceback."""
    adapter = trained / "adapter"
    cases = {}
    no_weights = tmp_path / "no_weights"
    no_weights.mkdir()
    shutil.copy(adapter / "adapter_config.json", no_weights)
    cases[no_weights] = f"{no_weights} has adapter_config.json but no weights file"
    truncated = tmp_path / "truncated"
    shutil.copytree(adapter, truncated)
    (truncated / "adapter_model.safetensors").write_bytes((adapter / "adapter_model.safetensors").read_bytes()[:300])
    cases[truncated] = f"{truncated / 'adapter_model.safetensors'} is unreadable (SafetensorError"
    half = tmp_path / "half"
    shutil.copytree(adapter, half)
    (half / "adapter_config.json").write_text("{\n")
    cases[half] = f"{half / 'adapter_config.json'} is unreadable (JSONDecodeError"
    capsys.readouterr()
    for folder, needle in cases.items():
        for dry in (["--dry-run"], []):
            assert main(["train", "-q", *dry, *overrides(tiny_bert, intent_data, tmp_path / "out", max_steps=4,
                                                         init_from=folder)]) == 2, folder
            err = flat(capsys.readouterr().err)
            assert f"train.init_from: {needle}" in err and "fix:" in err and "Traceback" not in err
        assert not (tmp_path / "out" / "run.json").exists()


def test_a_recorded_run_that_started_inside_its_own_output_dir_still_loads(trained, tmp_path):
    """Runs an older loratune made that way: their config.yaml names an init_from inside output_dir; evaluate and
    predict read it as a recorded config (the warm start it names was overwritten by the run's own model)."""
    import pytest
    import yaml

    from loratune.config import load_config
    from loratune.errors import UserError

    cfg = yaml.safe_load((trained / "config.yaml").read_text())
    cfg.setdefault("train", {})["init_from"] = str(trained / "adapter")
    cfg["train"]["output_dir"] = str(trained)
    path = tmp_path / "config.yaml"
    path.write_text(yaml.safe_dump(cfg))
    assert load_config(path, recorded=True).train.init_from is None
    with pytest.raises(UserError, match="inside train.output_dir"):
        load_config(path)


def test_init_from_a_runs_adapter_its_record_does_not_vouch_for_is_refused(trained, tiny_bert, intent_data, tmp_path,
                                                                           capsys):
    """adapter/ of a run folder holding another step than its run.json names (store.adapter_step: what predict
    refuses) is refused as a starting model, by train.init_from and by tune's continued long run; the same folder
    copied out on its own (a plain peft adapter folder, no run.json beside it) starts a run."""
    import json
    from types import SimpleNamespace

    from loratune.search.protocol.finish import saved_model
    from loratune.store import SAVED_STEP

    run = tmp_path / "runX"
    shutil.copytree(trained, run)
    step = json.loads((run / "run.json").read_text())["saved_model"]["step"]
    rec = SimpleNamespace(run_dir=str(run), result=SimpleNamespace(best={"step": step}))
    assert saved_model(rec) == str(run / "adapter")
    (run / "adapter" / SAVED_STEP).write_text(json.dumps({"step": step + 1}))
    capsys.readouterr()
    assert main(["train", "-q", *overrides(tiny_bert, intent_data, tmp_path / "out", max_steps=4, eval_steps=4,
                                           init_from=run / "adapter")]) == 2
    err = flat(capsys.readouterr().err)
    assert "train.init_from:" in err and "is not a model its run recorded" in err
    assert f"holds the model of step {step + 1}" in err and "Traceback" not in err
    assert saved_model(rec) is None
    shutil.copytree(run / "adapter", tmp_path / "plain")
    assert main(["train", "-q", *overrides(tiny_bert, intent_data, tmp_path / "out2", max_steps=4, eval_steps=4,
                                           init_from=tmp_path / "plain")]) == 0


def test_a_run_refused_for_its_init_from_says_nothing_of_replacing_the_earlier_run(trained, tiny_bert, intent_data,
                                                                                   tmp_path, capsys):
    """The note "held a completed run ...: replaced by this run" was said before the model loaded; then init_from
    (saved at another r) was refused and the earlier run was left whole. The note is said when the run clears it."""
    run = tmp_path / "keep"
    shutil.copytree(trained, run)
    before = _digest(run / "adapter")
    capsys.readouterr()
    assert main(["train", "-q", *overrides(tiny_bert, intent_data, run, max_steps=4, r=8,
                                           init_from=trained / "adapter")]) == 2
    err = flat(capsys.readouterr().err)
    assert "train.init_from:" in err and "replaced by this run" not in err, err
    assert _digest(run / "adapter") == before
    assert main(["train", "-q", *overrides(tiny_bert, intent_data, run, max_steps=2, eval_steps=2)]) == 0
    assert f"{run} held a completed run" in flat(capsys.readouterr().err)
