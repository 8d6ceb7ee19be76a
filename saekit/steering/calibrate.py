"""Strength calibration: find α with a given next-token KL by bisection (docs/steering.md,
step 1 of the steering score).

KL(p_0 ‖ p_α) at the last position of the selection prompts, averaged over prompts, grows with
|α| for small α (it is 0 at α = 0 and its derivative in α is 0 there too). For each target κ,
ascending, bisection on [α of the previous κ, α_max] stops once the KL is within `rel_tol`·κ.
A target the KL does not reach by α_max is recorded as unreached, never dropped (the SNMF
scripts drop such rows silently, which biases per-κ averages toward easy features).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

from saekit.errors import SaekitError


@dataclass(frozen=True)
class Calibration:
    """The strength found for one KL target."""

    kappa: float
    """Target KL (nats)."""
    alpha: float
    """Signed strength whose KL is closest to κ (α_max·sign when unreached)."""
    kl: float
    """Mean KL measured at `alpha`."""
    reached: bool
    """Whether |KL − κ| ≤ rel_tol·κ was achieved."""


def calibrate(
    kl_at: Callable[[float], float],
    kappas: Sequence[float],
    alpha_max: float,
    sign: float = 1.0,
    rel_tol: float = 0.05,
    max_steps: int = 24,
) -> list[Calibration]:
    """One Calibration per κ (ascending) with α = sign·|α|, |α| ∈ (0, alpha_max]."""
    if not alpha_max > 0:
        raise SaekitError(f"alpha_max must be > 0, got {alpha_max}.")
    if sign not in (1.0, -1.0):
        raise SaekitError(f"sign must be +1 or -1, got {sign}.")
    if any(not k > 0 for k in kappas):
        raise SaekitError(f"KL targets must be > 0, got {list(kappas)}.")
    seen: dict[float, float] = {}

    def kl(a: float) -> float:
        if a not in seen:
            seen[a] = float(kl_at(sign * a))
        return seen[a]

    out: list[Calibration] = []
    lo = 0.0
    for kappa in sorted(kappas):
        tol = rel_tol * kappa
        if kl(alpha_max) < kappa - tol:
            out.append(Calibration(kappa, sign * alpha_max, kl(alpha_max), False))
            continue
        a_lo, a_hi = lo, alpha_max
        best = alpha_max
        for _ in range(max_steps):
            mid = 0.5 * (a_lo + a_hi)
            value = kl(mid)
            if abs(value - kappa) < abs(kl(best) - kappa):
                best = mid
            if abs(value - kappa) <= tol:
                break
            a_lo, a_hi = (mid, a_hi) if value < kappa else (a_lo, mid)
        reached = abs(kl(best) - kappa) <= tol
        out.append(Calibration(kappa, sign * best, kl(best), reached))
        if reached:
            lo = best
    return out
