"""`tune --thresholds`: the study's threshold overrides reach every decision tune takes (no training).

The trial's own diagnosis goes through the real `TrainingRunner` with its training loop replaced by one that writes a
scripted curve (`synth_runs.underfit`: verdict underfit-capacity on the defaults, healthy once its
`underfit_metric_max` is lowered), so the verdict, and the capacity decision the protocol takes on it, come from the
diagnosis engine with the study's thresholds. The stages' own reads (seed noise) and the LoRA-vs-full decision go
through the context's tables."""

from __future__ import annotations

import dataclasses
import math
from types import SimpleNamespace

import pytest

from loratune.search.budget import Budget, CostModel, Meter
from loratune.search.context import SearchContext
from loratune.search.protocol import ProtocolSettings, run_protocol
from loratune.search.runner import TrainingRunner
from loratune.thresholds import tables_with
from memory_store import MemoryStore
from synth_runs import underfit
from test_protocol import START, World, lr_binds, make_ctx

FLIP = {"underfit_metric_max": 0.06}  # underfit()'s best val macro-F1 is above it: not an underfit on these


def _scripted_train(cfg, dataset, store, progress=False, callback=None):
    """A training loop that writes the underfit curve as a finished run (every eval point through the callback, as
    train.train does, so the pruning Watch diagnoses it too)."""
    points = underfit()
    best = max(points, key=lambda p: p.get("val/macro_f1", 0.0))
    run = {"status": "running", "steps_planned": points[-1]["step"], "objective": "val/macro_f1",
           "params": {"total": 1_000_000, "trainable": 13_000, "adapter": 8_000, "adapted_weights": 300_000}}
    store.path.mkdir(parents=True, exist_ok=True)
    for p in points:
        store.append_history(p)
        run.update(steps_done=p["step"], examples_seen=p["examples_seen"])
        if callback is not None and p["step"] > 0:
            callback.on_eval(p, run)
    store.write_run({**run, "status": "completed", "best": best})


@pytest.fixture
def scripted_training(monkeypatch):
    import loratune.tasks

    monkeypatch.setattr(loratune.tasks, "recipe", lambda cfg, step: _scripted_train)
    # the objective of a single-label classifier, without importing the training loop (torch) to resolve it
    monkeypatch.setattr(TrainingRunner, "objective", property(lambda self: "val/macro_f1"))


def _runner(thresholds):
    from loratune.config import load_config

    dataset = SimpleNamespace(label_space=SimpleNamespace(multi_label=False), prompt_set=None)
    return TrainingRunner(load_config(None, []), dataset, thresholds=thresholds)


def _capacity(tmp_path, tables):
    runner = _runner(tables["diagnosis"])
    ctx = SearchContext(store=MemoryStore(tmp_path), runner=runner, meter=Meter(Budget.parse("2trials")),
                        trial_examples=1000, costs=CostModel(), thresholds=tables)
    run_protocol(ctx, START, ProtocolSettings(full_probe=False, seeds=1, pair=False, lr_probe=False))
    return ctx


def test_a_diagnosis_threshold_override_flips_the_trial_verdict_and_the_capacity_decision(tmp_path, scripted_training):
    default = _capacity(tmp_path / "default", tables_with(None))
    d = next(x for x in default.decisions if x["kind"] == "capacity-verdict")
    assert default.records[0].result.verdict == "underfit-capacity"
    assert d["code"] == "capacity-underfit-unconfirmed"

    tuned = _capacity(tmp_path / "tuned", tables_with(FLIP))
    d = next(x for x in tuned.decisions if x["kind"] == "capacity-verdict")
    assert [r.result.verdict for r in tuned.records] == ["healthy"] * len(tuned.records)
    assert d["code"] == "capacity-adequate" and d["data"]["verdict"] == "healthy"


