"""End-to-end training on tiny random-init BERT and Llama models (no downloads)."""

from __future__ import annotations

import json
import math

import pytest
import torch
from safetensors.torch import load_file

from loratune import api
from loratune.config import load_config
from loratune.data import load_dataset
from loratune.inference import load_trained
from loratune.store import RunStore

from support import make_rows, overrides, write_jsonl


def _train(model, data, out, **extra):
    cfg = load_config(None, overrides(model, data, out, **extra))
    return cfg, api.train(cfg, progress=False)


def _base_weights(folder) -> dict[str, torch.Tensor]:
    return load_file(f"{folder}/model.safetensors")


@pytest.mark.parametrize("arch", ["tiny_bert", "tiny_llama"])
def test_lora_changes_only_adapter_and_head(arch, request, intent_data, tmp_path):
    folder = request.getfixturevalue(arch)
    _, run = _train(folder, intent_data, tmp_path / "run", learning_rate=2e-2, max_steps=24, eval_steps=8)
    assert run["status"] == "completed"
    assert run["adapter_step"] > 0, "the saved adapter must be a trained one for this test to mean anything"
    trained = load_trained(tmp_path / "run")
    base = _base_weights(folder)
    changed_lora = 0
    for name, p in trained.model.named_parameters():
        parts = name.split(".")
        if "lora_B" in parts:
            changed_lora += int(p.abs().sum() > 0)  # B starts at zero: any non-zero entry was trained
        if "lora_A" in parts or "lora_B" in parts or "modules_to_save" in parts or "original_module" in parts:
            continue
        if any(h in parts for h in ("classifier", "score", "pooler")):
            continue
        # every frozen base weight is exactly the checkpoint's
        key = next(k for k in base if name.endswith(k.replace("base_layer.", "")) or
                   name.replace("base_layer.", "").endswith(k))
        assert torch.equal(p.detach().cpu(), base[key]), name
    assert changed_lora > 0
    adapter = load_file(str(tmp_path / "run" / "adapter" / "adapter_model.safetensors"))
    assert any("lora_A" in k for k in adapter)
    head_key = "classifier" if arch == "tiny_bert" else "score"
    assert any(head_key in k for k in adapter), "the head is saved with the adapter"


def test_full_finetuning_changes_every_weight(tiny_bert, intent_data, tmp_path):
    _, run = _train(tiny_bert, intent_data, tmp_path / "run", method="full", learning_rate=1e-3)
    assert run["status"] == "completed"
    assert run["params"]["trainable"] == run["params"]["total"]
    trained = load_trained(tmp_path / "run")
    base = _base_weights(tiny_bert)
    named = dict(trained.model.named_parameters())
    compared = 0
    for key, tensor in base.items():
        name = next((n for n in named if n.endswith(key)), None)
        if name is None or "position_embeddings" in key or "token_type" in key:
            continue  # rows never indexed by short texts get no gradient
        if "word_embeddings" in key:
            continue  # only rows of words in the data move
        compared += 1
        assert not torch.equal(named[name].detach().cpu(), tensor), f"{key} did not change under full fine-tuning"
    assert compared > 10


@pytest.mark.parametrize("precision", ["fp32", "bf16"])
def test_round_trip_gives_identical_scores(tiny_bert, intent_data, tmp_path, precision):
    # bf16: evaluate scores under the autocast the run's own evaluations used (emulated on a CPU without bf16); it
    # scored in float32 before, 1.5e-4 off the run's val loss on a CPU with avx512_bf16, where auto means bf16
    _, run = _train(tiny_bert, intent_data, tmp_path / "run", precision=precision)
    best = run["best"]
    assert run["adapter_step"] == best["step"]
    scores = api.evaluate(tmp_path / "run", split="validation")
    assert scores["val/macro_f1"] == pytest.approx(best["val/macro_f1"], abs=1e-12)
    assert scores["val/loss"] == pytest.approx(best["val/loss"], rel=1e-5)


def test_record_is_complete(tiny_bert, intent_data, tmp_path):
    cfg, run = _train(tiny_bert, intent_data, tmp_path / "run")
    store = RunStore(tmp_path / "run")
    history = store.read_history()
    assert [p["step"] for p in history] == [0, 4, 8, 12]
    assert "train/loss" not in history[0] and "train/loss" in history[1]
    for p in history:
        for key in ("val/loss", "val/accuracy", "val/macro_f1", "val/weighted_f1",
                    "val/recall/balance", "val/support/pin", "val/confused_pairs"):
            assert key in p
        assert p["val/n"] == 20
    # step 0 scores validation only (train.STEP0_SPLITS); every trained point scores the train subsample too
    assert not any(k.startswith("train_eval/") for k in history[0])
    for p in history[1:]:
        assert "train_eval/macro_f1" in p and "train_eval/recall/pin" in p and p["train_eval/n"] == 16
    disk = store.read_run()
    assert disk["status"] == "completed" and disk["steps_done"] == 12
    assert disk["examples_seen"] == 12 * 8
    assert disk["params"]["adapter"] == 2 * 4 * (32 + 32) * 2  # 2 layers x (q, v) x r(d_in + d_out)
    assert set(disk["versions"]) >= {"torch", "transformers", "peft", "loratune"}
    assert disk["evaluation"] == {"step0": ["val"], "rows_step0": 20, "rows_per_point": 36, "budget_rows": None,
                                  "rows_scored": 20 + 3 * 36}
    confusion = json.loads((tmp_path / "run" / "confusion.json").read_text())
    assert len(confusion["matrix"]) == 4 and sum(map(sum, confusion["matrix"])) == 20
    cfg_back = load_config(tmp_path / "run" / "config.yaml")
    assert cfg_back == cfg
    assert (tmp_path / "run" / "adapter" / "adapter_config.json").is_file()


def test_learns_the_toy_task(tiny_bert, intent_data, tmp_path):
    _, run = _train(tiny_bert, intent_data, tmp_path / "run", max_steps=40, eval_steps=10, r=8,
                    target_modules="[all-linear]", learning_rate=1e-2)
    assert run["best"]["val/macro_f1"] > 0.6  # chance is 0.25 on four balanced intents
    assert run["final"]["train/loss"] < run["final"]["train/loss"] + 1 and \
        run["final"]["val/loss"] < json.loads((tmp_path / "run" / "history.jsonl").read_text().splitlines()[0])["val/loss"]


def test_seeded_runs_are_reproducible(tiny_bert, intent_data, tmp_path):
    _, a = _train(tiny_bert, intent_data, tmp_path / "a", seed=7)
    _, b = _train(tiny_bert, intent_data, tmp_path / "b", seed=7)
    _, c = _train(tiny_bert, intent_data, tmp_path / "c", seed=8)
    ha, hb, hc = (RunStore(tmp_path / x).read_history() for x in "abc")
    assert [p["val/loss"] for p in ha] == [p["val/loss"] for p in hb]
    assert [p.get("train/loss") for p in ha] == [p.get("train/loss") for p in hb]
    assert [p["val/loss"] for p in ha] != [p["val/loss"] for p in hc]


def test_non_finite_loss_ends_run_as_diverged(tiny_bert, intent_data, tmp_path, monkeypatch):
    import loratune.train as T

    calls = {"n": 0}
    real = T.loss_fn

    def exploding(logits, *a, **k):  # LayerNorm keeps a tiny model finite even at lr 1; inject the NaN
        loss = real(logits, *a, **k)
        if logits.requires_grad:  # a training step, not an evaluation
            calls["n"] += 1
            return loss * float("nan") if calls["n"] == 7 else loss
        return loss

    monkeypatch.setattr(T, "loss_fn", exploding)
    _, run = _train(tiny_bert, intent_data, tmp_path / "run")
    assert run["status"] == "diverged", run["reason"]
    assert run["reason"] == "non-finite loss at step 7"
    assert run["steps_done"] == 6
    disk = RunStore(tmp_path / "run").read_run()
    assert disk["status"] == "diverged" and disk["adapter_step"] is not None


def test_a_diverged_run_without_an_adapter_pairs_with_its_fix(tiny_bert, intent_data, tmp_path, monkeypatch):
    """A run that diverged before its first eval saves no adapter/: its targets came from config.yaml (attn.q,
    attn.v, ffn@top:1), its finished twin's from adapter_config.json (full paths), and the two read as differing in
    target_modules, so the diverged -> learning_rate /10 -> compare loop never paired. They differ in lr alone."""
    import loratune.train as T
    from loratune.diagnose import compare

    targets = "[attn.q, attn.v, ffn@top:1]"
    _, fixed = _train(tiny_bert, intent_data, tmp_path / "lr5e-3", learning_rate=5e-3, target_modules=targets)
    real, calls = T.loss_fn, {"n": 0}

    def exploding(logits, *a, **k):  # a tiny model stays finite at any lr: inject the NaN before the first eval
        loss = real(logits, *a, **k)
        if logits.requires_grad:
            calls["n"] += 1
            return loss * float("nan") if calls["n"] == 2 else loss
        return loss

    monkeypatch.setattr(T, "loss_fn", exploding)
    _, run = _train(tiny_bert, intent_data, tmp_path / "lr5e-2", learning_rate=5e-2, target_modules=targets)
    assert run["status"] == "diverged" and fixed["status"] == "completed"
    assert not (tmp_path / "lr5e-2" / "adapter").exists() and (tmp_path / "lr5e-3" / "adapter").exists()
    c = compare([tmp_path / "lr5e-2", tmp_path / "lr5e-3"])
    (g,) = c.groups
    assert g.knob == "learning_rate" and [(row[0], row[1]) for row in g.runs] == [("lr5e-3", 5e-3), ("lr5e-2", 5e-2)]
    assert not any("exactly one" in n or "no knob group" in n for n in c.notes), c.notes


