"""A Jupyter notebook's Trainer progress table read as a run: a real Hugging Face `Trainer` run (tiny random-init
BERT, no downloads) with transformers' own NotebookProgressCallback, whose HTML is saved into an .ipynb as Jupyter
saves a display output. IPython is not installed here: a stand-in `IPython.display` keeps what the callback shows."""

from __future__ import annotations

import json
import os
import sys
import types
from pathlib import Path

import pytest

from loratune.cli import main
from loratune.diagnose import compare, diagnose
from loratune.errors import UserError
from loratune.history_io import load_run, read_notebook

from support import tiny_trainer_classifier

os.environ.setdefault("HF_HUB_OFFLINE", "1")


class _Shown:
    """What a notebook keeps of the displays: the last HTML of each display handle, in display order."""

    def __init__(self):
        self.outputs: list[list[str]] = []

    def module(self) -> types.ModuleType:
        shown = self

        class HTML:
            def __init__(self, data):
                self.data = data

        class Handle:
            def __init__(self, slot):
                self.slot = slot

            def update(self, obj):
                shown.outputs[self.slot] = [obj.data]

        def display(obj, display_id=None):
            shown.outputs.append([obj.data])
            return Handle(len(shown.outputs) - 1)

        mod = types.ModuleType("IPython.display")
        mod.HTML, mod.display = HTML, display
        return mod


def _notebook_run(folder: Path, monkeypatch, *, eval_strategy: str, lr: float = 1e-2, steps: int = 40,
                  epochs: int = 4, code: str = "", logging_steps: int = 3,
                  max_steps: int | None = None) -> tuple[Path, Path]:
    """Train with NotebookProgressCallback; returns (notebook path, trainer_state.json of the same run)."""
    shown = _Shown()
    ipython = types.ModuleType("IPython")
    ipython.display = shown.module()
    monkeypatch.setitem(sys.modules, "IPython", ipython)
    monkeypatch.setitem(sys.modules, "IPython.display", ipython.display)
    monkeypatch.delitem(sys.modules, "transformers.utils.notebook", raising=False)
    from transformers import DataCollatorWithPadding, Trainer, TrainingArguments
    from transformers.trainer_callback import ProgressCallback
    from transformers.utils.notebook import NotebookProgressCallback

    tok, train, val, model, metrics = tiny_trainer_classifier(folder, 10)
    out = folder / "out"
    by_steps = eval_strategy == "steps"
    args = TrainingArguments(output_dir=str(out), per_device_train_batch_size=8, per_device_eval_batch_size=32,
                             learning_rate=lr, eval_strategy=eval_strategy, logging_steps=logging_steps,
                             report_to="none", use_cpu=True, save_strategy="no", seed=0, disable_tqdm=True,
                             **({"max_steps": steps, "eval_steps": 8} if by_steps else {"num_train_epochs": epochs}),
                             **({"max_steps": max_steps} if max_steps and not by_steps else {}))
    trainer = Trainer(model=model, args=args, train_dataset=train, eval_dataset=val,
                      data_collator=DataCollatorWithPadding(tok), compute_metrics=metrics)
    trainer.remove_callback(ProgressCallback)
    trainer.add_callback(NotebookProgressCallback)
    trainer.train()
    trainer.evaluate()  # a one-row table with no progress bar: not the run
    trainer.save_state()
    cells = [{"cell_type": "code", "metadata": {}, "execution_count": 1, "outputs": [],
              "source": (code or f"args = TrainingArguments(learning_rate={lr})\n").splitlines(True)},
             {"cell_type": "code", "metadata": {}, "execution_count": 2, "source": ["trainer.train()\n"],
              "outputs": [{"output_type": "display_data", "metadata": {},
                           "data": {"text/html": html[0].splitlines(True),
                                    "text/plain": ["<IPython.core.display.HTML object>"]}}
                          for html in shown.outputs if html[0]]}]
    nb = folder / "train.ipynb"
    nb.write_text(json.dumps({"nbformat": 4, "nbformat_minor": 5, "metadata": {}, "cells": cells}, indent=1))
    return nb, out / "trainer_state.json"


def test_a_step_table_reads_as_the_trainer_state_of_the_same_run(tmp_path, monkeypatch):
    nb, state_file = _notebook_run(tmp_path, monkeypatch, eval_strategy="steps")
    run, state = load_run(nb), load_run(state_file)
    assert run.source == "notebook" and state.source == "hf-trainer"
    evals = [p for p in state.points if "val/loss" in p]
    assert [p["step"] for p in run.points] == [p["step"] for p in evals] == [8, 16, 24, 32, 40]
    for got, want in zip(run.points, evals):
        for key in ("val/loss", "val/accuracy", "val/macro_f1"):  # the table shows 6 decimals
            assert got[key] == pytest.approx(want[key], abs=5e-7), key
        # a row's training loss is the last one logged by its step (logging every 3 steps: step 6 for row 8)
        log = json.loads(state_file.read_text())["log_history"]
        last = [e["loss"] for e in log if "loss" in e and "train_runtime" not in e and e["step"] <= got["step"]][-1]
        assert got["train/loss"] == pytest.approx(last, abs=5e-7)
    assert run.meta["steps_done"] == run.meta["steps_planned"] == 40 and not run.meta.get("partial")
    assert run.facts["learning_rate"].value == 1e-2 and "one literal learning_rate" in run.facts["learning_rate"].source
    assert run.notes[0] == "read the Trainer's progress table 1 of 1 in the notebook's outputs"
    d, ds = diagnose(nb), diagnose(state_file)
    assert d.features["peak_lr"] == 1e-2 and d.features["val_loss_drop"] == pytest.approx(ds.features["val_loss_drop"],
                                                                                          abs=1e-5)


