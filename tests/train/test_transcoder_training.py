"""Transcoders through the whole trainer, on a planted sparse map (activations/synthetic_map.py).

Golden figures (seeded, CPU, 2**15 rows × 12 epochs, batch 256, lr 3e-3, d_sae 64, k 4; the
docs/transcoders.md example prints them): a TopK transcoder reaches input MMCS 0.974, output
MMCS 0.995, 0.94 of the features recovered on both sides by one latent, output FVU 0.017 (the
skip transcoder 0.008); the random initialisation scores input MMCS 0.38. The asserts sit
between the two, far from both.
"""

from __future__ import annotations

import pytest
import torch

import saekit
from saekit.activations.synthetic_map import SparseMap
from saekit.activations.tensors import TensorStream
from saekit.dictionaries import SAEConfig, build_dictionary
from saekit.errors import SaekitError
from saekit.eval.synthetic_metrics import transcoder_recovery
from saekit.train.config import TrainConfig

ROWS = 2**15


def data() -> SparseMap:
    return SparseMap(n_features=32, d_in=32, d_out=24, threshold=0.5, seed=0)


def train_cfg(epochs: int) -> TrainConfig:
    return TrainConfig(
        total_tokens=ROWS * epochs,
        lr=3e-3,
        grad_clip_norm=1.0,  # the transcoder recipes' clip, warmup and decay (TopK's defaults
        lr_warmup_steps=50,  # differ)
        lr_decay_fraction=0.2,
        log_every=50,
        b_dec_init_samples=1024,
        wandb_mode="disabled",
    )


def cfg(skip: bool = False, **kw) -> SAEConfig:
    return SAEConfig(
        method="topk", hook="in", output_hook="out", d_sae=64, k=4, skip_connection=skip, **kw
    )


def output_fvu(d, m: SparseMap) -> float:
    s = m.sample(4096, torch.Generator().manual_seed(99))
    with torch.no_grad():
        err = (d(s.x_BD) - s.y_BO).pow(2).sum()
    return float(err / (s.y_BO - s.y_BO.mean(0)).pow(2).sum())


@pytest.fixture(scope="module")
def trained():
    m = data()
    res = saekit.fit(cfg(), m.stream(ROWS, batch_size=256, seed=1), train_cfg(12))
    return m, res


def test_topk_transcoder_recovers_the_planted_map(trained):
    m, res = trained
    d = res.dictionary
    assert d.is_transcoder and (d.d_in, d.d_out) == (32, 24)
    got = transcoder_recovery(m.features_FD, m.effects_FO, d.W_enc.detach(), d.W_dec.detach())
    assert got.input_mmcs > 0.93
    assert got.output_mmcs > 0.97
    assert got.paired_recovered >= 0.8
    assert output_fvu(d, m) < 0.04
    init = build_dictionary(cfg(), 32, 24)
    before = transcoder_recovery(m.features_FD, m.effects_FO, init.W_enc, init.W_dec)
    assert before.input_mmcs < 0.6 and before.paired_recovered == 0.0
    # The trainer logged the FVU of the output hook, not of the input it reads.
    assert res.history[-1][f"{next(iter(res.dictionaries))}/fvu"] < 0.06


def test_skip_transcoder_learns_its_linear_path_and_fits_better(trained):
    m, res = trained
    skip = saekit.fit(cfg(skip=True), m.stream(ROWS, batch_size=256, seed=1), train_cfg(12))
    d = skip.dictionary
    assert d.W_skip is not None and d.W_skip.abs().max() > 0.05  # zero at init
    assert build_dictionary(cfg(skip=True), 32, 24).W_skip.abs().max() == 0
    # The same k with a linear path: observed 0.006 vs 0.015.
    assert output_fvu(d, m) < 0.7 * output_fvu(res.dictionary, m)
    assert next(iter(skip.dictionaries)).startswith("00-topk-skip-transcoder-in")


def test_normalized_training_folds_each_hooks_own_factor():
    """Input ×40 and output ×0.05: folding the input's factor into the output would be off by
    800x and the FVU on raw rows far above 1."""
    m = data()
    s = m.sample(ROWS, torch.Generator().manual_seed(1))
    stream = TensorStream(
        {"in": 40 * s.x_BD, "out": 0.05 * s.y_BO}, batch_size=256, seed=1, normalize=True
    )
    d = saekit.fit(cfg(), stream, train_cfg(3)).dictionary
    assert d.provenance["out_norm_factor"] != pytest.approx(d.provenance["norm_factor"], rel=0.5)
    held = m.sample(4096, torch.Generator().manual_seed(99))
    with torch.no_grad():
        y_hat = d(40 * held.x_BD)
    y = 0.05 * held.y_BO
    assert float((y_hat - y).pow(2).sum() / (y - y.mean(0)).pow(2).sum()) < 0.15


def test_one_tensor_cannot_feed_a_transcoder():
    with pytest.raises(SaekitError, match=r"pass \{hook: tensor\}"):
        saekit.fit(cfg(), torch.randn(64, 32), train_cfg(1))


def test_output_hook_must_be_streamed():
    stream = TensorStream({"in": torch.randn(64, 32)}, batch_size=32)
    with pytest.raises(SaekitError, match=r"output_hook 'out' is not streamed; add it"):
        saekit.fit(cfg(), stream, train_cfg(1))


def test_hook_parallel_ranks_stream_both_hooks_of_their_own_transcoders():
    from pathlib import Path

    from saekit.fitting import rank_split
    from saekit.recipe import Recipe
    from saekit.train.distributed import Distributed

    path = Path(__file__).parents[2] / "recipes" / "smollm2-transcoders-all-layers.yaml"
    recipe = Recipe.load(path)
    assert len(recipe.saes) == 30 and all(s.skip_connection for s in recipe.saes)
    saes, stream = rank_split(recipe, Distributed(rank=1, world=8, mode="hooks"))
    layers = (1, 9, 17, 25)  # dictionary i goes to rank i mod 8
    expected = [h for n in layers for h in (f"blocks.{n}.ln2.hook_normalized",
                                            f"blocks.{n}.hook_mlp_out")]  # fmt: skip
    assert list(stream.hooks) == expected
    assert [s.output_hook for s in saes[1::8]] == [f"blocks.{n}.hook_mlp_out" for n in layers]


@pytest.mark.parametrize(
    "method, bound",
    [("batchtopk", 0.1), ("jumprelu", 0.15), ("matryoshka", 0.25), ("relu", 0.75)],
)
def test_every_sparse_activation_trains_as_a_transcoder(method, bound):
    """3 epochs on normalized streams; observed output FVU 0.014 (batchtopk), 0.030 (jumprelu),
    0.076 (matryoshka), 0.53 (relu at its default L1 coefficient); untrained ≥ 1."""
    m = data()
    s = m.sample(ROWS, torch.Generator().manual_seed(1))
    stream = TensorStream({"in": s.x_BD, "out": s.y_BO}, batch_size=256, seed=1, normalize=True)
    sae = SAEConfig(method=method, hook="in", output_hook="out", d_sae=64, k=4)
    assert output_fvu(build_dictionary(sae, 32, 24), m) > 0.95
    d = saekit.fit(sae, stream, train_cfg(3)).dictionary
    assert output_fvu(d, m) < bound