def test_ctrl_c_leaves_valid_interrupted_record(tiny_bert, intent_data, tmp_path, monkeypatch):
    import loratune.train as T

    calls = {"n": 0}
    real = T.loss_fn

    def flaky(logits, *a, **k):
        if logits.requires_grad:  # a training step, not an evaluation
            calls["n"] += 1
            if calls["n"] == 6:
                raise KeyboardInterrupt
        return real(logits, *a, **k)

    monkeypatch.setattr(T, "loss_fn", flaky)
    with pytest.raises(KeyboardInterrupt):
        _train(tiny_bert, intent_data, tmp_path / "run")
    store = RunStore(tmp_path / "run")
    run = store.read_run()
    # the Ctrl-C came in step 6's loss: 5 steps were done, and the reason names the last one (as steps_done does)
    assert run["status"] == "interrupted" and "after step 5" in run["reason"] and run["steps_done"] == 5
    assert [p["step"] for p in store.read_history()] == [0, 4]
    assert (tmp_path / "run" / "adapter" / "adapter_model.safetensors").is_file()  # best so far is kept


def test_early_stopping(tiny_bert, intent_data, tmp_path):
    _, run = _train(tiny_bert, intent_data, tmp_path / "run", learning_rate=1e-7, max_steps=40, eval_steps=2,
                    early_stopping_patience=2, early_stopping_threshold=0.5)
    assert run["status"] == "completed"
    assert run["reason"].startswith("early stopping")
    assert run["steps_done"] == 6  # step 2's eval sets the bar (never step 0's); 4 and 6 showed no gain of 0.5


def test_patience_running_out_at_the_last_planned_step_is_no_early_stop(tiny_bert, intent_data, tmp_path):
    """The evaluation that exhausts the patience is the last planned step's: every planned step ran, so the run ended
    by its plan, and its reason (and the terminal's "run completed: ...") says so."""
    _, run = _train(tiny_bert, intent_data, tmp_path / "run", learning_rate=1e-7, max_steps=4, eval_steps=2,
                    early_stopping_patience=2, early_stopping_threshold=0.5)
    assert run["status"] == "completed" and run["steps_done"] == run["steps_planned"] == 4
    assert run["reason"] == "planned steps done (4)"


@pytest.mark.parametrize("accum", [1, 2])
def test_the_planned_examples_are_the_examples_seen_when_an_epoch_ends_short(accum, tiny_bert, intent_data, tmp_path):
    """45 rows at batch 8 (the sixth batch holds 5), 1.5 epochs: the plan (the dry run, max_eval_share, tune's
    budgets: steps.examples_for) and the loop agree on the rows seen, with length-grouped batches (the default)."""
    data = tmp_path / "data45"
    data.mkdir()
    for f in intent_data.iterdir():
        lines = f.read_text().splitlines(keepends=True)
        (data / f.name).write_text("".join(lines[:45] if f.name == "train.jsonl" else lines))
    cfg, run = _train(tiny_bert, data, tmp_path / "run", num_train_epochs=1.5, max_steps=-1, eval_steps=100,
                      gradient_accumulation_steps=accum, learning_rate=1e-9)
    assert run["rows"]["train"] == 45
    assert api.plan(cfg)["examples"] == run["examples_seen"] == {1: 45 + 3 * 8, 2: 45 + 2 * 2 * 8}[accum]


def test_gradient_accumulation_counts_examples(tiny_bert, intent_data, tmp_path):
    _, run = _train(tiny_bert, intent_data, tmp_path / "run", gradient_accumulation_steps=2, max_steps=3,
                    eval_steps=3)
    assert run["examples_seen"] == 3 * 2 * 8


def test_an_epoch_ends_with_an_optimizer_step_on_its_remainder(tiny_bert, intent_data, tmp_path):
    # 48 rows at batch 8: 6 micro-batches an epoch; accum 5 steps on 5, then on the last one (as the HF Trainer),
    # never on 4 batches of the next epoch (the step then saw 80 examples, epoch 1.667)
    cfg, run = _train(tiny_bert, intent_data, tmp_path / "run", num_train_epochs=1, max_steps=-1,
                      gradient_accumulation_steps=5, eval_steps=1, learning_rate=1e-9, warmup_ratio=0)
    assert api.plan(cfg)["steps"] == run["steps_planned"] == run["steps_done"] == 2
    assert api.plan(cfg)["examples"] == run["examples_seen"] == 48
    history = RunStore(tmp_path / "run").read_history()
    assert [(p["step"], p["examples_seen"], p["epoch"]) for p in history] == [(0, 0, 0.0), (1, 40, 40 / 48),
                                                                               (2, 48, 1.0)]
    # the short step's loss is the mean over the one micro-batch it accumulated, not 1/5 of it: at an lr of ~0
    # both steps measure the untrained model (8 rows of it: about its val loss, ~ln 4 on four intents, not a fifth)
    untrained = history[0]["val/loss"]
    assert untrained > 1.0 and untrained / 2 < history[2]["train/loss"] < untrained * 2
    assert untrained / 2 < history[1]["train/loss"] < untrained * 2


def test_each_point_logs_the_rate_its_step_used_as_the_trainer_does(tiny_bert, intent_data, tmp_path):
    """The history's `lr` at step k was step k+1's rate (read after scheduler.step()): with a cosine schedule, a
    1-step warmup and 6 steps the HF Trainer logs 0, 5e-3, 4.523e-3, 3.273e-3, 1.727e-3, 4.77e-4 at steps 1-6 (the
    rate each step used) and loratune logged 5e-3, 4.523e-3, ..., 0. Now every point's `lr` is its step's rate, the
    record says so (record_version 2) and the step-1 point, whose step ran at 0, reads 0."""
    import math

    from loratune.store import RECORD_VERSION

    _, run = _train(tiny_bert, intent_data, tmp_path / "run", max_steps=6, eval_steps=1, warmup_ratio=0.1,
                    lr_scheduler_type="cosine")
    history = RunStore(tmp_path / "run").read_history()
    used = [0.0] + [5e-3 * 0.5 * (1 + math.cos(math.pi * (s - 1) / 5)) for s in range(1, 6)]  # steps 1..6
    assert [p["lr"] for p in history[1:]] == pytest.approx(used, abs=1e-9)
    assert used[1:3] == pytest.approx([5e-3, 4.523e-3], abs=1e-6)
    assert [p["lr_max"] for p in history[1:]] == [p["lr"] for p in history[1:]]  # one step a window
    assert history[0]["lr"] == 0.0 and run["record_version"] == RECORD_VERSION == 2


def test_early_stopping_counts_trained_points_only(tiny_bert, intent_data, tmp_path):
    """The step-0 evaluation (the untrained model) set early stopping's bar: with a warmup, step 1 runs at lr 0, its
    point scores as step 0's and patience 1 ended the run after step 1, keeping the untrained model with a note that
    blamed the run's length. As the HF Trainer's EarlyStoppingCallback, the first trained evaluation sets the bar:
    here step 1's (lr 0, so exactly step 0's score), and step 2 must beat it."""
    _, run = _train(tiny_bert, intent_data, tmp_path / "run", max_steps=10, eval_steps=1, warmup_ratio=0.2,
                    early_stopping_patience=1, early_stopping_threshold=0.5)  # no gain of 0.5: step 2 stops it
    history = RunStore(tmp_path / "run").read_history()
    assert [p["step"] for p in history] == [0, 1, 2] and history[1]["lr"] == 0.0
    assert run["status"] == "completed" and run["steps_done"] == 2 and run["reason"].startswith("early stopping")
    note = run["saved_model"]["note"]
    assert run["saved_model"]["step"] == 1 and "untrained model" in note and "early stopping ended the run" in note
    assert "a longer run" not in note and "early_stopping_patience" in note


def test_a_model_whose_steps_all_ran_at_lr_0_is_not_called_trained(tiny_bert, intent_data, tmp_path):
    # any warmup_ratio > 0 warms up over ceil(ratio x steps) >= 1 steps from 0 (as the HF Trainer): step 1 runs at
    # lr 0, so a 1-step run's only evaluation point holds the untrained weights
    _, run = _train(tiny_bert, intent_data, tmp_path / "one", max_steps=1, eval_steps=1, warmup_ratio=0.1)
    note = run["saved_model"]["note"]
    assert run["saved_model"]["step"] == 1 and "untrained model" in note and "learning rate 0" in note
    assert "among the trained evaluation points" not in note
    # two steps: step 2 ran at the full rate, its point is a trained one
    _, run = _train(tiny_bert, intent_data, tmp_path / "two", max_steps=2, eval_steps=2, warmup_ratio=0.1)
    assert "among the trained evaluation points" in run["saved_model"]["note"]
    _, run = _train(tiny_bert, intent_data, tmp_path / "none", max_steps=1, eval_steps=1, warmup_ratio=0)
    assert "among the trained evaluation points" in run["saved_model"]["note"]


def test_an_untrained_model_kept_over_trained_points_that_tied_blames_the_run_not_its_length(tiny_bert, intent_data,
                                                                                               tmp_path):
    """learning_rate 1e-7 trains nothing that shows: every point ties step 1's (lr 0, the untrained model), the tie
    keeps step 1 and the note said "no evaluation point was a trained one (a longer run, or warmup_ratio=0, trains
    it)" of a run whose steps 2-6 were trained points that scored no better. It says so now, and that the run did
    not learn."""
    _, run = _train(tiny_bert, intent_data, tmp_path / "run", max_steps=6, eval_steps=1, warmup_ratio=0.1,
                    learning_rate=1e-7)
    history = RunStore(tmp_path / "run").read_history()
    assert [p["step"] for p in history] == list(range(7)) and history[1]["lr"] == 0.0 and history[2]["lr"] > 0
    assert len({p["val/macro_f1"] for p in history}) == 1  # every point ties: the first trained one is kept
    note = run["saved_model"]["note"]
    assert run["status"] == "completed" and run["saved_model"]["step"] == 1 and "untrained model" in note
    assert "a longer run" not in note and "no evaluation point was a trained one" not in note
    assert "no later, trained evaluation point (steps 2-6) scored better" in note and "did not learn" in note


