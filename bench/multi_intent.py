"""Multi-intent benchmark (issue 19): multi-label vs single-label-as-combinations at equal budget.

Data (built here, deterministic): 12 intents of BANKING77 and 12 of CLINC150 (in-scope), each source's
intents given Zipf-like frequencies (the rarest about a sixth of the most common), single-intent rows
plus compound rows made the way MixATIS / MixSNIPS were made from ATIS / SNIPS: two single-intent
utterances of different intents of the same source joined by " and ", ", also " or ", then" (the first
part's final punctuation dropped). Compound rows are `COMPOUND_SHARE` of each split; their intents follow
the same frequencies, so rare intents are rare in compounds too and many pairs are seen a few times
or never in train. Each split draws its parts from the same split of the source data (train from train,
validation from validation, test from test), every utterance used at most once, and a shuffled-duplicate
check drops any validation/test row one of whose parts (normalised: case, punctuation, spaces) is a
part of some training row, so "A and B" in test never meets "B, then A" or "A" in train.

Two label formats of the same rows: `multi/` (a list of intents per row) and `combo/` (one class per
distinct label set, "a+b" sorted). Every run: MiniLM + LoRA with the same steps, learning rate, batch,
rank and targets; the saved model is the best validation point by subset accuracy (multi-label:
`metric_for_best_model` auto) or accuracy (combinations, the same exact-match criterion).

Measured on test, on the atomic intents (a combination prediction is split back into its intents):
subset (exact-match) accuracy, macro-F1 over the 24 intents, micro-F1, and subset accuracy on the
compound rows and on the single rows. Multi-label runs are trained once per (loss, seed); the
threshold and decoding switches are then applied to the same test logits, so each switch's gain is
a paired difference on the same trained model:

- plain: 0.5 for every label, empty answers allowed, no cap (the behaviour before issue 19)
- +thresholds: per-label thresholds tuned on validation (the ones saved with the adapter)
- +decoding: at least one label, at most the training rows' maximum (2)
- all: thresholds + decoding
and the loss switch (bce_pos_weight, focal) is a separate training run compared with bce.

    python bench/multi_intent.py [--shared ../shared/data] [--seeds 0 1 2] [--epochs 4] [--report-only] [--render JSON]

Results: bench/results/multi_intent.{json,md}; runs and data under runs/bench-multi-intent/ (rebuilt).
"""

from __future__ import annotations

import argparse
import json
import random
import re
import sys
import time
from collections import Counter
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
WORK = ROOT / "runs" / "bench-multi-intent"
RESULTS = HERE / "results"

INTENTS_PER_SOURCE = 12
ZIPF = 0.7  # frequency of the intent of rank r is (r + 1) ** -ZIPF of the most common one's
COMPOUND_SHARE = 0.2  # share of rows with two intents in every split
CONNECTORS = (" and ", ", also ", ", then ")
TOP = {"train": 90, "validation": 12, "test": 30}  # single rows of the most common intent per split
FLOOR = {"train": 8, "validation": 3, "test": 6}
SEP = "+"


# ----------------------------------------------------------------------------------------------
# building the data


def norm(text: str) -> str:
    return " ".join(re.sub(r"[^\w\s]", " ", text.lower()).split())


def join(a: str, b: str, connector: str) -> str:
    a = a.strip().rstrip("?.!")
    b = b.strip()
    if b and not b.startswith("I ") and not b[:2].isupper():
        b = b[0].lower() + b[1:]
    return f"{a}{connector}{b}"


def read(path: Path) -> list[dict]:
    return [json.loads(x) for x in path.read_text(encoding="utf-8").splitlines() if x.strip()]


def pick_intents(shared: Path, rng: random.Random) -> dict[str, list[str]]:
    out = {}
    for src in ("banking77", "clinc150"):
        counts = {s: Counter(r["label"] for r in read(shared / src / f"{s}.jsonl")) for s in TOP}
        ok = sorted(lab for lab in counts["train"] if lab != "oos" and counts["train"][lab] >= 100
                    and counts["validation"][lab] >= 12 and counts["test"][lab] >= 30)
        out[src] = rng.sample(ok, INTENTS_PER_SOURCE)  # the sample order is the frequency rank
    return out


