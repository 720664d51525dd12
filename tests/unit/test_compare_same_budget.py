"""Which runs `loratune diagnose A B ...` pairs as a one-knob experiment (protocol 5: one knob changed, same
budget, same task), and the learning rate it reads from a checkpoint's partial log."""
from __future__ import annotations

import json
import math
from pathlib import Path

import pytest

from loratune.diagnose import compare
from loratune.history_io import load_run

ADAPTER = {"peft_type": "LORA", "r": 8, "lora_alpha": 16, "lora_dropout": 0.1, "target_modules": ["query", "value"],
           "use_rslora": False, "use_dora": False, "bias": "none", "task_type": "SEQ_CLS"}


def trainer_dir(folder: Path, *, lr=2e-4, warmup=0, sched="linear", steps=200, acc_end=0.8, classes=10,
                adapter=None, ckpts=(), first_loss=None, problem_type=None) -> Path:
    """A Trainer output dir: a train log every 5 steps (the Trainer's schedule: linear warm-up, then linear /
    cosine / constant), an eval every 20 steps, config.json and adapter_config.json beside it, and a
    checkpoint-N (its own state, max_steps the run's) for each N in `ckpts`."""
    folder.mkdir(parents=True, exist_ok=True)
    L = first_loss or math.log(classes)

    def lr_at(k):
        if k < warmup:
            return lr * k / warmup
        x = (k - warmup) / (steps - warmup)
        return lr * (1 - x) if sched == "linear" else lr * 0.5 * (1 + math.cos(math.pi * x)) \
            if sched == "cosine" else lr

    log, states = [], {}
    for s in range(5, steps + 1, 5):
        f = s / steps
        log.append({"step": s, "epoch": f * 4, "loss": L * (0.2 + 0.8 * math.exp(-4 * f)), "grad_norm": 1.0,
                    "learning_rate": lr_at(s - 1)})
        if s % 20 == 0:
            log.append({"step": s, "epoch": f * 4, "eval_loss": L * (0.3 + 0.7 * math.exp(-4 * f)),
                        "eval_accuracy": 0.3 + (acc_end - 0.3) * (1 - math.exp(-5 * f)) / (1 - math.exp(-5)),
                        "eval_runtime": 4.0, "eval_samples_per_second": 100.0})
        if s in ckpts:
            states[s] = list(log)
    log.append({"step": steps, "epoch": 4.0, "train_runtime": 10.0, "train_loss": 0.5})

    def state(lg, at):
        return json.dumps({"global_step": at, "max_steps": steps, "num_train_epochs": 4, "train_batch_size": 16,
                           "logging_steps": 5, "eval_steps": 20, "log_history": lg})

    files = {"adapter_config.json": json.dumps({k: v for k, v in {**ADAPTER, **(adapter or {})}.items()
                                                if v is not None})}
    if classes:
        cfg = {"model_type": "bert", "id2label": {str(i): f"c{i}" for i in range(classes)}}
        files["config.json"] = json.dumps({**cfg, **({"problem_type": problem_type} if problem_type else {})})
    for sub, text in [(folder, state(log, steps))] + [(folder / f"checkpoint-{s}", state(lg, s))
                                                      for s, lg in states.items()]:
        sub.mkdir(exist_ok=True)
        (sub / "trainer_state.json").write_text(text)
        for n, t in files.items():
            (sub / n).write_text(t)
    return folder


def _groups(c):
    return {g.knob: sorted(row[0] for row in g.runs) for g in c.groups}


# ---- 1(a): a checkpoint's lr is read with the schedule's planned end --------------------------------------------

@pytest.mark.parametrize("sched,warmup", [("linear", 0), ("linear", 20), ("cosine", 20)])
@pytest.mark.parametrize("at", [40, 60])
def test_a_checkpoints_partial_lr_log_is_read_with_the_states_max_steps(tmp_path, sched, warmup, at):
    """A checkpoint's log stops at 20-30% of a 200-step decay: fitted over end steps up to 3x its span alone, a
    linear decay read as a cosine (peak 1.96e-4 at checkpoint-60 with warm-up, 2.05e-4 without) and its warm-up as
    24 steps (true 20); the state's max_steps is where the Trainer's schedule ends."""
    run = trainer_dir(tmp_path / "run", lr=2e-4, warmup=warmup, sched=sched, ckpts=(at,))
    f = load_run(run / f"checkpoint-{at}").facts
    assert f["learning_rate"].value == 2e-4 and f["lr_schedule"].value == sched
    assert (f["warmup_steps"].value if warmup else None) == (warmup or None)


# ---- 1(b), 2: a run and its own checkpoint; a partial run against a finished one --------------------------------