def test_the_evaluation_budget_counts_the_rows_really_trained(tiny_bert, intent_data, tmp_path):
    # a batch of 256 on 48 rows trains 48 rows a step: 6 steps are 288 examples, an evaluation budget of
    # 0.5 x 3 x 288 = 432 rows (it was 0.5 x 3 x 6 x 256 = 2,304: 7 points of 200 validation rows, 1,496 rows
    # scored, 1.7x the training work, and the robustness probe on top)
    data = tmp_path / "data"
    data.mkdir()
    write_jsonl(data / "train.jsonl", make_rows(12, seed=1))
    write_jsonl(data / "validation.jsonl", make_rows(50, seed=2))
    _, run = _train(tiny_bert, data, tmp_path / "run", per_device_train_batch_size=256, max_steps=6, eval_steps="null")
    ev = run["evaluation"]
    assert run["examples_seen"] == 288 and ev["budget_rows"] == 432
    assert run["eval_every"] == 6 and ev["rows_scored"] == 200 + 216 <= ev["budget_rows"]  # step 0 and the end
    assert "skipped" in run["robustness"]  # its predictions do not fit what is left


def test_multi_label(tiny_bert, tmp_path):
    rows = make_rows(10, seed=4)
    for i, r in enumerate(rows):  # every third row also asks for its balance
        r["label"] = [r["label"], "balance"] if i % 3 == 0 and r["label"] != "balance" else [r["label"]]
    write_jsonl(tmp_path / "train.jsonl", rows)
    write_jsonl(tmp_path / "validation.jsonl", [{"text": r["text"], "label": r["label"]} for r in rows[:12]])
    _, run = _train(tiny_bert, tmp_path, tmp_path / "run", max_steps=8)
    assert run["task"] == "multi_label"
    point = run["final"]
    for key in ("val/micro_f1", "val/macro_f1", "val/subset_accuracy", "val/recall/balance", "val/loss"):
        assert key in point and point[key] is not None
    preds = api.predict(tmp_path / "run", ["what is my balance"])
    assert isinstance(preds[0]["labels"], list)


def test_multi_label_patience_counts_a_falling_val_loss_at_a_tied_exact_match_as_progress(tiny_bert, tmp_path,
                                                                                        monkeypatch):
    """A tie in subset accuracy with a lower val loss moved the saved model to it (objectives.keep_order) while early
    stopping counted it as no improvement: patience 1 stopped the run at step 16, the step it had just saved, where
    a run without early stopping kept improving. Here val subset accuracy ties at every evaluation, so the val loss
    alone says progress, by the one rule (objectives.Patience) that sft counts by too."""
    import loratune.train as T

    real = T.score_split

    def tied(prefix, *a, **k):
        scores, cm = real(prefix, *a, **k)
        if prefix == "val":
            scores["val/subset_accuracy"] = 0.1
        return scores, cm

    monkeypatch.setattr(T, "score_split", tied)
    rows = make_rows(10, seed=4)
    for i, r in enumerate(rows):  # every third row also asks for its balance
        r["label"] = [r["label"], "balance"] if i % 3 == 0 and r["label"] != "balance" else [r["label"]]
    write_jsonl(tmp_path / "train.jsonl", rows)
    write_jsonl(tmp_path / "validation.jsonl", rows[:12])
    _, run = _train(tiny_bert, tmp_path, tmp_path / "run", max_steps=40, eval_steps=4, early_stopping_patience=1)
    points = [p for p in RunStore(tmp_path / "run").read_history() if "val/subset_accuracy" in p]
    steps, losses = [p["step"] for p in points], [p["val/loss"] for p in points]
    assert losses[1] < losses[0]  # the first trained evaluation ties step 0 at a lower val loss: the old stop
    # patience 1 runs out at the first evaluation that sets no new lowest val loss, or the plan ends the run
    stop = next((i for i in range(1, len(losses)) if losses[i] >= min(losses[:i])), None)
    if stop is None or steps[stop] == 40:
        assert run["reason"] == "planned steps done (40)" and steps[-1] == 40
    else:
        assert run["reason"].startswith("early stopping") and steps[-1] == steps[stop]
    # the saved model is the trained point of the lowest val loss, never the evaluation patience stopped at
    kept = min(range(1, len(losses)), key=lambda i: (losses[i], steps[i]))
    assert run["adapter_step"] == run["best"]["step"] == steps[kept] and len(steps) > 2


def test_unseen_validation_labels_are_errors_not_crashes(tiny_bert, tmp_path):
    write_jsonl(tmp_path / "train.jsonl", make_rows(8, seed=1, labels=["card_lost", "balance", "pin"]))
    val = make_rows(3, seed=2, labels=["card_lost", "balance", "pin", "transfer"])
    write_jsonl(tmp_path / "validation.jsonl", val)
    _, run = _train(tiny_bert, tmp_path, tmp_path / "run", max_steps=4)
    assert run["unseen_labels"] == {"val": {"transfer": 3}}
    assert run["labels"] == ["balance", "card_lost", "pin"]
    assert run["final"]["val/accuracy"] <= 9 / 12  # the 3 transfer rows can never be right
    assert math.isfinite(run["final"]["val/loss"])


def test_slices_probe_set_and_robustness_are_recorded(tiny_bert, intent_data, tmp_path, monkeypatch):
    monkeypatch.setenv("LORATUNE_CACHE_DIR", str(tmp_path / "cache"))
    probe = write_jsonl(tmp_path / "probe.jsonl", [{"text": "i lost my card", "label": "card_lost"},
                                                   {"text": "new intent nobody trained", "label": "mystery"}])
    _, run = _train(tiny_bert, intent_data, tmp_path / "run", probe_file=str(probe))
    history = RunStore(tmp_path / "run").read_history()
    last = history[-1]
    for name in ("familiar", "novel", "long", "short"):
        assert f"val_{name}/macro_f1" in last and last[f"val_{name}/n"] > 0
    assert "val_confusable/n" not in history[0]  # fixed at the first evaluation after step 0
    assert run["slices"]["rows"]["familiar"] == run["slices"]["rows"]["novel"] == 20 // 3
    assert last["probe/n"] == 2 and len(last["probe/examples"]) == 2
    assert last["probe/examples"][1]["known_label"] is False and last["probe/examples"][1]["correct"] is False
    rob = run["robustness"]
    assert set(rob) == {"clean_accuracy", "rows", "typo", "drop_word", "case", "punctuation"}
    assert rob["clean_accuracy"] == pytest.approx(run["best"]["val/accuracy"])
    assert rob["typo"]["texts_changed"] > 0.5


def test_robustness_probe_is_skipped_when_it_would_break_the_evaluation_budget(tiny_bert, intent_data, tmp_path):
    """Under max_eval_share (eval_steps null) the probe's predictions count as evaluation: a short run whose
    schedule filled the budget records why it skipped the probe; with no cap it runs."""
    from loratune.eval_extras import ROBUSTNESS_ROWS
    from loratune.robustness import planned_predictions

    _, run = _train(tiny_bert, intent_data, tmp_path / "capped", eval_steps="null")
    ev = run["evaluation"]
    # budget 0.5 x 3 x 12 steps x 8 = 144 rows; step 0 (20 val rows) + 3 points x (20 + 16) = 128
    assert ev["budget_rows"] == 144 and ev["rows_scored"] == 128 and run["eval_every"] == 4
    texts = tuple(json.loads(x)["text"] for x in (intent_data / "validation.jsonl").read_text().splitlines())
    probe = planned_predictions(texts, run["config"]["train"]["seed"], ROBUSTNESS_ROWS)
    assert 128 + probe > 144
    assert set(run["robustness"]) == {"skipped"} and f"{128 + probe}" in run["robustness"]["skipped"]
    assert "robustness" not in run["timing_s"]

    _, free = _train(tiny_bert, intent_data, tmp_path / "free", eval_steps="null", max_eval_share=0)
    assert free["evaluation"]["budget_rows"] is None
    assert set(free["robustness"]) == {"clean_accuracy", "rows", "typo", "drop_word", "case", "punctuation"}


def test_a_thinned_evaluation_schedule_still_logs_the_train_loss(tiny_bert, intent_data, tmp_path):
    """max_eval_share 0.1 of 40 steps x 8 rows x 3 forwards = 96 rows: step 0 (20 val rows) and 2 points of 36,
    every 20 steps; the train loss alone every 5 steps between them (train_log_every), which diagnose reads."""
    from loratune.diagnose import diagnose
    from loratune.features import is_eval_point

    _, run = _train(tiny_bert, intent_data, tmp_path / "run", eval_steps="null", max_steps=40, max_eval_share=0.1)
    assert run["eval_every"] == 20
    hist = [json.loads(x) for x in (tmp_path / "run" / "history.jsonl").read_text().splitlines()]
    assert [p["step"] for p in hist if is_eval_point(p)] == [0, 20, 40]
    train_only = [p for p in hist if not is_eval_point(p)]
    assert [p["step"] for p in train_only] == [5, 10, 15, 25, 30, 35]
    assert all(p["train/loss"] > 0 and p["lr"] > 0 and not any(k.startswith(("val", "train_eval")) for k in p)
               for p in train_only)
    assert run["final"]["step"] == 40 and "val/loss" in run["final"]
    d = diagnose(tmp_path / "run")  # 3 eval points, and the train loss's trend read from 8 windows
    assert d.features["n_eval_points"] == 3
    assert d.features["train_loss_final"] == pytest.approx(hist[-1]["train/loss"])
    assert d.features["train_loss_late_drop"] is not None