def test_the_runner_compares_with_the_studys_thresholds(monkeypatch):
    """The comparison of runs differing in one knob (the pair experiment) reads the study's thresholds too."""
    import loratune.diagnose

    got = []

    def compare(runs, *, thresholds=None, **kw):
        got.append(thresholds)
        raise ValueError("no runs to compare")  # the runner reads a failed comparison as none

    monkeypatch.setattr(loratune.diagnose, "compare", compare)
    tables = tables_with(FLIP)
    assert _runner(tables["diagnosis"]).compare(["a", "b"]) is None
    assert got == [tables["diagnosis"]] and got[0]["underfit_metric_max"] == 0.06


def test_a_seed_noise_threshold_override_changes_the_noise_decision():
    world = lr_binds()
    world.SEED_OFFSET = {42: 0.0, 43: -0.025, 44: 0.02}  # sigma ~0.023: above the default seed_std_max 0.02
    ctx, _ = make_ctx(world)
    run_protocol(ctx, START, ProtocolSettings(full_probe=False))
    assert next(x for x in ctx.decisions if x["kind"] == "noise")["code"] == "seed-unstable-lr-kept"

    ctx, _ = make_ctx(world)
    ctx.thresholds = tables_with({"seed_std_max": 0.05})
    run_protocol(ctx, START, ProtocolSettings(full_probe=False))
    d = next(x for x in ctx.decisions if x["kind"] == "noise")
    assert d["code"] == "seed-noise-measured"
    assert ctx.state["final"].point["train.learning_rate"] == 4e-3


def test_the_lora_vs_full_decision_reads_the_studys_thresholds():
    world = lr_binds()
    ctx, _ = make_ctx(world)
    run_protocol(ctx, START, ProtocolSettings())
    default = {r["id"]: r for r in ctx.state["lora_vs_full"]["reasons"]}

    ctx, _ = make_ctx(world)
    ctx.thresholds = tables_with({"share_total": 0.0, "share_adapted": 0.0})
    run_protocol(ctx, START, ProtocolSettings())
    tuned = {r["id"]: r for r in ctx.state["lora_vs_full"]["reasons"]}
    assert default.keys() == tuned.keys()
    assert any(default[k]["holds"] != tuned[k]["holds"] for k in default), (default, tuned)


def test_the_pair_reads_binding_ratio_min_from_the_studys_thresholds():
    """tune's pair decided with its own ProtocolSettings.binding_ratio (1.5), whatever --thresholds set
    binding_ratio_min to: an lr effect 1.33x the rank's read "both knobs matter" under a 1.2 override too."""
    def f1(p):
        # (deltas beyond the noise band 0.02: an lr delta of 0.02 exactly is within it, objectives.beyond_noise)
        return 0.5 + 0.024 * math.log2(p["train.learning_rate"] / 1e-3) + 0.018 * math.log2(p["adapter.r"] / 8)

    def pair(tables):
        ctx, _ = make_ctx(World(f1, lambda p: "lr-too-small" if p["train.learning_rate"] < 4e-3 else "healthy"))
        ctx.thresholds = tables
        run_protocol(ctx, START, ProtocolSettings(full_probe=False))
        return ctx.state["pair"]

    default, tuned = pair(tables_with(None)), pair(tables_with({"binding_ratio_min": 1.2}))
    assert default["lr_delta"] == pytest.approx(0.024) and default["r_delta"] == pytest.approx(0.018)
    assert default["how"].startswith("both knobs matter (ratio < 1.5")
    assert tuned["binding"] == "optimization" and tuned["how"].startswith("|lr delta| >= 1.2 x |r delta|")
    assert "binding_ratio" not in {f.name for f in dataclasses.fields(ProtocolSettings)}  # one value, one place


