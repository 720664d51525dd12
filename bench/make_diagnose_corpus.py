"""Train the diagnosis corpus: real `loratune train` runs with induced pathologies, kept as test fixtures.

Each run trains MiniLM (the default model) on a small, deterministic class subset of BANKING77 or
CLINC150 (written to bench/data/), with a config chosen to induce one verdict. The run's
history.jsonl, run.json and config.yaml are copied to tests/fixtures/runs/<name>/ (never the adapter),
and tests/fixtures/runs/manifest.json records what each run was meant to show and how it was made.

    python bench/make_diagnose_corpus.py                 # every run not yet in the fixtures
    python bench/make_diagnose_corpus.py --only lrbig-b77-0.3 --force
    python bench/make_diagnose_corpus.py --list

Runs are sequential (the machine is shared; each is ~1-3 CPU minutes). Afterwards
`python bench/diagnose_corpus_report.py` writes the verdict confusion matrix.
"""

from __future__ import annotations

import argparse
import json
import shutil
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
SHARED = (ROOT / ".." / "shared" / "data").resolve() if (ROOT / ".." / "shared").exists() else Path("/work/shared/data")
DATA = ROOT / "bench" / "data"
FIXTURES = ROOT / "tests" / "fixtures" / "runs"
WORK = Path("/tmp/loratune-diagnose-corpus")

# class subsets: every `step`-th label of the sorted label list (out-of-scope excluded), k per class
SUBSETS = {
    "banking77-10": dict(source="banking77", n_labels=10, step=7, train_per_class=20, val_per_class=10),
    "clinc150-10": dict(source="clinc150", n_labels=10, step=13, train_per_class=20, val_per_class=10),
    "banking77-77": dict(source="banking77", n_labels=77, step=1, train_per_class=8, val_per_class=4),
}

# shared by every run: short texts, small batches, 10 eval points, a 100-row train subsample scored like val
COMMON = ["max_length=32", "per_device_train_batch_size=16", "per_device_eval_batch_size=128",
          "evals_per_run=10", "train_eval_size=100", "num_threads=2"]

# name -> (what it is meant to show, subset, overrides)
RUNS: dict[str, tuple[str, str, list[str]]] = {
    # healthy: the default adapter (attn.q/v + top-2 FFN, r 8), a centre lr, enough epochs to converge
    "healthy-b77-s1": ("healthy", "banking77-10", ["learning_rate=2e-3", "num_train_epochs=6", "seed=1"]),
    "healthy-c150-s1": ("healthy", "clinc150-10", ["learning_rate=2e-3", "num_train_epochs=6", "seed=1"]),
    "healthy-b77-s2": ("healthy", "banking77-10", ["learning_rate=2e-3", "num_train_epochs=6", "seed=2"]),
    # overfit: 3 rows per class, high rank on every linear layer, no dropout, many epochs
    "overfit-b77-r64": ("overfit-capacity", "banking77-10",
                        ["max_train_samples=30", "r=64", "lora_alpha=128", "target_modules=[all-linear]",
                         "lora_dropout=0.0", "learning_rate=3e-3", "num_train_epochs=30", "weight_decay=0.0"]),
    "overfit-c150-r64": ("overfit-capacity", "clinc150-10",
                         ["max_train_samples=30", "r=64", "lora_alpha=128", "target_modules=[all-linear]",
                          "lora_dropout=0.0", "learning_rate=3e-3", "num_train_epochs=30", "weight_decay=0.0"]),
    "overfit-b77-r128-s2": ("overfit-capacity", "banking77-10",
                            ["max_train_samples=30", "r=128", "lora_alpha=256", "target_modules=[all-linear]",
                             "lora_dropout=0.0", "learning_rate=3e-3", "num_train_epochs=30", "weight_decay=0.0",
                             "seed=2"]),
    "overfit-b77-r64-s2": ("overfit-capacity", "banking77-10",
                           ["max_train_samples=30", "r=64", "lora_alpha=64", "target_modules=[all-linear]",
                            "lora_dropout=0.0", "learning_rate=1e-3", "num_train_epochs=40", "weight_decay=0.0",
                            "seed=2"]),
    # lr too small: 1e-6 (and 3e-6), everything else healthy
    "lrsmall-b77-1e-6": ("lr-too-small", "banking77-10", ["learning_rate=1e-6", "num_train_epochs=4"]),
    "lrsmall-c150-1e-6": ("lr-too-small", "clinc150-10", ["learning_rate=1e-6", "num_train_epochs=4"]),
    "lrsmall-b77-3e-6": ("lr-too-small", "banking77-10", ["learning_rate=3e-6", "num_train_epochs=4", "seed=2"]),
    # lr too large: 0.02 .. 1 (oscillation, collapse to one class, or divergence)
    "lrbig-b77-0.1": ("lr-too-large", "banking77-10", ["learning_rate=0.1", "num_train_epochs=4"]),
    "lrbig-c150-0.3": ("lr-too-large", "clinc150-10", ["learning_rate=0.3", "num_train_epochs=4"]),
    "lrbig-b77-1.0": ("lr-too-large", "banking77-10", ["learning_rate=1.0", "num_train_epochs=4", "seed=2"]),
    "lrbig-c150-0.02": ("lr-too-large", "clinc150-10", ["learning_rate=2e-2", "num_train_epochs=4"]),
    # underfit (capacity): one rank-1 adapter on one module of the top layer, heavy LoRA dropout, many
    # classes for the data (77 classes), trained to a plateau at a healthy lr
    "underfit-b77all-r1": ("underfit-capacity", "banking77-77",
                           ["r=1", "lora_alpha=1", "target_modules=[attn.q@top:1]", "lora_dropout=0.5",
                            "learning_rate=2e-3", "num_train_epochs=4"]),
    "underfit-c150-r1": ("underfit-capacity", "clinc150-10",
                         ["r=1", "lora_alpha=1", "target_modules=[attn.q@top:1]", "lora_dropout=0.5",
                          "learning_rate=2e-3", "num_train_epochs=4"]),
    # ... and squeezed further by a strong decoupled weight decay on every trainable weight (head included)
    "underfit-b77-r1-wd": ("underfit-capacity", "banking77-10",
                           ["r=1", "lora_alpha=1", "target_modules=[attn.q@top:1]", "lora_dropout=0.5",
                            "learning_rate=2e-3", "num_train_epochs=4", "weight_decay=20", "seed=2"]),
}


