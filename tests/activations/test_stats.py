"""`activation_stats`: the outlier rows and their share of the total variance, against a
hand computation on rows with planted outliers."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from saekit.activations.stats import activation_stats, format_stats


def test_planted_outliers_are_counted_with_their_share_of_the_variance() -> None:
    rng = np.random.default_rng(0)
    x = rng.standard_normal((2000, 16))
    x[:3] *= 50.0  # norms ~50x the median: 0.15% of the rows
    x[3] *= 5.0  # 5x: not an outlier
    stats = activation_stats(torch.from_numpy(x).float())
    assert stats["outliers"] == pytest.approx(3 / 2000, rel=1e-6)
    dev = ((x - x.mean(axis=0)) ** 2).sum(axis=1)
    share = dev[:3].sum() / dev.sum()
    assert 0.5 < share < 0.9  # three rows hold most of the variance
    assert stats["outlier_var"] == pytest.approx(share, rel=1e-4)
    assert "outlier_var" in format_stats({"h": stats}).splitlines()[0]
