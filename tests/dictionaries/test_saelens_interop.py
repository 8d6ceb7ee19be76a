"""Interop with the real installed sae-lens, both directions, on random inputs (≤ 1e-5).

saekit → SAELens: `SAE.load_from_disk` must encode and decode exactly as saekit does.
SAELens → saekit: SAEs built and saved by SAELens itself (inference and training classes,
non-default flags) must import into saekit dictionaries with SAELens' encode/decode.
"""

from __future__ import annotations

import copy
import json

import pytest
import torch
from dictionary_helpers import D_IN, D_SAE, METHODS, K, randomize, small_cfg

from saekit.dictionaries import build_dictionary, load_dictionary
from saekit.errors import SaekitError

sae_lens = pytest.importorskip("sae_lens")

TOL = {"atol": 1e-5, "rtol": 0.0}


def x_BD(scale: float = 1.0) -> torch.Tensor:
    return scale * torch.randn(256, D_IN, generator=torch.Generator().manual_seed(11))


def assert_same_model(sae, d, x: torch.Tensor) -> None:
    with torch.no_grad():
        z_theirs, z_ours = sae.encode(x), d.encode(x)
        torch.testing.assert_close(z_ours, z_theirs, **TOL)
        assert torch.equal(z_ours != 0, z_theirs != 0)  # same support, not just close values
        torch.testing.assert_close(d.decode(z_theirs), sae.decode(z_theirs), **TOL)
        torch.testing.assert_close(d(x), sae(x), **TOL)


@pytest.mark.parametrize("method", METHODS)
def test_saekit_save_loads_in_saelens(method, tmp_path):
    d = build_dictionary(small_cfg(method, hook="blocks.0.hook_resid_post"), D_IN)
    randomize(d)
    d.save(tmp_path / "sae")
    sae = sae_lens.SAE.load_from_disk(tmp_path / "sae")
    expected = {"relu": "standard", "topk": "topk"}.get(method, "jumprelu")
    assert sae.cfg.architecture() == expected
    assert sae.cfg.metadata.hook_name == "blocks.0.hook_resid_post"
    assert_same_model(sae, d, x_BD())


@pytest.mark.parametrize("method", METHODS)
def test_folded_save_takes_raw_activations_in_saelens(method, tmp_path):
    trained = build_dictionary(small_cfg(method), D_IN)
    randomize(trained)
    factor = 0.05  # raw activations of norm ~80 trained at norm √16 = 4
    folded = copy.deepcopy(trained)
    folded.fold_normalization(factor)
    folded.save(tmp_path / "sae")
    sae = sae_lens.SAE.load_from_disk(tmp_path / "sae")
    x_raw = x_BD(scale=1 / factor)
    with torch.no_grad():
        torch.testing.assert_close(sae.encode(x_raw), trained.encode(x_raw * factor), **TOL)
        x_hat_raw = trained(x_raw * factor) / factor
        torch.testing.assert_close(sae(x_raw), x_hat_raw, atol=1e-5 / factor, rtol=0.0)


@torch.no_grad()
def randomize_saelens(sae, seed: int = 0) -> None:
    """Trained-SAE scales: encoder columns ~1/√d_in, decoder rows of norm 0.5-1.5 (so that
    rescale_acts_by_decoder_norm matters), biases nonzero, thresholds in [0, 0.5)."""
    gen = torch.Generator().manual_seed(seed)
    sae.W_enc.copy_(torch.randn(sae.W_enc.shape, generator=gen) / D_IN**0.5)
    W_dec = torch.randn(sae.W_dec.shape, generator=gen)
    norms = 0.5 + torch.rand(D_SAE, 1, generator=gen)
    sae.W_dec.copy_(W_dec / W_dec.norm(dim=1, keepdim=True) * norms)
    sae.b_enc.copy_(0.2 * torch.randn(D_SAE, generator=gen))
    sae.b_dec.copy_(torch.randn(D_IN, generator=gen))
    if hasattr(sae, "threshold"):
        sae.threshold.copy_(0.5 * torch.rand(D_SAE, generator=gen))


def saelens_inference_saes():
    from sae_lens import (
        JumpReLUSAE,
        JumpReLUSAEConfig,
        StandardSAE,
        StandardSAEConfig,
        TopKSAE,
        TopKSAEConfig,
    )

    return {
        "standard": lambda: StandardSAE(StandardSAEConfig(d_in=D_IN, d_sae=D_SAE)),
        "standard_no_b_dec_in": lambda: StandardSAE(
            StandardSAEConfig(d_in=D_IN, d_sae=D_SAE, apply_b_dec_to_input=False)
        ),
        "topk": lambda: TopKSAE(TopKSAEConfig(d_in=D_IN, d_sae=D_SAE, k=K)),
        "topk_rescaled": lambda: TopKSAE(
            TopKSAEConfig(d_in=D_IN, d_sae=D_SAE, k=K, rescale_acts_by_decoder_norm=True)
        ),
        "jumprelu": lambda: JumpReLUSAE(JumpReLUSAEConfig(d_in=D_IN, d_sae=D_SAE)),
        "jumprelu_no_b_dec_in": lambda: JumpReLUSAE(
            JumpReLUSAEConfig(d_in=D_IN, d_sae=D_SAE, apply_b_dec_to_input=False)
        ),
    }


