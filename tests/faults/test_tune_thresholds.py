"""`loratune tune --thresholds FILE.yaml`: the file checked at once, its overrides stored in the study, a resume
with other overrides refused, a resume without the option continuing with the study's, workers deciding with the
study's, `show` naming them. (What the overrides change in the decisions: tests/unit/test_protocol_thresholds.py.)
No training: the study is stopped right after its checks, as test_tune_faults' resume test does."""

from __future__ import annotations

import sys

import pytest

from loratune.cli import main

from support import flat

OVERRIDES = {"seed_std_max": 0.05, "share_total": 0.2}  # one diagnosis, one LoRA-vs-full threshold


def _file(tmp_path, name: str, text: str):
    path = tmp_path / name
    path.write_text(text, encoding="utf-8")
    return str(path)


@pytest.fixture
def stopped(monkeypatch):
    """tune stops with RuntimeError once its checks passed and the study is open (the first budget parse after its
    threshold tables are built); the threshold tables it goes on with are kept in the returned list."""
    import loratune.search.tune  # noqa: F401 (the package's `tune` is the function)
    import loratune.thresholds

    tune_mod = sys.modules["loratune.search.tune"]
    seen: list[dict] = []
    tables_with = getattr(loratune.thresholds, "tables_with", None)

    recorded_tables = getattr(loratune.thresholds, "recorded_tables", None)

    def spy(overrides):
        seen.append(dict(overrides or {}))
        return tables_with(overrides)

    def spy_recorded(overrides, where):  # a resume builds its tables from the study's record (read as recorded)
        seen.append(dict(overrides or {}))
        return recorded_tables(overrides, where)

    real_budget = tune_mod.Budget

    def stop(text, *a, **k):  # a budget parsed before the tables are built (a resume's guard) is parsed for real
        if not seen:
            return real_budget.parse(text, *a, **k)
        raise RuntimeError("got past the checks")

    monkeypatch.setattr(loratune.thresholds, "tables_with", spy, raising=False)
    monkeypatch.setattr(loratune.thresholds, "recorded_tables", spy_recorded, raising=False)
    monkeypatch.setattr(tune_mod, "Budget", type("B", (), {"parse": staticmethod(stop)}))
    return seen


def _study_meta(study_dir) -> dict:
    from loratune.search.study import Study

    study = Study.open(study_dir, resume=True, worker=True)
    try:
        return study.meta
    finally:
        study.close()


def _new_study(tmp_path, stopped) -> tuple[str, str]:
    # a name at its default value is no override: the study keeps the two that differ
    good = _file(tmp_path, "t.yaml", "seed_std_max: 0.05\nunderfit_metric_max: 0.6\nshare_total: 0.2\n")
    study = str(tmp_path / "s")
    with pytest.raises(RuntimeError, match="got past the checks"):
        main(["tune", "--study-dir", study, "-q", "--thresholds", good])
    return study, good


def test_a_bad_thresholds_file_exits_2_before_the_study_is_made(tmp_path, capsys):
    bad = _file(tmp_path, "bad.yaml", "seed_std_maxx: 0.05\nshare_total: -1\n")
    assert main(["tune", "--study-dir", str(tmp_path / "s"), "--thresholds", bad]) == 2
    err = flat(capsys.readouterr().err)
    assert "unknown threshold 'seed_std_maxx' (did you mean seed_std_max" in err, err
    assert "threshold 'share_total': got -1; allowed: a number >= 0" in err and "Traceback" not in err
    assert not (tmp_path / "s").exists()


def test_the_study_records_the_overrides_and_decides_with_them(tmp_path, stopped):
    study, _ = _new_study(tmp_path, stopped)
    assert _study_meta(study)["thresholds"] == OVERRIDES
    assert stopped[-1] == OVERRIDES  # the tables every decision of the study reads (the first: the file read)


