"""One full run of MiniLM + LoRA with the default start config on the whole BANKING77 train split,
scored once on the test split. Writes bench/results/train_banking77_full.{json,md}; the md states the config as
recorded (and the versions it ran under), which may predate today's defaults.

    python bench/train_full_banking77.py [../shared/data/banking77] [key=value ...]
    python bench/train_full_banking77.py --render     # rewrite the md from the JSON, no training
"""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path

from loratune import api
from loratune.config import load_config, to_dict

HERE = Path(__file__).resolve().parent


def _flat(d: dict, prefix: str = "") -> dict:
    out = {}
    for k, v in d.items():
        if isinstance(v, dict):
            out.update(_flat(v, f"{prefix}{k}."))
        else:
            out[f"{prefix}{k}"] = v
    return out


def config_note(recorded: dict, today: dict) -> str:
    """How the recorded config stands to today's defaults: the default keys it lacks (they did not exist when it
    ran), and the keys whose recorded value is not today's default (paths aside)."""
    rec, now = _flat(recorded), _flat(today)
    lacks = [k for k in now if k not in rec]
    differ = [f"{k} {rec[k]!r} (today {now[k]!r})" for k in now
              if k in rec and rec[k] != now[k] and k not in ("data.dataset_name", "train.output_dir")]
    return ("The config is the one recorded in the JSON (`config`), not today's defaults: "
            + (f"it lacks today's default keys {', '.join(lacks)}" if lacks else "it has every key of today's defaults")
            + (f"; its values differ from today's defaults for {', '.join(differ)}" if differ else "") + ".")


def render(result: dict, today: dict) -> list[str]:
    """train_banking77_full.md from its JSON: what the JSON records, with the versions it ran under and how its
    config stands to today's defaults."""
    v = result.get("versions") or {}
    versions = (f"Ran under {', '.join(f'{k} {x}' for k, x in v.items())} (the JSON's `versions`)." if v
                else "The versions it ran under are not recorded (the JSON has no `versions`).")
    argv = result.get("argv")
    command = (f"Command: `python bench/train_full_banking77.py {' '.join(argv)}`" if argv is not None else
               "Command not recorded in the JSON; its config's dataset_name: "
               f"`{result['config']['data']['dataset_name']}`")
    test_n = result.get("test_rows", "not recorded")
    p = result["params"]
    return [
        "# MiniLM + LoRA, the recorded start config, full BANKING77", "",
        command, "",
        f"{versions} {config_note(result['config'], today)}", "",
        "| what | value |", "|---|---|",
        f"| train / val / test rows | {result['rows']['train']} / {result['rows']['val']} / {test_n} |",
        f"| steps, examples processed | {result['steps']}, {result['examples_seen']} |",
        f"| best val macro-F1 (step {result['best_step']}) | {result['val_macro_f1']:.4f} |",
        f"| **test accuracy** | **{result['test_accuracy']:.4f}** |",
        f"| **test macro-F1** | **{result['test_macro_f1']:.4f}** |",
        f"| training wall time (incl. evaluations) | {result['train_wall_s']:.0f} s |",
        f"| training examples/s (optimizer steps only) | {result['train_examples_per_s']:.1f} |",
        f"| peak RSS | {result['peak_memory_mb']:.0f} MB |",
        f"| trainable parameters | {p['trainable']} of {p['total']} ({p['share_of_total']:.2%}) |",
        "", f"The machine: {result.get('threads', 'not recorded how many')} torch threads; whether other jobs shared "
            "it is not recorded (the JSON has no such record), so times may be upper bounds.",
    ]


def write(result: dict) -> None:
    (HERE / "results").mkdir(exist_ok=True)
    md = render(result, to_dict(load_config(None, [])))
    (HERE / "results" / "train_banking77_full.md").write_text("\n".join(md) + "\n")
    print("\n".join(md))


def main() -> None:
    args = sys.argv[1:]
    if args[:1] == ["--render"]:  # rewrite the md from the recorded JSON, no training
        write(json.loads((HERE / "results" / "train_banking77_full.json").read_text()))
        return
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
        "threads": __import__("torch").get_num_threads(), "test_rows": test["test/n"], "argv": sys.argv[1:],
    }
    (HERE / "results").mkdir(exist_ok=True)
    (HERE / "results" / "train_banking77_full.json").write_text(json.dumps(result, indent=2) + "\n")
    write(result)


if __name__ == "__main__":
    main()
