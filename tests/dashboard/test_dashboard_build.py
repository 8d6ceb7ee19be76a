"""`run_interp_eval` and `saekit dashboard` on a tiny run: files, summary keys, pages."""

from __future__ import annotations

import json

import pytest

from saekit.cli import main
from saekit.dashboard import build_dashboard
from saekit.interp import run_interp_eval

SAE_NAME = "00-topk-model.layers.0"
D_SAE = 32


def test_run_interp_eval_writes_summary_table_and_feature_files(dash_run, dash_cfg):
    report = run_interp_eval(dash_run, cfg=dash_cfg, progress=False)
    assert json.loads((dash_run / "interp.json").read_text()) == report
    s = report["saes"][SAE_NAME]
    assert s["hook"] == "model.layers.0" and s["d_sae"] == D_SAE and s["n_tokens"] > 0
    for key in (
        "alive",
        "dead_fraction",
        "scored",
        "detection_mean",
        "fuzzing_mean",
        "simulation_mean",
        "controls",
        "dictionary_subset",
    ):
        assert key in s
    assert set(s["controls"]) == {"shuffled", "random", "init"}
    assert set(s["scores"]["detection"]["controls"]) == {"random", "init"}  # not shuffled
    rows = json.loads((dash_run / s["features_dir"] / "table.json").read_text())
    scored = [r for r in rows if r["detection"] is not None]
    assert s["scored"] == len(scored) > 0  # the summary is the mean over the scored rows
    for name in ("detection", "fuzzing", "simulation"):
        mean = sum(r[name] for r in scored) / len(scored)
        assert s[f"{name}_mean"] == pytest.approx(mean, abs=1e-4), name  # rows are rounded
    assert [r["index"] for r in rows] == list(range(D_SAE))
    alive = [r["index"] for r in rows if r["density"] > 0]
    assert len(alive) == s["alive"]
    pages = sorted(int(p.stem) for p in (dash_run / s["features_dir"] / "features").glob("*.json"))
    assert pages == alive
    page = json.loads((dash_run / s["features_dir"] / "features" / f"{alive[0]}.json").read_text())
    top = page["top_examples"]
    assert top and all(len(ex["tokens"]) == len(ex["acts"]) == 8 for ex in top)
    assert [ex["max"] for ex in top] == sorted((ex["max"] for ex in top), reverse=True)
    assert max(top[0]["acts"]) == top[0]["max"] == page["max_act"]
    assert len(page["logits"]["top"]) == dash_cfg.n_logits  # the hook is the residual stream
    assert sum(page["histogram"]["counts"]) == page["count"]


def test_dashboard_cli_computes_interp_when_missing(dash_run, capsys):
    assert main(["dashboard", str(dash_run), "--windows", "24"]) == 0
    assert "dashboard:" in capsys.readouterr().out
    assert (dash_run / "interp.json").is_file()
    site = dash_run / "dashboard"
    assert (site / "assets" / "style.css").is_file() and (site / "assets" / "table.js").is_file()
    index = (site / "index.html").read_text()
    assert f'href="{SAE_NAME}/index.html"' in index
    table = (site / SAE_NAME / "index.html").read_text()
    assert table.count("<tr") == D_SAE + 1  # header + one row per feature
    interp = json.loads((dash_run / "interp.json").read_text())
    alive = interp["saes"][SAE_NAME]["alive"]
    assert len(list((site / SAE_NAME).glob("*.html"))) == alive + 1


def test_feature_page_shows_highlights_and_steering_curve(dash_run, dash_cfg):
    run_interp_eval(dash_run, cfg=dash_cfg, progress=False)
    build_dashboard(dash_run)
    rows = json.loads((dash_run / "interp" / SAE_NAME / "table.json").read_text())
    alive = [r["index"] for r in rows if r["density"] > 0]
    for i in alive[:3]:
        html = (dash_run / "dashboard" / SAE_NAME / f"{i}.html").read_text()
        assert 'class="tok on"' in html
        assert ("<h2>Steering</h2>" in html) == (i == 0)  # steering.json only has feature 0


def test_bad_run_dir_is_one_line_error(tmp_path, capsys):
    assert main(["dashboard", str(tmp_path / "nope")]) == 2
    assert "not a directory" in capsys.readouterr().err


