"""LoRA or full fine-tuning: a pure decision with the reasons of protocol section 6 (no torch).

The inputs are measured numbers: val macro-F1, trainable parameters, mean optimizer-step time and peak
memory of LoRA at the chosen rank, of LoRA at the highest rank tried and of a short full-fine-tuning
probe on the same data and budget, plus the rank sweep's plateau and the noise level. Every reason of
protocol 6 is evaluated and reported (holds / does not hold / unknown, with its numbers):

- `param-share`: LoRA's trainable parameters reach a significant share of the model (>= 10%) or of the
  adapted weights (>= 20%) at the highest rank tried;
- `rank-plateau`: the rank sweep plateaued and the target (when one was given) is not met by the best
  full-length LoRA run of the study (a long run included);
- `cost-parity`: high-rank LoRA's measured step time or peak memory is close to full fine-tuning's
  (>= 80%), or the highest rank tried reached the compute-breakeven rank;
- `performance-gap`: the full-fine-tuning probe beats LoRA by more than the noise;
- `new-knowledge`: the task needs new knowledge rather than new behaviour (not measurable from a
  classification curve: reported as unknown).

The choice: full fine-tuning when the probe beats LoRA beyond noise (the evidence the protocol asks
for); otherwise LoRA, naming which considerations held (they make full fine-tuning worth probing
longer, not worth choosing on their own).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field

from loratune.objectives import DEFAULT, Objective, beyond_noise


def method_name(method: str = "lora", use_dora: bool = False, optimizer: str = "adamw") -> str:
    """What trained, as labels name it: "full fine-tuning", or LoRA with its variants ("DoRA", "LoRA+", "DoRA +
    LoRA+"): a DoRA or LoRA+ trial labelled "LoRA r=8" read as plain LoRA."""
    if method == "full":
        return "full fine-tuning"
    parts = (["DoRA"] if use_dora else []) + (["LoRA+"] if optimizer == "loraplus" else [])
    return " + ".join(parts) or "LoRA"


@dataclass(frozen=True)
class CostPoint:
    """One measured configuration."""

    label: str  # "LoRA r=8 (best at the probe, #3)", "LoRA r=32 (highest rank tried)", "full fine-tuning"
    method: str  # lora | full
    r: int | None
    score: float | None  # the objective's score (larger is better: minus a loss); its value: Objective.value
    trainable: int | None = None  # trainable parameters (adapter + head for LoRA)
    adapter: int | None = None  # LoRA parameters only
    total: int | None = None  # parameters of the whole model
    adapted_weights: int | None = None  # parameters of the adapted linear weights
    mean_step_s: float | None = None
    peak_memory_mb: float | None = None
    examples: int | None = None
    trial: int | None = None
    # the trials mean_step_s and peak_memory_mb were measured on (tune: the least over trials of this one's shape,
    # not necessarily `trial`), and what the memory is: "above-start" (the trial's peak above the process's memory as
    # it started) or "process-peak" (the process's running peak)
    step_trial: int | None = None
    memory_trial: int | None = None
    memory_kind: str = "process-peak"

    @property
    def share_total(self) -> float | None:
        n = self.adapter if self.method == "lora" else self.trainable
        return n / self.total if n is not None and self.total else None

    @property
    def share_adapted(self) -> float | None:
        if self.method != "lora":
            return None
        return self.adapter / self.adapted_weights if self.adapter is not None and self.adapted_weights else None

    @classmethod
    def from_run(cls, label: str, method: str, r: int | None, score: float | None, params: dict,
                 mean_step_s: float | None, peak_memory_mb: float | None, examples: int | None = None,
                 trial: int | None = None, *, step_trial: int | None = None, memory_trial: int | None = None,
                 memory_kind: str = "process-peak") -> "CostPoint":
        return cls(label, method, r, score, params.get("trainable"), params.get("adapter"),
                   params.get("total"), params.get("adapted_weights"), mean_step_s, peak_memory_mb, examples, trial,
                   step_trial if step_trial is not None else trial, memory_trial if memory_trial is not None else trial,
                   memory_kind)


@dataclass(frozen=True)
class DecideThresholds:
    share_total: float = field(default=0.10, metadata={"doc": "protocol 6: LoRA's trainable parameters at or above "
                                                               "this share of the whole model (10-20%) favour full "
                                                               "fine-tuning (param-share)"})
    share_adapted: float = field(default=0.20, metadata={"doc": "...or at or above this share of the weights it "
                                                                 "adapts (param-share)"})
    cost_parity: float = field(default=0.80, metadata={"doc": "protocol 6: LoRA's step time or peak memory at or "
                                                               "above this share of full fine-tuning's: it no longer "
                                                               "saves what it is for (cost-parity)"})
    memory_floor_mb: float = field(default=64.0, metadata={"doc": "a trial's memory (its growth above the process's "
                                                                   "memory at its start) under this many MB is the "
                                                                   "allocator's noise, not the method's cost: no "
                                                                   "memory ratio is read from it (cost-parity)"})


def lora_vs_full_catalog(thresholds: DecideThresholds | None = None) -> list[dict]:
    """Protocol 6's numbers as `loratune rules` shows them: the LoRA-vs-full thresholds, the breakeven rank and the
    noise band a rank step or a LoRA-vs-full gap must clear (each defined once, where the code reads it)."""
    from dataclasses import fields

    from loratune.objectives import SCORE_FLOOR
    from loratune.params import BREAKEVEN_SHARE

    t = thresholds or DecideThresholds()  # a --thresholds file's values (the default column keeps the table's)
    rows = [{"name": f.name, "value": getattr(t, f.name), "default": f.default, "overridable": True,
             "doc": f.metadata["doc"]} for f in fields(DecideThresholds)]
    # these two are read where they are defined (params, objectives), not from DecideThresholds: shown, fixed
    rows.append({"name": "breakeven_share", "value": BREAKEVEN_SHARE, "default": BREAKEVEN_SHARE, "overridable": False,
                 "doc": "the breakeven rank: where LoRA's parameters reach this share of the weights they adapt; "
                        "the rank sweep stops there, and past it full fine-tuning is the cheaper way to that "
                        "capacity (params.BREAKEVEN_SHARE)"})
    rows.append({"name": "noise_floor", "value": SCORE_FLOOR, "default": SCORE_FLOOR, "overridable": False,
                 "doc": "protocol 6's noise band (objectives.NOISE_BAND): a gain (a rank step, LoRA against full, "
                        "a knob effect in `diagnose` of several runs) counts only above max(this, 2 x sigma), sigma "
                        "the seed std once seeds ran, else the val metric's binomial SE (assess: its val "
                        "resolution); a loss objective: its own floor"})
    return rows


@dataclass(frozen=True)
class DecideInputs:
    chosen: CostPoint  # LoRA at the chosen rank
    highest: CostPoint | None  # LoRA at the highest rank tried (may be the chosen one)
    full: CostPoint | None  # the full-fine-tuning probe (None: not run)
    noise: float  # differences below this are noise (points of val macro-F1)
    noise_source: str = ""
    plateau: bool | None = None  # the rank sweep plateaued
    plateau_detail: str = ""
    target: float | None = None  # the objective's value the user needs, when given (a loss: at most this)
    breakeven_r: int | None = None  # rank where LoRA reaches a third of the adapted weights
    # what the values are (CostPoint.score holds the objective's score, larger is better: minus a loss)
    objective: Objective = DEFAULT
    # the best full-length LoRA run of the study (a long run of the pick can beat the chosen rank's short trial):
    # what the target is judged against (rank-plateau); None: the chosen point's value
    best_lora: float | None = None
    best_lora_label: str = ""
    # the full-fine-tuning probe ran and failed (what happened, e.g. "the full-fine-tuning probe #15 full failed");
    # "": it succeeded or was not run
    full_failed: str = ""


@dataclass(frozen=True)
class Reason:
    id: str
    holds: bool | None  # None: unknown (not measured)
    text: str
    evidence: dict = field(default_factory=dict)


@dataclass(frozen=True)
class LoraVsFull:
    choice: str  # lora | full
    summary: str
    reasons: tuple[Reason, ...]
    table: tuple[dict, ...]

    def to_dict(self) -> dict:
        return {"choice": self.choice, "summary": self.summary, "reasons": [asdict(r) for r in self.reasons],
                "table": list(self.table)}


def _ratio(a: float | None, b: float | None) -> float | None:
    return a / b if a is not None and b else None


def _memory_ratio(a: float | None, b: float | None, t: DecideThresholds) -> float | None:
    """a's peak memory over b's, None when either is under the floor (the allocator's noise, not the method's cost:
    19 MB against 1 MB read as LoRA needing 1,500% of full fine-tuning's memory). cost-parity and the cost table
    both read it, so the table shows no ratio the reason did not compare."""
    return None if _under_memory_floor(a, b, t) else _ratio(a, b)


def _under_memory_floor(a: float | None, b: float | None, t: DecideThresholds) -> bool:
    return any(m is not None and m < t.memory_floor_mb for m in (a, b))


def _pct(x: float | None) -> str:
    return "?" if x is None else f"{x:.1%}"


def param_share(inp: DecideInputs, t: DecideThresholds) -> Reason:
    p = inp.highest or inp.chosen
    st, sa = p.share_total, p.share_adapted
    if st is None and sa is None:
        return Reason("param-share", None, "parameter counts unknown")
    holds = (st is not None and st >= t.share_total) or (sa is not None and sa >= t.share_adapted)
    text = (f"{p.label}: LoRA parameters are {_pct(st)} of the model (threshold {t.share_total:.0%}) and "
            f"{_pct(sa)} of the adapted weights (threshold {t.share_adapted:.0%})")
    return Reason("param-share", holds, text, {"share_total": st, "share_adapted": sa, "r": p.r,
                                               "threshold_total": t.share_total,
                                               "threshold_adapted": t.share_adapted})


def rank_plateau(inp: DecideInputs) -> Reason:
    if inp.plateau is None:
        return Reason("rank-plateau", None, "no rank sweep to judge a plateau" +
                      (f" ({inp.plateau_detail})" if inp.plateau_detail else ""))
    # the target asks whether LoRA reaches it at all: the best LoRA run, not the chosen rank's short trial
    best, label = ((inp.best_lora, inp.best_lora_label) if inp.best_lora is not None
                   else (inp.chosen.score, inp.chosen.label))
    if not inp.plateau:
        return Reason("rank-plateau", False, f"the rank sweep had not plateaued: {inp.plateau_detail}",
                      {"target": inp.target})
    if inp.target is None:
        return Reason("rank-plateau", None, f"the rank sweep plateaued ({inp.plateau_detail}); no target was "
                      "given, so whether it is met is unknown (pass --target)", {"target": None})
    unmet = best is None or best < inp.objective.score(inp.target)
    return Reason("rank-plateau", unmet, f"the rank sweep plateaued ({inp.plateau_detail}); best LoRA run "
                  f"({label}) {inp.objective.show(best)} vs target {inp.target:.3f}: "
                  f"{'not met' if unmet else 'met'}", {"target": inp.target, "best": inp.objective.value(best),
                                                       "best_label": label})


def cost_parity(inp: DecideInputs, t: DecideThresholds) -> Reason:
    hi, full = inp.highest or inp.chosen, inp.full
    past_breakeven = inp.breakeven_r is not None and hi.r is not None and hi.r >= inp.breakeven_r
    be = (f"; compute-breakeven rank {inp.breakeven_r} (LoRA = a third of the adapted weights), highest rank "
          f"tried {hi.r}" if inp.breakeven_r else "")
    if full is None:
        return Reason("cost-parity", True if past_breakeven else None,
                      "no full-fine-tuning probe: step time and memory not compared" + be,
                      {"breakeven_r": inp.breakeven_r, "highest_r": hi.r})
    small = _under_memory_floor(hi.peak_memory_mb, full.peak_memory_mb, t)
    st = _ratio(hi.mean_step_s, full.mean_step_s)
    mem = None if small else _ratio(hi.peak_memory_mb, full.peak_memory_mb)  # (the table's _memory_ratio, once)
    if st is None and mem is None and not past_breakeven:
        return Reason("cost-parity", None, "step time and memory not measured" + be)
    holds = past_breakeven or (st is not None and st >= t.cost_parity) or (mem is not None and mem >= t.cost_parity)
    memory = (f"memory {hi.peak_memory_mb or float('nan'):.0f} MB vs {full.peak_memory_mb or float('nan'):.0f} MB "
              + (f"(under {t.memory_floor_mb:.0f} MB: allocator noise, not compared)" if small else f"({_pct(mem)})"))
    text = (f"{hi.label}: step {hi.mean_step_s or float('nan'):.3f}s vs {full.mean_step_s or float('nan'):.3f}s for "
            f"full fine-tuning ({_pct(st)}), {memory}; parity threshold {t.cost_parity:.0%}" + be)
    return Reason("cost-parity", holds, text, {"step_time_ratio": st, "memory_ratio": mem,
                                               "breakeven_r": inp.breakeven_r, "highest_r": hi.r,
                                               "threshold": t.cost_parity})


def performance_gap(inp: DecideInputs) -> Reason:
    full, lora = inp.full, inp.chosen
    if full is None or full.score is None or lora.score is None:
        return Reason("performance-gap", None, inp.full_failed or "no full-fine-tuning probe result to compare",
                      {"probe": "failed" if inp.full_failed else "not-run"})
    gap = full.score - lora.score
    holds = beyond_noise(gap, inp.noise)  # the one comparison (objectives.beyond_noise): only above the band
    if holds is None:
        verdict = "not comparable (a score or the noise is missing or not a number)"
    elif holds:
        verdict = "full fine-tuning is better beyond noise"
    elif beyond_noise(-gap, inp.noise):
        verdict = "LoRA is better beyond noise"
    else:
        verdict = "the difference is within noise"
    text = (f"full-fine-tuning probe {inp.objective.show(full.score)} vs LoRA "
            f"{inp.objective.fmt(lora.score)}: "
            f"gap {gap:+.3f}, noise {'unknown' if inp.noise is None else f'{inp.noise:.3f}'} "
            f"({inp.noise_source or 'noise'}): {verdict}")
    return Reason("performance-gap", holds, text, {"gap": gap, "noise": inp.noise, "full": full.score,
                                                   "lora": lora.score})


def new_knowledge(inp: DecideInputs) -> Reason:
    """Protocol 6's last reason, listed so the table is complete; nothing measures it."""
    return Reason("new-knowledge", None, "not assessed: whether the task needs new knowledge (code, math, deep "
                  "domain shift) rather than new behaviour is not visible in training curves")


def cost_table(inp: DecideInputs, t: DecideThresholds = DecideThresholds()) -> tuple[dict, ...]:
    rows = []
    points = [inp.chosen] + [p for p in (inp.highest, inp.full) if p is not None and p is not inp.chosen]
    full = inp.full
    for p in points:
        rows.append({"label": p.label, "method": p.method, "r": p.r, "trial": p.trial,
                     # named by the objective (it held subset accuracy under the key val_macro_f1)
                     "objective": inp.objective.key, "objective_value": inp.objective.value(p.score),
                     "trainable": p.trainable, "adapter": p.adapter,
                     "share_total": p.share_total, "share_adapted": p.share_adapted,
                     "mean_step_s": p.mean_step_s, "peak_memory_mb": p.peak_memory_mb, "examples": p.examples,
                     "step_trial": p.step_trial, "memory_trial": p.memory_trial, "memory_kind": p.memory_kind,
                     "step_time_vs_full": _ratio(p.mean_step_s, full.mean_step_s) if full else None,
                     "memory_vs_full": _memory_ratio(p.peak_memory_mb, full.peak_memory_mb, t) if full else None})
    return tuple(rows)


def decide(inp: DecideInputs, thresholds: DecideThresholds = DecideThresholds()) -> LoraVsFull:
    reasons = (param_share(inp, thresholds), rank_plateau(inp), cost_parity(inp, thresholds),
               performance_gap(inp), new_knowledge(inp))
    by_id = {r.id: r for r in reasons}
    considered = [r.id for r in reasons if r.holds and r.id != "performance-gap"]
    gap = by_id["performance-gap"]
    if gap.holds:
        choice = "full"
        summary = (f"full fine-tuning: {gap.text}" + (f"; also: {', '.join(considered)}" if considered else
                                                         "; no other protocol-6 reason held"))
    else:
        choice = "lora"
        # a probe that scored says what it scored (a NaN score or noise: 'not comparable'); none: why there is none
        why = gap.text if "gap" in gap.evidence else inp.full_failed or "no full-fine-tuning probe was run"
        extra = (f"; full fine-tuning is worth a longer probe because {', '.join(considered)} held" if considered
                 else "; no protocol-6 reason for full fine-tuning held")
        summary = f"LoRA: {why}{extra}"
    return LoraVsFull(choice, summary, reasons, cost_table(inp, thresholds))