def test_a_training_loss_the_table_repeats_is_read_once(tmp_path, monkeypatch):
    # logging every 20 steps, evaluating every 8: the callback shows the last train log at each row, so the log of
    # step 20 appears at rows 24 and 32. Read twice it would be a flat train loss; the state holds it once
    nb, state_file = _notebook_run(tmp_path, monkeypatch, eval_strategy="steps", logging_steps=20)
    run = load_run(nb)
    logs = [e for e in json.loads(state_file.read_text())["log_history"] if "loss" in e and "train_runtime" not in e]
    assert [e["step"] for e in logs] == [20, 40]
    got = [(p["step"], p["train/loss"]) for p in run.points if "train/loss" in p]
    assert [s for s, _ in got] == [24, 40] and [v for _, v in got] == pytest.approx([e["loss"] for e in logs], abs=5e-7)
    assert any(n.startswith("1 row(s) repeat the Training Loss of the row before") for n in run.notes)
    # one train log in the whole table: no fall to read (not a fall of 0)
    nb1, _ = _notebook_run(tmp_path / "once", monkeypatch, eval_strategy="steps", logging_steps=30)
    d = diagnose(nb1)
    assert [p["step"] for p in load_run(nb1).points if "train/loss" in p] == [32]
    assert "train_loss_drop" in d.features.missing and d.features["train_loss_logged"] == 1


def test_an_epoch_table_places_rows_by_the_progress_bar(tmp_path, monkeypatch):
    # 10 rows x 4 intents = 40 rows, batch 8: 5 steps an epoch, 4 epochs
    nb, state_file = _notebook_run(tmp_path, monkeypatch, eval_strategy="epoch", epochs=4, lr=3e-4,
                                   code="lr = 3e-4\nargs = TrainingArguments(learning_rate=lr)\n")
    run = load_run(nb)
    assert [p["step"] for p in run.points] == [5, 10, 15, 20] and [p["epoch"] for p in run.points] == [1, 2, 3, 4]
    assert run.facts["num_train_epochs"].value == 4 and run.facts["max_steps"].value == 20
    assert any("epochs, not steps" in n for n in run.notes)
    # `learning_rate=lr` with `lr = 3e-4` assigned once: the literal, through its name, as the state logs it
    assert run.facts["learning_rate"].value == 3e-4 and "through lr" in run.facts["learning_rate"].source
    state = load_run(state_file)
    assert state.facts["learning_rate"].value == pytest.approx(3e-4)
    assert [p["val/loss"] for p in run.points] == pytest.approx([p["val/loss"] for p in state.points
                                                                 if "val/loss" in p], abs=5e-7)


def _table_notebook(path: Path, bars: list[tuple[str, list[list[str]]]], code: str = "", first: str = "Step") -> Path:
    """A notebook with one output per (progress label, rows of Step (or `first`) / Training Loss / Validation Loss /
    Accuracy)."""
    outs = []
    for label, rows in bars:
        body = "".join("<tr>" + "".join(f"<td>{c}</td>" for c in r) + "</tr>" for r in rows)
        html = (f"<div><progress value='1' max='2'></progress> {label}</div><table border=\"1\" class=\"dataframe\">"
                f"<thead><tr><th>{first}</th><th>Training Loss</th><th>Validation Loss</th><th>Accuracy</th></tr></thead>"
                f"<tbody>{body}</tbody></table><p>")
        outs.append({"output_type": "display_data", "metadata": {}, "data": {"text/html": [html]}})
    cells = [{"cell_type": "code", "metadata": {}, "source": [code], "outputs": []},
             {"cell_type": "code", "metadata": {}, "source": ["trainer.train()"], "outputs": outs}]
    path.write_text(json.dumps({"nbformat": 4, "nbformat_minor": 5, "metadata": {}, "cells": cells}))
    return path


