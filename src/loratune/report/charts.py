"""Inline SVG charts, written in Python: no plotting library, no script, nothing fetched.

Every function takes plain numbers and returns an `<svg>` string. Colours come from CSS classes
(`s-train`, `s-val`, ... defined in templates/report.css), so one series has one colour in every
chart of the report. Hover text is the SVG `<title>` of each mark (the browser's own tooltip).
"""

from __future__ import annotations

import math
from bisect import bisect_left, bisect_right
from dataclasses import dataclass, field
from html import escape
from typing import Callable, Sequence

from loratune.features import safe_mean

PAD = {"l": 52, "r": 14, "t": 12, "b": 38}


def esc(s: object) -> str:
    return escape(str(s), quote=True)


def fmt(v: float | None, digits: int = 3) -> str:
    """Compact number for ticks and tooltips: 12k, 0.85, 3e-4."""
    if v is None or (isinstance(v, float) and not math.isfinite(v)):
        return "–"
    a = abs(v)
    if a == 0:
        return "0"
    if a >= 1e9:  # beyond millions (an exploded loss): scientific, never 1e+32M
        return f"{v:.{max(1, digits - 2)}e}".replace("e+0", "e").replace("e+", "e")
    if a >= 1e6:
        return f"{v / 1e6:.{max(0, digits - 2)}g}M".replace("e+0", "e")
    if a >= 1e4:
        return f"{v / 1e3:.3g}k"
    if a >= 1:
        return f"{v:.{digits + 1}g}" if a < 1000 else f"{v:,.0f}"
    if a >= 1e-3:
        return f"{v:.{digits}g}"
    return f"{v:.1e}".replace("e-0", "e-")


def fmt_exact(v: float) -> str:
    """A step as it is, thousands separated (10,001; 15,000): what a tooltip or a caption names is one point, which
    fmt's compact tick text misnames (a spike at step 10,001 read 'step 10k', a NaN run 15,000-15,009 'from 15k to
    15k'). Ticks keep fmt."""
    if not math.isfinite(v):
        return fmt(v)
    return f"{v:,.0f}" if float(v).is_integer() else f"{v:,.6g}"


def fmt_sci(v: float) -> str:
    """A tick in scientific notation, every significant digit of it and no more (a learning-rate axis: 1.5e-3,
    2.5e-4, 2e-3; 0 as 0): nice_ticks' steps (1, 2, 2.5, 5 x 10^k) need up to 3 digits, so one digit read a 1.5e-3
    tick as "2e-3" beside the real 2e-3 tick."""
    if v == 0 or not math.isfinite(v):
        return fmt(v)
    mantissa, exp = f"{v:.2e}".split("e")
    mantissa = mantissa.rstrip("0").rstrip(".")
    return f"{mantissa}e{int(exp)}"


def tick_texts(ticks: Sequence[float], f: Callable[[float], str]) -> list[str]:
    """An axis's tick labels by `f`, unless two read the same or one reads another number (0, 0.5, 1 as "{:,.0f}"
    read 0, 0, 1; 2.5 read 2): then every tick with the decimals its step needs (0.0, 0.5, 1.0; 0.00, 0.25, 0.50), so
    no two ticks of one axis share a label and none misreads its value."""
    texts = [f(t) for t in ticks]
    steps = [abs(b - a) for a, b in zip(ticks, ticks[1:]) if b != a]
    if not steps:
        return texts
    step = min(steps)

    def misread(text: str, t: float) -> bool:
        try:
            return abs(float(text.replace(",", "")) - t) > step * 1e-3
        except ValueError:  # a compact or scientific label (12k, 3e-4): its own precision
            return False

    if len(set(texts)) == len(texts) and not any(misread(x, t) for x, t in zip(texts, ticks)):
        return texts
    dec = max(0, -math.floor(math.log10(step) + 1e-9))
    while dec < 12 and abs(round(step, dec) - step) > step * 1e-6:  # 2.5 x 10^k needs one decimal more
        dec += 1
    return [f"{t:,.{dec}f}" for t in ticks]


def nice_ticks(lo: float, hi: float, n: int = 5) -> list[float]:
    if hi <= lo:
        hi = lo + (abs(lo) or 1.0)
    raw = (hi - lo) / max(n, 1)
    mag = 10 ** math.floor(math.log10(raw))
    step = next(m * mag for m in (1, 2, 2.5, 5, 10) if m * mag >= raw)
    start = math.ceil(lo / step - 1e-9) * step
    ticks = []
    t = start
    while t <= hi + step * 1e-9:
        ticks.append(round(t, 12))
        t += step
    return ticks


def log_ticks(lo: float, hi: float) -> list[float]:
    out = []
    for e in range(math.floor(math.log10(lo)), math.ceil(math.log10(hi)) + 1):
        for m in (1, 2, 5):
            v = m * 10 ** e
            if lo * 0.999 <= v <= hi * 1.001:
                out.append(v)
    if len(out) > 8:
        out = [v for v in out if f"{v:e}".startswith("1")]
    return out or [lo, hi]


