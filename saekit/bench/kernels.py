"""`saekit bench kernels`: the sparse kernels against the dense reference, per op and per step.

Per op, at B = 4096 tokens, for each (d_in, d_sae, k): the CSR kernel that saekit runs
(`select_ops(device, "auto")`: torch's CSR kernels on CPU, Triton on CUDA when installed) and
the dense product a plain-autograd SAE step runs instead, plus the encoder GEMM x @ W_enc as
the unit (the one dense product every step keeps):

- decode fwd   x̂ = Σ z_j W_dec[j] + b_dec     vs  z_BS @ W_dec + b_dec (z_BS built untimed)
- decode bwd   ∂z at the entries, ∂W_dec       vs  g @ W_decᵀ [B, S] and z_BSᵀ g
- encoder bwd  ∂W_enc, ∂b_enc, ∂b_dec          vs  xcᵀ ∂pre_BS and Σ_b ∂pre_BS
Each sparse backward builds its pattern's latent-major sort inside the timed call (counted
twice, once per op, though a step sorts once). All ops of a shape (GEMM, sparse and dense)
run under the shared protocol (`saekit.bench.protocol`): one warm-up call each, ≥ 5 rounds in
rotating order, medians, at 1 thread and at all threads.

Per method (first shape only; dense B×S tensors at d_sae 65536 are 1 GiB each): one
`training_forward` + backward with cfg.kernels "auto" vs "dense", all eight in one rotation;
JumpReLU's thresholds are set to each latent's (1 − k/d_sae) quantile so its L0 is ≈ k, as
after training.

Whole TopK training step vs the peer libraries: `saekit bench train`.
`python -m saekit.bench.kernels --quick` runs one shape, `--shapes 576x65536x64,...` any;
`--device cuda` is the GPU mode (same table; Triton ops when installed).
"""

from __future__ import annotations

import argparse
import json
import os
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import torch

from saekit.bench import protocol
from saekit.dictionaries import SAEConfig, TrainableDictionary, TrainContext, build_dictionary
from saekit.errors import SaekitError
from saekit.kernels.csr import CsrOps, CsrPattern, select_ops
from saekit.kernels.sparse_ops import csr_decode

BATCH = 4096
SHAPES = tuple((d, s, k) for d in (576, 2304) for s in (16384, 65536) for k in (32, 64))
QUICK_SHAPES = ((576, 16384, 32),)
OPS = ("decode fwd", "decode bwd", "encoder bwd")
METHODS = ("topk", "batchtopk", "jumprelu", "matryoshka")


def op_times(
    d_in: int, d_sae: int, k: int, device: torch.device, rounds: int, desc: str = "ops"
) -> dict[str, Any]:
    """Sparse vs dense ms of each op at one shape (see the module docstring)."""
    gen = torch.Generator().manual_seed(0)
    x_BD = torch.randn(BATCH, d_in, generator=gen).to(device)
    W_enc_DS = (torch.randn(d_in, d_sae, generator=gen) / d_in**0.5).to(device)
    W_dec_SD = W_enc_DS.t().contiguous()
    b_D, g_BD = torch.zeros(d_in, device=device), torch.randn_like(x_BD)
    ops = select_ops(device, "auto")
    assert ops is not None
    with torch.no_grad():
        vals_BK, idx_BK = (x_BD @ W_enc_DS).topk(k, dim=-1, sorted=False)
        idx_BK, order_BK = idx_BK.sort(dim=-1)
        vals_N = vals_BK.gather(-1, order_BK).relu().flatten()
        p = CsrPattern.fixed_k(idx_BK, d_sae)
        z_BS = p.by_row(vals_N).to_dense()
    fns: dict[str, Callable[[], object]] = {
        "gemm": lambda: x_BD @ W_enc_DS,
        "decode fwd/sparse": lambda: csr_decode(vals_N, W_dec_SD, b_D, p, ops),
        "decode bwd/sparse": lambda: _decode_bwd(ops, idx_BK, d_sae, vals_N, g_BD, W_dec_SD),
        "encoder bwd/sparse": lambda: _encoder_bwd(ops, idx_BK, d_sae, vals_N, x_BD, W_enc_DS),
        **_dense_ops(z_BS, x_BD, g_BD, W_dec_SD, b_D),
    }
    with torch.no_grad():
        res = _rounds(fns, device, rounds, desc)
    ms = res["median_ms"]
    sparse = {op: ms[f"{op}/sparse"] for op in OPS}
    dense = {op: ms[f"{op}/dense"] for op in OPS}
    return {
        "d_in": d_in,
        "d_sae": d_sae,
        "k": k,
        "kernels": ops.name,
        "gemm_ms": ms["gemm"],
        "sparse_ms": sparse,
        "dense_ms": dense,
        "speedup": {op: dense[op] / sparse[op] for op in OPS},
        "rounds_ms": res["rounds_ms"],
    }


