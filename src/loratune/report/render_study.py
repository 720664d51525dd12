"""HTML rendering of a `StudyReport` (the shared pieces and the page template are in html.py)."""

from __future__ import annotations

from loratune.report import charts as ch
from loratune.report.charts import esc
from loratune.report.html import (
    footer,
    badge,
    copy_block,
    duration,
    human,
    legend,
    metric,
    missing,
    page,
    pct,
    section,
    table,
    tile,
    value_text,
)
from loratune.objectives import Objective, beyond_noise, pick_test_score
from loratune.report.study import CUT, StudyReport, TrialView, measured_on, memory_name, trial_count
from loratune.search.stages import TRAIL_PHASES as PHASE_NAMES  # the stage table's names, one place


PHASE_PALETTE = ("c0", "c2", "c3", "c5", "c6", "c4", "c7")  # no orange: orange is validation / the rank sweep


def _phase_classes(s: StudyReport) -> dict[str, str]:
    out: dict[str, str] = {}
    for ph in [t.phase for t in s.trials] + [d.phase for d in s.trail]:
        if ph not in out:
            out[ph] = PHASE_PALETTE[len(out) % len(PHASE_PALETTE)]
    return out


def _trial_link(n: int, s: StudyReport) -> str:
    t = s.trial(n)
    label = f"#{n}" + (f" {t.name}" if t else "")
    return f'<a class="chip" href="#trial-{n}">{esc(label)}</a>' if t else f'<span class="chip">#{n}</span>'


def _point_text(point: dict) -> str:
    return " ".join(f"{k.split('.', 1)[-1]}={value_text(v)}" for k, v in point.items())


# ---------------------------------------------------------------------------------------------


def _test_detail(s: StudyReport) -> str:
    """What the test tile says under its number: the perplexity of a test loss (exp of it) when scored."""
    ppl = s.recommendation.test.get("test/perplexity") if not s.obj.higher_is_better else None
    seen = s.recommendation.test_earlier
    scored = ("scored once, on the pick only" if not seen else
              f"scored {len(seen) + 1} times: also on {', '.join(f'#{n}' for n in seen)}, an earlier session's pick")
    return scored + (f" · perplexity {metric(ppl)}" if isinstance(ppl, (int, float)) else "")


def summary_section(s: StudyReport) -> str:
    o, rec = s.obj, s.recommendation
    best = s.best
    tiles = []
    if rec.missing is None:
        ts = pick_test_score(o.key, rec.test)  # the one rule of what the pick's test score is
        tiles.append(tile("recommended", f"#{rec.trial}", esc(rec.name) + f" · {esc(o.name)} {metric(rec.value)}",
                          "primary", key="recommended"))
        if ts.held_out:
            tiles.append(tile(ts.metric.name, metric(ts.value), _test_detail(s), "ok", key="test"))
        elif ts.metric is not None:  # another metric measured on test (a prompt-set objective: its test loss)
            tiles.append(tile(ts.metric.name, metric(ts.value), esc(f"measured on test, not the objective: {ts.note}"),
                              key="test"))
        else:
            tiles.append(tile(o.on("test").name, metric(None), esc(ts.note or "no test split"), key="test"))
    if best is not None:
        tiles.append(tile(f"best {o.name}", metric(best.value), f"trial #{best.number} {esc(best.name)}",
                          "" if rec.missing is None else "primary", key="best"))
    if s.spent.get("trials") is not None:  # the budget's own count, as the lede says it: a trial cut by a kill (and
        # trained again on --resume) is no trial there, but its examples and time are spent
        cut = sum(1 for t in s.trials if t.status in CUT)
        head, ex, wall = f"{s.spent['trials']} trials", s.spent.get("examples"), s.spent.get("wall_s")
        tail = f" · {cut} cut trial{'s' if cut > 1 else ''} counted in examples and time" if cut else ""
    else:  # an unfinished study: what its trials recorded
        head, tail = trial_count(s.trials), ""
        ex = s.best_vs_compute[-1].examples_cum if s.best_vs_compute else None
        wall = s.best_vs_compute[-1].wall_s_cum if s.best_vs_compute else None
    tiles.append(tile("compute", head, f"{human(ex)} training examples · {duration(wall)}{tail}", key="compute"))
    lf = s.lora_vs_full
    if lf.choice:
        tiles.append(tile("LoRA vs full", esc("full fine-tuning" if lf.choice == "full" else "LoRA"),
                          "decided on measured cost and score", "ok", small=True, key="lora-vs-full"))
    rk = s.rank
    if rk.chosen_r or rk.plateau_r:
        tiles.append(tile("rank", f"r={rk.chosen_r or rk.plateau_r}",
                          (f"plateau at r={rk.plateau_r}" if rk.plateau_r else "no plateau seen")
                          + (f" · breakeven r={rk.breakeven_r}" if rk.breakeven_r else ""), small=True, key="rank"))
    if s.seed_sigma is not None:
        tiles.append(tile("seed noise σ", metric(s.seed_sigma), f"over {len(s.seeds)} seeds", small=True,
                          key="noise"))
    notes = "".join(f'<div class="note">{esc(n)}</div>' for n in s.notes)
    return (f'<section class="card" id="summary"><h2>Summary</h2><p class="lede">{esc(s.budget)}'
            f'{" · " + esc(s.plan) if s.plan else ""}</p><div class="tiles">{"".join(tiles)}</div>{notes}</section>')


