"""`tune(cfg, options)`: the whole study, as a recipe (setup, phase 0, search, finish).

    setup     open (or resume) the study, read the data
    phase 0   the assessment -> start point and capacity ceiling; the trial length from the budget
    search    the protocol's stages, or a sampler over the same space
    finish    test score of the pick, adapter, final YAML, study.json
"""

from __future__ import annotations

import json
import math
import time
from dataclasses import dataclass, field, fields as dc_fields, replace as dc_replace
from pathlib import Path
from typing import Any

from loratune.data import (TRAINED_ON, VALIDATED_ON, prepared_apart, record_differs, trained_on, validated_on,
                            validation_differs)
from loratune.errors import PARSE_ERRORS, UserError, finite_number
from loratune.search.budget import Budget, Cost, CostModel, Meter, format_amount
from loratune.search.context import UI, SearchContext
from loratune.search.protocol.phase0 import step_text
from loratune.steps import examples_for
from loratune.store import DEFAULT_STUDY_DIR, in_study
from loratune.search.protocol import (ProtocolSettings, Start, plan_trial_length, run_protocol, start_config,
                                      start_from_assessment)
from loratune.search.study import FINAL, LEADER_DIR, Study, optuna_quiet, study_folder
from loratune.search.yardstick import STRATEGIES

DEFAULT_BUDGET = "15m"
# trial settings every strategy shares (a key the user set explicitly wins)
TRIAL_DEFAULTS = {"train.evals_per_run": 6, "train.train_eval_size": 256, "train.early_stopping_patience": 3,
                  # trials keep their 6 points however short (pruning and the diagnosis read them); the
                  # short-run evaluation cap of a plain `train` (issue 17) does not apply to them
                  "train.max_eval_share": 0.0}


@dataclass(frozen=True)
class TuneOptions:
    budget: str | None = None  # None: 15m for a new study, the recorded one on resume
    strategy: str | None = None  # None: protocol for a new study, the recorded one on resume
    study_dir: str = DEFAULT_STUDY_DIR
    storage: str | None = None  # SQLAlchemy URL; default sqlite:///<study_dir>/study.db
    study_name: str = "loratune"
    resume: bool = False
    seed: int | None = None  # sampler seed (grid / random / tpe / tpe-hyperband); None: 0, on resume the study's own
    trial_steps: int | None = None  # override the planned trial length
    examples_per_s: float | None = None  # prior throughput for planning wall-time budgets (None: the task's)
    explicit_keys: tuple[str, ...] = ()  # config keys the user set (they win over the assessment)
    user_point: dict = field(default_factory=dict)  # their values
    settings: ProtocolSettings = field(default_factory=ProtocolSettings)
    finish_reserve_s: float = 15.0
    heartbeat_s: int | None = None  # Optuna trial heartbeat (None: study.HEARTBEAT_S); dead after 3 missed
    # --thresholds: name -> value of the overridden thresholds (thresholds.overridden: only those differing from the
    # default); every diagnosis, comparison, assessment and decision of the study reads them. None: no file given (a
    # new study: the defaults; on resume: the study's own)
    thresholds: dict | None = None


def summary_here(summary: dict, study: Study, study_dir: Path) -> dict:
    """A finished study's stored summary (final/study.json) with its paths as found in the study's folder now, by the
    rule `loratune show` reads them with (store.in_study): a study moved or copied since it finished printed and
    returned the folders it was written in (its recommendation's adapter at the old place: gone, or the original's).
    `study_dir` as this session names it, as a finish writes it."""
    def trial(row: Any) -> Any:
        return {**row, "run_dir": study.trial_dir(row.get("run_dir"))} if isinstance(row, dict) else row

    rec = summary.get("recommendation")
    if isinstance(rec, dict):
        rec = {**trial(rec), "files": {k: in_study(v, study_dir, FINAL) if isinstance(v, str) else v
                                       for k, v in (rec.get("files") or {}).items()}}
    return {**summary, "study_dir": str(study_dir), "storage": study.storage_url, "recommendation": rec,
            "trials": [trial(t) for t in summary.get("trials") or ()]}