def build(shared: Path, seed: int = 0) -> dict:
    """Rows per split: {"text", "labels" (sorted tuple), "parts" (normalised part texts)}; plus the report."""
    rng = random.Random(seed)
    intents = pick_intents(shared, rng)
    weights = {src: [(r + 1) ** -ZIPF for r in range(INTENTS_PER_SOURCE)] for src in intents}
    splits: dict[str, list[dict]] = {}
    train_parts: set[str] = set()
    dropped: dict[str, int] = {}
    for split in ("train", "validation", "test"):
        rows: list[dict] = []
        for src, labs in intents.items():
            pool = {lab: [] for lab in labs}
            for r in read(shared / src / f"{split}.jsonl"):
                if r["label"] in pool:
                    pool[r["label"]].append(r["text"])
            for lab in labs:
                rng.shuffle(pool[lab])
            tag = "b77" if src == "banking77" else "c150"
            name = {lab: f"{tag}:{lab}" for lab in labs}
            singles = 0
            for lab, w in zip(labs, weights[src]):
                n = max(FLOOR[split], round(TOP[split] * w))
                for _ in range(min(n, len(pool[lab]))):
                    t = pool[lab].pop()
                    rows.append({"text": t, "labels": (name[lab],), "parts": (norm(t),)})
                    singles += 1
            compounds = round(COMPOUND_SHARE / (1 - COMPOUND_SHARE) * singles)
            made = tries = 0
            while made < compounds and tries < compounds * 20:
                tries += 1
                a, b = rng.choices(labs, weights[src], k=2)
                if a == b or not pool[a] or not pool[b]:
                    continue
                ta, tb = pool[a].pop(), pool[b].pop()
                rows.append({"text": join(ta, tb, rng.choice(CONNECTORS)),
                             "labels": tuple(sorted((name[a], name[b]))), "parts": (norm(ta), norm(tb))})
                made += 1
        if split == "train":
            train_parts = {p for r in rows for p in r["parts"]}
        else:  # the shuffled-duplicate check: no part of a held-out row is a part of any training row
            kept = [r for r in rows if not any(p in train_parts for p in r["parts"])]
            dropped[split] = len(rows) - len(kept)
            rows = kept
        rng.shuffle(rows)
        splits[split] = rows
    held = {p for s in ("validation", "test") for r in splits[s] for p in r["parts"]}
    assert not held & train_parts, "a held-out part is in train"
    return {"splits": splits, "intents": intents, "dropped": dropped}


def describe(data: dict) -> dict:
    out = {"intents": data["intents"], "dropped_by_duplicate_check": data["dropped"]}
    train_pairs = Counter(r["labels"] for r in data["splits"]["train"] if len(r["labels"]) == 2)
    for split, rows in data["splits"].items():
        comp = [r for r in rows if len(r["labels"]) == 2]
        counts = Counter(lab for r in rows for lab in r["labels"])
        out[split] = {"rows": len(rows), "compound": len(comp), "compound_share": round(len(comp) / len(rows), 3),
                      "label_rows_min": min(counts.values()), "label_rows_max": max(counts.values()),
                      "distinct_pairs": len({r["labels"] for r in comp})}
        if split != "train":
            out[split]["compound_pairs_unseen_in_train"] = sum(1 for r in comp if r["labels"] not in train_pairs)
    return out


def write(data: dict, folder: Path) -> tuple[Path, Path]:
    multi, combo = folder / "multi", folder / "combo"
    for d in (multi, combo):
        d.mkdir(parents=True, exist_ok=True)
    for split, rows in data["splits"].items():
        (multi / f"{split}.jsonl").write_text("".join(json.dumps({"text": r["text"], "label": list(r["labels"])}) + "\n"
                                                      for r in rows), encoding="utf-8")
        (combo / f"{split}.jsonl").write_text("".join(json.dumps({"text": r["text"], "label": SEP.join(r["labels"])})
                                                      + "\n" for r in rows), encoding="utf-8")
    return multi, combo


# ----------------------------------------------------------------------------------------------
# runs


