"""saekit save → load round trips, atomic writes, and clear errors for broken directories."""

from __future__ import annotations

import json
import os
import stat
from pathlib import Path

import pytest
import torch
from dictionary_helpers import D_IN, METHODS, randomize, small_cfg

from saekit.dictionaries import (
    TrainContext,
    build_dictionary,
    load_dictionary,
    load_log10_density,
)
from saekit.errors import SaekitError


def x_BD() -> torch.Tensor:
    return torch.randn(32, D_IN, generator=torch.Generator().manual_seed(5))


@pytest.mark.parametrize("method", METHODS)
def test_round_trip_is_exact(method, tmp_path):
    d = build_dictionary(small_cfg(method, hook="blocks.3.hook_resid_post", seed=7), D_IN)
    randomize(d)
    if method in ("batchtopk", "matryoshka"):
        d.training_forward(x_BD(), TrainContext())  # a float64 θ with all 52 mantissa bits used
    d.sparsity_coefficient = 0.123 if d.sparsity_coefficient is not None else None
    d.folded_norm_factor = 2.5
    d.provenance = {"model_name": "tiny", "tokens": 1000}
    d.save(tmp_path / "sae")
    loaded = load_dictionary(tmp_path / "sae")
    assert type(loaded) is type(d) and loaded.cfg == d.cfg
    assert loaded.state_dict().keys() == d.state_dict().keys()
    for name, value in d.state_dict().items():
        assert torch.equal(loaded.state_dict()[name], value), name
    assert loaded.sparsity_coefficient == d.sparsity_coefficient
    assert loaded.folded_norm_factor == 2.5 and loaded.provenance == d.provenance
    assert torch.equal(loaded.encode(x_BD()), d.encode(x_BD()))


def test_bf16_round_trip_keeps_fp32_threshold(tmp_path):
    d = build_dictionary(small_cfg("jumprelu"), D_IN)
    randomize(d)
    d = d.to(torch.bfloat16)
    d.save(tmp_path / "sae")
    loaded = load_dictionary(tmp_path / "sae")
    assert loaded.W_enc.dtype == torch.bfloat16 and loaded.threshold.dtype == torch.float32
    assert torch.equal(loaded.threshold, d.threshold) and torch.equal(loaded.W_enc, d.W_enc)


def test_cfg_json_layout(tmp_path):
    d = build_dictionary(small_cfg("topk", hook="blocks.1.hook_resid_post"), D_IN)
    d.save(tmp_path / "sae", log10_density_S=torch.full((d.d_sae,), -2.0))
    cfg = json.loads((tmp_path / "sae" / "cfg.json").read_text())
    assert cfg["architecture"] == "topk" and cfg["k"] == 4
    assert cfg["rescale_acts_by_decoder_norm"] is False and cfg["apply_b_dec_to_input"] is True
    assert cfg["metadata"]["hook_name"] == "blocks.1.hook_resid_post"
    assert cfg["saekit"]["method"] == "topk" and cfg["saekit"]["config"]["k"] == 4
    assert torch.equal(load_log10_density(tmp_path / "sae"), torch.full((d.d_sae,), -2.0))


def test_save_overwrites_atomically_and_leaves_no_temp_dirs(tmp_path):
    target = tmp_path / "sae"
    first = build_dictionary(small_cfg("topk"), D_IN)
    first.save(target, log10_density_S=torch.zeros(first.d_sae))
    (target / "trainer_state.pt").write_bytes(b"kept")  # other files in the dir survive
    second = build_dictionary(small_cfg("topk", seed=3), D_IN)
    second.save(target)
    assert torch.equal(load_dictionary(target).W_dec, second.W_dec)
    assert load_log10_density(target) is None  # the stale density went with the old weights
    assert (target / "trainer_state.pt").read_bytes() == b"kept"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["sae"]


def test_missing_directory_names_the_fix(tmp_path):
    with pytest.raises(SaekitError, match="No dictionary at .*cfg.json and sae_weights"):
        load_dictionary(tmp_path / "nowhere")


def saved(tmp_path: Path, method: str = "topk") -> Path:
    build_dictionary(small_cfg(method), D_IN).save(tmp_path / "sae")
    return tmp_path / "sae"


def test_corrupt_weights_raise_saekit_error(tmp_path):
    root = saved(tmp_path)
    data = (root / "sae_weights.safetensors").read_bytes()
    (root / "sae_weights.safetensors").write_bytes(data[: len(data) // 2])
    with pytest.raises(SaekitError, match="not a readable safetensors file"):
        load_dictionary(root)


def test_corrupt_json_raises_saekit_error(tmp_path):
    root = saved(tmp_path)
    (root / "cfg.json").write_text("{not json")
    with pytest.raises(SaekitError, match="not valid JSON"):
        load_dictionary(root)


def test_mismatched_files_raise_saekit_error(tmp_path):
    root = saved(tmp_path)
    cfg = json.loads((root / "cfg.json").read_text())
    cfg["saekit"]["config"]["d_sae"] = 128
    (root / "cfg.json").write_text(json.dumps(cfg))
    with pytest.raises(SaekitError, match="W_enc is shape .* different saves"):
        load_dictionary(root)


@pytest.mark.parametrize(
    ("edit", "match"),
    [
        ({"saekit": {"format": 99}}, "newer saekit"),
        ({"saekit": {"method": "nope"}}, "Unknown dictionary method"),
        ({"saekit": None, "architecture": "gated"}, "'gated' has no saekit equivalent"),
        ({"saekit": None, "normalize_activations": "layer_norm"}, "normalize_activations"),
        ({"saekit": {"config": "oops"}}, "malformed"),
    ],
)
def test_bad_cfg_json_raises_saekit_error(tmp_path, edit, match):
    root = saved(tmp_path)
    cfg = json.loads((root / "cfg.json").read_text())
    for key, value in edit.items():
        if value is None:
            cfg.pop(key)
        elif isinstance(value, dict):
            cfg[key].update(value)
        else:
            cfg[key] = value
    (root / "cfg.json").write_text(json.dumps(cfg))
    with pytest.raises(SaekitError, match=match):
        load_dictionary(root)


def test_unserializable_provenance_raises_before_writing(tmp_path):
    d = build_dictionary(small_cfg("topk"), D_IN)
    d.provenance = {"when": object()}
    with pytest.raises(SaekitError, match="JSON-serializable"):
        d.save(tmp_path / "sae")
    assert not (tmp_path / "sae").exists()


@pytest.mark.parametrize("umask", [0o022, 0o077, 0o002])
def test_saved_files_follow_the_umask(tmp_path, umask):
    d = build_dictionary(small_cfg("topk"), D_IN)
    old = os.umask(umask)
    try:
        d.save(tmp_path / "sae", log10_density_S=torch.zeros(d.d_sae))
        d.save(tmp_path / "sae")  # an update in place moves files out of a fresh temp dir
        d.save(tmp_path / "sae", log10_density_S=torch.zeros(d.d_sae))
        (tmp_path / "plain").mkdir()  # what mkdir and open give under this umask
        (tmp_path / "plain.txt").write_text("")
    finally:
        os.umask(old)
    modes = {p.name: stat.S_IMODE(p.stat().st_mode) for p in (tmp_path / "sae").iterdir()}
    want = stat.S_IMODE((tmp_path / "plain.txt").stat().st_mode)
    assert modes == dict.fromkeys(
        ["cfg.json", "sae_weights.safetensors", "sparsity.safetensors"], want
    )
    assert stat.S_IMODE((tmp_path / "sae").stat().st_mode) == stat.S_IMODE(
        (tmp_path / "plain").stat().st_mode
    )
