"""Runs of the real `saekit train` CLI in other processes, on a synthetic activation cache.

A cache (`saekit cache`'s format) of synthetic rows lets a recipe train without a
language model, so subprocesses and torchrun ranks need no monkeypatching. Imported by name
(unique across tests/), like synthetic_stream.py.
"""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import threading
from pathlib import Path
from typing import Any

import torch
import yaml
from safetensors.torch import load_file
from synthetic_stream import synthetic_stream

from saekit.activations.cache import CacheConfig, write_cache

HERE = Path(__file__).resolve().parent
RUNNER = HERE / "fault_runner.py"
"""Script that runs the CLI with a fault injected (stall after a step, or inside a write)."""


def make_cache(path: Path, hooks: dict[str, int], n_tokens: int = 256 * 40) -> Path:
    """`n_tokens` rows per hook of the synthetic stream, in shards of 2,048 rows."""
    scales = {h: 1.0 + i for i, h in enumerate(hooks)}
    stream = synthetic_stream(hooks, batch_size=256, scales=scales, n_tokens=n_tokens)
    cfg = CacheConfig(output_dir=str(path), n_tokens=n_tokens, shard_tokens=2048)
    return write_cache(stream, cfg, {"synthetic": sorted(hooks)})


def write_recipe(
    path: Path, cache: Path, out: Path, saes: list[dict[str, Any]], **train: Any
) -> Path:
    """A recipe over `cache`: global batch 256, wandb off, the given dictionaries."""
    hooks = sorted({s.get("hook", "h0") for s in saes})
    recipe = {
        "stream": {"hooks": hooks, "batch_size": 256, "cache_dir": str(cache), "normalize": True},
        "saes": saes,
        "train": {
            "total_tokens": 256 * 30,
            "lr": 3e-3,
            "lr_warmup_steps": 3,
            "sparsity_warmup_steps": 5,
            "log_every": 5,
            "output_dir": str(out),
            "wandb_mode": "disabled",
            **train,
        },
    }
    path.write_text(yaml.safe_dump(recipe, sort_keys=False))
    return path


def child_env() -> dict[str, str]:
    """The environment of a child run: one thread (2 shared cores), no network, no GPU."""
    return {
        **os.environ,
        "OMP_NUM_THREADS": "1",
        "WANDB_MODE": "disabled",
        "HF_HUB_OFFLINE": "1",
        "CUDA_VISIBLE_DEVICES": "",
    }


def saekit_cmd(*args: str) -> list[str]:
    return [sys.executable, "-m", "saekit", *args]


def torchrun(n_proc: int) -> list[str]:
    """`torchrun --standalone --nproc_per_node N` (standalone: rendezvous on a free port)."""
    return [
        sys.executable, "-m", "torch.distributed.run", "--standalone",
        "--nproc_per_node", str(n_proc),
    ]  # fmt: skip


def torchrun_cmd(n_proc: int, *args: str) -> list[str]:
    """`torchrun ... -m saekit ARGS`."""
    return [*torchrun(n_proc), "-m", "saekit", *args]


def start_stalled(args: list[str], n_proc: int = 0) -> tuple[subprocess.Popen[str], int]:
    """fault_runner.py ARGS in a child (under torchrun with n_proc > 0) that hangs at its fault
    point; returns the child and the pid of the (rank-0) process that reached it."""
    cmd = [*(torchrun(n_proc) if n_proc else [sys.executable]), str(RUNNER), *args]
    child = subprocess.Popen(
        cmd, env=child_env(), stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True
    )
    assert child.stdout is not None
    # A child stuck before its fault point is killed after 5 minutes, so the test fails.
    watchdog = threading.Timer(300, child.kill)
    watchdog.start()
    try:
        for line in child.stdout:  # blocks until the child reaches its fault point
            if line.startswith("STALLED "):
                return child, int(line.split()[1])
    finally:
        watchdog.cancel()
    raise AssertionError(f"the child ended (status {child.wait()}) before its fault point")


def run(cmd: list[str], timeout: float = 300) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        cmd, env=child_env(), capture_output=True, text=True, timeout=timeout, check=False
    )


def exported(run_dir: Path) -> dict[str, dict[str, torch.Tensor]]:
    """{dictionary name: its exported SAELens weights}."""
    return {
        p.name: load_file(str(p / "sae_weights.safetensors"))
        for p in sorted((run_dir / "saes").iterdir())
    }


def max_abs_diff(
    a: dict[str, dict[str, torch.Tensor]], b: dict[str, dict[str, torch.Tensor]]
) -> float:
    """Largest |a − b| over every tensor of every dictionary (same names required)."""
    assert a.keys() == b.keys()
    worst = 0.0
    for name in a:
        assert a[name].keys() == b[name].keys(), name
        for key, x in a[name].items():
            worst = max(worst, float((x.double() - b[name][key].double()).abs().max()))
    return worst


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def dump_rank_state(rank: int, world: int, port: int, recipe: str, dump: str) -> None:
    """torch.multiprocessing.spawn target: train `recipe` as rank `rank` of `world` (gloo) and
    save this rank's final dictionaries, clocks and controller coefficients to `dump`."""
    os.environ.update(
        RANK=str(rank),
        LOCAL_RANK=str(rank),
        WORLD_SIZE=str(world),
        MASTER_ADDR="127.0.0.1",
        MASTER_PORT=str(port),
        OMP_NUM_THREADS="1",
    )
    torch.set_num_threads(1)
    from saekit.fitting import train_recipe
    from saekit.recipe import Recipe
    from saekit.train.trainer import Trainer

    export = Trainer.export

    def export_and_dump(self: Trainer) -> dict[str, Any]:
        state = {
            s.name: {
                **s.sae.state_dict(),
                "fire_count": s.fire_count_S,
                "tokens_since_fired": s.tokens_since_fired_S,
                "coefficient": torch.tensor(s.sae.sparsity_coefficient or 0.0),
            }
            for s in self.slots
        }
        torch.save(state, Path(dump) / f"rank{rank}.pt")
        return export(self)

    Trainer.export = export_and_dump  # type: ignore[method-assign]
    train_recipe(Recipe.load(recipe))