def tune(cfg, options: TuneOptions = TuneOptions(), ui: UI | None = None, *, runner=None, dataset=None) -> dict:
    """Run (or resume) a study; returns the summary written to <study_dir>/final/study.json."""
    opened: list[Study] = []
    with optuna_quiet():  # (Optuna's level as it was, after it)
        try:
            return _tune(cfg, options, ui, runner=runner, dataset=dataset, opened=opened)
        finally:
            from loratune import signals

            with signals.shielded():  # a Ctrl-C as the study closes waits until its lock is let go (as train's record)
                for study in opened:  # the study directory's lock (one process per study)
                    study.close()


def refuse_full(cfg, resumed_from: Path | None = None) -> None:
    """tune searches LoRA configs (rank, alpha, targets, LoRA+ and DoRA arms) and probes full fine-tuning itself
    (its LoRA-vs-full stage, at full fine-tuning's own lr): a base config with adapter.method=full is refused up front.
    Searched anyway, every LoRA stage's configs were refused mid-study (exit 2 after some trials, again on --resume;
    at trial #0 with --strategy random). `resumed_from`: the study folder whose own base config (one begun before
    tune refused it) is full: the fix is a new study, the user typed no method."""
    if cfg.adapter.method != "full":
        return
    why = "tune searches LoRA configs (rank, alpha, targets, LoRA+, DoRA) and runs full fine-tuning itself as its " \
          "LoRA-vs-full probe"
    train = "train one full fine-tuning run with `loratune train adapter.method=full`"
    if resumed_from is not None:
        raise UserError(f"the study in {resumed_from} was started (before tune refused it) from a base config with "
                        f"adapter.method=full: its trials fail on tune's own LoRA moves; {why}",
                        f"start a new study (another --study-dir) from a config without adapter.method=full, "
                        f"or {train}")
    raise UserError(f"adapter.method: got 'full'; {why}",
                    f"leave adapter.method at lora (the study compares full fine-tuning with the best LoRA config), "
                    f"or {train}")


def check_options(options: TuneOptions) -> TuneOptions:
    """A Python caller's whole-number options (config.WHOLE_OPTIONS: trial_steps, seed, heartbeat_s; a numpy integer
    taken as an int) and target checked as the CLI's argparse types check them (the same config.whole_number /
    positive_number), and its finish_reserve_s / examples_per_s (numbers), before the study folder is made: -1 trial
    steps ran on epochs, a target of '0.9' was a TypeError."""
    from loratune.config import WHOLE_OPTIONS, positive_number, whole_option

    given = {f.name: getattr(options, f.name) for f in dc_fields(options) if f.name in WHOLE_OPTIONS}
    options = dc_replace(options, **{k: whole_option(k, v) for k, v in given.items() if v is not None})
    target = options.settings.target
    if target is not None:
        try:
            positive_number(target)
        except ValueError as exc:
            raise UserError(f"target (--target): {exc}", "e.g. target=0.85 (--target 0.85)") from None
    # the two number options only a Python caller gives (no CLI flag): finish_reserve_s='x' was a TypeError in the
    # budget meter after the study was made
    reserve, eps = options.finish_reserve_s, options.examples_per_s
    if not finite_number(reserve) or reserve < 0:
        raise UserError(f"finish_reserve_s: seconds kept back for the finish, a number >= 0, not {reserve!r:.60}",
                        f"e.g. finish_reserve_s={TuneOptions.finish_reserve_s:g} (the default)")
    if eps is not None and (not finite_number(eps) or eps <= 0):
        raise UserError(f"examples_per_s: the planning throughput, a number above 0, not {eps!r:.60}",
                        "e.g. examples_per_s=200, or leave it out for the task's prior")
    return dc_replace(options, finish_reserve_s=float(reserve), examples_per_s=None if eps is None else float(eps))


def _checked_data(cfg, dataset):
    """The run's data (the recipe's read that api.prepare makes, when not given; less api.prepare's note on probe-file
    labels that name no class, which each trial's train adds to its run.json data_notes) after the checks a trial's
    training would fail on: checks.run_checks, the one list train runs (the task's data check, for causal-lm the prompt
    set's rows and a metric they cannot score, a max_length past the position embeddings: unchecked, every trial
    failed on them, and the objective fell back to macro-F1). Run once: phase 0's assessment is told they ran
    (start_config(checked=True)); tune ran its own subset, and assess_sft then ran the whole list again."""
    from loratune.checks import run_checks
    from loratune.tasks import recipe

    dataset = dataset or recipe(cfg, "prepare")(cfg.data, seed=cfg.train.seed)
    run_checks(cfg, dataset)
    return dataset


