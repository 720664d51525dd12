"""Knob moves as one table: what a diagnosis prescribes and what the tuning protocol does to a config.

A move is a row: a stable id (kebab-case), the text the rule table, findings and reports write ("r x2"),
the knob it turns, its role, and `apply`: the config point (dotted overrides) after the move, or None
where the move does not apply to that point (rank past the ceiling, no FFN to remove, dropout at its
cap). Advice that changes no config ("check data", "more val data") is a row without `apply`, so a
rule can only name moves that exist here (`rules.check_table`), and the protocol applies the same row
a finding names (`loratune.search.protocol` reads `underfit-capacity` / `overfit-capacity` moves from
the rule table and applies them from this one).

A move that changes the rank holds the effective step size lr x s fixed by a `stepsize` rule
(`MoveContext.scale_rule`), so a rank move never doubles as an lr move.

Pure (no torch).
"""

from __future__ import annotations

from dataclasses import dataclass
from types import MappingProxyType
from typing import Any, Callable, Mapping

from loratune.config import key_table, within_limits
from loratune.stepsize import ScaleRule, alpha_for, scale_of, with_rank

LR, R, ALPHA, RSLORA = "train.learning_rate", "adapter.r", "adapter.lora_alpha", "adapter.use_rslora"
TARGETS, LAYERS, DROPOUT, WD = ("adapter.target_modules", "adapter.layers_to_transform", "adapter.lora_dropout",
                                "train.weight_decay")
ROLES = ("capacity", "optimization", "regularization", "budget", "data", "report")

_DEFAULTS = {k: f.default for k, f in key_table().items()}

# lora_dropout: a move up doubles it, from at least 0.1 (a step that can show on a small val set), to at
# most 0.3 (protocol 1: 0-0.5, small data higher; above 0.3 the adapter's input is mostly noise at r <= 16)
DROPOUT_FLOOR, DROPOUT_CAP = 0.1, 0.3
# weight decay against overfitting: AdamW's common strong setting (the config default is 0.01)
WEIGHT_DECAY_UP = 0.1
# the FFN of the top 2 layers: protocol 3's conservative start ("FFN of the top 2-4 layers")
FFN_TOP = "ffn@top:2"


@dataclass(frozen=True)
class MoveContext:
    """What a move needs beyond the point: the rank ceiling (phase 0) and the step-size rule."""

    ceiling_r: int | None = None
    scale_rule: str = ScaleRule.ALPHA_FOLLOWS_R.value


@dataclass(frozen=True)
class Move:
    id: str  # stable kebab-case id (decisions and tests name it)
    text: str  # as the rule table, findings and reports write it
    knob: str | None  # the dotted config key it turns (None: advice about data or measurement)
    role: str  # one of ROLES
    doc: str
    apply: Callable[[dict, MoveContext], dict | None] | None = None  # None: advice only

    @property
    def actionable(self) -> bool:
        return self.apply is not None

    def on(self, point: Mapping[str, Any], ctx: MoveContext = MoveContext()) -> dict | None:
        """The point after the move, or None when it does not apply there."""
        if self.apply is None:
            return None
        return self.apply(dict(point), ctx)

    def to_dict(self) -> dict:
        return {"id": self.id, "text": self.text, "knob": self.knob, "role": self.role, "doc": self.doc,
                "actionable": self.actionable}


def _get(point: Mapping[str, Any], key: str) -> Any:
    return point.get(key, _DEFAULTS[key])


def _targets(point: Mapping[str, Any]) -> list[str]:
    t = _get(point, TARGETS)
    if isinstance(t, str):
        t = [x.strip() for x in t.strip("[]").split(",") if x.strip()]
    return [str(x) for x in t]


def _round(x: float) -> float:
    return float(f"{x:.3g}")


# ------------------------------------------------------------------------------------------ apply


def _r_x2(p: dict, c: MoveContext) -> dict | None:
    r = int(_get(p, R)) * 2
    return with_rank(p, r, c.scale_rule) if c.ceiling_r is None or r <= c.ceiling_r else None


