"""The dashboard in a real headless Chromium: pages load without console errors, the table sorts
and filters, a feature page shows highlighted tokens. The feature page's screenshot is kept in
runs/test-artifacts/ (git-ignored) next to the pytest tmp dir copy."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
from chromium_cdp import Browser, chromium_path

from saekit.dashboard import build_dashboard
from saekit.interp import run_interp_eval

SAE_NAME = "00-topk-model.layers.0"
ARTIFACTS = Path(__file__).resolve().parents[2] / "runs" / "test-artifacts"
PNG_MAGIC = b"\x89PNG\r\n\x1a\n"

pytestmark = pytest.mark.skipif(
    chromium_path() is None,
    reason="Chromium is not installed (Debian: apt-get install -y chromium); CI installs it",
)


def test_dashboard_pages_in_headless_chromium(dash_run, dash_cfg, tmp_path):
    run_interp_eval(dash_run, cfg=dash_cfg, progress=False)
    index = build_dashboard(dash_run)
    rows = json.loads((dash_run / "interp" / SAE_NAME / "table.json").read_text())
    alive = [r["index"] for r in rows if r["density"] > 0]
    site = index.parent
    executable = chromium_path()
    assert executable is not None
    with Browser(executable) as browser:
        browser.open(index)
        assert browser.errors() == []
        assert browser.evaluate("document.querySelectorAll('table a').length") == 1

        browser.open(site / SAE_NAME / "index.html")
        assert browser.errors() == []
        shown = browser.evaluate("document.getElementById('shown').textContent")
        assert shown == f"{len(alive)} of {len(rows)} features shown"
        browser.evaluate("document.querySelector('th[data-col=\"1\"]').click()")  # by density
        first = browser.evaluate(
            "document.querySelector('#features tbody tr').cells[0].textContent"
        )
        by_density = max(rows, key=lambda r: (r["density"], -r["index"]))
        assert browser.evaluate("document.querySelector('th.desc') !== null")
        assert int(first) == by_density["index"]
        browser.evaluate(
            "const q = document.getElementById('q'); q.value = 'no such text';"
            "q.dispatchEvent(new Event('input'))"
        )
        assert browser.evaluate("document.getElementById('shown').textContent").startswith("0 of")
        assert browser.errors() == []

        browser.open(site / SAE_NAME / f"{alive[0]}.html")
        assert browser.errors() == []
        highlighted = browser.evaluate("document.querySelectorAll('.tok.on').length")
        assert highlighted > 0
        shot = browser.screenshot(tmp_path / "feature.png")
    assert shot.read_bytes()[:8] == PNG_MAGIC and shot.stat().st_size > 5_000
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    shutil.copy(shot, ARTIFACTS / "dashboard-feature.png")