def _refuse_other_training_data(study_dir: Path, study, dataset, ui: UI) -> None:
    """A resume on other training data than the study's trials trained on (TRAINED_ON: rows added, removed or
    relabelled) is refused: its plan (a trial's length in epochs of that train split) and its phase-0 assessment were
    made on the study's data, and its comparisons, and the seed noise its replicates measure, would mix trials trained
    on two sets, with the later ones looking better for the data alone. A different validation split alone is a note
    (validation_differs, below): another carving of the same rows cannot be undone by the user, and trains on the same
    data. A study begun before the record existed resumes, and is told this cannot be checked."""
    recorded = study.meta.get(TRAINED_ON)
    if recorded is None:
        if study.records():
            ui.note(f"note: the study in {study_dir} began before loratune recorded its training data: whether this "
                    "session trains on the same train split as its earlier trials cannot be checked")
        return
    how = record_differs(recorded, trained_on(dataset))
    if how:
        raise UserError(f"the study in {study_dir} trained its trials on other training data than this session reads "
                        f"{how}: resumed, its comparisons of trials, and the seed noise its replicates measure, would "
                        "mix runs trained on two different training sets",
                        "resume it with the data it was run on, or start a new study on this data (another "
                        "--study-dir)")


def _tune(cfg, options: TuneOptions, ui: UI | None, *, runner, dataset, opened: list) -> dict:
    from loratune.config import to_yaml
    from loratune.model_info import check_max_length
    from loratune.objectives import objective
    from loratune.search.protocol.settings import PLAN_PRIORS
    from loratune.search.runner import TrainingRunner
    from loratune.search.summary import finish
    from loratune.search.yardstick import prepare_yardstick, run_yardstick

    t_start = time.perf_counter()
    ui = ui or UI()
    if options.strategy is not None and options.strategy not in STRATEGIES:
        raise UserError(f"unknown strategy '{options.strategy}'", f"use one of {', '.join(STRATEGIES)}")
    options = check_options(options)
    refuse_full(cfg)
    if options.budget is not None:
        Budget.parse(options.budget)  # a typo fails before anything loads
    if options.thresholds is not None:  # a Python caller's dict is checked as a file's is, and kept as overrides only
        from loratune.thresholds import overridden, tables_with

        options = dc_replace(options, thresholds=overridden(tables_with(options.thresholds)))
    study_dir = study_folder(options.study_dir)
    target, metric = options.settings.target, cfg.train.metric_for_best_model
    # every objective but a val loss is a share (objectives.OBJECTIVES); a causal-lm run's auto is its val loss
    # unless it generates labels (sft.AUTO_OBJECTIVE)
    a_loss = metric == "loss" or (metric == "auto" and cfg.model.task == "causal-lm"
                                  and cfg.data.label_format != "generate")
    if target is not None and target > 1 and not a_loss and not options.resume:
        raise UserError(f"--target {target:g}: the objective ({metric}) is a share, in 0..1",
                        "give it as a share: --target 0.85 for 85%")

    # what train's dry run refuses (checks.run_checks), refused before the study folder is made: data training would
    # refuse (an empty text, a label missing from train: a refused study left study.db behind, and the fixed command
    # was refused as "exists"), a max_length past the position embeddings (it crashed phase 0's probe, then every
    # trial, inside the embedding). A resume reads the study's own base config first, and checks it and its data below
    if not options.resume:
        dataset = _checked_data(cfg, dataset)

    # setup ------------------------------------------------------------------------------------
    meta = {"strategy": options.strategy or "protocol", "budget": options.budget or DEFAULT_BUDGET,
            "base_config": to_yaml(cfg), "explicit_keys": list(options.explicit_keys),
            "user_point": options.user_point, "settings": options.settings.to_dict(),
            "seed": options.seed if options.seed is not None else 0, "thresholds": options.thresholds or {}}
    from loratune.search.study import HEARTBEAT_S

    study = Study.open(study_dir, storage=options.storage, name=options.study_name, resume=options.resume,
                       meta=meta, heartbeat_s=options.heartbeat_s or HEARTBEAT_S)
    opened.append(study)
    reopen = None  # what a resume changes in the study's record, written once nothing refuses it
    if options.resume:  # the study's own base config, strategy and settings; a new budget may be given
        old = study.meta
        given = options.user_point
        cfg = cfg_from_yaml(old["base_config"]) if old.get("base_config") else cfg
        if options.strategy and options.strategy != old.get("strategy"):
            raise UserError(f"the study in {study_dir} was run with --strategy {old.get('strategy')}",
                            f"resume it with --strategy {old.get('strategy')} (or without --strategy)")
        settings = settings_from(old.get("settings"), options.settings, ui)
        _refuse_changes(study_dir, old, options, settings, given, cfg, dataset)
        options = dc_replace(options, strategy=old.get("strategy", "protocol"), seed=old.get("seed", 0),
                             budget=options.budget or old.get("budget") or DEFAULT_BUDGET, settings=settings,
                             user_point=old.get("user_point") or {}, explicit_keys=tuple(old.get("explicit_keys", ())),
                             thresholds=old.get("thresholds") or {})
        summary_path = study_dir / FINAL / "study.json"
        was, now = Budget.parse(old.get("budget") or DEFAULT_BUDGET), Budget.parse(options.budget)
        same_budget = (now.kind, now.limit) == (was.kind, was.limit)  # "6trials" and "6 trials" are one budget
        if (study.was_finished and same_budget and not study.recovered
                and not study.lost_spending() and summary_path.exists()):
            # nothing was lost and the budget did not grow: there is nothing to resume, and a rerun of the finish
            # would rewrite the study's spend and its first session's ledger, and claim lost trials trained again
            ui.note(f"the study in {study_dir} is finished: nothing to resume (its summary: {summary_path}); give a "
                    "larger --budget to continue it")
            # the summary's this-session time was its last session's: this one trained nothing
            return {**summary_here(json.loads(summary_path.read_text(encoding="utf-8")), study, study_dir),
                    "wall_s_session": round(time.perf_counter() - t_start, 2)}
        # a study begun before tune refused a full base: its trials crash on tune's own LoRA moves (a finished one
        # printed its summary above)
        refuse_full(cfg, study_dir)
        if now.kind != was.kind or now.limit < was.limit:  # what a study spent stays spent: it can only grow
            raise UserError(f"the study in {study_dir} was run with --budget {was.text}: a resumed study keeps "
                            f"the trials it spent, so its budget can only grow, in the same unit "
                            f"({was.kind.replace('_s', ' time')})",
                            f"resume with --budget {was.text} or more of it, or start a new study elsewhere")
        # written once every refusal is passed (below, before the first trial): a refused resume leaves the study as
        # it was (finished, its budget)
        reopen = {"finished": False, **({} if same_budget else {"budget": options.budget})}
        for note in study.recovered:
            ui.note(f"trial #{note['number']} ({note['name']}) was running when the process was killed: "
                    "marked failed, its point is trained again")
    options = dc_replace(options, strategy=options.strategy or "protocol", budget=options.budget or DEFAULT_BUDGET)
    from loratune.assess.records import AssessThresholds
    from loratune.thresholds import recorded_tables, tables_with

    # the study's overrides on every table. A resumed study's are its record: a value an earlier version took that the
    # ranges now refuse is read as stored, with a note (a stored name this version lacks fails here, named)
    if options.resume:
        tables, notes = recorded_tables(options.thresholds, f"the study in {study_dir} (its stored --thresholds)")
        for note in notes:
            ui.note(note)
    else:
        tables = tables_with(options.thresholds)
    budget = Budget.parse(options.budget)
    if options.resume:  # (a new study's data was checked before the study was made)
        dataset = _checked_data(cfg, dataset)
        _refuse_other_training_data(study_dir, study, dataset, ui)
    how = validation_differs(study.meta.get(VALIDATED_ON), dataset.validation)
    if how:  # a carving (or the file) changed since the study began: its trials' scores mix two splits
        ui.note(f"note: this session validates on a different validation split than the study's earlier trials {how}"
                ": their scores and this session's are not comparable, and a split carved from train may now hold "
                "rows the earlier trials trained on")
    elif not study.records() and VALIDATED_ON not in study.meta:  # an older study, resumed, gets no record (no claim)
        study.set_meta(**{VALIDATED_ON: validated_on(dataset.validation)})
    if not study.records() and TRAINED_ON not in study.meta:  # (likewise)
        study.set_meta(**{TRAINED_ON: trained_on(dataset)})
    if cfg.model.task == "causal-lm":  # what its trials' losses cover: every assistant turn of a chat since the key
        from loratune.sft_data import EVERY_TURN, LOSS_COVERS_KEY, loss_covers_note

        if not study.records():  # a new study (or one with no finished trial yet): it records the rule it trains by
            study.set_meta(**{LOSS_COVERS_KEY: EVERY_TURN})
        elif covers := loss_covers_note(study.meta, dataset.train.examples):
            ui.note(covers)
    prior_eps, prior_overhead_s = PLAN_PRIORS[cfg.model.task]
    options = dc_replace(options, examples_per_s=options.examples_per_s or prior_eps)

    # phase 0 ----------------------------------------------------------------------------------
    assessment = study.load_assessment()  # a resumed study (or a bench sharing phase 0) has it
    assessed_now_s = 0.0
    if assessment is None:
        ui.note("phase 0: assessing the data and the model")
        t0 = time.perf_counter()
        start, assessment = start_config(cfg, dataset, user_point=options.user_point, checked=True,
                                         progress=lambda m: ui.note(f"  {m}"),
                                         thresholds=AssessThresholds(**tables["assess"]))
        assessed_now_s = time.perf_counter() - t0
        assessment.setdefault("timings", {})["tune_wall_s"] = assessed_now_s
        study.save_assessment(assessment)
    else:
        start = start_from_assessment(assessment, options.user_point)
    plan = study.meta.get("plan")
    batch = int(start.fixed.get("train.per_device_train_batch_size", cfg.train.per_device_train_batch_size))
    if "train.per_device_train_batch_size" in options.explicit_keys:
        batch = cfg.train.per_device_train_batch_size
    # a trial's steps process batch x gradient_accumulation_steps examples each (an epoch's last step its remainder:
    # steps.examples_for): the plan and the estimates count them
    accum = int(cfg.train.gradient_accumulation_steps)
    if plan is None:
        plan = plan_trial_length(budget.kind, budget.limit, len(dataset.train), batch, accum=accum,
                                 start_epochs=start.epochs, examples_per_s=options.examples_per_s,
                                 overhead_s=prior_overhead_s)
        if options.trial_steps or "train.max_steps" in options.explicit_keys:
            steps = options.trial_steps or cfg.train.max_steps
            examples = examples_for(len(dataset.train), batch, accum, steps)
            plan = {**plan, "max_steps": steps, "examples": examples, "epochs": examples / len(dataset.train),
                    "reason": f"trial length set by the user: {steps} steps x {step_text(batch, accum)}"}
        study.set_meta(plan=plan)
    space = None if options.strategy == "protocol" else _study_space(study, start, plan, options)  # (exit 2 here)
    base = _base_config(cfg, start, plan, options.explicit_keys)
    _base_config_at(base, start.point)  # the start point is a config (exit 2 here, not every trial failed)
    check_max_length(base, dataset)  # and the assessment's max_length, before any trial
    if reopen is not None:  # every refusal of a resume is passed (its space, its data, its thresholds included)
        study.set_meta(**reopen)
    runner = runner or TrainingRunner(base, dataset, thresholds=tables["diagnosis"])
    # what `loratune tune --worker` trains queued trials from, and where it writes them
    study.set_meta(trial_base=to_yaml(base), **{LEADER_DIR: str(study.dir)})

    meter = Meter(budget, reserve_s=options.finish_reserve_s)
    # the clock of this session before the first trial (imports, data) and phase 0 count too
    phase0_s = float((assessment.get("timings") or {}).get("tune_wall_s") or
                     (assessment.get("timings") or {}).get("total_s") or 0.0)
    meter.charge(Cost(phase0_s, 0, 0), "phase 0: assessment")
    test = dataset.splits().get("test")
    ctx = SearchContext(store=study, runner=runner, meter=meter, trial_examples=int(plan["examples"]),
                        noise_floor=objective(getattr(runner, "objective", None)).noise_floor,
                        trial_steps=int(plan["max_steps"]),
                        base_point=dict(start.point), costs=CostModel(options.examples_per_s), ui=ui,
                        finish_rows=len(test) if test is not None else 0, finish_base_s=options.finish_reserve_s,
                        clock=time.perf_counter, since=t_start, thresholds=tables)
    # what a trial that never finished trained stays spent: charged again by every session (the meter starts empty);
    # a trial lost during this session (a worker killed mid-trial) is charged as it is found (ctx.charge_lost)
    lost = ctx.charge_lost()
    sessions = study.overheads()  # each earlier session's overhead charges: this session is the next one
    ctx.session = len(sessions)
    if options.resume:  # charged once the replay is over (charge_earlier), as the earlier trials no decision reused
        ctx.earlier_overheads = [{**e, "session": i} for i, s in enumerate(sessions) for e in s]
        if not sessions:  # a study made before the overheads were kept: its last summary's spend is the floor
            ctx.recorded_spent_s = _recorded_spent_s(study_dir / FINAL / "study.json")
    # the clock of this session before the first trial (imports, data, the study's records) counts too; phase 0's
    # share of it is charged above
    ctx.charge_elapsed("startup (this session)", minus=assessed_now_s)
    if not study.records():
        _refuse_budget_below_one_trial(meter, ctx.estimate(dict(start.point)), plan, batch, accum)

    if options.resume:  # said where the replay of the earlier sessions' decisions ends
        ctx.earlier = {r.number for r in study.records()}  # each charged once: reused, or not (charge_earlier)
        spent = sum((Cost(r["wall_s"], r["examples"], 0) for r in lost), Cost())
        ctx.decide_after_replay(
            "resume", "resume", *resumed_text(lost), trials=[r["number"] for r in lost], code="study-resumed",
            data={"lost": lost, "spent": spent.to_dict(), "killed_now": [n["number"] for n in study.recovered]})

    # search -----------------------------------------------------------------------------------
    ctx.state.base_seed = int(base.train.seed)  # seed replicates count up from the study's seed
    if options.strategy == "protocol":
        run_protocol(ctx, start, options.settings, plan)
    else:
        ctx.state.start = start
        ctx.decide("phase0", "trial-plan", f"trials of {plan['max_steps']} steps", "plan", [plan["reason"]],
                   data=plan)
        eval_every = 0
        if options.strategy == "tpe-hyperband":  # Hyperband's first rung: a 1x trial's first eval point
            from loratune.train import plan_steps

            eval_every = plan_steps(base, len(dataset.train))[1]
        prepare_yardstick(ctx, space, start.point, options.strategy, options.seed or 0, eval_every=eval_every)
        run_yardstick(ctx, space, start.point, options.strategy)

    # finish -----------------------------------------------------------------------------------
    extra = {"study_dir": str(study_dir), "storage": study.storage_url, "plan": plan,
             "thresholds_overridden": dict(options.thresholds or {}),
             "assessment_findings": [f"{f['severity']}: {f['message']}" for f in assessment.get("findings", [])],
             "wall_s_session": round(time.perf_counter() - t_start, 2)}
    ctx.charge_earlier()  # a resume that trained nothing new still spent what its earlier sessions trained
    ctx.charge_lost()  # a worker's trial lost after the last trial this session waited for
    ctx.charge_elapsed("after the last trial: decisions")
    summary = finish(ctx, study_dir / FINAL, options.strategy, extra)
    ctx.flush_pending()  # a resume whose every decision was a replay still says it resumed
    summary["wall_s_session"] = round(time.perf_counter() - t_start, 2)
    study.cancel_queued("the search ended without needing it")
    study.set_meta(finished=True)  # workers stop
    return summary


