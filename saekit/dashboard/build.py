"""`saekit dashboard RUN_DIR`: a static site from the run's interp data (computed first when
missing). Layout under RUN_DIR/dashboard/:

    index.html          every dictionary: summary scores next to the shuffled/random controls,
                        and the scorecard of report.json when `saekit eval` wrote one, and the
                        steering study (Pareto areas, steering-study.png) when steering.json
                        has one (`saekit steer compare`)
    NAME/index.html     the feature table (sortable, filterable; works without JS as a table)
    NAME/I.html         feature I: contexts, quantile samples, histogram, logits, neighbours,
                        and the steering curve when RUN_DIR/steering.json has one
    assets/             style.css, table.js

The index links the data-selection study (RUN_DIR/selection/selection.json and its plots) when
`saekit select RUN_DIR --evaluate` has written one.
"""

from __future__ import annotations

import json
import math
import os
import shutil
from html import escape
from importlib import resources
from pathlib import Path
from typing import Any

from tqdm import tqdm

from saekit.dashboard.html import bar_chart, context, examples, fmt, line_chart, page, table
from saekit.errors import SaekitError
from saekit.eval.controls import CONTROLS
from saekit.eval.scorecard import HEADLINE, Units, beats_controls
from saekit.rundir import RunDir

SCORE_COLUMNS = ("detection", "fuzzing", "simulation")


def _write(path: Path, text: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)


def steering_curves(run_dir: str | Path, name: str) -> dict[str, dict[str, list[float]]]:
    """{feature index: {"kl": [...], "score": [...]}} of one dictionary from steering.json.

    Reads the layout `saekit steer` writes ({"sites": {HOOK: {"directions": {"NAME#I":
    {"curve": [{"kl", "score", ...}, ...]}}}}}); also {NAME: {"features": {I: {"kl", "score"}}}}.
    """
    run = RunDir(run_dir)
    data = run.read_json(run.steering)
    if not isinstance(data, dict):
        return {}
    out: dict[str, dict[str, list[float]]] = {}
    for site in data.get("sites", {}).values():
        for key, res in site.get("directions", {}).items():
            owner, _, index = key.rpartition("#")
            if owner != name:
                continue
            rows = [r for r in res.get("curve", []) if r.get("score") is not None]
            out[index] = {"kl": [r["kl"] for r in rows], "score": [r["score"] for r in rows]}
    entry = data.get("saes", data).get(name, {})
    feats = entry.get("features", {}) if isinstance(entry, dict) else {}
    out |= {str(k): v for k, v in feats.items() if isinstance(v, dict) and "kl" in v}
    return out


def selection_section(run: RunDir, site: Path) -> str:
    """Links to the data-selection study of `saekit select --evaluate` (its JSON and plots) and
    its precision per method, when the run has one; else ""."""
    data = run.read_json(run.selection_json)
    if not isinstance(data, dict):
        return ""
    files = [("selection.json", run.selection_json)]
    files += [(f"{k} plot", run.selection / Path(v).name) for k, v in data.get("plots", {}).items()]
    links = " · ".join(
        f'<a href="{escape(os.path.relpath(path, site))}">{escape(label)}</a>'
        for label, path in files
        if path.is_file()
    )
    retrieval = data.get("retrieval", {})
    rows = [
        [escape(m), *(_ci(row.get(k, {})) for k in ("precision", "auc"))]
        for m, row in retrieval.get("summary", {}).items()
    ]
    return (
        f"<h2>Data selection</h2><p>{links}</p>"
        f'<p class="muted">{len(retrieval.get("targets", {}))} targets, pool '
        f"{fmt(retrieval.get('pool_size'))}; mean and 95% bootstrap CI over targets.</p>"
        + table(["method", "precision@R", "ROC-AUC"], rows)
    )


def _ci(ci: dict[str, Any]) -> str:
    if "mean" not in ci:
        return "–"
    return f"{fmt(ci['mean'])} <span class=muted>[{fmt(ci['lo'])}, {fmt(ci['hi'])}]</span>"


def shown_hook(summary: dict[str, Any]) -> str:
    """The hook a dictionary reads, and for a transcoder the one it writes (`in → out`)."""
    out = summary.get("output_hook")
    return f"{summary['hook']} → {out}" if out else str(summary["hook"])