@pytest.mark.parametrize("ckpt_first", [False, True])
def test_a_run_is_never_paired_with_its_own_checkpoint(tmp_path, ckpt_first):
    """`diagnose run run/checkpoint-60`: one run read at two points made an lr experiment 2e-4 vs 2.05e-4, effect 5
    noise units, 'learning_rate /2'. Of the two reads, the finished one stands for the run whatever the order:
    [run/checkpoint-60, run, other] kept the checkpoint (first given), left the finished run out as 'the same run' and
    then the checkpoint out as partial, so the lr experiment [run, other] was lost."""
    run = trainer_dir(tmp_path / "lin0", lr=2e-4, ckpts=(60,))
    reads = [run / "checkpoint-60", run] if ckpt_first else [run, run / "checkpoint-60"]
    kept, dropped = ("lin0#2", "lin0") if ckpt_first else ("lin0", "lin0#2")  # names in the order given
    c = compare(reads)
    assert c.groups == () and not c.findings
    assert any(n.startswith(f"{dropped} (60 steps done): the same run as {kept} (finished, ") for n in c.notes), c.notes
    other = trainer_dir(tmp_path / "other", lr=4e-4, acc_end=0.86)
    c = compare([*reads, other])
    assert _groups(c) == {"learning_rate": sorted([kept, "other"])}, c.notes
    assert {row[0]: row[1] for row in c.groups[0].runs}[kept] == 2e-4
    assert not any("same budget" in n for n in c.notes), c.notes  # the checkpoint is not compared at all


def test_a_partial_checkpoint_is_no_same_budget_experiment_with_a_finished_run(tmp_path):
    """checkpoint-60 of a 2e-4 run against a finished 4e-4 run: the 60 vs 200 steps read as an lr effect of 0.122."""
    x = trainer_dir(tmp_path / "X", lr=2e-4, sched="const", ckpts=(60,))
    y = trainer_dir(tmp_path / "Y", lr=4e-4, sched="const")
    c = compare([x / "checkpoint-60", y])
    assert c.groups == () and not c.fired("optimization-bound")
    assert any("X (60 steps done)" in n and "same budget" in n for n in c.notes), c.notes
    # near miss: the two finished runs are the lr experiment
    assert _groups(compare([x, y])) == {"learning_rate": ["X", "Y"]}


# ---- 3: integer knobs compare exactly -------------------------------------------------------------------------

def _lt_run(d: Path, *, lr, seed, layers="all", end=0.85, k=10, status="completed", done=200) -> Path:
    import yaml

    from synth_runs import decay, make_history

    d.mkdir(parents=True, exist_ok=True)
    pts = make_history(train_loss=decay(2.3, 0.3, 6), val_loss=decay(2.3, 0.6, 6), val_f1=decay(0.1, end, 6),
                       train_f1=decay(0.1, end + 0.05, 6), k=k, val_n=1000)
    (d / "history.jsonl").write_text("".join(json.dumps(p) + "\n" for p in pts))
    cfg = {"model": {"name_or_path": "embedded:minilm", "max_length": 64}, "data": {"dataset_name": "embedded:x"},
           "adapter": {"method": "lora", "r": 8, "lora_alpha": 16, "lora_dropout": 0.1,
                       "target_modules": ["attn.q", "attn.v"], "layers_to_transform": layers},
           "train": {"output_dir": str(d), "learning_rate": lr, "seed": seed, "num_train_epochs": 5}}
    (d / "config.yaml").write_text(yaml.safe_dump(cfg))
    record = {"status": status, "task": "single_label", "labels": [f"c{i}" for i in range(k)], "steps_planned": 200,
              **({"steps_done": done} if done is not None else {}),
              **({"partial": True} if status != "completed" else {})}
    (d / "run.json").write_text(json.dumps(record))
    return d


def test_two_partial_runs_of_unknown_steps_done_are_no_same_budget_pair(tmp_path):
    """Two runs that died with no steps done in their records both read 'unknown (partial)' and so paired as one
    budget (an lr effect of 0.06, 'learning_rate x2'), the note saying '(unknown (partial) steps done)'."""
    a = _lt_run(tmp_path / "a", lr=1e-3, seed=42, end=0.80, status="failed", done=None)
    b = _lt_run(tmp_path / "b", lr=2e-3, seed=42, end=0.86, status="interrupted", done=None)
    c = compare([a, b])
    assert c.groups == () and not c.fired("optimization-bound"), c.groups
    assert any("a (steps done unknown: compared with none), b (steps done unknown: compared with none)" in n
               for n in c.notes), c.notes
    # near miss: two partial runs that both stopped at step 120 are one budget
    a, b = (_lt_run(tmp_path / n, lr=lr, seed=42, end=e, status="interrupted", done=120)
            for n, lr, e in (("a120", 1e-3, 0.80), ("b120", 2e-3, 0.86)))
    c = compare([a, b])
    assert _groups(c) == {"learning_rate": ["a120", "b120"]}
    assert any("a120 (120 steps done), b120 (120 steps done)" in n for n in c.notes), c.notes