def test_steering_curves_read_the_steer_layout(tmp_path):
    from saekit.dashboard import steering_curves

    curve = [
        {"kappa": 0.05, "kl": 0.051, "score": 0.2},
        {"kappa": 0.1, "kl": 0.1, "score": 0.4},
        {"kappa": 0.5, "kl": 0.3, "reached": False},
    ]
    report = {
        "sites": {
            "h": {
                "directions": {
                    f"{SAE_NAME}#7": {"curve": curve},
                    "random:0": {"curve": curve},
                    "other#7": {"curve": curve},
                }
            }
        }
    }
    (tmp_path / "steering.json").write_text(json.dumps(report))
    assert steering_curves(tmp_path, SAE_NAME) == {"7": {"kl": [0.051, 0.1], "score": [0.2, 0.4]}}
    assert steering_curves(tmp_path / "missing", SAE_NAME) == {}


def test_index_shows_the_scorecard_of_report_json(dash_run, dash_cfg):
    import numpy as np

    from saekit.eval.scorecard import Units, score

    run_interp_eval(dash_run, cfg=dash_cfg, progress=False)
    rng = np.random.default_rng(0)

    def units(mean: float) -> Units:
        return Units("held-out windows", "w", rng.normal(mean, 0.01, 20), np.ones(20))

    ev = score(units(0.8), {"random": units(0.1), "init": units(0.3)})
    card = {SAE_NAME: {"core": {"explained_variance": ev.to_json(), "mse": ev.to_json()}}}
    (dash_run / "report.json").write_text(json.dumps({"scorecard": card}))
    index = build_dashboard(dash_run).read_text()
    row = index[index.index("<h2>Scorecard</h2>") :].split("<tr>")[2]  # header, then our row
    assert "explained_variance" in row and f"{ev.value:.3g}"[:4] in row
    assert f"{ev.controls['random']:.3g}"[:4] in row and ">yes<" in row
    assert "20 held-out windows" in row and "mse" not in index  # headline scores only


def test_index_links_the_steering_study_when_present(dash_run, dash_cfg):
    run_interp_eval(dash_run, cfg=dash_cfg, progress=False)
    build_dashboard(dash_run)
    assert "Steering study" not in (dash_run / "dashboard" / "index.html").read_text()
    steering = json.loads((dash_run / "steering.json").read_text())
    auc = {"mean": 0.4125, "lo": 0.25, "hi": 0.5}
    topk = {"directions": 32, "pareto_auc": auc}
    steering["study"] = {"blocks.0.hook_resid_post": {"methods": {"topk": topk}}}
    (dash_run / "steering.json").write_text(json.dumps(steering))
    (dash_run / "steering-study.png").write_bytes(b"\x89PNG fake")
    build_dashboard(dash_run)
    index = (dash_run / "dashboard" / "index.html").read_text()
    assert "Steering study" in index and 'href="steering-study.png"' in index
    assert (dash_run / "dashboard" / "steering-study.png").read_bytes() == b"\x89PNG fake"
    assert "0.41" in index and "0.25" in index


def test_index_links_the_selection_study_when_present(tmp_path):
    from saekit.dashboard.build import selection_section
    from saekit.rundir import RunDir, write_json

    run, site = RunDir(tmp_path), tmp_path / "dashboard"
    assert selection_section(run, site) == ""
    run.selection.mkdir()
    (run.selection / "selection-retrieval.png").write_bytes(b"png")
    ci = {"mean": 0.8125, "lo": 0.75, "hi": 0.875, "n": 30}
    write_json(
        run.selection_json,
        {
            "retrieval": {
                "targets": {f"t{i}": {} for i in range(30)},
                "pool_size": 5572,
                "summary": {"mona": {"precision": ci, "auc": ci}},
            },
            # plots named by where the study wrote them; the downstream one is missing
            "plots": {"retrieval": "elsewhere/selection-retrieval.png", "downstream": "x.png"},
        },
    )
    html = selection_section(run, site)
    assert 'href="../selection/selection.json"' in html
    assert 'href="../selection/selection-retrieval.png"' in html
    assert "downstream plot" not in html
    assert "30 targets, pool 5572" in html and "0.812" in html and "[0.750, 0.875]" in html


def test_dashboard_index_carries_the_selection_section(dash_run, dash_cfg):
    from saekit.rundir import RunDir, write_json

    run_interp_eval(dash_run, cfg=dash_cfg, progress=False)
    ci = {"mean": 0.5, "lo": 0.25, "hi": 0.75, "n": 3}
    summary = {"mona": {"precision": ci, "auc": ci}}
    write_json(RunDir(dash_run).selection_json, {"retrieval": {"summary": summary}})
    index = build_dashboard(dash_run).read_text()
    assert "<h2>Data selection</h2>" in index and 'href="../selection/selection.json"' in index
