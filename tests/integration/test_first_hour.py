"""The first hour: `loratune train --data DIR` names the verdict and the next commands, the README's
plain-peft recipe runs as written on the run's record, and the Python API has the CLI's verbs."""

from __future__ import annotations

import json
import re
import shutil
from pathlib import Path

import pytest

from loratune import api
from loratune.cli import main
from loratune.config import load_config

from support import overrides

README = Path(__file__).resolve().parents[2] / "README.md"


@pytest.fixture(scope="module")
def trained(tiny_bert, intent_data, tmp_path_factory) -> Path:
    run = tmp_path_factory.mktemp("first-hour") / "run"
    cfg = load_config(None, overrides(tiny_bert, intent_data, run, learning_rate=2e-2, max_steps=16))
    api.train(cfg, progress=False)
    return run


def test_train_with_data_names_the_verdict_and_next_commands(tiny_bert, intent_data, tmp_path, capsys,
                                                             monkeypatch):
    monkeypatch.setenv("COLUMNS", "250")  # one command per line, whatever the temp path's length
    run = tmp_path / "run"
    args = [a for a in overrides(tiny_bert, intent_data, run) if not a.startswith("dataset_name=")]
    assert main(["train", "--quiet", "--data", str(intent_data), *args]) == 0
    out = capsys.readouterr().out
    assert json.loads((run / "run.json").read_text())["status"] == "completed"
    verdict = api.diagnose(run).verdict
    assert re.search(rf"verdict: {re.escape(verdict)}\b", out), out
    for cmd in (f"loratune diagnose {run}", f"loratune report {run}", f'loratune predict {run} "'):
        assert cmd in out, out


def test_data_shorthand_is_dataset_name_and_an_override_wins(intent_data, tmp_path):
    from loratune.cli import build_parser
    from loratune.commands._common import load_cfg

    args = build_parser().parse_args(["train", "--data", str(intent_data)])
    assert load_cfg(args).data.dataset_name == str(intent_data)
    args = build_parser().parse_args(["train", "--data", str(intent_data), f"dataset_name={tmp_path}"])
    assert load_cfg(args).data.dataset_name == str(tmp_path)


def _readme_recipe() -> str:
    text = README.read_text(encoding="utf-8")
    start = text.index("Load a trained adapter without loratune")
    return re.search(r"```python\n(.*?)```", text[start:], re.S).group(1)


def test_the_readme_peft_recipe_runs_as_written(trained, capsys):
    code = _readme_recipe()
    assert 'run = "runs/latest"' in code
    meta = json.loads((trained / "adapter" / "label_map.json").read_text())
    assert Path(meta["base_model_path"]).is_dir() and meta["labels"]
    exec(compile(code.replace('run = "runs/latest"', f"run = {str(trained)!r}"), "README", "exec"), {})
    printed = capsys.readouterr().out.strip()
    assert printed == api.predict(trained, ["I lost my card"])[0]["label"]  # the same model as loratune's


def test_the_readme_peft_recipe_reads_a_label_map_saved_before_base_args(trained, capsys, tmp_path):
    # a run saved before label_map.json carried base_args names only its gguf_file (null for a folder base): the
    # recipe as written must load it too (it raised KeyError: 'base_args')
    old = tmp_path / "old"
    shutil.copytree(trained, old)
    meta = json.loads((old / "adapter" / "label_map.json").read_text())
    meta.pop("base_args")
    meta["gguf_file"] = None
    (old / "adapter" / "label_map.json").write_text(json.dumps(meta))
    exec(compile(_readme_recipe().replace('run = "runs/latest"', f"run = {str(old)!r}"), "README", "exec"), {})
    assert capsys.readouterr().out.strip() == api.predict(trained, ["I lost my card"])[0]["label"]


def test_the_api_has_the_cli_verbs(trained, tiny_bert, intent_data, tmp_path, monkeypatch):
    cfg = load_config(None, overrides(tiny_bert, intent_data, tmp_path / "x"))
    a = api.assess(cfg, probe=False)
    assert a.labels and a.recommendation.overrides
    d = api.diagnose(trained)
    assert d.verdict and d.run
    assert api.compare([trained, trained]).runs
    html = api.report(trained, tmp_path / "r.html", examples=False)
    assert html.is_file() and "<html" in html.read_text()[:500].lower()

    seen = {}

    def fake_tune(cfg, opts, ui=None, *, runner=None, dataset=None):
        seen["opts"] = opts
        return {"recommendation": "x"}

    import importlib

    monkeypatch.setattr(importlib.import_module("loratune.search.tune"), "tune", fake_tune)
    assert api.tune(cfg, budget="2trials", fixed=["r"], study_dir=tmp_path / "s") == {"recommendation": "x"}
    opts = seen["opts"]
    assert opts.budget == "2trials" and opts.explicit_keys == ("adapter.r",)
    assert opts.user_point == {"adapter.r": 4} and opts.study_dir == str(tmp_path / "s")