def recommendation_section(s: StudyReport) -> str:
    rec = s.recommendation
    if rec.missing and not rec.config_yaml:
        return section("recommendation", "Final recommendation", "", missing(rec.missing))
    parts = []
    if rec.trial is not None:
        test = ", ".join(f"{k.removeprefix('test/')} {metric(v) if isinstance(v, float) else value_text(v)}"
                         for k, v in rec.test.items())
        parts.append(f'<dl class="kv"><dt>trial</dt><dd>{_trial_link(rec.trial, s)}</dd>'
                     f'<dt>{esc(s.obj.name)}</dt><dd><b>{metric(rec.value)}</b></dd>'
                     f'<dt>test</dt><dd>{esc(test) or "not scored"}</dd>'
                     f'<dt>diagnosis of that run</dt><dd><code>{esc(rec.verdict)}</code></dd>'
                     f'<dt>tuned point</dt><dd class="mono">{esc(_point_text(rec.point))}</dd>'
                     + "".join(f"<dt>{esc(k)}</dt><dd><code>{esc(v)}</code></dd>" for k, v in rec.files.items())
                     + "</dl>")
    if rec.missing:
        parts.append(f'<div class="note">{esc(rec.missing)}</div>')
    if s.flat_note:
        parts.append(f'<div class="note">{esc(s.flat_note)}</div>')
    if rec.config_yaml:
        parts.append("<h3>Config (copy it, then <code>loratune train --config tuned.yaml</code>)</h3>"
                     + copy_block("final-config", rec.config_yaml))
    return section("recommendation", "Final recommendation", "The configuration the study settled on, ready to "
                   "use.", "".join(parts))


def trail_section(s: StudyReport, phases: dict[str, str]) -> str:
    if not s.trail:
        return section("trail", "Decision trail", "", missing("no decisions recorded yet"))
    rows = []
    for d in s.trail:
        ev = ""
        if d.evidence:
            ev = '<ul class="examples">' + "".join(f"<li>{esc(e)}</li>" for e in d.evidence[:3]) + "</ul>"
            if len(d.evidence) > 3:
                ev += (f'<details class="more"><summary>{len(d.evidence) - 3} more</summary><ul class="examples">'
                       + "".join(f"<li>{esc(e)}</li>" for e in d.evidence[3:]) + "</ul></details>")
        ph = phases.get(d.phase, "c7")
        trials = " ".join(_trial_link(n, s) for n in d.trials)
        rows.append(f'<div class="trail-row" data-kind="{esc(d.kind)}"><div class="seq">{d.seq}</div>'
                    f'<div><span class="chip" style="color:var(--{ph})">{esc(PHASE_NAMES.get(d.phase, d.phase))}</span>'
                    f'</div><div><div class="dec"><b>{esc(d.verdict)}</b>'
                    + (f' <span class="arrow">→</span> <span class="mv">{esc(d.move)}</span>' if d.move else "")
                    + f"</div>{ev}" + (f'<div class="trials">{trials}</div>' if trials else "") + "</div></div>")
    return section("trail", "Decision trail", "Every decision of the study in order: what was seen, what was "
                   "done, the evidence, and the trials it read (click one for its details).",
                   f'<div class="trail" id="trail-list">{"".join(rows)}</div>')


