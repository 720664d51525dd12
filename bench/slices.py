"""Familiar vs novel phrasing on real data: a healthy run and an induced overfit run (tiny train set,
high rank, all-linear, many epochs, no dropout) on BANKING77 and CLINC150 subsets (20 intents).
Writes bench/results/slices.{json,md}.

    python bench/slices.py [../shared/data]
"""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path

from loratune import api
from loratune.config import load_config

HERE = Path(__file__).resolve().parent
N_INTENTS = 20
RUNS = {
    # name: (train rows per intent, overrides)
    "healthy": (40, ["num_train_epochs=6", "learning_rate=2e-3", "r=8", "lora_dropout=0.1"]),
    "overfit": (4, ["num_train_epochs=60", "learning_rate=3e-3", "r=64", "lora_alpha=64", "lora_dropout=0.0",
                    "target_modules=[all-linear]", "per_device_train_batch_size=16"]),
}


def subset(src: Path, dst: Path, per_intent: int) -> Path:
    dst.mkdir(parents=True, exist_ok=True)
    rows = {s: [json.loads(x) for x in (src / f"{s}.jsonl").read_text().splitlines()] for s in ("train", "validation")}
    intents = sorted({r["label"] for r in rows["train"]})[:N_INTENTS]
    counts: dict[str, int] = {}
    with open(dst / "train.jsonl", "w") as f:
        for r in rows["train"]:
            if r["label"] in intents and counts.get(r["label"], 0) < per_intent:
                counts[r["label"]] = counts.get(r["label"], 0) + 1
                f.write(json.dumps(r) + "\n")
    with open(dst / "validation.jsonl", "w") as f:
        for r in rows["validation"]:
            if r["label"] in intents:
                f.write(json.dumps(r) + "\n")
    return dst


def main() -> None:
    shared = Path(sys.argv[1]) if len(sys.argv) > 1 else HERE.parent.parent / "shared" / "data"
    results = []
    for ds in ("banking77", "clinc150"):
        for name, (per_intent, extra) in RUNS.items():
            data = subset(shared / ds, HERE.parent / "runs" / "bench-slices-data" / f"{ds}-{per_intent}", per_intent)
            out = HERE.parent / "runs" / f"bench-slices-{ds}-{name}"
            cfg = load_config(None, [f"dataset_name={data}", f"output_dir={out}", "num_threads=1",
                                     "evals_per_run=8", "max_length=48"] + extra)
            t0 = time.perf_counter()
            run = api.train(cfg, progress=False)
            hist = [json.loads(x) for x in (out / "history.jsonl").read_text().splitlines()]
            curve = [{"step": p["step"], "familiar": p.get("val_familiar/macro_f1"), "novel": p.get("val_novel/macro_f1"),
                      "gap": (p["val_familiar/macro_f1"] - p["val_novel/macro_f1"]) if "val_novel/macro_f1" in p else None,
                      "train_loss": p.get("train/loss"), "val_loss": p["val/loss"], "val_f1": p["val/macro_f1"]}
                     for p in hist]
            best = run["best"]
            row = {"dataset": ds, "run": name, "train_rows": run["rows"]["train"], "val_rows": run["rows"]["val"],
                   "shares": run["slices"]["shares"], "familiarity": run["slices"].get("familiarity"),
                   "best_step": best["step"], "best_val_f1": best["val/macro_f1"],
                   "best_gap": best["val_familiar/macro_f1"] - best["val_novel/macro_f1"],
                   "final_gap": curve[-1]["gap"], "final_train_loss": curve[-1]["train_loss"],
                   "final_val_f1": curve[-1]["val_f1"], "robustness": run.get("robustness"),
                   "curve": curve, "wall_s": round(time.perf_counter() - t0, 1)}
            results.append(row)
            print(ds, name, f"gap best {row['best_gap']:+.3f} final {row['final_gap']:+.3f}",
                  f"val F1 {row['best_val_f1']:.3f}", row["wall_s"], "s", flush=True)
    (HERE / "results").mkdir(exist_ok=True)
    (HERE / "results" / "slices.json").write_text(json.dumps(results, indent=2) + "\n")
    md = ["# Familiar vs novel phrasing: healthy vs induced overfit", "",
          f"`python bench/slices.py` — {N_INTENTS} intents per dataset; familiar / novel = the most / least similar "
          "third of validation texts to their nearest train text (char 3-5-gram TF-IDF cosine).", "",
          "| dataset | run | train rows | val rows | shares familiar / novel / long / compound / confusable | "
          "best val F1 | familiar-novel gap at best | gap at end | final train loss |", "|---|---|---|---|---|---|---|---|---|"]
    for r in results:
        s = r["shares"]
        md.append(f"| {r['dataset']} | {r['run']} | {r['train_rows']} | {r['val_rows']} | "
                  f"{s.get('familiar', 0):.2f} / {s.get('novel', 0):.2f} / {s.get('long', 0):.2f} / "
                  f"{s.get('compound', 0):.2f} / {s.get('confusable', 0):.2f} | {r['best_val_f1']:.3f} | "
                  f"{r['best_gap']:+.3f} | {r['final_gap']:+.3f} | {r['final_train_loss']:.4f} |")
    (HERE / "results" / "slices.md").write_text("\n".join(md) + "\n")
    print("\n".join(md))


if __name__ == "__main__":
    main()