CHAR_PX = 6.2  # about how wide a character of an axis label is drawn (11 px system sans)


def text_width(text: str, px: float = CHAR_PX) -> float:
    """About how wide an axis label is drawn."""
    return len(text) * px


@dataclass
class Scale:
    lo: float
    hi: float
    a: float  # pixel of lo
    b: float  # pixel of hi
    log: bool = False

    def __call__(self, v: float) -> float:
        if self.log:
            lo, hi, v = math.log10(self.lo), math.log10(self.hi), math.log10(max(v, self.lo * 1e-3))
        else:
            lo, hi = self.lo, self.hi
        if hi == lo:
            return (self.a + self.b) / 2
        return self.a + (v - lo) / (hi - lo) * (self.b - self.a)

    def ticks(self, n: int = 5) -> list[float]:
        return log_ticks(self.lo, self.hi) if self.log else nice_ticks(self.lo, self.hi, n)


def _domain(values: Sequence[float], lo: float | None, hi: float | None, log: bool, pad: float = 0.05):
    vals = [v for v in values if v is not None and math.isfinite(v) and (v > 0 or not log)]
    if not vals:
        return (lo if lo is not None else (1 if log else 0)), (hi if hi is not None else (10 if log else 1))
    vmin, vmax = min(vals), max(vals)
    if log:
        return (lo or vmin / 1.3), (hi or vmax * 1.3)
    span = (vmax - vmin) or abs(vmax) or 1.0
    a = lo if lo is not None else vmin - span * pad
    b = hi if hi is not None else vmax + span * pad
    if lo is None and vmin >= 0 and a < 0:
        a = 0.0
    if lo is None and not log:  # start at a nice tick
        t = nice_ticks(a, b)
        a = min(a, t[0]) if t[0] <= vmin else a
    return a, b


@dataclass
class Series:
    label: str
    cls: str  # CSS colour class: s-train, s-train_eval, s-val, s-val2, s-lr, s-best, s-other ...
    points: Sequence[tuple[float, float]]
    dashed: bool = False
    markers: bool = True
    step: bool = False  # draw as a step function (best-so-far)
    titles: Sequence[str] | None = None  # hover text per point
    # steps where the series was logged non-finite (NaN / inf, a run record's null): the line breaks there and a
    # marker at the chart's top edge says so (dropping them drew a diverged run's curve as if it had just stopped)
    nonfinite: Sequence[float] = ()


@dataclass
class VLine:
    x: float
    text: str
    cls: str = "mark"


@dataclass
class Band:
    """A shaded horizontal band (noise) or vertical band (plateau region)."""

    lo: float
    hi: float
    text: str
    cls: str = "band"
    vertical: bool = False


@dataclass
class Frame:
    width: int
    height: int
    x: Scale
    y: Scale
    parts: list[str] = field(default_factory=list)

    @property
    def left(self) -> float:
        return PAD["l"]

    @property
    def right(self) -> float:
        return self.width - PAD["r"]

    @property
    def top(self) -> float:
        return PAD["t"]

    @property
    def bottom(self) -> float:
        return self.height - PAD["b"]


def _frame(width, height, xs, ys, *, x_lo=None, x_hi=None, y_lo=None, y_hi=None, log_x=False, log_y=False,
           x_pad: float = 0.02):
    xl, xh = _domain(xs, x_lo, x_hi, log_x, pad=x_pad)
    yl, yh = _domain(ys, y_lo, y_hi, log_y)
    x = Scale(xl, xh, PAD["l"], width - PAD["r"], log_x)
    y = Scale(yl, yh, height - PAD["b"], PAD["t"], log_y)
    return Frame(width, height, x, y)