def compute_section(s: StudyReport, phases: dict[str, str]) -> str:
    o, pts = s.obj, s.best_vs_compute
    if not pts:
        return section("compute", "Best so far vs compute", "", missing("no finished trial yet"))
    figs = []
    for xkey, xlabel, fmt in (("examples_cum", "training examples processed (cumulative)", ch.fmt),
                              ("wall_s_cum", "wall time of the trials (cumulative, s)", ch.fmt)):
        line = [(getattr(p, xkey), p.best_so_far) for p in pts if p.best_so_far is not None]
        dots = [ch.Dot(getattr(p, xkey), p.value, f"s-{phases.get(p.phase, 'c7')}",
                       f"#{p.trial} {p.name} ({p.phase}): {o.name} {metric(p.value)}; after it "
                       f"{p.examples_cum:,} examples, {p.wall_s_cum:.0f} s; best so far {metric(p.best_so_far)}",
                       r=4.5) for p in pts if p.value is not None]
        svg = ch.scatter(dots, width=540, height=270, x_label=xlabel, y_label=o.axis, y_lo=0,
                         lines=[ch.Series("best so far", "s-best", line, step=True)], x_lo=0,
                         aria=f"best so far vs {xlabel}", x_fmt=fmt)
        figs.append(f'<figure data-chart="best-vs-{xkey.split("_")[0]}"><figcaption>vs {esc(xlabel.split(" (")[0])}'
                    f'</figcaption>{svg}</figure>')
    used = [ph for ph in phases if any(p.phase == ph for p in pts)]
    items = [("best", "best so far", "line")] + [(phases[ph], PHASE_NAMES.get(ph, ph), "box") for ph in used]
    return section("compute", "Best so far vs compute", "Each dot is a trial (colour: its phase); the line is the "
                   f"best {esc(o.name)} found so far" + ("" if o.higher_is_better else " (the lowest)") + ".",
                   legend(items) + f'<div class="grid2">{"".join(figs)}</div>')


def rank_band(s: StudyReport) -> tuple[float, float] | None:
    """(lo, hi) of the rank chart's noise band: the gain threshold from the best value towards the worse side (below
    a score, above a loss). Anchored at the sweep's best when there is a sweep: the plateau is judged on its points
    (one lr, one length), and a long run's or another lr's better value would leave the plateau outside its band."""
    o, rk = s.obj, s.rank
    sweep = [p.value for p in rk.points if p.in_sweep]
    ref = sweep if len(sweep) >= 2 else [p.value for p in rk.points]
    if not rk.threshold or not ref:
        return None
    top = max(ref, key=o.score)
    edge = o.value(o.score(top) - rk.threshold)
    return min(top, edge), max(top, edge)