def test_the_last_table_is_read_unless_one_is_picked(tmp_path):
    rows = [["10", "No log", "1.20", "0.50"], ["20", "0.90", "1.00", "0.60"], ["30", "0.70", "0.95", "0.65"]]
    nb = _table_notebook(tmp_path / "two.ipynb", [("[30/30 00:10, Epoch 3/3]", rows),
                                                  ("[20/60 00:10 < 00:20, Epoch 1/3]", rows[:2])],
                         code="TrainingArguments(learning_rate=1e-4)\nTrainingArguments(learning_rate=5e-5)")
    last = read_notebook(nb)
    assert [p["step"] for p in last.points] == [10, 20] and last.meta["partial"] is True
    assert "train/loss" not in last.points[0] and last.points[1]["train/loss"] == 0.9  # "No log": none logged yet
    assert any("progress bar stops short" in n for n in last.notes)
    assert any("several learning rates (5e-05, 0.0001)" in n for n in last.notes) and "learning_rate" not in last.facts
    first = read_notebook(nb, table=0)
    assert [p["step"] for p in first.points] == [10, 20, 30] and not first.meta.get("partial")
    assert first.meta["steps_planned"] == 30 and first.notes[0].startswith("read the Trainer's progress table 1 of 2")
    assert "(another: two.ipynb#N, N from 1 to 2)" in first.notes[0]
    # NOTEBOOK.ipynb#N picks a table wherever a run is read (1-based, as the note counts): the CLI compares two tables
    assert [p["step"] for p in load_run(f"{nb}#1").points] == [10, 20, 30]
    assert [p["step"] for p in load_run(f"{nb}#2").points] == [10, 20]
    assert main(["diagnose", f"{nb}#1", f"{nb}#2", "--json"]) == 0
    for bad, why in ((f"{nb}#3", "there is no table 3"), (f"{nb}#0", "tables are counted from 1")):
        with pytest.raises(UserError, match=why):
            load_run(bad)
        assert main(["diagnose", bad]) == 2


def test_a_notebook_without_a_training_table_is_a_clear_error(tmp_path, capsys):
    nb = tmp_path / "eval_only.ipynb"
    html = ("<table border=\"1\" class=\"dataframe\"><thead><tr><th>Training Loss</th><th>Validation Loss</th>"
            "<th>Step</th></tr></thead><tbody><tr><td>No log</td><td>0.5</td><td>10</td></tr></tbody></table>")
    nb.write_text(json.dumps({"nbformat": 4, "cells": [{"cell_type": "code", "source": "trainer.evaluate()",
                                                        "outputs": [{"data": {"text/html": html}}]}]}))
    assert main(["diagnose", str(nb)]) == 2
    err = capsys.readouterr().err
    assert "holds no Trainer progress table" in err and "trainer_state.json" in err and "Traceback" not in err
    (tmp_path / "broken.ipynb").write_text("{not json")
    assert main(["diagnose", str(tmp_path / "broken.ipynb")]) == 2
    assert "is not a readable notebook" in capsys.readouterr().err
    two = _table_notebook(tmp_path / "one.ipynb", [("[2/2 00:01, Epoch 1/1]", [["1", "1.0", "1.0", "0.5"]])])
    with pytest.raises(Exception, match="holds 1 Trainer progress table"):
        read_notebook(two, table=3)


def test_a_last_table_stopped_before_its_first_evaluation_is_passed_over(tmp_path):
    # a sweep's last run interrupted at once shows a table with no row: the default reads the last one with rows
    rows = [["10", "No log", "1.20", "0.50"], ["20", "0.90", "1.00", "0.60"], ["30", "0.70", "0.95", "0.65"]]
    nb = _table_notebook(tmp_path / "sweep.ipynb", [("[30/30 00:10, Epoch 3/3]", rows),
                                                    ("[30/30 00:10, Epoch 3/3]", rows[:2]),
                                                    ("[3/30 00:01 < 00:10, Epoch 0.3/3]", [])])
    run = read_notebook(nb)
    assert [p["step"] for p in run.points] == [10, 20]
    assert run.notes[0].startswith("read the Trainer's progress table 2 of 3")
    assert any("the later table 3 holds no evaluated row" in n for n in run.notes)
    with pytest.raises(Exception, match="has no evaluated row"):
        read_notebook(nb, table=2)  # picked by hand: said, not passed over


def test_whole_epochs_shown_truncated_are_placed_at_the_next_epoch_end(tmp_path):
    # the callback writes int(state.epoch): 4 epoch-end evaluations whose steps put them at 0.99, 2.0, 2.99, 3.99 show
    # 0, 2, 2, 3 (fold O's Lxt115: the bar ends "Epoch 3/4"); each row is one evaluation, none merged or at step 0
    rows = [["0", "1.6533", "1.667136", "0.1"], ["2", "1.5216", "1.658416", "0.2"], ["2", "1.7094", "1.656285", "0.3"],
            ["3", "1.5581", "1.656394", "0.4"]]
    run = read_notebook(_table_notebook(tmp_path / "trunc.ipynb", [("[248/248 31:46, Epoch 3/4]", rows)],
                                        first="Epoch"))
    assert [p["step"] for p in run.points] == [62, 124, 186, 248]
    assert [p["val/loss"] for p in run.points] == [1.667136, 1.658416, 1.656285, 1.656394]
    assert any("int of the epoch" in n for n in run.notes)
    # exact epochs (1, 2, 3) stay where they are, with no note
    exact = [["1", "1.0", "1.2", "0.5"], ["2", "0.9", "1.0", "0.6"], ["3", "0.7", "0.95", "0.65"]]
    run = read_notebook(_table_notebook(tmp_path / "exact.ipynb", [("[30/30 00:10, Epoch 3/3]", exact)],
                                        first="Epoch"))
    assert [p["step"] for p in run.points] == [10, 20, 30] and not any("int of the epoch" in n for n in run.notes)


