"""The study summary (plain data the report renders) and the finishing step (test score, exports).

`summarize(ctx, ...)` -> the content of `<study_dir>/final/study.json`:

- `trail`: every decision (phase, trials, verdict, move, evidence, numbers);
- `trials`: one row per trial (point, status, val macro-F1, examples, wall time, step time, memory);
- `best_vs_compute`: best val macro-F1 so far after each trial against cumulative training examples
  and wall time;
- `rank_vs_metric`: (r, val macro-F1) of every LoRA trial (after a rank sweep: those like it), the rank-sweep points, the plateau rank,
  the compute-breakeven rank and the capacity ceiling;
- `pair`: the minimal-intervention experiment's deltas with the noise (and the seed sigma, once known);
- `seeds`, `lora_vs_full` (decision, reasons, cost table), `recommendation` (trial, config point,
  val and test scores, exported files).

`finish(ctx, final_dir)` scores the chosen trial once on the test split (reusing an earlier score of the
same trial on resume), copies its adapter (replacing the earlier pick's whole), writes the final YAML and the summary.
"""

from __future__ import annotations

import shutil
from pathlib import Path
from typing import Any

from loratune.errors import UserError
from loratune.objectives import MACRO_F1, pick_test_score
from loratune.search.context import SearchContext
from loratune.search.study import records_table
from loratune.search.trial import flat_objective_note, kept_loss, like_rank_sweep, rank_sweep_working
from loratune.store import (ADAPTER, CONFIG, read_json, remove_unfinished_models, replace_saved_model, write_atomic,
                            write_json)


def best_vs_compute(records) -> list[dict]:
    rows, examples, wall, best, best_trial = [], 0, 0.0, None, None
    for r in records:
        examples += r.result.examples
        wall += r.result.wall_s
        if r.value is not None and (best is None or r.value > best):
            best, best_trial = r.value, r.number
        rows.append({"trial": r.number, "name": r.spec.name, "phase": r.spec.phase, "value": r.value,
                     "steps": r.point.get("train.max_steps"),
                     "examples_cum": examples, "wall_s_cum": round(wall, 2), "best_so_far": best,
                     "best_trial": best_trial})
    return rows


def compute_to_reach(curve: list[dict], target: float) -> dict | None:
    """The first point of a best-vs-compute curve whose best so far reaches `target`."""
    for row in curve:
        if row["best_so_far"] is not None and row["best_so_far"] >= target - 1e-12:
            return {"examples": row["examples_cum"], "wall_s": row["wall_s_cum"], "trial": row["trial"]}
    return None


def rank_vs_metric(ctx: SearchContext) -> dict:
    """The LoRA trials by rank: after a rank sweep only those like it (its working point but for r, alpha, rsLoRA, lr
    and seed: trial.like_rank_sweep), so a long run or a target-sweep trial is not read as a rank's score; the sweep's
    points, plateau, chosen rank and the threshold with its source."""
    sweep = ctx.state.rank_sweep or {}
    points = sweep.get("points") or []
    found = rank_sweep_working(points, {r.number: r.point for r in ctx.records})
    working = found[1] if found is not None else None
    pts = []
    for r in ctx.records:
        if r.point.get("adapter.method", "lora") == "lora" and r.value is not None \
                and (working is None or like_rank_sweep(r.point, working)):
            pts.append({"r": int(r.point.get("adapter.r", 0)), "value": r.value, "trial": r.number,
                        "phase": r.spec.phase, "rslora": bool(r.point.get("adapter.use_rslora"))})
    start = ctx.state.start
    return {"trials": pts, "sweep": points, "plateau_r": sweep.get("plateau_r"), "chosen_r": sweep.get("chosen_r"),
            "breakeven_r": sweep.get("breakeven_r"), "ceiling_r": sweep.get("ceiling_r",
                                                                           getattr(start, "ceiling_r", None)),
            "threshold": sweep.get("threshold"), "threshold_source": sweep.get("threshold_source"),
            "rule": sweep.get("rule"), "stopped": sweep.get("stopped")}