def test_the_scale_step_reads_max_scale_from_the_studys_thresholds():
    """tune's phase 2 capped the scale with its own ProtocolSettings.max_scale (4), a copy of a cap the diagnosis
    rule update-too-weak did not have: one threshold, max_scale, that --thresholds sets for both."""
    from loratune.rules import THRESHOLDS
    from test_protocol import World, _lr_peak
    from loratune.stepsize import scale_of

    assert "max_scale" not in {f.name for f in dataclasses.fields(ProtocolSettings)}
    world = World(lambda p: 0.70 + (0.05 if scale_of(p) >= 4 else 0.0) + _lr_peak(p), lambda p: "healthy",
                  loss=lambda p: 1.0, gap=0.12)  # lr barely moves the loss, gap over weak_gap_min: too weak
    ctx, runner = make_ctx(world)
    run_protocol(ctx, START, ProtocolSettings(full_probe=False, seeds=1, pair=False))
    assert next(x for x in ctx.decisions if x["kind"] == "alpha")["code"] == "scale-step-kept"  # s 2 -> 4 <= 4

    ctx, runner = make_ctx(world)
    ctx.thresholds = tables_with({"max_scale": 3.0})
    run_protocol(ctx, START, ProtocolSettings(full_probe=False, seeds=1, pair=False))
    d = next(x for x in ctx.decisions if x["kind"] == "alpha")
    assert d["code"] == "scale-adequate" and d["move"] == "keep scale 2"
    assert "scale already at its maximum (x2 would pass max_scale 3)" in d["evidence"]
    assert not any(s.purpose.startswith("scale") for s in runner.calls)
    assert THRESHOLDS["max_scale"].value == 4.0
    # rsLoRA r=8 at s 2 holds alpha 5.66 (3 digits: s 2.0011): its x2 is the cap, and the step is taken
    rs = dataclasses.replace(START, point={**START.point, "adapter.r": 8, "adapter.lora_alpha": 5.66,
                                           "adapter.use_rslora": True})
    ctx, runner = make_ctx(world)
    run_protocol(ctx, rs, ProtocolSettings(full_probe=False, seeds=1, pair=False))
    assert next(x for x in ctx.decisions if x["kind"] == "alpha")["code"] != "scale-adequate"
    assert any(s.purpose.startswith("scale") for s in runner.calls)  # the step s 2 -> 4 was tried


def test_a_pair_delta_equal_to_the_noise_band_is_within_it():
    """The pair read `max(|deltas|) <= noise` beside beyond_noise(r delta): an r delta equal to the band (0.02 as
    0.020000000000000018) bound 'capacity' and then kept the incumbent. The one rule: equal is within noise."""
    def f1(p):
        return 0.5 + 0.005 * math.log2(p["train.learning_rate"] / 1e-3) + 0.02 * math.log2(p["adapter.r"] / 8)

    ctx, _ = make_ctx(World(f1, lambda p: "lr-too-small" if p["train.learning_rate"] < 4e-3 else "healthy"))
    ctx.thresholds = tables_with(None)
    run_protocol(ctx, START, ProtocolSettings(full_probe=False))
    pair = ctx.state["pair"]
    assert pair["r_delta"] == pytest.approx(0.02) and pair["noise"] == pytest.approx(0.02)
    assert pair["binding"] == "neither" and pair["how"].startswith("both |deltas| <= noise")


