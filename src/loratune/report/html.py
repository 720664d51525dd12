"""The shared pieces of the HTML reports (run and study): value formatting, tiles, tables, sections,
the page template and its footer. Nothing here knows a report model."""

from __future__ import annotations

import datetime as _dt
import math
from importlib import resources
from string import Template
from typing import Any, Iterable, Sequence

from loratune.report.charts import esc

# ---------------------------------------------------------------------------------------------
# Formatting
# ---------------------------------------------------------------------------------------------


def num(v: Any, digits: int = 3) -> str:
    if v is None or isinstance(v, bool) or (isinstance(v, float) and not math.isfinite(v)):
        return "–"
    if isinstance(v, int):
        return f"{v:,}"
    if isinstance(v, float):
        if v == int(v) and abs(v) >= 1 and abs(v) < 1e15:
            return f"{int(v):,}"
        if abs(v) < 1e-3:
            return f"{v:.1e}"
        return f"{v:.{digits}f}" if abs(v) < 10 else f"{v:,.1f}"
    return str(v)


def metric(v: Any) -> str:
    """A 0..1 score (macro-F1, recall, accuracy) or a loss, always three decimals."""
    if isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v):
        return f"{v:.3f}"
    return "–"


def pct(v: Any, digits: int = 1) -> str:
    return f"{v:.{digits}%}" if isinstance(v, (int, float)) and v is not None and math.isfinite(v) else "–"


def human(n: Any) -> str:
    if not isinstance(n, (int, float)) or isinstance(n, bool):
        return "–"
    for unit, div in (("B", 1e9), ("M", 1e6), ("k", 1e3)):
        if abs(n) >= div:
            return f"{n / div:.3g}{unit}"
    return f"{n:,.0f}"


def duration(s: Any) -> str:
    if not isinstance(s, (int, float)) or s is None:
        return "–"
    s = float(s)
    if s < 90:
        return f"{s:.0f} s"
    if s < 5400:
        return f"{s / 60:.1f} min"
    return f"{s / 3600:.1f} h"


def value_text(v: Any) -> str:
    if isinstance(v, (list, tuple)):
        return ", ".join(map(str, v)) if v else "[]"
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, float):
        return f"{v:g}"
    if isinstance(v, int):
        return f"{v:,}"
    return str(v)


STATUS_TONE = {"completed": "ok", "running": "info", "interrupted": "warn", "diverged": "bad", "failed": "bad",
               "pruned": "warn", "killed": "bad"}
HEALTHY = {"healthy", "plateau-reached", "capacity-adequate", "converged"}


def verdict_tone(verdict: str) -> str:
    if verdict in HEALTHY or verdict.startswith("healthy"):
        return "ok"
    if verdict in ("inconclusive", ""):
        return "low"
    if any(w in verdict for w in ("diverg", "collapse", "unstable", "broken")):
        return "bad"
    return "warn"


def badge(text: str, tone: str) -> str:
    return f'<span class="badge {tone}">{esc(text)}</span>'


def tile(label: str, value: str, detail: str = "", tone: str = "", small: bool = False, key: str = "") -> str:
    data = f' data-key="{esc(key)}"' if key else ""
    return (f'<div class="tile {tone}"{data}><div class="k">{esc(label)}</div>'
            f'<div class="v{" sm" if small else ""}">{value}</div>'
            + (f'<div class="d">{detail}</div>' if detail else "") + "</div>")


def section(id_: str, title: str, lede: str, body: str) -> str:
    lede_html = f'<p class="lede">{lede}</p>' if lede else ""
    return f'<section class="card" id="{esc(id_)}"><h2>{esc(title)}</h2>{lede_html}{body}</section>'


def missing(text: str) -> str:
    return f'<div class="missing" data-missing="1">{esc(text)}</div>'


def legend(items: Iterable[tuple[str, str, str]]) -> str:
    """(css class, text, kind: line | dash | box | mark)."""
    return '<div class="legend">' + "".join(
        f'<span class="{esc(c)}"><i class="{esc(k)}"></i>{esc(t)}</span>' for c, t, k in items) + "</div>"


def table(headers: Sequence[tuple[str, str]], rows: Iterable[Sequence[tuple[str, str]]], *, cls: str = "",
          row_cls: Sequence[str] | None = None, id_: str = "") -> str:
    """headers: (text, css class); rows: cells as (html, css class) or (html, css class, sort value)."""
    head = "".join(f'<th class="{c}">{esc(h)}</th>' for h, c in headers)
    out = []
    for k, row in enumerate(rows):
        rc = f' class="{row_cls[k]}"' if row_cls and row_cls[k] else ""
        cells = []
        for cell in row:
            html, c = cell[0], cell[1]
            sv = f' data-v="{esc(cell[2])}"' if len(cell) > 2 and cell[2] is not None else ""
            cells.append(f'<td class="{c}"{sv}>{html}</td>')
        out.append(f"<tr{rc}>" + "".join(cells) + "</tr>")
    idattr = f' id="{esc(id_)}"' if id_ else ""
    return f'<div class="scroll-x"><table class="{cls}"{idattr}><thead><tr>{head}</tr></thead><tbody>{"".join(out)}</tbody></table></div>'


def copy_block(id_: str, text: str) -> str:
    return (f'<div class="copy-wrap"><button class="copy" type="button" data-target="{esc(id_)}">copy</button>'
            f'<pre class="yaml" id="{esc(id_)}">{esc(text)}</pre></div>')


def _asset(name: str) -> str:
    return resources.files("loratune.report").joinpath("templates", name).read_text(encoding="utf-8")


def page(title: str, kind: str, body: str) -> str:
    from loratune import __version__

    return Template(_asset("page.html")).substitute(
        title=esc(title), kind=esc(kind), body=body, css=_asset("report.css"), js=_asset("report.js"),
        version=esc(__version__))


def footer(path: str) -> str:
    from loratune import __version__

    now = _dt.datetime.now().astimezone().strftime("%Y-%m-%d %H:%M")
    return (f'<footer class="wrap">Made by loratune {esc(__version__)} on {esc(now)} from <code>{esc(path)}</code>. '
            f'Self-contained: this file needs no network.</footer>')