def common(epochs: float, seed: int) -> list[str]:
    return [f"num_train_epochs={epochs}", "learning_rate=2e-3", "per_device_train_batch_size=32", "r=8",
            "lora_alpha=16", "evals_per_run=6", "train_eval_size=256", "max_length=64", f"seed={seed}",
            "robustness_probe=false", "report_to=none"]


RUNS = {  # name: (data folder, extra overrides)
    "multi-bce": ("multi", ["multi_label_loss=bce"]),
    "multi-pos_weight": ("multi", ["multi_label_loss=bce_pos_weight"]),
    "multi-focal": ("multi", ["multi_label_loss=focal"]),
    "combinations": ("combo", ["metric_for_best_model=accuracy"]),
    # the head's own learning rate (10x the adapter's), with the focal loss
    "multi-focal-head_lr": ("multi", ["multi_label_loss=focal", "head_learning_rate=2e-2"]),
    "combinations-head_lr": ("combo", ["metric_for_best_model=accuracy", "head_learning_rate=2e-2"]),
}


HAND_WRITTEN = "## Reading (written by hand"  # a results md's hand-written section: --render keeps it
EXTRA: list[str] = []  # --set key=value: appended to every run (a smoke test on a tiny model)


def train_run(name: str, data_dir: Path, extra: list[str], epochs: float, seed: int) -> bool:
    """Train one run unless it is already there (logits.npz); True when this call trained it."""
    from loratune import api
    from loratune.config import load_config

    out = WORK / "runs" / f"{name}-s{seed}"
    if (out / "logits.npz").is_file():
        return False
    cfg = load_config(None, [f"dataset_name={data_dir}", f"output_dir={out}"] + common(epochs, seed) + extra + EXTRA)
    t0 = time.perf_counter()
    run = api.train(cfg, progress=False)
    from loratune.inference import load_trained

    trained = load_trained(out)
    splits = {s: read(data_dir / f"{s}.jsonl") for s in ("validation", "test")}
    logits = {s: trained.logits([r["text"] for r in rows]) for s, rows in splits.items()}
    np.savez(out / "logits.npz", **logits)
    (out / "bench.json").write_text(json.dumps({"wall_s": round(time.perf_counter() - t0, 1),
                                                "examples_seen": run["examples_seen"], "steps": run["steps_done"],
                                                "adapter_step": run["adapter_step"],
                                                "examples_per_s": run["examples_per_s"],
                                                # what trained it (the report states it per run)
                                                "overrides": common(epochs, seed) + extra + EXTRA}),
                        encoding="utf-8")
    print(f"{name} seed {seed}: {time.perf_counter() - t0:.0f}s, {run['examples_per_s']:.1f} ex/s", flush=True)
    return True


# ----------------------------------------------------------------------------------------------
# scoring on the atomic intents


def scores(pred: np.ndarray, y: np.ndarray, labels: tuple[str, ...]) -> dict:
    from loratune.metrics import multi_label_scores

    s = multi_label_scores("test", np.zeros_like(y, dtype=float), y, labels, pred=pred)
    keys = ("subset_accuracy", "macro_f1", "micro_f1", "samples_f1")
    out = {k: s[f"test/{k}"] for k in keys}
    out["compound_subset_accuracy"] = s.get("test_compound/subset_accuracy")
    out["single_subset_accuracy"] = s.get("test_single/subset_accuracy")
    out["labels_per_row"] = s["test/labels_per_row"]
    return out


def multi_variants(run_dir: Path, y: np.ndarray, labels: tuple[str, ...]) -> dict[str, dict]:
    from loratune.metrics import Decoding, decode, sigmoid

    meta = json.loads((run_dir / "adapter" / "label_map.json").read_text())
    assert tuple(meta["labels"]) == labels
    saved = Decoding.from_dict(meta["decoding"], labels)
    probs = sigmoid(np.load(run_dir / "logits.npz")["test"])
    half = np.full(len(labels), 0.5)
    variants = {
        "plain": Decoding(half, 0, None, None),
        "+thresholds": Decoding(saved.thresholds, 0, None, None),
        "+decoding": Decoding(half, 1, saved.max_labels, None),
        "all": Decoding(saved.thresholds, 1, saved.max_labels, None),
    }
    return {k: scores(decode(probs, d), y, labels) for k, d in variants.items()}


