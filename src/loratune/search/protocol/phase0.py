"""Phase 0: the start config from the assessment, and the length of one trial."""

from __future__ import annotations

import math
from typing import Callable

from loratune.search.budget import format_amount
from loratune.steps import examples_for, steps_per_epoch
from loratune.search.space import DEFAULTS, targets_text
from loratune.search.state import Start
from loratune.search.protocol.settings import (ALPHA, DROPOUT, LAYERS, LR, PLAN_EXAMPLES_PER_S, PLAN_OVERHEAD_S, R,
                                               RSLORA, SHORT_TRIAL_EPOCHS, TARGETS, WD)
from loratune.search.protocol.table import STAGE_TABLE


# ---------------------------------------------------------------------------------------------
# phase 0: start config from the assessment


def start_from_assessment(a: dict, user_point: dict | None = None) -> Start:
    """An Assessment (as `to_dict()`) -> Start. Keys the user set explicitly win over the assessment."""
    rec = a["recommendation"]
    ov = dict(rec["overrides"])
    tuned_keys = (R, ALPHA, TARGETS, LAYERS, DROPOUT, LR)
    point = {k: ov[k] for k in tuned_keys if k in ov}
    fixed = {k: ov[k] for k in ("train.per_device_train_batch_size", "model.max_length") if k in ov}
    for k, v in (user_point or {}).items():
        (point if k in tuned_keys or k in (WD, RSLORA) else fixed)[k] = v
    user = user_point or {}
    alpha_why = ""
    if ALPHA in point and ALPHA not in user and (R in user or RSLORA in user):
        # the assessment's alpha is its start scale at its own rank: at the rank and rsLoRA setting this run trains
        # with, the alpha of that scale (user r=4 kept alpha 16: s 4; rsLoRA on: s 16/sqrt(8))
        from loratune.assess.rules import START_SCALE
        from loratune.stepsize import alpha_for, scale_formula

        r, rs = int(point.get(R, DEFAULTS[R])), bool(point.get(RSLORA))
        alpha = alpha_for(r, START_SCALE, rs)
        if alpha != point[ALPHA]:  # an assessment of this run's own r and rsLoRA (assess: use_rslora) has it already
            point[ALPHA] = alpha
            alpha_why = (f" -- at the user's r={r}{' with rsLoRA' if rs else ''}: lora_alpha={alpha:g} "
                         f"(s = {scale_formula(rs)} = {START_SCALE:g})")
    if TARGETS in point and isinstance(point[TARGETS], str):
        point[TARGETS] = targets_text(point[TARGETS]).split(",")
    ceiling = int(rec["capacity_ceiling"]["value"])
    ceiling_why = rec["capacity_ceiling"]["reason"]
    facts_all = a.get("facts", {})
    if R in (user_point or {}) and facts_all.get("train_rows"):
        # the rule's "never below the start rank" is the user's start rank, not the assessment's own (user r=4 under
        # a hidden/6 bound of 4 kept the assessment's r=8 as the ceiling)
        from loratune.assess.rules import capacity_ceiling

        mine = capacity_ceiling(facts_all, int(user_point[R]))
        if mine != ceiling:
            ceiling_why += f" -- with the user's start rank r={int(user_point[R])}: {mine}"
            ceiling = mine
    facts = {k: a.get("facts", {}).get(k) for k in ("train_rows", "val_rows", "classes", "probe_macro_f1",
                                                    "macro_f1_se", "detectable_difference", "model_hidden",
                                                    "model_layers", "rows_per_class_median")}
    choices = tuple({"key": c["key"], "value": point[ALPHA] if alpha_why and c["key"] == ALPHA
                     else user.get(c["key"], c["value"]), "rule": c["rule"],
                     "reason": c["reason"] + (f" -- overridden by the user: {user[c['key']]}" if c["key"] in user
                                              and user[c["key"]] != c["value"] else "")
                     + (alpha_why if c["key"] == ALPHA else "")}
                    for c in rec.get("choices", ()))
    choices += ({"key": "ceiling.r", "value": ceiling, "rule": rec["capacity_ceiling"]["rule"],
                 "reason": ceiling_why},)
    return Start(point, max(ceiling, int(point.get(R, DEFAULTS[R]))), float(point.get(LR, DEFAULTS[LR])), choices, facts, fixed,
                 ov.get("train.num_train_epochs"))


