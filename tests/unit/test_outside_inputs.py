"""Outside runs the readers met in the wild and fell over on: each is read, or refused with a message (exit 2), never
a traceback; and a share metric logged on a 0-100 scale is read as a share."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest

from loratune.cli import main
from loratune.errors import UserError
from loratune.history_io import load_run


def _state(folder: Path, log: list[dict]) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "trainer_state.json").write_text(json.dumps({"log_history": log}), encoding="utf-8")
    return folder


def test_a_first_loss_far_above_any_ln_classes_gives_no_class_count(tmp_path, capsys):
    # an MSE regression or an exploded run: exp(1000) overflowed the class estimate
    run = _state(tmp_path / "big", [{"step": 5, "loss": 1000.0}, {"step": 10, "eval_loss": 900.0},
                                    {"step": 20, "loss": 500.0}, {"step": 20, "eval_loss": 450.0}])
    assert "n_classes" not in load_run(run).meta
    assert main(["diagnose", str(run)]) == 0
    assert "verdict:" in capsys.readouterr().out


def test_a_negative_val_loss_is_summarised(tmp_path, capsys):
    # a Gaussian NLL goes below 0: its relative rise is undefined (None), which the summary compared with 0
    run = _state(tmp_path / "neg", [{"step": 10, "loss": 0.5}, {"step": 10, "eval_loss": 0.2},
                                    {"step": 20, "loss": 0.1}, {"step": 20, "eval_loss": -0.3},
                                    {"step": 30, "loss": -0.2}, {"step": 30, "eval_loss": -0.1}])
    assert main(["diagnose", str(run)]) == 0
    assert "val loss: 0.200 -> min -0.300" in capsys.readouterr().out


def test_log_entries_whose_step_is_not_a_number_are_skipped_and_said(tmp_path):
    run = _state(tmp_path / "s", [{"step": "10", "loss": 0.9}, {"step": 10, "eval_loss": 0.8},
                                  {"step": None, "loss": 0.7}, {"step": 20, "loss": 0.5},
                                  {"step": 20, "eval_loss": 0.6}])
    h = load_run(run)
    assert [p["step"] for p in h.points] == [10, 20] and h.points[1]["train/loss"] == 0.5
    assert "train/loss" not in h.points[0]  # its one train log had a string step
    assert any("2 log_history entries with a step that is not a finite number" in n for n in h.notes)


def test_train_windows_follow_the_step_order_between_evals(tmp_path):
    # each eval's window is the train logs after the previous eval, up to its own step, in step order (a log written
    # out of order gave a window's first loss and its lr in file order: a reversed diverged run read healthy)
    log = [{"step": 4, "loss": 1.0, "learning_rate": 1e-3}, {"step": 2, "loss": 3.0, "learning_rate": 2e-3},
           {"step": 5, "eval_loss": 0.9}, {"step": 10, "loss": 0.5, "learning_rate": 1e-4},
           {"step": 7, "loss": 0.7, "learning_rate": 5e-4}, {"step": 10, "eval_loss": 0.6}]
    p = load_run(_state(tmp_path / "w", log)).points
    assert (p[0]["train/loss_first"], p[0]["train/loss_last"], p[0]["train/loss"]) == (3.0, 1.0, 2.0)
    assert (p[1]["train/loss_first"], p[1]["train/loss_last"], p[1]["lr"], p[1]["lr_max"]) == (0.7, 0.5, 1e-4, 5e-4)


@pytest.mark.parametrize("scale", [1.0, 100.0])
def test_a_share_metric_on_a_0_100_scale_is_read_as_a_share(tmp_path, scale):
    acc, f1 = [0.62, 0.71, 0.74], [0.55, 0.66, 0.70]
    log = []
    for i, (a, f) in enumerate(zip(acc, f1)):
        log += [{"step": 10 * (i + 1), "loss": 1.0 - 0.2 * i},
                {"step": 10 * (i + 1), "eval_loss": 0.9 - 0.1 * i, "eval_accuracy": a * scale, "eval_f1": f * scale,
                 "eval_runtime": 1.0, "eval_samples_per_second": 500.0}]
    h = load_run(_state(tmp_path / f"t{scale:g}", log))
    assert [p["val/accuracy"] for p in h.points] == pytest.approx(acc)
    assert [p["val/macro_f1"] for p in h.points] == pytest.approx(f1)
    assert any("val/accuracy logged on a 0-100 scale" in n for n in h.notes) == (scale > 1)
    csv = tmp_path / f"t{scale:g}.csv"
    csv.write_text("step,train_loss,val_loss,val_accuracy\n"
                   + "".join(f"{10 * (i + 1)},{1.0 - 0.2 * i},{0.9 - 0.1 * i},{a * scale}\n"
                             for i, a in enumerate(acc)),
                   encoding="utf-8")
    assert [p["val/accuracy"] for p in load_run(csv).points] == pytest.approx(acc)


def test_a_csv_step_of_inf_or_nan_is_a_bad_cell(tmp_path):
    csv = tmp_path / "inf.csv"
    csv.write_text("step,train_loss,val_loss\n10,1.0,1.1\ninf,0.5,0.9\nnan,0.4,0.8\n30,0.3,0.7\n", encoding="utf-8")
    h = load_run(csv)
    assert [p["step"] for p in h.points] == [10, 30]  # a row number would put them before step 10
    assert any("2 non-numeric cells ignored" in n for n in h.notes)
    assert any("2 row(s) without a step number left out" in n for n in h.notes)


def test_csv_rows_of_one_step_merge_keeping_the_first_value_and_bad_steps_are_refused(tmp_path):
    """Two rows at step 10 showed row 1's losses beside row 2's F1, and the curve joined them by value."""
    csv = tmp_path / "dup.csv"
    csv.write_text("step,train_loss,val_loss,val_f1\n10,2.0,1.9,0.2\n10,1.5,1.4,0.5\n20,1.0,,\n20,,1.1,0.7\n",
                   encoding="utf-8")
    h = load_run(csv)
    assert [(p["step"], p.get("train/loss"), p.get("val/loss"), p.get("val/macro_f1")) for p in h.points] == \
        [(10, 2.0, 1.9, 0.2), (20, 1.0, 1.1, 0.7)]  # a train row and an eval row of one step are one point
    assert any("3 value(s) given again" in n for n in h.notes)
    for step in ("-10", "10.5"):
        bad = tmp_path / "bad.csv"
        bad.write_text(f"step,train_loss\n{step},1.0\n20,0.5\n", encoding="utf-8")
        with pytest.raises(UserError, match=f"step {step} is not a count of optimizer steps"):
            load_run(bad)


def test_a_file_that_is_not_utf8_or_not_readable_is_refused_by_name(tmp_path, monkeypatch, capsys):
    csv = tmp_path / "u16.csv"
    csv.write_bytes("step,train_loss,val_loss\n10,1.0,1.1\n20,0.5,0.9\n".encode("utf-16"))
    with pytest.raises(UserError, match="is not UTF-8 text"):
        load_run(csv)
    assert main(["diagnose", str(csv)]) == 2
    assert "fix: save it as UTF-8" in capsys.readouterr().err
    ok = _state(tmp_path / "ok", [{"step": 10, "loss": 0.5}, {"step": 10, "eval_loss": 0.4}])
    real = Path.read_text

    def denied(self, *a, **k):  # as root, chmod 000 still reads: the OS's refusal, simulated
        if self.name == "trainer_state.json":
            raise PermissionError(13, "Permission denied", str(self))
        return real(self, *a, **k)

    monkeypatch.setattr(Path, "read_text", denied)
    assert main(["diagnose", str(ok)]) == 2
    err = capsys.readouterr().err
    assert "cannot read" in err and "trainer_state.json': permission denied" in err and "Traceback" not in err


def test_an_adapter_config_with_a_rank_of_zero_or_less_gives_no_scale(tmp_path):
    run = _state(tmp_path / "rs", [{"step": 10, "loss": 0.5}, {"step": 10, "eval_loss": 0.4}])
    (run / "adapter_config.json").write_text(json.dumps({"r": -4, "lora_alpha": 8, "use_rslora": True}))
    assert "lora_scale" not in load_run(run).facts


def test_runs_whose_config_json_says_different_class_counts_are_no_knob_experiment(tmp_path):
    import shutil

    from loratune.diagnose import compare

    fixtures = Path(__file__).resolve().parents[1] / "fixtures" / "external" / "trainer"
    runs = []
    for name, k in (("banking77-triple-good-base", 10), ("banking77-triple-good-lr4", 10),
                    ("banking77-triple-good-r4", 10)):
        run = tmp_path / name
        shutil.copytree(fixtures / name, run)
        runs.append(run)
    for n_classes, grouped in ((10, True), (35, False)):  # the same dataset, or the lr run from another one
        for run, k in zip(runs, (10, n_classes, 10)):
            (run / "config.json").write_text(json.dumps({"model_type": "bert", "id2label": {
                str(i): f"c{i}" for i in range(k)}}), encoding="utf-8")
        c = compare(runs)
        knobs = {g.knob for g in c.groups}
        assert ("learning_rate" in knobs) == grouped, (n_classes, knobs)
        assert "r" in knobs  # base and r4 stay a rank pair either way


@pytest.mark.parametrize("runs", [[], ["one-run"], "one-run"])
def test_api_compare_needs_two_runs(runs):
    from loratune import api

    with pytest.raises(UserError, match="compare needs two or more runs"):
        api.compare(runs)


def test_side_files_only_in_the_newest_checkpoint_are_read(tmp_path):
    # a Trainer run whose model was never saved at the end keeps adapter_config.json in its checkpoints only
    run = _state(tmp_path / "run", [{"step": 10, "loss": 0.5}, {"step": 10, "eval_loss": 0.4}])
    for n, r in ((100, 4), (200, 8)):
        (run / f"checkpoint-{n}").mkdir()
        (run / f"checkpoint-{n}" / "adapter_config.json").write_text(json.dumps({"r": r, "lora_alpha": 16}))
    facts = load_run(run).facts
    assert facts["r"].value == 8 and facts["r"].source == "checkpoint-200/adapter_config.json"
    (run / "adapter_config.json").write_text(json.dumps({"r": 16, "lora_alpha": 16}))  # the run folder's own wins
    assert load_run(run).facts["r"].value == 16


@pytest.mark.parametrize("call, said", [
    (lambda api: api.load_config(None, "r=16"), "overrides: a list of 'key=value' strings"),
    (lambda api: api.load_config({"r": 4}), "config path: a YAML file's path"),
    (lambda api: api.diagnose(["a", "b"]), "api.diagnose reads one run"),
    (lambda api: api.diagnose(None), "run: a folder path"),
    (lambda api: api.train("config.yaml"), "api.train takes a RunConfig"),
    (lambda api: api.assess(None), "api.assess takes a RunConfig"),
    (lambda api: api.predict("run", ["ok", None]), "texts[1] is NoneType"),
    (lambda api: api.predict("run", ["ok"], top_k=0), "top_k (--top-k): a whole number >= 1"),
    (lambda api: api.predict("run", ["ok", " "]), "text 2 of 2 is empty"),
    (lambda api: api.evaluate("run", split=["test"]), "split: one of"),
    (lambda api: api.report(None), "path: a folder path"),
    (lambda api: api.tune(api.load_config(None, []), fixed="r"), "fixed and arms: lists of names"),
])
def test_the_python_api_names_a_wrong_argument(call, said):
    # what a Python caller may hand over: each was a TypeError / AttributeError deep inside, or (a str) read one
    # character at a time
    from loratune import api

    import re

    with pytest.raises(UserError, match=re.escape(said)):
        call(api)


def test_a_csv_with_blank_lines_above_its_header_is_read_and_one_with_no_rows_is_refused(tmp_path):
    csv = tmp_path / "blank.csv"
    csv.write_text("\n\nstep,train_loss,val_loss\n10,1.0,1.1\n20,0.5,0.9\n", encoding="utf-8")
    assert [p["step"] for p in load_run(csv).points] == [10, 20]
    csv.write_text("step,train_loss,val_loss\n", encoding="utf-8")
    with pytest.raises(UserError, match="has a header .* and no rows"):
        load_run(csv)


def test_a_commented_out_learning_rate_in_a_notebook_is_not_read():
    # fold AA's Mitbus notebook: `#     learning_rate=2e-5,` and `# learning_rate = 3e-4,` above the live
    # `learning_rate = 3e-4,`: the commented lines made it "several learning rates", none read
    nb = (Path(__file__).resolve().parents[1] / "fixtures" / "external" / "public_aa"
          / "Mitbus__NlpFinalProject__train_t5" / "notebook.ipynb")
    assert load_run(nb).facts["learning_rate"].value == 3e-4


@pytest.mark.parametrize("status,message", [("running", "the run ended (status died)"),  # no live process
                                            ("interrupted", "the run ended (status interrupted)"),
                                            ("failed", "the run ended (status failed)")])
def test_a_run_without_eval_points_is_waited_for_only_while_it_runs(tmp_path, status, message):
    import os

    (tmp_path / "run.json").write_text(json.dumps({"status": status, "pid": os.getpid()}), encoding="utf-8")
    with pytest.raises(UserError, match=re.escape(message)):
        load_run(tmp_path)


def test_an_output_that_is_no_regular_file_is_written_through_not_replaced(tmp_path, capsys):
    """`report RUN -o /dev/null` (or `assess --out`) renamed a temporary file over the device: /dev/null became a
    regular file and every later `> /dev/null` on the machine failed. A FIFO stands in for the device here."""
    import os
    import stat
    import threading

    from loratune.store import write_atomic

    fifo = tmp_path / "out.fifo"
    os.mkfifo(fifo)
    got = []
    reader = threading.Thread(target=lambda: got.append(fifo.read_text(encoding="utf-8")), daemon=True)
    reader.start()
    write_atomic(fifo, "the report")
    reader.join(timeout=10)
    assert got == ["the report"] and stat.S_ISFIFO(os.stat(fifo).st_mode)


@pytest.mark.parametrize("suffix", [".jsonl", ".csv", ".parquet"])
def test_predict_reads_a_named_pipe_of_rows_as_the_file_it_streams(tmp_path, suffix):
    """`predict RUN --file x.jsonl` (or .csv, .parquet) where x is a FIFO (mkfifo, `<(cmd)` behind a link) was refused
    as "not a regular file", while a plain-text pipe and `--file -` were read: read once, as the file it streams."""
    import io
    import os
    import threading

    from loratune.commands.predict import read_texts

    texts = ["lost my card", "what is my balance, please"]
    if suffix == ".jsonl":
        data = "".join(json.dumps({"text": t}) + "\n" for t in texts).encode()
    elif suffix == ".csv":
        data = ("text\n" + "".join(f'"{t}"\n' for t in texts)).encode()
    else:
        import pyarrow as pa
        import pyarrow.parquet as pq

        buf = io.BytesIO()
        pq.write_table(pa.table({"text": texts}), buf)
        data = buf.getvalue()
    fifo = tmp_path / f"x{suffix}"
    for payload, want in ((data, texts), (b"", None)):
        os.mkfifo(fifo)
        writer = threading.Thread(target=lambda: fifo.write_bytes(payload), daemon=True)
        writer.start()
        if want is not None:
            assert read_texts(str(fifo)) == want
        else:  # an empty stream is an empty file
            with pytest.raises(UserError, match=re.escape(f"'{fifo}' is empty")):
                read_texts(str(fifo))
        writer.join(timeout=10)
        fifo.unlink()
