"""bench/throughput.py's rendering (write_markdown) on synthetic runs: the command, seeds and notes come from what
the runs recorded, not from fixed text. No training."""

from __future__ import annotations

import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT / "bench"))

import throughput as bth  # noqa: E402

SPIN = {"wait": "spin", "GOMP_SPINCOUNT": 10000, "others_runnable": 0.0, "reason": "quiet", "applied": True}


def run(arm: str, rnd: int, seed: int, *, omp=None, argv=None, concurrent=False) -> dict:
    r = {"arm": arm, "config": "b", "round": rnd, "seed": seed, "examples_per_s": 100.0 + rnd, "peak_rss_mb": 500.0,
         "val_macro_f1": 0.5, "load_before": 1.0, "wall_s": 10.0, "train_s": 8.0, "eval_s": 1.0, "process_s": 12.0,
         "adapted_modules": ["m"], "concurrent": concurrent, "omp": omp}
    if argv is not None:
        r["argv"] = argv
    return r


def render(runs: list[dict], tmp_path: Path, steps: int = 80, rounds: int = 3) -> str:
    summary = bth.summarize(runs, steps, rounds, 60.0)
    summary.update(runs=runs, device="cpu", cpu_cores=2)
    bth.write_markdown(summary, tmp_path / "t.md")
    return (tmp_path / "t.md").read_text()


def test_old_runs_render_what_they_recorded_not_todays_command_or_notes(tmp_path):
    """pooled_block_ab: rounds 0-2 then --first-round 3, seeds 42-47, omp recorded; the md said `--steps 80
    --rounds 6`, 'seed 42 in round 1, 43 in round 2'."""
    runs = [run(arm, rnd, 42 + rnd, omp="the runtime's default" if arm.startswith("trainer") else SPIN)
            for rnd in range(6) for arm in ("trainer-grouped", "loratune")]
    md = render(runs, tmp_path, rounds=6)
    assert "--rounds" not in md
    assert ("Command not recorded (the runs predate it); as recorded by the runs: `python bench/throughput.py "
            "--steps 80 --configs b --arms trainer-grouped,loratune` over rounds 0-5 (arms one after another)") in md
    assert ("seed 42 in round 0, 43 in round 1, 44 in round 2, 45 in round 3, 46 in round 4, 47 in round 5 "
            "(so the F1") in md
    assert "seed 42 in round 1" not in md
    assert ("How OpenMP threads waited, as each run recorded it (`omp`): trainer-grouped: the runtime's default; "
            "loratune: loratune's choice: spin (GOMP_SPINCOUNT 10,000).") in md
    assert "H200" not in md and "2026-12-04 (bench/gpu_check.sh)" not in md


def test_runs_without_an_omp_record_say_so(tmp_path):
    """throughput_sequential.json: omp None in every run; the re-render claimed today's --omp as-user text."""
    runs = [run(arm, rnd, 42 + rnd, concurrent=None) for rnd in range(2) for arm in ("trainer-grouped", "loratune")]
    md = render(runs, tmp_path, steps=40, rounds=2)
    assert "These runs do not record how OpenMP threads waited" in md
    assert "as each run recorded it" not in md
    assert "(whether the arms ran together is not recorded)" in md
    assert "seed 42 in round 0, 43 in round 1 (so" in md


def test_recorded_argv_is_the_command(tmp_path):
    """New runs record their argv; runs of two invocations (--first-round) show both command lines."""
    a1 = ["--steps", "80", "--rounds", "1", "--configs", "b", "--arms", "trainer-grouped,loratune"]
    a2 = a1 + ["--first-round", "1"]
    runs = [run(arm, 0, 42, argv=a1) for arm in ("trainer-grouped", "loratune")]
    runs += [run(arm, 1, 43, argv=a2) for arm in ("trainer-grouped", "loratune")]
    md = render(runs, tmp_path, rounds=1)
    assert ("Command: `python bench/throughput.py --steps 80 --rounds 1 --configs b --arms trainer-grouped,loratune`"
            "; then `python bench/throughput.py --steps 80 --rounds 1 --configs b --arms trainer-grouped,loratune "
            "--first-round 1`;") in md


def _render_main(monkeypatch, *argv) -> None:
    monkeypatch.setattr(sys, "argv", ["throughput.py", *argv])
    bth.main()


def test_render_writes_beside_its_input_under_its_own_name(tmp_path, monkeypatch):
    """--render X.json wrote bench/results/throughput.{json,md} (the hand-edited page) whatever X was."""
    import json

    runs = [run(a, 0, 42) for a in ("trainer-grouped", "loratune")]
    src = tmp_path / "mine.json"
    src.write_text(json.dumps({"runs": runs, "steps": 80, "rounds": 1, "elapsed_s": 60.0, "cpu_cores": 2}))
    before = (ROOT / "bench" / "results" / "throughput.md").read_text(encoding="utf-8")
    _render_main(monkeypatch, "--render", str(src))
    assert (tmp_path / "mine.md").read_text().startswith("# Training throughput")
    assert json.loads(src.read_text())["runs"] == runs
    assert (ROOT / "bench" / "results" / "throughput.md").read_text(encoding="utf-8") == before


def test_render_refuses_to_overwrite_a_page_with_hand_written_sections(tmp_path, monkeypatch, capsys):
    import json

    import pytest

    src = tmp_path / "throughput.json"
    src.write_text(json.dumps({"runs": [run("loratune", 0, 42)], "steps": 80, "rounds": 1, "elapsed_s": 60.0}))
    page = "# Training throughput\n\n## A session's write-up (by hand)\n\nwords\n\n## Config (b): x\n"
    (tmp_path / "throughput.md").write_text(page)
    with pytest.raises(SystemExit) as e:
        _render_main(monkeypatch, "--render", str(src))
    assert e.value.code == 2
    err = capsys.readouterr().err
    assert "sections written by hand" in err and "## A session's write-up (by hand)" in err and "--out DIR" in err
    assert (tmp_path / "throughput.md").read_text() == page
    _render_main(monkeypatch, "--render", str(src), "--out", str(tmp_path / "elsewhere"))
    assert (tmp_path / "elsewhere" / "throughput.md").is_file()


def test_header_and_notes_say_only_what_the_record_holds(tmp_path):
    """Every CPU record got '2 CPU cores shared with other jobs' (nothing records it), and the notes described
    today's evaluation schedule as the recorded runs'."""
    md = render([run("loratune", 0, 42)], tmp_path, rounds=1)
    assert "2 CPU cores, which may be shared with other jobs (load average per arm below)" in md
    assert "CPU cores shared with other jobs" not in md
    assert "as today's bench runs them, which the recorded runs may predate" in md
    assert "as of today's bench and defaults, which the recorded runs may predate" in md


def test_gpu_notes_state_the_records_seeds_and_examples_not_the_cpu_races(tmp_path):
    """throughput_cuda.json holds 300 steps (9,600 examples) and seeds 42-44; the notes said 'the same configs, data,
    seeds and examples as the CPU race' (80 steps, 2,560 examples)."""
    runs = [run(a, r, 42 + r) for r in range(3) for a in ("trainer-grouped", "loratune")]
    summary = bth.summarize(runs, 300, 3, 60.0)
    summary.update(runs=runs, device="cuda", cpu_cores=16, gpu="NVIDIA H200")
    bth.write_markdown(summary, tmp_path / "c.md")
    md = (tmp_path / "c.md").read_text()
    assert "as the CPU race" not in md
    assert "seed 42 in round 0, 43 in round 1, 44 in round 2, 9600 training examples per arm (300 steps)" in md
