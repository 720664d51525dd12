"""bench/train_full_banking77.py's rendering (render) from a recorded result: the versions and the recorded config
stated, today's default keys it lacks computed. No training."""

from __future__ import annotations

import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT / "bench"))

import train_full_banking77 as bt  # noqa: E402


def result(config: dict, **extra) -> dict:
    return {"config": config, "rows": {"train": 90, "val": 10}, "steps": 30, "examples_seen": 960, "best_step": 30,
            "val_macro_f1": 0.5, "test_accuracy": 0.61, "test_macro_f1": 0.6, "train_wall_s": 12.0,
            "train_examples_per_s": 80.0, "peak_memory_mb": 900.0, "threads": 2,
            "params": {"trainable": 10, "total": 1000, "share_of_total": 0.01},
            "versions": {"loratune": "0.1.0", "torch": "2.9.0"}, **extra}


def test_render_states_versions_and_the_keys_the_recorded_config_lacks():
    """The md said 'default start config' for a config that predates precision, pooled_last_block, ..."""
    recorded = {"data": {"dataset_name": "/d"}, "train": {"output_dir": "/o", "learning_rate": 0.002, "seed": 42}}
    today = {"data": {"dataset_name": "x"}, "train": {"output_dir": "y", "learning_rate": 0.001, "seed": 42,
                                                      "precision": "auto", "pooled_last_block": "auto"}}
    md = "\n".join(bt.render(result(recorded, argv=["/d"], test_rows=50), today))
    assert "default start config" not in md
    assert "Ran under loratune 0.1.0, torch 2.9.0 (the JSON's `versions`)." in md
    assert ("it lacks today's default keys train.precision, train.pooled_last_block; its values differ from "
            "today's defaults for train.learning_rate 0.002 (today 0.001).") in md
    assert "Command: `python bench/train_full_banking77.py /d`" in md
    assert "| train / val / test rows | 90 / 10 / 50 |" in md and "| **test macro-F1** | **0.6000** |" in md


def test_render_without_a_recorded_command_says_so():
    recorded = {"data": {"dataset_name": "/d"}, "train": {"seed": 42}}
    md = "\n".join(bt.render(result(recorded), {"data": {"dataset_name": "x"}, "train": {"seed": 42}}))
    assert "Command not recorded in the JSON; its config's dataset_name: `/d`" in md
    assert "it has every key of today's defaults." in md
    assert "/ not recorded |" in md


def test_render_claims_no_shared_box_and_reads_right_without_versions():
    """Every md said 'on a shared box; other jobs ran beside this one' (nothing records it), and a JSON without
    `versions` gave 'Ran under not recorded (the JSON's `versions`).'"""
    r = result({"data": {"dataset_name": "/d"}})
    del r["versions"]
    md = "\n".join(bt.render(r, {"data": {"dataset_name": "x"}}))
    assert "Ran under not recorded" not in md
    assert "The versions it ran under are not recorded (the JSON has no `versions`)." in md
    assert "shared box" not in md and "other jobs ran beside this one" not in md
    assert "The machine: 2 torch threads; whether other jobs shared it is not recorded" in md
