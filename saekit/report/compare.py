"""`saekit eval compare RUN_OR_SAE [...]`: the scorecards of several dictionaries in one table,
each against the first (the reference), with the difference's 95% interval and p-value.

Every path is a saekit run directory or a single dictionary (a saekit or SAELens-format SAE
directory). A path whose report.json already holds a scorecard is read as it is; any other is
evaluated first (`saekit eval`, which writes that report.json). Differences are computed from
the per-unit columns the scorecard stores (eval/scorecard.py): paired when both scores were
measured on the same units (the same held-out windows, tasks or categories, as two dictionaries
evaluated with the same recipe data and --windows are), independent otherwise (features of
two dictionaries). A difference is marked significant when Holm's procedure over every
difference in the table rejects "no difference" at family-wise level 5%; differences over
fewer than MIN_UNITS units are shown but not tested.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from saekit.errors import SaekitError
from saekit.eval.scorecard import MIN_UNITS, Difference, Score, beats_controls, difference, holm
from saekit.report.scorecard import Card, fmt, fmt_ci, headline, load_card
from saekit.rundir import RunDir


@dataclass(frozen=True)
class Row:
    """One score of one dictionary, with its difference to the reference's same score."""

    section: str
    metric: str
    name: str
    score: Score
    diff: Difference | None
    """name − reference (None for the reference itself, or when the reference lacks it)."""
    significant: bool = False


def load_cards(
    paths: Sequence[str | Path], evaluate: Callable[[Path], dict[str, Any]]
) -> dict[str, Card]:
    """{label: card} of every dictionary under `paths`, in order; `evaluate(path)` returns
    the report of a path that has no scorecard yet. Labels are the dictionary's name, prefixed
    by its directory's name when several paths are compared."""
    cards: dict[str, Card] = {}
    for raw in paths:
        path = Path(raw)
        if not path.is_dir():
            raise SaekitError(f"{path} is not a directory; give run or SAE directories.")
        report = RunDir(path).read_json(RunDir(path).report)
        if not isinstance(report, dict) or not report.get("scorecard"):
            report = evaluate(path)
        for name, card in report["scorecard"].items():
            label = name if len(paths) == 1 else f"{path.name}/{name}"
            if label in cards:
                raise SaekitError(f"{label} is given twice; compare distinct dictionaries.")
            cards[label] = load_card(card)
    if len(cards) < 2:
        raise SaekitError(
            f"Found {len(cards)} dictionary under {', '.join(map(str, paths))}; "
            "`saekit eval compare` needs at least two (give several runs or SAE dirs)."
        )
    return cards


def compare(cards: dict[str, Card], seed: int = 0) -> list[Row]:
    """Rows per headline score: the reference (first card), then each other dictionary with
    its difference to the reference and whether Holm's procedure calls it significant."""
    names = list(cards)
    ref = cards[names[0]]
    rows: list[Row] = []
    order = [(sec, m) for sec, m, _ in headline(ref)]
    order += [(sec, m) for n in names[1:] for sec, m, _ in headline(cards[n])
              if (sec, m) not in order]  # fmt: skip
    for section, metric in order:
        base = ref.get(section, {}).get(metric)
        for name in names:
            s = cards[name].get(section, {}).get(metric)
            if s is None:
                continue
            diff = None
            if base is not None and name != names[0]:
                diff = difference(s.units, base.units, seed)
            rows.append(Row(section, metric, name, s, diff))
    tested = [
        i
        for i, r in enumerate(rows)
        if r.diff is not None and r.diff.p == r.diff.p and len(r.score.units) >= MIN_UNITS
    ]
    rejected = holm([rows[i].diff.p for i in tested])  # type: ignore[union-attr]
    for i, rej in zip(tested, rejected):
        rows[i] = Row(**{**rows[i].__dict__, "significant": rej})
    return rows


def verdict(row: Row) -> str:
    """'better' / 'worse' than the reference when significant, in the score's direction
    ('differs' for a score without one, as L0)."""
    if row.diff is None or not row.significant:
        return ""
    if row.score.higher_is_better is None:
        return "differs"
    return "better" if (row.diff.value > 0) == row.score.higher_is_better else "worse"