def _rounds(
    fns: Mapping[str, Callable[[], object]], device: torch.device, rounds: int, desc: str
) -> dict[str, Any]:
    """The shared protocol over stateless calls (synchronized on CUDA)."""

    def synced(fn: Callable[[], object]) -> Callable[[], None]:
        def call() -> None:
            fn()
            if device.type == "cuda":
                torch.cuda.synchronize()

        return call

    sides = {name: protocol.Side(synced(fn), BATCH) for name, fn in fns.items()}
    return protocol.run_rounds(sides, rounds=rounds, desc=desc)


def _dense_ops(
    z_BS: torch.Tensor,
    x_BD: torch.Tensor,
    g_BD: torch.Tensor,
    W_dec_SD: torch.Tensor,
    b_D: torch.Tensor,
) -> dict[str, Callable[[], object]]:
    return {
        "decode fwd/dense": lambda: torch.addmm(b_D, z_BS, W_dec_SD),
        "decode bwd/dense": lambda: (g_BD @ W_dec_SD.t(), z_BS.t() @ g_BD),
        # ∂pre is as dense as z (zeros off the kept entries): z_BS stands in for it.
        "encoder bwd/dense": lambda: (x_BD.t() @ z_BS, z_BS.sum(0)),
    }


def _decode_bwd(
    ops: CsrOps,
    idx_BK: torch.Tensor,
    S: int,
    v_N: torch.Tensor,
    g_BD: torch.Tensor,
    W_SD: torch.Tensor,
) -> tuple[torch.Tensor, ...]:
    p = CsrPattern.fixed_k(idx_BK, S)
    return ops.sampled_dot(p, g_BD, W_SD), ops.latents_matmul(p, v_N, g_BD), g_BD.sum(0)


def _encoder_bwd(
    ops: CsrOps,
    idx_BK: torch.Tensor,
    S: int,
    g_N: torch.Tensor,
    x_BD: torch.Tensor,
    W_DS: torch.Tensor,
) -> tuple[torch.Tensor, ...]:
    p = CsrPattern.fixed_k(idx_BK, S)
    g_W_SD = ops.latents_matmul(p, g_N, x_BD)
    g_b_S = g_N.new_zeros(S).index_add_(0, p.col_N, g_N)
    return g_W_SD, g_b_S, W_DS @ g_b_S


def method_times(
    d_in: int, d_sae: int, k: int, device: torch.device, rounds: int
) -> dict[str, dict[str, float]]:
    """ms of training_forward + backward per method, kernels auto vs dense (one rotation)."""
    x_BD = torch.randn(BATCH, d_in, generator=torch.Generator().manual_seed(1)).to(device)
    fns = {}
    for method in METHODS:
        for kernels in ("auto", "dense"):
            cfg = SAEConfig(method=method, d_sae=d_sae, k=k, kernels=kernels)  # type: ignore[arg-type]
            sae = build_dictionary(cfg, d_in).to(device)
            assert isinstance(sae, TrainableDictionary)
            fns[f"{method}/{kernels}"] = _train_step(sae, x_BD)
    ms = _rounds(fns, device, rounds, "methods")["median_ms"]
    return {m: {kn: ms[f"{m}/{kn}"] for kn in ("auto", "dense")} for m in METHODS}


def _train_step(sae: TrainableDictionary, x_BD: torch.Tensor) -> Callable[[], None]:
    if sae.method == "jumprelu":
        with torch.no_grad():
            pre_BS = sae.pre_acts(x_BD[:512])
            theta_S = pre_BS.quantile(1 - sae.cfg.k / sae.d_sae, dim=0)
            sae.get_parameter("threshold").copy_(theta_S)

    def train_step() -> None:
        sae.zero_grad(set_to_none=True)
        losses = sae.training_forward(x_BD, TrainContext()).losses
        torch.stack(list(losses.values())).sum().backward()

    return train_step


def parse_shapes(text: str) -> tuple[tuple[int, int, int], ...]:
    """ "576x16384x32,2304x65536x64" → ((576, 16384, 32), (2304, 65536, 64))."""
    try:
        shapes = tuple(tuple(int(n) for n in item.split("x")) for item in text.split(","))
    except ValueError:
        shapes = ()
    if not shapes or any(len(s) != 3 or min(s) < 1 for s in shapes):
        raise SaekitError(f"shapes {text!r}: expected D_INxD_SAExK[,...], e.g. 576x16384x32.")
    return tuple((s[0], s[1], s[2]) for s in shapes)