def test_precision_is_recorded_and_bf16_keeps_the_head_and_loss_in_float32(tiny_bert, intent_data, tmp_path):
    """train.precision=bf16 runs (emulated where the CPU lacks bf16) with the head in float32; run.json
    says what ran and why; auto picks what precision.detect says for this machine."""
    from loratune import precision as precision_mod
    from loratune.adapt import apply_adapter
    from loratune.heads import head_modules
    from loratune.models import load_classifier

    _, run = _train(tiny_bert, intent_data, tmp_path / "bf16", precision="bf16", max_steps=4, eval_steps=2,
                    pooled_last_block="off")
    assert not run["pooled_last_block"]["applied"] and "off" in run["pooled_last_block"]["reason"]
    assert run["status"] == "completed"
    assert run["precision"]["dtype"] == "bfloat16" and run["precision"]["setting"] == "bf16"
    assert math.isfinite(run["final"]["val/loss"])
    _, auto = _train(tiny_bert, intent_data, tmp_path / "auto", max_steps=2, eval_steps=2)
    # under bf16 every (plain) LoRA layer takes its input as autocast gives it (precision.adapter_inputs_as_is)
    assert run["precision"]["lora_inputs_as_is"] == run["model"]["adapted_modules"] > 0
    # ...and every frozen linear layer of the body holds its weights in bf16 (precision.frozen_weights_in_bf16): the
    # tiny BERT's 2 layers x (query, key, value, attention output, intermediate, output); not the pooler or classifier
    assert run["precision"]["frozen_linear_bf16"] == 12
    auto_precision = precision_mod.detect("auto", auto["device"])  # cuda where a GPU ran it
    assert auto["precision"] == precision_mod.record(
        auto_precision, *((run["precision"]["lora_inputs_as_is"], 12) if auto_precision.autocast else (0, 0)))
    assert set(auto["timing_s"]) >= {"load_model", "tokenize", "evaluate", "train_steps", "save"}
    # on CPU every active dropout (hidden, LoRA input, head) draws its mask from random 16-bit lanes (kernels.py;
    # a GPU keeps torch's); the tiny model has no attention dropout, so its attention stays torch's SDPA
    if auto["device"] == "cpu":
        assert auto["dropout"]["kernel"] == "uniform" and auto["dropout"]["modules"] >= 2
    else:
        assert auto["dropout"]["kernel"] == "torch"
    assert auto["dropout"]["attention"] == "torch"
    # BERT's head reads the first token: the last of its 2 blocks runs there only (pooled_block.py); off: everywhere
    assert auto["pooled_last_block"]["applied"] and auto["pooled_last_block"]["block"] == 1
    # how OpenMP threads waited: the choice loratune made on import (openmp.py), recorded as it was made
    from loratune import openmp

    assert auto["openmp"] == openmp.CHOICE and auto["openmp"]["wait"] in ("spin", "passive", "environment")

    cfg = load_config(None, overrides(tiny_bert, intent_data, tmp_path / "x"))
    model, _ = apply_adapter(load_classifier(cfg.model, 4, False), cfg.adapter)
    wrapped = precision_mod.head_in_fp32(model, head_modules(model), "cpu")
    assert any(n.endswith("classifier") for n in wrapped) and any(n.endswith("pooler") for n in wrapped)
    batch = {"input_ids": torch.tensor([[2, 5, 6, 3]]), "attention_mask": torch.ones(1, 4, dtype=torch.long)}
    with torch.autocast("cpu", dtype=torch.bfloat16):
        logits = model(**batch).logits
    assert logits.dtype == torch.float32  # without the wrapper, autocast makes the classifier's output bf16


@pytest.mark.parametrize("arch", ["tiny_bert", "tiny_llama"])
def test_init_from_starts_where_the_saved_model_ended(arch, request, intent_data, tmp_path):
    """train.init_from: a second run starts from the first run's saved adapter and head (a warm start), so its
    step-0 evaluation scores what the first run saved; a fresh run does not."""
    folder = request.getfixturevalue(arch)
    _, first = _train(folder, intent_data, tmp_path / "a", learning_rate=2e-2, max_steps=24, eval_steps=8)
    assert first["adapter_step"] > 0
    saved = RunStore(tmp_path / "a").adapter_dir
    _, warm = _train(folder, intent_data, tmp_path / "b", learning_rate=1e-2, max_steps=8, eval_steps=4,
                     init_from=str(saved))
    _, fresh = _train(folder, intent_data, tmp_path / "c", learning_rate=1e-2, max_steps=8, eval_steps=4)
    step0 = {name: json.loads((tmp_path / name / "history.jsonl").read_text().splitlines()[0])
             for name in ("a", "b", "c")}
    best = next(json.loads(x) for x in (tmp_path / "a" / "history.jsonl").read_text().splitlines()
                if json.loads(x)["step"] == first["adapter_step"])
    assert step0["b"]["val/macro_f1"] == pytest.approx(best["val/macro_f1"])
    assert step0["b"]["val/loss"] == pytest.approx(best["val/loss"], rel=1e-5)
    assert step0["c"]["val/loss"] == pytest.approx(step0["a"]["val/loss"], rel=1e-5)  # a fresh start
    assert step0["b"]["val/loss"] < step0["c"]["val/loss"]
    assert warm["init_from"].startswith(f"started from {saved}") and fresh["init_from"] is None
    assert warm["status"] == "completed" and warm["config"]["train"]["init_from"] == str(saved)


def test_init_from_a_full_model(tiny_bert, intent_data, tmp_path):
    _, first = _train(tiny_bert, intent_data, tmp_path / "a", method="full", learning_rate=1e-3, max_steps=16,
                      eval_steps=8)
    _, warm = _train(tiny_bert, intent_data, tmp_path / "b", method="full", learning_rate=1e-3, max_steps=4,
                     eval_steps=4, init_from=str(RunStore(tmp_path / "a").adapter_dir))
    best = next(json.loads(x) for x in (tmp_path / "a" / "history.jsonl").read_text().splitlines()
                if json.loads(x)["step"] == first["adapter_step"])
    step0 = json.loads((tmp_path / "b" / "history.jsonl").read_text().splitlines()[0])
    assert step0["val/loss"] == pytest.approx(best["val/loss"], rel=1e-5)


@pytest.mark.parametrize("change, needle", [({"r": 8}, "shape"), ({"target_modules": "[attn.q]"}, "not in this model"),
                                            ({"method": "full"}, "has no model.safetensors")])
def test_init_from_weights_that_do_not_fit_is_a_user_error(change, needle, tiny_bert, intent_data, tmp_path):
    from loratune.errors import UserError

    _train(tiny_bert, intent_data, tmp_path / "a", max_steps=4, eval_steps=4)
    saved = RunStore(tmp_path / "a").adapter_dir
    with pytest.raises(UserError, match="train.init_from") as err:
        _train(tiny_bert, intent_data, tmp_path / "b", max_steps=4, eval_steps=4, init_from=str(saved), **change)
    assert needle in str(err.value) and err.value.fix
    assert not (tmp_path / "b" / "run.json").exists()  # refused before a record is started


@pytest.mark.parametrize("change, needle", [({"lora_alpha": 64}, "adapter.lora_alpha 8"),
                                            ({"use_rslora": True}, "adapter.use_rslora False"),
                                            ({"init_lora_weights": "pissa"}, "adapter.init_lora_weights default")])
def test_init_from_an_adapter_saved_under_another_scale_or_init_is_a_user_error(change, needle, tiny_bert,
                                                                                intent_data, tmp_path):
    """Same shapes, other meaning: alpha and rsLoRA scale the loaded A and B differently, pissa rewrites the base
    weights; each would start the run from a model nobody saved. The fix names the saved value."""
    from loratune.errors import UserError

    _train(tiny_bert, intent_data, tmp_path / "a", max_steps=4, eval_steps=4)
    saved = RunStore(tmp_path / "a").adapter_dir
    with pytest.raises(UserError, match="train.init_from") as err:
        _train(tiny_bert, intent_data, tmp_path / "b", max_steps=4, eval_steps=4, init_from=str(saved), **change)
    assert needle in str(err.value) and f"set {needle.split()[0]}={needle.split()[1]}" in err.value.fix
    assert not (tmp_path / "b" / "run.json").exists()
    if "init_lora_weights" not in change:
        return
    # init_lora_weights gaussian only draws the A and B the warm start overwrites: it loads, at the saved model
    _, run = _train(tiny_bert, intent_data, tmp_path / "c", max_steps=1, eval_steps=1, init_from=str(saved),
                    init_lora_weights="gaussian")
    assert run["status"] == "completed"


@pytest.mark.parametrize("method", ["lora", "full"])
def test_init_from_a_run_with_other_label_names_is_refused_and_another_order_reordered(method, tiny_bert, intent_data,
                                                                                      tmp_path):
    """The head's row k answers the saved label_map.json's label k: a run whose data names one label otherwise (same
    count, so the shapes fit) is refused naming both lists; the same names in another order get the rows reordered by
    name (models.own_head_case, the rule of a base folder's own head), so step 0 scores what the saved model did."""
    import shutil

    from safetensors.torch import load_file, save_file

    from loratune.errors import UserError

    lr = 1e-3 if method == "full" else 2e-2
    _, first = _train(tiny_bert, intent_data, tmp_path / "a", method=method, learning_rate=lr, max_steps=16,
                      eval_steps=8)
    saved = RunStore(tmp_path / "a").adapter_dir
    renamed = tmp_path / "renamed"
    renamed.mkdir()
    for f in intent_data.iterdir():
        (renamed / f.name).write_text(f.read_text().replace('"balance"', '"zbalance"'))
    with pytest.raises(UserError, match="train.init_from") as err:
        _train(tiny_bert, renamed, tmp_path / "b", method=method, max_steps=4, eval_steps=4, init_from=str(saved))
    assert "[balance, card_lost, pin, transfer]" in str(err.value)
    assert "[card_lost, pin, transfer, zbalance]" in str(err.value)
    assert not (tmp_path / "b" / "run.json").exists()
    # the same folder saved in another label order (rows and label_map.json permuted together): the same model
    perm = [2, 0, 3, 1]
    shuffled = tmp_path / "shuffled"
    shutil.copytree(saved, shuffled)
    weights = shuffled / ("adapter_model.safetensors" if method == "lora" else "model.safetensors")
    tensors = load_file(weights)
    head = "base_model.model.classifier." if method == "lora" else "classifier."
    for k in ("weight", "bias"):
        tensors[head + k] = tensors[head + k][perm].contiguous()
    save_file(tensors, weights, metadata={"format": "pt"})
    label_map = json.loads((shuffled / "label_map.json").read_text())
    label_map["labels"] = [label_map["labels"][i] for i in perm]
    (shuffled / "label_map.json").write_text(json.dumps(label_map))
    _, warm = _train(tiny_bert, intent_data, tmp_path / "c", method=method, max_steps=1, eval_steps=1,
                     init_from=str(shuffled))
    best = next(json.loads(x) for x in (tmp_path / "a" / "history.jsonl").read_text().splitlines()
                if json.loads(x)["step"] == first["adapter_step"])
    step0 = json.loads((tmp_path / "c" / "history.jsonl").read_text().splitlines()[0])
    assert step0["val/loss"] == pytest.approx(best["val/loss"], rel=1e-5)
    assert step0["val/macro_f1"] == pytest.approx(best["val/macro_f1"])
    assert "rows reordered from its label order [pin, balance, transfer, card_lost]" in warm["init_from"]


