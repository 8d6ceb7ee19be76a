"""Atomic checkpoints and the run directory's ownership.

A checkpoint is a directory `checkpoints/step-00001200/` written under a temporary name and
renamed when complete; `checkpoints/latest` (a one-line file, replaced atomically) names the
newest one. A crash mid-write leaves only a `.partial` directory, so `latest` always points at
a complete checkpoint. Dictionary weights are safetensors; optimizer, scheduler and RNG states
are tensors and plain numbers saved with torch.save and read back with weights_only=True.
"""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file, save_file

from saekit.errors import SaekitError
from saekit.rundir import LOCK_FILE

LATEST = "latest"


def _replace_file(path: Path, text: str) -> None:
    partial = path.with_name(path.name + ".partial")
    partial.write_text(text)
    os.replace(partial, path)


def save_checkpoint(
    root: Path,
    step: int,
    weights: dict[str, dict[str, torch.Tensor]],
    state: dict[str, Any],
    meta: dict[str, Any],
    keep: int = 2,
) -> Path:
    """Write one checkpoint atomically; keep the newest `keep` ones."""
    root.mkdir(parents=True, exist_ok=True)
    final = root / f"step-{step:08d}"
    partial = root / f"step-{step:08d}.partial"
    for leftover in root.glob("step-*.*"):  # .partial/.old of a crashed write (one writer)
        shutil.rmtree(leftover, ignore_errors=True)
    partial.mkdir()
    for name, tensors in weights.items():
        save_file(
            {k: v.detach().contiguous().cpu() for k, v in tensors.items()},
            str(partial / f"{name}.safetensors"),
        )
    torch.save(state, partial / "trainer_state.pt")
    (partial / "meta.json").write_text(json.dumps(meta, indent=1))
    if final.exists():
        # Rewriting a step: rename the old copy aside rather than delete it first, so the window
        # in which `latest` names no directory is two renames, not a recursive delete.
        os.replace(final, final.with_name(final.name + ".old"))
    os.replace(partial, final)
    _replace_file(root / LATEST, final.name + "\n")
    shutil.rmtree(final.with_name(final.name + ".old"), ignore_errors=True)
    done = sorted(p for p in root.glob("step-*") if p.is_dir() and "." not in p.name)
    for stale in done[:-keep]:
        shutil.rmtree(stale, ignore_errors=True)
    return final


def has_checkpoint(root: Path) -> bool:
    return (root / LATEST).is_file()


def load_checkpoint(
    root: Path,
) -> tuple[dict[str, dict[str, torch.Tensor]], dict[str, Any], dict[str, Any]]:
    """(weights per dictionary, trainer state, meta) of the newest checkpoint."""
    pointer = root / LATEST
    if not pointer.is_file():
        raise SaekitError(f"No checkpoint to resume from in {root}; run without --resume.")
    ckpt = root / pointer.read_text().strip()
    try:
        meta = json.loads((ckpt / "meta.json").read_text())
        weights = {p.stem: load_file(str(p)) for p in sorted(ckpt.glob("*.safetensors"))}
        state = torch.load(ckpt / "trainer_state.pt", weights_only=True)
    except Exception as exc:  # noqa: BLE001 - any unreadable piece is one clear message
        raise SaekitError(
            f"Checkpoint {ckpt} is unreadable or truncated ({type(exc).__name__}: "
            f"{str(exc)[:160]}). Delete it to fall back to an older one, or start "
            "over without --resume."
        ) from None
    return weights, state, meta


class RunLock:
    """Refuses a second live run on the same output directory (pid file, stale-aware)."""

    NAME = LOCK_FILE

    def __init__(self, out: Path) -> None:
        self.path = out / self.NAME

    def __enter__(self) -> RunLock:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        if self.path.exists():
            try:
                pid = int(self.path.read_text().strip() or 0)
            except ValueError:
                pid = 0
            if pid and _alive(pid):
                raise SaekitError(
                    f"Another run (pid {pid}) is writing to {self.path.parent}; "
                    "wait for it or choose another train.output_dir."
                )
            self.path.unlink(missing_ok=True)
        try:
            fd = os.open(self.path, os.O_CREAT | os.O_EXCL | os.O_WRONLY)
        except FileExistsError:
            raise SaekitError(
                f"Another run started writing to {self.path.parent} just now; "
                "choose another train.output_dir."
            ) from None
        os.write(fd, str(os.getpid()).encode())
        os.close(fd)
        return self

    def __exit__(self, *exc: object) -> None:
        self.path.unlink(missing_ok=True)


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return pid != os.getpid()


def describe_mismatch(saved: Any, now: Any, path: str = "") -> list[str]:
    """Where two JSON-like trees differ, as "path: A (saved) vs B (now)" lines."""
    if isinstance(saved, dict) and isinstance(now, dict):
        out = []
        for key in list(saved) + [k for k in now if k not in saved]:
            where = f"{path}.{key}" if path else str(key)
            if key not in now:
                out.append(f"{where}: only in the saved run")
            elif key not in saved:
                out.append(f"{where}: not in the saved run")
            else:
                out += describe_mismatch(saved[key], now[key], where)
        return out
    if isinstance(saved, list) and isinstance(now, list) and len(saved) == len(now):
        return [
            m
            for i, (a, b) in enumerate(zip(saved, now))
            for m in describe_mismatch(a, b, f"{path}[{i}]")
        ]
    return [] if saved == now else [f"{path}: {saved!r} (saved) vs {now!r} (now)"]


def plain_state(obj: Any) -> Any:
    """Python RNG state and nested dicts in a form torch.load(weights_only=True) accepts."""
    if isinstance(obj, dict):
        return {k: plain_state(v) for k, v in obj.items()}
    if isinstance(obj, tuple):
        return [plain_state(v) for v in obj]
    return obj


def rng_tuples(obj: Any) -> Any:
    return tuple(rng_tuples(v) for v in obj) if isinstance(obj, list) else obj
