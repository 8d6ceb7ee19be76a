"""`saekit attribute` on the tiny run: JSON and HTML written, the identity printed, and bad input
refused in one line with exit status 2, writing nothing, with advice that works."""

from __future__ import annotations

import json

import pytest

from saekit.cli import main

SAE_NAME = "00-topk-model.layers.0"


def error_line(capsys: pytest.CaptureFixture[str], *fragments: str) -> str:
    err = capsys.readouterr().err
    assert "Traceback" not in err
    last = [line for line in err.splitlines() if line.strip()][-1]
    assert last.startswith("saekit: error: ")
    for fragment in fragments:
        assert fragment in last, last
    return last


def test_attribute_writes_json_and_view(attr_run, capsys):
    args = ["attribute", str(attr_run), "--prompt", "the cat: sat", "--target", "a"]
    assert main([*args, "--contrast", "b", "--top", "5"]) == 0
    out = capsys.readouterr().out
    report = json.loads((attr_run / "attribution" / "attribution.json").read_text())
    assert report["prompt"] == "the cat: sat"  # text flags are taken as given, not as YAML
    assert report["metric"] == "logit('a') − logit('b')"
    d = report["dictionaries"][SAE_NAME]
    total = d["sum_features"] + d["sum_error"]
    assert d["identity_met"] and abs(total - d["delta"]) <= 0.01 * abs(d["delta"])
    assert f"{SAE_NAME}: Δ {d['delta']:.4g} = features" in out
    assert "attribution/index.html" in out
    html = (attr_run / "attribution" / "index.html").read_text()
    grid = html[html.index('<table class="attr"') :]
    grid = grid[: grid.index("</table>")]
    assert grid.count("<tr>") == 1 + 5 and grid.count('<tr class="node">') == 2  # head, top 5
    assert "saekit dashboard RUN" in html  # no dashboard yet: the page says how to link


def test_default_target_is_the_top_prediction_and_layer_set_selects(attr_run):
    assert main(["attribute", str(attr_run), "--prompt", "the cat", "--layer-set", SAE_NAME]) == 0
    report = json.loads((attr_run / "attribution" / "attribution.json").read_text())
    assert report["contrast"] is None and report["target"]["id"] >= 0
    assert list(report["dictionaries"]) == [SAE_NAME]


@pytest.mark.parametrize(
    ("args", "fragments"),
    [
        (["--prompt", "the cat", "--target", "ab"], ["'ab' is 2 tokens", "exactly one token"]),
        (["--prompt", "the cat", "--layer-set", "nope"], ["'nope' names no dictionary", SAE_NAME]),
        (["--target", "a"], ["--prompt"]),
        (["--prompt", "the cat", "--n-prompts", "4"], ["--n-prompts", "attribute validate"]),
        (["--prompt", "the cat", "--steps", "0"], ["steps must be in [1,"]),
    ],
)
def test_bad_input_is_one_line_and_writes_nothing(attr_run, capsys, args, fragments):
    assert main(["attribute", str(attr_run), *args]) == 2
    error_line(capsys, *fragments)
    assert not (attr_run / "attribution").exists()


def test_validate_refuses_a_prompt(attr_run, capsys):
    assert main(["attribute", "validate", str(attr_run), "--prompt", "x"]) == 2
    error_line(capsys, "drop --prompt")


def test_validate_writes_its_report(attr_run, capsys):
    flags = ["--n-prompts", "4", "--prompt-tokens", "10", "--n-ablate", "2", "--random-draws", "2"]
    assert main(["attribute", "validate", str(attr_run), *flags, "--bootstrap", "200"]) == 0
    out = capsys.readouterr().out
    report = json.loads((attr_run / "attribution" / "validation.json").read_text())
    d = report["dictionaries"][SAE_NAME]
    assert d["prompts"] == 4 and report["n_ablate"] == 2
    assert SAE_NAME in out and "validation.json" in out