def test_init_from_saved_on_another_base_model_path_is_a_recorded_warning(tiny_bert, intent_data, tmp_path, capsys):
    """A warm start onto another base model of the same shapes loads, but the adapter was trained on other weights: a
    warning naming both paths goes to run.json init_from and stderr (not a refusal: a moved copy of the base is the
    same model)."""
    import shutil

    _train(tiny_bert, intent_data, tmp_path / "a", max_steps=4, eval_steps=4)
    saved = RunStore(tmp_path / "a").adapter_dir
    other = tmp_path / "other-base"
    shutil.copytree(tiny_bert, other)
    capsys.readouterr()
    _, same = _train(tiny_bert, intent_data, tmp_path / "b", max_steps=1, eval_steps=1, init_from=str(saved))
    assert "warning" not in same["init_from"] and "warning" not in capsys.readouterr().err
    _, moved = _train(str(other), intent_data, tmp_path / "c", max_steps=1, eval_steps=1, init_from=str(saved))
    note = f"warning: saved on the base model {tiny_bert}, this run's is {other} (model.name_or_path)"
    assert note in moved["init_from"] and note in capsys.readouterr().err


def test_a_warm_starts_divergence_reference_is_the_unadapted_models_loss():
    """train.fresh_loss: a warm-started run's step-1 loss is the saved model's (low), so 4x it is an ordinary
    restart bump; the reference is the loss with the adapter and its saved head disabled (a fresh run's start)."""
    from peft import LoraConfig, get_peft_model
    from torch import nn

    from loratune.train import diverged, fresh_loss

    torch.manual_seed(0)
    base = nn.Sequential(nn.Linear(8, 8), nn.ReLU(), nn.Linear(8, 3))
    x, y = torch.randn(16, 8), torch.randint(0, 3, (16,))
    before = float(nn.functional.cross_entropy(base(x), y))
    model = get_peft_model(base, LoraConfig(r=4, target_modules=["0"], modules_to_save=["2"]))
    with torch.no_grad():
        for n, p in model.named_parameters():
            if "lora_B" in n or "modules_to_save" in n:
                p.add_(torch.randn_like(p))  # a trained adapter and head: the outputs move

    def loss():
        return nn.functional.cross_entropy(model(x), y)

    adapted = float(loss())
    assert adapted != pytest.approx(before)
    assert fresh_loss(model, loss) == pytest.approx(before)  # the un-adapted model
    assert float(loss()) == pytest.approx(adapted)  # the adapter is on again afterwards
    assert fresh_loss(nn.Linear(8, 3), loss) is None  # full fine-tuning: no reference
    # a window 9x a warm start's low step-1 loss but below the un-adapted model's loss is no divergence
    assert diverged(0.126, 0.0142) and diverged(0.126, 0.0142, fresh=1.1) is None
    assert diverged(0.126, 0.0142, fresh=math.nan) is None
    assert diverged(math.inf, 0.0142, fresh=math.nan) == "non-finite loss"


def test_a_warm_start_whose_loss_blows_up_past_the_unadapted_models_is_recorded_diverged(tiny_bert, intent_data,
                                                                                         tmp_path, monkeypatch):
    """A warm start at lr 0.3 whose window means rose to 4-10x its step-1 loss and above the un-adapted model's loss
    was recorded `completed` (exit 0, adapter/ saved from a diverged window) while the diagnosis and train's verdict
    line said diverged: the guard compared against max(step 1, un-adapted) x 4, ~6.6 for a start of 0.58. Now a warm
    start diverges past 4x its step 1 when also above diverged_chance_ratio x the un-adapted model's loss
    (train.divergence_bar; the real measure, read as the run takes it)."""
    import loratune.train as T
    from loratune.diagnose import diagnose

    measured, real_fresh = [], T.fresh_loss
    monkeypatch.setattr(T, "fresh_loss", lambda *a: measured.append(real_fresh(*a)) or measured[-1])

    _, first = _train(tiny_bert, intent_data, tmp_path / "a", learning_rate=1e-2, max_steps=60,
                      early_stopping_patience=3, warmup_ratio=0.06)
    assert first["adapter_step"] > 0
    _, warm = _train(tiny_bert, intent_data, tmp_path / "b", learning_rate=0.3,
                     init_from=str(RunStore(tmp_path / "a").adapter_dir))
    points = [json.loads(x) for x in (tmp_path / "b" / "history.jsonl").read_text().splitlines()]
    step1 = next(p["train/loss_first"] for p in points if p.get("train/loss_first") is not None)
    windows = [(p["step"], p["train/loss"]) for p in points if p.get("train/loss") is not None]
    assert len(measured) == 1 and measured[0] > 1.0  # the un-adapted model's loss, about ln 4
    over = [s for s, loss in windows if loss > T.divergence_bar(step1, measured[0])]
    assert over, f"the scripted blow-up did not happen on this build: {windows}, step 1 {step1}"
    assert warm["status"] == "diverged", (warm["status"], warm["reason"], windows, step1)
    assert "un-adapted model's loss" in warm["reason"] and f"(step {over[0]})" in warm["reason"]
    assert warm["steps_done"] == over[0]  # stopped at the first window past the bar
    saved = (warm["saved_model"] or {}).get("step")
    assert saved is None or saved < over[0]  # a diverged window never counts
    assert diagnose(tmp_path / "b").verdict == "diverged"  # the diagnosis and the record agree


@pytest.mark.parametrize("losses, fresh, stopped", [
    ([0.581, 2.354, 6.042, 3.901], 1.66, 3),  # the hunter's lr 0.3 run: 6.04 > max(4 x 0.581, 2 x 1.66) = 3.32
    ([0.0158, 0.18, 2.53, 1.25, 1.14, 0.50, 0.79], 1.62, None),  # lr 0.05: a bump under 2 x 1.62 = 3.24, recovered
])
def test_a_warm_start_stops_where_the_diagnosis_calls_it_diverged(losses, fresh, stopped, tiny_bert, intent_data,
                                                                   tmp_path, monkeypatch):
    """Scripted window losses (one step per window) through a warm start. The guard's bar max(4 x step 1, 1 x the
    un-adapted model's loss) stopped the lr 0.05 run at 2.53 (exit 3) though it recovered to 0.79, a run `diagnose`
    calls lr-too-large; now the un-adapted multiple is the diagnosis' diverged_chance_ratio (2): that run completes,
    and the lr 0.3 run is still stopped at 6.04, recorded diverged as the diagnosis says."""
    import loratune.train as T
    from loratune.diagnose import diagnose

    _train(tiny_bert, intent_data, tmp_path / "a", max_steps=4, eval_steps=4)
    real, script = T.loss_fn, iter(losses)

    def scripted(logits, *a, **k):
        loss = real(logits, *a, **k)
        return loss * 0 + next(script) if logits.requires_grad else loss  # a training step: the scripted loss

    monkeypatch.setattr(T, "loss_fn", scripted)
    monkeypatch.setattr(T, "fresh_loss", lambda model, loss_of: fresh)
    _, run = _train(tiny_bert, intent_data, tmp_path / "b", max_steps=len(losses), eval_steps=1,
                    early_stopping_patience=0, init_from=str(RunStore(tmp_path / "a").adapter_dir))
    windows = [p["train/loss"] for p in RunStore(tmp_path / "b").read_history() if p.get("train/loss") is not None]
    verdict = diagnose(tmp_path / "b").verdict
    if stopped is None:
        assert run["status"] == "completed" and run["steps_done"] == len(losses), (run["status"], run["reason"])
        assert windows == pytest.approx(losses) and verdict != "diverged"
    else:
        assert run["status"] == "diverged" and run["steps_done"] == stopped, (run["status"], run["reason"])
        assert run["reason"].startswith(f"train loss exploded: {losses[stopped - 1]:.3g} over the last window")
        assert f"the un-adapted model's loss ({fresh:.3g})" in run["reason"] and f"(step {stopped})" in run["reason"]
        assert verdict == "diverged"


@pytest.mark.parametrize("arch", ["tiny_bert", "tiny_llama"])
def test_the_adapter_card_recipes_name_the_runs_labels(arch, request, intent_data, tmp_path):
    """The card's recipe gave the head LABEL_i names, and AutoPeftModelForSequenceClassification crashed (the base's
    2-label head vs the run's 4): both recipes, run as written, now load it, and a pipeline over the merged model says
    the labels `loratune predict` says."""
    from support import card_recipe

    folder = request.getfixturevalue(arch)
    out = tmp_path / "run"
    _train(folder, intent_data, out, max_steps=8, eval_steps=4, learning_rate=2e-2)
    texts = ["lost my card please", "what is my balance", "reset my pin", "send money to mum"]
    ours = [p["label"] for p in api.predict(str(out), texts)]
    scope = card_recipe(out, {"BASE": folder}, after="Without loratune:\n\n")
    labels = json.loads((out / "adapter" / "label_map.json").read_text())["labels"]
    assert scope["model"].config.id2label == dict(enumerate(labels))
    printed: list = []
    scope = card_recipe(out, {**scope, "print": printed.append}, after="(continuing from the code above):\n\n")
    assert printed and printed[0][0]["label"] in labels
    assert [r["label"] for r in scope["classify"](texts)] == ours


