"""Continue a long run's adapter with the budget a tuning study left (issue 15): is it worth it, and at which lr?

Protocol v10 ends the early long run by half the budget and leaves 1-22% of the budget unused, since a longer run
from scratch (1.5x) does not fit what is left. A warm start (`train.init_from`) costs only its own steps. For each
stored v10 protocol study whose pick is an early long run (bench/results/tuning/<ds>-protocol-<seed>.json), this
trains, with the study's own data, base config and train seed:

    early        the pick's config (its steps, its lr): reproduces the study's pick
    cont-x<f>    `early`'s saved adapter trained on for the steps the study left unused, at lr x f
    scratch      the pick's config at early + those steps, from scratch (what the budget would need 1.5-2x for)

and scores each saved model on val and test (macro-F1). Results: bench/results/continuation.json and .md.

    python bench/continuation.py --datasets banking77-20,clinc150-20 --seeds 0,1,2,3,4 --work /tmp/lt/cont
"""

from __future__ import annotations

import argparse
import json
import math
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from tuning import BASE_OVERRIDES, EXPLICIT_KEYS, STUDIES, write_subset  # noqa: E402  (bench/tuning.py)

RESULTS = Path(__file__).resolve().parent / "results"
LR_FACTORS = (1.0, 0.5)


def trial_overrides(point: dict) -> list[str]:
    """A trial's settings as `tune` gives them (its TRIAL_DEFAULTS, except the keys bench/tuning.py sets
    explicitly: those win) and the trial's point."""
    from loratune.search.tune import TRIAL_DEFAULTS

    trial = {k: v for k, v in TRIAL_DEFAULTS.items() if k not in EXPLICIT_KEYS}
    return [f"{k}={json.dumps(v)}" for k, v in {**trial, **point}.items()]


def one(ds: str, seed: int, work: Path, num_threads: int) -> dict | None:
    from loratune.config import load_config
    from loratune.data import load_dataset
    from loratune.inference import evaluate_run
    from loratune.api import train
    from loratune.store import RunStore

    study = json.loads((STUDIES / f"{ds}-protocol-{seed}.json").read_text())
    pick = next(t for t in study["table"] if t["trial"] == study["pick"]["trial"])
    if pick["phase"] not in ("early-long", "final-train"):
        return None
    budget = int(study["settings"]["budget"].rstrip("ex"))
    left = budget - int(study["examples"])
    steps0 = int(pick["point"]["train.max_steps"])
    per_step = pick["examples"] / steps0
    extra = int(left / per_step)
    data = write_subset(ds, work)
    # the study's base config (bench/tuning.py) and phase 0's batch (its trials' examples per step)
    base_args = [f"dataset_name={data}", f"num_threads={num_threads}", *BASE_OVERRIDES,
                 f"per_device_train_batch_size={2 ** math.ceil(math.log2(per_step))}"]  # partial batches: < 16/step
    out = {"dataset": ds, "seed": seed, "pick": pick["name"], "pick_test": study["pick"]["test"],
           "left_examples": left, "steps": steps0, "extra_steps": extra, "runs": {}}
    lr = float(pick["point"]["train.learning_rate"])

    def run(name: str, point: dict, init: str | None = None) -> dict:
        cfg = load_config(None, base_args + trial_overrides(point)
                          + [f"train.seed={study['train_seed']}", f"output_dir={work / 'runs' / f'{ds}-{seed}-{name}'}"]
                          + ([f"train.init_from={init}"] if init else []))
        dataset = load_dataset(cfg.data, seed=42)
        t0 = time.perf_counter()
        rec = train(cfg, dataset, progress=False)
        test = evaluate_run(cfg.train.output_dir)
        res = {"val": rec["best"]["val/macro_f1"] if rec.get("best") else None, "test": test["test/macro_f1"],
               "steps": rec["steps_done"], "examples": rec["examples_seen"], "wall_s": round(time.perf_counter() - t0, 1),
               "lr": float(cfg.train.learning_rate), "best_step": (rec.get("best") or {}).get("step"),
               "run_dir": cfg.train.output_dir}
        print(f"[{time.strftime('%H:%M:%S')}] {ds}/{seed} {name}: {json.dumps(res)}", flush=True)
        return res

    early = run("early", pick["point"])
    out["runs"]["early"] = early
    if extra < 1:
        return out
    adapter = str(RunStore(early["run_dir"]).adapter_dir)
    for f in LR_FACTORS:
        out["runs"][f"cont-x{f:g}"] = run(f"cont-x{f:g}", {**pick["point"], "train.max_steps": extra,
                                                           "train.learning_rate": lr * f}, adapter)
    out["runs"]["scratch"] = run("scratch", {**pick["point"], "train.max_steps": steps0 + extra})
    return out


