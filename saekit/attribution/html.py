"""The static view of `saekit attribute`: per dictionary, a grid of the prompt's tokens × its
top features (each cell the attribution at that position, blue for support, red against),
with the error node and the totals, each feature linked to its page of the feature dashboard.

Written next to attribution.json with the dashboard's stylesheet; links point at
RUN/dashboard/NAME/I.html wherever the view is written, and a feature is linked only when its
page exists (a feature the dashboard did not score, or no dashboard yet, shows unlinked).
"""

from __future__ import annotations

import os
from collections import defaultdict
from html import escape
from pathlib import Path
from typing import Any

from saekit.dashboard.build import write_assets
from saekit.dashboard.html import fmt, page, table


def _cell(value: float, scale: float) -> str:
    """A grid cell shaded by value / scale (blue > 0, red < 0); empty when zero."""
    if value == 0:
        return '<td class="v"></td>'
    alpha = min(1.0, abs(value) / scale) if scale > 0 else 1.0
    rgb = "40,110,255" if value > 0 else "230,60,40"
    return (
        f'<td class="v" style="background:rgba({rgb},{0.08 + 0.72 * alpha:.2f})" '
        f'title="{value:.4g}">{value:.2g}</td>'
    )


def _top_features(d: dict[str, Any], n: int) -> list[tuple[int, dict[int, float]]]:
    """The n features with the largest Σ_t |attribution|, each with its value per position."""
    by_feature: dict[int, dict[int, float]] = defaultdict(dict)
    for e in d["features"]:
        by_feature[e["feature"]][e["position"]] = e["attribution"]
    ranked = sorted(by_feature.items(), key=lambda kv: -sum(abs(v) for v in kv[1].values()))
    return ranked[:n]


def _link(feature: int, page_path: Path, out_dir: Path) -> str:
    if not page_path.is_file():
        return str(feature)
    href = Path(os.path.relpath(page_path, out_dir)).as_posix()
    return f'<a class="feature" href="{escape(href)}">{feature}</a>'


def _grid(
    name: str, d: dict[str, Any], tokens: list[str], top: int, dashboard: Path, out: Path
) -> str:
    rows_in = _top_features(d, top)
    nodes: list[tuple[str, list[float]]] = [("all features", [0.0] * len(tokens))]
    for e in d["features"]:
        nodes[0][1][e["position"]] += e["attribution"]
    if d["skip"] is not None:
        nodes.append(("skip path", d["skip"]))
    nodes.append(("error", d["error"]))
    values = [abs(v) for _, per in rows_in for v in per.values()]
    values += [abs(v) for _, row in nodes[1:] for v in row]
    scale = max(values, default=0.0)
    T = len(tokens)
    head = "".join(f"<th class=tok>{escape(t.replace(chr(10), '↵'))}</th>" for t in tokens)
    body = []
    for feature, per in rows_in:
        link = _link(feature, dashboard / name / f"{feature}.html", out)
        cells = "".join(_cell(per.get(t, 0.0), scale) for t in range(T))
        body.append(f"<tr><th>{link}</th><td class=v>{sum(per.values()):.3g}</td>{cells}</tr>")
    for label, row in nodes:
        cells = "".join(_cell(v, scale) for v in row)
        body.append(f'<tr class="node"><th>{label}</th><td class=v>{sum(row):.3g}</td>{cells}</tr>')
    return (
        f'<table class="attr" data-dictionary="{escape(name)}"><thead><tr><th>feature</th>'
        f"<th>Σ</th>{head}</tr></thead><tbody>{''.join(body)}</tbody></table>"
    )


def _summary(d: dict[str, Any]) -> str:
    rows = [
        ["hooks (read → write)", f"{escape(d['read_hook'])} → {escape(d['write_hook'])}"],
        ["method, features", f"{escape(d['method'])}, {d['d_sae']}"],
        ["Δ = m(clean) − m(baseline)", fmt(d["delta"])],
        [
            "Σ features" + ("" if d["sum_skip"] is None else " + Σ skip path") + " + Σ error",
            " + ".join(
                fmt(d[k]) for k in ("sum_features", "sum_skip", "sum_error") if d[k] is not None
            ),
        ],
        [
            "residual (quadrature points)",
            f"{fmt(d['residual'])} ({100 * d['relative_residual']:.2g}% of Δ, "
            f"{d['steps']} points{'' if d['identity_met'] else ', tolerance NOT met'})",
        ],
        ["residual of plain activation × gradient", fmt(d["linear_residual"])],
        ["active (position, feature) pairs", fmt(len(d["features"]))],
    ]
    return table(["quantity", "value"], rows, "kv")


def attribution_page(report: dict[str, Any], top: int, dashboard: Path, out_dir: Path) -> str:
    """The whole view as one HTML page."""
    parts = [
        "<h1>Attribution</h1>",
        f"<p>Prompt <code>{escape(report['prompt'])}</code>: explaining "
        f"<b>{escape(report['metric'])}</b> at its last token "
        f"(value {fmt(report['metric_clean'])}).</p>",
        '<p class="muted">Each cell: a feature\'s activation × the gradient of the target, '
        "averaged along the path from the baseline (the dictionary writing decode(0) at every "
        "ordinary position) to the clean run; features, the skip path (skip transcoders) and the "
        "error node add up to Δ but for the stated residual. Blue supports the target, red "
        "opposes it.</p>",
    ]
    for name, d in report["dictionaries"].items():
        parts += [
            f"<h2>{escape(name)}</h2>",
            _summary(d),
            _grid(name, d, report["tokens"], top, dashboard, out_dir),
        ]
    if not dashboard.is_dir():
        parts.append(
            '<p class="muted">No feature dashboard yet: run `saekit dashboard RUN` to link '
            "every feature to its page.</p>"
        )
    return page("saekit attribution", "\n".join(parts), depth=0)


def write_view(report: dict[str, Any], top: int, dashboard: Path, out_dir: Path) -> Path:
    """index.html (and the stylesheet) in out_dir; returns the page."""
    write_assets(out_dir)
    index = out_dir / "index.html"
    partial = index.with_name("index.html.partial")
    partial.write_text(attribution_page(report, top, dashboard, out_dir))
    partial.replace(index)
    return index