def _study_space(study: Study, start: Start, plan: dict, options: TuneOptions):
    """The space a sampler strategy searches (space.study_space): the study's own once it has one (kept in its meta
    from its first session; a study made before that: its trail's `space` decision), with every knob as its trials
    drew it; a new study's from today's rules, kept. Resolved before this session writes anything: a resume that
    cannot use the study's space is refused with the study as it was (a study whose space moved mid-resume left a
    RUNNING trial and its trail half moved to decisions.superseded.jsonl)."""
    from loratune.search.space import default_space, study_space

    recorded = study.meta.get("space")
    if not recorded:  # a study made before the space was kept in its meta: what its first session recorded drawing
        recorded = next((e.get("data") for e in study.decisions.entries if e.get("kind") == "space"
                         and isinstance(e.get("data"), dict) and e["data"].get("dims")), None)
    drawn: dict = {}
    for t in study.optuna.get_trials(deepcopy=False):  # (Optuna compares a draw with the first one of its knob)
        for key, dist in t.distributions.items():
            drawn.setdefault(key, dist)
    computed = default_space(start.point, start.ceiling_r, int(plan["max_steps"]), arms=options.settings.arms)
    try:
        space = study_space(computed, recorded, drawn)
    except ValueError as e:
        raise UserError(f"the study in {study.dir} cannot be continued by this loratune version: {e}",
                        "resume it with the loratune version that began it, or start a new study elsewhere") from None
    if study.meta.get("space") != space.to_dict():
        study.set_meta(space=space.to_dict())
    return space