def rank_section(s: StudyReport, phases: dict[str, str]) -> str:
    o, rk = s.obj, s.rank
    title = f"Rank vs {o.name}"
    if not rk.points:
        return section("rank", title, "", missing(rk.missing or "no LoRA trials"))
    best_by_r: dict[int, float] = {}
    best_trial: dict[int, int] = {}
    for p in rk.points:
        if p.r not in best_by_r or o.score(p.value) > o.score(best_by_r[p.r]):
            best_by_r[p.r], best_trial[p.r] = p.value, p.trial
    sweep = sorted((p.r, p.value) for p in rk.points if p.in_sweep)
    # the line joins the sweep (one lr, one scaling rule); other trials at other lrs are only dots. Without a sweep
    # (fewer than 2 of its points) the line is the best per rank, each best ringed: one rank's "line" is one point,
    # which a path never drew (the legend's colour then named a lone in-sweep trial that was not the best)
    is_sweep = len(sweep) >= 2
    line = sweep if is_sweep else sorted(best_by_r.items())
    share = {r: (a, b) for r, a, b in rk.shares}

    def share_text(p) -> str:
        """The trial's own LoRA share; without its counts, the rank's (worded as the rank's, not the trial's)."""
        if p.share:
            return f"; LoRA = {pct(p.share, 2)} of the model"
        return f"; r={p.r}: LoRA ≈ {pct(share[p.r][0], 2)} of the model" if share.get(p.r) and share[p.r][0] else ""

    dots = [ch.Dot(p.r, p.value, "s-val" if p.in_sweep and is_sweep else f"s-{phases.get(p.phase, 'c7')}",
                   f"#{p.trial} r={p.r}{' (rsLoRA)' if p.rslora else ''}, {p.phase}: {o.name} {metric(p.value)}"
                   + share_text(p), r=5 if p.in_sweep and is_sweep else 4) for p in rk.points]
    if not is_sweep:  # the best per rank, ringed in the line's colour (the table's best)
        dots += [ch.Dot(r, v, "s-val ring", f"best {o.name} at r={r}: {metric(v)} (trial #{best_trial[r]})", r=7)
                 for r, v in sorted(best_by_r.items())]
    rs = [p.r for p in rk.points]
    lo, hi = min(rs), max(rs)
    vlines, marks_legend = [], []
    if rk.plateau_r:
        vlines.append(ch.VLine(rk.plateau_r, f"plateau r={rk.plateau_r}", "mark3"))
        marks_legend.append(("good", "plateau (gain below the noise after it)", "mark"))
    if rk.breakeven_r:
        vlines.append(ch.VLine(rk.breakeven_r, f"compute breakeven r={rk.breakeven_r}", "mark2"))
        marks_legend.append(("bad", "compute breakeven (LoRA = 1/3 of the adapted weights)", "mark"))
        hi = max(hi, rk.breakeven_r)
        lo = min(lo, rk.breakeven_r)
    if rk.ceiling_r and rk.ceiling_r != rk.breakeven_r:
        vlines.append(ch.VLine(rk.ceiling_r, f"ceiling r={rk.ceiling_r}", "mark"))
        marks_legend.append(("best", "capacity ceiling (phase 0)", "mark"))
    for r_share, label in rk.share_marks:
        if lo / 2 <= r_share <= hi * 2:
            vlines.append(ch.VLine(r_share, label, "ref"))
            hi, lo = max(hi, r_share), min(lo, r_share)
    bands = []
    band = rank_band(s)
    if band is not None:
        bands.append(ch.Band(*band, f"within the gain threshold {rk.threshold:.3f} of the "
                             + ("sweep's best" if len(sweep) >= 2 else "best")
                             + (f" ({rk.threshold_source})" if rk.threshold_source else ""), "band good"))
    x_lo, x_hi = max(lo / 1.6, 0.5), hi * 1.6
    ticks = [2.0 ** k for k in range(0, 14) if x_lo <= 2 ** k <= x_hi]
    svg = ch.scatter(dots, width=760, height=300, x_label="LoRA rank r (log scale)", y_label=o.axis,
                     log_x=True, x_lo=x_lo, x_hi=x_hi, vlines=vlines, bands=bands, x_ticks=ticks,
                     lines=[ch.Series("best per rank", "s-val", line)], aria=f"rank vs {o.name}",
                     x_fmt=lambda v: f"{v:g}")
    items = [("val", "rank sweep (same lr, rsLoRA)" if is_sweep else f"best {o.name} per rank (ringed)", "line")]
    items += [(c, PHASE_NAMES.get(ph, ph), "box") for ph, c in phases.items()
              if any(p.phase == ph and not (p.in_sweep and is_sweep) for p in rk.points)] + marks_legend
    if bands:
        items.append(("good", "within noise of the best", "box"))
    rows = []
    for r, v in sorted(best_by_r.items()):
        st, sa = share.get(r, (None, None))
        n = sum(1 for p in rk.points if p.r == r)
        flags = " ".join(x for x, ok in (("plateau", rk.plateau_r == r), ("chosen", rk.chosen_r == r)) if ok)
        rows.append([(f"{r}", "num"), (metric(v), "num"), (pct(st, 2), "num"), (pct(sa, 1), "num"), (str(n), "num"),
                     (f'<span class="chip move">{esc(flags)}</span>' if flags else "", "")])
    tbl = table([("r", "num"), (f"best {o.name}", "num"), ("share of model", "num"),
                 ("share of adapted weights", "num"), ("trials", "num"), ("", "")], rows, id_="rank-table")
    facts = [f"scaling rule of the sweep: {rk.rule}" if rk.rule else "",
             (f"gain threshold {rk.threshold:.3f}" + (f" ({rk.threshold_source})" if rk.threshold_source else ""))
             if rk.threshold else "",
             f"sweep stopped: {rk.stopped}" if rk.stopped else "",
             f"shares and share marks: {rk.share_note}" if rk.share_note else "", rk.scope, rk.missing or ""]
    facts_html = "".join(f'<div class="small muted">{esc(f)}</div>' for f in facts if f)
    return section("rank", title, "The best score at each rank tried, with the plateau, the "
                   "compute-breakeven rank and where LoRA's parameters reach a share of the model.",
                   f'{legend(items)}<figure data-chart="rank">{svg}</figure>{facts_html}'
                   f'<div class="grid2" style="margin-top:10px"><div>{tbl}</div></div>')