@pytest.mark.parametrize("name", list(saelens_inference_saes()))
def test_saelens_saved_sae_imports_into_saekit(name, tmp_path):
    sae = saelens_inference_saes()[name]()
    randomize_saelens(sae)
    sae.save_model(tmp_path / "sae")
    d = load_dictionary(tmp_path / "sae")
    assert d.method == {"standard": "relu", "topk": "topk"}.get(name.split("_")[0], "jumprelu")
    assert d.provenance["source"] == "sae_lens"
    assert_same_model(sae_lens.SAE.load_from_disk(tmp_path / "sae"), d, x_BD())


def saelens_training_saes():
    from sae_lens import (
        BatchTopKTrainingSAE,
        BatchTopKTrainingSAEConfig,
        JumpReLUTrainingSAE,
        JumpReLUTrainingSAEConfig,
        MatryoshkaBatchTopKTrainingSAE,
        MatryoshkaBatchTopKTrainingSAEConfig,
    )

    return {
        "batchtopk": lambda: BatchTopKTrainingSAE(
            BatchTopKTrainingSAEConfig(d_in=D_IN, d_sae=D_SAE, k=K)
        ),
        "matryoshka_batchtopk": lambda: MatryoshkaBatchTopKTrainingSAE(
            MatryoshkaBatchTopKTrainingSAEConfig(
                d_in=D_IN, d_sae=D_SAE, k=K, matryoshka_widths=[16, D_SAE]
            )
        ),
        "jumprelu": lambda: JumpReLUTrainingSAE(JumpReLUTrainingSAEConfig(d_in=D_IN, d_sae=D_SAE)),
    }


@pytest.mark.parametrize("name", list(saelens_training_saes()))
def test_saelens_training_classes_import_via_their_inference_save(name, tmp_path):
    sae = saelens_training_saes()[name]()
    randomize_saelens(sae)
    if hasattr(sae, "topk_threshold"):
        sae.topk_threshold = torch.tensor(0.4, dtype=torch.double)
    sae.save_inference_model(tmp_path / "sae")
    d = load_dictionary(tmp_path / "sae")
    assert d.method == "jumprelu"
    assert_same_model(sae_lens.SAE.load_from_disk(tmp_path / "sae"), d, x_BD())


def test_saelens_batchtopk_training_checkpoint_imports(tmp_path):
    """`save_model` of a training class keeps architecture "batchtopk", a scalar
    topk_threshold and unfolded decoder norms (rescale_acts_by_decoder_norm=True)."""
    sae = saelens_training_saes()["batchtopk"]()
    randomize_saelens(sae)
    sae.topk_threshold = torch.tensor(0.4, dtype=torch.double)
    sae.save_model(tmp_path / "checkpoint")
    sae.save_inference_model(tmp_path / "inference")
    d = load_dictionary(tmp_path / "checkpoint")
    assert_same_model(sae_lens.SAE.load_from_disk(tmp_path / "inference"), d, x_BD())


@pytest.mark.parametrize("key", ["d_in", "d_sae"])
def test_saelens_width_fields_of_a_saekit_save_must_match_the_weights(tmp_path, key):
    build_dictionary(small_cfg("topk"), D_IN).save(tmp_path / "sae")
    path = tmp_path / "sae" / "cfg.json"
    cfg = json.loads(path.read_text())
    right = cfg[key]
    cfg[key] = right + 1  # edited by hand, or written by another tool
    path.write_text(json.dumps(cfg))
    with pytest.raises(Exception, match="size mismatch"):
        sae_lens.SAE.load_from_disk(tmp_path / "sae")  # SAELens reads this field
    with pytest.raises(SaekitError) as err:
        load_dictionary(tmp_path / "sae")
    message = str(err.value)
    assert f'"{key}" is {right + 1}, but the weights have {right}' in message
    # Following the advice: set the field to the weights' width; both libraries load it.
    assert f'Set "{key}": {right} in cfg.json' in message
    cfg[key] = right
    path.write_text(json.dumps(cfg))
    assert_same_model(
        sae_lens.SAE.load_from_disk(tmp_path / "sae"), load_dictionary(tmp_path / "sae"), x_BD()
    )
