"""Downstream check (issue deliverable 5b): fine-tune on each selected subset, compare the
held-out target-task loss.

Either the last `n_blocks` transformer blocks (`method="last_blocks"`) or LoRA adapters on
every block (`method="lora"`, saekit.selection.lora) are trained (AdamW, constant lr, a few
dozen steps) on the response tokens of one subset (the usual instruction-tuning loss, as in
LESS); everything else is frozen. The score is the next-token loss on the *response* tokens of
held-out target samples — the task answer — and on all their content tokens. Blocks or
adapters are restored after every run, so each subset starts from the same model.
"""

from __future__ import annotations

import random
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any, Literal

import torch
from torch import Tensor, nn
from tqdm import tqdm

from saekit.errors import SaekitError
from saekit.models.hooks import HookedModel
from saekit.selection.data import Sample
from saekit.selection.lora import LoraAdapters, lora_adapters
from saekit.selection.tokens import SampleTokenizer, Tokenized, batch_tensors, content_mask


@dataclass(frozen=True)
class FinetuneConfig:
    """A small fine-tuning budget for comparing subsets."""

    n_blocks: int = 2
    """Train the last this many transformer blocks (all else frozen)."""
    steps: int = 32
    """Optimizer steps per subset."""
    batch_size: int = 8
    """Samples per step."""
    lr: float = 1e-4
    """AdamW learning rate (constant; weight decay 0)."""
    max_tokens: int = 128
    """Tokens per sample at most."""
    seed: int = 0
    """Seed of the batch order (the same for every subset size) and of the LoRA init."""
    method: Literal["last_blocks", "lora"] = "last_blocks"
    """last_blocks: train the last `n_blocks` blocks in full (TransformerLens or HF). lora:
    rank-`lora_rank` adapters on every block's projections, base frozen (HF backend, peft)."""
    lora_rank: int = 8
    """Rank of the LoRA adapters."""
    lora_alpha: int = 16
    """LoRA scale numerator: the update is (alpha / rank) · B A."""
    lora_lr: float = 1e-3
    """AdamW learning rate of the LoRA adapters (B starts at 0, so they need a larger one)."""
    precision: Literal["bfloat16", "float32"] = "bfloat16"
    """Autocast dtype of the training steps (weights, gradients and Adam stay float32, as in
    the usual mixed-precision fine-tune); held-out losses are always scored in float32."""


def _blocks(model: HookedModel) -> nn.ModuleList:
    inner = model.model
    blocks = getattr(inner, "blocks", None)
    if blocks is None:
        blocks = getattr(getattr(inner, "model", None), "layers", None)
    if not isinstance(blocks, nn.ModuleList):
        raise SaekitError(
            "Cannot find the transformer blocks to fine-tune (blocks / model.layers)."
        )
    return blocks


@contextmanager
def trainable_tail(model: HookedModel, n_blocks: int) -> Iterator[list[nn.Parameter]]:
    """Only the last `n_blocks` blocks require grad inside; weights and flags restored after."""
    blocks = _blocks(model)
    if not 1 <= n_blocks <= len(blocks):
        raise SaekitError(f"n_blocks must be in [1, {len(blocks)}]; got {n_blocks}.")
    tail = blocks[len(blocks) - n_blocks :]
    saved = {k: v.detach().clone() for k, v in tail.state_dict().items()}
    flags = {id(p): p.requires_grad for p in model.model.parameters()}
    for p in model.model.parameters():
        p.requires_grad_(False)
    params = list(tail.parameters())
    for p in params:
        p.requires_grad_(True)
    try:
        yield params
    finally:
        tail.load_state_dict(saved)
        for p in model.model.parameters():
            p.requires_grad_(flags[id(p)])