def test_a_resume_with_other_thresholds_is_refused_naming_the_studys(tmp_path, stopped, capsys):
    study, good = _new_study(tmp_path, stopped)
    other = _file(tmp_path, "o.yaml", "seed_std_max: 0.08\n")
    defaults = _file(tmp_path, "d.yaml", "seed_std_max: 0.02\n")  # the default: no override at all
    for given in (other, defaults):
        assert main(["tune", "--resume", "--study-dir", study, "-q", "--thresholds", given]) == 2
        err = flat(capsys.readouterr().err)
        assert ("was set up with the threshold overrides seed_std_max=0.05, share_total=0.2: a resume continues it "
                "as it was") in err and "resume without those options (or with the study's values)" in err, err
    assert _study_meta(study)["thresholds"] == OVERRIDES  # the refusal changed nothing


def test_a_resume_without_thresholds_continues_with_the_studys(tmp_path, stopped):
    study, good = _new_study(tmp_path, stopped)
    for extra in ([], ["--thresholds", good]):  # without the option, or with the same file
        stopped.clear()
        with pytest.raises(RuntimeError, match="got past the checks"):
            main(["tune", "--resume", "--study-dir", study, "-q", *extra])
        assert stopped[-1] == OVERRIDES


def test_a_study_without_overrides_refuses_a_resume_that_brings_some(tmp_path, stopped, capsys):
    study = str(tmp_path / "s")
    with pytest.raises(RuntimeError, match="got past the checks"):
        main(["tune", "--study-dir", study, "-q"])
    assert _study_meta(study)["thresholds"] == {}
    given = _file(tmp_path, "t.yaml", "seed_std_max: 0.05\n")
    assert main(["tune", "--resume", "--study-dir", study, "-q", "--thresholds", given]) == 2
    assert "was set up with no threshold overrides" in flat(capsys.readouterr().err)


def test_a_worker_decides_with_the_studys_overrides_and_refuses_its_own(tmp_path, stopped, monkeypatch, capsys):
    import loratune.search.worker as worker
    import loratune.tasks
    from loratune.config import load_config, to_yaml
    from loratune.search.study import Study

    study, good = _new_study(tmp_path, stopped)
    assert main(["tune", "--worker", "--study-dir", study, "--thresholds", good]) == 2
    assert "(given: --thresholds)" in flat(capsys.readouterr().err)

    s = Study.open(study, resume=True, worker=True)
    s.set_meta(trial_base=to_yaml(load_config(None, [])))
    s.close()
    got = []
    monkeypatch.setattr(loratune.tasks, "recipe", lambda cfg, step: lambda *a, **k: None)  # no data read
    monkeypatch.setattr(worker, "work", lambda study, runner, ui, **k: got.append(runner) or worker.WorkerReport())
    worker.run_worker(study)
    assert got[0].thresholds["seed_std_max"] == 0.05 and got[0].thresholds["underfit_metric_max"] == 0.6


def test_show_names_the_overrides_on_one_line(tmp_path, stopped, capsys):
    study, _ = _new_study(tmp_path, stopped)
    capsys.readouterr()
    main(["show", study])
    out = flat(capsys.readouterr().out)
    assert "thresholds overridden (--thresholds): seed_std_max=0.05, share_total=0.2" in out, out
    assert main(["report", study, "-o", str(tmp_path / "r.html")]) == 0  # the HTML report's header says it too
    assert "thresholds overridden (--thresholds): seed_std_max=0.05, share_total=0.2" in (tmp_path / "r.html").read_text()


def test_a_python_callers_thresholds_are_checked_before_the_study_is_made(tmp_path):
    from loratune import api
    from loratune.config import load_config
    from loratune.errors import UserError

    with pytest.raises(UserError, match="unknown threshold 'seed_std_maxx'"):
        api.tune(load_config(None, []), study_dir=tmp_path / "s", thresholds={"seed_std_maxx": 0.05})
    assert not (tmp_path / "s").exists()


def test_a_python_callers_defaults_are_no_overrides(tmp_path, stopped):
    from loratune import api
    from loratune.config import load_config

    with pytest.raises(RuntimeError, match="got past the checks"):
        api.tune(load_config(None, []), study_dir=tmp_path / "s", thresholds={"seed_std_max": 0.02, "share_total": 0.2})
    assert _study_meta(tmp_path / "s")["thresholds"] == {"share_total": 0.2}