def _refuse_budget_below_one_trial(meter: Meter, trial: Cost, plan: dict, batch: int, accum: int) -> None:
    """A budget that cannot hold one whole trial: exit 2 before anything trains. Its first trial would be cut by the
    budget, and a cut trial is no evidence: the study would end with nothing to recommend (or with a partial score
    that lies about the config). The smallest budget that fits is named: the trial's examples (steps x batch), or in
    wall time what this session spent so far, the trial at the planning throughput and the finishing reserve (no
    model load: a prior that large would refuse budgets that fit on a small model)."""
    kind = meter.budget.kind
    if kind == "trials":
        return  # a trials budget is a whole number >= 1: one trial always fits
    need = trial.amount(kind)
    if need <= meter.left + 1e-9:
        return
    smallest = math.ceil(meter.used + need + (meter.reserve_s if kind == "wall_s" else 0.0))
    unit = "s" if kind == "wall_s" else "ex"
    raise UserError(f"--budget {meter.budget.text or meter.budget.describe()} cannot hold one trial: a trial is "
                    f"{plan['max_steps']} steps x {step_text(batch, accum)} = {int(plan['examples']):,} examples"
                    + (f" (~{need:.0f}s at the planning throughput)" if kind == "wall_s" else "")
                    + f"; {format_amount(kind, max(0.0, meter.left))} is left of it",
                    # the study and its assessment are made by now (the plan needs them): the same command without
                    # --resume is refused as "already exists", and --trial-steps can no longer change on a resume
                    f"continue this study with --resume --budget {smallest}{unit} or more (its assessment and trial "
                    "plan are kept), or give shorter trials with --trial-steps to a new --study-dir")


