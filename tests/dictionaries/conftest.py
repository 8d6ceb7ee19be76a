"""Fixtures for tests/dictionaries (CPU, seeded, milliseconds)."""

from __future__ import annotations

import pytest
import torch


@pytest.fixture(autouse=True)
def _one_thread():
    # The test machine has 2 cores shared with other jobs; tiny matmuls gain nothing from more.
    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(previous)