def n_units(score_json: dict[str, Any]) -> int:
    """How many units a scorecard score's interval resampled."""
    return len(Units.from_json(score_json["units"]))


def _scorecard_html(scorecard: dict[str, Any]) -> str:
    """The scorecard `saekit eval` wrote into report.json: each dictionary's headline scores
    with their 95% intervals, both null controls and the margin over the stronger one."""
    rows: list[list[str]] = []

    def interval(ci: list[float] | None) -> str:
        return f"[{fmt(ci[0])}, {fmt(ci[1])}]" if ci else ""

    for name, card in scorecard.items():
        for section, scores in card.items():
            for metric in HEADLINE.get(section, tuple(scores)):
                s = scores.get(metric)
                if s is None:
                    continue
                m_ci = s.get("margin_ci")
                rows.append([
                    escape(name), escape(section), escape(metric),
                    f"{fmt(s['value'])} <span class=muted>{interval(s['ci'])}</span>",
                    *(fmt(s["controls"].get(c)) for c in CONTROLS),
                    f"{fmt(s.get('margin'))} <span class=muted>{interval(m_ci)}</span>",
                    beats_controls(tuple(m_ci) if m_ci else None, n_units(s)),
                    escape(s["resampled"]),
                ])  # fmt: skip
    heads = ["dictionary", "section", "score", "value [95% CI]", *CONTROLS, "margin [95% CI]"]
    return (
        "<h2>Scorecard</h2><p class=muted>From report.json (<code>saekit eval</code>): margins "
        "are over the stronger null control (random directions with the dictionary's norms, "
        "the untrained dictionary), sign-adjusted so that &gt; 0 is better; intervals are "
        "percentile bootstraps over the units named in the last column.</p>"
        + table([*heads, "beats controls", "resampled"], rows)
    )


def _steering_study_html(study: dict[str, Any], plot: str) -> str:
    """Each site's Pareto areas with intervals, linking the concept-vs-ΔCE figure."""
    rows = []
    for hook, site in study.items():
        for method, m in site["methods"].items():
            auc = m.get("pareto_auc")
            cell = f"{fmt(auc['mean'])} [{fmt(auc['lo'])}, {fmt(auc['hi'])}]" if auc else "-"
            rows.append([escape(hook), escape(method), fmt(m["directions"]), cell])
    return (
        "<h2>Steering study</h2><p class=muted>From steering.json (<code>saekit steer compare"
        "</code>): area under each method's concept-gain-vs-ΔCE frontier, 95% interval over "
        f'features. <a href="{escape(plot)}">Concept gain vs ΔCE with interval bands</a>.</p>'
        + table(["hook", "method", "directions", "Pareto area [95% CI]"], rows)
    )


def _index_page(
    interp: dict[str, Any], scorecard: dict[str, Any] | None = None, extra: str = ""
) -> str:
    rows: list[list[str]] = []
    notes: list[str] = []
    for name, s in interp["saes"].items():
        ctrl = s.get("controls", {})
        cells = [
            f'<a href="{escape(name)}/index.html">{escape(name)}</a>',
            escape(shown_hook(s)),
            fmt(s["d_sae"]),
            fmt(s["alive"]),
            fmt(s["scored"]),
        ]
        for col in SCORE_COLUMNS:
            base = s.get("dictionary_subset", s).get(f"{col}_mean")
            nulls = " / ".join(fmt(ctrl[c].get(f"{col}_mean")) for c in ctrl)
            cells.append(
                f"{fmt(s.get(f'{col}_mean'))} <span class=muted>"
                f"(subset {fmt(base)}; {escape(' / '.join(ctrl))} {nulls})</span>"
            )
        rows.append(cells)
        if "llm" in s:
            llm = s["llm"]
            notes.append(
                f"{escape(name)}: LLM judge {escape(llm['scorer'])} on {llm['scored']} features: "
                f"detection {fmt(llm['detection_mean'])}, fuzzing {fmt(llm['fuzzing_mean'])} "
                f"(n-gram rule on the same features: {fmt(llm['ngram_detection_mean'])}, "
                f"{fmt(llm['ngram_fuzzing_mean'])})"
            )
    body = (
        f"<h1>Features of {escape(str(interp.get('model', '')))}</h1>"
        f'<p class="muted">{escape(str(interp.get("run", "")))} · scores are balanced accuracy '
        "(detection, fuzzing; 0.5 = chance) and Pearson r (simulation), LLM-free (n-gram "
        "explainer). In brackets: the same scores on a feature subset and on null controls.</p>"
        + table(["dictionary", "hook", "d_sae", "alive", "scored", *SCORE_COLUMNS], rows)
        + "".join(f"<p>{n}</p>" for n in notes)
        + (_scorecard_html(scorecard) if scorecard else "")
        + extra
    )
    return page("saekit dashboard", body, depth=0)