def _axes(f: Frame, x_label: str, y_label: str, x_fmt: Callable[[float], str] = fmt,
          y_fmt: Callable[[float], str] = fmt, x_ticks: Sequence[float] | None = None) -> str:
    out = ['<g class="axis">']
    yt = [t for t in f.y.ticks(5) if min(f.y.lo, f.y.hi) - 1e-12 <= t <= max(f.y.lo, f.y.hi) + 1e-12]
    for t, text in zip(yt, tick_texts(yt, y_fmt)):
        y = f.y(t)
        out.append(f'<line class="grid" x1="{f.left:.1f}" x2="{f.right:.1f}" y1="{y:.1f}" y2="{y:.1f}"/>')
        out.append(f'<text x="{f.left - 6:.1f}" y="{y + 3.5:.1f}" text-anchor="end">{esc(text)}</text>')
    xt = [t for t in (x_ticks if x_ticks is not None else f.x.ticks(6)) if f.x.lo - 1e-12 <= t <= f.x.hi + 1e-12]
    for t, text in zip(xt, tick_texts(xt, x_fmt)):
        x = f.x(t)
        # the label stays inside the svg (a tick at the right edge had its "1,020" cut in half)
        tx = min(max(x, text_width(text) / 2 + 2), f.width - text_width(text) / 2 - 2)
        out.append(f'<line class="tick" x1="{x:.1f}" x2="{x:.1f}" y1="{f.bottom:.1f}" y2="{f.bottom + 4:.1f}"/>')
        out.append(f'<text x="{tx:.1f}" y="{f.bottom + 16:.1f}" text-anchor="middle">{esc(text)}</text>')
    out.append(f'<line class="base" x1="{f.left:.1f}" x2="{f.right:.1f}" y1="{f.bottom:.1f}" y2="{f.bottom:.1f}"/>')
    out.append(f'<text class="label" x="{(f.left + f.right) / 2:.1f}" y="{f.height - 4:.1f}" '
               f'text-anchor="middle">{esc(x_label)}</text>')
    cy = (f.top + f.bottom) / 2
    out.append(f'<text class="label" x="12" y="{cy:.1f}" text-anchor="middle" '
               f'transform="rotate(-90 12 {cy:.1f})">{esc(y_label)}</text>')
    out.append("</g>")
    return "".join(out)


def _svg(f: Frame, body: str, aria: str, cls: str = "chart") -> str:
    return (f'<svg class="{cls}" viewBox="0 0 {f.width} {f.height}" width="{f.width}" height="{f.height}" '
            f'role="img" aria-label="{esc(aria)}" xmlns="http://www.w3.org/2000/svg">{body}</svg>')


def _marks(f: Frame, vlines: Sequence[VLine], bands: Sequence[Band]) -> str:
    out = []
    for b in bands:
        if b.vertical:
            x1, x2 = sorted((f.x(max(b.lo, f.x.lo)), f.x(min(b.hi, f.x.hi))))
            out.append(f'<rect class="{b.cls}" x="{x1:.1f}" y="{f.top:.1f}" width="{max(x2 - x1, 1):.1f}" '
                       f'height="{f.bottom - f.top:.1f}"><title>{esc(b.text)}</title></rect>')
        else:
            y1, y2 = sorted((f.y(min(b.hi, f.y.hi)), f.y(max(b.lo, f.y.lo))))
            out.append(f'<rect class="{b.cls}" x="{f.left:.1f}" y="{y1:.1f}" width="{f.right - f.left:.1f}" '
                       f'height="{max(y2 - y1, 1):.1f}"><title>{esc(b.text)}</title></rect>')
    for i, v in enumerate(vlines):
        if not (f.x.lo <= v.x <= f.x.hi):
            continue
        x = f.x(v.x)
        anchor = "end" if x > (f.left + f.right) / 2 else "start"
        dx = -4 if anchor == "end" else 4
        out.append(f'<g class="{v.cls}"><line x1="{x:.1f}" x2="{x:.1f}" y1="{f.top:.1f}" y2="{f.bottom:.1f}"/>'
                   f'<text x="{x + dx:.1f}" y="{f.top + 10 + 12 * i:.1f}" text-anchor="{anchor}">{esc(v.text)}</text>'
                   f'<title>{esc(v.text)}</title></g>')
    return "".join(out)


def _path(coords: Sequence[tuple[float, float]], step: bool = False) -> str:
    if step:  # hold each value until the next point, then jump (best-so-far curves)
        return f"M{coords[0][0]:.1f},{coords[0][1]:.1f}" + "".join(f"H{x:.1f}V{y:.1f}" for x, y in coords[1:])
    return "M" + "L".join(f"{x:.1f},{y:.1f}" for x, y in coords)


# A value more than OFFSCALE_RATIO x the largest first value of a chart's curves, and as many times the last
# in-scale value of its own curve before it, is off-scale: a spike or a jump of a divergence, not learning (a loss
# starts near its highest, a cross-entropy near ln K). Such a point is drawn at the top edge with an off-scale marker,
# its value in the tooltip and a caption under the chart, and sets no axis: one loss of 850 among values of 1-2 (or a
# diverged run's 1.2e6) drew every other point flat on the 0 gridline. A curve that climbs there step by step (a low
# loss that diverges, a val loss that overfits from 0.3 to 3.5) stays on scale: its shape is the finding.
OFFSCALE_RATIO = 10.0


def offscale_points(series: Sequence[Series]) -> list[set[int]] | None:
    """Per series, the indices of its off-scale points (OFFSCALE_RATIO); None when the rule does not apply (no
    positive start, or a negative value: not a loss)."""
    finite = [[y for _, y in s.points if y is not None and math.isfinite(y)] for s in series]
    firsts = [ys[0] for ys in finite if ys]
    if not firsts or min(min(ys) for ys in finite if ys) < 0 or max(firsts) <= 0:
        return None
    floor = OFFSCALE_RATIO * max(firsts)
    out = []
    for s in series:
        off, last = set(), None
        for k, (_, y) in enumerate(s.points):
            if y is None or not math.isfinite(y):
                continue
            if y > floor and last is not None and y > OFFSCALE_RATIO * last:
                off.add(k)
            else:
                last = y
        out.append(off)
    return out


