"""Synthetic run histories in the run-record format (docs/run-record.md), for diagnosis tests.

`make_history(...)` takes curve shapes as functions of the run fraction f in [0, 1] and writes one
eval point per `step` with the keys loratune's trainer writes. Per-class keys are optional.
"""

from __future__ import annotations

import math
import random
from typing import Callable

Curve = Callable[[float], float]


def make_history(*, train_loss: Curve | None = None, val_loss: Curve | None = None, val_f1: Curve | None = None,
                 train_f1: Curve | None = None, train_eval_loss: Curve | None = None, n_evals: int = 10,
                 steps_per_eval: int = 20, k: int = 10, val_n: int | None = 1000, loss_std: float | None = 0.05,
                 steps_per_epoch: int = 50, noise: float = 0.0, seed: int = 0, per_class: Callable | None = None,
                 pairs: Callable | None = None, extra: Callable | None = None) -> list[dict]:
    rng = random.Random(seed)
    pts = []
    last = n_evals * steps_per_eval
    for i in range(n_evals + 1):
        step = i * steps_per_eval
        f = step / last
        p: dict = {"step": step, "epoch": step / steps_per_epoch, "examples_seen": step * 16, "lr": 1e-3}
        if i > 0 and train_loss is not None:
            v = train_loss(f) * (1 + noise * rng.uniform(-1, 1))
            p["train/loss"] = v
            p["train/loss_first"] = train_loss((i - 1) / n_evals) if i == 1 else v
            p["train/loss_last"] = v
            if loss_std is not None:
                p["train/loss_std"] = loss_std * v
            p["train/grad_norm"] = 1.0
        if val_loss is not None:
            p["val/loss"] = val_loss(f)
        if val_f1 is not None:
            p["val/macro_f1"] = min(1.0, max(0.0, val_f1(f)))
            p["val/accuracy"] = p["val/macro_f1"]
        if val_n is not None:
            p["val/n"] = val_n
        if train_f1 is not None:
            p["train_eval/macro_f1"] = min(1.0, max(0.0, train_f1(f)))
            p["train_eval/accuracy"] = p["train_eval/macro_f1"]
        if train_eval_loss is not None:
            p["train_eval/loss"] = train_eval_loss(f)
        if per_class is not None:
            p.update(per_class(f))
        if pairs is not None:
            p["val/confused_pairs"] = pairs(f)
        if extra is not None:
            p.update(extra(f, i))
        pts.append(p)
    return pts


def lnk(k: int = 10) -> float:
    return math.log(k)


def decay(start: float, end: float, rate: float) -> Curve:
    """start -> end exponentially: end + (start - end) exp(-rate f)."""
    return lambda f: end + (start - end) * math.exp(-rate * f)


def linear(start: float, end: float) -> Curve:
    return lambda f: start + (end - start) * f


def u_shape(start: float, low: float, at: float, end: float) -> Curve:
    """Falls from start to low at f=at, then rises linearly to end."""
    def g(f: float) -> float:
        if f <= at:
            return start + (low - start) * (f / at) ** 0.5
        return low + (end - low) * (f - at) / (1 - at)
    return g


def hump(start: float, peak: float, at: float, end: float) -> Curve:
    return u_shape(start, peak, at, end)


# ---- named pathologies (k = 10 classes, val_n = 1000 unless stated) ------------------------------

def healthy(**kw) -> list[dict]:
    L = lnk(kw.get("k", 10))
    return make_history(train_loss=decay(L, 0.1 * L, 6), val_loss=decay(L, 0.25 * L, 6),
                        val_f1=decay(0.1, 0.85, 6), train_f1=decay(0.1, 0.92, 6), **kw)


def overfit(**kw) -> list[dict]:
    L = lnk(kw.get("k", 10))
    return make_history(train_loss=decay(L, 0.005, 8), val_loss=u_shape(L, 0.4 * L, 0.3, 0.7 * L),
                        val_f1=hump(0.1, 0.7, 0.3, 0.6), train_f1=decay(0.1, 1.0, 8), **kw)


def underfit(**kw) -> list[dict]:
    L = lnk(kw.get("k", 10))
    return make_history(train_loss=decay(L, 0.7 * L, 12), val_loss=decay(L, 0.72 * L, 12),
                        val_f1=decay(0.1, 0.35, 12), train_f1=decay(0.1, 0.38, 12), **kw)


def lr_too_small(**kw) -> list[dict]:
    L = lnk(kw.get("k", 10))
    return make_history(train_loss=linear(L, 0.95 * L), val_loss=linear(1.01 * L, 0.96 * L),
                        val_f1=linear(0.05, 0.12), train_f1=linear(0.05, 0.13), **kw)


def undertrained(**kw) -> list[dict]:
    L = lnk(kw.get("k", 10))
    return make_history(train_loss=linear(L, 0.35 * L), val_loss=linear(L, 0.45 * L),
                        val_f1=linear(0.1, 0.7), train_f1=linear(0.1, 0.74), **kw)


def collapsed(k: int = 10, **kw) -> list[dict]:
    """lr too large: spikes then a loss pinned near ln(k); every val row predicted as class c0."""
    L = lnk(k)
    labels = [f"c{i}" for i in range(k)]
    n = kw.get("val_n", 1000) or 1000

    def per_class(f: float) -> dict:
        out = {}
        for j, lab in enumerate(labels):
            sup = n // k
            out[f"val/support/{lab}"] = sup
            out[f"val/recall/{lab}"] = 1.0 if (j == 0 and f > 0.1) else (0.1 if f <= 0.1 else 0.0)
            out[f"val/precision/{lab}"] = (sup / n) if (j == 0 and f > 0.1) else (0.1 if f <= 0.1 else 0.0)
        return out

    def tl(f: float) -> float:
        return L * (2.5 if 0.05 < f <= 0.2 else 1.02)

    return make_history(train_loss=tl, val_loss=lambda f: L * (1.0 + 0.4 * math.sin(9 * f) ** 2),
                        val_f1=lambda f: 0.02, train_f1=lambda f: 0.02, per_class=per_class, k=k, **kw)


def oscillating(**kw) -> list[dict]:
    L = lnk(kw.get("k", 10))
    zig = lambda f: 1 if int(round(f * 10)) % 2 else -1  # noqa: E731
    return make_history(train_loss=lambda f: L * (0.5 + 0.25 * zig(f)),
                        val_loss=lambda f: L * (0.6 + 0.2 * zig(f)),
                        val_f1=lambda f: 0.4 - 0.12 * zig(f), train_f1=lambda f: 0.45 - 0.12 * zig(f), **kw)


def diverged(**kw) -> list[dict]:
    L = lnk(kw.get("k", 10))
    pts = make_history(train_loss=decay(L, 0.5 * L, 5), val_loss=decay(L, 0.5 * L, 5),
                       val_f1=decay(0.1, 0.5, 5), train_f1=decay(0.1, 0.5, 5), **kw)
    for p in pts[-3:]:
        p["train/loss"] = None
        p["val/loss"] = None
    return pts