def test_an_epoch_table_without_an_epoch_count_is_placed_by_the_bar(tmp_path):
    # max_steps over a streamed dataset: the bar reads `Epoch 2/9223372036854775807` (fold P's Suryansh-23)
    rows = [["0", "No log", "0.551265", "0.878719"], ["1", "0.404100", "0.517935", "0.879746"],
            ["2", "0.396800", "0.534966", "0.896676"]]
    run = read_notebook(_table_notebook(tmp_path / "stream.ipynb", [("[1000/1000 23:07, Epoch 2/9223372036854775807]",
                                                                      rows)], first="Epoch"))
    assert [p["step"] for p in run.points] == [333, 667, 1000]
    assert [p["val/loss"] for p in run.points] == [0.551265, 0.517935, 0.534966]
    assert any("no epoch count" in n for n in run.notes) and "num_train_epochs" not in run.facts


def test_a_learning_rate_assigned_to_a_name_once_is_read(tmp_path):
    rows = [["10", "1.30", "1.20", "0.50"], ["20", "0.90", "1.00", "0.60"], ["30", "0.70", "0.95", "0.65"]]
    bar = [("[30/30 00:10, Epoch 3/3]", rows)]
    one = read_notebook(_table_notebook(tmp_path / "one.ipynb", bar, code=(
        "LEARNING_RATE = 3e-4  # AdamW\nargs = TrainingArguments(out, learning_rate=LEARNING_RATE)")))
    assert one.facts["learning_rate"].value == 3e-4 and "through LEARNING_RATE" in one.facts["learning_rate"].source
    two = read_notebook(_table_notebook(tmp_path / "two.ipynb", bar, code=(
        "LR = 3e-4\nLR = 1e-4\nargs = TrainingArguments(out, learning_rate=LR)")))
    assert "learning_rate" not in two.facts  # a name assigned twice: which one ran is not in the code
    attr = read_notebook(_table_notebook(tmp_path / "attr.ipynb", bar, code=(
        "lr = 3e-4\nargs = TrainingArguments(out, learning_rate=cfg.lr)")))
    assert "learning_rate" not in attr.facts  # an attribute, not the name


@pytest.mark.parametrize("code, lr", [
    # fold R's RitaMaria: the code sets no learning rate, so the Trainer ran at TrainingArguments' own default
    ("args = TrainingArguments(output_dir='out', warmup_steps=100, num_train_epochs=2)", 5e-5),
    ("args = Seq2SeqTrainingArguments('out', num_train_epochs=2)", 5e-5),  # the same default
    ("args = SFTConfig(output_dir='out')\nargs2 = TrainingArguments('x')", None),  # TRL's config: its own default
    ("opt = AdamW(model.parameters(), lr=1e-3)\nargs = TrainingArguments('out')", None),  # a hand-made optimizer
    ("args = TrainingArguments(**cfg)", None),  # the arguments come from elsewhere
    ("model.train()", None),  # no TrainingArguments: no Trainer default to read
])
def test_a_trainer_whose_code_sets_no_learning_rate_ran_at_the_trainer_default(tmp_path, code, lr):
    rows = [["10", "1.30", "1.20", "0.50"], ["20", "0.90", "1.00", "0.60"], ["30", "0.70", "0.95", "0.65"]]
    run = read_notebook(_table_notebook(tmp_path / "nb.ipynb", [("[30/30 00:10, Epoch 3/3]", rows)], code=code))
    assert run.facts.get("learning_rate") is None if lr is None else run.facts["learning_rate"].value == pytest.approx(lr)
    if lr is not None:
        assert "TrainingArguments default" in run.facts["learning_rate"].source
        assert diagnose(run).features["peak_lr"] == pytest.approx(lr)


@pytest.mark.parametrize("code, facts", [
    # fold R's parthabits: a LoRA adapter built and applied: peft_type, with its one literal rank and alpha
    ("cfg = LoraConfig(r=8, lora_alpha=16, target_modules=['q_lin', 'v_lin'])\nmodel = get_peft_model(m, cfg)",
     {"peft_type": "LORA", "r": 8, "lora_alpha": 16}),
    ("trainer = SFTTrainer(model, peft_config=LoraConfig(r=16, lora_alpha=32))", {"peft_type": "LORA", "r": 16,
                                                                                  "lora_alpha": 32}),
    ("a = LoraConfig(r=8)\nb = LoraConfig(r=16)\nmodel = get_peft_model(m, a)", {"peft_type": "LORA"}),  # which ran?
    ("cfg = LoraConfig(r=8, lora_alpha=16)", {}),  # built, never applied
    ("cfg = AdaLoraConfig(r=8)\nmodel = get_peft_model(m, cfg)", {}),  # another method's config
    ("cfg = LoraConfig(r=8)\np = PromptTuningConfig(n=8)\nmodel = get_peft_model(m, cfg)", {}),  # two methods
])
def test_a_lora_adapter_the_code_builds_and_applies_is_read(tmp_path, code, facts):
    rows = [["10", "1.30", "1.20", "0.50"], ["20", "0.90", "1.00", "0.60"], ["30", "0.70", "0.95", "0.65"]]
    run = read_notebook(_table_notebook(tmp_path / "nb.ipynb", [("[30/30 00:10, Epoch 3/3]", rows)], code=code))
    assert {k: run.facts[k].value for k in ("peft_type", "r", "lora_alpha") if k in run.facts} == facts
    assert (diagnose(run).features["lora"] == 1.0) == bool(facts)