def _refuse_changes(study_dir: Path, old: dict, options: TuneOptions, settings, given: dict, cfg,
                    dataset=None) -> None:
    """A resume continues the study as it was set up: a --seed, --trial-steps, --thresholds, protocol setting (--target,
    --arms, --no-full-probe) or config key that differs from the study's own would be silently ignored (its trials, plan
    and replayed decisions are the study's), so it is refused, naming the study's value (as --strategy is). So is a
    caller's `dataset` prepared from other data (or drawn with another seed) than the study's: its trials trained on
    it while their records named the study's data."""
    from loratune.config import inferred_note, to_dict
    from loratune.search.protocol import ProtocolSettings

    diffs = []
    if options.seed is not None and options.seed != old.get("seed", 0):
        diffs.append(f"--seed {old.get('seed', 0)}")
    plan = old.get("plan") or {}
    if options.trial_steps is not None and plan and options.trial_steps != plan.get("max_steps"):
        diffs.append(f"--trial-steps {plan.get('max_steps')}")
    default = ProtocolSettings()
    for name in ("target", "arms", "full_probe"):  # --target, --arms, --no-full-probe
        asked = getattr(options.settings, name)
        if asked != getattr(default, name) and asked != getattr(settings, name):
            have = getattr(settings, name)
            if name == "target":
                diffs.append(f"--target {have:g}" if have is not None else "no --target")
            elif name == "arms":
                diffs.append(f"--arms {','.join(have)}" if have else "no --arms")
            else:
                diffs.append("the full-fine-tuning probe " + ("on" if have else "off"))
    # --thresholds: a file whose overrides differ from the study's (one with none, all defaults, included) is refused
    # like --seed; a resume without --thresholds reuses the study's overrides (as it does its seed and strategy): its
    # trials were diagnosed and its decisions taken with them, so the continued study stays one study
    if options.thresholds is not None and options.thresholds != (old.get("thresholds") or {}):
        from loratune.rules import overrides_text

        had = old.get("thresholds") or {}
        diffs.append(f"the threshold overrides {overrides_text(had)}" if had else "no threshold overrides")
    flat = {f"{sec}.{k}": v for sec, keys in to_dict(cfg).items() for k, v in keys.items()}
    recorded = _recorded_keys(old.get("base_config"))  # (a key an older loratune never recorded: its value inferred)
    for key, value in sorted(given.items()):
        if key in flat and _plain(value) != _plain(flat[key]):
            diffs.append(f"{key.split('.', 1)[1]}={_plain(flat[key])}"
                         + (inferred_note(key, recorded) if recorded is not None else ""))
    keys, drew = prepared_apart(dataset, cfg.data, cfg.train.seed)
    named = {d.split("=", 1)[0] for d in diffs}  # (a key the cfg set too is named once)
    diffs += [f"{k}={_plain(flat[f'data.{k}'])}" for k in keys if k not in named]
    if drew and "seed" not in named:  # the study's data read with another seed: other rows in its carved split
        diffs.append(f"seed={cfg.train.seed}")
    if diffs:
        raise UserError(f"the study in {study_dir} was set up with {', '.join(diffs)}: a resume continues it as it was "
                        "(its plan, trials and decisions), so a different value would be ignored",
                        "resume without those options (or with the study's values), or start a new study elsewhere "
                        "with the new ones")