def test_seeds_one_apart_are_two_seeds(tmp_path):
    """Within 1% for every number, seeds 1234 and 1235 were one seed: a (lr 1e-3, seed 1234) against b (2e-3, 1235)
    made an lr experiment, and with d (1e-3, 1235) the lr group held a and d, which differ in seed only."""
    a = _lt_run(tmp_path / "a", lr=1e-3, seed=1234, end=0.80)
    b = _lt_run(tmp_path / "b", lr=2e-3, seed=1235, end=0.86)
    d = _lt_run(tmp_path / "d", lr=1e-3, seed=1235, end=0.84)
    c_ = _lt_run(tmp_path / "c", lr=1e-3, seed=42, end=0.80)
    assert compare([a, b]).groups == ()
    assert _groups(compare([a, b, d, c_])) == {"learning_rate": ["b", "d"], "seed": ["a", "c", "d"]}


def test_learning_rates_read_back_within_the_fits_rounding_are_one_value():
    from loratune.diagnose import READ_BACK_TOLERANCE, _distinct, _same
    assert READ_BACK_TOLERANCE == {"learning_rate": 0.01}
    assert _same(2e-4, 2.001e-4, "learning_rate") and not _same(2e-4, 2.05e-4, "learning_rate")
    assert not _same(1234, 1235, "seed") and not _same(200, 201) and _same(16 / 8, 32 / 16, "lora_alpha")
    assert _distinct([2e-4, 2.001e-4, 4e-4], "learning_rate") == [2e-4, 4e-4]


# ---- 4: all layers against a layer list ------------------------------------------------------------------------

def test_all_layers_against_a_layer_list_is_a_difference(tmp_path):
    """layers_to_transform null (peft: every layer) against [10, 11] was 'assumed equal (not known for every
    run)', and loratune's `all` against `top:2` too: both pairs differ in layers and lr."""
    base = trainer_dir(tmp_path / "base", lr=2e-4, adapter={"layers_to_transform": None})
    top2 = trainer_dir(tmp_path / "top2", lr=4e-4, adapter={"layers_to_transform": [10, 11]})
    assert compare([base, top2]).groups == ()
    same = trainer_dir(tmp_path / "lr4", lr=4e-4, adapter={"layers_to_transform": None})
    c = compare([base, same])  # near miss: both on every layer, the lr experiment, nothing assumed
    assert _groups(c) == {"learning_rate": ["base", "lr4"]} and "layers_to_transform" not in c.groups[0].note
    assert compare([_lt_run(tmp_path / "all", lr=1e-3, seed=42),
                    _lt_run(tmp_path / "top", lr=2e-3, seed=42, layers="top:2")]).groups == ()


# ---- 5: runs of different tasks -------------------------------------------------------------------------------

def test_a_single_label_and_a_multi_label_run_are_no_lr_experiment(tmp_path):
    single = trainer_dir(tmp_path / "single", lr=2e-4)
    multi = trainer_dir(tmp_path / "multi", lr=4e-4, problem_type="multi_label_classification")
    assert compare([single, multi]).groups == ()
    assert _groups(compare([single, trainer_dir(tmp_path / "s4", lr=4e-4)])) == {"learning_rate": ["s4", "single"]}


@pytest.mark.parametrize("first, other, paired", [
    (77, None, False),  # estimated 9 against estimated 63 (10 and 77 classes): two datasets
    (77, 77, False),  # estimated 9 against config.json's 77
    (10, None, True),  # near miss: two estimates of one count
    (10, 10, True),  # near miss: an estimate (9) against config.json's 10
])
def test_estimated_class_counts_apart_beyond_their_error_are_two_tasks(tmp_path, first, other, paired):
    k10 = trainer_dir(tmp_path / "k10", lr=2e-4, classes=None, first_loss=math.log(10))
    kx = trainer_dir(tmp_path / "kx", lr=4e-4, classes=other, first_loss=math.log(first))
    c = compare([k10, kx])
    assert load_run(k10).facts["n_classes"].source.startswith("estimated")
    assert (_groups(c) == {"learning_rate": ["k10", "kx"]}) == paired, (c.groups, c.notes)


