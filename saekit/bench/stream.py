"""`saekit bench stream`: stream throughput vs a bare forward stopped at the same layer.

Both sides run on the same model and the same windows in one process, interleaved in rounds so
that machine noise hits both alike. The anchor is TransformerLens' own
`model(tokens, stop_at_layer=L+1)` with no hooks; the stream adds capture, masking, shuffling and
batching. ratio_vs_anchor = stream tokens/s ÷ bare-forward tokens/s (target ≥ 0.9), and the
5-hook stream's cost is reported relative to the 1-hook stream (target ≤ 1.2x).
"""

from __future__ import annotations

import re
import time
from dataclasses import replace
from typing import Any

import torch

from saekit.activations.stream import ActivationStream, StreamConfig
from saekit.data.text import DataConfig, build_windows
from saekit.models.hooks import build_hooked_model
from saekit.models.loading import ModelConfig


def _layer(hook: str) -> int:
    match = re.match(r"blocks\.(\d+)\.", hook)
    if match is None:
        raise ValueError(f"bench stream expects a blocks.N.* hook, got {hook!r}")
    return int(match.group(1))


def run(
    layer: int = 15, rounds: int = 3, buffer_sequences: int = 64, model_batch_size: int = 16
) -> dict[str, Any]:
    hooked = build_hooked_model(ModelConfig())
    data = DataConfig()
    n_windows = rounds * buffer_sequences * 2
    windows = build_windows(data, hooked.tokenizer, "train", max_tokens=n_windows * 128)
    # Batches of 127 rows: a round fills one buffer and serves it until fewer than 127 rows are
    # left (BOS and document-separator tokens are masked, so a buffer holds a little under
    # 64 × 127 rows), without ever triggering the next fill.
    one = StreamConfig(
        hooks=(f"blocks.{layer}.hook_resid_post",),
        buffer_sequences=buffer_sequences,
        model_batch_size=model_batch_size,
        batch_size=data.context_size - 1,
    )
    five = replace(
        one, hooks=tuple(f"blocks.{layer - i}.hook_resid_post" for i in range(4, -1, -1))
    )
    stop = _layer(one.hooks[0]) + 1
    tokens_per_buffer = buffer_sequences * data.context_size
    timings: dict[str, float] = {"bare": 0.0, "stream_1": 0.0, "stream_5": 0.0}
    served: dict[str, int] = {"bare": 0, "stream_1": 0, "stream_5": 0}
    model = hooked.model
    for r in range(rounds):
        start = r * buffer_sequences
        tokens_NT = windows.get(start, buffer_sequences)
        t0 = time.perf_counter()
        with torch.no_grad():
            for i in range(0, buffer_sequences, model_batch_size):
                model(tokens_NT[i : i + model_batch_size], stop_at_layer=stop)
        timings["bare"] += time.perf_counter() - t0
        served["bare"] += tokens_per_buffer
        for key, cfg in (("stream_1", one), ("stream_5", five)):
            stream = ActivationStream(hooked, windows, cfg)
            stream.load_state_dict(
                {"buffer_index": r, "offset": 0, "norm_factors": {}, "n_tokens_served": 0}
            )
            t0 = time.perf_counter()
            stream.next_batch()
            while stream.rows_left_in_buffer() >= cfg.batch_size:
                stream.next_batch()
            timings[key] += time.perf_counter() - t0
            served[key] += stream.n_tokens_served
    tps = {k: served[k] / timings[k] for k in timings}
    return {
        "bench": "stream",
        "model": "smollm2-135m",
        "hook": one.hooks[0],
        "tokens_per_round": tokens_per_buffer,
        "rounds": rounds,
        "bare_forward_tokens_per_s": tps["bare"],
        "stream_1_hook_tokens_per_s": tps["stream_1"],
        "stream_5_hooks_tokens_per_s": tps["stream_5"],
        "ratio_vs_anchor": tps["stream_1"] / tps["bare"],
        "five_hooks_cost_vs_one": tps["stream_1"] / tps["stream_5"],
        "targets": {"ratio_vs_anchor": ">= 0.9", "five_hooks_cost_vs_one": "<= 1.2"},
    }


def table(result: dict[str, Any]) -> str:
    rows = [
        ("bare forward (stop_at_layer)", result["bare_forward_tokens_per_s"], 1.0),
        ("stream, 1 hook", result["stream_1_hook_tokens_per_s"], result["ratio_vs_anchor"]),
        (
            "stream, 5 hooks",
            result["stream_5_hooks_tokens_per_s"],
            result["stream_5_hooks_tokens_per_s"] / result["bare_forward_tokens_per_s"],
        ),
    ]
    lines = [
        f"bench stream — {result['model']}, {result['hook']}, "
        f"{result['rounds']} rounds × {result['tokens_per_round']} tokens",
        f"{'path':32s} {'tokens/s':>10s} {'vs bare':>8s}",
    ]
    lines += [f"{name:32s} {tps:10.0f} {ratio:8.2f}" for name, tps, ratio in rows]
    lines.append(
        f"ratio_vs_anchor = {result['ratio_vs_anchor']:.3f} (target ≥ 0.9); "
        f"5 hooks cost {result['five_hooks_cost_vs_one']:.3f}x one hook (target ≤ 1.2)"
    )
    return "\n".join(lines)