def summarize(ctx: SearchContext, strategy: str, final: Any = None, test: dict | None = None,
              files: dict | None = None, extra: dict | None = None) -> dict:
    start = ctx.state.start
    pair = dict(ctx.state.pair or {})
    if pair and ctx.state.seed_sigma is not None:
        pair["seed_sigma"] = ctx.state.seed_sigma
    rec = final
    recommendation = None
    if rec is not None:
        recommendation = {"trial": rec.number, "name": rec.spec.name, "run_dir": rec.run_dir, "point": rec.point,
                          "val_macro_f1": rec.value if ctx.objective.key == MACRO_F1.key else None,
                          "objective": ctx.objective.key, "objective_value": ctx.objective.value(rec.value),
                          "verdict": rec.result.verdict,
                          "test": _test_subset(test), "files": files or {},
                          "notes": ctx.state.final_notes}
    return {
        "strategy": strategy,
        "budget": ctx.meter.to_dict(),
        "start": None if start is None else {"point": start.point, "ceiling_r": start.ceiling_r,
                                             "lr_centre": start.lr_centre, "choices": list(start.choices),
                                             "facts": start.facts},
        "trials": sorted(records_table(ctx.records) + list(getattr(ctx.store, "lost_trials", list)())
                         + list(getattr(ctx.store, "superseded_trials", lambda claimed: [])(
                                             r.number for r in ctx.records)),
                         key=lambda row: row["trial"]),
        "trail": ctx.decisions,
        "best_vs_compute": best_vs_compute(ctx.records),
        "rank_vs_metric": rank_vs_metric(ctx),
        "pair": pair or None,
        "seeds": ({"sigma": ctx.state.seed_sigma, "values": ctx.state.seed_values}
                  if ctx.state.seed_sigma is not None else None),
        "lora_vs_full": ctx.state.lora_vs_full,
        "recommendation": recommendation,
        **(extra or {}),
    }


def _test_subset(test: dict | None) -> dict | None:
    if not test:
        return None
    keys = ("test/macro_f1", "test/accuracy", "test/weighted_f1", "test/loss", "test/n", "test/micro_f1",
            "test/perplexity", "test/token_accuracy", "test/tokens", "test/unknown_rate",
            "test/subset_accuracy", "test/samples_f1", "test_compound/subset_accuracy", "test_compound/n",
            "test_single/subset_accuracy")
    return {k: test[k] for k in keys if k in test}


def _export_model(rec, adapter: Path, out: Path, final_dir: Path) -> None:
    """Copy the pick's saved model into `out` (swapped in for final/adapter), its model card written for final/: the
    trial's card pointed to ../run.json and `loratune predict RUN_DIR`, which final/ is not (train.card_record). A
    trial whose settings cannot be read leaves no card rather than one that points to files it is not beside."""
    from loratune.config import load_config
    from loratune.train import CardPick

    shutil.copytree(adapter, out, dirs_exist_ok=True)
    card = out / "README.md"
    if not card.is_file():  # (a folder saved without a card gets none)
        return
    run_dir = Path(rec.run_dir)
    try:  # the trial as found from the study directory, which may move with it
        shown = "STUDY_DIR/" + run_dir.resolve().relative_to(final_dir.parent.resolve()).as_posix()
    except ValueError:
        shown = str(run_dir)
    pick = CardPick(rec.number, rec.spec.name, shown)
    try:
        cfg = load_config(run_dir / CONFIG, recorded=True)
        if cfg.model.task == "causal-lm":  # its record (a prompt set's outputs or none) is the trial's
            from loratune.sft import saved_model_card as lm_card

            text = lm_card(out, cfg, pick, record_dir=run_dir)
        else:
            from loratune.train import saved_model_card

            text = saved_model_card(out, cfg, pick)
    except (UserError, OSError, KeyError, TypeError, ValueError):
        card.unlink()
        return
    write_atomic(card, text)