@pytest.mark.parametrize("truth, first, other, paired", [
    (10, 10, 5, False),  # estimated 9 against config.json's 5
    (10, 10, 13, False),  # ... and its 13
    (10, 27, None, False),  # ... and an estimated 23 (27 classes)
    (77, 77, 151, False),  # estimated 63 (banking77) against config.json's 151 (clinc150)
    (77, 151, None, False),  # ... and an estimated 124 (151 classes)
    (77, 77, 77, True),  # near miss: estimated 63 against config.json's 77 (the estimate 4.5% low in ln)
    (10, 10, 10, True),  # ... estimated 9 against config.json's 10
])
def test_an_estimated_class_count_is_one_count_only_within_its_measured_error(tmp_path, truth, first, other, paired):
    """Within CHANCE_BACKFILL_MAX (1.5 on ln C), an estimated 9 was one task with 5..27 classes and an estimated 63
    (banking77) with config.json's 151 (clinc150); the estimate's measured error is ~6% of ln C
    (history_io.CHANCE_CLASSES_LN_ERROR). A pairing that rests on an estimate says so in its note (it said nothing)."""
    est = trainer_dir(tmp_path / "est", lr=2e-4, classes=None, first_loss=math.log(truth))
    kx = trainer_dir(tmp_path / "kx", lr=4e-4, classes=other, first_loss=math.log(first))
    c = compare([est, kx])
    assert (len(c.groups) == 1) == paired, (c.groups, c.notes)
    if paired:
        n_est = load_run(est).facts["n_classes"].value
        assert n_est != other and c.groups[0].note == f"n_classes estimated: ~{n_est} vs {other}", c.groups[0].note


# ---- 6: per-module rank / alpha patterns ----------------------------------------------------------------------

@pytest.mark.parametrize("key", ["rank_pattern", "alpha_pattern"])
def test_a_rank_or_alpha_pattern_makes_another_adapter(tmp_path, key):
    base = trainer_dir(tmp_path / "base", lr=2e-4, adapter={"rank_pattern": {}, "alpha_pattern": {}})
    pat = trainer_dir(tmp_path / "pat", lr=4e-4, adapter={key: {"value": 64}})
    assert compare([base, pat]).groups == ()
    assert load_run(pat).facts[key].value == {"value": 64} and key not in load_run(base).facts  # {}: peft's none
    same = trainer_dir(tmp_path / "same", lr=4e-4, adapter={key: {}})  # near miss: an empty pattern is none
    assert _groups(compare([base, same])) == {"learning_rate": ["base", "same"]}


# ---- a checkpoint folder is checkpoint-<step> only (history_io.checkpoint_step, one rule for every reader) ----------

def test_folders_named_like_checkpoints_are_runs_of_their_own(tmp_path):
    """`best/checkpoint-200-lr2` and `best/checkpoint-200-lr4` (a person's names for two runs' best states) were read
    as checkpoints of one run `best`: "best#2: the same run as best", the lr experiment left out."""
    lr2 = trainer_dir(tmp_path / "best" / "checkpoint-200-lr2", lr=2e-4, acc_end=0.80)
    lr4 = trainer_dir(tmp_path / "best" / "checkpoint-200-lr4", lr=4e-4, acc_end=0.86)
    c = compare([lr2, lr4])
    assert _groups(c) == {"learning_rate": ["checkpoint-200-lr2", "checkpoint-200-lr4"]}, c.notes
    assert not any("same run" in n for n in c.notes)
    from loratune.history_io import checkpoint_step

    assert [checkpoint_step(n) for n in ("checkpoint-60", "checkpoint-200-lr2", "checkpoint-best", "x/checkpoint-7")] \
        == [60, None, None, 7]
    # near miss: a Trainer checkpoint is still its run's
    run = trainer_dir(tmp_path / "run", lr=2e-4, ckpts=(60,))
    assert load_run(run / "checkpoint-60").name == "run"
    assert any("the same run" in n for n in compare([run, run / "checkpoint-60"]).notes)


# ---- one rounding rule for floats; loratune's own adapter defaults read from its config ------------------------------

def test_floats_equal_but_for_rounding_are_one_rule_for_thresholds_and_config_values(monkeypatch):
    """A literal rel_tol=1e-9 in the rule engine beside FLOAT_TOLERANCE 1e-9 in the knob comparison: one rule in two
    places; ADAPTER_DEFAULTS restated config.py's layers_to_transform default 'all'."""
    import dataclasses

    from loratune import diagnose, objectives
    from loratune.config import AdapterConfig

    assert diagnose._same(0.1 + 0.2, 0.3) and not diagnose._same(1.0, 1.0 + 1e-6)
    assert objectives.at_threshold(0.09999999999999995, 0.1)
    monkeypatch.setattr(objectives, "FLOAT_ROUNDING", 1e-3)  # the one tolerance (objectives), diagnose reads it
    assert diagnose._same(1.0, 1.0005) and objectives.at_threshold(1.0005, 1.0)
    assert diagnose.RULE_OPS[">="](1.0, 1.0005) and not diagnose.RULE_OPS["<"](1.0, 1.0005)
    layers = next(f.default for f in dataclasses.fields(AdapterConfig) if f.name == "layers_to_transform")
    assert diagnose.ADAPTER_DEFAULTS["adapter.layers_to_transform"] == layers
