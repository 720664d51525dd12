"""`loratune tune task=causal-lm` on the embedded SmolLM2-135M and the shipped instruction demo (issue 16, item 5).

    python bench/sft_tune.py run [--budget 8trials] [--trial-steps 15]    # the study (tens of minutes on 2 cores)
    python bench/sft_tune.py report                                        # bench/results/sft_tune.json

Data: the demo's 118 train and 20 validation rows (src/loratune/demo_data/instructions); test: its 40
prompt-set rows (prompt -> reference) as prompt/completion pairs, which no trial trains or selects on. The
study is an ordinary one in <root>/study (decisions.jsonl, trials/, final/); the results file keeps the trail,
the trials table, the LoRA-vs-full decision and the pick's test scores.
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
DEMO = ROOT / "src" / "loratune" / "demo_data" / "instructions"
OUT = ROOT / "bench" / "results" / "sft_tune.json"


def prepare(root: Path) -> Path:
    data = root / "data"
    data.mkdir(parents=True, exist_ok=True)
    shutil.copy(DEMO / "train.jsonl", data / "train.jsonl")
    shutil.copy(DEMO / "validation.jsonl", data / "validation.jsonl")
    rows = [json.loads(line) for line in (DEMO / "prompt_set.jsonl").read_text(encoding="utf-8").splitlines() if line]
    with open(data / "test.jsonl", "w", encoding="utf-8") as fh:
        for r in rows:
            fh.write(json.dumps({"prompt": r["prompt"], "completion": r["reference"]}, ensure_ascii=False) + "\n")
    return data


def run(root: Path, budget: str, trial_steps: int, extra: list[str]) -> None:
    data = prepare(root)
    study = root / "study"
    shutil.rmtree(study, ignore_errors=True)
    cmd = [sys.executable, "-m", "loratune.cli", "tune", "task=causal-lm", f"dataset_name={data}",
           "max_length=128", "precision=auto", "--study-dir", str(study), "--budget", budget,
           "--trial-steps", str(trial_steps), *extra]
    print(" ".join(cmd), flush=True)
    t0 = time.perf_counter()
    rc = subprocess.call(cmd)
    (root / "meta.json").write_text(json.dumps({"command": cmd, "rc": rc, "wall_s": time.perf_counter() - t0}))
    report(root)


def report(root: Path) -> None:
    s = json.loads((root / "study" / "final" / "study.json").read_text())
    meta = json.loads((root / "meta.json").read_text())
    keep = {k: s.get(k) for k in ("objective", "budget", "start", "plan", "trials", "trail", "lora_vs_full",
                                  "recommendation", "seeds", "rank_vs_metric", "wall_s_session")}
    OUT.write_text(json.dumps({"meta": meta, **keep}, indent=1, default=str) + "\n")
    print(f"wrote {OUT}")
    for t in s["trials"]:
        print(f"#{t['trial']:>2} {t['name']:<22} {t['phase']:<18} {t['status']:<10} "
              f"{t.get('objective_value') if t.get('objective_value') is None else round(t['objective_value'], 4)} "
              f"{t['examples']:>5} ex {t['wall_s']:>6.0f} s  {t['verdict']}")
    rec = s["recommendation"]
    print("pick:", rec["name"], rec.get("objective_value"), rec.get("test"))
    print("lora vs full:", (s.get("lora_vs_full") or {}).get("summary"))


def main(argv=None) -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--root", default="/tmp/sft_tune_bench")
    sub = ap.add_subparsers(dest="cmd", required=True)
    r = sub.add_parser("run")
    r.add_argument("--budget", default="8trials")
    r.add_argument("--trial-steps", type=int, default=15)
    sub.add_parser("report")
    a, extra = ap.parse_known_args(argv)
    root = Path(a.root)
    if a.cmd == "run":
        run(root, a.budget, a.trial_steps, extra)
    else:
        report(root)
    return 0


if __name__ == "__main__":
    sys.exit(main())
