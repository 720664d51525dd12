"""The tuning budget: wall time, trials, or training examples processed (pure; no torch).

`Budget.parse("15m" | "900s" | "1h30m" | "20trials" | "300000ex" | "300kex")` names the limit; a
`Meter` charges what each trial (and each piece of overhead such as the assessment) cost, in all three
units at once, so every strategy (protocol, grid, random, tpe) is held to the same accounting and
the report can plot best-so-far against any of them. The meter never looks at a clock itself:
costs are charged from measured numbers (a trial's wall time and `examples_seen`), so replaying a
resumed study charges exactly what the first session did and takes the same decisions.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass, field

from loratune.errors import UserError

KINDS = ("wall_s", "trials", "examples")
_WALL = re.compile(r"^(?:(\d+(?:\.\d+)?)h)?(?:(\d+(?:\.\d+)?)m(?:in)?)?(?:(\d+(?:\.\d+)?)s)?$")
_COUNT = re.compile(r"^(\d+(?:\.\d+)?)\s*([km]?)\s*(trials?|t|examples?|ex)$")


@dataclass(frozen=True)
class Budget:
    """A limit in one unit: wall seconds, trials, or training examples processed."""

    kind: str  # one of KINDS
    limit: float
    text: str = ""

    @classmethod
    def parse(cls, text: str | int | float) -> "Budget":
        s = str(text).strip().lower().replace(" ", "").replace("_", "")
        if s.startswith("-") or re.match(r"^0+(\.0*)?\D*$", s):
            raise UserError(f"budget '{text}' is {'negative' if s.startswith('-') else 'zero'}: a budget must be "
                            "positive", "give a positive amount: 15m, 20trials or 300000ex")
        m = _COUNT.match(s)
        if m:
            mult = {"": 1, "k": 1_000, "m": 1_000_000}[m.group(2)]
            value = float(m.group(1)) * mult
            kind = "trials" if m.group(3).startswith("t") else "examples"
            if value <= 0 or (kind == "trials" and not value.is_integer()):
                raise _bad(text)
            return cls(kind, value, str(text))
        m = _WALL.match(s)
        if s and m and any(m.groups()):
            h, mi, se = (float(g) if g else 0.0 for g in m.groups())
            seconds = h * 3600 + mi * 60 + se
            if seconds <= 0:
                raise _bad(text)
            return cls("wall_s", seconds, str(text))
        raise _bad(text)

    def describe(self) -> str:
        return format_amount(self.kind, self.limit)

    def to_dict(self) -> dict:
        return {"kind": self.kind, "limit": self.limit, "text": self.text or self.describe()}


def _bad(text) -> UserError:
    return UserError(f"budget '{text}' is not understood",
                     "write a wall time (15m, 900s, 1h30m), a trial count (20trials) or training examples "
                     "processed (300000ex, 300kex)")


def format_amount(kind: str, value: float) -> str:
    if kind == "wall_s":
        value = max(0.0, value)
        m, s = divmod(int(round(value)), 60)
        return f"{m}m{s:02d}s" if m else f"{s}s"
    if kind == "trials":
        return f"{int(value)} trial{'s' if int(value) != 1 else ''}"
    return f"{int(value):,} examples"


@dataclass(frozen=True)
class Cost:
    """What something cost, in every unit the budget can be given in."""

    wall_s: float = 0.0
    examples: int = 0
    trials: int = 0

    def __add__(self, other: "Cost") -> "Cost":
        return Cost(self.wall_s + other.wall_s, self.examples + other.examples, self.trials + other.trials)

    def __mul__(self, n: int) -> "Cost":
        """n of the same (an estimate for one trial -> n trials)."""
        return Cost(self.wall_s * n, self.examples * n, self.trials * n)

    def amount(self, kind: str) -> float:
        return {"wall_s": self.wall_s, "examples": float(self.examples), "trials": float(self.trials)}[kind]

    def to_dict(self) -> dict:
        return {"wall_s": round(self.wall_s, 3), "examples": self.examples, "trials": self.trials}


@dataclass(frozen=True)
class Charge:
    """One ledger line: what was charged, for what, and the total after it."""

    label: str
    cost: Cost
    total: Cost

    def to_dict(self) -> dict:
        return {"label": self.label, "cost": self.cost.to_dict(), "total": self.total.to_dict()}


@dataclass
class Meter:
    """Charges costs against a budget; answers whether the next thing still fits.

    `reserve_s` is wall time kept back for finishing (test scoring, export) when the budget is
    wall time; it is not reserved for other kinds.
    """

    budget: Budget
    reserve_s: float = 0.0
    spent: Cost = field(default_factory=Cost)
    ledger: list[Charge] = field(default_factory=list)

    def charge(self, cost: Cost, label: str) -> Charge:
        self.spent = self.spent + cost
        line = Charge(label, cost, self.spent)
        self.ledger.append(line)
        return line

    @property
    def used(self) -> float:
        return self.spent.amount(self.budget.kind)

    @property
    def left(self) -> float:
        """Budget left in its own unit (wall time net of the finishing reserve)."""
        reserve = self.reserve_s if self.budget.kind == "wall_s" else 0.0
        return self.budget.limit - self.used - reserve

    @property
    def fraction_used(self) -> float:
        return min(1.0, self.used / self.budget.limit) if self.budget.limit else 1.0

    def exhausted(self) -> bool:
        return self.left <= 0 if self.budget.kind != "trials" else self.left < 1

    def fits(self, estimate: Cost, reserve: Cost = Cost()) -> bool:
        """Whether `estimate` fits in what is left after keeping `reserve` back for later stages."""
        need = estimate.amount(self.budget.kind) + reserve.amount(self.budget.kind)
        if self.budget.kind == "trials":
            need = max(need, estimate.trials + reserve.trials)
        return need <= self.left + 1e-9

    def describe_left(self) -> str:
        return f"{format_amount(self.budget.kind, max(0.0, self.left))} left of {self.budget.describe()}"

    def to_dict(self) -> dict:
        return {"budget": self.budget.to_dict(), "reserve_s": self.reserve_s, "spent": self.spent.to_dict(),
                "left": max(0.0, self.left), "ledger": [c.to_dict() for c in self.ledger]}


class CostModel:
    """Estimates a trial's cost from the trials measured so far: seconds per training example per
    method, from whole trials (model load and evaluation included); before any measurement, from a
    prior throughput, and for full fine-tuning before its first trial, LoRA's times a prior ratio."""

    def __init__(self, prior_examples_per_s: float = 100.0, full_over_lora: float = 2.0):
        self.prior = prior_examples_per_s
        self.full_over_lora = full_over_lora
        self.samples: dict[str, list[tuple[float, int]]] = {}  # method -> [(wall_s, examples)]

    def observe(self, method: str, wall_s: float, examples: int) -> None:
        if examples > 0 and wall_s > 0 and math.isfinite(wall_s):
            self.samples.setdefault(method, []).append((wall_s, examples))

    def seconds_per_example(self, method: str) -> float:
        rows = self.samples.get(method)
        if rows:
            return sum(w for w, _ in rows) / sum(e for _, e in rows)
        lora = self.samples.get("lora")
        base = (sum(w for w, _ in lora) / sum(e for _, e in lora)) if lora else 1.0 / self.prior
        return base * (self.full_over_lora if method == "full" else 1.0)

    def estimate(self, examples: int, method: str = "lora") -> Cost:
        return Cost(wall_s=examples * self.seconds_per_example(method), examples=int(examples), trials=1)
