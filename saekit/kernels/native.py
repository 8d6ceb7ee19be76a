"""The compiled kernels of native/pursuit.c: built on first use, loaded with ctypes.

Why C: the Gram path's pursuit step (saekit/kernels/pursuit.py) is c ← c − a·G[j], then the
argmax of c. As torch ops each step is several passes over a whole chunk of correlations
(update, block maxima, argmax), so a row's c leaves the cache between them. The C kernel runs
all k steps of one row before the next: its c (36 KB at d_sae 9216) stays in L1/L2, the update
and the next argmax are one pass, and the only memory traffic left is the stream of G rows.
The argmax is block_argmax's (first index among ties), a_t is recomputed from the residual as
in the torch loop, so the two paths select the same atoms and agree to fp32 rounding (tested).
`gram_mirror` copies one triangle of the symmetric Gram matrix into the other by 64×64 tiles.

Build: the system C compiler (`$CC`, else cc/gcc/clang) with -O3 -fPIC -shared, plus
-mavx2 -mfma when the CPU reports both, into `<saekit cache>/native/` under a name that hashes
the source, the compiler and the flags; written to a temporary name and renamed, so concurrent
processes never load a half-written library. Once per process (a lock). Without a compiler, if
the build fails, or with SAEKIT_NATIVE=0, `library()` is None and the callers use their torch
path; one warning says why (none for SAEKIT_NATIVE=0, which is a choice).
"""

from __future__ import annotations

import ctypes
import hashlib
import os
import shutil
import subprocess
import tempfile
import threading
import warnings
from pathlib import Path

import torch
from torch import Tensor

from saekit.assets import cache_home

SOURCE = Path(__file__).with_name("native") / "pursuit.c"
ENV = "SAEKIT_NATIVE"
"""Set to 0 to use the torch path everywhere."""

_lock = threading.Lock()
_state: dict[str, ctypes.CDLL | None] = {}

_i64, _ptr = ctypes.c_int64, ctypes.c_void_p


def _cpu_flags() -> list[str]:
    try:
        info = Path("/proc/cpuinfo").read_text()
    except OSError:
        return []
    words = set(info.split())
    return ["-mavx2", "-mfma"] if {"avx2", "fma"} <= words else []


def _compiler() -> str | None:
    for name in (os.environ.get("CC"), "cc", "gcc", "clang"):
        if name and shutil.which(name):
            return shutil.which(name)
    return None


def _flags() -> list[str]:
    return ["-O3", "-fPIC", "-shared", "-ffp-contract=off", *_cpu_flags()]


def describe() -> str:
    """What runs the MP Gram path here, for benchmark records."""
    if library() is None:
        return f"torch ops ({ENV}=0 or no C compiler)"
    return f"compiled C: {_compiler()} {' '.join(_flags())}"


def _build() -> ctypes.CDLL:
    cc = _compiler()
    if cc is None:
        raise RuntimeError("no C compiler found (set CC, or install gcc)")
    flags = _flags()
    version = subprocess.run([cc, "--version"], capture_output=True, text=True).stdout
    key = hashlib.sha256("\0".join([SOURCE.read_text(), cc, version, *flags]).encode())
    out_dir = cache_home() / "native"
    out_dir.mkdir(parents=True, exist_ok=True)
    lib = out_dir / f"pursuit-{key.hexdigest()[:16]}.so"
    if not lib.exists():
        fd, tmp = tempfile.mkstemp(dir=out_dir, suffix=".so.tmp")
        os.close(fd)
        try:
            done = subprocess.run(
                [cc, *flags, "-o", tmp, str(SOURCE), "-lm"], capture_output=True, text=True
            )
            if done.returncode != 0:
                raise RuntimeError(f"{cc} failed: {done.stderr.strip()[:500]}")
            os.replace(tmp, lib)
        finally:
            if os.path.exists(tmp):
                os.unlink(tmp)
    dll = ctypes.CDLL(str(lib))
    dll.mp_gram_steps.argtypes = [_i64] * 4 + [_ptr] * 8
    dll.mp_gram_steps.restype = None
    dll.mp_backward.argtypes = [_i64] * 3 + [_ptr] * 9
    dll.mp_backward.restype = None
    dll.gram_mirror.argtypes = [_ptr, _i64, _i64, _i64, _i64, ctypes.c_int]
    dll.gram_mirror.restype = None
    return dll