def test_the_task_is_read_from_the_model_class_the_code_names(tmp_path):
    rows = [["10", "2.30", "2.20", "0.50"], ["20", "2.10", "2.05", "0.60"], ["30", "2.00", "1.98", "0.65"]]
    bar = [("[30/30 00:10, Epoch 3/3]", rows)]
    lm = read_notebook(_table_notebook(tmp_path / "lm.ipynb", bar, code="from transformers import AutoModelForCausalLM\n"
                                       "model = AutoModelForCausalLM.from_pretrained('gpt2', num_labels=2)"))
    assert lm.facts["task"].value == "causal-lm" and lm.meta["task"] == "causal-lm"
    assert "AutoModelForCausalLM" in lm.facts["task"].source and "n_classes" not in lm.facts  # an LM has no classes
    s2s = read_notebook(_table_notebook(tmp_path / "s2s.ipynb", bar, code="BartForConditionalGeneration.from_pretrained(m)"))
    assert s2s.facts["task"].value == "seq2seq"
    multi = read_notebook(_table_notebook(tmp_path / "multi.ipynb", bar, code=(
        "AutoModelForSequenceClassification.from_pretrained(m, problem_type='multi_label_classification')")))
    assert multi.facts["task"].value == "multi_label"
    # a classifier and a generator named in one notebook: neither is taken, and the notes say why
    both = read_notebook(_table_notebook(tmp_path / "both.ipynb", bar, code=(
        "from transformers import AutoModelForSequenceClassification, AutoModelForCausalLM")))
    assert "task" not in both.facts and any("several kinds" in n for n in both.notes)
    # a data collator is no model class
    tok = read_notebook(_table_notebook(tmp_path / "tok.ipynb", bar, code=(
        "AutoModelForSequenceClassification.from_pretrained(m)\nDataCollatorForTokenClassification(tokenizer)")))
    assert tok.facts["task"].value == "single_label"
    # fold S: a Marian translation model, and an SFT run through unsloth's loader (no model class of transformers')
    mt = read_notebook(_table_notebook(tmp_path / "mt.ipynb", bar, code="MarianMTModel.from_pretrained(m)"))
    assert mt.facts["task"].value == "seq2seq"
    sft = read_notebook(_table_notebook(tmp_path / "sft.ipynb", bar, code=(
        "model, tok = FastLanguageModel.from_pretrained(m)\ntrainer = SFTTrainer(model=model)")))
    assert sft.facts["task"].value == "causal-lm" and "FastLanguageModel, SFTTrainer" in sft.facts["task"].source
    clash = read_notebook(_table_notebook(tmp_path / "clash.ipynb", bar, code=(
        "AutoModelForSequenceClassification.from_pretrained(m)\ntrainer = SFTTrainer(model=model)")))
    assert "task" not in clash.facts


def test_a_nan_in_the_table_is_a_non_finite_loss_not_a_missing_one(tmp_path):
    # "nan" is what the table shows for a non-finite eval loss; a trainer_state.json keeps it (as NaN), and so does this
    rows = [["10", "1.50", "nan", "0.1"], ["20", "1.20", "nan", "0.1"], ["30", "1.00", "0.90", "0.4"]]
    run = read_notebook(_table_notebook(tmp_path / "nan.ipynb", [("[30/30 00:10, Epoch 3/3]", rows)]))
    assert [p["step"] for p in run.points] == [10, 20, 30]
    assert [p["val/loss"] for p in run.points] == [None, None, 0.9]  # the run-record convention: non-finite as null
    assert [p["train/loss"] for p in run.points] == [1.5, 1.2, 1.0]


def test_the_class_count_is_read_from_one_literal_num_labels(tmp_path):
    rows = [["10", "1.30", "1.20", "0.50"], ["20", "0.90", "1.00", "0.60"], ["30", "0.70", "0.95", "0.65"]]
    bar = [("[30/30 00:10, Epoch 3/3]", rows)]
    one = _table_notebook(tmp_path / "one.ipynb", bar, code="model = AutoModel.from_pretrained(name, num_labels=4)")
    run = read_notebook(one)
    assert run.facts["n_classes"].value == 4 and "one literal num_labels" in run.facts["n_classes"].source
    assert diagnose(one).features["n_classes"] == 4
    two = _table_notebook(tmp_path / "two.ipynb", bar, code="a = M(num_labels=4)\nb = M(num_labels=2)")
    assert "one literal" not in read_notebook(two).facts.get("n_classes", types.SimpleNamespace(source="")).source
    regression = _table_notebook(tmp_path / "reg.ipynb", bar, code="M(num_labels=1)")  # a regression head: no classes
    assert "one literal" not in read_notebook(regression).facts.get("n_classes", types.SimpleNamespace(source="")).source
    # a classifier's num_labels beside a model of another kind (the table may train either): neither task nor count
    mixed = _table_notebook(tmp_path / "mixed.ipynb", bar,
                            code="cls = AutoModelForSequenceClassification.from_pretrained(name, num_labels=2)\n"
                                 "qa = AutoModelForQuestionAnswering.from_pretrained(name)")
    run = read_notebook(mixed)
    assert "num_labels" not in run.facts.get("n_classes", types.SimpleNamespace(source="")).source
    assert "task" not in run.facts
    assert any("nor its num_labels (2): it may be another model's" in n for n in run.notes)
    alone = _table_notebook(tmp_path / "alone.ipynb", bar,
                            code="cls = AutoModelForSequenceClassification.from_pretrained(name, num_labels=2)")
    assert read_notebook(alone).facts["n_classes"].value == 2


