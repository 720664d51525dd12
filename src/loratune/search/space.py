"""The search space as data: one row per knob, with its role, its range and the grid used for it.

Every strategy reads the same table: the protocol moves along it one knob at a time, grid / random
/ TPE sample it through Optuna, and the report prints it as "what was searched". `default_space`
centres the rows on the start config from phase 0 (the lr grid around the lr centre, ranks up to
the capacity ceiling). The virtual knob `adapter.scale` is the LoRA update scale s (lora_alpha / r,
or lora_alpha / sqrt(r) with rsLoRA); `to_overrides` turns it into `adapter.lora_alpha`.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Mapping

from loratune.config import allowed_value, key_table, within_limits
from loratune.moves import ARMS, LR, MOVES
from loratune.stepsize import alpha_for, scale_of  # noqa: F401 (re-exported: the space's scale knob)

# The RunConfig default of every dotted key: a point holds only what differs from the config, and what
# it leaves out trains with these (config.py is the one place they are written).
DEFAULTS: dict[str, Any] = {k: f.default for k, f in key_table().items()}


@dataclass(frozen=True)
class Dim:
    """One searchable knob."""

    key: str  # dotted config key (or the virtual `adapter.scale`)
    role: str  # capacity | optimization | regularization
    kind: str  # "log" (float, log-uniform between low and high) or "choice"
    choices: tuple[Any, ...]  # the grid; for "log" also the values grid search visits
    low: float | None = None
    high: float | None = None
    doc: str = ""

    def distribution(self):
        import optuna

        if self.kind == "log":
            return optuna.distributions.FloatDistribution(self.low, self.high, log=True)
        return optuna.distributions.CategoricalDistribution(list(self.choices))

    def contains(self, value: Any) -> bool:
        if self.kind == "log":
            return isinstance(value, (int, float)) and self.low <= value <= self.high
        return value in self.choices

    def to_dict(self) -> dict:
        return {"key": self.key, "role": self.role, "kind": self.kind, "choices": list(self.choices),
                "low": self.low, "high": self.high, "doc": self.doc}


@dataclass(frozen=True)
class SearchSpace:
    dims: tuple[Dim, ...]

    def __getitem__(self, key: str) -> Dim:
        for d in self.dims:
            if d.key == key:
                return d
        raise KeyError(key)

    @property
    def keys(self) -> tuple[str, ...]:
        return tuple(d.key for d in self.dims)

    def grid(self) -> dict[str, list[Any]]:
        """The grid Optuna's GridSampler walks (param name = dotted key)."""
        return {d.key: list(d.choices) for d in self.dims}

    def grid_size(self) -> int:
        return math.prod(len(d.choices) for d in self.dims)

    def suggest(self, trial) -> dict[str, Any]:
        """Sample (or read fixed / enqueued) values for every dim through an Optuna trial."""
        out = {}
        for d in self.dims:
            if d.kind == "log":
                out[d.key] = trial.suggest_float(d.key, d.low, d.high, log=True)
            else:
                out[d.key] = trial.suggest_categorical(d.key, list(d.choices))
        return out

    def to_dict(self) -> dict:
        return {"dims": [d.to_dict() for d in self.dims], "grid_size": self.grid_size()}

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> "SearchSpace":
        """The space `to_dict` wrote (a study's record of what it searched)."""
        return cls(tuple(Dim(d["key"], d.get("role", ""), d["kind"], tuple(d.get("choices") or ()), d.get("low"),
                             d.get("high"), d.get("doc", "")) for d in data["dims"]))


def study_space(computed: SearchSpace, recorded: Mapping[str, Any] | None, drawn: Mapping[str, Any]) -> SearchSpace:
    """The space a study searches: the one it recorded when it began (`recorded`: `SearchSpace.to_dict()`, from the
    study's meta or, for a study made before it was kept there, its trail's `space` decision), else `computed` (a new
    study: `default_space` of today's assessment rules), with every knob its trials drew as they drew it (`drawn`:
    dotted key -> the Optuna distribution stored with the study's trials). A resume recomputing the space from today's
    rules drew from another one (adapter.r [2, 4] where the study drew from [2, 4, 8]) and Optuna refused it mid-trial
    ("CategoricalDistribution does not support dynamic value space"). A drawn knob whose distribution no Dim kind
    holds raises ValueError (tune: exit 2 before anything is written)."""
    import optuna

    base = SearchSpace.from_dict(recorded) if recorded and recorded.get("dims") else computed
    dims = []
    for d in base.dims:
        dist = drawn.get(d.key)
        if dist is None:
            dims.append(d)
        elif isinstance(dist, optuna.distributions.CategoricalDistribution):
            dims.append(Dim(d.key, d.role, "choice", tuple(dist.choices), doc=d.doc))
        elif isinstance(dist, optuna.distributions.FloatDistribution) and dist.log:
            dims.append(Dim(d.key, d.role, "log", d.choices if d.kind == "log" else (), dist.low, dist.high, d.doc))
        else:
            raise ValueError(f"{d.key}: the study's trials drew it from {dist}, which this loratune version's search "
                             "space cannot hold")
    return SearchSpace(tuple(dims))



def _round(x: float) -> float:
    return float(f"{x:.3g}")


def lr_grid(centre: float, factors=(0.5, 1.0, 2.0)) -> tuple[float, ...]:
    """The lr at each factor x the centre, each once, inside the config's lr limits (a point past the top
    becomes the top: a study started near it must not draw an lr the config refuses)."""
    return tuple(dict.fromkeys(within_limits(LR, _round(centre * f)) for f in factors))


