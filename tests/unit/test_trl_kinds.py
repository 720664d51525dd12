"""TRL's trainers told apart by the keys they log (history_io.TRL_KINDS): preference, RL and reward-model runs are no
classifiers, and each is read as what it is."""
from __future__ import annotations

import json
import math
import random
from pathlib import Path

import pytest

from loratune.diagnose import diagnose
from loratune.history_io import load_run


def _state(folder: Path, rows, every: int = 10) -> Path:
    """A trainer_state.json of train logs (every step) and evals (every `every`): rows(i, x) -> (train, eval) dicts."""
    log, n = [], 100
    for i in range(1, n + 1):
        train, ev = rows(i, i / n)
        log.append({"step": i, "epoch": i / n, "learning_rate": 1e-6, "grad_norm": 1.0, **train})
        if i % every == 0:
            log.append({"step": i, "epoch": i / n, "eval_runtime": 1.0, "eval_samples_per_second": 20.0, **ev})
    log.append({"step": n, "epoch": 1.0, "train_runtime": 10.0, "total_flos": 0, "train_loss": 1.0})
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "trainer_state.json").write_text(json.dumps({"global_step": n, "max_steps": n, "logging_steps": 1,
                                                           "eval_steps": every, "log_history": log}))
    return folder


def _orpo(i, x):  # ORPO (TRL 1.16, experimental): no mean_token_accuracy / num_tokens / entropy, a first loss of 4.7
    keys = {"loss": 4.724 - 0.01 * x, "nll_loss": 4.0, "log_odds_ratio": -0.7, "log_odds_chosen": 0.1,
            "rewards/margins": 0.01 * x, "rewards/chosen": -0.4, "rewards/accuracies": 0.5, "logps/chosen": -40.0}
    return keys, {"eval_" + k: v for k, v in keys.items()}


def _bare_dpo(i, x):  # a DPO log with its auxiliary keys removed: only the loss (ln 2 at the start) and the rewards
    keys = {"loss": math.log(2) - 0.002 * x, "rewards/margins": 0.01 * x, "rewards/chosen": -0.1}
    return keys, {"eval_" + k: v for k, v in keys.items()}


def test_preference_runs_without_trls_newer_keys_get_no_class_count(tmp_path):
    for name, rows, loss in (("orpo", _orpo, 4.724), ("dpo", _bare_dpo, math.log(2))):
        run = load_run(_state(tmp_path / name, rows))
        assert run.meta["task"] == "causal-lm" and run.meta["trl_kind"] == "preference", name
        assert "n_classes" not in run.meta and "n_classes" not in run.facts, (name, run.facts.get("n_classes"))
        assert "rewards/margins" in run.facts["task"].source and "mean_token_accuracy" not in run.facts["task"].source
        f = diagnose(run).features
        assert f["classifier"] is None and f["n_classes"] is None and f["generative"] == 1, name
    # an export with W&B's column names (train/..., eval/...): the same keys, the same reading
    rows = "".join(f"{st},{0.693 - 0.001 * st},{0.69 - 0.001 * st if st % 10 == 0 else ''},"
                   f"{0.01 * st if st % 10 == 0 else ''}\n" for st in range(1, 101))
    (tmp_path / "dpo.csv").write_text("train/global_step,train/loss,eval/loss,eval/rewards/margins\n" + rows)
    run = load_run(tmp_path / "dpo.csv")
    assert run.meta["task"] == "causal-lm" and run.meta["trl_kind"] == "preference"
    assert "n_classes" not in run.meta and "n_classes" not in run.facts
    assert run.facts["task"].source == "TRL preference keys among the CSV's columns (rewards/margins)"


def _grpo(i, x):  # GRPO as TRL 1.16 logs it: reward, kl, completion lengths, num_tokens and entropy; no token accuracy
    keys = {"loss": 0.04 * x, "num_tokens": 1000 * i, "reward": 0.1 + 0.8 * x, "reward_std": 0.3, "kl": x,
            "entropy": 1.0, "completions/mean_length": 100.0}
    return keys, {"eval_" + k: v for k, v in keys.items()}