def offscale_caption(series: Sequence[Series], x_label: str = "step", x_fmt: Callable[[float], str] = fmt) -> str:
    """What a printed chart would lose of its off-scale points (their tooltips): how many, the largest and where."""
    off = offscale_points(series) or []
    pts = [s.points[k] for s, ks in zip(series, off) for k in ks]
    if not pts:
        return ""
    x, y = max(pts, key=lambda p: p[1])
    return (f"▲ {len(pts)} point{'s' if len(pts) > 1 else ''} off scale (max {fmt(y, 4)} at {x_label} {x_fmt(x)}), "
            "drawn at the top edge")


# A chart's plot is about 500 px wide: a line of more points than that draws several to a pixel (a 200k-step train log
# drew a solid grey band, its report 2.9 MB and 11 s to open). A line drawn from every log is cut to about one point
# per pixel first (thin_line).
LINE_POINTS = 500


def thin_line(points: Sequence[tuple[float, float]], breaks: Sequence[float] = (),
              n: int = LINE_POINTS) -> tuple[tuple[float, float], ...]:
    """`points` (x order) as about `n`: the mean of the points in each of n equal x ranges, the first and the last
    point as they are, no range spanning a break (a non-finite step, which keeps its own mark). An off-scale point of
    the raw line (offscale_points: a spike, a divergence) is in no mean: it stays as logged, the largest of a range's
    (a mean hid a loss of 850 among 20k values of 0.3-2.3 and set the axis to its bucket's 22.7). As they are when
    there are no more than `n`."""
    pts = tuple(points)
    if len(pts) <= n:
        return pts
    off = (offscale_points([Series("", "", pts)]) or [set()])[0]
    x0, x1 = pts[0][0], pts[-1][0]
    width = (x1 - x0) / n or 1.0
    bad = sorted(breaks)
    out: list[tuple[float, float]] = [pts[0]]
    key, xs, ys, top, j = None, [], [], None, 0

    def flush() -> None:  # a range's mean (features.safe_mean: a sum of 1e308s overflowed to inf) and its off-scale top
        here = ([(safe_mean(xs), safe_mean(ys))] if xs else []) + ([top] if top else [])
        out.extend(sorted(here))

    for i in range(1, len(pts) - 1):
        x, y = pts[i]
        while j < len(bad) and bad[j] <= x:  # the breaks passed so far: a range never spans one
            j += 1
        here = (j, int((x - x0) / width))
        if here != key:
            flush()
            key, xs, ys, top = here, [], [], None
        if i in off:  # as logged, the range's largest
            if top is None or y > top[1]:
                top = (x, y)
        else:
            xs.append(x)
            ys.append(y)
    flush()
    out.append(pts[-1])
    return tuple(out)


def _segments(pts: Sequence[tuple[float, float]], breaks: Sequence[float]) -> list[list[tuple[float, float]]]:
    """`pts` (x order) cut wherever a break step lies between two of them (or on one): a line is never drawn across
    a non-finite value. One pass over both (a diverged run's 10k breaks x 10k points took a minute)."""
    out: list[list[tuple[float, float]]] = []
    bad = sorted(breaks)
    j = 0
    for x, y in pts:
        cut = False
        while j < len(bad) and bad[j] <= x:
            cut, j = True, j + 1
        if not out or cut:
            out.append([])
        out[-1].append((x, y))
    return out


def nonfinite_runs(xs: Sequence[float], breaks: Sequence[float]) -> list[tuple[float, float, int]]:
    """The non-finite steps `breaks` as runs (first step, last step, how many) with no finite point (`xs`, sorted)
    between them: a diverged run's 10,000 NaN steps are one mark, not 10,000."""
    runs: list[tuple[float, float, int]] = []
    for b in sorted(breaks):
        if runs and bisect_left(xs, b) == bisect_right(xs, runs[-1][1]):
            a, _, k = runs[-1]
            runs[-1] = (a, b, k + 1)
        else:
            runs.append((b, b, 1))
    return runs


# the rows of non-finite marks at a chart's top edge, one per series: a cross is 8 px tall
NONFINITE_ROW_PX = 9