def combo_scores(run_dir: Path, y: np.ndarray, labels: tuple[str, ...]) -> dict:
    meta = json.loads((run_dir / "adapter" / "label_map.json").read_text())
    classes = meta["labels"]
    top = np.load(run_dir / "logits.npz")["test"].argmax(axis=1)
    index = {lab: i for i, lab in enumerate(labels)}
    pred = np.zeros_like(y)
    for row, c in enumerate(top):
        for lab in classes[c].split(SEP):
            pred[row, index[lab]] = 1
    return scores(pred, y, labels)


def evaluate_all(multi_dir: Path, seeds: list[int], names=None) -> dict:
    """Scores of the runs `names` (default: every run of RUNS) that exist for `seeds`."""
    rows = read(multi_dir / "test.jsonl")
    labels = tuple(sorted({lab for r in read(multi_dir / "train.jsonl") for lab in r["label"]}))
    y = np.zeros((len(rows), len(labels)), dtype=int)
    for i, r in enumerate(rows):
        for lab in r["label"]:
            y[i, labels.index(lab)] = 1
    results: dict = {}
    for seed in seeds:
        for name in (RUNS if names is None else [n for n in RUNS if n in names]):
            d = WORK / "runs" / f"{name}-s{seed}"
            if not (d / "logits.npz").is_file():
                continue
            info = json.loads((d / "bench.json").read_text())
            if name.startswith("combinations"):
                results.setdefault(name, {})[seed] = {**combo_scores(d, y, labels), **info}
            else:
                for variant, s in multi_variants(d, y, labels).items():
                    results.setdefault(f"{name} {variant}", {})[seed] = {**s, **info}
    return results


# ----------------------------------------------------------------------------------------------
# report


def summarize(results: dict) -> dict:
    out = {}
    for name, by_seed in results.items():
        seeds = sorted(by_seed)
        agg = {"seeds": seeds}
        for k in ("subset_accuracy", "macro_f1", "micro_f1", "samples_f1", "compound_subset_accuracy",
                  "single_subset_accuracy", "labels_per_row", "wall_s", "examples_seen"):
            v = np.array([by_seed[s][k] for s in seeds if by_seed[s].get(k) is not None], dtype=float)
            agg[k] = {"mean": float(v.mean()) if len(v) else None,
                      "std": float(v.std(ddof=1)) if len(v) > 1 else None}
        out[name] = agg
    return out


def paired(results: dict, a: str, b: str, key: str) -> tuple[float, float, int] | None:
    """Mean and sd over seeds of a - b (same seeds)."""
    if a not in results or b not in results:
        return None
    seeds = sorted(set(results[a]) & set(results[b]))
    if not seeds:
        return None
    d = np.array([results[a][s][key] - results[b][s][key] for s in seeds])
    return float(d.mean()), float(d.std(ddof=1)) if len(d) > 1 else float("nan"), len(d)


def run_settings(results: dict) -> list[str]:
    """Per trained run (the name before its decoding variant): its seeds and the overrides it recorded (bench.json
    `overrides`, runs since 2026-12-06; older runs did not record them), and each run's steps and examples."""
    by_run: dict = {}
    for name, by_seed in results.items():
        base = name.split(" ")[0]
        for seed, info in by_seed.items():
            by_run.setdefault(base, {})[str(seed)] = info
    lines = []
    for base, by_seed in by_run.items():
        seeds = sorted(by_seed, key=lambda x: int(x) if str(x).lstrip("-").isdigit() else 0)
        sets = {json.dumps([o for o in (i.get("overrides") or []) if not o.startswith("seed=")])
                for i in by_seed.values() if i.get("overrides") is not None}
        recorded = (f"config {'; '.join(' '.join(json.loads(x)) for x in sorted(sets))}" if sets
                    else "config not recorded (trained before runs recorded it)")
        budget = sorted({(i.get("steps"), i.get("examples_seen")) for i in by_seed.values()},
                        key=lambda t: tuple(-1 if x is None else x for x in t))
        lines.append(f"- {base}: seeds {', '.join(seeds)}; "
                     + ", ".join(f"{st} steps / {ex} examples" for st, ex in budget) + f"; {recorded}")
    return lines


