"""The exported weight average (train.ema_decay): what the trainer saves is the moving average
of the weights after every step, the new iterate weighted (1 − min(β, (1 + t)/(10 + t))) / m_t
(at most 1) at lr multiplier m_t; written out here as a weighted sum of the recorded iterates
with the schedule transcribed by hand, not by the trainer's update rule."""

from __future__ import annotations

import pytest
import torch
from synthetic_stream import synthetic_stream

from saekit.dictionaries import SAEConfig
from saekit.dictionaries.saelens_format import load_dictionary
from saekit.errors import SaekitError
from saekit.train.config import TrainConfig

TOPK = (SAEConfig(d_sae=64, k=4),)


def recorded_iterates(trainer) -> list[list[torch.Tensor]]:
    """θ_0 (before step 1) and the live weights after every step, in float64."""
    slot = trainer.slots[0]
    seen = [[p.detach().double().clone() for p in slot.sae.parameters()]]
    step = trainer._step

    def recording(*args, **kwargs):
        out = step(*args, **kwargs)
        seen.append([p.detach().double().clone() for p in slot.sae.parameters()])
        return out

    trainer._step = recording
    return seen


def multiplier(t: int, steps: int, warmup: int, decay: int) -> float:
    """The lr schedule by hand: linear warmup, constant, linear decay to 0 over `decay` steps."""
    if t < warmup:
        return (t + 1) / warmup
    return min(1.0, (steps - t) / decay) if decay else 1.0


def weighted_sum(
    iterates: list[list[torch.Tensor]], beta: float, warmup: int, decay: int, steps: int = 0
) -> list[torch.Tensor]:
    """θ̄_T = Π_t (1 − w_t) · θ_0 + Σ_t w_t Π_{s>t} (1 − w_s) · θ_{t+1}, t = 0 … T−1, for a
    run of `steps` (default: T) steps."""
    T = len(iterates) - 1
    w = [
        min(1.0, (1 - min(beta, (1 + t) / (10 + t))) / multiplier(t, steps or T, warmup, decay))
        for t in range(T)
    ]
    weights = []
    for t in range(T):
        later = 1.0
        for s in range(t + 1, T):
            later *= 1 - w[s]
        weights.append(w[t] * later)
    first = 1.0
    for x in w:
        first *= 1 - x
    assert sum(weights) + first == pytest.approx(1.0)
    return [
        first * iterates[0][i] + sum(c * iterates[t + 1][i] for t, c in enumerate(weights))
        for i in range(len(iterates[0]))
    ]


def test_topk_exports_the_moving_average_of_its_iterates(train_cfg, make_trainer, tmp_path):
    # A constant lr after the 5-step warmup: the average stays behind the last iterate.
    trainer = make_trainer(TOPK, train_cfg(b_dec_init_samples=0, lr_decay_fraction=0.0))
    slot = trainer.slots[0]
    assert slot.average is not None and slot.average.beta == 0.98  # topk's default
    iterates = recorded_iterates(trainer)
    trainer.train()
    assert len(iterates) == 41  # θ_0 and 40 steps
    expected = weighted_sum(iterates, 0.98, warmup=5, decay=0)
    names = [n for n, _ in slot.sae.named_parameters()]
    for name, got, want in zip(names, slot.average.params, expected, strict=True):
        assert torch.allclose(got.double(), want, rtol=1e-5, atol=1e-6), name
        # Not the last iterate: the test would not tell the two apart otherwise.
        assert not torch.allclose(got.double(), iterates[-1][names.index(name)], atol=1e-4)
    exported = slot.exported()
    W_dec = expected[names.index("W_dec")]
    assert torch.allclose(
        exported.W_dec.double(), W_dec / W_dec.norm(dim=1, keepdim=True), atol=1e-6
    )
    assert torch.allclose(exported.W_dec.norm(dim=1), torch.ones(64), atol=1e-6)  # unit atoms
    assert torch.allclose(exported.W_enc.double(), expected[names.index("W_enc")], atol=1e-6)
    # The saved dictionary is that average (the stream is not normalized: a factor of 1).
    saved = load_dictionary(tmp_path / "run/saes" / slot.name)
    assert saved.folded_norm_factor == 1.0
    for name, tensor in exported.state_dict().items():
        assert torch.equal(saved.state_dict()[name], tensor), name


def test_the_average_follows_the_lr_decay_to_the_last_iterate(train_cfg, make_trainer):
    """TopK decays the lr over the last half (30 of 60 steps): the window shrinks with it, and
    where 1 − β_t reaches the multiplier the average is the last iterate."""
    trainer = make_trainer(TOPK, train_cfg(b_dec_init_samples=0, total_tokens=256 * 60))
    slot = trainer.slots[0]
    iterates = recorded_iterates(trainer)
    trainer.train()
    assert slot.average is not None and len(iterates) == 61
    expected = weighted_sum(iterates, 0.98, warmup=5, decay=30)
    for got, want, last in zip(slot.average.params, expected, iterates[-1], strict=True):
        assert torch.allclose(got.double(), want, rtol=1e-5, atol=1e-6)
        assert torch.allclose(got.double(), last, atol=1e-6)  # w = 1 over the last steps
    # Midway the average (as the trainer had it then) is not the iterate of that step.
    midway = weighted_sum(iterates[:41], 0.98, warmup=5, decay=30, steps=60)
    assert not torch.allclose(midway[0], iterates[40][0], atol=1e-4)


def test_ema_decay_zero_exports_the_last_iterate(train_cfg, make_trainer, tmp_path):
    trainer = make_trainer(TOPK, train_cfg(ema_decay=0.0))
    trainer.train()
    slot = trainer.slots[0]
    assert slot.average is None
    saved = load_dictionary(tmp_path / "run/saes" / slot.name)
    for name, tensor in slot.sae.state_dict().items():
        assert torch.equal(saved.state_dict()[name], tensor), name


def test_other_methods_average_only_when_asked(train_cfg, make_trainer):
    relu = SAEConfig(method="relu", d_sae=64)
    assert make_trainer((relu,), train_cfg()).slots[0].average is None
    asked = make_trainer((relu,), train_cfg(ema_decay=0.9)).slots[0]
    assert asked.average is not None and asked.average.beta == 0.9


@pytest.mark.parametrize("bad", [1.0, -0.1])
def test_ema_decay_out_of_range_is_refused(bad):
    with pytest.raises(SaekitError, match=r"train.ema_decay must be in \[0, 1\)"):
        TrainConfig(ema_decay=bad)


def test_resume_from_a_checkpoint_without_an_average_starts_one(train_cfg, make_trainer):
    """A run checkpointed with ema_decay 0, resumed with an average: it starts from the
    checkpoint's weights, not from the fresh trainer's random initialization."""
    stream = synthetic_stream({"h0": 16})
    first = make_trainer(TOPK, train_cfg(ema_decay=0.0, total_tokens=256 * 10), stream)
    first.train()
    resumed = make_trainer(TOPK, train_cfg(total_tokens=256 * 20), synthetic_stream({"h0": 16}))
    resumed.resume()
    slot = resumed.slots[0]
    assert resumed.step == 10 and slot.average is not None and slot.average.updates == 0
    for avg, p in zip(slot.average.params, slot.sae.parameters(), strict=True):
        assert torch.equal(avg, p)
    for p, q in zip(slot.sae.parameters(), first.slots[0].sae.parameters(), strict=True):
        assert torch.equal(p, q)
