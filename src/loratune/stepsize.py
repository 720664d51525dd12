"""The effective step size of a LoRA update, and the rules that hold it fixed when r or alpha changes.

peft scales the update B·A by s = lora_alpha / r (lora_alpha / sqrt(r) with rsLoRA). With Adam the
parameter step is about lr whatever the gradient's size, so the change of the layer's output per step
is about lr x s: the *effective step size*. A rank sweep that changes r with lora_alpha fixed also
changes s (r 8 -> 32 at alpha 16: s 2 -> 0.5), and then compares learning rates, not ranks (protocol 6:
"Keep the effective step size fixed across the sweep ... Prefer rsLoRA or lr compensation by rule,
and record which").

A rule is a row of `SCALE_RULES`: how a point with a new rank keeps lr x s where it was. Every rule
holds the product; they differ in how the new config is spelled:

- `rslora`: rsLoRA on, lora_alpha = s x sqrt(r); lr kept. The rank-stable spelling: a user who later
  changes r by hand keeps a sensible scale (Kalajdzievski 2023).
- `alpha_follows_r`: lora_alpha = s x r (s x sqrt(r) when rsLoRA is already on); lr kept. peft's plain
  spelling; numerically the same update as `rslora` at the new rank.
- `lr_compensate`: lora_alpha and rsLoRA kept, so s moves; lr x s_old / s_new instead.

Pure (no torch): the diagnosis rules, the move table and the protocol read it.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from enum import Enum
from types import MappingProxyType
from typing import Any, Callable, Mapping

from loratune.config import key_table

LR, R, ALPHA, RSLORA = "train.learning_rate", "adapter.r", "adapter.lora_alpha", "adapter.use_rslora"

_DEFAULTS = {k: key_table()[k].default for k in (LR, R, ALPHA, RSLORA)}


def _round(x: float) -> float:
    """Three significant digits: configs and trial names stay readable (1e-3 x 3 = 0.003, not 0.0030000001)."""
    return float(f"{x:.3g}")


def scale_of(point: Mapping[str, Any]) -> float:
    """The update scale s of a point: lora_alpha / r, or lora_alpha / sqrt(r) with rsLoRA."""
    r = float(point.get(R, _DEFAULTS[R]))
    alpha = float(point.get(ALPHA, _DEFAULTS[ALPHA]))
    return alpha / (math.sqrt(r) if point.get(RSLORA) else r)


# lora_alpha is kept to 3 significant digits (_round), so a scale read back from a point is a little off the one it
# was set to (rsLoRA r=8, alpha 5.66: s 2.0011, and x2 would pass a cap of 4): a scale meets a limit at this many
# decimals
SCALE_DECIMALS = 2


def scale_read(point: Mapping[str, Any]) -> float:
    """scale_of as it is compared with a limit (SCALE_DECIMALS)."""
    return round(scale_of(point), SCALE_DECIMALS)


def alpha_for(r: int, scale: float, rslora: bool = False) -> float:
    """The lora_alpha that gives scale s at rank r."""
    return _round(scale * (math.sqrt(r) if rslora else r))


def scale_formula(rslora: bool = False) -> str:
    """How s is read from lora_alpha, as evidence writes it: 'alpha/r', or 'alpha/sqrt(r)' with rsLoRA."""
    return "alpha/sqrt(r)" if rslora else "alpha/r"


def step_size(point: Mapping[str, Any]) -> float:
    """The effective step size lr x s of a point."""
    return float(point.get(LR, _DEFAULTS[LR])) * scale_of(point)


class ScaleRule(str, Enum):
    RSLORA = "rslora"
    ALPHA_FOLLOWS_R = "alpha_follows_r"
    LR_COMPENSATE = "lr_compensate"


@dataclass(frozen=True)
class ScaleRuleSpec:
    rule: ScaleRule
    code: str  # the decision code the trail records for a change made under this rule
    doc: str
    apply: Callable[[dict, int], dict]  # (point, new rank) -> the point at that rank, lr x s held

    def to_dict(self) -> dict:
        return {"rule": self.rule.value, "code": self.code, "doc": self.doc}


def _rslora(point: dict, r: int) -> dict:
    s = scale_of(point)
    return {**point, R: r, RSLORA: True, ALPHA: alpha_for(r, s, True)}


def _alpha_follows_r(point: dict, r: int) -> dict:
    s = scale_of(point)
    return {**point, R: r, ALPHA: alpha_for(r, s, bool(point.get(RSLORA)))}


def _lr_compensate(point: dict, r: int) -> dict:
    out = {**point, R: r}
    lr = float(point.get(LR, _DEFAULTS[LR]))
    out[LR] = _round(lr * scale_of(point) / scale_of(out))
    return out


_SCALE_RULES = (
    ScaleRuleSpec(ScaleRule.RSLORA, "step-size-held-rslora",
                  "rsLoRA on, lora_alpha = s x sqrt(r): s and lr unchanged", _rslora),
    ScaleRuleSpec(ScaleRule.ALPHA_FOLLOWS_R, "step-size-held-alpha",
                  "lora_alpha follows r (s x r, or s x sqrt(r) with rsLoRA): s and lr unchanged", _alpha_follows_r),
    ScaleRuleSpec(ScaleRule.LR_COMPENSATE, "step-size-held-lr",
                  "lora_alpha kept, so s changes; lr x s_old / s_new holds lr x s", _lr_compensate),
)

SCALE_RULES: Mapping[ScaleRule, ScaleRuleSpec] = MappingProxyType({x.rule: x for x in _SCALE_RULES})


def scale_rule(name: str | ScaleRule) -> ScaleRuleSpec:
    """The row of a rule name; an unknown name raises ValueError naming the known ones."""
    try:
        return SCALE_RULES[ScaleRule(name)]
    except ValueError:
        raise ValueError(f"unknown scale rule {name!r}; known: {', '.join(r.value for r in ScaleRule)}") from None


def with_rank(point: Mapping[str, Any], r: int, rule: str | ScaleRule) -> dict:
    """The point at rank r with its effective step size lr x s held fixed by `rule`."""
    out = scale_rule(rule).apply(dict(point), int(r))
    assert math.isclose(step_size(out), step_size(point), rel_tol=0.01), (point, out)  # 3-digit rounding only
    return out


def describe_change(before: Mapping[str, Any], after: Mapping[str, Any], rule: str | ScaleRule) -> dict:
    """The trail's record of a rank change: the rule, its code, and lr, s and lr x s on both sides."""
    spec = scale_rule(rule)

    def side(p):
        return {"r": int(p.get(R, _DEFAULTS[R])), "lora_alpha": float(p.get(ALPHA, _DEFAULTS[ALPHA])),
                "use_rslora": bool(p.get(RSLORA, False)), "lr": float(p.get(LR, _DEFAULTS[LR])),
                "scale": round(scale_of(p), 4), "lr_x_s": float(f"{step_size(p):.4g}")}

    return {"rule": spec.rule.value, "code": spec.code, "doc": spec.doc, "before": side(before), "after": side(after)}
