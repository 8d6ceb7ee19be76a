"""Learning-rate schedule, sparsity warmup and the target-L0 controller."""

from __future__ import annotations

import math


def default_lr(d_sae: int) -> float:
    """2e-4 / √(d_sae / 2^14): the width scaling sparsify and dictionary_learning use for Adam."""
    return 2e-4 / math.sqrt(d_sae / 2**14)


def lr_multiplier(step: int, total_steps: int, warmup_steps: int, decay_fraction: float) -> float:
    """Linear warmup over `warmup_steps`, constant, then linear decay to 0 over the last
    `decay_fraction` of the run."""
    if warmup_steps > 0 and step < warmup_steps:
        return (step + 1) / warmup_steps
    decay_steps = int(total_steps * decay_fraction)
    decay_start = total_steps - decay_steps
    if decay_steps > 0 and step >= decay_start:
        return max(0.0, (total_steps - step) / decay_steps)
    return 1.0


def sparsity_scale(step: int, warmup_steps: int) -> float:
    """Multiplier on the sparsity penalty, 0 → 1 linearly over `warmup_steps`."""
    return 1.0 if warmup_steps <= 0 else min(1.0, (step + 1) / warmup_steps)


class L0Controller:
    """Steers a sparsity coefficient so the measured L0 settles at `target`.

    An integral controller on the log scale: log c += gain · log(L0_ema / target). Too many
    active latents raise the coefficient, too few lower it. With gain 0.02 and an EMA over ~50
    steps, a 2x L0 error is corrected by a factor e^0.014 per step: fast enough for runs of a few
    hundred steps, slow enough not to oscillate.
    """

    def __init__(
        self, target: float, coefficient: float, gain: float = 0.02, ema: float = 0.98
    ) -> None:
        self.target = target
        self.log_coefficient = math.log(coefficient)
        self.gain = gain
        self.ema = ema
        self.l0_ema: float | None = None

    @property
    def coefficient(self) -> float:
        return math.exp(self.log_coefficient)

    def update(self, l0: float) -> float:
        self.l0_ema = l0 if self.l0_ema is None else self.ema * self.l0_ema + (1 - self.ema) * l0
        ratio = max(self.l0_ema, 1e-3) / self.target
        self.log_coefficient += self.gain * math.log(ratio)
        # Bound the coefficient to 1e-6..1e6 so a dead or saturated run cannot overflow.
        self.log_coefficient = min(max(self.log_coefficient, -13.8), 13.8)
        return self.coefficient

    def state_dict(self) -> dict[str, float | None]:
        return {"log_coefficient": self.log_coefficient, "l0_ema": self.l0_ema}

    def load_state_dict(self, state: dict[str, float | None]) -> None:
        self.log_coefficient = float(state["log_coefficient"])  # type: ignore[arg-type]
        self.l0_ema = state["l0_ema"]