def run(
    quick: bool = False,
    device: str = "cpu",
    rounds: int = protocol.MIN_ROUNDS,
    shapes: str = "",
    methods: bool = True,
    threads: Sequence[int] | None = None,
) -> dict[str, Any]:
    """Per-op times at all SHAPES (QUICK_SHAPES if quick; `shapes` overrides) and per-method
    steps at the first shape, at each thread count (default 1 and all)."""
    load_before = os.getloadavg()
    dev = torch.device(device)
    counts = list(threads) if threads else protocol.thread_counts()
    shape_list: tuple[tuple[int, int, int], ...] = (
        parse_shapes(shapes) if shapes else QUICK_SHAPES if quick else SHAPES
    )

    def measure(n: int) -> dict[str, Any]:
        out: dict[str, Any] = {
            "ops": [
                op_times(d, s, k, dev, rounds, f"bench kernels {d}x{s}x{k}, {n} threads")
                for d, s, k in shape_list
            ]
        }
        if methods:
            out["methods_ms"] = method_times(*shape_list[0], dev, rounds)
        return out

    return {
        "bench": "kernels",
        "device": device,
        "batch": BATCH,
        "protocol": protocol.protocol_block(
            rounds=rounds,
            warmup=1,
            threads=counts,
            tokens=BATCH,
            anchors={
                "dense": {
                    "step": "the dense products a plain-autograd SAE step runs (B×d_sae codes)",
                    "differences": "same math; builds dense [B, d_sae] tensors",
                }
            },
            load_before=load_before,
        ),
        "methods_shape": dict(zip(("d_in", "d_sae", "k"), shape_list[0])) if methods else {},
        "threads": protocol.at_threads(measure, counts),
    }


def table(result: dict[str, Any]) -> str:
    lines = []
    for per in result["threads"]:
        lines += [
            f"bench kernels — {result['device']}, B {result['batch']}, {per['threads']} "
            f"thread(s), median of {result['protocol']['rounds']} rounds, rotating order "
            "(ms; x = dense/sparse)",
            f"{'d_in':>5s} {'d_sae':>6s} {'k':>3s} {'GEMM':>7s} "
            + " ".join(f"{op + ' sp/dense':>24s}" for op in OPS)
            + f" {'sparse ops/GEMM':>16s}",
        ]
        for r in per["ops"]:
            cells = [
                f"{r['sparse_ms'][op]:7.1f}/{r['dense_ms'][op]:7.1f} {r['speedup'][op]:5.1f}x"
                for op in OPS
            ]
            total = sum(r["sparse_ms"].values()) / r["gemm_ms"]
            lines.append(
                f"{r['d_in']:5d} {r['d_sae']:6d} {r['k']:3d} {r['gemm_ms']:7.1f} "
                + " ".join(f"{c:>24s}" for c in cells)
                + f" {total:16.2f}"
            )
        shape = result["methods_shape"]
        if shape:
            lines.append(
                f"training_forward + backward, d_in {shape['d_in']}, d_sae {shape['d_sae']}, "
                f"k {shape['k']} (ms, kernels auto vs dense):"
            )
        for method, ms in per.get("methods_ms", {}).items():
            lines.append(
                f"  {method:11s} {ms['auto']:8.0f} {ms['dense']:8.0f} "
                f"{ms['dense'] / ms['auto']:5.2f}x"
            )
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m saekit.bench.kernels", description=__doc__)
    parser.add_argument("--quick", action="store_true", help=f"only shape {QUICK_SHAPES[0]}")
    parser.add_argument("--device", default="cpu", help="cpu or cuda (GPU mode: Triton ops)")
    parser.add_argument("--rounds", type=int, default=protocol.MIN_ROUNDS, help="timed rounds")
    parser.add_argument("--shapes", default="", help="D_INxD_SAExK[,...] instead of the grid")
    parser.add_argument("--no-methods", action="store_true", help="skip the per-method steps")
    parser.add_argument("--threads", default="", help="thread counts, e.g. 1,2 (default 1 and all)")
    parser.add_argument("--json", action="store_true", help="print one JSON object")
    args = parser.parse_args(argv)
    try:
        threads = [int(t) for t in args.threads.split(",")] if args.threads else None
        result = run(
            args.quick, args.device, args.rounds, args.shapes, not args.no_methods, threads
        )
    except SaekitError as exc:
        parser.exit(2, f"saekit: error: {exc}\n")
    print(json.dumps(result) if args.json else table(result))


if __name__ == "__main__":
    main()
