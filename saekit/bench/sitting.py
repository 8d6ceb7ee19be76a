"""One sitting of every anchored bench, and the README table generated from its JSON.

    python -m saekit.bench.sitting run benchmarks/sitting     # every bench, one JSON each
    python -m saekit.bench.sitting table benchmarks/sitting   # rewrite the Markdown tables

`run` executes the benches one after the other in this process (each under the shared
protocol, at 1 thread and at all threads) and writes NAME.json plus sitting.json (date, commit,
load average before and after, CPU count). `table` renders those files into the Benchmarks
table and writes it between `<!-- bench-table:start -->` and `<!-- bench-table:end -->` in every
Markdown file under the repository root that holds the markers, so no figure is typed by hand.
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

from saekit.errors import SaekitError

START, END = "<!-- bench-table:start -->", "<!-- bench-table:end -->"
SITTING: dict[str, dict[str, Any]] = {
    "stream": {},
    "train": {},
    "kernels": {"quick": True, "methods": False},
    "select": {"n_samples": 32},
    "snmf": {},
    "mp": {},
}
"""Benches of a sitting and their options, sized so a sitting on 2 shared cores takes well
under an hour: kernels at its first shape without the per-method steps, select on 37
samples (32 pool + 5 target)."""


def _write_json(path: Path, obj: Any) -> None:
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps(obj, indent=1))
    tmp.replace(path)


def now_utc() -> str:
    """The date and minute a bench record carries."""
    return datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%d %H:%M UTC")


def current_commit() -> str:
    """HEAD, with "+changes" when the package's own files differ from it (then HEAD alone does
    not say what was measured)."""
    try:
        out = subprocess.run(
            ["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True, check=True
        )
        changed = subprocess.run(
            ["git", "status", "--porcelain", "--", "saekit"],
            capture_output=True,
            text=True,
            check=True,
        )
    except (OSError, subprocess.CalledProcessError):
        return "unknown"
    return out.stdout.strip() + ("+changes" if changed.stdout.strip() else "")


def run_sitting(out: Path, names: tuple[str, ...] = tuple(SITTING)) -> None:
    """Run `names` and record when, at which commit and under what load each ran. A partial
    run (`--only`) keeps the other benches' JSON and their own record, so the table says which
    figures come from which sitting."""
    import importlib

    from saekit.bench import BENCHES

    out.mkdir(parents=True, exist_ok=True)
    meta_path = out / "sitting.json"
    old = json.loads(meta_path.read_text()) if meta_path.exists() else {}
    runs = {n: _bench_record(old, n) for n in old.get("benches", []) if n not in names}
    record = {
        "date": now_utc(),
        "commit": current_commit(),
        "cpu_count": os.cpu_count(),
        "load_average_before": list(os.getloadavg()),
        # On a shared machine a sitting may run at raised priority; the table says so.
        "nice": os.nice(0),
    }
    for name in names:
        print(f"sitting: bench {name}", file=sys.stderr)
        result = importlib.import_module(BENCHES[name]).run(**SITTING[name])
        _write_json(out / f"{name}.json", result)
    record["load_average_after"] = list(os.getloadavg())
    runs |= {n: record for n in names}
    benches = [n for n in SITTING if n in runs]
    _write_json(meta_path, {"benches": benches, "runs": {n: runs[n] for n in benches}})


_RECORD_KEYS = ("date", "commit", "cpu_count", "load_average_before", "load_average_after", "nice")


def _bench_record(meta: dict[str, Any], name: str) -> dict[str, Any]:
    """When and how `name` ran: its own record, or the whole sitting's (older files)."""
    if "runs" in meta:
        return dict(meta["runs"][name])
    return {k: meta[k] for k in _RECORD_KEYS if k in meta}


# ---- the table -------------------------------------------------------------------------------
def _fmt(x: float) -> str:
    return f"{x:.2f}" if x < 10 else f"{x:.1f}" if x < 100 else f"{x:,.0f}"


def _r3(x: float) -> str:
    """A ratio compared with a target: three decimals, so "met" never hides behind rounding."""
    return f"{x:.3f}"


MET: dict[str, Any] = {
    "train": lambda t: t["ratio_vs_anchor"] >= 1.8 and t["saekit_step_vs_gemm"] <= 1.3,
    "stream": lambda t: t["ratio_vs_anchor"] >= 0.9 and t["five_hooks_cost_vs_one"] <= 1.2,
    "snmf": lambda t: t["ratio_vs_anchor"] > 1,
    # mp: the speed target that applies (bench mp decides it from the floor) and MP ≤ 3x TopK.
    "mp": lambda t: all(t["target_met"].values()) and t["mp_vs_topk"] <= 3,
}
"""Each bench's targets (its JSON `targets`) as a test of one thread count's figures."""


def _ratio(t: dict[str, Any], anchor: str, side: str) -> str:
    """ratio_vs_anchor and, in brackets, its range over the rounds: each round times both
    sides back to back, so the spread of the per-round ratios shows the machine's noise."""
    per_round = [a / b for a, b in zip(t["rounds_ms"][anchor], t["rounds_ms"][side])]
    return f"{_r3(t['ratio_vs_anchor'])} ({min(per_round):.2f}–{max(per_round):.2f})"