def library() -> ctypes.CDLL | None:
    """The compiled kernels, or None (SAEKIT_NATIVE=0, or no compiler / a failed build)."""
    if os.environ.get(ENV, "1") == "0":
        return None
    with _lock:
        if "dll" not in _state:
            try:
                _state["dll"] = _build()
            except (OSError, RuntimeError) as err:
                _state["dll"] = None
                warnings.warn(
                    f"saekit's native MP kernel is unavailable ({err}); using the slower torch "
                    f"path. Install a C compiler (e.g. apt-get install gcc) to build it, or set "
                    f"{ENV}=0 to silence this.",
                    RuntimeWarning,
                    stacklevel=2,
                )
        return _state["dll"]


def usable(*tensors: Tensor) -> bool:
    """CPU, fp32 and contiguous: the layout the C kernels read."""
    return all(
        t.device.type == "cpu" and t.dtype == torch.float32 and t.is_contiguous() for t in tensors
    )


def _p(t: Tensor | None) -> int | None:
    return None if t is None else t.data_ptr()


def gram_steps(
    dll: ctypes.CDLL,
    c_RP: Tensor,
    r_RD: Tensor,
    E_SD: Tensor,
    D_SD: Tensor,
    G_SP: Tensor,
    open_S: Tensor | None,
    a_RT: Tensor,
    j_RT: Tensor,
) -> None:
    """All T steps of the rows of c_RP (correlations with bias, modified) and r_RD (→ r_T)."""
    (R, P), D, T = c_RP.shape, r_RD.shape[1], a_RT.shape[1]
    assert j_RT.dtype == torch.int64 and j_RT.is_contiguous() and a_RT.is_contiguous()
    assert G_SP.shape[1] == P and E_SD.shape[1] == D_SD.shape[1] == D
    dll.mp_gram_steps(
        R, P, D, T, _p(c_RP), _p(r_RD), _p(E_SD), _p(D_SD), _p(G_SP), _p(open_S), _p(a_RT),
        _p(j_RT),
    )  # fmt: skip


def backward_rows(
    dll: ctypes.CDLL,
    r_RD: Tensor,
    g_RD: Tensor,
    g_a_RT: Tensor,
    a_RT: Tensor,
    j_RT: Tensor,
    E_SD: Tensor,
    D_SD: Tensor,
    g_E_SD: Tensor,
    g_D_SD: Tensor,
) -> None:
    """MatchingPursuit's backward for these rows: r_RD → r_0 and g_RD → ∂L/∂r_0 in place, the
    weight gradients added into g_E_SD and g_D_SD (the same tensor when tied)."""
    (R, D), T = r_RD.shape, a_RT.shape[1]
    assert j_RT.dtype == torch.int64 and all(
        t.is_contiguous() for t in (r_RD, g_RD, g_a_RT, a_RT, j_RT, g_E_SD, g_D_SD)
    )
    dll.mp_backward(
        R, D, T, _p(r_RD), _p(g_RD), _p(g_a_RT), _p(a_RT), _p(j_RT), _p(E_SD), _p(D_SD),
        _p(g_E_SD), _p(g_D_SD),
    )  # fmt: skip


def mirror(dll: ctypes.CDLL, G_SP: Tensor, n: int, tile0: int, tile1: int, upper: bool) -> None:
    """G[:n, :n]: the tiles rows [tile0, tile1) of one triangle copied into the other
    (upper=True: from the upper triangle into the lower)."""
    dll.gram_mirror(G_SP.data_ptr(), n, G_SP.stride(0), tile0, tile1, int(upper))


TILE = 64
"""native/pursuit.c's mirror tile width."""


def _reset() -> None:
    """Forget the loaded library (tests: rebuild under other conditions)."""
    with _lock:
        _state.clear()