def pair_section(s: StudyReport) -> str:
    o, pv = s.obj, s.pair
    if pv.missing:
        return section("pair", "Minimal-intervention pair", "", missing(pv.missing))
    bars = []
    for a in pv.arms:
        if a.delta is None:
            continue
        label = f"only {a.knob}: {value_text(a.before)} → {value_text(a.after)}"
        gain = o.score(a.delta)  # a fall of a loss is a gain
        cls = "s-good" if beyond_noise(gain, pv.noise) else (  # the one rule (objectives.beyond_noise)
            "s-bad" if beyond_noise(-gain, pv.noise) else "s-neutral")
        bars.append(ch.Bar(label, a.delta, cls, f"{label} (#{a.trial}): {o.name} {metric(a.value)}, delta "
                           f"{a.delta:+.3f} ± noise {metric(pv.noise)}", err=pv.noise))
    band = (-pv.noise, pv.noise, f"noise ±{pv.noise:.3f} ({pv.noise_source})") if pv.noise else None
    svg = ch.hbar_chart(bars, width=620, row=40, x_label=f"change of {o.axis} from the same start",
                        band=band, aria="pair deltas", x_fmt=lambda v: f"{v:+.2f}" if v else "0", label_width=200)
    facts = [f"from {('#' + str(pv.from_trial)) if pv.from_trial is not None else '?'} at {esc(o.name)} "
             f"{metric(pv.base)}; same budget for both arms",
             f"binding knob: <b>{esc(pv.binding)}</b> ({esc(pv.how)})",
             f"noise: {esc(metric(pv.noise))} ({esc(pv.noise_source)})"
             + (f"; seed σ {metric(pv.seed_sigma)}" if pv.seed_sigma is not None else "")]
    facts += [f"compare: {esc(c)}" for c in pv.compare]
    trials = " ".join(_trial_link(n, s) for n in [pv.from_trial] + [a.trial for a in pv.arms] if n is not None)
    items = [("good", "gain beyond noise", "box"), ("bad", "loss beyond noise", "box"),
             ("neutral", "within noise", "box")]
    return section("pair", "Minimal-intervention pair", "When a slow curve could be lr or capacity, only the lr "
                   "and only the rank were changed from the same start; the error bars and the band are the noise.",
                   f'{legend(items)}<div class="grid2"><figure data-chart="pair">{svg}</figure><div>'
                   + "".join(f"<p class=small>{f}</p>" for f in facts) + f"<p>{trials}</p></div></div>")


