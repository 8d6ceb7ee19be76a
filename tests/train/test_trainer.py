"""The training loop on synthetic activations: L0 control, learning, dead latents, several
dictionaries per stream, bit-exact resume, export with normalization folded, logging."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from synthetic_stream import SyntheticStream

from saekit.dictionaries import SAEConfig, load_dictionary
from saekit.errors import SaekitError
from saekit.eval.metrics import fvu
from saekit.train.geometric_median import geometric_median


def history(out: Path) -> list[dict]:
    return [json.loads(line) for line in (out / "history.jsonl").read_text().splitlines()]


def fresh_rows(stream: SyntheticStream, hook: str = "h0", n_batches: int = 16) -> torch.Tensor:
    """Batches far past any training step, scaled as the stream serves them."""
    rows = torch.cat([stream.raw_batch(10_000 + i)[hook] for i in range(n_batches)])
    return rows * stream.norm_factors.get(hook, 1.0)


@pytest.mark.parametrize("seed", [0, 1])
@pytest.mark.parametrize(("method", "target"), [("relu", 6.0), ("jumprelu", 3.0)])
def test_l0_controller_lands_on_target(method, target, seed, train_cfg, make_trainer) -> None:
    """The README's claim: final L0 within 2% of target_l0. Over seeds 0-7 of this setting
    (1,000 steps of 256 tokens; G1 data, 64 features, L0 4) the error was −1.67..+0.05% for
    relu (rms 0.93%) and −1.07..+1.21% for jumprelu (rms 0.82%): batch noise keeps L0 moving
    while the LR decays. Unsteered, the default coefficients (relu l1 = 5, jumprelu l0 = 1)
    end near L0 0.5 and 1.3 on this data."""
    stream = SyntheticStream({"h0": 32}, seed=seed)
    cfg = train_cfg(
        total_tokens=256 * 1000, lr_warmup_steps=20, sparsity_warmup_steps=50, seed=seed
    )
    sae_cfg = SAEConfig(method=method, d_sae=128, target_l0=target, seed=seed)
    trainer = make_trainer((sae_cfg,), cfg, stream)
    trainer.train()
    with torch.no_grad():  # 65k rows: the L0 estimate's standard error is 0.25%
        l0 = (trainer.slots[0].sae.encode(fresh_rows(stream, n_batches=256)) != 0).sum(1)
    error = float(l0.float().mean()) / target - 1
    assert abs(error) < 0.02, f"{method} seed {seed}: L0 off target by {100 * error:+.2f}%"


def test_target_l0_on_a_method_without_penalty_is_refused(train_cfg, make_trainer) -> None:
    with pytest.raises(SaekitError, match="target_l0 needs a method with a sparsity penalty"):
        make_trainer((SAEConfig(method="topk", d_sae=64, target_l0=8.0),), train_cfg())


def test_topk_learns_and_keeps_unit_decoder_rows(train_cfg, make_trainer, tmp_path) -> None:
    stream = SyntheticStream({"h0": 16})
    saes = (SAEConfig(d_sae=64, k=4), SAEConfig(method="jumprelu", d_sae=64))
    trainer = make_trainer(saes, train_cfg(total_tokens=256 * 150), stream)
    x = fresh_rows(stream)
    topk = trainer.slots[0].sae
    with torch.no_grad():
        trainer.init_b_dec(stream.raw_batch(0))
        start = float(fvu(x, topk(x)))
    trainer.train()
    with torch.no_grad():
        end = float(fvu(x, topk(x)))
    assert start > 0.5 and end < 0.25 * start, (start, end)
    logged = [r[f"{trainer.slots[0].name}/fvu"] for r in history(tmp_path / "run")]
    assert logged[-1] < 0.3 * logged[0]
    for slot in trainer.slots:
        norms = slot.sae.W_dec.norm(dim=1)
        assert torch.allclose(norms, torch.ones_like(norms), atol=1e-5), slot.name


@pytest.mark.parametrize("batch_size", [256, 512])
def test_dead_latents_are_counted_in_tokens(batch_size, train_cfg, make_trainer, tmp_path):
    window = 2560  # 10 batches of 256, 5 of 512
    stream = SyntheticStream({"h0": 16}, batch_size=batch_size)
    cfg = train_cfg(total_tokens=batch_size * 16, dead_window_tokens=window, log_every=1)
    trainer = make_trainer((SAEConfig(d_sae=64, k=4),), cfg, stream)
    slot = trainer.slots[0]
    with torch.no_grad():
        slot.sae.b_enc[:8] = -1e4  # these 8 latents can never fire (and get no gradient)
    trainer.train()
    for r in history(tmp_path / "run"):
        # A record at step s describes the step that started after (s − 1)·B tokens.
        tokens_before = (r["step"] - 1) * batch_size
        dead, aux = r[f"{slot.name}/dead_fraction"], r[f"{slot.name}/loss/aux_k"]
        if tokens_before < window:
            assert dead == 0 and aux == 0, r
        else:
            assert dead >= 8 / 64 and aux > 0, r
    assert (slot.tokens_since_fired_S[:8] == 16 * batch_size).all()
    assert (slot.fire_count_S[:8] == 0).all() and slot.fire_count_S[8:].sum() > 0


def test_several_dictionaries_train_from_one_stream(train_cfg, make_trainer) -> None:
    # Hooks a and b have the same width but different data and scale; c is wider.
    stream = SyntheticStream({"a": 16, "b": 16, "c": 24}, scales={"b": 10.0})
    saes = (
        SAEConfig(hook="a", d_sae=64, k=2),
        SAEConfig(hook="a", d_sae=64, k=6),
        SAEConfig(hook="b", d_sae=64, k=4),
        SAEConfig(hook="c", d_sae=96, k=4),
        SAEConfig(d_sae=64, k=4),  # no hook: the stream's first
    )
    steps = 120
    trainer = make_trainer(saes, train_cfg(total_tokens=256 * steps), stream)
    assert len({s.name for s in trainer.slots}) == 5
    assert [s.hook for s in trainer.slots] == ["a", "a", "b", "c", "a"]
    first = stream.raw_batch(0)
    trainer.train()
    assert stream.batch_index == steps  # one batch per step for all five dictionaries
    for slot, k in zip(trainer.slots, (2, 6, 4, 4, 4)):
        assert slot.sae.d_in == stream.d_in[slot.hook]
        x = fresh_rows(stream, slot.hook)
        with torch.no_grad():
            z = slot.sae.encode(x)
            assert float(fvu(x, slot.sae.decode(z))) < 0.5, slot.name
        assert float((z != 0).sum(1).float().mean()) == pytest.approx(k, abs=0.05)
    # b_dec started at the median of the dictionary's own hook (b is 10x larger than a).
    b_dec_init = {h: geometric_median(first[h].float()) for h in first}
    for slot in trainer.slots:
        drift = (slot.sae.b_dec - b_dec_init[slot.hook]).norm() / b_dec_init[slot.hook].norm()
        others = [h for h in ("a", "b") if h != slot.hook and len(first[h][0]) == slot.sae.d_in]
        for other in others:
            gap = (slot.sae.b_dec - b_dec_init[other]).norm() / b_dec_init[slot.hook].norm()
            assert drift < gap, slot.name


class CrashingStream(SyntheticStream):
    """Raises when asked for batch `crash_at`, as a killed process would stop there."""

    def __init__(self, crash_at: int, **kw) -> None:
        super().__init__(**kw)
        self.crash_at = crash_at

    def next_batch(self) -> dict[str, torch.Tensor]:
        if self.batch_index == self.crash_at:
            raise RuntimeError("simulated crash")
        return super().next_batch()


RESUME_SAES = (
    SAEConfig(d_sae=64, k=4),
    SAEConfig(method="batchtopk", d_sae=64, k=4),
    SAEConfig(method="relu", d_sae=64, target_l0=6.0),
    SAEConfig(method="jumprelu", hook="h1", d_sae=64, target_l0=3.0),
    SAEConfig(method="matryoshka", hook="h1", d_sae=64, k=4),
    SAEConfig(method="mp", d_sae=64, k=4, mp_dropout=0.25, mp_revival_coefficient=0.01),
)


def test_resume_reproduces_an_uninterrupted_run(train_cfg, make_trainer, tmp_path) -> None:
    # 40 steps; the controller starts at step 10 and dead windows (1,280 tokens) elapse, so the
    # dead-latent clocks, AuxK, the controllers and the LR decay all matter after step 20.
    hooks = {"h0": 16, "h1": 16}
    kw = {"hooks": hooks, "normalize": True, "scales": {"h1": 5.0}}
    common = {
        "total_tokens": 256 * 40,
        "dead_window_tokens": 1280,
        "lr_decay_fraction": 0.5,
        "log_every": 1,
    }
    straight = make_trainer(
        RESUME_SAES,
        train_cfg(**common, output_dir=str(tmp_path / "a")),
        SyntheticStream(**kw),
    )
    cfg_b = train_cfg(**common, output_dir=str(tmp_path / "b"), checkpoint_every=20)
    crashing = make_trainer(RESUME_SAES, cfg_b, CrashingStream(crash_at=27, **kw))
    for trainer in (straight, crashing):
        with torch.no_grad():  # dead from the start: their clocks decide AuxK's scale
            trainer.slots[0].sae.b_enc[:4] = -1e4
    straight.train()
    with pytest.raises(RuntimeError, match="simulated crash"):
        crashing.train()
    assert (tmp_path / "b/checkpoints/latest").read_text().strip() == "step-00000020"
    resumed = make_trainer(RESUME_SAES, cfg_b, SyntheticStream(**kw))
    resumed.resume()
    assert resumed.step == 20 and resumed.stream.batch_index == 20
    resumed.train(resume=True)

    for a, b in zip(straight.slots, resumed.slots):
        for name, tensor in a.sae.state_dict().items():
            assert torch.equal(tensor, b.sae.state_dict()[name]), name  # bit for bit
        assert torch.equal(a.tokens_since_fired_S, b.tokens_since_fired_S)
        assert torch.equal(a.fire_count_S, b.fire_count_S)
        assert a.sae.sparsity_coefficient == b.sae.sparsity_coefficient
    rows_a, rows_b = history(tmp_path / "a"), history(tmp_path / "b")
    assert [r["step"] for r in rows_a] == [r["step"] for r in rows_b]
    drop = ("tokens_per_s",)
    assert [{k: v for k, v in r.items() if k not in drop} for r in rows_a] == [
        {k: v for k, v in r.items() if k not in drop} for r in rows_b
    ]


@pytest.mark.parametrize("method", ["topk", "relu", "jumprelu", "batchtopk"])
def test_export_folds_normalization(method, train_cfg, make_trainer, tmp_path) -> None:
    stream = SyntheticStream({"h0": 16}, normalize=True, scales={"h0": 7.0})
    trainer = make_trainer((SAEConfig(method=method, d_sae=64, k=4),), train_cfg(), stream)
    summary = trainer.train()
    slot = trainer.slots[0]
    factor = stream.norm_factors["h0"]
    assert abs(factor - 1) > 0.5  # the raw scale is far from √d_in
    path = tmp_path / "run/saes" / slot.name
    assert summary["saes"][slot.name]["path"] == str(path)
    saved = load_dictionary(path)
    raw = torch.cat([stream.raw_batch(500 + i)["h0"] for i in range(4)])
    with torch.no_grad():
        z_train = slot.sae.encode(raw * factor)
        z_saved = saved.encode(raw)
        assert torch.allclose(z_saved, z_train, rtol=1e-4, atol=1e-5)
        x_hat = saved.decode(z_saved)
        assert torch.allclose(x_hat * factor, slot.sae.decode(z_train), rtol=1e-4, atol=1e-4)
    assert saved.folded_norm_factor == pytest.approx(factor)
    assert saved.provenance["hook"] == "h0"
    assert saved.provenance["training_tokens"] == 40 * 256
    cfg_json = json.loads((path / "cfg.json").read_text())
    assert cfg_json["saekit"]["provenance"]["norm_factor"] == pytest.approx(factor)
    assert (path / "sparsity.safetensors").is_file()


def test_history_has_the_logged_keys(train_cfg, make_trainer, tmp_path) -> None:
    saes = (SAEConfig(d_sae=64, k=4), SAEConfig(method="relu", d_sae=64, target_l0=6.0))
    trainer = make_trainer(saes, train_cfg(total_tokens=256 * 25, log_every=10))
    trainer.train()
    rows = history(tmp_path / "run")
    assert [r["step"] for r in rows] == [10, 20, 25]
    topk, relu = (s.name for s in trainer.slots)
    common = {"loss/mse", "loss/total", "fvu", "l0", "dead_fraction", "lr"}
    for r in rows:
        assert {f"{topk}/{k}" for k in common | {"loss/aux_k"}} <= r.keys()
        assert {f"{relu}/{k}" for k in common | {"loss/l1", "sparsity_coefficient"}} <= r.keys()
        assert r["tokens_per_s"] > 0
        assert r[f"{topk}/l0"] == pytest.approx(4.0, abs=0.01)
        loss = r[f"{relu}/loss/mse"] + r[f"{relu}/loss/l1"]
        assert r[f"{relu}/loss/total"] == pytest.approx(loss, rel=1e-5)


def test_wandb_logs_offline_into_the_run_dir(train_cfg, make_trainer, tmp_path, monkeypatch):
    monkeypatch.setenv("WANDB_MODE", "offline")
    trainer = make_trainer((SAEConfig(d_sae=64, k=4),), train_cfg(wandb_mode="offline"))
    trainer.train()
    runs = list((tmp_path / "run/wandb").glob("offline-run-*"))
    assert len(runs) == 1 and list(runs[0].glob("*.wandb"))