def _reward_trainer(i, x):  # RewardTrainer (a sequence classifier scoring pairs): num_tokens and its reward stats only
    keys = {"loss": math.log(2) - 0.3 * x, "num_tokens": 1000 * i, "mean_reward": 0.1, "min_reward": -1.0,
            "max_reward": 1.0, "accuracy": 0.5 + 0.3 * x, "margin": 0.5 * x}
    return keys, {"eval_" + k: v for k, v in keys.items()}


def test_the_task_fact_names_the_keys_found_and_a_reward_model_is_no_language_model(tmp_path):
    grpo = load_run(_state(tmp_path / "grpo", _grpo))
    assert grpo.meta["trl_kind"] == "rl" and grpo.meta["task"] == "causal-lm"
    assert grpo.facts["task"].source == "TRL rl keys in the log (reward, kl, completions/mean_length)"
    rm = load_run(_state(tmp_path / "rm", _reward_trainer))
    assert rm.meta["trl_kind"] == "reward-model" and rm.meta["task"] == "reward-model"
    assert rm.facts["task"].source == "TRL reward-model keys in the log (mean_reward, min_reward, max_reward)"
    assert "n_classes" not in rm.meta
    f = diagnose(rm).features
    assert f["generative"] is None and f["classifier"] is None and f["n_classes"] is None
    # near miss: an SFT run is still read from TRL's token keys, and names only those it logged
    sft = load_run(_state(tmp_path / "sft", lambda i, x: ({"loss": 2.0 - x, "num_tokens": 100 * i},
                                                         {"eval_loss": 2.0 - x})))
    assert sft.meta["trl_kind"] == "sft" and sft.facts["task"].source == "TRL sft keys in the log (num_tokens)"


def test_an_rl_runs_rising_loss_is_not_judged_and_no_comparison_picks_by_it(tmp_path):
    from loratune.diagnose import compare

    def grpo(reward_end, lr):
        def rows(i, x):
            kl = x if reward_end > 0.2 else 0.01 * x  # the policy moves from its reference only where it learns
            keys = {"loss": 0.04 * kl + random.Random(i).gauss(0, 0.002), "num_tokens": 1000 * i, "kl": kl,
                    "reward": 0.1 + (reward_end - 0.1) * x, "reward_std": 0.3, "entropy": 1.0,
                    "completions/mean_length": 100.0, "learning_rate": lr}
            return keys, {"eval_" + k: v for k, v in keys.items() if k != "learning_rate"}
        return rows

    good = load_run(_state(tmp_path / "good", grpo(0.9, 1e-6)))
    flat = load_run(_state(tmp_path / "flat", grpo(0.1, 1e-7)))
    d = diagnose(good)
    # the loss (~ beta x KL) rose ~10x from its minimum by design: no lr-too-large, no overfit; read the reward
    assert d.verdict == "inconclusive", [(f.rule_id, f.suppressed_by) for f in d.findings]
    assert d.features["val_loss_rise"] is None and "judge the run by its reward" in d.features.missing["val_loss_rise"]
    c = compare([good, flat])
    assert all(g.best() is None for g in c.groups)  # never the lowest loss (the run whose reward never moved)
    # near miss: the same curves without the RL keys are an SFT loss, judged as one
    sft = _state(tmp_path / "sft", lambda i, x: ({"loss": 0.04 * x + random.Random(i).gauss(0, 0.002)},
                                                 {"eval_loss": 0.004 + 0.04 * x}))
    assert diagnose(load_run(sft)).features["val_loss_rise"] > 1.0


def _dpo(start, end, acc_end):  # a DPO-trainer log (TRL 1.16 keys) whose loss falls from `start` to `end`
    def rows(i, x):
        loss = start + (end - start) * x
        keys = {"loss": loss, "num_tokens": 100 * i, "mean_token_accuracy": 0.3, "entropy": 3.0,
                "rewards/margins": x, "rewards/chosen": 0.1 * x, "rewards/accuracies": 0.5 + (acc_end - 0.5) * x}
        return keys, {"eval_" + k: v * 0.98 if k == "loss" else v for k, v in keys.items()}
    return rows