def line_chart(series: Sequence[Series], *, width: int = 560, height: int = 280, x_label: str = "step",
               y_label: str = "", y_lo: float | None = None, y_hi: float | None = None, x_lo: float | None = None,
               x_hi: float | None = None, log_x: bool = False, log_y: bool = False,
               vlines: Sequence[VLine] = (), bands: Sequence[Band] = (), aria: str = "line chart",
               x_fmt: Callable[[float], str] = fmt, y_fmt: Callable[[float], str] = fmt,
               offscale: bool = False, tip_fmt: Callable[[float], str] | None = None) -> str:
    """`offscale`: off-scale values (offscale_points, OFFSCALE_RATIO) set no axis and are drawn at the top edge, marked.
    Each series' non-finite steps (Series.nonfinite) are marked at the top edge and break its line. `tip_fmt`: the x
    values in tooltips (fmt_exact for steps; x_fmt when None), x_fmt the ticks'."""
    tip_fmt = tip_fmt or x_fmt
    off = (offscale_points(series) if offscale and y_hi is None and not log_y else None) or [set() for _ in series]
    xs = [x for s in series for x, _ in s.points] + [x for s in series for x in s.nonfinite] + [v.x for v in vlines]
    ys = ([y for s, ks in zip(series, off) for k, (_, y) in enumerate(s.points) if k not in ks]
          + [v for b in bands if not b.vertical for v in (b.lo, b.hi)])
    f = _frame(width, height, xs, ys, x_lo=x_lo, x_hi=x_hi, y_lo=y_lo, y_hi=y_hi, log_x=log_x, log_y=log_y)
    body = [_axes(f, x_label, y_label, x_fmt, y_fmt), _marks(f, vlines, bands)]
    y_top = max(f.y.lo, f.y.hi)
    row = 0  # the how-many-th series with non-finite marks: each its own row at the top edge
    for s, ks in zip(series, off):
        keep = [k for k, (x, y) in enumerate(s.points) if y is not None and math.isfinite(y) and (not log_x or x > 0)]
        pts = [s.points[k] for k in keep]
        high = {i for i, k in enumerate(keep) if k in ks}  # off-scale: at the top edge
        bad = [x for x in s.nonfinite if not log_x or x > 0]
        if not pts and not bad:
            continue
        coords = [(f.x(x), f.y(y_top if i in high else y)) for i, (x, y) in enumerate(pts)]
        dash = ' stroke-dasharray="5 4"' if s.dashed else ""
        body.append(f'<g class="series {esc(s.cls)}">')
        at = dict(zip(pts, coords))
        for seg in _segments(pts, bad):
            body.append(f'<path class="line" d="{_path([at[p] for p in seg], s.step)}"{dash}/>')
        for k, ((x, y), (px, py)) in enumerate(zip(pts, coords)):
            if k in high:  # off-scale: at the top edge, an up-triangle, the value in the tooltip
                tip = f"{s.label}: off-scale {fmt(y, 4)} at {x_label} {tip_fmt(x)} (axis top {fmt(y_top, 4)})"
                body.append(f'<path class="offscale" d="M{px:.1f},{py - 1:.1f}l-5,8h10z"><title>{esc(tip)}</title></path>')
            elif s.markers:
                tip = (s.titles[k] if s.titles and k < len(s.titles) else
                       f"{s.label}: {x_label} {tip_fmt(x)}, {fmt(y, 4)}")
                body.append(f'<circle class="dot" cx="{px:.1f}" cy="{py:.1f}" r="3"><title>{esc(tip)}</title></circle>')
        # non-finite: a cross at the top edge; a run of them (no finite point between) one span, a cross at each end;
        # a second series' marks a row lower (train's and val's at the same steps hid each other)
        runs = nonfinite_runs([x for x, _ in pts], bad)
        py, row = f.top + 4 + NONFINITE_ROW_PX * row, row + bool(runs)
        for a, b, k in runs:
            pa, pb = f.x(a), f.x(b)
            tip = (f"{s.label}: non-finite (nan/inf) at {x_label} {tip_fmt(a)}" if k == 1 else
                   f"{s.label}: non-finite (nan/inf) from {x_label} {tip_fmt(a)} to {tip_fmt(b)} ({k:,} points)")
            d = f"M{pa - 4:.1f},{py - 4:.1f}l8,8m0,-8l-8,8"
            if k == 1:
                body.append(f'<path class="nonfinite" d="{d}"><title>{esc(tip)}</title></path>')
                continue
            d += f"M{pb - 4:.1f},{py - 4:.1f}l8,8m0,-8l-8,8"  # the span dotted between its end crosses: no value line
            body.append(f'<g class="nonfinite"><title>{esc(tip)}</title><path d="{d}"/>'
                        f'<path class="span" d="M{pa + 5:.1f},{py:.1f}H{pb - 5:.1f}"/></g>')
        body.append("</g>")
    return _svg(f, "".join(body), aria)


@dataclass
class Dot:
    x: float
    y: float
    cls: str
    title: str
    r: float = 3.5
    label: str | None = None  # a short text drawn next to the dot


