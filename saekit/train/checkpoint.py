"""Atomic checkpoints and the run directory's ownership.

A checkpoint is a directory `checkpoints/step-00001200/` written under a temporary name and
renamed when complete; `checkpoints/latest` (a one-line file, replaced atomically) names the
newest one. A crash mid-write leaves only a `.partial` directory, so `latest` always points at
a complete checkpoint. Resuming reads the newest checkpoint that loads: one truncated by a
dying disk is set aside, one deleted by hand is passed over. Dictionary weights are
safetensors; optimizer, scheduler and RNG states are tensors and plain numbers saved with
torch.save and read back with weights_only=True.
"""

from __future__ import annotations

import json
import os
import shutil
import sys
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file, save_file

from saekit.errors import SaekitError
from saekit.files import follow_umask
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
    follow_umask(partial)  # safetensors writes 0600
    if final.exists():
        # Rewriting a step: rename the old copy aside rather than delete it first, so the window
        # in which `latest` names no directory is two renames, not a recursive delete.
        os.replace(final, final.with_name(final.name + ".old"))
    os.replace(partial, final)
    _replace_file(root / LATEST, final.name + "\n")
    shutil.rmtree(final.with_name(final.name + ".old"), ignore_errors=True)
    for stale in _complete(root)[keep:]:
        shutil.rmtree(stale, ignore_errors=True)
    return final


def _complete(root: Path) -> list[Path]:
    """Complete checkpoint directories, newest first (.partial/.old/.unreadable are not)."""
    return sorted(
        (p for p in root.glob("step-*") if p.is_dir() and "." not in p.name), reverse=True
    )


def has_checkpoint(root: Path) -> bool:
    return (root / LATEST).is_file() or bool(_complete(root))


def _read_checkpoint(
    ckpt: Path,
) -> tuple[dict[str, dict[str, torch.Tensor]], dict[str, Any], dict[str, Any]]:
    meta = json.loads((ckpt / "meta.json").read_text())
    weights = {p.stem: load_file(str(p)) for p in sorted(ckpt.glob("*.safetensors"))}
    missing = [name for name in meta.get("slots", {}) if name not in weights]
    if missing:
        raise FileNotFoundError(f"no weights for {missing}")
    state = torch.load(ckpt / "trainer_state.pt", weights_only=True)
    return weights, state, meta


def load_checkpoint(
    root: Path,
) -> tuple[dict[str, dict[str, torch.Tensor]], dict[str, Any], dict[str, Any]]:
    """(weights per dictionary, trainer state, meta) of the newest readable checkpoint.

    An unreadable one (truncated, torn, missing files) is renamed `step-N.unreadable` (the
    next checkpoint write deletes it), `latest` is pointed at the one read, and a warning line
    names both. `latest` is a hint: the step directories themselves are the record."""
    if not has_checkpoint(root):
        raise SaekitError(f"No checkpoint to resume from in {root}; run without --resume.")
    failed: list[str] = []
    for ckpt in _complete(root):
        try:
            loaded = _read_checkpoint(ckpt)
        except Exception as exc:  # noqa: BLE001 - any unreadable piece: try the previous one
            reason = f"{type(exc).__name__}: {' '.join(str(exc).split())[:120]}"
            failed.append(f"{ckpt.name} is unreadable or truncated ({reason})")
            os.replace(ckpt, ckpt.with_name(ckpt.name + ".unreadable"))
            continue
        if failed:
            _replace_file(root / LATEST, ckpt.name + "\n")
            print(
                f"saekit: warning: {'; '.join(failed)}; set aside as *.unreadable, resuming "
                f"from {ckpt.name}.",
                file=sys.stderr,
            )
        return loaded
    raise SaekitError(
        f"No readable checkpoint in {root}: "
        f"{'; '.join(failed) or 'latest names a step directory that is gone'}. To restart "
        f"this run from step 0, delete {root} and rerun with --resume; or train into another "
        "train.output_dir."
    )


class RunLock:
    """Refuses a second live run on the same output directory (pid file, stale-aware).

    Every change to the lock file is atomic: it is created complete by hard-linking a file
    that already holds our pid (create-if-absent), and a stale one (its process is gone) is
    replaced by rename. Which of several processes may replace a stale lock of pid P is decided
    by who creates `run.lock.stale-P` (O_EXCL), and the winner re-reads the lock under that
    claim, so two resumers that both saw P dead cannot both take it.
    """

    NAME = LOCK_FILE

    def __init__(self, out: Path) -> None:
        self.path = out / self.NAME

    def __enter__(self) -> RunLock:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        mine = self.path.with_name(f"{self.NAME}.{os.getpid()}")
        mine.write_text(str(os.getpid()))
        try:
            self._acquire(mine)
        finally:
            mine.unlink(missing_ok=True)  # linked or renamed into place, or refused
        return self

    def _acquire(self, mine: Path) -> None:
        try:
            os.link(mine, self.path)
            return
        except FileExistsError:
            pass
        except OSError:  # a file system without hard links (some FUSE mounts): O_EXCL, write
            try:
                fd = os.open(self.path, os.O_CREAT | os.O_EXCL | os.O_WRONLY)
                os.write(fd, str(os.getpid()).encode())
                os.close(fd)
                return
            except FileExistsError:
                pass
        pid = self._pid()
        where = self.path.parent
        if pid and _alive(pid):
            raise SaekitError(
                f"Another run (pid {pid}) is writing to {where}; "
                "wait for it or choose another train.output_dir."
            )
        claim = self.path.with_name(f"{self.NAME}.stale-{pid}")
        try:
            fd = os.open(claim, os.O_CREAT | os.O_EXCL | os.O_WRONLY)
        except FileExistsError:
            raise _claimed(claim, where) from None
        try:
            os.write(fd, str(os.getpid()).encode())
            os.close(fd)
            if self._pid() != pid:  # replaced or released since we read it: another run won
                raise SaekitError(
                    f"Another run started writing to {where} just now; "
                    "choose another train.output_dir."
                )
            os.replace(mine, self.path)
        finally:
            claim.unlink(missing_ok=True)

    def _pid(self) -> int:
        """The pid in the lock file; 0 if it is gone, empty or not a number (stale)."""
        try:
            return int(self.path.read_text().strip() or 0)
        except (OSError, ValueError):
            return 0

    def __exit__(self, *exc: object) -> None:
        self.path.unlink(missing_ok=True)

    def holder(self) -> int | None:
        """The pid of the live process holding the lock (this one included), else None."""
        pid = self._pid()
        return pid if pid and (pid == os.getpid() or _alive(pid)) else None


def _claimed(claim: Path, where: Path) -> SaekitError:
    """The error for a stale lock another process is replacing (or died replacing)."""
    try:
        claimant = int(claim.read_text().strip() or 0)
    except (OSError, ValueError):
        claimant = 0
    if claimant and not _alive(claimant):
        return SaekitError(
            f"A takeover of the stale lock of {where} by pid {claimant} was interrupted; "
            f"delete {claim}, then rerun."
        )
    return SaekitError(
        f"Another run is taking over the stale lock of {where} just now; wait for it or "
        "choose another train.output_dir."
    )


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
