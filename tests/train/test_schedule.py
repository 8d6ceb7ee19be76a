"""Geometric median, LR schedule, sparsity warmup and the L0 controller, against hand values."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
import torch

from saekit.dictionaries import SAEConfig
from saekit.train.geometric_median import geometric_median
from saekit.train.schedule import L0Controller, default_lr, lr_multiplier, sparsity_scale


# ---- geometric median ------------------------------------------------------------------------
def test_geometric_median_of_symmetric_points_is_their_center() -> None:
    angles = torch.arange(6, dtype=torch.float64) * (math.pi / 3)
    center = torch.tensor([3.0, -2.0], dtype=torch.float64)
    hexagon = torch.stack([angles.cos(), angles.sin()], dim=1) * 2 + center
    assert torch.allclose(geometric_median(hexagon), center, atol=1e-9)


def test_geometric_median_at_the_obtuse_vertex() -> None:
    # A triangle with an angle ≥ 120° has its Fermat point at that vertex (here the origin);
    # the mean (0, 0.067) is elsewhere.
    pts = torch.tensor([[0.0, 0.0], [1.0, 0.0], [-1.0, 0.2]], dtype=torch.float64)
    assert torch.allclose(geometric_median(pts), pts[0], atol=1e-4)


def test_geometric_median_ignores_a_far_outlier_that_moves_the_mean() -> None:
    gen = torch.Generator().manual_seed(0)
    mu = torch.full((16,), 2.0)
    x = mu + 0.1 * torch.randn(500, 16, generator=gen)
    x[:5] = 1000.0  # 1% attention-sink-like rows
    assert (x.mean(0) - mu).norm() > 30
    assert (geometric_median(x) - mu).norm() < 0.05
    assert geometric_median(x).dtype == x.dtype


# ---- LR schedule -----------------------------------------------------------------------------
def test_lr_multiplier_warms_up_holds_then_decays_linearly_to_zero() -> None:
    m = [lr_multiplier(s, total_steps=100, warmup_steps=10, decay_fraction=0.2) for s in range(101)]
    assert m[:10] == pytest.approx([(s + 1) / 10 for s in range(10)])
    assert m[10:81] == [1.0] * 71
    assert m[80:] == pytest.approx([(100 - s) / 20 for s in range(80, 101)])
    assert m[100] == 0.0
    assert lr_multiplier(5, 100, 0, 0.0) == 1.0  # no warmup, no decay


def test_default_lr_scales_as_inverse_sqrt_width() -> None:
    assert default_lr(2**14) == pytest.approx(2e-4)
    assert default_lr(2**16) == pytest.approx(1e-4)
    assert default_lr(2**12) == pytest.approx(4e-4)


def test_trainer_lr_follows_schedule_per_dictionary(train_cfg, make_trainer, tmp_path: Path):
    saes = (SAEConfig(d_sae=64, k=4), SAEConfig(d_sae=256, k=4))
    cfg = train_cfg(total_tokens=256 * 20, lr_warmup_steps=4, lr_decay_fraction=0.5, log_every=1)
    trainer = make_trainer(saes, cfg)
    trainer.train()
    rows = [json.loads(line) for line in (tmp_path / "run/history.jsonl").read_text().splitlines()]
    for slot in trainer.slots:
        base = 4 * 2e-4 / math.sqrt(slot.sae.d_sae / 2**14)  # topk: 4x the width rule
        assert slot.optimizer.param_groups[0]["initial_lr"] == pytest.approx(base)
        # Logged after step s (1-based): the LR the next step will use.
        logged = [r[f"{slot.name}/lr"] for r in rows]
        want = [base * lr_multiplier(r["step"], 20, 4, 0.5) for r in rows]
        assert logged == pytest.approx(want, rel=1e-6)
    assert rows[-1][f"{trainer.slots[0].name}/lr"] == 0.0


def test_each_method_brings_its_lr_clip_and_decay_unless_the_recipe_sets_them(
    train_cfg, make_trainer
) -> None:
    saes = (SAEConfig(d_sae=64, k=4), SAEConfig(method="relu", d_sae=64))
    cfg = train_cfg(total_tokens=256 * 20, lr_warmup_steps=0, log_every=1)
    assert cfg.lr is None and cfg.grad_clip_norm is None and cfg.lr_decay_fraction is None
    topk, relu = make_trainer(saes, cfg).slots
    width_rule = 2e-4 / math.sqrt(64 / 2**14)
    # (lr, clip, the lr multiplier at step 12 of 20: decay over the last 10 or the last 4 steps)
    assert topk.optimizer.param_groups[0]["initial_lr"] == pytest.approx(4 * width_rule)
    assert relu.optimizer.param_groups[0]["initial_lr"] == pytest.approx(width_rule)
    assert (topk.grad_clip_norm, relu.grad_clip_norm) == (0.0, 1.0)
    assert topk.scheduler.lr_lambdas[0](12) == pytest.approx(8 / 10)
    assert relu.scheduler.lr_lambdas[0](12) == 1.0
    assert relu.scheduler.lr_lambdas[0](16) == pytest.approx(4 / 4)
    assert relu.scheduler.lr_lambdas[0](17) == pytest.approx(3 / 4)
    pinned = train_cfg(
        total_tokens=256 * 20, lr=1e-3, grad_clip_norm=2.0, lr_decay_fraction=0.0, log_every=1
    )
    for slot in make_trainer(saes, pinned).slots:
        assert slot.optimizer.param_groups[0]["initial_lr"] == 1e-3
        assert slot.grad_clip_norm == 2.0
        assert slot.scheduler.lr_lambdas[0](19) == 1.0


def test_each_method_brings_its_warmup_unless_the_recipe_sets_it(train_cfg, make_trainer) -> None:
    saes = (SAEConfig(d_sae=64, k=4), SAEConfig(method="relu", d_sae=64))
    unset = train_cfg(total_tokens=256 * 200, lr_warmup_steps=None, log_every=1)
    topk, relu = make_trainer(saes, unset).slots
    # The multiplier of step s (0-based) inside the warmup is (s + 1) / warmup: TopK 10, ReLU 50.
    assert [topk.scheduler.lr_lambdas[0](s) for s in (0, 4, 9, 10)] == [0.1, 0.5, 1.0, 1.0]
    assert [relu.scheduler.lr_lambdas[0](s) for s in (0, 9, 49)] == [0.02, 0.2, 1.0]
    pinned = train_cfg(total_tokens=256 * 200, lr_warmup_steps=4, log_every=1)
    for slot in make_trainer(saes, pinned).slots:
        assert [slot.scheduler.lr_lambdas[0](s) for s in (0, 3)] == [0.25, 1.0]


# ---- sparsity warmup -------------------------------------------------------------------------
def test_sparsity_scale_ramps_linearly() -> None:
    assert [sparsity_scale(s, 4) for s in range(6)] == [0.25, 0.5, 0.75, 1.0, 1.0, 1.0]
    assert sparsity_scale(0, 0) == 1.0


def test_trainer_passes_sparsity_warmup_to_the_dictionary(train_cfg, make_trainer) -> None:
    trainer = make_trainer(
        (SAEConfig(method="relu", d_sae=64),),
        train_cfg(total_tokens=256 * 8, sparsity_warmup_steps=5),
    )
    sae = trainer.slots[0].sae
    seen: list[float] = []
    forward = sae.training_forward

    def spy(x, ctx):
        seen.append(ctx.sparsity_scale)
        return forward(x, ctx)

    sae.training_forward = spy  # type: ignore[method-assign]
    trainer.train()
    assert seen == pytest.approx([0.2, 0.4, 0.6, 0.8, 1.0, 1.0, 1.0, 1.0])


# ---- L0 controller (unit) --------------------------------------------------------------------
def test_controller_raises_coefficient_when_l0_is_high_and_lowers_it_when_low() -> None:
    up, down = L0Controller(10.0, 1.0), L0Controller(10.0, 1.0)
    for _ in range(20):
        c_up = up.update(20.0, lr=1e-3)
        c_down = down.update(5.0, lr=1e-3)
    assert c_up > 1.0 > c_down
    at_target = L0Controller(10.0, 1.0)
    assert at_target.update(10.0, lr=1e-3) == pytest.approx(1.0)


def test_controller_integral_pauses_at_zero_lr() -> None:
    ctl = L0Controller(10.0, 0.5)
    for _ in range(10):
        ctl.update(30.0, lr=0.0)  # constant L0: no change for P to see, no LR to integrate
    assert ctl.coefficient == pytest.approx(0.5)


def test_controller_state_round_trip_continues_identically() -> None:
    a = L0Controller(8.0, 2.0)
    l0s = [30.0, 25.0, 18.0, 12.0, 9.0, 7.0, 8.5, 8.1]
    for l0 in l0s[:4]:
        a.update(l0, lr=2e-3)
    b = L0Controller(8.0, 2.0)
    b.load_state_dict(json.loads(json.dumps(a.state_dict())))
    assert [a.update(v, 2e-3) for v in l0s[4:]] == [b.update(v, 2e-3) for v in l0s[4:]]
