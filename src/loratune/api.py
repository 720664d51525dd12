"""The Python API: a few verbs, each reading like a recipe (setup, work, record).

    from loratune import api
    run = api.train(api.load_config("my.yaml", ["r=16"]))
    api.evaluate("runs/latest", split="test")
"""

from __future__ import annotations

from pathlib import Path

from loratune.config import RunConfig, load_config  # noqa: F401  (re-exported)
from loratune.data import Dataset, load_dataset
from loratune.store import RunStore


def prepare(cfg: RunConfig) -> Dataset:
    """Read and check the data (before any model loads)."""
    return load_dataset(cfg.data, seed=cfg.train.seed)


def train(cfg: RunConfig, dataset: Dataset | None = None, *, progress: bool = True) -> dict:
    """Train one run into cfg.train.output_dir; returns its run.json content."""
    from loratune.train import train as _train

    dataset = dataset or prepare(cfg)
    return _train(cfg, dataset, RunStore(cfg.train.output_dir), progress=progress)


def plan(cfg: RunConfig, dataset: Dataset | None = None) -> dict:
    """What a run would do, without training: resolved targets, parameter counts, planned steps."""
    from loratune.adapt import apply_adapter, count_params
    from loratune.models import load_classifier
    from loratune.train import plan_steps

    dataset = dataset or prepare(cfg)
    space = dataset.label_space
    model = load_classifier(cfg.model, len(space), space.multi_label)
    model, sites = apply_adapter(model, cfg.adapter)
    steps, every = plan_steps(cfg, len(dataset.train))
    return {
        "params": count_params(model, sites, cfg.adapter.method).to_dict(),
        "adapted_modules": [s.name for s in sites] if cfg.adapter.method == "lora" else [],
        "steps": steps, "eval_every": every,
        "examples": steps * cfg.train.per_device_train_batch_size * cfg.train.gradient_accumulation_steps,
        "rows": {k: len(v) for k, v in dataset.splits().items()},
        "labels": len(space), "multi_label": space.multi_label, "notes": list(dataset.notes),
    }


def predict(run_dir: str | Path, texts: list[str], top_k: int = 1) -> list[dict]:
    from loratune.inference import load_trained

    return load_trained(run_dir).predict(texts, top_k=top_k)


def evaluate(run_dir: str | Path, split: str = "test") -> dict:
    from loratune.inference import evaluate_run

    return evaluate_run(run_dir, split)