@pytest.mark.parametrize("method", ["lora", "full"])
def test_a_pipeline_on_the_saved_model_says_what_predict_says_on_texts_past_max_length(method, tiny_bert, intent_data,
                                                                                       tmp_path):
    """The saved tokenizer kept the base's model_max_length (none here, 512 for MiniLM), so the card's pipeline and the
    plain full-model load scored the whole of a text that predict cuts at the run's max_length: other labels, and past
    the position table an error. The tokenizer now carries max_length and the recipes pass truncation=True."""
    from transformers import AutoModelForSequenceClassification, AutoTokenizer, pipeline

    from support import card_recipe

    out = tmp_path / "run"
    cfg, _ = _train(tiny_bert, intent_data, out, max_steps=24, eval_steps=8, learning_rate=2e-2, method=method)
    assert cfg.model.max_length == 16
    assert AutoTokenizer.from_pretrained(out / "adapter").model_max_length == 16
    # and the card's recipes name it: a pick trained before its tokenizer carried it is exported with the base's
    card = (out / "adapter" / "README.md").read_text()
    assert "truncation=True, max_length=16" in card and "truncation=True))" not in card
    intents = ["what is my balance", "lost my card", "change my pin", "send money to a friend"]
    texts = [f"{a} {a} " + f"{b} " * 6 for a in intents for b in intents if a != b]  # 20+ tokens each
    texts.append("lost my card " * 30)  # 90 tokens: past the 64 positions of the tiny model
    ours = api.predict(str(out), texts)
    if method == "lora":  # the card's two recipes, as written
        scope = card_recipe(out, {"BASE": tiny_bert}, after="Without loratune:\n\n")
        assert scope["logits"].shape == (1, 4)  # its scoring line runs
        scope = card_recipe(out, {**scope, "print": lambda *a: None}, after="(continuing from the code above):\n\n")
        classify = scope["classify"]
    else:  # the README's full-model load, then a pipeline as the card's
        classify = pipeline("text-classification", model=AutoModelForSequenceClassification.from_pretrained(
            out / "adapter"), tokenizer=AutoTokenizer.from_pretrained(out / "adapter"))
    theirs = classify(texts, truncation=True)
    assert [r["label"] for r in theirs] == [p["label"] for p in ours]
    assert [r["score"] for r in theirs] == pytest.approx([p["score"] for p in ours], abs=0.02)  # (bf16 autocast)


def test_modernbert_head_is_trained_and_saved_so_evaluate_repeats_the_run(intent_data, tmp_path):
    """ModernBERT's classifier adds `head` (dense + norm) before `classifier`: both are the head, trained and saved
    with the adapter (heads.head_modules). Left out, `head` was random at every load and evaluate changed each call."""
    from transformers import ModernBertConfig, ModernBertModel

    from support import _save_tokenizer

    folder = tmp_path / "tiny-modernbert"
    tok = _save_tokenizer(folder)
    torch.manual_seed(0)
    ModernBertModel(ModernBertConfig(
        vocab_size=len(tok), hidden_size=32, num_hidden_layers=2, num_attention_heads=2, intermediate_size=64,
        max_position_embeddings=64, pad_token_id=0, cls_token_id=2, sep_token_id=3, bos_token_id=2, eos_token_id=3,
        global_attn_every_n_layers=1, local_attention=16)).save_pretrained(folder)
    _, run = _train(str(folder), intent_data, tmp_path / "run", target_modules="all-linear", max_steps=8)
    adapter = load_file(str(tmp_path / "run" / "adapter" / "adapter_model.safetensors"))
    assert any(k.startswith("base_model.model.head.dense.") for k in adapter)
    assert any(k.startswith("base_model.model.head.norm.") for k in adapter)
    # the head's 32x32 dense + norm weight and the 32x4 classifier + bias
    assert run["params"]["head"] == 32 * 32 + 32 + 32 * 4 + 4
    first, second = (api.evaluate(tmp_path / "run", split="validation") for _ in range(2))
    assert first["val/loss"] == second["val/loss"]
    assert first["val/loss"] == pytest.approx(run["best"]["val/loss"], rel=1e-5)


def test_decoder_pad_id_is_the_one_loratune_pads_with_so_predictions_ignore_batch_mates(intent_data, tmp_path):
    """A decoder classifier pools the last token that is not config.pad_token_id. A config.json pad id (1) the
    tokenizer never writes (it has no pad token: loratune pads with eos) made it pool padding: a text's scores moved
    with a longer batch-mate. Training and loading now give the model the id loratune pads with, and say so."""
    from transformers import LlamaConfig, LlamaForCausalLM

    from sft_support import make_tokenizer

    folder = tmp_path / "tiny-llama-pad1"
    tok = make_tokenizer(chat_template=False)
    tok.pad_token = None
    tok.save_pretrained(folder)
    torch.manual_seed(0)
    LlamaForCausalLM(LlamaConfig(vocab_size=len(tok), hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                                 num_attention_heads=2, num_key_value_heads=2, max_position_embeddings=128,
                                 pad_token_id=1, bos_token_id=tok.bos_token_id, eos_token_id=tok.eos_token_id,
                                 initializer_range=0.2)).save_pretrained(folder)
    _, run = _train(str(folder), intent_data, tmp_path / "run", learning_rate=2e-2, max_steps=8, precision="fp32")
    alone = api.predict(tmp_path / "run", ["lost my card"])[0]
    longer = "hello hello what is my balance please i want to transfer money to my account now thanks"
    paired = api.predict(tmp_path / "run", ["lost my card", longer])[0]
    assert alone["label"] == paired["label"]
    assert [t["score"] for t in alone["top"]] == pytest.approx([t["score"] for t in paired["top"]], abs=1e-5)
    assert run["model"]["pad_token_id"] == tok.eos_token_id != 1
    assert "pad_token_id 1 replaced by" in run["model"]["pad_note"]


def test_albert_trains_with_all_linear_and_records_its_shared_depth(intent_data, tmp_path):
    """ALBERT was refused ('found no nn.Linear layers inside the transformer blocks'): its one shared block now takes
    the adapters, and run.json says 1 block of weights runs 4 layers deep."""
    from transformers import AlbertConfig, AlbertModel

    from support import _save_tokenizer

    folder = tmp_path / "tiny-albert"
    tok = _save_tokenizer(folder)
    torch.manual_seed(0)
    AlbertModel(AlbertConfig(vocab_size=len(tok), embedding_size=16, hidden_size=32, num_hidden_layers=4,
                             num_attention_heads=2, intermediate_size=64, max_position_embeddings=64,
                             pad_token_id=0)).save_pretrained(folder)
    _, run = _train(str(folder), intent_data, tmp_path / "run", target_modules="all-linear", max_steps=8,
                    precision="fp32")
    assert run["status"] == "completed"
    assert run["model"]["num_layers"] == 1 and run["model"]["depth"] == 4 and run["model"]["adapted_modules"] == 6
    assert run["params"]["adapter"] == 4 * ((32 + 32) * 4 + (32 + 64) * 2)  # r=4: q, k, v, dense; ffn, ffn_output
    assert api.evaluate(tmp_path / "run", split="validation")["val/loss"] == pytest.approx(run["best"]["val/loss"],
                                                                                          rel=1e-5)


# run.json sections whose keys are data (labels, splits' metric names, robustness perturbations), not fields
_DATA_KEYED = ("label_counts", "unseen_labels", "best", "final", "untrained", "test", "robustness", "timing_s")


def test_every_field_of_a_fresh_run_json_is_in_the_run_record_doc(tiny_bert, intent_data, tmp_path):
    """docs/run-record.md lists what run.json holds: a field training (or evaluate) writes that it does not name
    fails here (data_notes, method, rows, eval_every, setup_s, device, dropout, openmp, slices, config, eval, partial
    and model.depth, params.base, precision.lora_inputs_as_is, ... were written unsaid)."""
    from pathlib import Path

    from loratune.inference import evaluate_run

    _, run = _train(tiny_bert, intent_data, tmp_path / "run", learning_rate=2e-2)
    evaluate_run(tmp_path / "run", split="test")
    run = json.loads((tmp_path / "run" / "run.json").read_text())
    doc = (Path(__file__).resolve().parents[2] / "docs" / "run-record.md").read_text(encoding="utf-8")
    block = doc[doc.index("## run.json"):doc.index("### Status")]
    missing = [k for k in run if f'"{k}"' not in block]
    for k, v in run.items():
        if isinstance(v, dict) and k not in _DATA_KEYED and f'"{k}":' in block:
            after = block[block.index(f'"{k}":'):]
            missing += [f"{k}.{sub}" for sub in v if f'"{sub}"' not in after]
    assert not missing, f"run.json fields not in docs/run-record.md: {missing}"
    assert run["partial"] is False and "eval" in run and run["eval"]["test"] == run["test"]


def _bert_classifier(folder, num_labels: int, **config) -> str:
    from transformers import BertConfig, BertForSequenceClassification

    from support import _save_tokenizer

    tok = _save_tokenizer(folder)
    torch.manual_seed(0)
    model = BertForSequenceClassification(BertConfig(
        vocab_size=len(tok), hidden_size=32, num_hidden_layers=2, num_attention_heads=2, intermediate_size=64,
        max_position_embeddings=128, initializer_range=0.2, num_labels=num_labels, **config))
    with torch.no_grad():  # a trained head's bias is not the init's zeros: its rows must move with the weight's
        model.classifier.bias.normal_()
    model.save_pretrained(folder)
    return str(folder)


def test_a_base_model_that_is_a_classifier_of_another_label_count_gets_a_fresh_head(intent_data, tmp_path):
    """A BertForSequenceClassification folder with 2 labels failed with 'could not load the model: You set
    `ignore_mismatched_sizes` to `False`... look at the above report!' (no report shown; the files were fine).
    Its head is replaced by a fresh one for the data's labels, and run.json says so."""
    folder = _bert_classifier(tmp_path / "bert-cls2", 2)
    _, run = _train(folder, intent_data, tmp_path / "run", max_steps=2)
    k = len(run["labels"])
    assert k != 2 and run["status"] == "completed"
    note = run["model"]["head_note"]
    assert "own 2-label classification head" in note and f"fresh {k}-label head" in note
    assert "classifier.weight" in note
    assert len(api.predict(tmp_path / "run", ["lost my card"])[0]["top"]) >= 1