def _rows(name: str, r: dict[str, Any]) -> list[list[str]]:
    """Cells per thread count: bench, threads, saekit, anchor, ratio_vs_anchor, also, target."""
    rows, mets = [], []
    for t in r.get("threads", []):
        n = str(t["threads"])
        mets.append("" if name not in MET else " (met)" if MET[name](t) else " (**missed**)")
        if name == "train":
            best = t["fastest_peer"]
            tps = t["tokens_per_s"]
            others = ", ".join(
                f"{p} {_fmt(tps['saekit'] / tps[p])}x" for p in t["ratio_vs_peer"] if p != best
            )
            rows.append(
                [
                    n,
                    f"{_fmt(tps['saekit'])} tok/s",
                    f"{best} {_fmt(tps[best])} tok/s",
                    _ratio(t, best, "saekit"),
                    f"step = {_r3(t['saekit_step_vs_gemm'])}x encoder GEMM; vs {others}",
                ]
            )
        elif name == "stream":
            tps = t["tokens_per_s"]
            rows.append(
                [
                    n,
                    f"{_fmt(tps['stream_1'])} tok/s",
                    f"bare forward {_fmt(tps['bare'])} tok/s",
                    _ratio(t, "bare", "stream_1"),
                    f"{r['n_hooks']} hooks cost {_r3(t['five_hooks_cost_vs_one'])}x one hook",
                ]
            )
        elif name == "kernels":
            (op,) = t["ops"][:1]
            total = sum(op["sparse_ms"].values()) / op["gemm_ms"]
            per_op = ", ".join(f"{k} {_fmt(v)}x" for k, v in op["speedup"].items())
            rows.append(
                [
                    n,
                    "sparse ops",
                    "dense ops",
                    "—",
                    f"{op['d_in']}×{op['d_sae']}×k{op['k']}: {per_op}; all sparse ops = "
                    f"{_fmt(total)} encoder GEMM",
                ]
            )
        elif name == "select":
            rows.append(
                [
                    n,
                    f"MoNA {_fmt(t['mona_samples_per_s'])} samples/s",
                    f"RDS {_fmt(t['rds_samples_per_s'])} samples/s",
                    _ratio(t, "rds", "mona"),
                    f"{r['samples']} samples embedded and scored per call",
                ]
            )
        elif name == "snmf":
            rows.append(
                [
                    n,
                    f"{_fmt(t['saekit_s_per_iter'])} s/iter",
                    f"dense loop {_fmt(t['anchor_s_per_iter'])} s/iter",
                    _ratio(t, "anchor", "saekit"),
                    f"streaming 1M tokens: {_fmt(r['stream_peak_rss_gb'])} GB peak RSS",
                ]
            )
        elif name == "mp":
            tps, best = t["tokens_per_s"], t["fastest_peer"]
            rows.append(
                [
                    n,
                    f"{_fmt(tps['saekit_mp'])} tok/s",
                    f"{best} {_fmt(tps[best])} tok/s",
                    _ratio(t, best, "saekit_mp"),
                    f"vs SAELens {_r3(t['ratio_vs_saelens'])}x; step = "
                    f"{_r3(t['step_vs_floor'])}x the exact-MP floor (c0 GEMM + symmetric Gram), "
                    f"which caps any exact MP at {_fmt(t['exact_mp_ceiling'])}x SAELens; "
                    f"MP step = {_r3(t['mp_vs_topk'])}x TopK step",
                ]
            )
        else:
            rows.append([n, "", "", _r3(t["ratio_vs_anchor"]), ""])
    if not rows and "ratio_vs_anchor" in r:  # a bench not (yet) on the shared protocol
        rows.append(
            [
                str(r.get("torch_threads", "?")),
                "",
                "",
                _fmt(r["ratio_vs_anchor"]),
                f"rounds {r.get('rounds', '?')}, not the shared protocol",
            ]
        )
    target = "; ".join(f"{k} {v}" for k, v in r.get("targets", {}).items())
    mets += [""] * (len(rows) - len(mets))
    return [[f"`{name}`", *row, target + met] for row, met in zip(rows, mets)]


