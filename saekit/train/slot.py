"""One dictionary's training state: the model, its Adam and schedule, dead-latent clocks and
L0 controller; plus how a recipe entry is named and which hook it reads."""

from __future__ import annotations

from typing import Any

import torch

from saekit.activations.stream import BaseStream
from saekit.dictionaries import SAEConfig, TrainableDictionary
from saekit.errors import SaekitError
from saekit.train.config import TrainConfig
from saekit.train.schedule import default_lr, l0_controller, lr_multiplier


class Slot:
    """One dictionary and everything that trains it."""

    def __init__(
        self, name: str, hook: str, sae: TrainableDictionary, cfg: TrainConfig, n_steps: int
    ) -> None:
        self.name, self.hook, self.sae = name, hook, sae
        self.transcoder = sae.is_transcoder
        self.target_hook = sae.cfg.output_hook or hook
        """The hook whose rows the dictionary must reproduce (a transcoder's output hook)."""
        lr = cfg.lr if cfg.lr is not None else sae.default_lr_scale * default_lr(sae.d_sae)
        decay = sae.default_lr_decay_fraction
        decay = decay if cfg.lr_decay_fraction is None else cfg.lr_decay_fraction
        warmup = sae.default_lr_warmup_steps
        warmup = warmup if cfg.lr_warmup_steps is None else cfg.lr_warmup_steps
        clip = cfg.grad_clip_norm
        self.grad_clip_norm = sae.default_grad_clip_norm if clip is None else clip
        """The gradient-norm clip (0: none): the recipe's, else the method's default."""
        # fused: one pass over Adam's state instead of ~10 per tensor (same update up to float
        # rounding; its cost in docs/benchmarks.md).
        self.optimizer = torch.optim.Adam(sae.parameters(), lr=lr, betas=cfg.adam_betas, fused=True)
        self.scheduler = torch.optim.lr_scheduler.LambdaLR(
            self.optimizer,
            lambda s: lr_multiplier(s, n_steps, warmup, decay),
        )
        self.tokens_since_fired_S = torch.zeros(sae.d_sae, dtype=torch.long, device=cfg.device)
        self.fire_count_S = torch.zeros(sae.d_sae, dtype=torch.float64, device=cfg.device)
        self.controller = l0_controller(sae, name)

    def state(self) -> dict[str, Any]:
        return {
            "optimizer": self.optimizer.state_dict(),
            "scheduler": self.scheduler.state_dict(),
            "tokens_since_fired": self.tokens_since_fired_S,
            "fire_count": self.fire_count_S,
            "controller": self.controller.state_dict() if self.controller else None,
            "sparsity_coefficient": self.sae.sparsity_coefficient,
        }

    def load(self, state: dict[str, Any]) -> None:
        self.optimizer.load_state_dict(state["optimizer"])
        self.scheduler.load_state_dict(state["scheduler"])
        self.tokens_since_fired_S.copy_(state["tokens_since_fired"])
        self.fire_count_S.copy_(state["fire_count"])
        if self.controller and state["controller"]:
            self.controller.load_state_dict(state["controller"])
        if state["sparsity_coefficient"] is not None:
            self.sae.sparsity_coefficient = state["sparsity_coefficient"]


def resolve_hook(i: int, sae_cfg: SAEConfig, stream: BaseStream) -> str:
    """The hook saes[i] reads (default: the stream's first); it, and a transcoder's output
    hook, must be streamed."""
    hook = sae_cfg.hook or stream.cfg.hooks[0]
    for field, name in (("hook", hook), ("output_hook", sae_cfg.output_hook)):
        if name and name not in stream.d_in:
            raise SaekitError(
                f"saes[{i}].{field} {name!r} is not streamed; add it to "
                f"stream.hooks (now {list(stream.cfg.hooks)})."
            )
    return hook


def slot_name(i: int, cfg: SAEConfig, hook: str) -> str:
    """`00-topk-HOOK`; a transcoder `00-topk-transcoder-HOOK` (`skip-transcoder` with skip)."""
    kind = ("-skip-transcoder" if cfg.skip_connection else "-transcoder") * bool(cfg.output_hook)
    return f"{i:02d}-{cfg.method}{kind}-{hook.replace('/', '_').replace(':', '_')}"