def test_a_trial_is_read_back_with_the_thresholds_its_study_judged_it_by(tmp_path, scripted_training, capsys):
    """A study tuned with --thresholds decided a trial healthy, while `show` / `diagnose` / `report` of that trial and
    its TensorBoard verdict text read it with the defaults (lr-too-small in the hunter's study): the trial's run.json
    recorded nothing of the overrides. The trial records them (rules.RUN_THRESHOLDS_KEY), every reader of the run
    uses them and says so; an explicit --thresholds on diagnose wins and the output says the run was judged by
    others."""
    import json

    from loratune.cli import main
    from loratune.diagnose import diagnose
    from loratune.report.model import build_diagnosis
    from loratune.rules import RUN_THRESHOLDS_KEY
    from loratune.search.runner import TrialSpec
    from loratune.store import RunStore
    from loratune.trackers import verdict_text

    run_dir = tmp_path / "t"
    res = _runner(tables_with(FLIP)["diagnosis"]).run(TrialSpec("start", "phase1-lr-grid", {}), run_dir)
    assert res.verdict == "healthy"
    assert RunStore(run_dir).read_run()[RUN_THRESHOLDS_KEY] == FLIP  # the overrides only, in one place
    d = diagnose(run_dir)
    assert d.verdict == "healthy" and dict(d.thresholds_overridden) == FLIP
    assert "judged by" in d.thresholds_note and "underfit_metric_max=0.06" in d.thresholds_note
    assert verdict_text(run_dir)[0] == "healthy"  # the trackers' verdict
    view = build_diagnosis(str(run_dir))  # report and show
    assert view.verdict == "healthy" and "underfit_metric_max=0.06" in view.thresholds_note
    assert main(["diagnose", str(run_dir), "--json"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert out["runs"][0]["verdict"] == "healthy" and out["runs"][0]["thresholds_overridden"] == FLIP
    # an explicit file wins (the defaults here), and says the run was judged by others
    empty = tmp_path / "defaults.yaml"
    empty.write_text("underfit_metric_max: 0.6\n")
    assert main(["diagnose", str(run_dir), "--thresholds", str(empty), "--json"]) == 0
    run = json.loads(capsys.readouterr().out)["runs"][0]
    assert run["verdict"] == "underfit-capacity" and run["thresholds_overridden"] == {}
    assert any("judged by others" in n and "underfit_metric_max=0.06" in n for n in run["notes"])
    # a trial of a study without overrides records nothing: read with the defaults, no note
    plain = tmp_path / "plain"
    assert _runner(tables_with(None)["diagnosis"]).run(TrialSpec("s", "phase1-lr-grid", {}), plain).verdict \
        == "underfit-capacity"
    assert RUN_THRESHOLDS_KEY not in RunStore(plain).read_run() and diagnose(plain).thresholds_note == ""


def test_an_old_trial_of_a_study_is_read_with_the_study_s_thresholds(tmp_path, scripted_training, capsys):
    """A trial trained before trials recorded their thresholds (no rules.RUN_THRESHOLDS_KEY in its run.json) was read
    by `diagnose study/trials/00-start` with the defaults (underfit-capacity) while `show study` said the study's
    verdict (healthy): a trial folder of a study (study.db beside trials/) falls back to the study's stored
    --thresholds, with the note; its assess names are not the diagnosis's and are left to assess. Read from the
    SQLite file: no Optuna import for a plain run."""
    import json
    import subprocess
    import sys

    from loratune.cli import main
    from loratune.diagnose import diagnose
    from loratune.rules import RUN_THRESHOLDS_KEY
    from loratune.search.runner import TrialSpec
    from loratune.search.study import Study
    from loratune.store import TRIAL_RUN_DIR_ATTR, RunStore

    study_dir = tmp_path / "study"
    study = Study.open(study_dir, meta={"strategy": "protocol", "thresholds": {**FLIP, "hard_probe_f1": 0.5}})
    trial = study_dir / "trials" / "00-start"
    # the study lists it (a study moved since: its recorded path is elsewhere, its name is the study's trial's)
    study.optuna.ask().set_user_attr(TRIAL_RUN_DIR_ATTR, "/moved/from/study/trials/00-start")
    _runner(tables_with(FLIP)["diagnosis"]).run(TrialSpec("start", "phase1-lr-grid", {}), trial)
    store = RunStore(trial)
    rec = store.read_run()
    del rec[RUN_THRESHOLDS_KEY]  # as a trial trained before this change left it
    (trial / "run.json").write_text(json.dumps(rec))
    d = diagnose(trial)
    assert d.verdict == "healthy" and dict(d.thresholds_overridden) == FLIP
    assert d.notes[0] == f"thresholds: the ones this run was judged by (its study's ({study_dir / 'study.db'})): " \
        "underfit_metric_max=0.06"
    assert main(["diagnose", str(trial), "--json"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert out["runs"][0]["verdict"] == "healthy" and out["thresholds_overridden"] == FLIP  # the top level too
    # the same run outside a study: the defaults
    import shutil

    lone = tmp_path / "lone" / "00-start"
    shutil.copytree(trial, lone)
    assert diagnose(lone).verdict == "underfit-capacity" and diagnose(lone).thresholds_note == ""
    code = ("import sys; from loratune.diagnose import diagnose; diagnose(sys.argv[1]); "
            "print(sorted(m for m in sys.modules if m.split('.')[0] in ('optuna', 'sqlalchemy', 'torch')))")
    done = subprocess.run([sys.executable, "-c", code, str(trial)], capture_output=True, text=True, check=True)
    assert done.stdout.strip() == "[]"


def _old_trial(tmp_path, study_dir, name, listed):
    """A study (FLIP as its --thresholds) and a run in its trials/<name> that records no thresholds; `listed`: the
    trial names the study's trials record as their run_dir (under the study's own trials/)."""
    import json

    from loratune.rules import RUN_THRESHOLDS_KEY
    from loratune.search.runner import TrialSpec
    from loratune.search.study import Study
    from loratune.store import TRIAL_RUN_DIR_ATTR, RunStore

    study = Study.open(study_dir, meta={"strategy": "protocol", "thresholds": dict(FLIP)})
    for n in listed:
        study.optuna.ask().set_user_attr(TRIAL_RUN_DIR_ATTR, str(study_dir / "trials" / n))
    run = study_dir / "trials" / name
    _runner(tables_with(FLIP)["diagnosis"]).run(TrialSpec("start", "phase1-lr-grid", {}), run)
    rec = RunStore(run).read_run()
    del rec[RUN_THRESHOLDS_KEY]  # as a trial trained before trials recorded them, or a plain `loratune train`
    (run / "run.json").write_text(json.dumps(rec))
    return run


def test_a_run_in_trials_the_study_does_not_list_keeps_the_defaults(tmp_path, scripted_training):
    """A plain `loratune train` run saved as <dir>/trials/mine beside an unrelated study.db was read with the study's
    thresholds (train's own verdict and the same run elsewhere: the defaults) and said "judged by its study's": the
    study's thresholds are a fallback only for a folder its trials record (matched by name)."""
    import shutil

    from loratune.diagnose import diagnose
    from loratune.store import study_meta_of_trial

    study_dir = tmp_path / "study"
    mine = _old_trial(tmp_path, study_dir, "mine", listed=["00-start", "01-lr0.01"])
    assert study_meta_of_trial(mine) is None
    d = diagnose(mine)
    assert d.verdict == "underfit-capacity" and dict(d.thresholds_overridden) == {} and d.thresholds_note == ""
    assert not any("study" in n for n in d.notes)
    # the same run, listed by the study under that name: the study's thresholds
    listed = study_dir / "trials" / "01-lr0.01"
    shutil.copytree(mine, listed)
    assert study_meta_of_trial(listed)[0] == study_dir
    d = diagnose(listed)
    assert d.verdict == "healthy" and dict(d.thresholds_overridden) == FLIP
    assert d.thresholds_note == f"thresholds: the ones this run was judged by (its study's ({study_dir / 'study.db'}))" \
        ": underfit_metric_max=0.06"


def test_a_locked_study_db_reads_the_defaults_with_a_note(tmp_path, scripted_training, monkeypatch):
    """A study.db another connection held (a running tune's write) waited sqlite3's 5 s, then 'database is locked' was
    taken as 'not a study': the defaults with no note. Now: the defaults, said (the study's thresholds could not be
    read, run again when it is idle); a file that is no study stays silent."""
    import sqlite3
    import time

    import loratune.store
    from loratune.diagnose import compare, diagnose
    from loratune.store import StudyDbBusy, study_meta_of_trial

    study_dir = tmp_path / "study"
    trial = _old_trial(tmp_path, study_dir, "00-start", listed=["00-start"])
    assert diagnose(trial).verdict == "healthy"  # idle: the study's thresholds
    monkeypatch.setattr(loratune.store, "STUDY_DB_BUSY_TIMEOUT_S", 0.05)
    holder = sqlite3.connect(study_dir / "study.db", isolation_level=None)
    try:
        holder.execute("BEGIN EXCLUSIVE")
        with pytest.raises(StudyDbBusy):
            study_meta_of_trial(trial, timeout=0.01)
        started = time.monotonic()
        d = diagnose(trial)
        assert time.monotonic() - started < 1.0  # the busy timeout is the constant's, not sqlite3's 5 s
        said = (f"thresholds: the defaults; its study's thresholds could not be read ({study_dir / 'study.db'} is "
                "locked: a tune is writing to it): run again when the study is idle")
        assert d.verdict == "underfit-capacity" and dict(d.thresholds_overridden) == {} and said in d.notes
        assert said in compare([trial, trial]).notes  # a comparison says it too
    finally:
        holder.execute("ROLLBACK")
        holder.close()
    assert diagnose(trial).verdict == "healthy"  # let go: the study's again
    # not a database, or a database with no study in it: not a study, no note
    for content in (b"not sqlite at all", None):
        other = tmp_path / f"other{content is None}"
        (other / "trials").mkdir(parents=True)
        if content is None:
            sqlite3.connect(other / "study.db").close()
        else:
            (other / "study.db").write_bytes(content)
        import shutil

        shutil.copytree(trial, other / "trials" / "00-start")
        d = diagnose(other / "trials" / "00-start")
        assert d.verdict == "underfit-capacity" and not any("study" in n for n in d.notes)


def test_a_recorded_value_the_ranges_now_refuse_is_read_with_a_note_naming_run_json(tmp_path, scripted_training,
                                                                                   capsys):
    """A run.json holding a value the ranges refuse (nonfinite_min 0, taken by an earlier version) made diagnose exit
    2 with 'use the names listed by loratune rules', never naming run.json: a record the user did not write now is
    read as recorded, with a note naming it; what cannot be read at all is exit 2 naming run.json."""
    import json

    from loratune.cli import main
    from loratune.rules import RUN_THRESHOLDS_KEY
    from loratune.search.runner import TrialSpec
    from loratune.store import RunStore

    run_dir = tmp_path / "t"
    _runner(tables_with(FLIP)["diagnosis"]).run(TrialSpec("start", "phase1-lr-grid", {}), run_dir)
    rec = RunStore(run_dir).read_run()
    (run_dir / "run.json").write_text(json.dumps({**rec, RUN_THRESHOLDS_KEY: {**FLIP, "nonfinite_min": 0}}))
    assert main(["diagnose", str(run_dir), "--json"]) == 0
    out = json.loads(capsys.readouterr().out)
    notes = out["runs"][0]["notes"]
    assert out["runs"][0]["verdict"] == "diverged"  # as recorded: every run diverged at nonfinite_min 0
    assert any(n.startswith(f"thresholds recorded in its run.json ({run_dir / 'run.json'}) read as recorded") and
               "threshold 'nonfinite_min' at 0" in n for n in notes)
    for bad in ({"underfit_metric_max": "high"}, {"no_such_threshold": 1}):
        (run_dir / "run.json").write_text(json.dumps({**rec, RUN_THRESHOLDS_KEY: bad}))
        assert main(["diagnose", str(run_dir)]) == 2
        err = capsys.readouterr().err
        assert f"the thresholds recorded in its run.json ({run_dir / 'run.json'}) cannot be read" in err
        assert "remove the entries named" in err


def test_a_study_s_stored_value_the_ranges_now_refuse_is_read_with_a_note():
    """A study set up on main with `noise_fit_max: 1.0` (or any value a later range refuses) could never be resumed:
    tune re-checked the stored overrides as a file's (thresholds.tables_with). A resume reads them as stored
    (thresholds.recorded_tables), with a note naming the study; a file given now is still checked."""
    from loratune.errors import UserError
    from loratune.thresholds import recorded_tables

    tables, notes = recorded_tables({"noise_fit_max": 1.0, "nonfinite_min": 0}, "the study in s")
    assert tables["diagnosis"]["noise_fit_max"] == 1.0 and tables["diagnosis"]["nonfinite_min"] == 0
    assert len(notes) == 1 and notes[0].startswith("thresholds recorded in the study in s read as recorded")
    assert "noise_fit_max" not in notes[0]  # 1.0 is taken now: it switches label-noise's band top off
    assert recorded_tables({"noise_fit_max": 1.0}, "the study in s")[1] == []
    with pytest.raises(UserError, match="invalid thresholds"):
        tables_with({"nonfinite_min": 0})
    with pytest.raises(UserError, match="recorded in the study in s cannot be read: unknown threshold 'nope'"):
        recorded_tables({"nope": 1}, "the study in s")