def test_ln_2_is_a_preference_runs_reference_only_where_its_loss_starts_near_it(tmp_path):
    # IPO (1/(4 beta^2) = 25 at beta 0.1) and sigmoid+sft (ln 2 + NLL) learning well: far above ln 2 by design
    for name, start, end in (("ipo", 24.4, 20.9), ("rpo", 4.69, 2.29)):
        d = diagnose(load_run(_state(tmp_path / name, _dpo(start, end, 0.9))))
        assert d.features["val_loss_min_vs_reference"] is None, name
        assert "first loss far from ln 2" in d.features.missing["val_loss_min_vs_reference"]
        assert d.verdict != "lr-too-large", (name, [(f.rule_id, f.suppressed_by) for f in d.findings])
    # near miss: a sigmoid DPO loss that starts at ln 2 and climbs above it keeps its reference and its verdict
    d = diagnose(load_run(_state(tmp_path / "sig", _dpo(math.log(2), 0.95, 0.4))))
    assert 1.0 < d.features["val_loss_min_vs_reference"] < 1.05
    assert d.verdict == "lr-too-large"


def test_runs_of_different_kinds_are_no_one_knob_pair(tmp_path):
    from loratune.diagnose import compare

    def sft(lr):
        return lambda i, x: ({"loss": 4.7 - 2.5 * x, "num_tokens": 100 * i, "mean_token_accuracy": 0.1 + 0.4 * x,
                              "learning_rate": lr},
                             {"eval_loss": 4.0 - 1.8 * x, "eval_mean_token_accuracy": 0.1 + 0.35 * x})

    dpo = load_run(_state(tmp_path / "dpo", _dpo(math.log(2), 0.53, 0.8)))
    c = compare([dpo, load_run(_state(tmp_path / "sft", sft(2e-3)))])
    assert not c.groups and any("dpo (preference), sft (language model)" in n for n in c.notes), c.notes
    # near miss: two SFT runs at two learning rates are still a learning-rate pair
    c = compare([load_run(_state(tmp_path / "a", sft(2e-3))), load_run(_state(tmp_path / "b", sft(5e-4)))])
    assert [g.knob for g in c.groups] == ["learning_rate"] and not any("kinds" in n for n in c.notes)


def test_a_preference_runs_val_metric_is_its_reward_accuracy(tmp_path):
    from loratune.diagnose import compare

    def dpo(lr, loss_end, acc_end):  # token accuracy flat at 0.3 throughout, as DPO does not train toward it
        def rows(i, x):
            keys = {"loss": math.log(2) + (loss_end - math.log(2)) * x, "num_tokens": 100 * i, "entropy": 3.0,
                    "mean_token_accuracy": 0.3, "rewards/margins": x, "rewards/chosen": 0.2 * x,
                    "rewards/accuracies": 0.5 + (acc_end - 0.5) * x, "learning_rate": lr}
            ev = {"eval_" + k: v for k, v in keys.items() if k != "learning_rate"}
            return keys, {**ev, "eval_samples_per_second": 200.0}
        return rows

    good = load_run(_state(tmp_path / "good", dpo(5e-6, 0.45, 0.85)))
    d = diagnose(good)
    assert d.features.details["val_metric"] == "val/rewards/accuracies"
    assert d.features["val_metric_best"] == pytest.approx(0.85) and d.verdict != "inconclusive"
    # its CSV exports (the Trainer's keys, and W&B's eval/... names): `eval/rewards/accuracies` read as
    # val/rewards_accuracies, so the run was judged on its flat token accuracy (0.3)
    log = json.loads((tmp_path / "good" / "trainer_state.json").read_text())["log_history"]
    keys = sorted({k for e in log for k in e})
    for fname, name_of in (("trainer.csv", lambda k: k), ("wandb.csv", lambda k: k.replace("eval_", "eval/", 1)
                                                           if k.startswith("eval_") else k)):
        rows = [",".join(name_of(k) for k in keys)] + [",".join(str(e.get(k, "")) for k in keys) for e in log]
        (tmp_path / fname).write_text("\n".join(rows) + "\n")
        exported = load_run(tmp_path / fname)
        assert exported.meta["trl_kind"] == "preference"
        assert [p["val/rewards/accuracies"] for p in exported.points if "val/rewards/accuracies" in p] == \
            pytest.approx([p["val/rewards/accuracies"] for p in good.points if "val/rewards/accuracies" in p])
        assert not any("val/rewards_" in k for p in exported.points for k in p)
        e = diagnose(exported)
        assert e.features.details["val_metric"] == "val/rewards/accuracies", fname
        assert e.features["val_metric_best"] == pytest.approx(0.85)
    worse = load_run(_state(tmp_path / "worse", dpo(1e-6, 0.6, 0.6)))
    (g,) = compare([good, worse]).groups
    assert g.best()[0] == "good" and g.best()[2] == pytest.approx(0.85)
    # near miss: an SFT run's val metric is still its token accuracy
    sft = load_run(_state(tmp_path / "sft", lambda i, x: ({"loss": 2.0 - x, "mean_token_accuracy": 0.3 + 0.3 * x},
                                                          {"eval_loss": 2.0 - x,
                                                           "eval_mean_token_accuracy": 0.3 + 0.3 * x})))
    assert diagnose(sft).features.details["val_metric"] == "val/token_accuracy"


