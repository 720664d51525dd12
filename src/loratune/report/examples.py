"""Example texts for the top confused pairs: validation rows of the true class that the run's saved
model predicts as the other class. Needs the model (torch), so it is kept apart from the report
model, which only receives the result."""

from __future__ import annotations

from pathlib import Path
from typing import Sequence

from loratune.errors import UserError


def confused_examples(run_dir: str | Path, pairs: Sequence[tuple[str, str]], per_pair: int = 3
                      ) -> tuple[dict[tuple[str, str], list[str]] | None, str | None]:
    """({(true, pred): up to `per_pair` texts}, None), or (None, why not) when the run has no saved
    model, is multi-label, or its data cannot be read. Only the validation rows of the pairs' true
    classes are scored."""
    if not pairs:
        return {}, None
    try:
        from loratune.data import load_dataset
        from loratune.inference import load_trained

        trained = load_trained(run_dir)
        if trained.space.multi_label:
            return None, "multi-label run: confused pairs have no single predicted class"
        dataset = load_dataset(trained.cfg.data, seed=trained.cfg.train.seed)
    except UserError as exc:
        return None, f"example texts unavailable: {exc.problem}"
    except (OSError, ValueError, RuntimeError) as exc:  # a damaged or half-written adapter
        return None, f"example texts unavailable: the saved model could not be loaded ({type(exc).__name__}: {exc})"
    wanted = {t for t, _ in pairs}
    val = dataset.validation
    idx = [i for i, labs in enumerate(val.labels) if labs and labs[0] in wanted]
    out: dict[tuple[str, str], list[str]] = {tuple(p): [] for p in pairs}
    if not idx:
        return out, None
    preds = trained.predict([val.texts[i] for i in idx])
    for i, p in zip(idx, preds):
        key = (val.labels[i][0], p["label"])
        if key in out and len(out[key]) < per_pair:
            out[key].append(val.texts[i])
    return out, None
