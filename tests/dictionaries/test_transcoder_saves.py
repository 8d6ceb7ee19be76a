"""Transcoders and skip transcoders against the installed sae-lens, both directions (≤ 1e-5).

saekit → SAELens: a saved transcoder loads with `sae_lens.SAE.load_from_disk` as SAELens' own
Transcoder / SkipTranscoder / JumpReLUTranscoder / JumpReLUSkipTranscoder (TopK: SAELens'
TopKSAE without input centering), with the hook it writes in metadata.hook_name_out, and
encodes, decodes and predicts as saekit does. SAELens → saekit: transcoders built and saved by
SAELens import with SAELens' outputs.
"""

from __future__ import annotations

import copy
import json

import pytest
import torch
from dictionary_helpers import D_IN, D_SAE, K, small_cfg

from saekit.dictionaries import build_dictionary, load_dictionary
from saekit.dictionaries.transcoder import TRANSCODER_METHODS
from saekit.errors import SaekitError

sae_lens = pytest.importorskip("sae_lens")

TOL = {"atol": 1e-5, "rtol": 0.0}
D_OUT = 12
HOOK, HOOK_OUT = "blocks.0.ln2.hook_normalized", "blocks.0.hook_mlp_out"
EXPECTED = {
    ("relu", False): "transcoder",
    ("relu", True): "skip_transcoder",
    ("jumprelu", False): "jumprelu_transcoder",
    ("jumprelu", True): "jumprelu_skip_transcoder",
}
"""saekit method (batchtopk and matryoshka save as jumprelu) and skip → SAELens architecture."""


def transcoder(method: str, skip: bool, d_out: int = D_OUT, seed: int = 0):
    cfg = small_cfg(method, hook=HOOK, output_hook=HOOK_OUT, skip_connection=skip)
    d = build_dictionary(cfg, D_IN, d_out)
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():  # off the init, so bias, threshold and skip mistakes cannot hide
        d.W_enc.add_(0.3 * torch.randn(d.W_enc.shape, generator=gen))
        d.b_enc.copy_(0.2 * torch.randn(d.b_enc.shape, generator=gen))
        d.b_dec.copy_(torch.randn(d.b_dec.shape, generator=gen))
        if skip:
            d.W_skip.copy_(0.5 * torch.randn(d.W_skip.shape, generator=gen))
        if method == "jumprelu":
            d.threshold.copy_(0.5 * torch.rand(D_SAE, generator=gen))
        if method in ("batchtopk", "matryoshka"):
            d.threshold.fill_(0.3)
    return d


def x_BD(scale: float = 1.0) -> torch.Tensor:
    return scale * torch.randn(256, D_IN, generator=torch.Generator().manual_seed(11))


def assert_same_transcoder(sae, d, x: torch.Tensor) -> None:
    with torch.no_grad():
        z_theirs, z_ours = sae.encode(x), d.encode(x)
        torch.testing.assert_close(z_ours, z_theirs, **TOL)
        assert torch.equal(z_ours != 0, z_theirs != 0)
        assert 0 < (z_ours != 0).float().mean() < 1  # some latents on, some off
        torch.testing.assert_close(d.decode(z_theirs), sae.decode(z_theirs), **TOL)
        torch.testing.assert_close(d(x), sae(x), **TOL)


@pytest.mark.parametrize("skip", [False, True])
@pytest.mark.parametrize("method", ["relu", "batchtopk", "jumprelu", "matryoshka"])
def test_saekit_transcoder_loads_as_saelens_transcoder(method, skip, tmp_path):
    d = transcoder(method, skip)
    d.save(tmp_path / "tc")
    sae = sae_lens.SAE.load_from_disk(tmp_path / "tc")
    family = "relu" if method == "relu" else "jumprelu"
    assert sae.cfg.architecture() == EXPECTED[(family, skip)]
    assert isinstance(sae, sae_lens.SkipTranscoder if skip else sae_lens.Transcoder)
    assert (sae.cfg.d_in, sae.cfg.d_out) == (D_IN, D_OUT)
    assert sae.cfg.metadata.hook_name == HOOK and sae.cfg.metadata.hook_name_out == HOOK_OUT
    assert_same_transcoder(sae, d, x_BD())


