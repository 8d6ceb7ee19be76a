"""The Benchmarks table is generated from a sitting's JSON and written between the markers of
every Markdown file that holds them."""

from __future__ import annotations

import json

import pytest

from saekit.bench import sitting, train
from saekit.errors import SaekitError


@pytest.fixture(scope="module")
def sitting_dir(tmp_path_factory):
    out = tmp_path_factory.mktemp("sitting")
    result = train.run(shape=train.Shape(32, 256, 4, 64), memory=False, threads=[1])
    (out / "train.json").write_text(json.dumps(result))
    meta = {
        "date": "2026-01-01 00:00 UTC",
        "commit": "abc1234",
        "cpu_count": 2,
        "load_average_before": [0.5, 0.4, 0.3],
        "load_average_after": [0.7, 0.5, 0.3],
        "benches": ["stream", "train"],  # stream.json is missing: its row is left out
    }
    (out / "sitting.json").write_text(json.dumps(meta))
    return out, result


def test_table_carries_the_json_figures(sitting_dir):
    out, result = sitting_dir
    table = sitting.render(out)
    (per,) = result["threads"]
    row = next(line for line in table.splitlines() if line.startswith("| `train`"))
    cells = [c.strip() for c in row.strip("|").split("|")]
    assert cells[1] == "1"
    assert cells[3].startswith(per["fastest_peer"])
    best = per["fastest_peer"]
    rounds = [p / s for p, s in zip(per["rounds_ms"][best], per["rounds_ms"]["saekit"])]
    assert cells[4] == f"{per['ratio_vs_anchor']:.3f} ({min(rounds):.2f}–{max(rounds):.2f})"
    met = per["ratio_vs_anchor"] >= 1.8 and per["saekit_step_vs_gemm"] <= 1.3
    assert cells[-1].endswith("(met)" if met else "(**missed**)")
    assert "`stream`" not in table
    assert "load average 0.5 before and 0.7 after" in table and "commit abc1234" in table


def test_every_marked_markdown_file_is_updated(sitting_dir, tmp_path):
    out, _ = sitting_dir
    marked = f"# T\n\nbefore\n{sitting.START}\nold table\n{sitting.END}\nafter\n"
    (tmp_path / "README.md").write_text(marked)
    (tmp_path / "docs").mkdir()
    (tmp_path / "docs" / "benchmarks.md").write_text(marked)
    (tmp_path / "docs" / "other.md").write_text("no markers\n")
    table = sitting.render(out)
    changed = sitting.update_markdown(tmp_path, table)
    assert sorted(p.name for p in changed) == ["README.md", "benchmarks.md"]
    text = (tmp_path / "README.md").read_text()
    assert "old table" not in text and table in text
    assert text.startswith("# T\n\nbefore\n") and text.endswith(f"{sitting.END}\nafter\n")
    assert (tmp_path / "docs" / "other.md").read_text() == "no markers\n"
    assert sitting.update_markdown(tmp_path, table) == []  # idempotent


def test_missing_end_marker_or_sitting_is_one_clear_error(tmp_path):
    (tmp_path / "README.md").write_text(f"{sitting.START}\nno end\n")
    with pytest.raises(SaekitError, match="without"):
        sitting.update_markdown(tmp_path, "table")
    assert (tmp_path / "README.md").read_text() == f"{sitting.START}\nno end\n"
    with pytest.raises(SaekitError, match="sitting run"):
        sitting.render(tmp_path)


def test_a_partial_rerun_keeps_the_other_benches_and_says_which_sitting_is_which(
    sitting_dir, tmp_path, monkeypatch
):
    """`run --only train` replaces train's JSON and record; stream keeps the old sitting's."""
    out, _ = sitting_dir
    for name in ("sitting.json", "train.json"):
        (tmp_path / name).write_text((out / name).read_text())
    (tmp_path / "stream.json").write_text("{}")  # left alone by a train-only rerun
    tiny = {"shape": train.Shape(32, 256, 4, 64), "memory": False, "threads": [1]}
    monkeypatch.setitem(sitting.SITTING, "train", tiny)
    sitting.run_sitting(tmp_path, ("train",))
    meta = json.loads((tmp_path / "sitting.json").read_text())
    assert meta["benches"] == ["stream", "train"]
    assert meta["runs"]["stream"]["commit"] == "abc1234"
    assert meta["runs"]["train"]["date"] != "2026-01-01 00:00 UTC"
    assert (tmp_path / "stream.json").read_text() == "{}"
    assert json.loads((tmp_path / "train.json").read_text())["shape"]["d_sae"] == 256
    (tmp_path / "stream.json").unlink()  # render skips a bench without its JSON
    table = sitting.render(tmp_path)
    assert "from 2 sittings" in table
    assert "`stream`: 2026-01-01 00:00 UTC, commit abc1234" in table
    assert (
        f"`train`: {meta['runs']['train']['date']}, commit {meta['runs']['train']['commit']}"
        in table
    )


def test_the_recorded_commit_says_when_the_package_differs_from_it(tmp_path, monkeypatch):
    import subprocess

    def git(*args: str) -> None:
        subprocess.run(["git", *args], cwd=tmp_path, check=True, capture_output=True)

    git("init", "-q")
    git("config", "user.email", "t@example.invalid")
    git("config", "user.name", "t")
    (tmp_path / "saekit").mkdir()
    (tmp_path / "saekit" / "m.py").write_text("x = 1\n")
    (tmp_path / "notes.txt").write_text("a\n")
    git("add", ".")
    git("commit", "-q", "-m", "one")
    monkeypatch.chdir(tmp_path)
    head = sitting.current_commit()
    assert len(head) >= 7 and "+" not in head
    (tmp_path / "notes.txt").write_text("b\n")  # outside the package: HEAD still says it
    assert sitting.current_commit() == head
    (tmp_path / "saekit" / "m.py").write_text("x = 2\n")
    assert sitting.current_commit() == head + "+changes"