def test_a_notebook_reads_no_side_file_even_when_named_like_a_checkpoint(tmp_path):
    # the folder beside a notebook holds other things: a config.json there is not this run's
    (tmp_path / "config.json").write_text(json.dumps({"model_type": "bert", "id2label": {str(i): str(i) for i in
                                                                                          range(9)}}))
    rows = [["10", "1.30", "1.20", "0.50"], ["20", "0.90", "1.00", "0.60"], ["30", "0.70", "0.95", "0.65"]]
    for name in ("run.ipynb", "checkpoint-30.ipynb"):
        run = read_notebook(_table_notebook(tmp_path / name, [("[30/30 00:10, Epoch 3/3]", rows)]))
        assert not any("id2label" in f.source for f in run.facts.values()), (name, run.facts)
        assert run.meta.get("n_classes") != 9


@pytest.mark.parametrize("lr, acc, too_small", [
    # fold U's Meerschwein: Longformer LoRA r=8 at 2e-5, logging_steps longer than the run (every row 'No log'),
    # val loss -1.2% over 3 epochs, accuracy +0.007: a LoRA run below LoRA's usual lr that learned little
    ("2e-5", ["0.8704", "0.8736", "0.8772"], True),
    ("2e-5", ["0.70", "0.80", "0.85"], False),  # near miss: its val metric gained a healthy run's share: it learned
    ("2e-4", ["0.8704", "0.8736", "0.8772"], False),  # near miss: at LoRA's usual lr, no lr prior to read
])
def test_a_lora_run_below_loras_lr_with_no_train_loss_logged_is_read_on_its_val_side(tmp_path, lr, acc, too_small):
    val = ["0.654200", "0.647700", "0.646100"]
    rows = [[str(e + 1), "No log", v, a] for e, (v, a) in enumerate(zip(val, acc))]
    code = (f"model = AutoModelForSequenceClassification.from_pretrained('m', num_labels=2)\n"
            f"model = get_peft_model(model, LoraConfig(r=8, lora_alpha=16))\n"
            f"args = TrainingArguments(learning_rate={lr}, num_train_epochs=3)")
    run = read_notebook(_table_notebook(tmp_path / "nb.ipynb", [("[351/351 10:00, Epoch 3/3]", rows)], code=code,
                                        first="Epoch"))
    d = diagnose(run)
    assert d.features["train_loss_logged"] == 0 and d.features["lora"] == 1
    assert (d.verdict == "lr-too-small") == too_small, [(f.rule_id, f.suppressed_by) for f in d.findings]


def test_a_lora_rank_read_from_the_code_is_a_knob_runs_are_compared_by(tmp_path):
    # the r / lora_alpha of a notebook's LoraConfig reach the comparison as an adapter_config.json's do, and the
    # notes no longer say rank, alpha and class count are unknown beside the facts that give them
    rows = [["10", "1.30", "1.20", "0.50"], ["20", "0.90", "1.00", "0.60"], ["30", "0.70", "0.95", "0.65"]]
    code = ("model = AutoModelForSequenceClassification.from_pretrained('m', num_labels=5)\n"
            "model = get_peft_model(model, LoraConfig(r=%d, lora_alpha=16))\n"
            "args = TrainingArguments('o', learning_rate=2e-5)")
    nbs = [_table_notebook(tmp_path / f"r{r}.ipynb", [("[30/30 00:10, Epoch 3/3]", rows)], code=code % r)
           for r in (8, 16)]
    run = read_notebook(nbs[0])
    assert run.config["adapter"] == {"r": 8, "lora_alpha": 16}
    assert not any("rank, alpha and targets unknown" in n for n in run.notes)
    assert any("r and lora_alpha from notebook code: LoraConfig, targets unknown" in n for n in run.notes)
    assert run.facts["n_classes"].value == 5 and not any("no model config.json" in n for n in run.notes)
    c = compare(nbs)
    assert [(g.knob, [v for _, v, _, _ in g.runs]) for g in c.groups] == [("r", [8, 16])]


@pytest.mark.parametrize("code, lr, alpha", [
    # an expression is no literal: its first number is not the value, nor is the name it scales
    ("args = TrainingArguments('o', learning_rate=2 * 1e-5)", None, None),
    ("args = TrainingArguments('o', learning_rate=1e-4/2)", None, None),
    ("LR = 1e-4\nargs = TrainingArguments('o', learning_rate=LR * 4)", None, None),
    # **cfg may set it, wherever it stands in the call: no TrainingArguments default either
    ("args = TrainingArguments(output_dir=os.path.join('a', 'b'), **cfg)", None, None),
    ("R = 16\nmodel = get_peft_model(m, LoraConfig(r=R, lora_alpha=2 * R))", None, None),
    # near misses: a literal that ends the argument, the value or the line stays a fact
    ("args = TrainingArguments('o', learning_rate=2e-5 , num_train_epochs=3)", 2e-5, None),
    ("cfg = {'learning_rate': 1e-4}\nLR = 3e-4", 1e-4, None),
    ("LR = 3e-4\nargs = TrainingArguments('o', learning_rate=LR)  # peak", 3e-4, None),
    ("model = get_peft_model(m, LoraConfig(r=8, lora_alpha=32))", None, 32),
])
def test_a_learning_rate_or_alpha_written_as_an_expression_is_no_fact(tmp_path, code, lr, alpha):
    rows = [["10", "1.30", "1.20", "0.50"], ["20", "0.90", "1.00", "0.60"], ["30", "0.70", "0.95", "0.65"]]
    run = read_notebook(_table_notebook(tmp_path / "nb.ipynb", [("[30/30 00:10, Epoch 3/3]", rows)], code=code))
    assert (run.facts["learning_rate"].value if "learning_rate" in run.facts else None) == lr
    assert (run.facts["lora_alpha"].value if "lora_alpha" in run.facts else None) == alpha


