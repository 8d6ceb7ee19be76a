"""`saekit bench stream`: stream throughput vs a bare forward stopped at the same layer.

All sides run on the same model in one process under the shared protocol
(`saekit.bench.protocol`): one untimed warm-up call each (on windows no round uses), then per
thread count (1 and all) ≥ 5 rounds in rotating order, medians. In round r every side
processes the same `buffer_sequences` context windows (buffer r of the split), and every side
counts the same tokens: those windows' tokens.

- bare forward (the anchor): TransformerLens' own `model(tokens, stop_at_layer=L+1)` over the
  round's windows in model batches, no hooks.
- stream, 1 hook: `ActivationStream` filling buffer r (the same forward, plus capture, the
  special-token mask, the shuffle) and serving it in batches until fewer than a batch of rows
  is left (masked BOS/separator tokens are not served, so it serves a little fewer rows than
  it reads; `rows_served` reports them).
- stream, 5 hooks: the same with hooks at layers L-4..L (`n_hooks`; key `stream_n`).

ratio_vs_anchor = stream (1 hook) tokens/s ÷ bare-forward tokens/s (target ≥ 0.9: the stream
does a superset of the bare forward's work, so it cannot exceed 1 beyond noise);
five_hooks_cost_vs_one = n-hook time ÷ 1-hook time (target ≤ 1.2). Top-level figures are the
worst over thread counts.
"""

from __future__ import annotations

import os
import re
from collections.abc import Sequence
from dataclasses import replace
from typing import Any

import torch

from saekit.activations.stream import ActivationStream, StreamConfig
from saekit.bench import protocol
from saekit.data.text import DataConfig, build_windows
from saekit.models.hooks import HookedModel, build_hooked_model
from saekit.models.loading import ModelConfig

TARGETS = {"ratio_vs_anchor": ">= 0.9", "five_hooks_cost_vs_one": "<= 1.2"}


def _layer(hook: str) -> int:
    match = re.match(r"blocks\.(\d+)\.", hook)
    if match is None:
        raise ValueError(f"bench stream expects a blocks.N.* hook, got {hook!r}")
    return int(match.group(1))


def _bare_side(hooked: HookedModel, windows: Any, cfg: StreamConfig, warm: int) -> protocol.Side:
    stop = _layer(cfg.hooks[-1]) + 1
    n, per_forward = cfg.buffer_sequences, cfg.model_batch_size
    current: dict[str, Any] = {}
    last = [torch.zeros(())]

    def before_round(r: int) -> None:
        current["tokens"] = windows.get((warm if r < 0 else r) * n, n)

    def step() -> None:
        tokens_NT = current["tokens"]
        with torch.no_grad():
            for i in range(0, n, per_forward):
                out = hooked.model(tokens_NT[i : i + per_forward], stop_at_layer=stop)
        last[0] = out.sum()

    return protocol.Side(
        step, n * windows.windows_NT.shape[1], state=lambda: last, before_round=before_round
    )


def _stream_side(
    hooked: HookedModel, windows: Any, cfg: StreamConfig, warm: int, served: list[int]
) -> protocol.Side:
    current: dict[str, ActivationStream] = {}
    last = [torch.zeros(())]

    def before_round(r: int) -> None:
        stream = ActivationStream(hooked, windows, cfg)
        stream.load_state_dict(
            {
                "buffer_index": warm if r < 0 else r,
                "offset": 0,
                "norm_factors": {},
                "n_tokens_served": 0,
            }
        )
        current["stream"] = stream

    def step() -> None:
        stream = current["stream"]
        batch = stream.next_batch()  # fills the round's buffer: every window, one pass
        while stream.rows_left_in_buffer() >= cfg.batch_size:
            batch = stream.next_batch()
        served.append(stream.n_tokens_served)
        last[0] = torch.stack([x.sum() for x in batch.values()]).sum()

    tokens = cfg.buffer_sequences * windows.windows_NT.shape[1]
    return protocol.Side(step, tokens, state=lambda: last, before_round=before_round)