def test_a_base_model_with_its_own_head_at_the_data_label_count_has_no_head_note(tmp_path):
    from loratune.config import ModelConfig
    from loratune.models import HEAD_NOTE_ATTR, load_classifier

    folder = _bert_classifier(tmp_path / "bert-cls3", 3)
    assert getattr(load_classifier(ModelConfig(name_or_path=folder), 3, False), HEAD_NOTE_ATTR) is None


def test_a_classifier_folder_whose_other_weights_mismatch_its_config_is_refused(tmp_path):
    """Only the head may be left out: a weight of the encoder with another shape is a damaged folder."""
    from loratune.config import ModelConfig
    from loratune.errors import UserError
    from loratune.models import load_classifier

    folder = _bert_classifier(tmp_path / "bert-bad", 2)
    cfg_file = tmp_path / "bert-bad" / "config.json"
    cfg = json.loads(cfg_file.read_text())
    cfg["intermediate_size"] = 48
    cfg_file.write_text(json.dumps(cfg))
    with pytest.raises(UserError) as err:
        load_classifier(ModelConfig(name_or_path=folder), 4, False)
    assert "intermediate.dense.weight" in str(err.value) and "other shapes than its config.json" in str(err.value)


# the intent data's labels in the folders' own head orders: the data's names shuffled, other names, transformers' own
DATA_LABELS = ["balance", "card_lost", "pin", "transfer"]
SHUFFLED = ["pin", "balance", "transfer", "card_lost"]
HEAD_FOLDERS = {"reorder": SHUFFLED, "other": ["w", "x", "y", "z"], "generic": None}


def _labelled_classifier(folder, names) -> str:
    """A 4-label BERT classifier whose config.json names its head's rows `names` (None: transformers' LABEL_i)."""
    named = {} if names is None else {"id2label": dict(enumerate(names)),
                                      "label2id": {n: i for i, n in enumerate(names)}}
    return _bert_classifier(folder, len(names or DATA_LABELS), **named)


def _load_for_data(folder):
    from loratune.config import ModelConfig
    from loratune.models import load_classifier

    return load_classifier(ModelConfig(name_or_path=folder), 4, False, dict(enumerate(DATA_LABELS))).eval()


def test_a_base_classifier_of_the_data_labels_in_another_order_keeps_each_label_s_trained_row(tmp_path):
    """transformers kept the folder's head as saved (row k for its label k) while the config named the data's labels:
    'pin' was predicted where the folder's head said 'balance'. Its rows are reordered to the data's order."""
    from transformers import AutoTokenizer, BertForSequenceClassification

    from loratune.models import HEAD_NOTE_ATTR

    folder = _labelled_classifier(tmp_path / "bert-shuffled", SHUFFLED)
    base = BertForSequenceClassification.from_pretrained(folder).eval()
    model = _load_for_data(folder)
    tok = AutoTokenizer.from_pretrained(folder)
    texts = [r["text"] for r in make_rows(1, seed=0)] + ["lost my card", "change my pin", "what is my balance",
                                                         "wire funds now"]
    enc = tok(texts, return_tensors="pt", padding=True)
    with torch.no_grad():
        want, got = base(**enc).logits, model(**enc).logits
    rows = [SHUFFLED.index(label) for label in DATA_LABELS]
    assert torch.allclose(got, want[:, rows], atol=1e-6)  # each data label's logit is its trained row's
    assert [model.config.id2label[int(i)] for i in got.argmax(-1)] == \
        [base.config.id2label[int(i)] for i in want.argmax(-1)]  # the same predictions, by name
    assert "rows reordered from the folder's label order [pin, balance, transfer, card_lost] to the data's " \
           "[balance, card_lost, pin, transfer]" in getattr(model, HEAD_NOTE_ATTR)


def test_a_base_classifier_of_other_labels_at_the_data_label_count_gets_a_fresh_head(tmp_path):
    from safetensors.torch import load_file

    from loratune.models import HEAD_NOTE_ATTR

    folder = _labelled_classifier(tmp_path / "bert-other", HEAD_FOLDERS["other"])
    saved = load_file(f"{folder}/model.safetensors")
    model = _load_for_data(folder)
    assert not torch.equal(model.classifier.weight, saved["classifier.weight"])  # its rows meant w..z, not the data's
    assert torch.equal(model.classifier.bias, torch.zeros(4))  # BERT's init of a fresh head
    assert 0.1 < model.classifier.weight.std().item() < 0.3  # initializer_range 0.2, not left empty
    assert torch.equal(model.bert.pooler.dense.weight, saved["bert.pooler.dense.weight"])  # only the head is new
    assert getattr(model, HEAD_NOTE_ATTR) == (
        "the folder's own 4-label classification head (classifier) was replaced by a fresh 4-label head: it was "
        "trained for other labels ([w, x, y, z]; the data's are [balance, card_lost, pin, transfer])")


def test_a_base_classifier_with_generic_label_names_keeps_its_rows_and_says_their_meaning_is_unknown(tiny_bert,
                                                                                                     tmp_path):
    from safetensors.torch import load_file

    from loratune.models import HEAD_NOTE_ATTR

    folder = _labelled_classifier(tmp_path / "bert-generic", None)
    saved = load_file(f"{folder}/model.safetensors")
    model = _load_for_data(folder)
    assert torch.equal(model.classifier.weight, saved["classifier.weight"])
    assert torch.equal(model.classifier.bias, saved["classifier.bias"])
    note = getattr(model, HEAD_NOTE_ATTR)
    assert "kept as saved" in note and "[LABEL_0, LABEL_1, LABEL_2, LABEL_3]" in note and "unknown" in note
    assert getattr(_load_for_data(tiny_bert), HEAD_NOTE_ATTR) is None  # a plain encoder saved no head: fresh, no note


@pytest.mark.parametrize("case, says", [
    ("reorder", "its rows reordered from the folder's label order [pin, balance, transfer, card_lost]"),
    ("other", "replaced by a fresh 4-label head: it was trained for other labels ([w, x, y, z]"),
    ("generic", "names its labels [LABEL_0, LABEL_1, LABEL_2, LABEL_3] only"),
], ids=list(HEAD_FOLDERS))
def test_the_run_record_says_what_became_of_the_base_folder_s_own_head(case, says, intent_data, tmp_path):
    from loratune.cli import main

    folder = _labelled_classifier(tmp_path / f"bert-{case}", HEAD_FOLDERS[case])
    out = tmp_path / "run"
    assert main(["train", "-q", *overrides(folder, intent_data, out, max_steps=2, eval_steps=2)]) == 0
    run = RunStore(out).read_run()
    assert run["labels"] == DATA_LABELS and run["status"] == "completed"
    assert says in run["model"]["head_note"]


def test_accumulated_micro_batches_of_unequal_size_give_the_one_batch_step(tiny_bert, intent_data, tmp_path):
    # 48 rows in one step: one batch of 48, or 32 + 16 accumulated. Each micro-batch weighs by its rows (not 1/2
    # each, which weighed a row of the 16 twice one of the 32), so the loss and gradient are the one batch's
    seen = {}
    for bs, accum in ((48, 1), (32, 2)):
        _, run = _train(tiny_bert, intent_data, tmp_path / f"r{bs}", per_device_train_batch_size=bs,
                        gradient_accumulation_steps=accum, max_steps=1, eval_steps=1, lora_dropout=0,
                        precision="fp32", prefix_cache="off")
        point = RunStore(tmp_path / f"r{bs}").read_history()[1]
        assert run["examples_seen"] == 48
        seen[bs] = (point["train/loss"], point["train/grad_norm"])
    assert seen[32] == pytest.approx(seen[48], rel=1e-5)


def test_multi_label_knobs_on_single_label_data_are_noted_and_no_unused_gamma_is_recorded(tiny_bert, intent_data,
                                                                                          tmp_path):
    # single-label data trains with cross-entropy: the multi-label loss, gamma, thresholds and label counts it set
    # are said to be unused (a data note), and the loss record carries no focal gamma it never used
    _, run = _train(tiny_bert, intent_data, tmp_path / "run", max_steps=2, eval_steps=2, multi_label_loss="focal",
                    focal_gamma=7, allow_empty="true", max_labels_per_row=3, threshold_tuning="false")
    assert run["task"] == "single_label" and run["loss"] == {"kind": "ce", "pos_weight": None}
    note = next(n for n in run["data_notes"] if "not used: the data is single-label" in n)
    for shown in ("train.multi_label_loss='focal'", "train.focal_gamma=7.0", "train.threshold_tuning=False",
                  "train.allow_empty=True", "train.max_labels_per_row=3"):
        assert shown in note
    _, plain = _train(tiny_bert, intent_data, tmp_path / "plain", max_steps=1, eval_steps=1)
    assert not any("single-label" in n for n in plain["data_notes"])


def test_a_short_decayed_runs_points_log_the_rate_their_steps_used(tiny_bert, intent_data, tmp_path):
    # 4 steps, linear decay, no warmup: the rates used are 5e-3, 3.75e-3, 2.5e-3, 1.25e-3; a point's `lr` is its own
    # step's (as the HF Trainer logs it: 3.75e-3 at step 2, 1.25e-3 at step 4, where the next step's rate, 2.5e-3
    # then 0, was logged one step ahead), `lr_max` the largest its window's steps used
    from loratune.diagnose import diagnose

    _train(tiny_bert, intent_data, tmp_path / "run", max_steps=4, eval_steps=2, warmup_ratio=0.0)
    history = RunStore(tmp_path / "run").read_history()
    assert [p["step"] for p in history] == [0, 2, 4]
    assert "lr_max" not in history[0]  # no step taken yet
    assert [p["lr_max"] for p in history[1:]] == pytest.approx([5e-3, 2.5e-3])
    assert [p["lr"] for p in history] == pytest.approx([0.0, 3.75e-3, 1.25e-3])
    d = diagnose(tmp_path / "run")
    assert d.features.values["peak_lr"] == pytest.approx(5e-3)
    assert not d.fired("lr-too-small", active_only=False)