def finish(ctx: SearchContext, final_dir: str | Path, strategy: str, extra: dict | None = None) -> dict:
    """Score the pick once on test, export adapter + YAML, write study.json. Returns the summary."""
    import yaml

    final_dir = Path(final_dir)
    final_dir.mkdir(parents=True, exist_ok=True)
    rec = ctx.state.final or ctx.best()
    test, files, earlier = None, {}, []
    if rec is not None and Path(rec.run_dir).is_dir():
        test_path = final_dir / "test.json"
        old = read_json(test_path) if test_path.exists() else None
        # the other picks an earlier session scored on test (a resume that picked otherwise): test was seen before
        # for this study, and the record says so rather than "scored once"
        earlier = list((old or {}).get("earlier") or [])
        if old and old.get("trial") is not None and old.get("trial") != rec.number:
            earlier.append({k: old.get(k) for k in ("trial", "run_dir", "scores")})
        # a pick an earlier session scored on test and a later one replaced (picks #5, #2, then #5 again): its
        # stored scores are its test score, never a second look
        again = next((e for e in earlier if e.get("trial") == rec.number and isinstance(e.get("scores"), dict)), None)
        if old and old.get("trial") == rec.number:
            test = old.get("scores")  # scored in an earlier session: never twice
        elif again is not None:
            test, earlier = again["scores"], [e for e in earlier if e is not again]
            write_json(test_path, {"trial": rec.number, "run_dir": rec.run_dir, "scores": test,
                                   **({"earlier": earlier} if earlier else {})})
        else:
            try:
                test = ctx.runner.evaluate(rec.run_dir, "test")
                write_json(test_path, {"trial": rec.number, "run_dir": rec.run_dir, "scores": test,
                                       **({"earlier": earlier} if earlier else {})})
            except UserError as exc:
                ctx.decide("finish", "test", "no test score", "none", [exc.problem])
        # the pick's saved model replaces the folder whole (a resume that picked a full run after a LoRA one merged
        # them: the old adapter_config.json beside the new config.json, which transformers loaded as neither); a pick
        # without one leaves none, never the earlier pick's
        adapter = Path(rec.run_dir) / ADAPTER
        remove_unfinished_models(final_dir)
        replace_saved_model(final_dir / ADAPTER, (lambda out: _export_model(rec, adapter, out, final_dir))
                            if adapter.is_dir() else None)
        if adapter.is_dir():
            files["adapter"] = str(final_dir / ADAPTER)
        cfg_path = Path(rec.run_dir) / "config.yaml"
        if cfg_path.exists():
            cfg = yaml.safe_load(cfg_path.read_text(encoding="utf-8")) or {}
            cfg.setdefault("train", {})["output_dir"] = "runs/tuned"
            for key, value in ctx.state.final_notes.items():
                section, name = key.split(".", 1)
                cfg.setdefault(section, {})[name] = value
            header = (f"# chosen by `loratune tune --strategy {strategy}`: trial #{rec.number} ({rec.spec.name}), "
                      f"{ctx.objective.name} {ctx.fmt(rec.value)}\n")
            if cfg["train"].get("init_from"):  # a continued long run (protocol v11)
                header += (f"# a warm start: {cfg['train'].get('max_steps')} more steps from the saved model in "
                           f"train.init_from (a long run of this study); final/adapter holds the result. Without that "
                           "folder, drop init_from and train both lengths in one run (one schedule: not the same model)\n")
            write_atomic(final_dir / "config.yaml", header + yaml.safe_dump(cfg, sort_keys=False))
            files["config"] = str(final_dir / "config.yaml")
        if test is not None:
            files["test"] = str(final_dir / "test.json")
    elif rec is not None:  # scripted runs (tests): no directory, still a score
        test = ctx.runner.evaluate(rec.run_dir, "test")
    if rec is not None and (Path(rec.run_dir) / "run.json").is_file():
        # multi-label: the pick's objective and its thresholds (tuned on validation, saved in its adapter's
        # label_map.json and exported with it) are part of the pick
        picked = read_json(Path(rec.run_dir) / "run.json") or {}
        extra = {**(extra or {}), "objective": picked.get("objective") or "val/macro_f1",
                 **({"decoding": picked["decoding"]} if picked.get("decoding") else {})}
    summary = summarize(ctx, strategy, rec, test, files, extra)
    seen = [int(e["trial"]) for e in earlier if e.get("trial") is not None and e.get("trial") != rec.number]
    if summary["recommendation"] is not None and seen:
        summary["recommendation"]["test_earlier"] = seen
    if rec is not None:
        # the pick's test score as show, the report and tune's print say it (objectives.pick_test_score): the
        # objective's own metric on test (multi-label: subset accuracy, not macro-F1); a prompt-set objective has
        # none, and the test loss is said as what test measured
        shown = pick_test_score(ctx.objective.key, test).text()
        flat = flat_objective_note(ctx.objective, [(r.label, r.value, kept_loss(r.result.best)) for r in ctx.records],
                                   rec.label)
        ctx.decide("finish", "recommendation", f"{rec.label}: {ctx.show(rec.value)}" + (f", {shown}" if shown else ""),
                   "export " + (", ".join(sorted(files)) or "nothing"),
                   [f"point: {rec.point}"]
                   + ([f"test was scored before, on an earlier session's pick "
                       f"{', '.join(f'#{n}' for n in seen)}: this pick's test score is not the study's first look at "
                       "test"] if seen else []) + ([flat] if flat else []), [rec])
        summary["trail"] = ctx.decisions
    write_json(final_dir / "study.json", summary)
    return summary