class _Runner:
    """Next-token losses of a model whose last `n_blocks` blocks may be training.

    On TransformerLens the residual entering the first trained block is computed once per
    sample (no grad) and cached; a step then runs only those blocks, ln_final and the unembed
    at the scored positions (the 49k-vocab unembed of every position would cost more than the
    blocks). On HF models every step runs the full decoder, and the unembed at the scored
    positions only, unless the model's own logits differ from that (checked on the first batch).
    """

    def __init__(self, model: HookedModel, n_blocks: int | None, pad_id: int) -> None:
        self.model, self.pad_id = model, pad_id
        n_layers = len(_blocks(model))
        if n_blocks is not None and not 1 <= n_blocks <= n_layers:
            raise SaekitError(f"n_blocks must be in [1, {n_layers}]; got {n_blocks}.")
        # None: every block may change (LoRA), so every step runs the full forward.
        self.start = 0 if n_blocks is None else n_layers - n_blocks
        cached = model.is_transformer_lens and n_blocks is not None
        self.hook = f"blocks.{self.start}.hook_resid_pre" if cached else None
        self.cache: dict[tuple[int, ...], Tensor] = {}
        # HF: the unembed (a fifth of SmolLM2's forward) only at the scored positions, once a
        # first batch has shown it gives the model's own logits (some models post-process them).
        self.scored_unembed: bool | None = False if model.is_transformer_lens else None

    def prepare(self, items: Sequence[Tokenized], batch_size: int = 16) -> None:
        """Cache the tail's input residual of every item not cached yet."""
        if self.hook is None:
            return
        todo = list({tuple(t.ids): t for t in items if tuple(t.ids) not in self.cache}.values())
        for start in range(0, len(todo), batch_size):
            chunk = todo[start : start + batch_size]
            ids_BT, _ = batch_tensors(list(chunk), self.pad_id)
            resid_BTD = self.model.capture(ids_BT.to(self.model.device), [self.hook])[self.hook]
            for i, t in enumerate(chunk):
                self.cache[tuple(t.ids)] = resid_BTD[i, : len(t.ids)].clone()

    def loss(self, items: Sequence[Tokenized], part: str) -> tuple[Tensor, int]:
        """Summed next-token loss over `part` tokens (each predicted from the position before)."""
        ids_BT, roles_BT = batch_tensors(list(items), self.pad_id)
        device = self.model.device
        mask_BT = content_mask(roles_BT, part)[:, 1:].to(device)
        targets = ids_BT[:, 1:].to(device)[mask_BT]
        if self.hook is None:
            logits_MV = self._logits(ids_BT.to(device), mask_BT)
        else:
            tl = self.model.model
            resid_BTD = torch.zeros(
                len(items), ids_BT.shape[1], self.cache[tuple(items[0].ids)].shape[-1]
            )
            for i, t in enumerate(items):
                resid_BTD[i, : len(t.ids)] = self.cache[tuple(t.ids)]
            resid_BTD = resid_BTD.to(device)
            for block in _blocks(self.model)[self.start :]:
                resid_BTD = block(resid_BTD)
            final_MD = tl.ln_final(resid_BTD[:, :-1])[mask_BT]  # type: ignore[operator]
            logits_MV = tl.unembed(final_MD[None])[0]  # type: ignore[operator]
        loss = nn.functional.cross_entropy(logits_MV.float(), targets, reduction="sum")
        return loss, int(mask_BT.sum())

    def _logits(self, ids_BT: Tensor, mask_BT: Tensor) -> Tensor:
        """Logits [M, vocab] at the positions of mask_BT (each predicting the next token)."""
        if self.scored_unembed is None:
            with torch.no_grad(), torch.autocast(ids_BT.device.type, enabled=False):
                full = self.model.run(ids_BT)[:, :-1][mask_BT]
                self.scored_unembed = torch.allclose(
                    self._unembed_scored(ids_BT, mask_BT), full, rtol=1e-4, atol=1e-4
                )
        if self.scored_unembed:
            return self._unembed_scored(ids_BT, mask_BT)
        return self.model.run(ids_BT)[:, :-1][mask_BT]

    def _unembed_scored(self, ids_BT: Tensor, mask_BT: Tensor) -> Tensor:
        inner: Any = self.model.model  # an HF causal LM (its methods are not typed)
        hidden = inner.get_decoder()(input_ids=ids_BT).last_hidden_state[:, :-1][mask_BT]
        logits_MV: Tensor = inner.get_output_embeddings()(hidden)
        return logits_MV