def render(sitting_dir: Path) -> str:
    meta_path = sitting_dir / "sitting.json"
    if not meta_path.exists():
        raise SaekitError(f"{meta_path} not found: run `python -m saekit.bench.sitting run` first.")
    meta = json.loads(meta_path.read_text())
    lines = [
        "| bench | threads | saekit | anchor (fastest peer) | ratio_vs_anchor (per-round range) "
        "| also | target |",
        "|---|---:|---|---|---:|---|---|",
    ]
    for name in meta["benches"]:
        path = sitting_dir / f"{name}.json"
        if path.exists():
            lines += [
                "| " + " | ".join(row) + " |" for row in _rows(name, json.loads(path.read_text()))
            ]
    lines += _kernel_methods(sitting_dir / "kernels.json")
    train_path = sitting_dir / "train.json"
    if train_path.exists():
        train = json.loads(train_path.read_text())
        lines += ["", *(f"Not timed in `train`: {k}: {v}." for k, v in train["errors"].items())]
        if train.get("memory"):
            peaks = ", ".join(
                f"{side} {m['step_peak_delta_mb']:+.0f} MB" for side, m in train["memory"].items()
            )
            lines.append(
                f"`train` step working memory (peak RSS above resident, each side alone in a "
                f"subprocess, {train['protocol']['threads'][-1]} threads): {peaks}."
            )
    groups: dict[str, list[str]] = {}
    for name in meta["benches"]:
        rec = _bench_record(meta, name)
        groups.setdefault(json.dumps(rec, sort_keys=True), []).append(f"`{name}`")
    sittings = []
    for key, names in groups.items():
        rec = json.loads(key)
        before, after = rec["load_average_before"], rec["load_average_after"]
        nice = rec.get("nice", 0)
        priority = f", process niceness {nice}" if nice < 0 else ""
        which = "" if len(groups) == 1 else ", ".join(names) + ": "
        sittings.append(
            f"{which}{rec['date']}, commit {rec['commit']}, {rec['cpu_count']} CPU cores, load "
            f"average {before[0]:.1f} before and {after[0]:.1f} after{priority}"
        )
    how = "one sitting" if len(groups) == 1 else f"{len(groups)} sittings"
    lines += [
        "",
        f"Generated by `python -m saekit.bench.sitting table` from {how} "
        f"(`python -m saekit.bench.sitting run`; {'; '.join(sittings)}). Each bench ran at 1 "
        "thread and at all threads; figures are medians of ≥ 5 rounds in rotating order after "
        "the same warm-up per side.",
    ]
    return "\n".join(lines)


def _kernel_methods(path: Path) -> list[str]:
    """`bench kernels`' training_forward + backward per method, kernels auto vs dense."""
    if not path.exists():
        return []
    r = json.loads(path.read_text())
    shape = r.get("methods_shape")
    if not shape:
        return []
    lines = [
        "",
        f"`kernels`, one training_forward + backward at d_in {shape['d_in']}, d_sae "
        f"{shape['d_sae']}, k {shape['k']}, B {r['batch']} (ms, sparse kernels vs dense autograd):",
        "",
        "| method | threads | sparse (auto) ms | dense ms | speed-up |",
        "|---|---:|---:|---:|---:|",
    ]
    for t in r["threads"]:
        for method, ms in t["methods_ms"].items():
            lines.append(
                f"| {method} | {t['threads']} | {ms['auto']:.0f} | {ms['dense']:.0f} | "
                f"{ms['dense'] / ms['auto']:.1f}x |"
            )
    return lines


def markdown_files(root: Path) -> list[Path]:
    skip = {".git", ".venv", "runs", "node_modules"}
    found = []
    for dirpath, dirnames, filenames in os.walk(root):
        dirnames[:] = [d for d in dirnames if d not in skip and not d.startswith(".")]
        found += [Path(dirpath) / f for f in filenames if f.endswith(".md")]
    return sorted(found)


def update_markdown(
    root: Path,
    table: str,
    markers: tuple[str, str] = (START, END),
    files: list[Path] | None = None,
) -> list[Path]:
    """Replace the text between the markers in every Markdown file under `root` holding them
    (or in `files`)."""
    start, end = markers
    changed = []
    for path in markdown_files(root) if files is None else files:
        text = path.read_text()
        if start not in text:
            continue
        head, rest = text.split(start, 1)
        if end not in rest:
            raise SaekitError(f"{path}: {start} without {end}; add the end marker.")
        _, tail = rest.split(end, 1)
        new = f"{head}{start}\n{table}\n{end}{tail}"
        if new != text:
            tmp = path.with_suffix(".md.tmp")
            tmp.write_text(new)
            tmp.replace(path)
            changed.append(path)
    return changed


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m saekit.bench.sitting", description=__doc__)
    parser.add_argument("action", choices=["run", "table"])
    parser.add_argument("dir", help="directory of the sitting's JSON files")
    parser.add_argument("--root", default=".", help="where to look for Markdown files (table)")
    parser.add_argument("--only", default="", help="run: comma-separated benches (default all)")
    args = parser.parse_args(argv)
    try:
        if args.action == "run":
            names = tuple(args.only.split(",")) if args.only else tuple(SITTING)
            unknown = sorted(set(names) - set(SITTING))
            if unknown:
                raise SaekitError(f"--only {unknown}: choose from {', '.join(SITTING)}.")
            run_sitting(Path(args.dir), names)
        else:
            changed = update_markdown(Path(args.root), render(Path(args.dir)))
            print("updated: " + (", ".join(map(str, changed)) or "nothing (already current)"))
    except SaekitError as exc:
        parser.exit(2, f"saekit: error: {exc}\n")


if __name__ == "__main__":
    main()
