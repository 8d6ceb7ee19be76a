"""Model specs → loaded models: local HF directories on both backends, and clear failures."""

from __future__ import annotations

import pytest
import torch

from saekit.errors import SaekitError
from saekit.models.loading import ModelConfig, describe, load_model, resolve


def test_resolve_passes_local_dirs_and_hub_ids(tiny_model_dir):
    assert resolve(str(tiny_model_dir)) == str(tiny_model_dir)
    assert resolve("HuggingFaceTB/SmolLM2-135M") == "HuggingFaceTB/SmolLM2-135M"


def test_resolve_rejects_a_dir_without_config(tmp_path):
    with pytest.raises(SaekitError, match="without config.json"):
        resolve(str(tmp_path))


def test_resolve_rejects_a_missing_path(tmp_path):
    with pytest.raises(SaekitError, match="does not exist.*smollm2-135m"):
        resolve(str(tmp_path / "missing_model"))


def test_unreachable_hub_id_names_the_offline_default():
    # HF_HUB_OFFLINE=1 (conftest): the lookup fails at once with one clear message.
    with pytest.raises(SaekitError, match="offline default"):
        load_model(ModelConfig(name="saekit-tests/no-such-model", backend="hf"))


def test_local_dir_loads_on_both_backends_with_the_same_logits(tiny_model_dir, hf_model):
    hf, tok = load_model(ModelConfig(name=str(tiny_model_dir), backend="hf"))
    tl, _ = load_model(ModelConfig(name=str(tiny_model_dir), backend="transformer_lens"))
    assert hasattr(tl, "hook_dict") and not hasattr(hf, "hook_dict")
    assert not hf.training and not tl.training
    x = torch.tensor([tok("the cat sat", add_special_tokens=False)["input_ids"]])
    with torch.no_grad():
        expected = hf_model(input_ids=x).logits
        assert torch.equal(hf(input_ids=x).logits, expected)
        torch.testing.assert_close(tl(x), expected, atol=1e-5, rtol=1e-4)
    assert describe(hf) == {"class": "LlamaForCausalLM", "n_layers": 2}
    assert describe(tl) == {"class": "HookedTransformer", "n_layers": 2}


def test_bfloat16_dtype_is_applied(tiny_model_dir):
    hf, _ = load_model(ModelConfig(name=str(tiny_model_dir), backend="hf", dtype="bfloat16"))
    assert next(hf.parameters()).dtype == torch.bfloat16