def markdown(summary: dict, results: dict, data_info: dict, record: dict) -> str:
    """record: `command` (as given), `report_only` (it trained nothing), `epochs` (None: not recorded), `trained`
    (the runs, name-s<seed>, this call trained; absent in records before it: the command trained every run)."""
    def cell(m):
        if m["mean"] is None:
            return "-"
        return f"{m['mean']:.3f}" + (f" ± {m['std']:.3f}" if m["std"] is not None else "")

    cmd = record.get("command")
    trained = record.get("trained")
    reported = {f"{name.split(' ')[0]}-s{seed}" for name, by_seed in results.items() for seed in by_seed}
    earlier = sorted(reported - set(trained or ()))
    if cmd is None:
        head = "Command not recorded in the JSON; each run's seeds and budget as recorded are under Runs."
    elif record.get("report_only") or trained == []:
        head = (f"Scored by `{cmd}`, which trained nothing: the runs were trained earlier, with the settings "
                "recorded per run under Runs.")
    elif trained is not None and earlier:
        head = (f"Command: `{cmd}`; it trained {', '.join(trained)}"
                + (f" ({record['epochs']:g} epochs)" if record.get("epochs") is not None else "")
                + f"; {', '.join(earlier)} were trained earlier, with the settings recorded per run under Runs.")
    else:
        head = f"Command: `{cmd}`"
    if record.get("note"):  # how the record came to be (e.g. rebuilt from an earlier md)
        head += f" ({record['note']})"
    epochs = (record.get("epochs") if not record.get("report_only") and trained != []
              and not (trained is not None and earlier) else None)
    lines = ["# Multi-intent: multi-label vs single-label-as-combinations (issue 19)", "",
             head, "",
             "Built by `bench/multi_intent.py` (see its docstring for every choice); MiniLM (embedded) + LoRA, "
             + (f"{epochs:g} epochs, " if epochs is not None else "")
             + "each run's seeds, steps and examples as recorded below (equal budget where they match). "
             "Scores on **test**, over the 24 atomic intents (a combination class is split back into "
             "its intents); mean ± sd over seeds.", "", "## Data", ""]
    for split in ("train", "validation", "test"):
        d = data_info[split]
        lines.append(f"- {split}: {d['rows']} rows, {d['compound']} compound ({d['compound_share']:.0%}), "
                     f"{d['distinct_pairs']} distinct pairs, rows per intent {d['label_rows_min']}-{d['label_rows_max']}"
                     + (f", {d['compound_pairs_unseen_in_train']} compound rows whose pair never occurs in train"
                        if "compound_pairs_unseen_in_train" in d else ""))
    lines.append(f"- shuffled-duplicate check dropped {data_info['dropped_by_duplicate_check']} held-out rows "
                 "(a part also in train)")
    lines += ["", "## Runs", ""] + run_settings(results)
    lines += ["", "## Results (test)", "",
              "| run | subset acc | macro-F1 | micro-F1 | samples-F1 | compound subset acc | single subset acc "
              "| labels/row | seeds |", "|---|---|---|---|---|---|---|---|---|"]
    for name, agg in summary.items():
        lines.append(f"| {name} | {cell(agg['subset_accuracy'])} | {cell(agg['macro_f1'])} | {cell(agg['micro_f1'])} "
                     f"| {cell(agg['samples_f1'])} | {cell(agg['compound_subset_accuracy'])} "
                     f"| {cell(agg['single_subset_accuracy'])} | {cell(agg['labels_per_row'])} "
                     f"| {len(agg['seeds'])} |")
    lines += ["", "## Each switch on its own (paired over seeds: mean ± sd of the difference)", "",
              "| switch | vs | subset acc | macro-F1 | compound subset acc |", "|---|---|---|---|---|"]
    pairs = []
    for loss in ("bce", "pos_weight", "focal"):  # the decoding switches, each on the same trained models
        pairs += [(f"multi-{loss} {v}", f"multi-{loss} plain") for v in ("+thresholds", "+decoding", "all")]
    pairs += [("multi-focal-head_lr all", "multi-focal all"), ("multi-focal-head_lr plain", "multi-focal plain"),
              ("combinations-head_lr", "combinations"), ("multi-focal-head_lr all", "combinations-head_lr")]
    pairs += [("multi-pos_weight plain", "multi-bce plain"), ("multi-focal plain", "multi-bce plain"),
              ("multi-pos_weight all", "multi-bce all"), ("multi-focal all", "multi-bce all")]  # the loss switch
    for best in ("multi-bce all", "multi-pos_weight all", "multi-focal all", "multi-focal +decoding"):
        pairs.append((best, "combinations"))
    for a, b in pairs:
        cells = []
        for key in ("subset_accuracy", "macro_f1", "compound_subset_accuracy"):
            p = paired(results, a, b, key)
            cells.append("-" if p is None else f"{p[0]:+.3f} ± {p[1]:.3f} (n={p[2]})")
        if all(c == "-" for c in cells):  # neither run of the pair is in these results
            continue
        lines.append(f"| {a} | {b} | " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def write_md(md_path: Path, text: str) -> None:
    """Write a results md, keeping the section written by hand below the tables (HAND_WRITTEN) if it has one."""
    kept = md_path.read_text(encoding="utf-8") if md_path.is_file() else ""
    if HAND_WRITTEN in kept:
        text += "\n" + kept[kept.index(HAND_WRITTEN):]
    md_path.write_text(text, encoding="utf-8")


def main(argv=None) -> int:
    global WORK
    ap = argparse.ArgumentParser()
    ap.add_argument("--shared", default=str(ROOT.parent / "shared" / "data"))
    ap.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    ap.add_argument("--epochs", type=float, default=4.0)
    ap.add_argument("--runs", nargs="+", default=list(RUNS), choices=list(RUNS))
    ap.add_argument("--report-only", action="store_true", help="score the runs that exist, train nothing")
    ap.add_argument("--build-only", action="store_true", help="build the data, print its description")
    ap.add_argument("--set", nargs="*", default=[], help="key=value overrides for every run (smoke tests)")
    ap.add_argument("--work", default=str(WORK), help="where data and runs go")
    ap.add_argument("--results-name", default="multi_intent", help="bench/results/<name>.{json,md}")
    ap.add_argument("--render", metavar="JSON", help="only rewrite <results-name>.md from a results JSON")
    args = ap.parse_args(argv)
    if args.render:  # no data, no runs: what the JSON recorded
        rec = json.loads(Path(args.render).read_text(encoding="utf-8"))
        md_path = RESULTS / f"{args.results_name}.md"
        write_md(md_path, markdown(rec["summary"], rec["per_seed"], rec["data"], rec.get("record") or {}))
        return 0
    WORK = Path(args.work)
    EXTRA[:] = args.set
    data = build(Path(args.shared))
    info = describe(data)
    multi_dir, combo_dir = write(data, WORK / "data")
    if args.build_only:
        print(json.dumps(info, indent=1))
        return 0
    trained = []  # the runs this call trained (a run already there is scored, not trained again)
    if not args.report_only:
        for seed in args.seeds:  # seed-major: every configuration gets seed 0 before any gets seed 1
            for name in args.runs:
                folder, extra = RUNS[name]
                if train_run(name, multi_dir if folder == "multi" else combo_dir, extra, args.epochs, seed):
                    trained.append(f"{name}-s{seed}")
    results = evaluate_all(multi_dir, args.seeds, args.runs)  # the runs asked for, not every one there
    summary = summarize(results)
    RESULTS.mkdir(exist_ok=True)
    given = sys.argv[1:] if argv is None else argv  # this call, --report-only included (it trained nothing)
    record = {"command": ("python bench/multi_intent.py " + " ".join(given)).strip(),
              "report_only": args.report_only, "epochs": args.epochs if trained else None, "trained": trained}
    name = args.results_name
    (RESULTS / f"{name}.json").write_text(json.dumps({"data": info, "summary": summary, "per_seed": results,
                                                      "record": record}, indent=1, default=str), encoding="utf-8")
    write_md(RESULTS / f"{name}.md", markdown(summary, results, info, record))
    print((RESULTS / f"{name}.md").read_text())
    return 0


if __name__ == "__main__":
    sys.exit(main())