def test_topk_transcoder_of_equal_widths_loads_as_saelens_topk(tmp_path):
    d = transcoder("topk", skip=False, d_out=D_IN)
    d.save(tmp_path / "tc")
    sae = sae_lens.SAE.load_from_disk(tmp_path / "tc")
    assert sae.cfg.architecture() == "topk" and not sae.cfg.apply_b_dec_to_input
    assert sae.cfg.metadata.hook_name_out == HOOK_OUT  # where HookedSAETransformer splices it
    assert_same_transcoder(sae, d, x_BD())


@pytest.mark.parametrize("d_out, skip", [(D_OUT, False), (D_IN, True)])
def test_topk_transcoders_saelens_cannot_run_are_saved_for_saekit(d_out, skip, tmp_path):
    d = transcoder("topk", skip, d_out)
    d.save(tmp_path / "tc")
    assert json.loads((tmp_path / "tc" / "cfg.json").read_text())["architecture"] == "saekit-topk"
    with pytest.raises(Exception):  # noqa: B017 - SAELens' own error for an unknown class
        sae_lens.SAE.load_from_disk(tmp_path / "tc")
    back = load_dictionary(tmp_path / "tc")
    with torch.no_grad():
        assert torch.equal(back(x_BD()), d(x_BD()))


@pytest.mark.parametrize("skip", [False, True])
@pytest.mark.parametrize("method", TRANSCODER_METHODS)
def test_saekit_transcoder_round_trip(method, skip, tmp_path):
    d = transcoder(method, skip)
    d.save(tmp_path / "tc")
    back = load_dictionary(tmp_path / "tc")
    assert type(back) is type(d) and back.cfg == d.cfg
    assert (back.d_in, back.d_out, back.write_hook) == (D_IN, D_OUT, HOOK_OUT)
    for name, tensor in d.state_dict().items():
        assert torch.equal(back.state_dict()[name], tensor), name


@pytest.mark.parametrize("skip", [False, True])
@pytest.mark.parametrize("method", ["relu", "jumprelu", "topk"])
def test_folded_transcoder_takes_raw_activations_in_saelens(method, skip, tmp_path):
    d_out = D_IN if method == "topk" else D_OUT
    if method == "topk" and skip:
        pytest.skip("saved for saekit only (see the test above)")
    trained = transcoder(method, skip, d_out)
    f, g = 0.05, 4.0  # input trained at 20x smaller scale, output at 4x larger
    folded = copy.deepcopy(trained)
    folded.fold_normalization(f, g)
    folded.save(tmp_path / "tc")
    sae = sae_lens.SAE.load_from_disk(tmp_path / "tc")
    x_raw = x_BD(scale=1 / f)
    with torch.no_grad():
        torch.testing.assert_close(sae.encode(x_raw), trained.encode(x_raw * f), **TOL)
        torch.testing.assert_close(sae(x_raw), trained(x_raw * f) / g, **TOL)
    assert load_dictionary(tmp_path / "tc").folded_out_norm_factor == g


def test_an_sae_refuses_two_factors():
    d = build_dictionary(small_cfg("topk"), D_IN)
    with pytest.raises(SaekitError, match="one factor"):
        d.fold_normalization(0.5, 2.0)


@torch.no_grad()
def randomize_saelens(sae, seed: int = 0) -> None:
    gen = torch.Generator().manual_seed(seed)
    for name in ("W_enc", "W_dec", "b_dec", "W_skip"):
        if hasattr(sae, name):
            p = getattr(sae, name)
            p.copy_(torch.randn(p.shape, generator=gen) / p.shape[0] ** 0.5)
    sae.b_enc.copy_(0.2 * torch.randn(sae.b_enc.shape, generator=gen))
    if hasattr(sae, "threshold"):
        sae.threshold.copy_(0.3 * torch.rand(sae.threshold.shape, generator=gen))