def run(
    layer: int = 15,
    rounds: int = protocol.MIN_ROUNDS,
    buffer_sequences: int = 16,
    model_batch_size: int = 16,
    threads: Sequence[int] | None = None,
    n_hooks: int = 5,
    hooked: HookedModel | None = None,
    data: DataConfig | None = None,
) -> dict[str, Any]:
    """Defaults: the offline SmolLM2 and corpus; `hooked` and `data` swap in others (tests)."""
    load_before = os.getloadavg()
    counts = list(threads) if threads else protocol.thread_counts()
    model_name = "smollm2-135m" if hooked is None else "given model"
    hooked = hooked or build_hooked_model(ModelConfig())
    data = data or DataConfig()
    # Windows for `rounds` rounds plus one warm-up buffer (index `rounds`).
    n_windows = (rounds + 1) * buffer_sequences
    windows = build_windows(
        data, hooked.tokenizer, "train", max_tokens=n_windows * data.context_size
    )
    one = StreamConfig(
        hooks=(f"blocks.{layer}.hook_resid_post",),
        buffer_sequences=buffer_sequences,
        model_batch_size=model_batch_size,
        batch_size=data.context_size - 1,
    )
    many = replace(
        one, hooks=tuple(f"blocks.{layer - i}.hook_resid_post" for i in range(n_hooks - 1, -1, -1))
    )
    served: dict[str, list[int]] = {"stream_1": [], "stream_n": []}
    sides = {
        "bare": _bare_side(hooked, windows, one, rounds),
        "stream_1": _stream_side(hooked, windows, one, rounds, served["stream_1"]),
        "stream_n": _stream_side(hooked, windows, many, rounds, served["stream_n"]),
    }

    def measure(n: int) -> dict[str, Any]:
        res = protocol.run_rounds(sides, rounds=rounds, desc=f"bench stream, {n} threads")
        tps, ms = res["tokens_per_s"], res["median_ms"]
        return {
            **res,
            "ratio_vs_anchor": tps["stream_1"] / tps["bare"],
            "five_hooks_cost_vs_one": ms["stream_n"] / ms["stream_1"],
        }

    per = protocol.at_threads(measure, counts)
    tokens = buffer_sequences * windows.windows_NT.shape[1]
    return {
        "bench": "stream",
        "model": model_name,
        "hook": one.hooks[0],
        "n_hooks": n_hooks,
        "hooks_n": list(many.hooks),
        "protocol": protocol.protocol_block(
            rounds=rounds,
            warmup=1,
            threads=counts,
            tokens=tokens,
            anchors={
                "bare": {
                    "step": f"TransformerLens model(tokens, stop_at_layer={layer + 1}), "
                    f"{model_batch_size} windows per forward, no hooks",
                    "differences": "no capture, no special-token mask, no shuffle, no batching",
                }
            },
            load_before=load_before,
        ),
        "window_tokens_per_call": tokens,
        "rows_served_per_call": {k: sorted(set(v)) for k, v in served.items()},
        "threads": per,
        "ratio_vs_anchor": min(p["ratio_vs_anchor"] for p in per),
        "five_hooks_cost_vs_one": max(p["five_hooks_cost_vs_one"] for p in per),
        "targets": TARGETS,
    }


def table(result: dict[str, Any]) -> str:
    lines = [
        f"bench stream — {result['model']}, {result['hook']}, "
        f"{result['window_tokens_per_call']} window tokens per call on every side, median of "
        f"{result['protocol']['rounds']} rounds (rotating order), load "
        f"{result['protocol']['load_average_before'][0]:.1f}",
    ]
    names = {
        "bare": "bare forward (stop_at_layer)",
        "stream_1": "stream, 1 hook",
        "stream_n": f"stream, {result['n_hooks']} hooks",
    }
    for per in result["threads"]:
        lines.append(f"{per['threads']} thread(s): {'ms':>8s} {'tokens/s':>10s} {'vs bare':>8s}")
        for side, name in names.items():
            ms, tps = per["median_ms"][side], per["tokens_per_s"][side]
            lines.append(
                f"  {name:30s} {ms:8.0f} {tps:10.0f} {tps / per['tokens_per_s']['bare']:8.3f}"
            )
        lines.append(
            f"  ratio_vs_anchor = {per['ratio_vs_anchor']:.3f} (target ≥ 0.9); "
            f"{result['n_hooks']} hooks cost "
            f"{per['five_hooks_cost_vs_one']:.3f}x one hook (target ≤ 1.2)"
        )
    return "\n".join(lines)