def lora_full_section(s: StudyReport) -> str:
    o, lf = s.obj, s.lora_vs_full
    if lf.missing and not lf.reasons:
        return section("lora-vs-full", "LoRA vs full fine-tuning", "", missing(lf.missing))
    parts = []
    if lf.choice:
        parts.append(f'<p><span class="badge {"ok"}">choice: {esc("full fine-tuning" if lf.choice == "full" else "LoRA")}'
                     f'</span> <span class="muted">{esc(lf.summary)}</span></p>')
    if lf.table:
        cols = list(lf.table)
        rows_spec = [("trial", lambda c: _trial_link(c["trial"], s) if c.get("trial") is not None else "–"),
                     (o.name, lambda c: f"<b>{metric(c.get('objective_value'))}</b>"),
                     ("trainable parameters", lambda c: human(c.get("trainable"))),
                     # decide.CostPoint.share_total: LoRA's adapter alone (a run report's share adds the head)
                     ("share of the model (LoRA: adapter only)", lambda c: pct(c.get("share_total"), 2)),
                     ("share of the adapted weights", lambda c: pct(c.get("share_adapted"), 1)),
                     # each number beside the trial that measured it when not the column's own (study.measured_on)
                     ("mean step", lambda c: f"{c['mean_step_s']:.3f} s{measured_on(c, 'step_trial')}"
                      if isinstance(c.get("mean_step_s"), float) else "–"),
                     ("step time vs full", lambda c: pct(c.get("step_time_vs_full"), 0)),
                     (memory_name(cols), lambda c: f"{c['peak_memory_mb']:,.0f} MB{measured_on(c, 'memory_trial')}"
                      if isinstance(c.get("peak_memory_mb"), (int, float)) else "–"),
                     ("memory vs full", lambda c: pct(c.get("memory_vs_full"), 0)),
                     ("training examples", lambda c: human(c.get("examples")))]
        head = "".join(f'<th class="num">{esc(c.get("label", "?"))}</th>' for c in cols)
        body = "".join(f"<tr><td>{esc(name)}</td>" + "".join(f'<td class="num">{fn(c)}</td>' for c in cols) + "</tr>"
                       for name, fn in rows_spec)
        parts.append(f'<div class="scroll-x"><table id="lora-full-table"><thead><tr><th></th>{head}</tr></thead>'
                     f'<tbody>{body}</tbody></table></div>')
        bars_f1 = [ch.Bar(c.get("label", "?"), float(c.get("objective_value") or 0.0),
                          "s-c2" if c.get("method") == "full" else "s-c0",
                          f"{c.get('label')}: {o.name} {metric(c.get('objective_value'))}",
                          err=lf.noise or None) for c in cols]
        bars_t = [ch.Bar(c.get("label", "?"), float(c.get("mean_step_s") or 0.0),
                         "s-c2" if c.get("method") == "full" else "s-c0", f"{c.get('label')}: "
                         f"{c.get('mean_step_s') or 0:.3f} s per step") for c in cols]
        bars_m = [ch.Bar(c.get("label", "?"), float(c.get("peak_memory_mb") or 0.0),
                         "s-c2" if c.get("method") == "full" else "s-c0", f"{c.get('label')}: "
                         f"{c.get('peak_memory_mb') or 0:.0f} MB peak") for c in cols]
        # a larger-is-better objective is a [0, 1] score (objectives.objective); a loss has no top
        figs = [(o.axis + (f" (bars: noise ±{lf.noise:.3f})" if lf.noise else ""),
                 ch.column_chart(bars_f1, height=170, width=330, y_label=o.name,
                                 y_hi=1.0 if o.higher_is_better else None, label_chars=22)),
                ("seconds per optimizer step", ch.column_chart(bars_t, height=170, width=330, y_label="s / step",
                                                               label_chars=22)),
                ("peak memory (MB)", ch.column_chart(bars_m, height=170, width=330, y_label="MB", label_chars=22,
                                                     y_fmt=lambda v: f"{v:,.0f}"))]
        parts.append('<div class="grid2" style="grid-template-columns:repeat(auto-fit,minmax(300px,1fr));'
                     'margin-top:14px">' + "".join(f'<figure data-chart="lvf-{i}"><figcaption>{esc(t)}</figcaption>'
                                                   f'{svg}</figure>' for i, (t, svg) in enumerate(figs)) + "</div>")
    elif lf.missing:
        parts.append(f'<div class="note">{esc(lf.missing)}</div>')
    if lf.reasons:
        items = "".join(f'<li class="{"pass" if h else "fail" if h is False else "unknown"}"><b>{esc(rid)}</b>: '
                        f'{esc(text)}</li>' for rid, h, text in lf.reasons)
        parts.append(f'<h3>The reasons of protocol section 6</h3><div class="finding low" style="border-left-width:1px">'
                     f'<ul class="ev">{items}</ul></div>')
    return section("lora-vs-full", "LoRA vs full fine-tuning", "Side by side on the same data and budget: score, "
                   "parameters, measured step time and peak memory.", "".join(parts))


