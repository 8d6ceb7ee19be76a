"""`saekit bench kernels`: the sparse kernels against the dense reference, per op and per step.

Per op, at B = 4096 tokens, for each (d_in, d_sae, k): the CSR kernel that saekit runs
(`select_ops(device, "auto")`: torch's CSR kernels on CPU, Triton on CUDA when installed) and
the dense product a plain-autograd SAE step runs instead, plus the encoder GEMM x @ W_enc as
the unit (the one dense product every step keeps):

- decode fwd   x̂ = Σ z_j W_dec[j] + b_dec     vs  z_BS @ W_dec + b_dec (z_BS built untimed)
- decode bwd   ∂z at the entries, ∂W_dec       vs  g @ W_decᵀ [B, S] and z_BSᵀ g
- encoder bwd  ∂W_enc, ∂b_enc, ∂b_dec          vs  xcᵀ ∂pre_BS and Σ_b ∂pre_BS
Each sparse backward builds its pattern's latent-major sort inside the timed call (counted
twice, once per op, though a step sorts once). Times are medians of `reps` after a warm-up.

Per method (first shape only; dense B×S tensors at d_sae 65536 are 1 GiB each): one
`training_forward` + backward with cfg.kernels "auto" vs "dense"; JumpReLU's thresholds are
set to each latent's (1 − k/d_sae) quantile so its L0 is ≈ k, as after training.

Whole TopK step vs SAELens: `saekit bench train` (CPU only), run in the same process.
`python -m saekit.bench.kernels --quick` runs one shape, `--shapes 576x65536x64,...` any;
`--device cuda` is the GPU mode (same table; Triton ops when installed).
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from collections.abc import Callable
from typing import Any

import torch
from tqdm import tqdm

from saekit.dictionaries import SAEConfig, TrainableDictionary, TrainContext, build_dictionary
from saekit.errors import SaekitError
from saekit.kernels.csr import CsrOps, CsrPattern, select_ops
from saekit.kernels.sparse_ops import csr_decode

BATCH = 4096
SHAPES = tuple((d, s, k) for d in (576, 2304) for s in (16384, 65536) for k in (32, 64))
QUICK_SHAPES = ((576, 16384, 32),)
OPS = ("decode fwd", "decode bwd", "encoder bwd")
METHODS = ("topk", "batchtopk", "jumprelu", "matryoshka")


def _timer(device: torch.device, reps: int) -> Callable[[Callable[[], object]], float]:
    def median_ms(fn: Callable[[], object]) -> float:
        times = []
        for i in range(reps + 1):
            if device.type == "cuda":
                torch.cuda.synchronize()
            t0 = time.perf_counter()
            fn()
            if device.type == "cuda":
                torch.cuda.synchronize()
            if i:  # the first call warms up allocator pools and kernel caches
                times.append(1e3 * (time.perf_counter() - t0))
        return statistics.median(times)

    return median_ms


def op_times(d_in: int, d_sae: int, k: int, device: torch.device, reps: int) -> dict[str, Any]:
    """Sparse vs dense ms of each op at one shape (see the module docstring)."""
    gen = torch.Generator().manual_seed(0)
    x_BD = torch.randn(BATCH, d_in, generator=gen).to(device)
    W_enc_DS = (torch.randn(d_in, d_sae, generator=gen) / d_in**0.5).to(device)
    W_dec_SD = W_enc_DS.t().contiguous()
    b_D, g_BD = torch.zeros(d_in, device=device), torch.randn_like(x_BD)
    ops = select_ops(device, "auto")
    assert ops is not None
    time_ms = _timer(device, reps)
    with torch.no_grad():
        gemm_ms = time_ms(lambda: x_BD @ W_enc_DS)
        vals_BK, idx_BK = (x_BD @ W_enc_DS).topk(k, dim=-1, sorted=False)
        idx_BK, order_BK = idx_BK.sort(dim=-1)
        vals_N = vals_BK.gather(-1, order_BK).relu().flatten()
        p = CsrPattern.fixed_k(idx_BK, d_sae)
        sparse = {
            "decode fwd": time_ms(lambda: csr_decode(vals_N, W_dec_SD, b_D, p, ops)),
            "decode bwd": time_ms(lambda: _decode_bwd(ops, idx_BK, d_sae, vals_N, g_BD, W_dec_SD)),
            "encoder bwd": time_ms(
                lambda: _encoder_bwd(ops, idx_BK, d_sae, vals_N, x_BD, W_enc_DS)
            ),
        }
        dense = _dense_times(p.by_row(vals_N).to_dense(), x_BD, g_BD, W_dec_SD, b_D, time_ms)
    return {
        "d_in": d_in,
        "d_sae": d_sae,
        "k": k,
        "kernels": ops.name,
        "gemm_ms": gemm_ms,
        "sparse_ms": sparse,
        "dense_ms": dense,
        "speedup": {op: dense[op] / sparse[op] for op in OPS},
    }


def _dense_times(
    z_BS: torch.Tensor,
    x_BD: torch.Tensor,
    g_BD: torch.Tensor,
    W_dec_SD: torch.Tensor,
    b_D: torch.Tensor,
    time_ms: Callable[[Callable[[], object]], float],
) -> dict[str, float]:
    return {
        "decode fwd": time_ms(lambda: torch.addmm(b_D, z_BS, W_dec_SD)),
        "decode bwd": time_ms(lambda: (g_BD @ W_dec_SD.t(), z_BS.t() @ g_BD)),
        # ∂pre is as dense as z (zeros off the kept entries): z_BS stands in for it.
        "encoder bwd": time_ms(lambda: (x_BD.t() @ z_BS, z_BS.sum(0))),
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
    d_in: int, d_sae: int, k: int, device: torch.device, reps: int
) -> dict[str, dict[str, float]]:
    """ms of training_forward + backward per method, kernels auto vs dense."""
    x_BD = torch.randn(BATCH, d_in, generator=torch.Generator().manual_seed(1)).to(device)
    time_ms = _timer(device, reps)
    out: dict[str, dict[str, float]] = {}
    for method in METHODS:
        out[method] = {}
        for kernels in ("auto", "dense"):
            cfg = SAEConfig(method=method, d_sae=d_sae, k=k, kernels=kernels)  # type: ignore[arg-type]
            sae = build_dictionary(cfg, d_in).to(device)
            assert isinstance(sae, TrainableDictionary)
            out[method][kernels] = _step_ms(sae, x_BD, time_ms)
    return out


def _step_ms(
    sae: TrainableDictionary, x_BD: torch.Tensor, time_ms: Callable[[Callable[[], object]], float]
) -> float:
    if sae.method == "jumprelu":
        with torch.no_grad():
            pre_BS = sae.pre_acts(x_BD[:512])
            theta_S = pre_BS.quantile(1 - sae.cfg.k / sae.d_sae, dim=0)
            sae.get_parameter("threshold").copy_(theta_S)

    def train_step() -> None:
        sae.zero_grad(set_to_none=True)
        losses = sae.training_forward(x_BD, TrainContext()).losses
        torch.stack(list(losses.values())).sum().backward()

    return time_ms(train_step)


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
    reps: int = 3,
    train_step: bool = True,
    shapes: str = "",
    methods: bool = True,
) -> dict[str, Any]:
    """Per-op times at all SHAPES (QUICK_SHAPES if quick; `shapes` overrides), per-method
    steps at the first shape, and on CPU the whole TopK step vs SAELens (bench train)."""
    dev = torch.device(device)
    shape_list: tuple[tuple[int, int, int], ...] = (
        parse_shapes(shapes) if shapes else QUICK_SHAPES if quick else SHAPES
    )
    result: dict[str, Any] = {
        "bench": "kernels",
        "device": device,
        "batch": BATCH,
        "torch_threads": torch.get_num_threads(),
        "reps": reps,
        "ops": [op_times(d, s, k, dev, reps) for d, s, k in tqdm(shape_list, desc="shapes")],
    }
    if methods:
        result["methods_shape"] = dict(zip(("d_in", "d_sae", "k"), shape_list[0]))
        d_in, d_sae, k = shape_list[0]
        result["methods_ms"] = method_times(d_in, d_sae, k, dev, reps)
    if train_step and dev.type == "cpu":
        from saekit.bench import train

        result["train"] = train.run(memory=False)
    return result


def table(result: dict[str, Any]) -> str:
    lines = [
        f"bench kernels — {result['device']}, B {result['batch']}, "
        f"{result['torch_threads']} threads, median of {result['reps']} (ms; x = dense/sparse)",
        f"{'d_in':>5s} {'d_sae':>6s} {'k':>3s} {'GEMM':>7s} "
        + " ".join(f"{op + ' sp/dense':>24s}" for op in OPS)
        + f" {'sparse ops/GEMM':>16s}",
    ]
    for r in result["ops"]:
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
    shape = result.get("methods_shape", {})
    if shape:
        lines.append(
            f"training_forward + backward, d_in {shape['d_in']}, d_sae {shape['d_sae']}, "
            f"k {shape['k']} (ms, kernels auto vs dense):"
        )
    for method, ms in result.get("methods_ms", {}).items():
        lines.append(
            f"  {method:11s} {ms['auto']:8.0f} {ms['dense']:8.0f} {ms['dense'] / ms['auto']:5.2f}x"
        )
    if "train" in result:
        from saekit.bench import train

        lines.append(train.table(result["train"]))
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m saekit.bench.kernels", description=__doc__)
    parser.add_argument("--quick", action="store_true", help=f"only shape {QUICK_SHAPES[0]}")
    parser.add_argument("--device", default="cpu", help="cpu or cuda (GPU mode: Triton ops)")
    parser.add_argument("--reps", type=int, default=3, help="timed repetitions per op")
    parser.add_argument("--shapes", default="", help="D_INxD_SAExK[,...] instead of the grid")
    parser.add_argument("--no-methods", action="store_true", help="skip the per-method steps")
    parser.add_argument("--no-train-step", action="store_true", help="skip the SAELens step")
    parser.add_argument("--json", action="store_true", help="print one JSON object")
    args = parser.parse_args(argv)
    try:
        result = run(
            args.quick,
            args.device,
            args.reps,
            not args.no_train_step,
            args.shapes,
            not args.no_methods,
        )
    except SaekitError as exc:
        parser.exit(2, f"saekit: error: {exc}\n")
    print(json.dumps(result) if args.json else table(result))


if __name__ == "__main__":
    main()