def saelens_transcoders():
    S = sae_lens
    kw = {"d_in": D_IN, "d_sae": D_SAE, "d_out": D_OUT, "apply_b_dec_to_input": False}
    return {
        "transcoder": lambda: S.Transcoder(S.TranscoderConfig(**kw)),
        "skip_transcoder": lambda: S.SkipTranscoder(S.SkipTranscoderConfig(**kw)),
        "jumprelu_transcoder": lambda: S.JumpReLUTranscoder(S.JumpReLUTranscoderConfig(**kw)),
        "jumprelu_skip_transcoder": lambda: S.JumpReLUSkipTranscoder(
            S.JumpReLUSkipTranscoderConfig(**kw)
        ),
    }


@pytest.mark.parametrize("arch", list(saelens_transcoders()))
def test_saelens_transcoder_imports_into_saekit(arch, tmp_path):
    sae = saelens_transcoders()[arch]()
    sae.cfg.metadata.hook_name, sae.cfg.metadata.hook_name_out = HOOK, HOOK_OUT
    randomize_saelens(sae)
    sae.save_model(tmp_path / "tc")
    d = load_dictionary(tmp_path / "tc")
    assert d.method == ("jumprelu" if arch.startswith("jumprelu") else "relu")
    assert d.is_transcoder and (d.W_skip is not None) == ("skip" in arch)
    assert (d.cfg.hook, d.write_hook, d.d_out) == (HOOK, HOOK_OUT, D_OUT)
    assert_same_transcoder(sae_lens.SAE.load_from_disk(tmp_path / "tc"), d, x_BD())


def test_saelens_transcoder_without_output_hook_names_the_fix(tmp_path):
    sae = saelens_transcoders()["transcoder"]()
    randomize_saelens(sae)
    sae.save_model(tmp_path / "tc")
    with pytest.raises(SaekitError, match='add "hook_name_out"') as err:
        load_dictionary(tmp_path / "tc")
    assert "blocks.L.hook_mlp_out" in str(err.value)
    path = tmp_path / "tc" / "cfg.json"
    cfg = json.loads(path.read_text())
    cfg["metadata"]["hook_name_out"] = HOOK_OUT  # following the advice works
    path.write_text(json.dumps(cfg))
    assert load_dictionary(tmp_path / "tc").write_hook == HOOK_OUT


@pytest.mark.parametrize(
    "fields, match",
    [
        ({"method": "mp", "output_hook": HOOK_OUT}, "cannot be a transcoder"),
        ({"method": "snmf", "output_hook": HOOK_OUT}, "cannot be a transcoder"),
        ({"skip_connection": True}, "needs a transcoder"),
        ({"hook": HOOK_OUT, "output_hook": HOOK_OUT}, "is an SAE"),
    ],
)
def test_bad_transcoder_configs_name_the_fix(fields, match):
    with pytest.raises(SaekitError, match=match):
        small_cfg(fields.pop("method", "topk"), **fields)


def test_an_sae_cannot_write_another_width():
    with pytest.raises(SaekitError, match="set output_hook"):
        build_dictionary(small_cfg("topk"), D_IN, D_OUT)


def test_k_is_the_topk_transcoders_l0():
    d = transcoder("topk", skip=False)
    assert torch.equal((d.encode(x_BD()) != 0).sum(dim=1), torch.full((256,), K))


def test_saelens_topk_naming_an_output_hook_imports_as_a_topk_transcoder(tmp_path):
    cfg = sae_lens.TopKSAEConfig(d_in=D_IN, d_sae=D_SAE, k=K, apply_b_dec_to_input=False)
    sae = sae_lens.TopKSAE(cfg)
    sae.cfg.metadata.hook_name, sae.cfg.metadata.hook_name_out = HOOK, HOOK_OUT
    randomize_saelens(sae)
    sae.save_model(tmp_path / "tc")
    d = load_dictionary(tmp_path / "tc")
    assert d.method == "topk" and d.is_transcoder and d.W_skip is None
    assert (d.cfg.hook, d.write_hook, d.cfg.k) == (HOOK, HOOK_OUT, K)
    assert_same_transcoder(sae_lens.SAE.load_from_disk(tmp_path / "tc"), d, x_BD())