def build_subset(name: str) -> Path:
    """Write bench/data/<name>/{train,validation}.jsonl (deterministic: sorted labels, file order)."""
    spec = SUBSETS[name]
    out = DATA / name
    if (out / "train.jsonl").exists() and (out / "validation.jsonl").exists():
        return out
    src = SHARED / spec["source"]
    train = [json.loads(x) for x in (src / "train.jsonl").read_text().splitlines() if x.strip()]
    val = [json.loads(x) for x in (src / "validation.jsonl").read_text().splitlines() if x.strip()]
    labels = sorted({r["label"] for r in train} - {"oos"})[:: spec["step"]][: spec["n_labels"]]
    out.mkdir(parents=True, exist_ok=True)
    for rows, k, fname in ((train, spec["train_per_class"], "train.jsonl"),
                           (val, spec["val_per_class"], "validation.jsonl")):
        taken: dict[str, int] = {}
        keep = []
        for r in rows:
            if r["label"] in labels and taken.get(r["label"], 0) < k:
                taken[r["label"]] = taken.get(r["label"], 0) + 1
                keep.append({"text": r["text"], "label": r["label"]})
        (out / fname).write_text("".join(json.dumps(r) + "\n" for r in keep))
    (out / "SOURCE.md").write_text(
        f"Subset of {spec['source']} (../shared/data/{spec['source']}): labels = sorted labels[::{spec['step']}]"
        f"[:{spec['n_labels']}], the first {spec['train_per_class']} train and {spec['val_per_class']} validation "
        "rows of each in file order. Written by bench/make_diagnose_corpus.py.\n")
    return out


def train_one(name: str, force: bool) -> dict:
    induced, subset, overrides = RUNS[name]
    dest = FIXTURES / name
    if dest.exists() and not force:
        return {"name": name, "skipped": True}
    data = build_subset(subset)
    out = WORK / name
    if out.exists():
        shutil.rmtree(out)
    args = [sys.executable, "-m", "loratune.cli", "train", "--quiet", f"dataset_name={data.relative_to(ROOT)}",
            f"output_dir={out}", *COMMON, *overrides]
    t0 = time.time()
    proc = subprocess.run(args, cwd=ROOT, capture_output=True, text=True)
    wall = time.time() - t0
    if not (out / "history.jsonl").exists():
        print(proc.stdout[-2000:], proc.stderr[-4000:], file=sys.stderr)
        raise SystemExit(f"{name}: training produced no history (exit {proc.returncode})")
    dest.mkdir(parents=True, exist_ok=True)
    for f in ("history.jsonl", "run.json", "config.yaml"):
        if (out / f).exists():
            shutil.copy2(out / f, dest / f)
    manifest_path = FIXTURES / "manifest.json"
    manifest = json.loads(manifest_path.read_text()) if manifest_path.exists() else {}
    manifest[name] = {"induced": induced, "subset": subset, "overrides": COMMON + overrides,
                      "exit_code": proc.returncode, "wall_s": round(wall, 1)}
    manifest_path.write_text(json.dumps(dict(sorted(manifest.items())), indent=2) + "\n")
    return {"name": name, "induced": induced, "exit": proc.returncode, "wall_s": round(wall, 1)}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--only", help="comma-separated run names")
    ap.add_argument("--force", action="store_true", help="retrain runs already in the fixtures")
    ap.add_argument("--list", action="store_true")
    args = ap.parse_args(argv)
    names = args.only.split(",") if args.only else list(RUNS)
    if args.list:
        for n in names:
            print(n, RUNS[n][0], RUNS[n][1], " ".join(RUNS[n][2]))
        return 0
    unknown = [n for n in names if n not in RUNS]
    if unknown:
        raise SystemExit(f"unknown runs: {unknown}; see --list")
    for n in names:
        res = train_one(n, args.force)
        print(json.dumps(res), flush=True)
        if not res.get("skipped"):
            from loratune.diagnose import diagnose

            print(f"  -> {n}: diagnosed {diagnose(FIXTURES / n).verdict}", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