def render(rows: list[dict]) -> str:
    names = ["early", *(f"cont-x{f:g}" for f in LR_FACTORS), "scratch"]
    lines = ["# Continuing the early long run with the budget left (issue 15)", "",
             "`python bench/continuation.py` (see its docstring). Test macro-F1 of each saved model (the best val "
             "point of its run); `early` reproduces the stored v10 study's pick, `cont-x<f>` trains its adapter on "
             "for the steps the study left unused at lr x f (a warm start: fresh optimizer and schedule), `scratch` "
             "trains the same total length from scratch.", "",
             "| dataset | seed | pick (stored test) | steps + extra | " + " | ".join(names) + " |",
             "|---|---|---|---|" + "---|" * len(names)]
    for r in rows:
        cells = [f"{r['runs'][n]['test']:.3f} (val {r['runs'][n]['val']:.3f})" if n in r["runs"] else "-" for n in names]
        lines.append(f"| {r['dataset']} | {r['seed']} | {r['pick']} ({r['pick_test']:.3f}) | {r['steps']} + "
                     f"{r['extra_steps']} | " + " | ".join(cells) + " |")
    lines.append("")
    for ds in sorted({r["dataset"] for r in rows}):
        sub = [r for r in rows if r["dataset"] == ds and all(n in r["runs"] for n in names)]
        if not sub:
            continue
        for n in names[1:]:
            diffs = [r["runs"][n]["test"] - r["runs"]["early"]["test"] for r in sub]
            se = statistics.stdev(diffs) / len(diffs) ** 0.5 if len(diffs) > 1 else float("nan")
            wins = sum(r["runs"][n]["val"] > r["runs"]["early"]["val"] for r in sub)
            lines.append(f"- {ds}: {n} - early, test: {statistics.mean(diffs):+.3f} +- {se:.3f} (n {len(diffs)}); "
                         f"val higher than early's in {wins} of {len(sub)}")
    return "\n".join(lines) + "\n"


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--datasets", default="banking77-20,clinc150-20")
    p.add_argument("--seeds", default="0,1,2,3,4")
    p.add_argument("--work", default="/tmp/loratune-continuation")
    p.add_argument("--num-threads", type=int, default=1)
    p.add_argument("--out", default=str(RESULTS / "continuation.json"))
    p.add_argument("--render", action="store_true", help="only write the .md from the stored .json")
    args = p.parse_args(argv)
    path = Path(args.out)
    rows = json.loads(path.read_text()) if path.exists() else []
    if not args.render:
        for ds in args.datasets.split(","):
            for seed in (int(s) for s in args.seeds.split(",")):
                r = one(ds, seed, Path(args.work), args.num_threads)
                if r is None:
                    print(f"{ds}/{seed}: the pick is not a long run; skipped", flush=True)
                    continue
                rows = [x for x in (json.loads(path.read_text()) if path.exists() else [])
                        if (x["dataset"], x["seed"]) != (ds, seed)] + [r]
                path.write_text(json.dumps(rows, indent=1) + "\n")
    path.with_suffix(".md").write_text(render(sorted(rows, key=lambda r: (r["dataset"], r["seed"]))))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
