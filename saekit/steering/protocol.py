"""The judge-free steering protocol at one hook (docs/steering.md): measure, then score.

`SiteStudy` holds what every direction at one hook shares: the neutral prompts (split into a
selection half P_sel and an evaluation half P_eval), the unsteered baseline and the target
token sets of every direction studied together. `measure` runs one (direction, α): next-token
log-probabilities on all prompts, a continuation per prompt and its NLL under the unsteered
model, and the reference CE. Every target set is scored from the same run, so random
directions (the null) and other features (specificity) cost no extra forward passes.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Literal

import torch
from torch import Tensor

from saekit.errors import SaekitError
from saekit.models.hooks import HookedModel
from saekit.steering.calibrate import Calibration, calibrate
from saekit.steering.directions import Direction
from saekit.steering.generate import (
    continuation_nll,
    encode_prompts,
    generate,
    last_logprobs,
    reference_ce,
)
from saekit.steering.interventions import AddDirection
from saekit.steering.metrics import concept_mass, hit_at, kl_last, rep3, target_rate

DEFAULT_PROMPTS = (
    "I think that",
    "The weather today",
    "My favourite thing is",
    "Yesterday I went to",
    "The best way to",
    "She told me that",
    "In the morning",
    "Here is a short story:",
    "One day, a man",
    "It is important to",
    "The city was",
    "When I was young",
    "Let me tell you about",
    "The most interesting",
    "After dinner we",
    "There was a time",
)
"""Neutral stems; even indices form the selection split, odd ones the evaluation split."""


@dataclass(frozen=True)
class SteeringConfig:
    """The steering score protocol (docs/steering.md, "The steering score")."""

    kl_targets: tuple[float, ...] = (0.05, 0.1, 0.25, 0.5)
    """Next-token KL budgets κ (nats) the strength is calibrated to."""
    targets: Literal["vocab", "maxact"] = "vocab"
    """Target tokens: vocabulary projection (output-centric) or top mean activation (input)."""
    target_tokens: int = 20
    """Size k of each direction's target token set."""
    prompts: tuple[str, ...] = DEFAULT_PROMPTS
    """Neutral prompts; even indices select the strength, odd ones report the score."""
    gen_tokens: int = 32
    """Tokens generated per prompt for the generated-concept rate and fluency."""
    temperature: float = 0.0
    """0 = greedy continuations; > 0 = seeded sampling."""
    n_random: int = 8
    """Random directions at the same hook and KL: the null distribution of each score."""
    alpha_max_multiple: float = 8.0
    """Bisection upper bound: this many times the median activation norm at the hook."""
    rel_tol: float = 0.05
    """A KL target counts as reached within rel_tol·κ."""
    max_bisection_steps: int = 24
    """Bisection steps per KL target at most."""
    reference_windows: int = 4
    """Held-out windows for ΔCE_ref (collateral damage on ordinary text; 0 = skip)."""
    sign_flip: bool = True
    """Also score −α at the selected KL (a control: it should not produce the concept)."""
    seed: int = 0
    """Seed of the random directions and of sampling."""

    def __post_init__(self) -> None:
        if len(self.prompts) < 2:
            raise SaekitError("Give at least 2 prompts: one to select the strength, one to report.")
        if not self.kl_targets or min(self.kl_targets) <= 0:
            raise SaekitError(f"kl_targets must be positive numbers, got {self.kl_targets}.")
        if self.target_tokens < 1 or self.gen_tokens < 1 or self.n_random < 0:
            raise SaekitError("target_tokens and gen_tokens must be ≥ 1 and n_random ≥ 0.")


@dataclass
class Setting:
    """Measurements of one direction at one strength, over all prompts and target sets."""

    calibration: Calibration
    mass_PN: Tensor
    """log Σ_{t∈T_n} p(t) at the last prompt position, per prompt and target set."""
    hit_PN: Tensor
    rate_PN: Tensor
    """Fraction of generated tokens in each target set."""
    nll_P: Tensor
    """NLL of the steered continuation under the unsteered model."""
    rep3_P: Tensor
    ce_ref: float | None
    logit_gain_V: Tensor
    """Mean change of next-token log-probabilities over the evaluation prompts."""
    samples: list[tuple[str, str]] = field(default_factory=list)
    """(prompt, continuation) for each evaluation prompt."""


