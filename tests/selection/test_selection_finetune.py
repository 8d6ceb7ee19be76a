"""The downstream check on the tiny models: cached-tail losses, restoration, learning."""

from __future__ import annotations

import pytest
import torch

from saekit.errors import SaekitError
from saekit.selection.data import Sample
from saekit.selection.finetune import FinetuneConfig, _Runner, compare_subsets, heldout_loss
from saekit.selection.tokens import SampleTokenizer

TASK = [Sample(f"say {w}", w) for w in ("cat", "dog", "sun", "map", "owl", "fig")]
OTHER = [Sample(f"count {n}", "abc") for n in ("one", "two", "six", "ten")]


def test_cached_tail_loss_equals_full_forward(tiny) -> None:
    """On TransformerLens the tail runs from cached residuals; it must equal a full forward."""
    tok = SampleTokenizer(tiny.hooked.tokenizer, 24)
    items = [tok(s) for s in TASK]
    cached = _Runner(tiny.hooked, 1, tok.pad_id)
    full = _Runner(tiny.hooked, 1, tok.pad_id)
    full.hook = None
    cached.prepare(items)
    for part in ("response", "both"):
        a, n_a = cached.loss(items, part)
        b, n_b = full.loss(items, part)
        assert n_a == n_b > 0
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-4)


def test_compare_subsets_learns_and_restores(tiny) -> None:
    before = {k: v.clone() for k, v in tiny.hooked.model.state_dict().items()}
    flags = [p.requires_grad for p in tiny.hooked.model.parameters()]
    cfg = FinetuneConfig(n_blocks=1, steps=12, batch_size=3, lr=3e-3, max_tokens=24)
    out = compare_subsets(tiny.hooked, {"task": TASK, "other": OTHER}, TASK, cfg, progress=False)
    assert set(out) == {"base", "task", "other"}
    # Training on the held-out task itself must lower its loss below the untouched model's.
    assert out["task"]["response_loss"] < out["base"]["response_loss"]
    assert out["task"]["train_loss_last"] < out["task"]["train_loss_first"]
    after = tiny.hooked.model.state_dict()
    assert all(torch.equal(before[k], after[k]) for k in before)
    assert flags == [p.requires_grad for p in tiny.hooked.model.parameters()]
    tok = SampleTokenizer(tiny.hooked.tokenizer, 24)
    again = heldout_loss(_Runner(tiny.hooked, 1, tok.pad_id), [tok(s) for s in TASK])
    assert again["response_loss"] == pytest.approx(out["base"]["response_loss"], rel=1e-5)


def test_finetune_errors(tiny) -> None:
    with pytest.raises(SaekitError, match="empty subsets: none"):
        compare_subsets(tiny.hooked, {"none": []}, TASK, progress=False)
    with pytest.raises(SaekitError, match="No held-out"):
        compare_subsets(tiny.hooked, {"task": TASK}, [], progress=False)
    with pytest.raises(SaekitError, match="n_blocks must be in"):
        compare_subsets(
            tiny.hooked, {"task": TASK}, TASK, FinetuneConfig(n_blocks=9), progress=False
        )
