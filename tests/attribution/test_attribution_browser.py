"""The attribution view in headless Chromium: it loads without console errors, shows the
tokens × top-features grid with the node rows, and its feature links open the dashboard's
feature pages. The screenshot is kept in runs/test-artifacts/ (git-ignored)."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
from chromium_cdp import Browser, chromium_path

from saekit.cli import main
from saekit.dashboard import build_dashboard
from saekit.interp import InterpConfig, run_interp_eval

SAE_NAME = "00-topk-model.layers.0"
ARTIFACTS = Path(__file__).resolve().parents[2] / "runs" / "test-artifacts"

pytestmark = pytest.mark.skipif(
    chromium_path() is None,
    reason="Chromium is not installed (Debian: apt-get install -y chromium); CI installs it",
)


def test_attribution_view_in_headless_chromium(attr_run, tmp_path):
    cfg = InterpConfig(
        n_windows=24, example_len=8, reservoir=16, control_features=8, min_examples=2
    )
    run_interp_eval(attr_run, cfg=cfg, progress=False)
    build_dashboard(attr_run)
    prompt = "the cat sat on a mat"
    assert (
        main(["attribute", str(attr_run), "--prompt", prompt, "--target", "a", "--top", "6"]) == 0
    )
    report = json.loads((attr_run / "attribution" / "attribution.json").read_text())
    executable = chromium_path()
    assert executable is not None
    with Browser(executable) as browser:
        browser.open(attr_run / "attribution" / "index.html")
        assert browser.errors() == []
        heads = browser.evaluate(
            "[...document.querySelectorAll('table.attr th.tok')].map(t => t.textContent)"
        )
        assert heads == report["tokens"]
        rows = browser.evaluate("document.querySelectorAll('table.attr tbody tr').length")
        assert rows == 6 + 2  # top features, then "all features" and "error"
        hrefs = browser.evaluate(
            "[...document.querySelectorAll('a.feature')].map(a => a.getAttribute('href'))"
        )
        assert hrefs, "no feature linked to the dashboard"
        for href in hrefs:
            assert (attr_run / "attribution" / href).resolve().is_file(), href
        shot = browser.screenshot(tmp_path / "attribution.png")
        browser.evaluate("document.querySelector('a.feature').click()")
        browser.wait_for("Page.loadEventFired")
        title = browser.evaluate("document.title")
        assert title == f"{SAE_NAME} feature {hrefs[0].rsplit('/', 1)[1].split('.')[0]}"
        assert browser.errors() == []
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    shutil.copy(shot, ARTIFACTS / "attribution.png")