def file_href(path: str) -> str:
    """A relative file path as an href: percent-encoded (a '#', '?' or '%' in a folder name would end or change the
    URL: `studies/s #1` linked to `studies/s `), then HTML-escaped."""
    from urllib.parse import quote

    return esc(quote(path, safe="/"))


def trial_card(t: TrialView, phases: dict[str, str], o: Objective, link_base: str = "") -> str:
    chart = ""
    if len(t.curve) >= 2 or len(t.loss_curve) >= 2:
        series = [ch.Series(o.name, "s-val", t.curve)] if t.curve else []
        # the card's chart is too short for o.axis: the direction of a loss goes under it
        chart = (ch.line_chart(series, width=360, height=170, x_label="step", y_label=o.name, y_lo=0,
                               y_hi=1 if o.higher_is_better else None, aria=f"trial {t.number} curve")
                 + ("" if o.higher_is_better else f'<div class="small muted">{esc(o.axis)}</div>')) if series else ""
    finds = "".join(
        f'<li><code>{esc(f.get("rule_id"))}</code> {esc(f.get("verdict", ""))}'
        + (f' <span class="chip move">→ {esc(", ".join(f.get("moves") or []))}</span>' if f.get("moves") else "")
        + "".join(f'<div class="small muted">{esc(e)}</div>' for e in (f.get("evidence") or [])[:4]) + "</li>"
        for f in t.findings)
    link = (f'<a href="{file_href(link_base + t.link)}/">{esc(t.link)}</a>' if t.link else
            (f"<code>{esc(t.run_dir)}</code>" if t.run_dir else "–"))
    if t.report_link:
        link += f' · <a href="{file_href(link_base + t.report_link)}">full run report</a>'

    ph = phases.get(t.phase, "c7")
    facts = (f'<dl class="kv"><dt>{esc(o.name)}</dt><dd><b>{metric(t.value)}</b></dd>'
             f'<dt>status</dt><dd>{badge(t.status, "ok" if t.status == "completed" else "warn")} '
             f'<span class="muted small">{esc(t.reason)}</span></dd>'
             f'<dt>diagnosis</dt><dd><code>{esc(t.verdict)}</code></dd>'
             f'<dt>point</dt><dd class="mono">{esc(_point_text(dict(t.point)))}</dd>'
             f'<dt>cost</dt><dd>{human(t.examples)} examples · {duration(t.wall_s)}'
             + (f" · {t.mean_step_s:.3f} s/step" if t.mean_step_s else "")
             + (f" · {t.peak_memory_mb:,.0f} MB" if t.peak_memory_mb else "") + "</dd>"
             + (f"<dt>purpose</dt><dd>{esc(t.purpose)}</dd>" if t.purpose else "")
             + f"<dt>run directory</dt><dd>{link}</dd></dl>")
    return (f'<div class="trial-card" id="trial-{t.number}"><h3>#{t.number} {esc(t.name)} '
            f'<span class="chip" style="color:var(--{ph})">{esc(PHASE_NAMES.get(t.phase, t.phase))}</span></h3>'
            f'<div class="grid2" style="grid-template-columns:minmax(0,1.4fr) minmax(0,1fr)"><div>{facts}'
            + (f'<ul class="examples">{finds}</ul>' if finds else "") + f"</div><div>{chart}</div></div></div>")