def _plain(value):
    """A config value as compared across a YAML round trip (tuples read back as lists)."""
    return list(value) if isinstance(value, tuple) else value


def settings_from(stored: dict | None, default: ProtocolSettings, ui: UI | None = None) -> ProtocolSettings:
    """The protocol settings a study was started with. A study from another loratune version may carry
    keys this one does not know (dropped, with a note) or lack newer ones (today's defaults)."""
    import dataclasses

    if not stored:
        return default
    known = {f.name for f in dataclasses.fields(ProtocolSettings)}
    unknown = sorted(set(stored) - known)
    if unknown and ui is not None:
        ui.note(f"the study's settings {', '.join(unknown)} are unknown to this loratune version: ignored")
    return ProtocolSettings(**{k: (tuple(v) if isinstance(v, list) else v) for k, v in stored.items() if k in known})


def _recorded_flat(text: str) -> dict:
    """A study's recorded base config (YAML) as dotted keys, as recorded (no key filled in)."""
    import yaml

    data = yaml.safe_load(text) or {}
    return {f"{s}.{k}": v for s, sec in data.items() for k, v in (sec or {}).items()}


def _recorded_keys(text) -> set[str] | None:
    """The dotted keys a study's recorded base config holds (None: no record to read)."""
    return set(_recorded_flat(text)) if isinstance(text, str) and text else None