def scatter(dots: Sequence[Dot], *, width: int = 560, height: int = 280, x_label: str = "", y_label: str = "",
            log_x: bool = False, y_lo: float | None = None, y_hi: float | None = None,
            x_lo: float | None = None, x_hi: float | None = None, vlines: Sequence[VLine] = (),
            bands: Sequence[Band] = (), aria: str = "scatter chart", x_fmt: Callable[[float], str] = fmt,
            y_fmt: Callable[[float], str] = fmt, lines: Sequence[Series] = (),
            x_ticks: Sequence[float] | None = None) -> str:
    xs = [d.x for d in dots] + [x for s in lines for x, _ in s.points] + [v.x for v in vlines]
    ys = [d.y for d in dots] + [y for s in lines for _, y in s.points]
    f = _frame(width, height, xs, ys, x_lo=x_lo, x_hi=x_hi, y_lo=y_lo, y_hi=y_hi, log_x=log_x, x_pad=0.06)
    body = [_axes(f, x_label, y_label, x_fmt, y_fmt, x_ticks), _marks(f, vlines, bands)]
    for s in lines:
        coords = [(f.x(x), f.y(y)) for x, y in s.points if not log_x or x > 0]
        if coords:
            body.append(f'<g class="series {esc(s.cls)}"><path class="line" d="{_path(coords, s.step)}"/></g>')
    for d in dots:
        if log_x and d.x <= 0:
            continue
        x, y = f.x(d.x), f.y(d.y)
        body.append(f'<g class="series {esc(d.cls)}"><circle class="pt" cx="{x:.1f}" cy="{y:.1f}" r="{d.r}">'
                    f'<title>{esc(d.title)}</title></circle>')
        if d.label:
            body.append(f'<text class="ptlabel" x="{x + d.r + 3:.1f}" y="{y - d.r - 2:.1f}">{esc(d.label)}</text>')
        body.append("</g>")
    return _svg(f, "".join(body), aria)


@dataclass
class Bar:
    label: str
    value: float
    cls: str
    title: str
    err: float | None = None  # +- error bar (noise)


def column_chart(bars: Sequence[Bar], *, height: int = 220, width: int | None = None, y_label: str = "",
                 y_lo: float = 0.0, y_hi: float | None = None, show_labels: bool | None = None,
                 hlines: Sequence[tuple[float, str, str]] = (), aria: str = "bar chart",
                 y_fmt: Callable[[float], str] = fmt, label_chars: int = 18) -> str:
    """Vertical bars, one per item, in the given order (labels shown when there are few)."""
    n = max(len(bars), 1)
    show = show_labels if show_labels is not None else n <= 30
    bottom_pad = (min(max(len(b.label) for b in bars) if bars else 0, label_chars) * 5.6 + 12) if show else 14
    w = width or max(420, min(1100, 60 + n * (28 if show else 7)))
    hi = y_hi if y_hi is not None else max([b.value + (b.err or 0) for b in bars] + [1e-9]) * 1.08
    lo = min([y_lo] + [b.value - (b.err or 0) for b in bars])
    f = Frame(w, int(height + bottom_pad), Scale(0, n, PAD["l"], w - PAD["r"]),
              Scale(lo, hi, height - 10, PAD["t"]))
    out = ['<g class="axis">']
    yt = [t for t in nice_ticks(lo, hi, 4) if lo - 1e-12 <= t <= hi + 1e-12]
    for t, text in zip(yt, tick_texts(yt, y_fmt)):
        y = f.y(t)
        out.append(f'<line class="grid" x1="{f.left}" x2="{f.right}" y1="{y:.1f}" y2="{y:.1f}"/>'
                   f'<text x="{f.left - 6}" y="{y + 3.5:.1f}" text-anchor="end">{esc(text)}</text>')
    cy = (PAD["t"] + height - 10) / 2
    out.append(f'<text class="label" x="12" y="{cy:.1f}" text-anchor="middle" '
               f'transform="rotate(-90 12 {cy:.1f})">{esc(y_label)}</text></g>')
    slot = (f.right - f.left) / n
    bw = max(1.0, slot * (0.72 if show else 0.8))
    zero = f.y(max(lo, 0.0) if lo >= 0 else 0.0)
    for i, b in enumerate(bars):
        x = f.left + i * slot + (slot - bw) / 2
        y = f.y(b.value)
        top, h = (min(y, zero), abs(zero - y))
        out.append(f'<g class="series {esc(b.cls)}"><rect class="bar" x="{x:.1f}" y="{top:.1f}" '
                   f'width="{bw:.1f}" height="{h if b.value == 0 else max(h, 0.8):.1f}"><title>{esc(b.title)}</title></rect>')
        if b.err:
            cx = x + bw / 2
            y1, y2 = f.y(b.value - b.err), f.y(b.value + b.err)
            out.append(f'<path class="err" d="M{cx:.1f},{y1:.1f}V{y2:.1f}M{cx - 4:.1f},{y1:.1f}h8M{cx - 4:.1f},{y2:.1f}h8"/>')
        out.append("</g>")
        if show:
            lab = b.label if len(b.label) <= label_chars else b.label[: label_chars - 1] + "…"
            lx, ly = x + bw / 2, height - 2
            out.append(f'<text class="xlab" x="{lx:.1f}" y="{ly:.1f}" text-anchor="end" '
                       f'transform="rotate(-50 {lx:.1f} {ly:.1f})">{esc(lab)}<title>{esc(b.label)}</title></text>')
    for yv, text, cls in hlines:
        if lo <= yv <= hi:
            y = f.y(yv)
            out.append(f'<g class="{esc(cls)}"><line x1="{f.left}" x2="{f.right}" y1="{y:.1f}" y2="{y:.1f}"/>'
                       f'<text x="{f.right - 4}" y="{y - 4:.1f}" text-anchor="end">{esc(text)}</text></g>')
    return _svg(f, "".join(out), aria)


