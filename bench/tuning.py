"""Protocol vs TPE vs random under the same budget cap (issue 5's evidence).

On small, deterministic subsets of BANKING77 and CLINC150 (../shared/data), every strategy runs
`loratune tune` (the Python API, in this process, one study after another) with the same budget in
training examples processed, the same trial length, the same pruning and the same phase-0
assessment (computed once per dataset and copied into each study). Measured per study:

- best val macro-F1 so far against cumulative training examples (and wall time);
- the compute each needed to get within 0.5 point of the best val macro-F1 any strategy found;
- the test macro-F1 of each one's final pick (scored once).

    python bench/tuning.py                                   # 6000ex per study, 6 studies
    python bench/tuning.py --datasets banking77-20 --strategies protocol,tpe --budget 8000ex

Writes bench/results/tuning.json (everything, incl. curves and decision trails) and tuning.md. Studies
live under --work (default /tmp/loratune-bench); results are rewritten after every study.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import sys
import time
from collections import defaultdict
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
SHARED = Path("/work/shared/data") if Path("/work/shared/data").exists() else (ROOT / ".." / "shared" / "data")
RESULTS = ROOT / "bench" / "results"
PROTOCOL_VERSION = 3  # 1: no lr probe; 2: no target sweep (older protocol results are replaced when merging)

# name -> source, number of intents, every `step`-th sorted label, rows per class in train / val / test
SUBSETS = {
    "banking77-20": dict(source="banking77", n_labels=20, step=3, train=20, val=10, test=20),
    "clinc150-20": dict(source="clinc150", n_labels=20, step=7, train=20, val=10, test=20),
}


def write_subset(name: str, work: Path) -> Path:
    spec = SUBSETS[name]
    out = work / "data" / name
    out.mkdir(parents=True, exist_ok=True)
    src = SHARED / spec["source"]
    rows = {sp: [json.loads(x) for x in (src / f"{sp}.jsonl").read_text().splitlines() if x.strip()]
            for sp in ("train", "validation", "test")}
    labels = sorted({r["label"] for r in rows["train"]} - {"oos"})[:: spec["step"]][: spec["n_labels"]]
    keep = set(labels)
    for sp, k in (("train", spec["train"]), ("validation", spec["val"]), ("test", spec["test"])):
        count: dict[str, int] = defaultdict(int)
        picked = []
        for r in rows[sp]:
            if r["label"] in keep and count[r["label"]] < k:
                count[r["label"]] += 1
                picked.append({"text": r["text"], "label": r["label"]})
        (out / f"{sp}.jsonl").write_text("".join(json.dumps(r) + "\n" for r in picked), encoding="utf-8")
    (out / "SOURCE.md").write_text(
        f"Subset of {spec['source']} (../shared/data/{spec['source']}): labels = sorted labels (oos excluded)"
        f"[::{spec['step']}][:{spec['n_labels']}], the first {spec['train']} train, {spec['val']} validation and "
        f"{spec['test']} test rows of each in file order. Written by bench/tuning.py.\n")
    return out


def run(args) -> dict:
    from loratune.config import load_config
    from loratune.data import load_dataset
    from loratune.search.protocol import ProtocolSettings
    from loratune.search.summary import compute_to_reach
    from loratune.search.tune import TuneOptions, tune
    from loratune.store import write_json

    work = Path(args.work)
    results = {"config": {"budget": args.budget, "trial_steps": args.trial_steps, "num_threads": args.num_threads,
                          "machine": platform.node(),
                          "cpus": os.cpu_count(), "started": time.strftime("%Y-%m-%d %H:%M:%S")},
               "studies": {}, "datasets": {}}
    if args.merge and (RESULTS / "tuning.json").exists():  # add studies to earlier results
        old = json.loads((RESULTS / "tuning.json").read_text())
        if old.get("config", {}).get("budget") == args.budget:
            for v in old.get("studies", {}).values():
                seed = v.get("seed", 0)
                if v["strategy"] == "protocol" and v.get("protocol_version") != PROTOCOL_VERSION:
                    continue  # an older protocol: run again
                if f"{v['dataset']}/{v['strategy']}/{seed}" in args.rerun:
                    continue
                results["studies"][f"{v['dataset']}/{v['strategy']}/{seed}"] = {**v, "seed": seed}
            results["config"]["started"] = old["config"].get("started", results["config"]["started"])
            results["notes"] = old.get("notes", [])
    for ds in args.datasets:
        data = write_subset(ds, work)
        overrides = [f"dataset_name={data}", f"num_threads={args.num_threads}", "train_eval_size=128",
                     "per_device_eval_batch_size=128", "evals_per_run=5", "max_length=32"]
        cfg = load_config(None, overrides)
        dataset = load_dataset(cfg.data, seed=cfg.train.seed)
        assess_path = work / "assess" / f"{ds}.json"
        if not assess_path.exists():
            from loratune.assess import run_assessment

            t0 = time.perf_counter()
            a = run_assessment(cfg, dataset=dataset).to_dict()
            a.setdefault("timings", {})["tune_wall_s"] = time.perf_counter() - t0
            write_json(assess_path, a)
        for strategy, seed in [(st, sd) for st in args.strategies
                               for sd in ([0] if st == "protocol" else args.seeds)]:
            key = f"{ds}/{strategy}/{seed}"
            if key in results["studies"]:
                print(f"[{time.strftime('%H:%M:%S')}] {key}: kept from the earlier results", flush=True)
                continue
            study = work / "studies" / f"{ds}-{strategy}-{seed}"
            if study.exists():
                shutil.rmtree(study)
            study.mkdir(parents=True)
            shutil.copy(assess_path, study / "assess.json")  # the same phase 0 for everyone
            opts = TuneOptions(budget=args.budget, strategy=strategy, study_dir=str(study), seed=seed,
                               trial_steps=args.trial_steps,
                               explicit_keys=("train.num_threads", "train.train_eval_size",
                                              "train.per_device_eval_batch_size", "train.evals_per_run",
                                              "model.max_length"),
                               settings=ProtocolSettings())
            print(f"[{time.strftime('%H:%M:%S')}] {key} ...", flush=True)
            t0 = time.perf_counter()
            summary = tune(cfg, opts, dataset=dataset)
            wall = time.perf_counter() - t0
            rec = summary.get("recommendation") or {}
            results["studies"][key] = {
                "dataset": ds, "strategy": strategy, "seed": seed, "wall_s": round(wall, 1),
                "protocol_version": PROTOCOL_VERSION if strategy == "protocol" else None,
                "trials": len(summary["trials"]), "pruned": sum(t["status"] == "pruned" for t in summary["trials"]),
                "examples": summary["budget"]["spent"]["examples"],
                "best_val": max((t["val_macro_f1"] or 0) for t in summary["trials"]) if summary["trials"] else None,
                "pick": {"trial": rec.get("trial"), "name": rec.get("name"), "val": rec.get("val_macro_f1"),
                         "test": (rec.get("test") or {}).get("test/macro_f1"), "point": rec.get("point")},
                "curve": summary["best_vs_compute"],
                "trail": [f"[{d['phase']}] {d['verdict']} -> {d['move']}" for d in summary["trail"]],
                "table": summary["trials"], "lora_vs_full": (summary.get("lora_vs_full") or {}).get("summary"),
            }
            st = results["studies"][key]
            print(f"    {st['trials']} trials, best val {st['best_val']:.4f}, pick test {st['pick']['test']}, "
                  f"{wall:.0f}s", flush=True)
            _aggregate(results, compute_to_reach)
            _write(results)
    return results


def _aggregate(results: dict, compute_to_reach) -> None:
    by_ds: dict[str, list[dict]] = defaultdict(list)
    for s in results["studies"].values():
        by_ds[s["dataset"]].append(s)
    for ds, studies in by_ds.items():
        best_any = max(s["best_val"] or 0 for s in studies)
        rows = {}
        for s in studies:
            reach = compute_to_reach(s["curve"], best_any - 0.005)
            rows[f"{s['strategy']}/{s.get('seed', 0)}"] = {
                "strategy": s["strategy"], "seed": s.get("seed", 0), "best_val": s["best_val"],
                "examples_total": s["examples"], "trials": s["trials"],
                "examples_to_within_0.5pt": reach["examples"] if reach else None,
                "trial_reached": reach["trial"] if reach else None,
                "pick_test_macro_f1": s["pick"]["test"], "pick_val_macro_f1": s["pick"]["val"], "wall_s": s["wall_s"]}
        results["datasets"][ds] = {"best_val_any": best_any, "target": best_any - 0.005, "by_run": rows}


def _write(results: dict) -> None:
    RESULTS.mkdir(parents=True, exist_ok=True)
    (RESULTS / "tuning.json").write_text(json.dumps(results, indent=2) + "\n", encoding="utf-8")
    (RESULTS / "tuning.md").write_text(render(results), encoding="utf-8")


def _f(v, nd=4):
    return "-" if v is None else f"{v:.{nd}f}"


def render(results: dict) -> str:
    c = results["config"]
    lines = ["# Tuning strategies under one budget", "",
             f"`python bench/tuning.py` ({c['started']}, {c['cpus']} CPUs shared with other jobs, num_threads="
             f"{c['num_threads']}). Budget per study: **{c['budget']}** (training examples processed), the same "
             f"trial length ({c.get('trial_steps', '?')} steps x 16), pruning and phase-0 assessment for every strategy. Rows are `strategy/seed` (sampler "
             "seed; the protocol is deterministic given the data): single runs, not averages.", ""]
    if results.get("notes"):
        lines += ["## Notes", ""] + [f"- {n}" for n in results["notes"]] + [""]
    for ds, agg in results["datasets"].items():
        lines += [f"## {ds}", "", f"Best val macro-F1 any strategy found: {agg['best_val_any']:.4f}; "
                  f"target (within 0.5 pt): {agg['target']:.4f}.", "",
                  "| strategy/seed | trials | examples used | best val macro-F1 | examples to within 0.5 pt | "
                  "pick val | pick test macro-F1 | wall s |", "|---|---|---|---|---|---|---|---|"]
        for name, r in sorted(agg["by_run"].items()):
            reach = r["examples_to_within_0.5pt"]
            reach_text = "never" if reach is None else f"{reach:,} (trial #{r['trial_reached']})"
            lines.append(f"| {name} | {r['trials']} | {r['examples_total']:,} | {_f(r['best_val'])} | "
                         f"{reach_text} | "
                         f"{_f(r['pick_val_macro_f1'])} | {_f(r['pick_test_macro_f1'])} | {r['wall_s']:.0f} |")
        lines += ["", "Best val macro-F1 so far against cumulative training examples:", ""]
        for key, s in results["studies"].items():
            if s["dataset"] != ds:
                continue
            pts = ", ".join(f"{row['examples_cum']:,}: {_f(row['best_so_far'], 3)}" for row in s["curve"])
            lines.append(f"- {s['strategy']}/{s.get('seed', 0)}: {pts}")
        proto = results["studies"].get(f"{ds}/protocol/0")
        if proto:
            lines += ["", "Protocol decision trail:", ""] + [f"    {t}" for t in proto["trail"]]
            if proto.get("lora_vs_full"):
                lines += ["", f"LoRA vs full: {proto['lora_vs_full']}"]
        lines.append("")
    return "\n".join(lines) + "\n"


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--datasets", default="banking77-20,clinc150-20")
    p.add_argument("--strategies", default="protocol,tpe,random")
    p.add_argument("--budget", default="6000ex")
    p.add_argument("--seeds", default="0", help="sampler seeds for tpe / random / grid, e.g. 0,1")
    p.add_argument("--trial-steps", type=int, default=34, help="optimizer steps per trial, the same for every "
                   "strategy (34 x 16 = 544 examples, 1.4 epochs of the 400-row subsets)")
    p.add_argument("--rerun", default="", help="with --merge: studies to run again, e.g. banking77-20/tpe/0")
    p.add_argument("--merge", action="store_true", help="keep the studies of the existing results (same budget) and "
                   "run only the missing ones")
    p.add_argument("--num-threads", type=int, default=1)
    p.add_argument("--work", default="/tmp/loratune-bench")
    args = p.parse_args(argv)
    args.datasets = [d for d in args.datasets.split(",") if d]
    args.strategies = [s for s in args.strategies.split(",") if s]
    args.seeds = [int(x) for x in args.seeds.split(",") if x]
    args.rerun = {x for x in args.rerun.split(",") if x}
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    run(args)
    print(f"written: {RESULTS / 'tuning.json'}, {RESULTS / 'tuning.md'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
