"""`saekit bench kernels` end to end on tiny shapes (no timing is asserted)."""

from __future__ import annotations

import pytest

from saekit.bench import kernels
from saekit.errors import SaekitError


def test_bench_runs_and_prints_its_table(monkeypatch):
    monkeypatch.setattr(kernels, "BATCH", 64)
    result = kernels.run(reps=1, train_step=False, shapes="16x128x4,8x96x2")
    assert [r["d_sae"] for r in result["ops"]] == [128, 96]
    assert set(result["methods_ms"]) == set(kernels.METHODS)
    for r in result["ops"]:
        assert r["kernels"] == "torch" and set(r["speedup"]) == set(kernels.OPS)
    text = kernels.table(result)
    assert "decode fwd" in text and "jumprelu" in text


def test_bad_shapes_name_the_format():
    with pytest.raises(SaekitError, match="D_INxD_SAExK"):
        kernels.parse_shapes("576x16384")