def start_config(cfg, dataset, *, user_point: dict | None = None, progress: Callable[[str], None] | None = None,
                 thresholds=None, checked: bool = False) -> tuple[Start, dict]:
    """Phase 0 through `loratune.assess` (a causal-lm run: `assess.sft`): (Start, the assessment as plain
    data). With `start_from_assessment`, the one place that depends on the assessment's API. `thresholds`: an
    `AssessThresholds` (tune --thresholds; None: the defaults); the causal-lm assessment reads sft_truncation_share.
    `checked`: the caller ran checks.run_checks on cfg and dataset (tune's _checked_data), so the assessment does not
    run them again."""
    if cfg.model.task == "causal-lm":
        from loratune.assess.sft import assess_sft

        a = assess_sft(cfg, dataset, progress=progress, thresholds=thresholds, checked=checked)
    else:
        from loratune.assess import run_assessment

        extra = {} if thresholds is None else {"thresholds": thresholds}
        a = run_assessment(cfg, dataset=dataset, progress=progress, checked=checked, **extra).to_dict()
    return start_from_assessment(a, user_point), a


def plan_trial_length(budget_kind: str, budget_limit: float, n_train: int, batch: int, *, accum: int = 1,
                      start_epochs: float | None = None, examples_per_s: float = PLAN_EXAMPLES_PER_S,
                      overhead_s: float = PLAN_OVERHEAD_S, planned_trials: int | None = None,
                      min_epochs: float = SHORT_TRIAL_EPOCHS[0], max_epochs: float = SHORT_TRIAL_EPOCHS[1]) -> dict:
    """How long one trial is (optimizer steps), so that the planned trials fit the budget. One optimizer step
    processes `batch` x `accum` (gradient_accumulation_steps) training examples.

    A short trial is 1-3 epochs (protocol 3); within that, the budget divided by the planned trial
    count (the planned trials of STAGE_TABLE) decides. Wall-time budgets are turned into examples with a throughput
    estimate (training with evaluation, model load included)."""
    planned = planned_trials or sum(x.planned for x in STAGE_TABLE)
    cap_epochs = min(max_epochs, start_epochs or max_epochs)
    if budget_kind == "wall_s":
        budget_examples = max(0.0, budget_limit - overhead_s) * examples_per_s
        why = (f"wall budget {format_amount('wall_s', budget_limit)} - {overhead_s:.0f}s overhead at ~"
               f"{examples_per_s:.0f} examples/s (training + evaluation)")
    elif budget_kind == "examples":
        budget_examples = budget_limit
        why = f"budget of {int(budget_limit):,} training examples"
    else:
        budget_examples = math.inf
        why = f"budget of {int(budget_limit)} trials (length not limited by compute)"
    per_trial = budget_examples / planned
    epochs = max(min_epochs, min(cap_epochs, per_trial / max(1, n_train)))
    steps = max(1, int(round(epochs * steps_per_epoch(n_train, batch, accum))))
    examples = examples_for(n_train, batch, accum, steps)  # an epoch's last step takes its remainder only
    return {"max_steps": steps, "examples": examples, "epochs": examples / max(1, n_train),
            "planned_trials": planned, "budget_examples": None if math.isinf(budget_examples) else budget_examples,
            "reason": (f"{why}; {planned} planned trials -> {steps} steps x {step_text(batch, accum)} = "
                       f"{examples:,} examples ({examples / max(1, n_train):.2f} epochs of {n_train} "
                       f"rows; short trials are {min_epochs:g}-{cap_epochs:g} epochs)")}


def step_text(batch: int, accum: int = 1) -> str:
    """The examples of one optimizer step, as a person reads it: '8', or '8 x 4 accumulated' with accumulation."""
    return f"{batch} x {accum} accumulated" if accum > 1 else f"{batch}"