def _kto(i, x, kl=True):  # KTOTrainer (TRL 1.16): rewards/* and logps/* beside a `kl`; the val loss turns at 40%
    v = 0.5 - 0.75 * x if x <= 0.4 else 0.2 + 1.2 * (x - 0.4)
    k = {"loss": 0.5 - 0.49 * x, "rewards/chosen": 0.1 * x, "rewards/rejected": -0.1 * x, "rewards/margins": 0.2 * x,
         "logps/chosen": -40.0, "logps/rejected": -45.0, "entropy": 1.0, "num_tokens": 1000 * i,
         **({"kl": 0.5 * x} if kl else {})}
    return k, {**{"eval_" + a: b for a, b in k.items()}, "eval_loss": v}


def _distill(i, x):  # DistillationTrainer (TRL 1.16): completion lengths, no reward; the same turn
    v = 2.0 - 3 * x if x <= 0.4 else 0.8 + 2 * (x - 0.4)
    k = {"loss": 2.0 - 1.9 * x, "completions/mean_length": 60.0, "entropy": 1.0, "num_tokens": 1000 * i}
    return k, {**{"eval_" + a: b for a, b in k.items()}, "eval_loss": v}


def _classifier_with_kl(i, x):  # a plain Trainer classifier logging its own distillation `kl` term
    v = 2.0 - 3 * x if x <= 0.4 else 0.8 + 2 * (x - 0.4)
    return {"loss": 2.3 - 2.2 * x, "kl": 0.3}, {"eval_loss": v, "eval_accuracy": 0.3 + 0.5 * min(x, 0.4)}


@pytest.mark.parametrize("rows, kind", [
    (_kto, "preference"),  # a KTO log's `kl` does not make it RL: its rewards/* say preference
    (lambda i, x: _kto(i, x, kl=False), "preference"),
    (_distill, "sft"),  # a completion length without a reward is no RL run
    (_classifier_with_kl, None),  # one generic name marks no TRL run: a classifier's own `kl`
])
def test_a_generic_kl_or_completion_length_key_makes_no_rl_run(tmp_path, rows, kind):
    """KTO and distillation runs (a `kl`, a completion length) were read as RL runs and their loss was never judged:
    a val loss that turned at 40% and rose 3.6x read inconclusive; a classifier logging `kl` lost its class count."""
    run = load_run(_state(tmp_path / "run", rows))
    assert run.meta.get("trl_kind") == kind
    d = diagnose(run)
    assert d.features["val_loss_rise"] is not None and d.features["val_loss_rise"] > 1
    if kind is None:
        assert run.meta.get("task") is None and run.facts["n_classes"].value == 10


