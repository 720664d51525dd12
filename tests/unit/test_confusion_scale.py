"""Many classes: confusion.json is written one row a line (not one cell a line) and the top confused pairs come from a
partial selection, not a sort of all C^2 cells; both give what the old code gave."""

from __future__ import annotations

import json

import numpy as np
import pytest

from loratune.metrics import TOP_PAIRS, top_confused_pairs
from loratune.report.model import build_confusion
from loratune.store import RunStore


def _slow_pairs(cm, labels, top=TOP_PAIRS):
    """The rule spelled out: off-diagonal counts > 0, largest first, ties in row-major order."""
    n = cm.shape[0]
    cells = sorted(((-int(cm[t, p]), t, p) for t in range(n) for p in range(n) if t != p and cm[t, p] > 0))
    return [{"true": labels[t], "pred": labels[p], "count": -c} for c, t, p in cells[:top]]


@pytest.mark.parametrize("seed", range(30))
def test_top_confused_pairs_equals_the_full_sort(seed):
    rng = np.random.default_rng(seed)
    n = int(rng.integers(1, 40))
    cm = rng.poisson(rng.uniform(0.05, 3), size=(n, n)).astype(np.int64)  # many ties and zeros
    labels = tuple(f"c{i}" for i in range(n))
    for top in (1, 3, TOP_PAIRS, n * n + 5):
        assert top_confused_pairs(cm, labels, top) == _slow_pairs(cm, labels, top)
    assert top_confused_pairs(np.diag(np.arange(1, n + 1)), labels) == []  # all correct: no pairs


def test_confusion_json_is_compact_and_reads_back(tmp_path):
    n = 300
    rng = np.random.default_rng(0)
    cm = rng.integers(0, 50, size=(n, n))
    labels = tuple(f'label "{i}" é' for i in range(n))  # quotes and non-ASCII survive
    RunStore(tmp_path).write_confusion(labels, cm, 40)
    text = (tmp_path / "confusion.json").read_text(encoding="utf-8")
    assert text.count("\n") <= n + 6  # one row a line (indent=2 wrote one cell a line: n*n lines)
    assert len(text) < 4 * n * n + 20 * n  # cells of up to 2 digits plus a comma each, labels
    data = json.loads(text)
    assert data == {"labels": list(labels), "matrix": cm.tolist(), "step": 40}
    view = build_confusion(data, None)
    assert view.missing is None and view.n_classes == n and view.total == int(cm.sum())
    assert view.errors == int(cm.sum() - np.trace(cm))