def _r_half(p: dict, c: MoveContext) -> dict | None:
    r = int(_get(p, R))
    return with_rank(p, r // 2, c.scale_rule) if r >= 2 else None


def _add_ffn(p: dict, c: MoveContext) -> dict | None:
    """FFN of the top 2 layers when none is adapted, FFN in every layer when only some are."""
    t = _targets(p)
    if "all-linear" in t:
        return None
    if any(x.startswith("ffn@") for x in t):
        return {**p, TARGETS: [x for x in t if not x.startswith("ffn")] + ["ffn"]}
    if not any(x.startswith("ffn") for x in t):
        return {**p, TARGETS: t + [FFN_TOP]}
    return None


def _add_attn_ko(p: dict, c: MoveContext) -> dict | None:
    t = _targets(p)
    if "all-linear" in t or not ("attn.q" in t and "attn.v" in t) or "attn" in t:
        return None
    return {**p, TARGETS: ["attn"] + [x for x in t if not x.startswith("attn.")]}


def _add_layers(p: dict, c: MoveContext) -> dict | None:
    if "all-linear" in _targets(p) or str(_get(p, LAYERS)) == "all":
        return None
    return {**p, LAYERS: "all"}


def _drop_ffn(p: dict, c: MoveContext) -> dict | None:
    t = _targets(p)
    kept = [x for x in t if not x.startswith("ffn")]
    return {**p, TARGETS: kept} if kept and kept != t else None


def _dropout_up(p: dict, c: MoveContext) -> dict | None:
    d = float(_get(p, DROPOUT))
    return {**p, DROPOUT: min(DROPOUT_CAP, max(DROPOUT_FLOOR, d * 2))} if d < DROPOUT_CAP else None


def _weight_decay_up(p: dict, c: MoveContext) -> dict | None:
    return {**p, WD: WEIGHT_DECAY_UP} if float(_get(p, WD)) < WEIGHT_DECAY_UP else None


def _lr_times(f: float) -> Callable[[dict, MoveContext], dict]:
    """The lr x f, inside the config's lr limits (at the top already, lr x2 keeps it: the point measured)."""
    def apply(p: dict, c: MoveContext) -> dict:
        return {**p, LR: within_limits(LR, _round(float(_get(p, LR)) * f))}
    return apply


def _scale_x2(p: dict, c: MoveContext) -> dict:
    """The update scale s x2 (alpha x2 at the same r): a deliberate change of lr x s, measured against an
    lr x2 step (protocol 4)."""
    return {**p, ALPHA: alpha_for(int(_get(p, R)), scale_of(p) * 2, bool(p.get(RSLORA)))}


def _set(key: str, value: Any) -> Callable[[dict, MoveContext], dict | None]:
    def apply(p: dict, c: MoveContext) -> dict | None:
        return None if _get(p, key) == value else {**p, key: value}
    return apply


def _advice(id: str, text: str, role: str, doc: str, knob: str | None = None) -> Move:
    return Move(id, text, knob, role, doc)


_MOVES = (
    # capacity
    Move("r-x2", "r x2", R, "capacity", "double the rank (lr x s held by the step-size rule)", _r_x2),
    Move("r-half", "r /2", R, "capacity", "halve the rank (lr x s held by the step-size rule)", _r_half),
    Move("add-ffn", "+ffn", TARGETS, "capacity", "adapt the FFN: of the top 2 layers when none is adapted, of "
         "every layer when only some are", _add_ffn),
    Move("add-attn-ko", "+attn.k, attn.o", TARGETS, "capacity", "adapt every attention projection (K and O "
         "beside Q and V)", _add_attn_ko),
    Move("add-layers", "+layers", LAYERS, "capacity", "adapters in every layer", _add_layers),
    Move("drop-ffn", "-ffn", TARGETS, "capacity", "stop adapting the FFN", _drop_ffn),
    # regularization
    Move("dropout-up", "lora_dropout up", DROPOUT, "regularization",
         f"double lora_dropout (at least {DROPOUT_FLOOR:g}, at most {DROPOUT_CAP:g})", _dropout_up),
    Move("weight-decay-up", "weight_decay 0.1", WD, "regularization", "AdamW weight decay 0.1",
         _weight_decay_up),
    # optimization
    Move("lr-x2", "learning_rate x2", LR, "optimization", "double the lr (protocol 4: x2 steps)", _lr_times(2.0)),
    Move("lr-half", "learning_rate /2", LR, "optimization", "halve the lr", _lr_times(0.5)),
    Move("lr-tenth", "learning_rate /10", LR, "optimization", "the lr /10 after a divergence", _lr_times(0.1)),
    Move("scale-x2", "scale x2 (lora_alpha x2)", ALPHA, "optimization", "update scale s x2 at the same rank",
         _scale_x2),
    # arms: other adapter or optimizer variants, each tried at its own lr (ARMS)
    Move("arm-loraplus", "LoRA+", "train.optimizer", "optimization", "LoRA+: the B matrices at lr x "
         "loraplus_lr_ratio (16)", _set("train.optimizer", "loraplus")),
    Move("arm-dora", "DoRA", "adapter.use_dora", "capacity", "DoRA: a trained magnitude beside the low-rank "
         "direction", _set("adapter.use_dora", True)),
    # advice: no config change the protocol makes by itself
    _advice("keep-lr", "keep learning_rate", "optimization", "the best lr lies between the ones tried", LR),
    _advice("epochs-up", "epochs up", "budget", "train longer (the protocol's final training does)",
            "train.num_train_epochs"),
    _advice("keep-capacity", "keep capacity", "capacity", "capacity is adequate"),
    _advice("tune-lr", "phase 2: tune learning_rate", "optimization", "go on to the lr steps of phase 2", LR),
    _advice("keep-alpha", "keep lora_alpha", "optimization", "alpha changes do not move the metric", ALPHA),
    _advice("tune-lr-instead", "tune learning_rate instead", "optimization", "tune the lr, not alpha", LR),
    _advice("check-data", "check data", "data", "look for broken rows, labels, encodings"),
    _advice("inspect-pair-labels", "inspect the pair's labels", "data", "read the rows of a confused pair"),
    _advice("oversample-tail", "oversample tail", "data", "sample rare classes more often"),
    _advice("class-weights", "class weights", "data", "weight the loss by inverse class frequency"),
    _advice("more-tail-data", "more tail data", "data", "collect rows of the rare classes"),
    _advice("more-varied-phrasing", "more varied training phrasing", "data", "paraphrase the training texts"),
    _advice("check-labels", "check labels (loratune assess)", "data", "look for conflicting labels"),
    _advice("relabel-pair", "relabel or merge the pair", "data", "fix or merge classes confused both ways"),
    _advice("more-val-data", "more val data", "data", "a larger val set separates smaller differences"),
    _advice("keep-either", "keep either value", "report", "the knob did not bind: its values score the same (keep the "
            "cheaper where one is cheaper: a lower rank, a shorter run)"),
    _advice("more-seeds", "more seeds", "report", "more seed runs narrow the noise estimate"),
    _advice("report-seed-spread", "report seed spread", "report", "state the seed spread beside the score"),
)

MOVES: Mapping[str, Move] = MappingProxyType({m.id: m for m in _MOVES})
_BY_TEXT: Mapping[str, Move] = MappingProxyType({m.text: m for m in _MOVES})
# the numbers inside the moves, as `loratune rules` lists them beside the move table
MOVE_CONSTANTS = (("dropout_floor", DROPOUT_FLOOR, "lora_dropout up starts from at least this"),
                  ("dropout_cap", DROPOUT_CAP, "lora_dropout up doubles it, to at most this"),
                  ("weight_decay_up", WEIGHT_DECAY_UP, "weight decay up sets it to this (AdamW's common strong "
                                                       "setting; the config default is 0.01)"),
                  ("ffn_top", FFN_TOP, "the FFN target a capacity move adds: the top 2 layers' (protocol 3)"))


def move_catalog() -> list[dict]:
    """Every move as data: id, text, the knob it turns, its role and what it does."""
    return [{"id": m.id, "text": m.text, "knob": m.knob, "role": m.role, "doc": m.doc,
             "changes_config": m.actionable} for m in _MOVES]


@dataclass(frozen=True)
class Arm:
    """A variant the tuner can try instead of plain LoRA (protocol stage `arms`, and the samplers' `adapter.arm`
    knob): the move that turns it on and the lr factors (x the incumbent's lr) it is tried at, best guess first.
    An arm changes the effective step, so it gets its own small lr grid, not the plain-LoRA lr."""

    id: str
    move: str  # a MOVES id
    lr_factors: tuple[float, ...]
    doc: str


ARMS: Mapping[str, Arm] = MappingProxyType({a.id: a for a in (
    # peft's LoRA+ guidance: with B at 16x, "make the learning rate slightly smaller (e.g., by a factor of 2)
    # than typical vanilla LoRA learning rates"; then LoRA's own lr
    Arm("loraplus", "arm-loraplus", (0.5, 1.0), "LoRA+ (Hayou et al. 2024)"),
    # DoRA trains at LoRA's lr in its paper; its magnitude adds a direct scale, so half of it next
    Arm("dora", "arm-dora", (1.0, 0.5), "DoRA (Liu et al. 2024)"),
)})


# A comparison rule's moves point towards the better run of the knob group it reads (protocol 5): the rule lists them
# for a better run at the knob's larger value; at the smaller value each directional move turns into its opposite, and
# a best value between the tried ones holds the knob (the move that keeps what the directional one would turn).
# Moves in neither table (advice) keep their place whatever the direction.
UP, DOWN, HOLD = "up", "down", "hold"
_OPPOSITE = {"r-x2": "r-half", "add-ffn": "drop-ffn", "lr-x2": "lr-half"}
OPPOSITE: Mapping[str, str] = MappingProxyType({**_OPPOSITE, **{b: a for a, b in _OPPOSITE.items()}})
HOLD_MOVE: Mapping[str, str] = MappingProxyType({R: "keep-capacity", TARGETS: "keep-capacity", LR: "keep-lr"})


def towards(moves: tuple[str, ...], direction: str) -> tuple[str, ...]:
    """A rule's moves (ids or texts, written for UP) turned towards `direction` (UP, DOWN or HOLD), as texts, each
    once."""
    out = []
    for name in moves:
        m = move(name)
        if m.id in OPPOSITE and direction == DOWN:
            m = MOVES[OPPOSITE[m.id]]
        elif m.id in OPPOSITE and direction == HOLD:
            m = MOVES[HOLD_MOVE[m.knob]]
        out.append(m.text)
    return tuple(dict.fromkeys(out))


def move(name: str) -> Move:
    """The row of a move id ("r-x2") or text ("r x2"); KeyError naming the move otherwise."""
    found = MOVES.get(name) or _BY_TEXT.get(name)
    if found is None:
        raise KeyError(f"unknown move {name!r}: add a row to loratune.moves.MOVES")
    return found


def adapter_only(name: str) -> bool:
    """Whether a move turns a knob only an adapter has (rank, targets, layers, lora_dropout, alpha, DoRA) or switches
    to an adapter arm (LoRA+): no such knob exists in a full fine-tune (`method: full`)."""
    m = move(name)
    return (m.knob or "").startswith("adapter.") or m.id in {a.move for a in ARMS.values()}


def is_move(name: str) -> bool:
    return name in MOVES or name in _BY_TEXT


def check_moves(moves: tuple[Move, ...] = _MOVES) -> list[str]:
    """Problems with the move table (duplicate ids or texts, unknown roles or knobs); [] when sound."""
    problems = []
    ids, texts = [m.id for m in moves], [m.text for m in moves]
    problems += [f"duplicate move id {x}" for x in sorted({i for i in ids if ids.count(i) > 1})]
    problems += [f"duplicate move text {x!r}" for x in sorted({t for t in texts if texts.count(t) > 1})]
    for m in moves:
        if m.role not in ROLES:
            problems.append(f"{m.id}: unknown role {m.role}")
        if m.knob is not None and m.knob not in _DEFAULTS:
            problems.append(f"{m.id}: unknown knob {m.knob}")
        if m.apply is not None and m.knob is None:
            problems.append(f"{m.id}: a move that changes a config must name its knob")
    known = {m.id: m for m in moves}
    for a, b in OPPOSITE.items():
        if a not in known or b not in known:
            problems.append(f"opposite moves {a} / {b}: not both in the table")
        elif known[a].knob not in HOLD_MOVE or HOLD_MOVE[known[a].knob] not in known:
            problems.append(f"{a}: no move holds its knob {known[a].knob} (HOLD_MOVE)")
    return problems
