"""The figures of `saekit bench quality`: per-side summaries over seeds, the ratios against the
best peer, the table and the FVU-vs-tokens PNG.

    python -m saekit.bench.quality_report publish runs/bench-quality benchmarks/quality

copies a finished bench's quality.json and PNG to the second directory and writes its compact
table between `<!-- quality-table:start -->` and `<!-- quality-table:end -->` in every Markdown
file under the repository root that holds the markers, so no figure is typed by hand.

A side's configuration is `default` (the library's own lr) or `tuned` (its tuned lr; the same
runs when tuning kept the default). One rule picks the configuration of every library that is
compared: the lowest mean held-out FVU at the end of training. The best peer is the peer
configuration it picks among all of the peers'; saekit's is the one it picks among saekit's two.
saekit/tuned's ratios per budget point are reported beside them. Every figure is the mean over
seeds with its min–max range; wall-clock is the median over seeds.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from saekit.activations.stats import OUTLIER_MULTIPLE
from saekit.bench.sitting import markdown_files, update_markdown
from saekit.errors import SaekitError
from saekit.rundir import write_json

METRICS = (
    "fvu",
    "fvu_inliers",
    "ce_loss_score",
    "kl_sae",
    "l0_mean",
    "dead_fraction",
    "dense_fraction",
)
LOWER_IS_BETTER = {
    "fvu": True,
    "fvu_inliers": True,
    "ce_loss_score": False,
    "kl_sae": True,
    "dead_fraction": True,
}
TARGETS = {
    "fvu_at_every_budget_point": "saekit ≤ best peer at each point (mean over seeds)",
    "dead_fraction": "saekit ≤ best peer",
    "wall_s": "saekit < best peer",
}


def _spread(values: Sequence[float]) -> dict[str, float]:
    return {"mean": statistics.fmean(values), "min": min(values), "max": max(values)}


def summarize(
    runs: dict[str, dict[str, Any]], sides: Sequence[str], seeds: Sequence[int]
) -> dict[str, Any]:
    """Summaries per side/config, curves, the best peer, ratios and targets."""
    summary: dict[str, Any] = {}
    curves: dict[str, list[list[float]]] = {}
    for side in sides:
        for config in ("default", "tuned"):
            done = [runs[f"{side}/{config}/seed{s}"] for s in seeds]
            key = f"{side}/{config}"
            summary[key] = {m: _spread([r[m] for r in done]) for m in METRICS}
            summary[key]["wall_s"] = statistics.median(r["wall_s"] for r in done)
            summary[key]["lr"] = done[0]["lr"]
            points = [dict(r["curve"]) for r in done]
            tokens = sorted(set.intersection(*(set(p) for p in points)))
            curves[key] = [[t, *_spread([p[t] for p in points]).values()] for t in tokens]
    digests = {r["rows_digest"] for r in runs.values()}
    out: dict[str, Any] = {
        "summary": summary,
        "curves": curves,
        "same_rows": len(digests) == 1,
        "targets": TARGETS,
    }
    peers = [k for k in summary if not k.startswith("saekit/")]
    if "saekit" in sides and peers:
        best, chosen = pick(summary, peers), pick(summary, ["saekit/default", "saekit/tuned"])
        ours, theirs = summary[chosen], summary[best]
        ratios = {m: _ratio(ours[m]["mean"], theirs[m]["mean"]) for m in LOWER_IS_BETTER}
        ratios["wall_s"] = ours["wall_s"] / theirs["wall_s"]
        by_point = [a[1] / b[1] for a, b in zip(curves[chosen], curves[best])]
        tuned = [a[1] / b[1] for a, b in zip(curves["saekit/tuned"], curves[best])]
        out |= {
            "best_peer": best,
            "saekit_config": chosen,
            "ratios_vs_best_peer": ratios
            | {"fvu_by_budget_point": by_point, "tuned_fvu_by_budget_point": tuned},
            "met": {
                "fvu_at_every_budget_point": max(by_point) <= 1,
                "dead_fraction": ours["dead_fraction"]["mean"] <= theirs["dead_fraction"]["mean"],
                "wall_s": ours["wall_s"] < theirs["wall_s"],
            },
        }
    return out


def pick(summary: dict[str, Any], keys: Sequence[str]) -> str:
    """The configuration with the lowest mean held-out FVU (the first of equals)."""
    return min(keys, key=lambda k: float(summary[k]["fvu"]["mean"]))


def _ratio(ours: float, theirs: float) -> float | None:
    """ours / theirs; 1 when both are 0 (no dead latents on either side), None (no finite
    ratio; JSON null) when only theirs is."""
    if theirs:
        return ours / theirs
    return 1.0 if ours == 0 else None


def _x(ratio: float | None) -> str:
    return "n/a" if ratio is None else f"{ratio:.3f}x"


def _cell(s: dict[str, float], fmt: str) -> str:
    return f"{s['mean']:{fmt}} ({s['min']:{fmt}}–{s['max']:{fmt}})"


def table(result: dict[str, Any]) -> str:
    """Markdown table of every side/config, then the ratios against the best peer."""
    cfg, h = result["config"], result["heldout"]
    n = len(cfg["seeds"])
    lines = [
        f"bench quality — TopK d_sae {cfg['d_sae']}, k {cfg['k']}, {cfg['train_tokens']:,} "
        f"training tokens of {cfg['hook']} ({cfg['model']}), batch {cfg['batch_size']}, "
        f"{n} seeds (mean, min–max); held-out: {cfg['heldout_tokens']:,} rows, CE/KL on "
        f"{cfg['ce_windows']} windows; {result['protocol']['threads']} threads, load "
        f"{result['protocol']['load_average_before'][0]:.1f} before, "
        f"{result['protocol']['load_average_after'][0]:.1f} after",
        f"held-out rows: {h['outliers']:.3%} are outliers (norm over {OUTLIER_MULTIPLE:g}x the "
        f"median) and hold {h['outlier_var']:.1%} of the total variance; max norm "
        f"{h['max_norm']:.4g}, median {h['median_norm']:.4g}",
        "",
        "| side | lr | held-out FVU | FVU w/o outliers | CE-loss score | KL | L0 | dead | dense "
        "| training time |",
        "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for key, s in result["summary"].items():
        lines.append(
            f"| {key} | {s['lr']:.2e} | {_cell(s['fvu'], '.4f')} | "
            f"{_cell(s['fvu_inliers'], '.4f')} | "
            f"{_cell(s['ce_loss_score'], '.4f')} | {_cell(s['kl_sae'], '.4f')} | "
            f"{s['l0_mean']['mean']:.1f} | {_cell(s['dead_fraction'], '.3f')} | "
            f"{_cell(s['dense_fraction'], '.3f')} | {s['wall_s']:.0f} s |"
        )
    if "best_peer" in result:
        r, met = result["ratios_vs_best_peer"], result["met"]
        points = ", ".join(f"{x:.3f}" for x in r["fvu_by_budget_point"])
        tuned = ", ".join(f"{x:.3f}" for x in r["tuned_fvu_by_budget_point"])
        lines += [
            "",
            f"{result['saekit_config']} (saekit's lower-FVU configuration) vs the best "
            f"peer ({result['best_peer']}): FVU {_x(r['fvu'])} "
            f"(per budget point: {points}; without outliers {_x(r['fvu_inliers'])}), "
            f"CE-loss score {_x(r['ce_loss_score'])}, KL {_x(r['kl_sae'])}, dead "
            f"{_x(r['dead_fraction'])}, wall-clock {_x(r['wall_s'])}",
            f"saekit/tuned vs the best peer per budget point: {tuned}",
            "targets: "
            + "; ".join(
                f"{k}: {TARGETS[k]} ({'met' if met[k] else '**missed**'})" for k in TARGETS
            ),
        ]
    if not result["same_rows"]:
        lines.append("WARNING: the sides did not read the same rows (row digests differ)")
    return "\n".join(lines)


def plot(result: dict[str, Any], out: Path) -> Path:
    """Held-out FVU vs training tokens: one curve per library, its configuration with the
    lower FVU (mean over seeds, min–max band); saekit's other configuration dashed."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 4))
    summary, curves = result["summary"], result["curves"]
    for side in dict.fromkeys(key.split("/")[0] for key in curves):
        chosen = pick(summary, [f"{side}/default", f"{side}/tuned"])
        for key in (f"{side}/default", f"{side}/tuned"):
            if not curves[key] or (key != chosen and side != "saekit"):
                continue
            tokens, mean, lo, hi = zip(*curves[key])
            label = f"{key} (lr {summary[key]['lr']:.2g})"
            if key != chosen:
                ax.plot(tokens, mean, ls="--", lw=1, color="grey", label=label)
                continue
            ax.plot(tokens, mean, marker="o", ms=3, label=label)
            ax.fill_between(tokens, lo, hi, alpha=0.25)
    cfg = result["config"]
    ax.set_xlabel("training tokens")
    ax.set_ylabel("held-out FVU")
    ax.set_yscale("log")
    ax.set_title(
        f"TopK d_sae {cfg['d_sae']}, k {cfg['k']}, {cfg['hook']}, {len(cfg['seeds'])} seeds",
        fontsize=9,
    )
    ax.legend(fontsize=8)
    fig.tight_layout()
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out, dpi=110)
    plt.close(fig)
    return out