def trials_section(s: StudyReport, phases: dict[str, str], link_base: str = "") -> str:
    if not s.trials:
        return section("trials", "Trials", "", missing("no trial has finished yet"))
    rows = []
    bsf = {p.trial: p.best_so_far for p in s.best_vs_compute}
    for t in s.trials:
        rows.append([(f'<a href="#trial-{t.number}">#{t.number}</a>', "num", t.number),
                     (esc(t.name), "", t.name), (esc(PHASE_NAMES.get(t.phase, t.phase)), "", t.phase),
                     (esc(t.status), "", t.status), (metric(t.value), "num", t.value),
                     (metric(bsf.get(t.number)), "num", bsf.get(t.number)),
                     (human(t.examples), "num", t.examples), (duration(t.wall_s), "num", t.wall_s),
                     (f"<code>{esc(t.verdict)}</code>", "", t.verdict)])
    tbl = table([("#", "num"), ("name", ""), ("phase", ""), ("status", ""), (s.obj.name, "num"), ("best so far", "num"),
                 ("examples", "num"), ("wall", "num"), ("diagnosis", "")], rows, cls="sortable", id_="trials-table")
    cards = "".join(trial_card(t, phases, s.obj, link_base) for t in s.trials)
    return section("trials", "Trials", "Every trial is an ordinary run directory; its details follow the table.",
                   tbl + f"<details open><summary>Trial details ({len(s.trials)})</summary>{cards}</details>")


def phase0_section(s: StudyReport) -> str:
    if not s.start_choices and not s.assessment:
        return ""
    rows = "".join(f"<li><code>{esc(k)}</code> {('= <b>' + esc(value_text(v)) + '</b>') if v != '' else ''} "
                   f'<span class="muted">{esc(r)}</span></li>' for k, v, r in s.start_choices)
    findings = "".join(f"<li>{esc(a)}</li>" for a in s.assessment)
    body = (f'<ul class="examples">{rows}</ul>' if rows else "") + (
        f"<details><summary>Data assessment ({len(s.assessment)} findings)</summary>"
        f'<ul class="examples">{findings}</ul></details>' if findings else "")
    return section("phase0", "Phase 0: the start point", "What the assessment chose before any trial, and why.", body)


def render_study(s: StudyReport, link_base: str = "") -> str:
    phases = _phase_classes(s)
    state = badge("finished" if s.finished else "not finished", "ok" if s.finished else "warn")
    meta = [f"strategy {s.strategy}", trial_count(s.trials), s.path]
    if s.thresholds_line:  # the study decided with other thresholds than `loratune rules` lists by default
        meta.append(s.thresholds_line)
    header = (f'<header class="top"><div class="wrap"><div class="kicker">loratune · tuning study report</div>'
              f'<h1>{esc(s.name)} {state}</h1><div class="meta">'
              + "".join(f"<span>{esc(x)}</span>" for x in meta) + "</div></div></header>")
    nav = ('<nav class="toc"><div class="wrap">' + "".join(
        f'<a href="#{i}">{t}</a>' for i, t in (
            ("summary", "Summary"), ("recommendation", "Recommendation"), ("trail", "Decision trail"),
            ("compute", "Best vs compute"), ("rank", "Rank"), ("pair", "Pair"), ("lora-vs-full", "LoRA vs full"),
            ("trials", "Trials"))) + "</div></nav>")
    body = (header + nav + '<main class="wrap">' + summary_section(s) + recommendation_section(s)
            + trail_section(s, phases) + compute_section(s, phases) + rank_section(s, phases) + pair_section(s)
            + lora_full_section(s) + trials_section(s, phases, link_base) + phase0_section(s) + "</main>" + footer(s.path))
    return page(f"{s.name} · loratune study report", "study", body)