def heldout_loss(
    runner: _Runner, items: Sequence[Tokenized], batch_size: int = 16
) -> dict[str, float]:
    """Mean next-token loss on response tokens and on all content tokens."""
    runner.prepare(items)
    sums = {"response": [0.0, 0], "both": [0.0, 0]}
    with torch.no_grad():
        for start in range(0, len(items), batch_size):
            for part in sums:
                loss, n = runner.loss(items[start : start + batch_size], part)
                sums[part][0] += float(loss)
                sums[part][1] += n
    if sums["response"][1] == 0:
        raise SaekitError("Held-out samples have no response tokens; cannot score the task loss.")
    return {
        "response_loss": sums["response"][0] / sums["response"][1],
        "content_loss": sums["both"][0] / max(sums["both"][1], 1),
    }


@contextmanager
def _trainable(
    model: HookedModel, cfg: FinetuneConfig, adapters: LoraAdapters | None
) -> Iterator[list[nn.Parameter]]:
    if adapters is None:
        with trainable_tail(model, cfg.n_blocks) as params:
            yield params
    else:
        yield adapters.reset()


def _finetune(
    runner: _Runner,
    items: list[Tokenized],
    heldout: list[Tokenized],
    cfg: FinetuneConfig,
    progress: bool,
    desc: str,
    adapters: LoraAdapters | None = None,
) -> dict[str, float]:
    """Train the tail on `items`, score `heldout`; the tail is restored afterwards."""
    rng = random.Random(cfg.seed)
    order: list[int] = []
    while len(order) < cfg.steps * cfg.batch_size:
        epoch = list(range(len(items)))
        rng.shuffle(epoch)
        order += epoch
    # Only the rows a step uses are cached (the full-pool reference draws 256 of thousands).
    runner.prepare([items[i] for i in sorted(set(order[: cfg.steps * cfg.batch_size]))])
    model = runner.model
    was_training = model.model.training
    losses = []
    with _trainable(model, cfg, adapters) as params:
        lr = cfg.lr if adapters is None else cfg.lora_lr
        opt = torch.optim.AdamW(params, lr=lr, weight_decay=0.0)
        model.model.train()
        device = model.device.type
        mixed = cfg.precision == "bfloat16"
        for step in tqdm(range(cfg.steps), desc=desc, disable=not progress, unit="step"):
            rows = order[step * cfg.batch_size : (step + 1) * cfg.batch_size]
            with torch.enable_grad(), torch.autocast(device, torch.bfloat16, enabled=mixed):
                loss, n = runner.loss([items[i] for i in rows], "response")
                (loss / max(n, 1)).backward()
            opt.step()
            opt.zero_grad(set_to_none=True)
            losses.append(loss.item() / max(n, 1))
        model.model.train(was_training)
        scores = heldout_loss(runner, heldout)
    scores["train_loss_first"], scores["train_loss_last"] = losses[0], losses[-1]
    return scores


def compare_subsets(
    model: HookedModel,
    subsets: Mapping[str, Sequence[Sample]],
    heldout: Sequence[Sample],
    cfg: FinetuneConfig = FinetuneConfig(),
    progress: bool = True,
) -> dict[str, dict[str, float]]:
    """Held-out target losses of the untouched model ("base") and after tuning on each subset."""
    if not heldout:
        raise SaekitError("No held-out target samples to score the fine-tuned models on.")
    empty = [name for name, subset in subsets.items() if not subset]
    if empty:
        raise SaekitError(f"Cannot fine-tune on empty subsets: {', '.join(empty)}.")
    tok = SampleTokenizer(model.tokenizer, cfg.max_tokens)
    held = [tok(s) for s in heldout]
    if cfg.method == "lora":
        runner = _Runner(model, None, tok.pad_id)
        out = {"base": heldout_loss(runner, held)}
        with lora_adapters(model, cfg.lora_rank, cfg.lora_alpha, cfg.seed) as adapters:
            for name, subset in subsets.items():
                out[name] = _finetune(
                    runner, [tok(s) for s in subset], held, cfg, progress, f"lora {name}", adapters
                )
        return out
    runner = _Runner(model, cfg.n_blocks, tok.pad_id)
    out = {"base": heldout_loss(runner, held)}
    for name, subset in subsets.items():
        out[name] = _finetune(runner, [tok(s) for s in subset], held, cfg, progress, f"tune {name}")
    return out