def test_the_train_summary_names_the_verdict_once(trained, monkeypatch):
    """Most verdicts open with their rule's name ("undertrained: still improving"): the summary line names it once."""
    import io
    from types import SimpleNamespace

    from rich.console import Console

    import loratune.diagnose
    from loratune.commands.train import print_next_steps

    finding = SimpleNamespace(rule_id="undertrained", verdict="undertrained: still improving when the run ended",
                              moves=("epochs up",))
    monkeypatch.setattr(loratune.diagnose, "diagnose", lambda run_dir: SimpleNamespace(primary=finding,
                                                                                       active=(finding,)))
    buf = io.StringIO()
    print_next_steps(Console(file=buf, width=250), str(trained))
    line = next(ln for ln in buf.getvalue().splitlines() if ln.startswith("verdict:"))
    assert line == "verdict: undertrained: still improving when the run ended; next move: epochs up", line


def test_the_train_verdict_line_does_not_contradict_a_completed_record(trained, monkeypatch):
    """The diagnosis' `diverged` rule reads the whole curve with its own thresholds and can fire on a run training's
    guard let finish: the line said "verdict: diverged" under "run completed" (exit 0). It now says the record's
    status and the guard's rule (train.DIVERGENCE_RULE); a run recorded diverged gets the plain line."""
    import io
    from types import SimpleNamespace

    from rich.console import Console

    import loratune.diagnose
    from loratune.commands.train import print_next_steps
    from loratune.train import DIVERGENCE_RULE

    finding = SimpleNamespace(rule_id="diverged", verdict="diverged: non-finite or exploding loss",
                              moves=("learning_rate /10", "check data"))
    monkeypatch.setattr(loratune.diagnose, "diagnose", lambda run_dir: SimpleNamespace(primary=finding,
                                                                                       active=(finding,)))

    def line(status):
        buf = io.StringIO()
        print_next_steps(Console(file=buf, width=400), str(trained), status)
        return next(ln for ln in buf.getvalue().splitlines() if ln.startswith("verdict:"))

    plain = "verdict: diverged: non-finite or exploding loss; next move: learning_rate /10, check data"
    assert line("diverged") == plain
    assert line("completed") == (f"{plain} (the diagnosis' reading of the whole curve; the record says completed: "
                                 f"training stops a run only on {DIVERGENCE_RULE})")


def test_an_inconclusive_train_verdict_says_why_and_the_findings_diagnose_lists(trained, monkeypatch):
    """A multi-label run whose `healthy` was suppressed by eval-metric-unmoved: train printed "inconclusive (no rule
    holds on these curves)" (hard-coded) and hid the active finding's move, while diagnose / show / report said
    "no curve rule stands: healthy suppressed by eval-metric-unmoved" and "check data". The line now reads
    Diagnosis.inconclusive_why, and each active finding follows with its move."""
    import io

    from rich.console import Console

    import loratune.diagnose
    from loratune.commands.train import print_next_steps
    from loratune.diagnose import Diagnosis, Finding

    real = loratune.diagnose.diagnose(trained)
    healthy = Finding("healthy", "curve", "healthy: nothing to fix", "none", (), 10, 0.6, (),
                      suppressed_by="eval-metric-unmoved")
    unmoved = Finding("eval-metric-unmoved", "eval", "the val loss fell but the val metric never rose", "data",
                      ("check data",), 50, 0.7, ())
    d = Diagnosis(real.run, real.source, real.features, (unmoved, healthy), ())
    assert d.primary is None and d.inconclusive_why == "no curve rule stands: healthy suppressed by eval-metric-unmoved"
    monkeypatch.setattr(loratune.diagnose, "diagnose", lambda run_dir: d)
    buf = io.StringIO()
    print_next_steps(Console(file=buf, width=400), str(trained))
    lines = buf.getvalue().splitlines()
    at = next(i for i, ln in enumerate(lines) if ln.startswith("verdict:"))
    assert lines[at] == f"verdict: inconclusive ({d.inconclusive_why})"
    assert lines[at + 1] == ("  also: eval-metric-unmoved (data): the val loss fell but the val metric never rose; "
                             "next move: check data")
    assert lines[at + 2] == "next:"