def test_tables_picked_by_number_keep_it_in_their_name_and_read_the_code_before_them(tmp_path):
    rows = [["10", "1.30", "1.20", "0.50"], ["20", "0.90", "1.00", "0.60"], ["30", "0.70", "0.95", "0.65"]]
    nb = _table_notebook(tmp_path / "two.ipynb", [("[30/30 00:10, Epoch 3/3]", rows)],
                         code="args = TrainingArguments('o', learning_rate=1e-4)")
    doc = json.loads(nb.read_text())
    later = "args = TrainingArguments('o', learning_rate=2e-5)"
    doc["cells"] += [{"cell_type": "code", "metadata": {}, "source": [later], "outputs": []}, dict(doc["cells"][1])]
    nb.write_text(json.dumps(doc))
    one, two = load_run(f"{nb}#1"), load_run(f"{nb}#2")
    assert (one.name, one.path, two.name, two.path) == ("two#1", f"{nb}#1", "two#2", f"{nb}#2")
    assert one.facts["learning_rate"].value == 1e-4  # the 2e-5 cell comes after table 1: a later run's
    assert "learning_rate" not in two.facts  # both cells before table 2: which one it ran at is not said
    assert compare([f"{nb}#1", f"{nb}#2"]).runs == ("two#1", "two#2")


@pytest.mark.parametrize("doc, why, fix", [
    ({"cells": [{"cell_type": "code", "source": "x", "outputs": 5}]}, "cell 1's `outputs` is not a list",
     "as Jupyter"),
    ({"cells": [{"cell_type": "code", "source": "x", "outputs": [{"data": {"text/html": ["<table>", 5]}}]}]},
     "cell 1, output 1: its text/html holds a non-text item", "as Jupyter"),
    ({"nbformat": 3, "worksheets": [{"cells": []}]}, "nbformat 3 notebook",
     "jupyter nbconvert --to notebook --nbformat 4"),
])
def test_a_malformed_or_old_notebook_is_a_clear_error(tmp_path, capsys, doc, why, fix):
    nb = tmp_path / "bad.ipynb"
    nb.write_text(json.dumps(doc))
    assert main(["diagnose", str(nb)]) == 2
    err = capsys.readouterr().err
    assert why in err and fix in err and "Traceback" not in err


def test_a_table_number_that_is_no_number_is_said_so(tmp_path, capsys):
    rows = [["10", "1.30", "1.20", "0.50"], ["20", "0.90", "1.00", "0.60"]]
    nb = _table_notebook(tmp_path / "two.ipynb", [("[20/20 00:10, Epoch 2/2]", rows)])
    assert main(["diagnose", f"{nb}#x"]) == 2
    err = capsys.readouterr().err
    assert "'x' is not a table number" in err and "two.ipynb#1" in err and "does not exist" not in err


def test_an_epoch_table_under_max_steps_places_rows_at_the_trainers_steps(tmp_path, monkeypatch):
    # 5 steps an epoch, max_steps=17: the Trainer counts ceil(17 / 5) = 4 epochs (the bar: `[17/17, Epoch 3/4]`) and
    # evaluates at 5, 10, 15 and at the end, 17, whose row (int(3.4) = 3) replaces epoch 3's (17 / 4 placed 4, 8, 13)
    nb, state_file = _notebook_run(tmp_path, monkeypatch, eval_strategy="epoch", max_steps=17)
    run = load_run(nb)
    evals = {p["step"]: p for p in load_run(state_file).points if "val/loss" in p}
    assert sorted(evals) == [5, 10, 15, 17]
    assert [p["step"] for p in run.points] == [5, 10, 17]
    want = [evals[s]["val/loss"] for s in (5, 10, 17)]
    assert [p["val/loss"] for p in run.points] == pytest.approx(want, abs=5e-7)
    assert any("5 steps per epoch" in n for n in run.notes) and not any("epochs, not steps" in n for n in run.notes)
    # a bar several whole steps-per-epoch fit (ceil(11 / s) = 2 for s = 6..10): the placement is said approximate
    rows = [["1", "1.3", "1.2", "0.5"], ["2", "0.9", "1.0", "0.6"]]
    loose = read_notebook(_table_notebook(tmp_path / "loose.ipynb", [("[11/11 00:10, Epoch 2/2]", rows)],
                                          first="Epoch"))
    assert [p["step"] for p in loose.points] == [6, 11]
    assert any("fit 5 whole step counts per epoch: the rows' steps are approximate" in n for n in loose.notes)