def hbar_chart(bars: Sequence[Bar], *, width: int = 560, row: int = 26, x_label: str = "",
               band: tuple[float, float, str] | None = None, aria: str = "bar chart",
               x_fmt: Callable[[float], str] = fmt, label_width: int = 170) -> str:
    """Horizontal bars around zero with optional error bars and a shaded noise band (lo, hi, text)."""
    n = max(len(bars), 1)
    height = PAD["t"] + n * row + 34
    vals = [v for b in bars for v in (b.value - (b.err or 0), b.value + (b.err or 0))] + [0.0]
    if band:
        vals += [band[0], band[1]]
    lo, hi = min(vals), max(vals)
    span = (hi - lo) or 1.0
    lo, hi = lo - span * 0.08, hi + span * 0.08
    f = Frame(width, height, Scale(lo, hi, label_width, width - PAD["r"]), Scale(0, n, PAD["t"], PAD["t"] + n * row))
    out = ['<g class="axis">']
    xt = nice_ticks(lo, hi, 5)
    for t, text in zip(xt, tick_texts(xt, x_fmt)):
        x = f.x.__call__(t)
        out.append(f'<line class="grid" x1="{x:.1f}" x2="{x:.1f}" y1="{PAD["t"]}" y2="{PAD["t"] + n * row}"/>'
                   f'<text x="{x:.1f}" y="{PAD["t"] + n * row + 14}" text-anchor="middle">{esc(text)}</text>')
    out.append(f'<text class="label" x="{(label_width + width) / 2:.1f}" y="{height - 4}" '
               f'text-anchor="middle">{esc(x_label)}</text></g>')
    if band:
        x1, x2 = f.x(band[0]), f.x(band[1])
        out.append(f'<rect class="band" x="{x1:.1f}" y="{PAD["t"]}" width="{max(x2 - x1, 1):.1f}" '
                   f'height="{n * row}"><title>{esc(band[2])}</title></rect>')
    x0 = f.x(0.0)
    out.append(f'<line class="zero" x1="{x0:.1f}" x2="{x0:.1f}" y1="{PAD["t"]}" y2="{PAD["t"] + n * row}"/>')
    for i, b in enumerate(bars):
        y = PAD["t"] + i * row + 4
        xv = f.x(b.value)
        x1, w = min(x0, xv), abs(xv - x0)
        out.append(f'<g class="series {esc(b.cls)}"><rect class="bar" x="{x1:.1f}" y="{y:.1f}" width="{max(w, 1):.1f}" '
                   f'height="{row - 8}"><title>{esc(b.title)}</title></rect>')
        if b.err:
            cy = y + (row - 8) / 2
            e1, e2 = f.x(b.value - b.err), f.x(b.value + b.err)
            out.append(f'<path class="err" d="M{e1:.1f},{cy:.1f}H{e2:.1f}M{e1:.1f},{cy - 5:.1f}v10M{e2:.1f},{cy - 5:.1f}v10"/>')
        out.append("</g>")
        lab = b.label if len(b.label) <= 28 else b.label[:27] + "…"
        out.append(f'<text class="ylab" x="{label_width - 8}" y="{y + row / 2:.1f}" text-anchor="end">{esc(lab)}'
                   f'<title>{esc(b.label)}</title></text>')
    return _svg(f, "".join(out), aria)


