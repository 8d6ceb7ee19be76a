"""One dictionary's training state: the model, its Adam and schedule, dead-latent clocks and
L0 controller; plus how a recipe entry is named and which hook it reads."""

from __future__ import annotations

import copy
from typing import Any

import torch

from saekit.activations.stream import BaseStream
from saekit.dictionaries import SAEConfig, TrainableDictionary
from saekit.errors import SaekitError
from saekit.train.averaging import WeightAverage
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
        opt = resolved_optimizer(type(sae), sae.d_sae, cfg)
        lr, warmup, decay = opt["lr"], int(opt["lr_warmup_steps"]), opt["lr_decay_fraction"]
        self.grad_clip_norm = opt["grad_clip_norm"]
        """The gradient-norm clip (0: none): the recipe's, else the method's default."""
        # fused: one pass over Adam's state instead of ~10 per tensor (same update up to float
        # rounding; its cost in docs/benchmarks.md).
        self.optimizer = torch.optim.Adam(sae.parameters(), lr=lr, betas=cfg.adam_betas, fused=True)
        self.lr_multiplier = lambda step: lr_multiplier(step, n_steps, warmup, decay)
        """The lr of step `step` (from 0) as a multiple of the peak lr."""
        self.scheduler = torch.optim.lr_scheduler.LambdaLR(self.optimizer, self.lr_multiplier)
        self.tokens_since_fired_S = torch.zeros(sae.d_sae, dtype=torch.long, device=cfg.device)
        self.fire_count_S = torch.zeros(sae.d_sae, dtype=torch.float64, device=cfg.device)
        self.controller = l0_controller(sae, name)
        ema = opt["ema_decay"]
        self.average = WeightAverage(sae, ema) if ema > 0 else None
        """The moving average of the weights that is exported (None: the last iterate)."""

    def exported(self) -> TrainableDictionary:
        """A copy of the dictionary as the run exports it now: the weight average if there is
        one, else the live weights."""
        if self.average is None:
            return copy.deepcopy(self.sae)
        return self.average.averaged(self.sae)

    def state(self) -> dict[str, Any]:
        return {
            "optimizer": self.optimizer.state_dict(),
            "scheduler": self.scheduler.state_dict(),
            "tokens_since_fired": self.tokens_since_fired_S,
            "fire_count": self.fire_count_S,
            "controller": self.controller.state_dict() if self.controller else None,
            "sparsity_coefficient": self.sae.sparsity_coefficient,
            "average": self.average.state_dict() if self.average else None,
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
        if self.average is not None:
            # A checkpoint written without an average: start one from its weights.
            if saved := state.get("average"):
                self.average.load_state_dict(saved)
            else:
                self.average.reset(self.sae)


def resolved_optimizer(
    method: type[TrainableDictionary], d_sae: int, cfg: TrainConfig
) -> dict[str, float]:
    """lr, warmup, decay, clip and weight average as a dictionary of this method trains: the
    recipe's where set, else the method's defaults."""
    recipe = {
        "lr": cfg.lr,
        "lr_warmup_steps": cfg.lr_warmup_steps,
        "lr_decay_fraction": cfg.lr_decay_fraction,
        "grad_clip_norm": cfg.grad_clip_norm,
        "ema_decay": cfg.ema_decay,
    }
    defaults = {
        "lr": method.default_lr_scale * default_lr(d_sae),
        "lr_warmup_steps": method.default_lr_warmup_steps,
        "lr_decay_fraction": method.default_lr_decay_fraction,
        "grad_clip_norm": method.default_grad_clip_norm,
        "ema_decay": method.default_ema_decay,
    }
    return {k: defaults[k] if v is None else v for k, v in recipe.items()}


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