def _table_page(name: str, summary: dict[str, Any], rows: list[dict[str, Any]]) -> str:
    heads = [
        "feature",
        "log10 density",
        "max act",
        "token entropy",
        *SCORE_COLUMNS,
        "explanation",
        "top tokens",
    ]
    body_rows = []
    for r in rows:
        d = r["density"]
        log_d = math.log10(d) if d > 0 else -99.0
        link = f'<a href="{r["index"]}.html">{r["index"]}</a>' if d > 0 else str(r["index"])
        vals = [
            r["index"],
            log_d,
            r["max_act"],
            r.get("token_entropy"),
            *(r.get(c) for c in SCORE_COLUMNS),
        ]
        shown = [
            link,
            fmt(log_d, 2) if d > 0 else "dead",
            fmt(r["max_act"]),
            fmt(r.get("token_entropy")),
            *(fmt(r.get(c)) for c in SCORE_COLUMNS),
        ]
        cells = "".join(
            f'<td data-v="{v if v is not None else ""}">{s}</td>' for v, s in zip(vals, shown)
        )
        text = " | ".join(r["explanation"])
        toks = " ".join(f"<code>{escape(t)}</code>" for t in r["top_tokens"])
        body_rows.append(
            f'<tr class="{"dead" if d <= 0 else ""}">{cells}'
            f"<td>{escape(text)}</td><td>{toks}</td></tr>"
        )
    head = "".join(f'<th data-col="{i}">{escape(h)}</th>' for i, h in enumerate(heads))
    controls = (
        '<div class="filters"><input id="q" type="search" placeholder="filter: explanation, '
        'tokens, index"> <label>min detection <input id="mindet" type="number" step="0.05" '
        'value="0" min="0" max="1"></label> <label><input id="hidedead" type="checkbox" '
        'checked> hide dead</label> <span id="shown"></span></div>'
    )
    body = (
        f'<p><a href="../index.html">all dictionaries</a></p><h1>{escape(name)}</h1>'
        f'<p class="muted">hook {escape(shown_hook(summary))} · {summary["d_sae"]} features · '
        f"{summary['alive']} fired on {summary['n_tokens']:,} held-out tokens · "
        f"{summary['scored']} scored. Click a header to sort.</p>{controls}"
        f'<table id="features" class="features"><thead><tr>{head}</tr></thead>'
        f"<tbody>{''.join(body_rows)}</tbody></table>"
    )
    return page(f"{name} features", body, depth=1, script=True)