def heatmap(row_labels: Sequence[str], col_labels: Sequence[str], values: Sequence[Sequence[int]],
            shade: Callable[[int, int, int], tuple[str, float]], title: Callable[[int, int, int], str], *,
            cell: int = 18, label_chars: int = 30, show_counts: bool = True, aria: str = "heatmap",
            x_label: str = "predicted", y_label: str = "true") -> str:
    """A labelled matrix. `shade(i, j, v)` -> (css class, opacity 0..1); zero cells stay blank."""
    n_r, n_c = len(row_labels), len(col_labels)
    lab_w = min(max((len(s) for s in row_labels), default=4), label_chars) * CHAR_PX + 14
    lab_h = min(max((len(s) for s in col_labels), default=4), label_chars) * 4.6 + 22
    left, top = lab_w + 18, lab_h
    width, height = int(left + n_c * cell + 10 + lab_h * 0.4), int(top + n_r * cell + 10)
    out = [f'<text class="label" x="{left + n_c * cell / 2:.1f}" y="11" text-anchor="middle">{esc(x_label)} →</text>',
           f'<text class="label" x="10" y="{top + n_r * cell / 2:.1f}" text-anchor="middle" '
           f'transform="rotate(-90 10 {top + n_r * cell / 2:.1f})">← {esc(y_label)}</text>',
           f'<rect class="hm-bg" x="{left}" y="{top}" width="{n_c * cell}" height="{n_r * cell}"/>']

    def short(s: str) -> str:
        return s if len(s) <= label_chars else s[: label_chars - 1] + "…"

    for i, lab in enumerate(row_labels):
        y = top + i * cell + cell / 2 + 3.5
        out.append(f'<text class="ylab" x="{left - 5}" y="{y:.1f}" text-anchor="end">{esc(short(lab))}'
                   f'<title>{esc(lab)}</title></text>')
    for j, lab in enumerate(col_labels):
        x = left + j * cell + cell / 2 + 3.5
        y = top - 5
        out.append(f'<text class="xlab" x="{x:.1f}" y="{y}" transform="rotate(-55 {x:.1f} {y})">{esc(short(lab))}'
                   f'<title>{esc(lab)}</title></text>')
    for i in range(n_r):
        for j in range(n_c):
            v = values[i][j]
            if not v:
                continue
            cls, op = shade(i, j, v)
            x, y = left + j * cell, top + i * cell
            out.append(f'<g class="{cls}"><rect x="{x}" y="{y}" width="{cell - 1}" height="{cell - 1}" '
                       f'fill-opacity="{max(0.08, min(op, 1.0)):.2f}"><title>{esc(title(i, j, v))}</title></rect>')
            if show_counts and cell >= 14:
                dark = op > 0.55
                out.append(f'<text class="cnt{" on" if dark else ""}" x="{x + (cell - 1) / 2:.1f}" '
                           f'y="{y + cell / 2 + 3:.1f}" text-anchor="middle">{v}</text>')
            out.append("</g>")
    for k in range(min(n_r, n_c)):  # the diagonal, faintly
        x, y = left + k * cell, top + k * cell
        out.append(f'<rect class="hm-diag" x="{x}" y="{y}" width="{cell - 1}" height="{cell - 1}"/>')
    f = Frame(width, height, Scale(0, 1, 0, 1), Scale(0, 1, 0, 1))
    return _svg(f, "".join(out), aria, cls="chart heatmap")


def sparse_matrix(n: int, cells: Sequence[tuple[int, int, int]], shade: Callable[[int, int, int], tuple[str, float]],
                  title: Callable[[int, int, int], str], *, size: int = 300, highlight: Sequence[int] = (),
                  aria: str = "matrix overview") -> str:
    """A whole n x n matrix without labels, only its non-zero cells drawn (small for 150+ classes)."""
    cell = max(1.0, size / max(n, 1))
    pad = 22
    side = cell * n
    out = [f'<rect class="hm-bg" x="{pad}" y="{pad}" width="{side:.1f}" height="{side:.1f}"/>',
           f'<text class="label" x="{pad + side / 2:.1f}" y="14" text-anchor="middle">predicted →</text>',
           f'<text class="label" x="12" y="{pad + side / 2:.1f}" text-anchor="middle" '
           f'transform="rotate(-90 12 {pad + side / 2:.1f})">← true</text>']
    for k in highlight:
        out.append(f'<rect class="hm-focus" x="{pad}" y="{pad + k * cell:.2f}" width="{side:.1f}" height="{cell:.2f}"/>')
    for i, j, v in sorted(cells, key=lambda c: c[0] != c[1]):  # errors drawn last, on top
        cls, op = shade(i, j, v)
        s = cell if i == j else max(cell, 3.0)  # an error stays visible however many classes there are
        off = (s - cell) / 2
        out.append(f'<rect class="{cls}" x="{pad + j * cell - off:.2f}" y="{pad + i * cell - off:.2f}" width="{s:.2f}" '
                   f'height="{s:.2f}" fill-opacity="{max(0.15, min(op, 1.0)):.2f}"><title>{esc(title(i, j, v))}</title></rect>')
    w = int(pad * 2 + side)
    f = Frame(w, w, Scale(0, 1, 0, 1), Scale(0, 1, 0, 1))
    return _svg(f, "".join(out), aria, cls="chart heatmap overview")