def cfg_from_yaml(text: str):
    from loratune.config import build_config, upgrade_recorded

    return build_config(upgrade_recorded(_recorded_flat(text)))  # a study an older loratune started


def _base_config(cfg, start: Start, plan: dict, explicit: tuple[str, ...]):
    """The config every trial starts from: the user's, the assessment's study-wide keys (batch size,
    max_length), the trial length and the trial defaults (explicit user keys win)."""
    from loratune.config import replace

    changes: dict[str, Any] = {}
    for k, v in {**start.fixed, **TRIAL_DEFAULTS}.items():
        if k not in explicit:
            changes[k] = v
    changes["train.max_steps"] = int(plan["max_steps"])
    changes["train.train_eval_size"] = min(int(changes.get("train.train_eval_size", cfg.train.train_eval_size)),
                                           cfg.train.train_eval_size)
    return replace(cfg, **changes)


def _base_config_at(base, point: dict):
    """The trials' config at the study's start point (config.replace checks it): a start point the config refuses is
    the user's config (or phase 0's choice for it) and stops tune with its problems (exit 2), before anything trains;
    only a point the search drew past it fails that one trial (search.runner)."""
    from loratune.config import replace

    return replace(base, **point)


def resumed_text(lost: list[dict]) -> tuple[str, str, list[str]]:
    """The study-resumed decision's verdict, move and evidence, as the facts are: the trials an earlier session lost
    (their points trained again, what they trained charged), or none (nothing is trained again: the records are
    reused)."""
    if not lost:
        return ("resumed: no trial lost", "continue from the earlier sessions' records: nothing is trained again",
                ["every trial of the earlier sessions finished; their records are reused"])
    return (f"resumed: {len(lost)} trial{'s' if len(lost) != 1 else ''} lost",
            "the lost trials' points are trained again; what they trained stays spent",
            [f"trial #{r['number']} ({r['name']}) {r['status']}: {r['examples']:,} examples, {r['wall_s']:.1f}s charged"
             for r in lost])


def _recorded_spent_s(path: Path) -> float | None:
    """The wall time a study's last summary says was spent (None: no summary, or none readable)."""
    try:
        spent = json.loads(path.read_text(encoding="utf-8"))["budget"]["spent"]["wall_s"]
    except (OSError, *PARSE_ERRORS, KeyError, TypeError):
        return None
    return float(spent) if isinstance(spent, (int, float)) else None
