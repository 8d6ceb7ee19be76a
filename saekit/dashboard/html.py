"""Small HTML builders for the static dashboard: page skeleton, highlighted token contexts and
inline SVG charts (no external scripts, fonts or images: the site works offline from disk)."""

from __future__ import annotations

import math
from collections.abc import Sequence
from html import escape
from typing import Any


def page(title: str, body: str, depth: int, script: bool = False) -> str:
    """A complete page; `depth` is how many folders below the site root it sits."""
    up = "../" * depth
    js = f'<script src="{up}assets/table.js"></script>' if script else ""
    return (
        '<!DOCTYPE html>\n<html lang="en"><head><meta charset="utf-8">'
        '<meta name="viewport" content="width=device-width, initial-scale=1">'
        f'<link rel="icon" href="data:,"><title>{escape(title)}</title>'
        f'<link rel="stylesheet" href="{up}assets/style.css"></head>\n'
        f"<body>\n{body}\n{js}</body></html>\n"
    )


def fmt(value: Any, digits: int = 3) -> str:
    if value is None:
        return "–"
    if isinstance(value, float):
        if value != 0 and (abs(value) < 1e-3 or abs(value) >= 1e4):
            return f"{value:.2e}"
        return f"{value:.{digits}f}"
    return escape(str(value))


def _token_text(tok: str) -> str:
    return escape(tok.replace("\n", "↵"))


def context(tokens: Sequence[str], acts: Sequence[float], scale: float) -> str:
    """One example: tokens shaded by activation / `scale`, the value in each tooltip."""
    spans = []
    for tok, a in zip(tokens, acts):
        if a > 0:
            alpha = min(1.0, a / scale) if scale > 0 else 1.0
            spans.append(
                f'<span class="tok on" style="background:rgba(255,110,0,{0.15 + 0.85 * alpha:.2f})"'
                f' title="{a:.3g}">{_token_text(tok)}</span>'
            )
        else:
            spans.append(f'<span class="tok">{_token_text(tok)}</span>')
    return f'<div class="ctx">{"".join(spans)}</div>'


def examples(items: Sequence[dict[str, Any]], scale: float) -> str:
    rows = [
        f'<div class="ex"><span class="exmax">{ex["max"]:.3g}{"" if ex["test"] else " ·"}</span>'
        f"{context(ex['tokens'], ex['acts'], scale)}</div>"
        for ex in items
    ]
    return "\n".join(rows) or '<p class="muted">none</p>'


def bar_chart(
    edges: Sequence[float], counts: Sequence[float], xlabel: str, width: int = 420
) -> str:
    """Histogram as an inline SVG (bars between consecutive edges, log-free y axis)."""
    if not counts:
        return '<p class="muted">no data</p>'
    h, pad = 140, 28
    top = max(counts) or 1
    n = len(counts)
    bw = (width - 2 * pad) / n
    bars = "".join(
        f'<rect x="{pad + i * bw:.1f}" y="{h - pad - (c / top) * (h - 2 * pad):.1f}" '
        f'width="{max(bw - 1, 1):.1f}" height="{(c / top) * (h - 2 * pad):.1f}">'
        f"<title>{edges[i]:.2f}..{edges[i + 1]:.2f}: {c}</title></rect>"
        for i, c in enumerate(counts)
    )
    return (
        f'<svg class="chart" width="{width}" height="{h}" role="img">{bars}'
        f'<line x1="{pad}" y1="{h - pad}" x2="{width - pad}" y2="{h - pad}" class="axis"/>'
        f'<text x="{pad}" y="{h - 8}">{edges[0]:.2f}</text>'
        f'<text x="{width - pad}" y="{h - 8}" text-anchor="end">{edges[-1]:.2f}</text>'
        f'<text x="{width / 2}" y="{h - 8}" text-anchor="middle">{escape(xlabel)}</text>'
        f'<text x="{pad}" y="14">max {top:g}</text></svg>'
    )


def line_chart(xs: Sequence[float], ys: Sequence[float], xlabel: str, ylabel: str) -> str:
    """A polyline with dots as inline SVG (the steering curve: score vs KL budget)."""
    pts = [(float(x), float(y)) for x, y in zip(xs, ys) if math.isfinite(x) and math.isfinite(y)]
    if not pts:
        return '<p class="muted">no data</p>'
    w, h, pad = 420, 180, 34
    x0, x1 = min(p[0] for p in pts), max(p[0] for p in pts)
    y0, y1 = min(0.0, min(p[1] for p in pts)), max(p[1] for p in pts)
    sx = (w - 2 * pad) / ((x1 - x0) or 1)
    sy = (h - 2 * pad) / ((y1 - y0) or 1)
    xy = [(pad + (x - x0) * sx, h - pad - (y - y0) * sy) for x, y in pts]
    line = " ".join(f"{a:.1f},{b:.1f}" for a, b in xy)
    dots = "".join(
        f'<circle cx="{a:.1f}" cy="{b:.1f}" r="3"><title>{x:.3g}: {y:.3g}</title></circle>'
        for (a, b), (x, y) in zip(xy, pts)
    )
    return (
        f'<svg class="chart" width="{w}" height="{h}" role="img">'
        f'<polyline points="{line}" class="curve"/>{dots}'
        f'<line x1="{pad}" y1="{h - pad}" x2="{w - pad}" y2="{h - pad}" class="axis"/>'
        f'<text x="{pad}" y="{h - 10}">{x0:.3g}</text>'
        f'<text x="{w - pad}" y="{h - 10}" text-anchor="end">{x1:.3g}</text>'
        f'<text x="{w / 2}" y="{h - 10}" text-anchor="middle">{escape(xlabel)}</text>'
        f'<text x="4" y="14">{escape(ylabel)} (max {y1:.3g})</text></svg>'
    )


def table(headers: Sequence[str], rows: Sequence[Sequence[str]], cls: str = "") -> str:
    head = "".join(f"<th>{escape(h)}</th>" for h in headers)
    body = "".join("<tr>" + "".join(f"<td>{c}</td>" for c in r) + "</tr>" for r in rows)
    return f'<table class="{cls}"><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>'