def test_the_table_of_the_cell_that_ran_last_is_read_not_a_stale_one_below_it(tmp_path):
    rows = [["50", "1.30", "1.20", "0.50"], ["100", "0.90", "1.00", "0.60"]]
    nb = _table_notebook(tmp_path / "stale.ipynb", [("[100/100 00:10, Epoch 2/2]", rows)],
                         code="args = TrainingArguments('o', learning_rate=3e-3)")
    doc = json.loads(nb.read_text())
    new, stale = doc["cells"][1], json.loads(json.dumps(doc["cells"][1]))
    doc["cells"][0]["execution_count"], new["execution_count"], stale["execution_count"] = 1, 9, 4
    stale["outputs"][0]["data"]["text/html"] = [stale["outputs"][0]["data"]["text/html"][0]
                                                .replace("100/100", "20/20").replace("<td>50</td>", "<td>10</td>")
                                                .replace("<td>100</td>", "<td>20</td>")]
    doc["cells"].append(stale)
    nb.write_text(json.dumps(doc))
    run = read_notebook(nb)
    assert [p["step"] for p in run.points] == [50, 100] and run.facts["learning_rate"].value == 3e-3
    assert any("table 1 was read as the latest: its cell ran last (execution_count 9)" in n and "order 2, 1" in n
               for n in run.notes)
    assert [p["step"] for p in read_notebook(nb, table=1).points] == [10, 20]  # picked by hand: as given
    # no execution counts (or all equal): the page's order, the last table, with no such note
    for c in doc["cells"]:
        c.pop("execution_count", None)
    nb.write_text(json.dumps(doc))
    run = read_notebook(nb)
    assert [p["step"] for p in run.points] == [10, 20] and not any("ran last" in n for n in run.notes)


def _counted(*cells: tuple[str, int | None, bool]) -> dict:
    """A notebook of (source, execution_count, shows the table) code cells."""
    rows = [["10", "1.30", "1.20", "0.50"], ["20", "0.90", "1.00", "0.60"], ["30", "0.70", "0.95", "0.65"]]
    body = "".join("<tr>" + "".join(f"<td>{c}</td>" for c in r) + "</tr>" for r in rows)
    html = ("<div><progress value='1' max='2'></progress> [30/30 00:10, Epoch 3/3]</div><table border=\"1\">"
            "<thead><tr><th>Step</th><th>Training Loss</th><th>Validation Loss</th><th>Accuracy</th></tr></thead>"
            f"<tbody>{body}</tbody></table><p>")
    out = {"output_type": "display_data", "metadata": {}, "data": {"text/html": [html]}}
    return {"nbformat": 4, "nbformat_minor": 5, "metadata": {},
            "cells": [{"cell_type": "code", "metadata": {}, "execution_count": n, "source": [src],
                       "outputs": [out] if table else []} for src, n, table in cells]}


@pytest.mark.parametrize("cells, lr", [
    # table 1 (count 6) is the latest; 1e-4 (count 1) and 3e-4 (count 2, below it on the page) both ran before it
    ([("args = TrainingArguments('o', learning_rate=1e-4)", 1, False), ("trainer.train()", 6, True),
      ("args = TrainingArguments('o', learning_rate=3e-4)", 2, False), ("trainer.train()", 3, True)], None),
    # 5e-5 (count 4) sits below the training cell (count 5) but ran before it, as 1e-4 (count 1) above it did
    ([("args = TrainingArguments('o', learning_rate=1e-4)", 1, False), ("trainer.train()", 5, True),
      ("args = TrainingArguments('o', learning_rate=5e-5)", 4, False)], None),
    # 5e-5 below the table ran after it (count 7): a later run's
    ([("args = TrainingArguments('o', learning_rate=1e-4)", 1, False), ("trainer.train()", 5, True),
      ("args = TrainingArguments('o', learning_rate=5e-5)", 7, False)], 1e-4),
    # the one setting cell ran after the table though above it on the page: not the table's
    ([("args = TrainingArguments('o', learning_rate=1e-4)", 8, False), ("trainer.train()", 5, True)], None),
    # the table's cell has no count, or a count is on two cells (a kernel restart): the page's order
    ([("args = TrainingArguments('o', learning_rate=1e-4)", 1, False), ("trainer.train()", None, True),
      ("args = TrainingArguments('o', learning_rate=5e-5)", 2, False)], 1e-4),
    ([("args = TrainingArguments('o', learning_rate=1e-4)", 2, False), ("x = 1", 2, False),
      ("trainer.train()", 3, True), ("args = TrainingArguments('o', learning_rate=5e-5)", 1, False)], 1e-4),
    # no counts at all: the page's order
    ([("args = TrainingArguments('o', learning_rate=1e-4)", None, False), ("trainer.train()", None, True),
      ("args = TrainingArguments('o', learning_rate=5e-5)", None, False)], 1e-4),
])
def test_the_code_read_is_that_run_before_the_table_by_execution_count(tmp_path, cells, lr):
    nb = tmp_path / "rerun.ipynb"
    nb.write_text(json.dumps(_counted(*cells)))
    run = read_notebook(nb)
    assert (run.facts["learning_rate"].value if "learning_rate" in run.facts else None) == lr