def _feature_page(name: str, f: dict[str, Any], curve: dict[str, list[float]] | None) -> str:
    i, scale = f["index"], f["max_act"]
    stats = [
        ["density", fmt(f["density"])],
        ["fired on tokens", fmt(f["count"])],
        ["max / mean activation", f"{fmt(f['max_act'])} / {fmt(f['mean_act'])}"],
        [
            "top-token entropy / previous-token entropy",
            f"{fmt(f.get('token_entropy'))} / {fmt(f.get('prev_token_entropy'))}",
        ],
        ["explanation (n-grams)", escape(" | ".join(f["explanation"])) or "–"],
        [
            "explanation train accuracy / F1",
            f"{fmt(f.get('explanation_train_accuracy'))} / {fmt(f.get('explanation_f1'))}",
        ],
        *([c, fmt(f.get(c))] for c in SCORE_COLUMNS),
        *([f"{c} (LLM judge)", fmt(f[c])] for c in ("llm_detection", "llm_fuzzing") if c in f),
        [
            "activating examples train / test",
            f"{fmt(f.get('n_train_active'))} / {fmt(f.get('n_test_active'))}",
        ],
    ]
    hist = f["histogram"]
    parts = [
        f'<p><a href="index.html">{escape(name)}</a> · <a href="../index.html">all</a></p>',
        f"<h1>Feature {i}</h1>",
        '<div class="cols"><div>' + table(["statistic", "value"], stats, "kv") + "</div><div>",
        "<h3>Activation histogram</h3>",
        bar_chart(hist["edges"], hist["counts"], "log10 activation"),
        "<h3>Top tokens</h3><p>"
        + " ".join(f"<code>{escape(t)}</code>×{c}" for t, c in f["top_token_counts"])
        + "</p></div></div>",
    ]
    if curve is not None:
        parts += [
            "<h2>Steering</h2>",
            line_chart(curve["kl"], curve["score"], "KL budget", "steering score"),
        ]
    parts += [
        "<h2>Top activating examples</h2>",
        '<p class="muted">max activation left; · marks a train-split example</p>',
        examples(f["top_examples"], scale),
        "<h2>Samples across activation quantiles</h2>",
    ]
    for q, group in enumerate(f["quantiles"]):
        parts.append(f"<h4>quantile {q + 1} (highest first)</h4>" + examples(group, scale))
    if "logits" in f:
        lg = f["logits"]
        rows = [
            [f"<code>{escape(a[0])}</code>", fmt(a[1]), f"<code>{escape(b[0])}</code>", fmt(b[1])]
            for a, b in zip(lg["top"], lg["bottom"])
        ]
        parts += [
            "<h2>Vocabulary projection</h2>",
            table(["promoted", "logit", "suppressed", "logit"], rows, "logits"),
        ]
    for key, title in (
        ("cooccurrence", "Co-occurring features (Jaccard over examples)"),
        ("decoder_neighbours", "Most similar decoder directions (cosine)"),
    ):
        links = " ".join(
            f'<a href="{j}.html">{j}</a> <span class=muted>{v:.2f}</span>' for j, v in f[key]
        )
        parts.append(f"<h3>{title}</h3><p>{links or '–'}</p>")
    return page(f"{name} feature {i}", "\n".join(parts), depth=1)


def write_assets(site: Path) -> None:
    """The stylesheet and table script under site/assets/ (pages link them relatively)."""
    assets = resources.files("saekit.dashboard") / "assets"
    (site / "assets").mkdir(parents=True, exist_ok=True)
    for fname in ("style.css", "table.js"):
        (site / "assets" / fname).write_text((assets / fname).read_text())


def build_dashboard(
    run_dir: str | Path, out_dir: str | Path | None = None, **interp_kwargs: Any
) -> Path:
    """Write the site (computing interp data first when missing); return its index.html."""
    from saekit.interp.run import load_interp, run_interp_eval

    run = RunDir(run_dir)
    if not run.path.is_dir():
        raise SaekitError(f"{run.path} is not a directory; pass a run directory of `saekit train`.")
    interp = load_interp(run.path) or run_interp_eval(run.path, **interp_kwargs)
    site = Path(out_dir) if out_dir is not None else run.dashboard
    write_assets(site)
    for name, summary in interp["saes"].items():
        src = run.path / summary["features_dir"]
        if not (src / "table.json").is_file():
            raise SaekitError(
                f"{src}/table.json is missing; rerun `saekit dashboard {run.path} --recompute`."
            )
        rows = json.loads((src / "table.json").read_text())
        dest = site / name
        if dest.exists():
            shutil.rmtree(dest)
        _write(dest / "index.html", _table_page(name, summary, rows))
        curves = steering_curves(run.path, name)
        for f in tqdm(
            sorted((src / "features").glob("*.json")),
            desc=f"pages {name}",
            disable=len(rows) < 2000,
        ):
            feat = json.loads(f.read_text())
            page_html = _feature_page(name, feat, curves.get(str(feat["index"])))
            _write(dest / f"{feat['index']}.html", page_html)
    report = run.read_json(run.report)
    scorecard = report.get("scorecard") if isinstance(report, dict) else None
    steering = run.read_json(run.steering)
    extra = ""
    if isinstance(steering, dict) and steering.get("study") and run.steering_study_plot.is_file():
        shutil.copy(run.steering_study_plot, site / run.steering_study_plot.name)
        extra = _steering_study_html(steering["study"], run.steering_study_plot.name)
    extra += selection_section(run, site)
    _write(site / "index.html", _index_page(interp, scorecard, extra))
    return site / "index.html"


__all__ = ["build_dashboard", "context", "steering_curves", "write_assets"]