# ---- the published table ---------------------------------------------------------------------
MARKERS = ("<!-- quality-table:start -->", "<!-- quality-table:end -->")
PNG = "fvu-vs-tokens.png"


def _pm(s: dict[str, float], fmt: str) -> str:
    """Mean ± half the min–max range over seeds."""
    return f"{s['mean']:{fmt}} ±{(s['max'] - s['min']) / 2:{fmt}}"


def compact_table(result: dict[str, Any], png: str = "") -> str:
    """The README's table: every side/config, ratios, targets, and where the figures come from."""
    cfg, p = result["config"], result["protocol"]
    lines = [f"![FVU vs tokens]({png})", ""] if png else []
    lines += [
        "| side | lr | held-out FVU | w/o outliers | CE-loss score | KL | dead | training |",
        "|---|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for key, v in result["summary"].items():
        lines.append(
            f"| {key} | {v['lr']:.2e} | {_pm(v['fvu'], '.4f')} | {_pm(v['fvu_inliers'], '.4f')} "
            f"| {_pm(v['ce_loss_score'], '.3f')} | {_pm(v['kl_sae'], '.3f')} | "
            f"{v['dead_fraction']['mean']:.1%} | {v['wall_s']:.0f} s |"
        )
    if "best_peer" in result:
        r, met = result["ratios_vs_best_peer"], result["met"]
        worst, tuned = max(r["fvu_by_budget_point"]), max(r["tuned_fvu_by_budget_point"])
        lines += [
            "",
            f"{result['saekit_config']} (saekit's lower-FVU configuration) ÷ the best peer "
            f"({result['best_peer']}): FVU {_x(r['fvu'])}, at the worst budget point "
            f"{_x(worst)}; dead {_x(r['dead_fraction'])}; training {_x(r['wall_s'])}. Targets: "
            + "; ".join(f"{k} {'met' if met[k] else '**missed**'}" for k in TARGETS)
            + f". saekit/tuned's worst budget point: {_x(tuned)}.",
        ]
    when = ", ".join(x for x in (p.get("date"), p.get("commit") and f"commit {p['commit']}") if x)
    # Runs kept from earlier sittings may have been trained by other code: say so.
    commits = sorted({str(r.get("commit", "unrecorded")) for r in result.get("runs", {}).values()})
    kept = (
        f"; runs trained at {', '.join(commits)}" if commits not in ([], [p.get("commit")]) else ""
    )
    lines += [
        "",
        f"TopK d_sae {cfg['d_sae']}, k {cfg['k']}, {cfg['train_tokens']:,} tokens, "
        f"{len(cfg['seeds'])} seeds (mean ± half the range; training: median); printed by "
        f"`saekit bench quality` ({when + ', ' if when else ''}{p['threads']} threads, load "
        f"{p['load_average_before'][0]:.1f} → {p['load_average_after'][0]:.1f}{kept}).",
    ]
    return "\n".join(lines)


def publish(src: Path, dest: Path, root: Path) -> list[Path]:
    """Copy the bench's quality.json and PNG to `dest`; write the table where it is marked.
    Everything is read and checked before anything is written."""
    found, png_src = src / "quality.json", src / PNG
    if not found.is_file() or not png_src.is_file():
        missing = found if not found.is_file() else png_src
        raise SaekitError(
            f"{missing} not found: run `saekit bench quality --quality.out_dir {src}` to the end "
            "first (it continues from the runs it kept)."
        )
    try:
        result = json.loads(found.read_text())
        compact_table(result)  # a result without its figures fails here, pages or not
        tables = {
            page: compact_table(result, os.path.relpath(dest / PNG, page.parent))
            for page in _marked(root)
        }
    except (ValueError, KeyError) as exc:
        raise SaekitError(
            f"{found} is not a finished bench's result ({type(exc).__name__}: {exc}); run "
            f"`saekit bench quality --quality.out_dir {src}` again to rewrite it."
        ) from None
    for page in tables:
        if MARKERS[1] not in page.read_text().split(MARKERS[0], 1)[1]:
            raise SaekitError(f"{page}: {MARKERS[0]} without {MARKERS[1]}; add the end marker.")
    dest.mkdir(parents=True, exist_ok=True)
    tmp = dest / f"{PNG}.partial"
    shutil.copyfile(png_src, tmp)
    tmp.replace(dest / PNG)
    write_json(dest / "quality.json", result | {"plot": str(dest / PNG)})
    changed = []
    for page, table in tables.items():
        changed += update_markdown(root, table, MARKERS, [page])
    return changed


def _marked(root: Path) -> list[Path]:
    return [p for p in markdown_files(root) if MARKERS[0] in p.read_text()]


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m saekit.bench.quality_report")
    parser.add_argument("action", choices=["publish"])
    parser.add_argument("src", help="the bench's --quality.out_dir")
    parser.add_argument("dest", help="where quality.json and the PNG are kept (committed)")
    parser.add_argument("--root", default=".", help="where to look for Markdown files")
    args = parser.parse_args(argv)
    try:
        changed = publish(Path(args.src), Path(args.dest), Path(args.root))
    except SaekitError as exc:
        parser.exit(2, f"saekit: error: {exc}\n")
    print("updated: " + (", ".join(map(str, changed)) or "nothing (already current)"))


if __name__ == "__main__":
    main()