@pytest.mark.parametrize("order", [("val", "train"), ("train", "val")])
def test_an_sft_runs_unprefixed_eval_keys_belong_to_the_set_named_in_their_entry(tmp_path, order):
    # SFTTrainer with eval_dataset={"train": ..., "val": ...} logs one entry per set, its token accuracy and entropy
    # without the set's name beside eval_<set>_loss: the first set's value was read as the val set's (0.4833, the train
    # set's, for 0.5357) or the train set's dropped, and each step read as an evaluation "logged again"
    acc = {"val": 0.5357, "train": 0.4833}
    log = []
    for step in (4, 8):
        log.append({"step": step, "epoch": step / 8, "loss": 4.3, "learning_rate": 1e-3, "grad_norm": 0.6,
                    "entropy": 4.35, "mean_token_accuracy": 0.4, "num_tokens": 97.0 * step})
        for name in order:
            log.append({"step": step, "epoch": step / 8, f"eval_{name}_loss": 4.29 if name == "val" else 4.31,
                        f"eval_{name}_runtime": 0.05, f"eval_{name}_samples_per_second": 240.0,
                        "eval_entropy": 4.2 if name == "val" else 4.1, "eval_mean_token_accuracy": acc[name] + step / 100,
                        "eval_num_tokens": 97.0 * step})
    (tmp_path / "trainer_state.json").write_text(json.dumps({"global_step": 8, "max_steps": 8, "logging_steps": 4,
                                                             "eval_steps": 4, "log_history": log}))
    run = load_run(tmp_path)
    for p in run.points:
        assert p["val/token_accuracy"] == pytest.approx(acc["val"] + p["step"] / 100)
        assert p["train_eval/token_accuracy"] == pytest.approx(acc["train"] + p["step"] / 100)
        assert (p["val/entropy"], p["train_eval/entropy"]) == (4.2, 4.1) and p["val/loss"] == 4.29
    assert not [n for n in run.notes if "logged again" in n], run.notes


def _dpo_at_reference(val_ratios):  # a DPO log whose policy barely left its reference: ln 2 (float32) at every
    f32_ln2 = 0.6931471824645996    # train log, the val loss at the given multiples of ln 2, margins ~0

    def rows(i, x):
        keys = {"loss": f32_ln2, "num_tokens": 100 * i, "mean_token_accuracy": 0.02, "entropy": 3.6,
                "rewards/margins": 0.0, "rewards/chosen": 0.0, "rewards/accuracies": 0.0}
        ratio = val_ratios[min(int(x * len(val_ratios)) - 1, len(val_ratios) - 1)] if x > 0 else val_ratios[0]
        return keys, {"eval_loss": f32_ln2 * ratio, "eval_rewards/margins": 2 * (1 - ratio) * f32_ln2,
                      "eval_rewards/chosen": 0.0, "eval_rewards/accuracies": 0.25, "eval_num_tokens": 100 * i}
    return rows


@pytest.mark.parametrize("name, val_ratios", [
    ("lr 1e-7: the float32 ln 2 at every eval", (1.0000000027,) * 4),
    ("lr 1e-5: creeping down toward ln 2", (1.00067, 1.00044, 1.00028, 1.00013)),
])
def test_a_dpo_policy_at_or_creeping_toward_its_reference_is_not_lr_too_large(tmp_path, name, val_ratios):
    # TRL DPO on a tiny Llama, 24 steps: at lr 1e-7 every eval's loss is 0.6931471824645996 (1 + 3e-9 of ln 2, every
    # reward margin 0.0); at 1e-5 it creeps 1.00067 -> 1.00013 of ln 2. Both read lr-too-large ("learning_rate /2"):
    # above ln 2 by less than a val loss's noise floor is a policy that has not moved, not one made worse
    d = diagnose(load_run(_state(tmp_path / "run", _dpo_at_reference(val_ratios), every=25)))
    assert 1.0 < d.features["val_loss_min_vs_reference"] < 1.001
    fired = {f.rule_id: f.suppressed_by for f in d.findings}
    assert "lr-too-large" not in fired and d.verdict != "lr-too-large", fired
    assert "lr-too-small" in fired, fired


def _with_eval_on_start(folder: Path) -> Path:
    """The run with an eval at step 0 first (eval_on_start): the policy is its reference, the loss ln 2 in float32."""
    state = json.loads((folder / "trainer_state.json").read_text())
    state["log_history"].insert(0, {"step": 0, "epoch": 0.0, "eval_loss": 0.6931471824645996, "eval_runtime": 1.0,
                                    "eval_samples_per_second": 20.0, "eval_rewards/margins": 0.0,
                                    "eval_rewards/chosen": 0.0, "eval_rewards/accuracies": 0.0, "eval_num_tokens": 0})
    (folder / "trainer_state.json").write_text(json.dumps(state))
    return folder