def _allowed(key: str, choices: tuple) -> tuple:
    """The grid values the config allows for `key` (a virtual knob has no field: all of them)."""
    return tuple(c for c in choices if key not in DEFAULTS or allowed_value(key, c))


# training length for the samplers, as multiples of the planned trial length: the protocol trains its
# pick for up to 8x a trial (`ProtocolSettings.final_max_factor`), so the samplers may draw as much
LENGTH_FACTORS = (1, 2, 4, 8)


def default_space(start: Mapping[str, Any], ceiling_r: int | None = None, trial_steps: int | None = None,
                  arms: tuple[str, ...] = ()) -> SearchSpace:
    """The space around a start config (dotted overrides from phase 0). With `trial_steps` it also holds
    the training length (`train.max_steps`, 1-8x a trial): the protocol decides how long its pick
    trains, so the samplers searching the same space must be able to as well. With `arms` (moves.ARMS ids)
    it holds the virtual knob `adapter.arm` (plain LoRA or one arm), the same arms the protocol tries."""
    lr = float(start.get("train.learning_rate", DEFAULTS["train.learning_rate"]))
    r0 = int(start.get("adapter.r", DEFAULTS["adapter.r"]))
    ceiling = int(ceiling_r or max(32, r0))
    ranks = tuple(r for r in (2, 4, 8, 16, 32, 64, 128, 256) if r <= ceiling) or (r0,)
    targets = _target_choices(start.get("adapter.target_modules"))
    dims = ((
        Dim(LR, "optimization", "log", lr_grid(lr, (0.25, 0.5, 1.0, 2.0, 4.0)),
            low=within_limits(LR, _round(lr / 8)), high=within_limits(LR, _round(lr * 8)),
            doc="peak learning rate; the protocol moves it in x2 steps around the phase-0 centre"),
        Dim("adapter.r", "capacity", "choice", ranks,
            doc="LoRA rank, up to the capacity ceiling from phase 0"),
        Dim("adapter.target_modules", "capacity", "choice", targets,
            doc="semantic target groups, from attention Q/V up to every linear layer"),
        Dim("adapter.scale", "optimization", "choice", (1.0, 2.0, 4.0),
            doc="update scale s = lora_alpha / r (protocol 1: 1-2, rarely 4)"),
        Dim("adapter.lora_dropout", "regularization", "choice", (0.0, 0.05, 0.1, 0.2),
            doc="dropout on the LoRA input"),
        Dim("train.weight_decay", "regularization", "choice", (0.0, 0.01, 0.1),
            doc="AdamW weight decay"),
    ) + ((Dim("train.max_steps", "optimization", "choice", tuple(int(trial_steps * f) for f in LENGTH_FACTORS),
              doc="training length in optimizer steps: 1, 2, 4 or 8x the planned trial (early stopping "
                  "keeps the best evaluation)"),) if trial_steps else ())
        + ((Dim("adapter.arm", "optimization", "choice", ("lora",) + tuple(arms),
                doc="plain LoRA or a variant (LoRA+, DoRA); the drawn lr is relative to the arm's own lr "
                    "centre (its first lr factor in moves.ARMS)"),) if arms else ()))
    # every knob's grid inside the config's own limits (config.py's field definitions): a drawn point is a config
    return SearchSpace(tuple(Dim(d.key, d.role, d.kind, _allowed(d.key, d.choices) or d.choices, d.low, d.high, d.doc)
                             for d in dims))


def _target_choices(start_targets) -> tuple[str, ...]:
    base = ["attn.q,attn.v", "attn.q,attn.v,ffn@top:2", "attn,ffn@top:2", "attn,ffn", "all-linear"]
    if start_targets:
        s = targets_text(start_targets)
        if s not in base:
            base.insert(1, s)
    return tuple(base)


def targets_text(targets) -> str:
    """A target list as one comparable string: [attn.q, attn.v] -> 'attn.q,attn.v'."""
    if isinstance(targets, str):
        return ",".join(t.strip() for t in targets.strip("[]").split(",") if t.strip())
    return ",".join(str(t) for t in targets)


def to_overrides(values: Mapping[str, Any], base: Mapping[str, Any] | None = None) -> dict[str, Any]:
    """Space values -> config overrides (`adapter.scale` becomes `adapter.lora_alpha`; `adapter.arm` turns the
    arm on and moves the lr to the arm's own centre). `base`: the point the overrides go onto (the start point):
    a rank or rsLoRA it sets and the draw does not is what the trial trains with, so the scale is turned into the
    alpha that gives that scale there (stepsize.alpha_for)."""
    out = {k: v for k, v in values.items() if k not in ("adapter.scale", "adapter.arm")}
    arm = values.get("adapter.arm", "lora")
    if arm != "lora":
        spec = ARMS[arm]
        out = MOVES[spec.move].on(out) or out
        if "train.learning_rate" in out:
            out["train.learning_rate"] = _round(float(out["train.learning_rate"]) * spec.lr_factors[0])
    if "adapter.target_modules" in out and isinstance(out["adapter.target_modules"], str):
        out["adapter.target_modules"] = out["adapter.target_modules"].split(",")
    if "adapter.scale" in values:
        at = {**(base or {}), **out}
        r = int(at.get("adapter.r", DEFAULTS["adapter.r"]))
        out["adapter.lora_alpha"] = alpha_for(r, float(values["adapter.scale"]), bool(at.get("adapter.use_rslora")))
    return out