def test_a_new_run_into_a_finished_runs_folder_says_what_it_replaces(tiny_bert, intent_data, tmp_path, capsys,
                                                                   monkeypatch):
    # the earlier run's model is deleted when the new one starts (RunStore.create): said at start, on stderr, under -q
    from loratune.cli import main
    from loratune.store import earlier_run_note

    out = tmp_path / "run"
    assert earlier_run_note(out) is None
    _, first = _train(tiny_bert, intent_data, out, max_steps=4, eval_steps=4)
    best = first["best"]["val/macro_f1"]
    expect = (f"{out} held a completed run (best val/macro_f1 {best:.4g} at step 4, saved model): replaced by this "
              "run; give another output_dir to keep it")
    assert earlier_run_note(out) == expect
    capsys.readouterr()
    monkeypatch.setenv("COLUMNS", "400")
    assert main(["train", "-q", *overrides(tiny_bert, intent_data, out, max_steps=2, eval_steps=2)]) == 0
    err = " ".join(capsys.readouterr().err.split())  # rich wraps a long line
    assert expect in err, err
    assert RunStore(out).read_run()["steps_done"] == 2


def test_api_train_into_a_finished_runs_folder_says_what_it_replaces(tiny_bert, intent_data, tmp_path, capsys):
    # README's `run = api.train(cfg)` re-run in a notebook cell deleted the earlier run's model without a word
    out = tmp_path / "run"
    _, first = _train(tiny_bert, intent_data, out, max_steps=2, eval_steps=2)
    assert "held" not in capsys.readouterr().err  # a new folder replaces nothing
    expect = (f"note: {out} held a completed run (best val/macro_f1 {first['best']['val/macro_f1']:.4g} at step 2, "
              "saved model): replaced by this run; give another output_dir to keep it")
    _, second = _train(tiny_bert, intent_data, out, max_steps=2, eval_steps=2)
    assert capsys.readouterr().err.count(expect) == 1
    assert second["status"] == "completed"


def test_evaluate_notes_a_validation_split_other_than_the_one_the_run_was_validated_on(tiny_bert, intent_data,
                                                                                       tmp_path, capsys):
    """A run trained before the carving changed (7baf8a1) was evaluated on the new carving, rows it trained on among
    them, with no word said, and run.json's eval.validation stored it as the run's score. The run records what it was
    validated on (validated_on); evaluate says so where the re-read split differs."""
    from loratune.cli import main

    data = tmp_path / "train.jsonl"
    data.write_text((intent_data / "train.jsonl").read_text())
    _, run = _train(tiny_bert, tmp_path, tmp_path / "run", max_steps=4, eval_steps=2)
    assert run["validated_on"]["rows"] == run["rows"]["val"] == 4 and len(run["validated_on"]["digest"]) == 16
    assert "val/split_differs" not in api.evaluate(tmp_path / "run", split="validation")  # the same carving
    lines = data.read_text().splitlines(keepends=True)
    data.write_text("".join(lines[1:] + lines[:1]))  # the same rows, another order: another carving
    scores = api.evaluate(tmp_path / "run", split="validation")
    note = scores["val/split_differs"]
    assert note.startswith("scored on a different validation split than the run was validated on (4 rows then, 4 "
                           "now, other rows or labels)") and "rows it trained on" in note
    record = json.loads((tmp_path / "run" / "run.json").read_text())
    assert record["eval"]["validation"]["val/split_differs"] == note  # the record does not pass it off as the run's
    assert main(["evaluate", str(tmp_path / "run"), "--split", "validation"]) == 0
    assert f"note: {note}" in " ".join(capsys.readouterr().out.split())
    # a run recorded before validated_on existed: no claim either way
    del record["validated_on"]
    (tmp_path / "run" / "run.json").write_text(json.dumps(record))
    assert "val/split_differs" not in api.evaluate(tmp_path / "run", split="validation")
    from loratune.data import validated_on

    assert validated_on(api.prepare(load_config(None, overrides(tiny_bert, tmp_path, tmp_path / "r"))).validation) \
        != run["validated_on"]  # (the split did change)


def test_a_seed_replicate_on_the_studys_data_records_the_seed_its_data_was_read_with(tiny_bert, intent_data, tmp_path):
    """tune's seed replicates train on the study's data (carved with its seed) under their own train.seed: run.json
    named seed 43 and evaluate re-carved with it, scoring rows the run trained on (and calling it another split). The
    record now keeps data_seed where it differs, and evaluate reads the data with it."""
    from loratune.train import train

    data = tmp_path / "train.jsonl"
    data.write_text((intent_data / "train.jsonl").read_text())
    base = load_config(None, overrides(tiny_bert, tmp_path, tmp_path / "r42", max_steps=4, eval_steps=2))
    dataset = load_dataset(base.data, seed=base.train.seed)  # the study's data, carved with its seed
    cfg = load_config(None, overrides(tiny_bert, tmp_path, tmp_path / "r43", max_steps=4, eval_steps=2, seed=43))
    run = train(cfg, dataset, RunStore(tmp_path / "r43"), progress=False)
    assert run["data_seed"] == base.train.seed != cfg.train.seed
    assert "val/split_differs" not in api.evaluate(tmp_path / "r43", split="validation")
    same = train(base, dataset, RunStore(tmp_path / "r42"), progress=False)
    assert "data_seed" not in same  # read with its own seed: nothing to record


def test_evaluate_refuses_a_damaged_run_record_before_scoring_and_keeps_its_scores(tiny_bert, intent_data,
                                                                                   tmp_path, capsys, monkeypatch):
    """A run.json edited into a JSON list crashed evaluate (AttributeError) where predict refused it; an `eval` key
    of "none" crashed it after scoring (`run.setdefault("eval", {})[split]`), the scores lost."""
    import loratune.inference as inference
    from loratune.cli import main

    _train(tiny_bert, intent_data, tmp_path / "run", max_steps=4, eval_steps=2)
    path = tmp_path / "run" / "run.json"
    good = json.loads(path.read_text())
    loaded = []
    real = inference.load_trained
    monkeypatch.setattr(inference, "load_trained", lambda *a, **k: loaded.append(1) or real(*a, **k))

    for damaged, said in (([good], "is not a JSON object (it holds [{"),
                          ({**good, "eval": "none"}, 'has an `eval` of "none": not the scores by split'),
                          ({**good, "eval": [1]}, "has an `eval` of [1]")):
        path.write_text(json.dumps(damaged))
        capsys.readouterr()
        assert main(["evaluate", str(tmp_path / "run")]) == 2
        assert said in capsys.readouterr().err
        assert not loaded and json.loads(path.read_text()) == damaged  # refused before any work, nothing written
    for empty in (None, []):  # an `eval` that holds nothing: the scores take its place
        path.write_text(json.dumps({**good, "eval": empty}))
        assert main(["evaluate", str(tmp_path / "run")]) == 0
        record = json.loads(path.read_text())
        assert set(record["eval"]) == {"test"} and record["eval"]["test"] == record["test"]
        assert record["test"]["test/n"] > 0 and 0.0 <= record["test"]["test/macro_f1"] <= 1.0


def test_a_tune_trials_warm_start_guard_reads_the_studys_diverged_chance_ratio(tiny_bert, intent_data, tmp_path,
                                                                                monkeypatch):
    """A tune trial (--thresholds diverged_chance_ratio: 5) warm-started: its guard read the default ratio 2 and
    stopped it `diverged` at a window of 6.04 (past 2 x the un-adapted 1.66 = 3.32), a bump the run recovers from
    (0.80 at its end) and under the ratio the trial is judged by (5 x 1.66 = 8.3): the guard and diagnose read two
    different ratios for one run. Now the guard reads the thresholds the run's record says it is judged by
    (rules.RUN_THRESHOLDS_KEY): the run completes and the diagnosis (ratio 5) says it is not diverged; with the
    default ratio it still stops at step 3, recorded diverged."""
    import loratune.train as T
    from loratune.data import load_dataset
    from loratune.diagnose import diagnose
    from loratune.rules import RUN_THRESHOLDS_KEY, resolve_thresholds
    from loratune.search.runner import TrainingRunner
    from loratune.search.trial import TrialSpec

    _train(tiny_bert, intent_data, tmp_path / "a", max_steps=4, eval_steps=4)
    losses, fresh = [0.581, 2.354, 6.042, 0.801], 1.66
    real = T.loss_fn
    monkeypatch.setattr(T, "fresh_loss", lambda model, loss_of: fresh)
    cfg = load_config(None, overrides(tiny_bert, intent_data, tmp_path / "base", max_steps=len(losses), eval_steps=1,
                                      early_stopping_patience=0, init_from=str(RunStore(tmp_path / "a").adapter_dir)))
    runs = {}
    for name, given in (("default", None), ("five", {"diverged_chance_ratio": 5.0})):
        script = iter(losses)
        monkeypatch.setattr(T, "loss_fn", lambda logits, *a, **k: (
            real(logits, *a, **k) * 0 + next(script) if logits.requires_grad else real(logits, *a, **k)))
        runner = TrainingRunner(cfg, load_dataset(cfg.data), thresholds=resolve_thresholds(given) if given else None)
        runner.run(TrialSpec(name, "test", {}), tmp_path / name)
        runs[name] = RunStore(tmp_path / name).read_run()
    assert runs["default"]["status"] == "diverged" and runs["default"]["steps_done"] == 3
    assert "3.6x the un-adapted model's loss (1.66)" in runs["default"]["reason"]
    assert diagnose(tmp_path / "default").verdict == "diverged"
    five = runs["five"]
    assert five[RUN_THRESHOLDS_KEY] == {"diverged_chance_ratio": 5.0}
    assert five["status"] == "completed" and five["steps_done"] == len(losses), (five["status"], five["reason"])
    assert diagnose(tmp_path / "five").verdict != "diverged"  # the guard and the diagnosis agree