def compare_table(rows: list[Row], reference: str) -> str:
    width = max(24, *(len(r.name) for r in rows))
    lines = [
        f"differences: dictionary − {reference} (paired when measured on the same units); "
        "significant: Holm over the table at 5%",
        f"{'section':16s} {'score':20s} {'dictionary':{width}s} {'value [95% CI]':>26s} "
        f"{'difference [95% CI]':>28s} {'p':>6s} {'':7s} resampled",
    ]
    for r in rows:
        value = f"{fmt(r.score.value)} {fmt_ci(r.score.ci)}"
        if r.diff is None:
            diff, p, kind = "reference" if r.name == reference else "-", "", ""
        else:
            diff = f"{fmt(r.diff.value)} {fmt_ci(r.diff.ci)}"
            p = f"{r.diff.p:.3f}" if r.diff.p > 0 else "<.001"  # 1,000 resamples
            kind = "paired" if r.diff.paired else "indep."
        lines.append(
            f"{r.section:16s} {r.metric[:20]:20s} {r.name:{width}s} {value:>26s} {diff:>28s} "
            f"{p:>6s} {verdict(r):7s} {r.score.resampled}{', ' + kind if kind else ''}"
        )
    return "\n".join(lines)


def compare_json(rows: list[Row]) -> list[dict[str, Any]]:
    return [
        {
            "section": r.section,
            "metric": r.metric,
            "dictionary": r.name,
            "value": r.score.value,
            "ci": list(r.score.ci),
            "difference": None
            if r.diff is None
            else {
                "value": r.diff.value,
                "ci": list(r.diff.ci),
                "p": r.diff.p,
                "paired": r.diff.paired,
                "significant": r.significant,
            },
        }  # fmt: skip
        for r in rows
    ]


_BEATS = {"yes": "✓", "no": "✗", "~": "~", "few": "few"}


def short_labels(names: Sequence[str]) -> dict[str, str]:
    """Column headers: each dictionary's own name without its run directory, position prefix
    and hook ("runs/x/02-jumprelu-blocks.12.hook_resid_post" → "jumprelu"); the full name
    is kept where shortening would make two headers equal."""
    short = {}
    for name in names:
        base = re.sub(r"^\d+-", "", name.rpartition("/")[2])
        short[name] = re.split(r"-blocks\.|-hook_", base)[0] or name
    if len(set(short.values())) < len(short):
        return {n: n for n in names}
    return short


def compare_markdown(rows: list[Row], reference: str) -> str:
    """Two Markdown tables, scores down and dictionaries across (the README's form): every
    score with its 95% interval, ↑/↓ where Holm calls the difference to the first dictionary
    significant in the score's direction (≠ for L0); then each score's margin over its
    strongest null control, ✓ when the margin's interval lies above 0, ✗ below, ~ across."""
    names = list(dict.fromkeys(r.name for r in rows))
    label = short_labels(names)
    scores = list(dict.fromkeys((r.section, r.metric) for r in rows))
    cell = {(r.section, r.metric, r.name): r for r in rows}
    head = "| section | score | " + " | ".join(label[n] for n in names) + " |"
    rule = "|---|---|" + "---:|" * len(names)
    mark = {"better": " ↑", "worse": " ↓", "differs": " ≠", "": ""}

    def table(fill: Callable[[Row], str]) -> list[str]:
        lines = [head, rule]
        for section, metric in scores:
            got = [cell.get((section, metric, n)) for n in names]
            lines.append(
                f"| {section} | {metric} | "
                + " | ".join("–" if r is None else fill(r) for r in got)
                + " |"
            )
        return lines

    def value(r: Row) -> str:
        return f"{fmt(r.score.value)} {fmt_ci(r.score.ci)}{mark[verdict(r)]}"

    def margin(r: Row) -> str:
        s = r.score
        if s.margin is None or s.margin_ci is None:
            return "–"
        beats = _BEATS.get(beats_controls(s.margin_ci, len(s.units)), "")
        return f"{fmt(s.margin)} {fmt_ci(s.margin_ci)} {beats} ({s.strongest_control})"

    legend = ", ".join(f"{label[n]} = {n}" for n in names if label[n] != n)
    return "\n".join(
        [
            f"Scores with 95% intervals; ↑/↓: Holm-significant difference to {label[reference]}"
            " (5%, over the whole table)." + (f" Columns: {legend}." if legend else ""),
            "",
            *table(value),
            "",
            "Margin over the strongest null control (> 0: better than random directions with the"
            " dictionary's norms and than its untrained initialization), 95% interval;"
            " ✓ interval above 0, ✗ below, ~ across.",
            "",
            *table(margin),
        ]
    )
