"""Attribution of a next-token logit (or logit difference) to every active feature at every
position, with each dictionary spliced in and its error kept as a node (splice.py).

The change explained. m is the target's logit at the prompt's last position (or target −
contrast). For one dictionary, h(α) = y − (1 − α)(y − b) at every ordinary position of its
write hook: α = 1 is the clean forward, α = 0 the baseline where the dictionary writes
decode(0) = b (every code and the error at zero). The change is Δ = m(h(1)) − m(h(0)).

The attribution. Node v_t (z_t,i W_dec[i], a skip transcoder's skip path s_t, or the error
e_t) gets activation × gradient with
the gradient averaged over the path: A(v_t) = v_t · ∫₀¹ ∇_{h_t} m(h(α)) dα (integrated
gradients, Sundararajan et al. 2017). The nodes add up to y − b, so their attributions add up
to ∫₀¹ dm(h(α))/dα dα = Δ: the identity is exact but for the quadrature of the integral. It
uses Gauss-Legendre points, the residual Δ − Σ A is measured on every prompt (α = 0 and 1 ride
in the same batch), and the points double until |Δ − Σ A| ≤ tolerance · |Δ|. Plain activation
× gradient at the clean point (attribution patching) is the one-point rule at α = 1; its
residual is reported as `linear_residual`, to show how far the first-order estimate is off.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Any

import numpy as np
import torch
from torch import Tensor

from saekit.attribution.config import AttributeConfig
from saekit.attribution.splice import (
    Nodes,
    Splice,
    check_splice,
    decompose,
    describe,
    frozen_weights,
    run_spliced,
    write_hook,
)
from saekit.dictionaries import Dictionary
from saekit.errors import SaekitError
from saekit.models.hooks import HookedModel


@dataclass(frozen=True)
class Metric:
    """The explained quantity at the last position: logit[target] (− logit[contrast])."""

    target_id: int
    contrast_id: int | None = None

    def __call__(self, logits_NV: Tensor) -> Tensor:
        m_N = logits_NV[:, self.target_id]
        return m_N if self.contrast_id is None else m_N - logits_NV[:, self.contrast_id]

    def describe(self, tokenizer: Any) -> dict[str, Any]:
        tokens = {"target": self.target_id, "contrast": self.contrast_id}
        out: dict[str, Any] = {
            name: None if tid is None else {"id": tid, "token": tokenizer.decode([tid])}
            for name, tid in tokens.items()
        }
        text = f"logit({out['target']['token']!r})"
        if self.contrast_id is not None:
            text += f" − logit({out['contrast']['token']!r})"
        return out | {"metric": text}


def token_id(tokenizer: Any, text: str, flag: str) -> int:
    """The id of `text` when it is exactly one token; otherwise an error naming the fix."""
    ids = tokenizer(text, add_special_tokens=False)["input_ids"]
    if len(ids) == 1:
        return int(ids[0])
    pieces = [tokenizer.decode([i]) for i in ids]
    spaced = " " + text
    hint = ""
    if (
        not text.startswith(" ")
        and len(tokenizer(spaced, add_special_tokens=False)["input_ids"]) == 1
    ):
        hint = f" {spaced!r} (with its leading space) is one token."
    raise SaekitError(
        f"{flag} {text!r} is {len(ids)} tokens {pieces}; give exactly one token.{hint}"
    )


def prompt_tokens(model: HookedModel, prompt: str) -> Tensor:
    """[1, T] ids of the prompt, BOS first when the tokenizer has one (as training windows)."""
    tok = model.tokenizer
    ids = [int(i) for i in tok(prompt, add_special_tokens=False)["input_ids"]]
    bos = getattr(tok, "bos_token_id", None)
    ids = ([int(bos)] if bos is not None else []) + ids
    if len(ids) < 2 or not prompt.strip():
        raise SaekitError(f"--prompt {prompt!r} has no tokens to attribute; give some text.")
    return torch.tensor([ids], device=model.device)


def gauss_legendre(n: int) -> tuple[Tensor, Tensor]:
    """Points α_j and weights w_j of the n-point Gauss-Legendre rule on [0, 1] (float64)."""
    x, w = np.polynomial.legendre.leggauss(n)
    return torch.from_numpy((x + 1) / 2), torch.from_numpy(w / 2)


def path_gradients(
    model: HookedModel,
    s: Splice,
    tokens_1T: Tensor,
    nodes: Nodes,
    metric: Metric,
    alphas_N: Tensor,
    batch_size: int,
) -> tuple[Tensor, Tensor]:
    """m(h(α)) [N] and ∇_h m(h(α)) [N, T, D] at each path point (float64)."""
    y_TD, base_D = nodes.y_TD, nodes.base_D
    ms, grads = [], []
    with frozen_weights(model), torch.enable_grad():
        for start in range(0, len(alphas_N), batch_size):
            a_N11 = alphas_N[start : start + batch_size].to(y_TD)[:, None, None]
            # y − (1 − α)(y − b): exactly y at α = 1, so the clean end of the path is the clean run.
            h_NTD = (y_TD - (1 - a_N11) * (y_TD - base_D)).requires_grad_(True)
            m_N = metric(run_spliced(model, s, tokens_1T, nodes.mask_T, h_NTD))
            (g_NTD,) = torch.autograd.grad(m_N.sum(), h_NTD)  # rows are independent forwards
            ms.append(m_N.detach().double())
            grads.append(g_NTD.double())
    return torch.cat(ms), torch.cat(grads)


@dataclass(frozen=True)
class SpliceAttribution:
    """Attributions through one dictionary on one prompt."""

    delta: float
    """m(clean) − m(baseline): the change the nodes share."""
    metric_clean: float
    metric_baseline: float
    steps: int
    """Gauss-Legendre points used."""
    residual: float
    """Δ − (Σ feature attributions + Σ skip attributions + Σ error attributions)."""
    linear_residual: float
    """The same for plain activation × gradient at the clean point."""
    positions: Tensor
    features: Tensor
    activations: Tensor
    attributions: Tensor
    """One entry per active (position, feature), largest |attribution| first."""
    error_T: Tensor
    """Error node attribution per position (0 at special positions)."""
    skip_T: Tensor | None = None
    """Skip-path node attribution per position (a skip transcoder's; None otherwise)."""

    @property
    def relative_residual(self) -> float:
        return abs(self.residual) / max(abs(self.delta), 1e-12)


def attribute_splice(
    model: HookedModel,
    s: Splice,
    tokens_1T: Tensor,
    metric: Metric,
    cfg: AttributeConfig,
    nodes: Nodes | None = None,
) -> SpliceAttribution:
    """Integrated-gradient attributions through splice `s`, points doubled to `tolerance`."""
    nodes = nodes if nodes is not None else decompose(model, s, tokens_1T)
    diff_TD = (nodes.y_TD - nodes.base_D).double() * nodes.mask_T[:, None]
    n = cfg.steps
    while True:
        alphas_J, w_J = gauss_legendre(n)
        ends = torch.tensor([0.0, 1.0], dtype=torch.float64)
        m_N, g_NTD = path_gradients(
            model, s, tokens_1T, nodes, metric, torch.cat([alphas_J, ends]), cfg.batch_size
        )
        gbar_TD = torch.einsum("j,jtd->td", w_J.to(g_NTD), g_NTD[:n])
        delta = float(m_N[-1] - m_N[-2])
        residual = delta - float((gbar_TD * diff_TD).sum())
        if abs(residual) <= cfg.tolerance * abs(delta) or 2 * n > cfg.max_steps:
            break
        n *= 2
    linear_residual = delta - float((g_NTD[-1] * diff_TD).sum())
    W_dec_SD = s.dictionary.W_dec.detach().double()
    z_TS = nodes.z_TS.detach().double()
    pos_E, feat_E = z_TS.nonzero(as_tuple=True)
    act_E = z_TS[pos_E, feat_E]
    attr_E = act_E * (gbar_TD[pos_E] * W_dec_SD[feat_E]).sum(-1)
    order = attr_E.abs().argsort(descending=True)
    return SpliceAttribution(
        delta=delta,
        metric_clean=float(m_N[-1]),
        metric_baseline=float(m_N[-2]),
        steps=n,
        residual=residual,
        linear_residual=linear_residual,
        positions=pos_E[order].cpu(),
        features=feat_E[order].cpu(),
        activations=act_E[order].cpu(),
        attributions=attr_E[order].cpu(),
        error_T=(gbar_TD * nodes.err_TD.double()).sum(-1).cpu(),
        skip_T=None if nodes.skip_TD is None else (gbar_TD * nodes.skip_TD.double()).sum(-1).cpu(),
    )


def splice_json(s: Splice, a: SpliceAttribution, tolerance: float) -> dict[str, Any]:
    """The JSON record of one dictionary's attributions."""
    sum_features = float(a.attributions.sum())
    sum_error = float(a.error_T.sum())
    skip = None if a.skip_T is None else [float(v) for v in a.skip_T]
    return describe(s) | {
        "delta": a.delta,
        "metric_spliced": a.metric_clean,
        "metric_baseline": a.metric_baseline,
        "sum_features": sum_features,
        "sum_error": sum_error,
        "sum_skip": None if skip is None else sum(skip),
        "residual": a.residual,
        "relative_residual": a.relative_residual,
        "identity_met": a.relative_residual <= tolerance,
        "steps": a.steps,
        "linear_residual": a.linear_residual,
        "features": [
            {"position": int(t), "feature": int(i), "activation": float(v), "attribution": float(r)}
            for t, i, v, r in zip(a.positions, a.features, a.activations, a.attributions)
        ],
        "error": [float(e) for e in a.error_T],
        "skip": skip,
    }


def attribute(
    model: HookedModel,
    dictionaries: Dictionary | dict[str, Dictionary],
    prompt: str,
    target: str = "",
    contrast: str = "",
    config: AttributeConfig | None = None,
) -> dict[str, Any]:
    """`saekit.attribute`: attributions of the next-token logit of `target` (default: the
    model's top prediction; minus `contrast`'s when given) after `prompt` to every active
    feature of each dictionary, spliced in alone at the hook it was trained on (a transcoder:
    read at its input hook, written at its output hook). Returns the report `saekit
    attribute` writes to attribution.json."""
    named = dictionaries if isinstance(dictionaries, dict) else {"dictionary": dictionaries}
    splices = []
    for name, sae in named.items():
        if not sae.cfg.hook:
            raise SaekitError(f"{name} records no hook; set its cfg.hook to the hook it reads.")
        sae = sae.to(model.device).eval()
        splices.append(Splice(name, sae, sae.cfg.hook, write_hook(sae, sae.cfg.hook)))
    cfg = replace(config or AttributeConfig(), prompt=prompt, target=target, contrast=contrast)
    return attribute_splices(model, splices, cfg)


@torch.no_grad()
def attribute_splices(
    model: HookedModel, splices: list[Splice], cfg: AttributeConfig
) -> dict[str, Any]:
    """The JSON report of cfg.prompt through every splice (`saekit attribute RUN`)."""
    if not splices:
        raise SaekitError("No dictionaries to attribute through; check --layer-set.")
    for s in splices:
        check_splice(model, s)
    tok = model.tokenizer
    tokens_1T = prompt_tokens(model, cfg.prompt)
    logits_V = model.run(tokens_1T)[0, -1].float()
    target = token_id(tok, cfg.target, "--target") if cfg.target else int(logits_V.argmax())
    contrast = token_id(tok, cfg.contrast, "--contrast") if cfg.contrast else None
    metric = Metric(target, contrast)
    ids = [int(i) for i in tokens_1T[0]]
    report: dict[str, Any] = {
        "prompt": cfg.prompt,
        "tokens": [tok.decode([i]) for i in ids],
        "token_ids": ids,
        "position": len(ids) - 1,
        **metric.describe(tok),
        "metric_clean": float(metric(logits_V[None])),
        "baseline": "every ordinary position of the write hook set to decode(0)",
        "tolerance": cfg.tolerance,
        "dictionaries": {},
    }
    for s in splices:
        a = attribute_splice(model, s, tokens_1T, metric, cfg)
        report["dictionaries"][s.name] = splice_json(s, a, cfg.tolerance)
    return report