def test_a_dpo_run_evaluated_at_step_0_still_reads_a_policy_made_worse_as_lr_too_large(tmp_path):
    # TRL DPO at lr 5e-3 on swapped held-out pairs, eval_on_start: ln 2 exactly at step 0 (the policy is its
    # reference), then 1.074 -> 1.224 of ln 2, margins -0.10 -> -0.29. The min over every eval took step 0's 1.0 and
    # the run read inconclusive (without the step-0 eval: lr-too-large): the min is over the evals after step 0
    def rows(i, x):
        ratio = (1.074, 1.12, 1.18, 1.224)[min(int(x * 4) - 1, 3)] if x > 0 else 1.074
        return ({"loss": 0.691 - 0.12 * x, "num_tokens": 100 * i, "mean_token_accuracy": 0.02, "entropy": 3.6,
                 "rewards/margins": 0.3 * x, "rewards/chosen": 0.0, "rewards/accuracies": 0.5},
                {"eval_loss": 0.6931471824645996 * ratio, "eval_rewards/margins": 2 * (1 - ratio) * 0.6931471824645996,
                 "eval_rewards/chosen": 0.0, "eval_rewards/accuracies": 0.0, "eval_num_tokens": 100 * i})
    for eos in (False, True):
        folder = _state(tmp_path / f"run{eos}", rows, every=25)
        d = diagnose(load_run(_with_eval_on_start(folder) if eos else folder))
        assert d.features["val_loss_start"] == pytest.approx(0.6931471824645996 if eos else 0.6931471824645996 * 1.074)
        assert d.features["val_loss_min_vs_reference"] == pytest.approx(1.074), eos
        assert d.verdict == "lr-too-large", (eos, d.verdict)


@pytest.mark.parametrize("val_ratios", [(1.0000000027,) * 4, (1.00067, 1.00044, 1.00028, 1.00013)])
def test_a_dpo_policy_at_its_reference_evaluated_at_step_0_is_still_not_lr_too_large(tmp_path, val_ratios):
    # the step-0 eval left out of the min must not move the runs that barely left their reference (lr 1e-7, 1e-5)
    d = diagnose(load_run(_with_eval_on_start(_state(tmp_path / "run", _dpo_at_reference(val_ratios), every=25))))
    assert 1.0 < d.features["val_loss_min_vs_reference"] < 1.001
    fired = {f.rule_id: f.suppressed_by for f in d.findings}
    assert "lr-too-large" not in fired and d.verdict != "lr-too-large", fired
    assert "lr-too-small" in fired, fired


def test_an_entropy_metric_alone_makes_no_trl_log_and_only_a_reward_models_losses_are_divided_by_its_trainer(tmp_path):
    # a classifier whose compute_metrics returns `entropy` read as a TRL SFT log (task causal-lm, no class count) and
    # the callback dropped its loss scale at it: TRL logs `entropy` only beside num_tokens and mean_token_accuracy
    from loratune.history_io import trainer_divides_losses

    def classifier(i, x):
        loss = math.log(4) * (1 - 0.3 * x)
        return {"loss": loss}, {"eval_loss": loss, "eval_accuracy": 0.25 + x / 2, "eval_entropy": 1.38 - 0.1 * x}
    run = load_run(_state(tmp_path / "clf", classifier))
    assert "trl_kind" not in run.meta and run.meta.get("task") != "causal-lm" and run.source == "hf-trainer"
    assert run.points[-1]["val/entropy"] == pytest.approx(1.28)
    assert not trainer_divides_losses(["loss", "eval_loss", "eval_accuracy", "eval_entropy"])
    # RewardTrainer sets loss_is_scaled_for_ga = False: the Trainer divides; SFT and DPO logs hold no scale to drop
    assert trainer_divides_losses(_reward_trainer(1, 0.1)[0])
    assert not trainer_divides_losses(["loss", "num_tokens", "mean_token_accuracy", "entropy"])
    assert not trainer_divides_losses(["loss", "rewards/margins", "rewards/chosen", "num_tokens"])
