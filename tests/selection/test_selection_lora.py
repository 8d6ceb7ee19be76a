"""LoRA fine-tuning on the tiny HF model: adapters learn, base weights stay, all is undone."""

from __future__ import annotations

from dataclasses import replace

import pytest
import torch

from saekit.errors import SaekitError
from saekit.models.hooks import HookedModel
from saekit.selection.data import Sample
from saekit.selection.finetune import FinetuneConfig, compare_subsets
from saekit.selection.lora import lora_adapters
from saekit.selection.tokens import batch_tensors, content_mask

pytest.importorskip("peft")

TASK = [Sample(f"say {w}", w) for w in ("cat", "dog", "sun", "map", "owl", "fig")]
CFG = FinetuneConfig(
    method="lora", steps=12, batch_size=3, lora_lr=1e-2, max_tokens=24, lora_rank=4, lora_alpha=8
)


def test_lora_learns_and_leaves_the_model_as_it_was(hf_model, tokenizer) -> None:
    hooked = HookedModel(hf_model, tokenizer)
    base = {k: v.clone() for k, v in hf_model.state_dict().items()}
    flags = [p.requires_grad for p in hf_model.parameters()]
    out = compare_subsets(hooked, {"task": TASK}, TASK, CFG, progress=False)
    # Training on the held-out task itself must lower its loss below the untouched model's.
    assert out["task"]["response_loss"] < out["base"]["response_loss"] - 0.05
    assert out["task"]["train_loss_last"] < out["task"]["train_loss_first"]
    after = hf_model.state_dict()
    assert set(after) == set(base)  # adapters removed
    assert all(torch.equal(base[k], after[k]) for k in base)
    assert flags == [p.requires_grad for p in hf_model.parameters()]
    assert not hasattr(hf_model, "peft_config")


def test_lora_changes_adapters_only(hf_model, tokenizer) -> None:
    """Inside the adapters: a step moves B away from 0 and leaves every base weight equal."""
    hooked = HookedModel(hf_model, tokenizer)
    base = {k: v.clone() for k, v in hf_model.state_dict().items()}
    with lora_adapters(hooked, rank=4) as adapters:
        params = adapters.reset()
        # 2 layers × 7 projections × (A, B), nothing else trainable
        assert len(params) == 28 and all(p.requires_grad for p in params)
        frozen = [p for n, p in hf_model.named_parameters() if "lora_" not in n]
        assert frozen and not any(p.requires_grad for p in frozen)
        opt = torch.optim.AdamW(params, lr=1e-2)
        ids = torch.tensor([[1, 5, 6, 7, 8, 2]])
        hooked.run(ids)[0, :-1].logsumexp(-1).sum().backward()
        opt.step()
        moved = [n for n, p in adapters.params.items() if not torch.equal(p, adapters.initial[n])]
        assert any("lora_B" in n for n in moved)
        for name, value in hf_model.state_dict().items():
            if "lora_" not in name:
                key = name.replace(".base_layer", "")
                assert torch.equal(value, base[key]), name
        # reset() returns to the initial adapters: the model equals the base again.
        adapters.reset()
        assert all(torch.equal(p, adapters.initial[n]) for n, p in adapters.params.items())


def test_lora_refuses_transformer_lens(tl_model, tokenizer) -> None:
    with pytest.raises(SaekitError, match="backend 'hf'"):
        compare_subsets(HookedModel(tl_model, tokenizer), {"task": TASK}, TASK, CFG, progress=False)


def test_bfloat16_steps_track_float32_and_scoring_stays_float32(hf_model, tokenizer) -> None:
    """The default autocasts the training steps to bfloat16: the first step's loss (same
    weights, same batch) moves off float32's (by ~1e-5 relative on this tiny model; 0.1% is
    allowed) and the fine-tuned held-out loss stays within 0.5% of float32's; the untouched
    model is scored in float32 either way."""
    hooked = HookedModel(hf_model, tokenizer)
    out = {
        p: compare_subsets(hooked, {"task": TASK}, TASK, replace(CFG, precision=p), False)
        for p in ("float32", "bfloat16")
    }
    full, mixed = out["float32"], out["bfloat16"]
    assert mixed["base"] == full["base"]
    first, first_bf = full["task"]["train_loss_first"], mixed["task"]["train_loss_first"]
    assert first_bf != first and abs(first_bf - first) < 0.001 * first
    tuned, tuned_bf = full["task"]["response_loss"], mixed["task"]["response_loss"]
    assert abs(tuned_bf - tuned) < 0.005 * tuned
    assert tuned_bf < mixed["base"]["response_loss"] - 0.05  # it still learns


def test_hf_unembed_at_scored_positions_only_when_it_matches_the_model(hf_model, tokenizer):
    """The HF runner unembeds only the scored positions: the same loss as the full forward's
    logits; a model whose logits are not plain unembeddings of the decoder's output (here a
    doubled head) is caught on the first batch and keeps the full forward."""
    from saekit.selection.finetune import _Runner
    from saekit.selection.tokens import SampleTokenizer

    hooked = HookedModel(hf_model, tokenizer)
    tok = SampleTokenizer(tokenizer, 24)
    items = [tok(s) for s in TASK[:3]]

    def full_loss() -> float:
        ids_BT, roles_BT = batch_tensors(items, tok.pad_id)
        mask_BT = content_mask(roles_BT, "response")[:, 1:]
        logits_MV = hooked.run(ids_BT)[:, :-1][mask_BT]
        targets_M = ids_BT[:, 1:][mask_BT]
        return float(torch.nn.functional.cross_entropy(logits_MV, targets_M, reduction="sum"))

    runner = _Runner(hooked, None, tok.pad_id)
    with torch.no_grad():
        loss, _ = runner.loss(items, "response")
    assert runner.scored_unembed is True
    assert float(loss) == pytest.approx(full_loss(), rel=1e-6)

    head = hf_model.get_output_embeddings()
    doubled = torch.nn.Linear(head.in_features, head.out_features, bias=False)
    doubled.weight.data = 2 * head.weight.data
    real = hf_model.get_output_embeddings
    hf_model.get_output_embeddings = lambda: doubled  # the scored path now differs
    try:
        runner = _Runner(hooked, None, tok.pad_id)
        with torch.no_grad():
            loss, _ = runner.loss(items, "response")
        assert runner.scored_unembed is False
        assert float(loss) == pytest.approx(full_loss(), rel=1e-6)
    finally:
        hf_model.get_output_embeddings = real
