"""One full run of MiniLM + LoRA with the default start config on the whole BANKING77 train split,
scored once on the test split. Writes bench/results/train_banking77_full.{json,md}.

    python bench/train_full_banking77.py [../shared/data/banking77] [key=value ...]
"""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path

from loratune import api
from loratune.config import load_config, to_dict

HERE = Path(__file__).resolve().parent


def main() -> None:
    args = sys.argv[1:]
    data = args.pop(0) if args and "=" not in args[0] else str(HERE.parent.parent / "shared" / "data" / "banking77")
    out = HERE.parent / "runs" / "bench-banking77-full"
    cfg = load_config(None, [f"dataset_name={data}", f"output_dir={out}"] + args)
    t0 = time.perf_counter()
    run = api.train(cfg)
    test = api.evaluate(out, "test")
    wall = time.perf_counter() - t0
    result = {
        "config": to_dict(cfg), "status": run["status"], "reason": run["reason"],
        "rows": run["rows"], "steps": run["steps_done"], "examples_seen": run["examples_seen"],
        "best_step": run["best"]["step"], "val_macro_f1": run["best"]["val/macro_f1"],
        "val_accuracy": run["best"]["val/accuracy"],
        "test_accuracy": test["test/accuracy"], "test_macro_f1": test["test/macro_f1"],
        "train_wall_s": run["wall_s"], "total_wall_s": wall, "train_examples_per_s": run["examples_per_s"],
        "peak_memory_mb": run["peak_memory_mb"], "params": run["params"], "versions": run["versions"],
        "threads": __import__("torch").get_num_threads(),
    }
    (HERE / "results").mkdir(exist_ok=True)
    (HERE / "results" / "train_banking77_full.json").write_text(json.dumps(result, indent=2) + "\n")
    md = [
        "# MiniLM + LoRA, default start config, full BANKING77", "",
        f"Command: `python bench/train_full_banking77.py {' '.join(sys.argv[1:])}`", "",
        "| what | value |", "|---|---|",
        f"| train / val / test rows | {run['rows']['train']} / {run['rows']['val']} / {test['test/n']} |",
        f"| steps, examples processed | {run['steps_done']}, {run['examples_seen']} |",
        f"| best val macro-F1 (step {run['best']['step']}) | {run['best']['val/macro_f1']:.4f} |",
        f"| **test accuracy** | **{test['test/accuracy']:.4f}** |",
        f"| **test macro-F1** | **{test['test/macro_f1']:.4f}** |",
        f"| training wall time (incl. evaluations) | {run['wall_s']:.0f} s |",
        f"| training examples/s (optimizer steps only) | {run['examples_per_s']:.1f} |",
        f"| peak RSS | {run['peak_memory_mb']:.0f} MB |",
        f"| trainable parameters | {run['params']['trainable']} of {run['params']['total']} "
        f"({run['params']['share_of_total']:.2%}) |",
        "", "The machine is a shared 2-core box; other jobs ran beside this one, so times are upper bounds.",
    ]
    (HERE / "results" / "train_banking77_full.md").write_text("\n".join(md) + "\n")
    print("\n".join(md))


if __name__ == "__main__":
    main()