class SiteStudy:
    """Baseline and shared state for steering several directions at one hook."""

    def __init__(
        self,
        model: HookedModel,
        hook: str,
        directions: Sequence[Direction],
        cfg: SteeringConfig,
        reference_BT: Tensor | None = None,
    ) -> None:
        self.model, self.hook, self.cfg = model, hook, cfg
        self.directions = list(directions)
        if any(d.hook != hook for d in self.directions):
            raise SaekitError(f"Every direction of a site study must live at {hook!r}.")
        self.prompts = encode_prompts(model, cfg.prompts)
        self.sel = list(range(0, len(self.prompts), 2))
        self.eval = list(range(1, len(self.prompts), 2))
        self.targets_N = [torch.tensor(d.targets, dtype=torch.long) for d in self.directions]
        self.reference_BT = reference_BT
        width = model.width(hook)
        for d in self.directions:
            if d.vector_D.shape[0] != width:
                raise SaekitError(
                    f"Direction {d.name} has width {d.vector_D.shape[0]} but {hook} has width "
                    f"{width}; steer at the hook the direction was learned at."
                )
        self.alpha_max = cfg.alpha_max_multiple * self._median_norm()
        self.base = self._measure(None, Calibration(0.0, 0.0, 0.0, True))

    def _median_norm(self) -> float:
        norms = []
        for ids in self.prompts:
            acts_TD = self.model.capture(torch.tensor([ids], device=self.model.device), [self.hook])
            norms.append(acts_TD[self.hook][0, 1:].float().norm(dim=-1).cpu())  # BOS left out
        flat = torch.cat(norms)
        if flat.numel() == 0:
            raise SaekitError("Prompts are too short to measure activation norms; lengthen them.")
        return float(flat.median())

    def kl_sel(self, direction: Direction, alpha: float) -> float:
        """Mean next-token KL(p_0 ‖ p_α) over the selection prompts."""
        seqs = [self.prompts[i] for i in self.sel]
        edit = {self.hook: AddDirection(direction.vector_D, alpha)}
        logp_PV = last_logprobs(self.model, seqs, edit)
        return float(kl_last(self.base_logp_PV[self.sel], logp_PV).mean())

    def calibrate(
        self, direction: Direction, kappas: Sequence[float], sign: float = 1.0
    ) -> list[Calibration]:
        return calibrate(
            lambda a: self.kl_sel(direction, a),
            kappas,
            self.alpha_max,
            sign=sign,
            rel_tol=self.cfg.rel_tol,
            max_steps=self.cfg.max_bisection_steps,
        )

    def measure(self, direction: Direction, calibration: Calibration) -> Setting:
        return self._measure(direction, calibration)

    def _measure(self, direction: Direction | None, calibration: Calibration) -> Setting:
        cfg, model = self.cfg, self.model
        edit = (
            {self.hook: AddDirection(direction.vector_D, calibration.alpha)}
            if direction is not None
            else None
        )
        logp_PV = last_logprobs(model, self.prompts, edit)
        if direction is None:
            self.base_logp_PV = logp_PV
        conts = generate(model, self.prompts, cfg.gen_tokens, edit, cfg.temperature, cfg.seed)
        nll_P = continuation_nll(model, self.prompts, conts)  # unsteered model judges fluency
        sets = [set(t.tolist()) for t in self.targets_N]
        N = len(self.targets_N)
        mass_PN = torch.zeros(len(self.prompts), N)
        hit_PN = torch.zeros(len(self.prompts), N)
        for n, t_N in enumerate(self.targets_N):
            mass_PN[:, n] = concept_mass(logp_PV, t_N)
            hit_PN[:, n] = hit_at(logp_PV, t_N, 10)
        rate_PN = torch.tensor([[target_rate(c, s) for s in sets] for c in conts]).reshape(-1, N)
        ce_ref = None
        if self.reference_BT is not None and cfg.reference_windows > 0:
            ce_ref = reference_ce(model, self.reference_BT[: cfg.reference_windows], edit)
        gain_V = (logp_PV[self.eval] - self.base_logp_PV[self.eval]).mean(dim=0)
        tok = model.tokenizer
        return Setting(
            calibration=calibration,
            mass_PN=mass_PN,
            hit_PN=hit_PN,
            rate_PN=rate_PN,
            nll_P=nll_P,
            rep3_P=torch.tensor([rep3(c) for c in conts]),
            ce_ref=ce_ref,
            logit_gain_V=gain_V,
            samples=[(cfg.prompts[i], str(tok.decode(conts[i]))) for i in self.eval],
        )
