"""What a trainer's checkpoint holds and how every rank gets its part back.

One format for any number of processes: one weights file per dictionary, the slots' optimizer /
schedule / clocks / controller states, and a `ranks` list with each process's stream position
and RNG states (data-parallel ranks read different rows; hook-parallel ranks may draw different
random numbers). Rank 0 writes it; in hooks mode the other ranks first send it their
dictionaries. On resume rank 0 reads and checks it, then broadcasts it to the others, so only
rank 0 needs to see the run directory for a data-parallel resume. `Trainer.state_dict` and
`Trainer.load_state_dict` are built from these functions.
"""

from __future__ import annotations

import json
import random
import warnings
from pathlib import Path
from typing import Any, NamedTuple

import torch

from saekit.activations.stream import BaseStream
from saekit.config import from_dict, to_dict
from saekit.dictionaries.config import SAEConfig
from saekit.errors import SaekitError
from saekit.train.checkpoint import describe_mismatch, load_checkpoint, plain_state, rng_tuples
from saekit.train.distributed import Distributed
from saekit.train.slot import Slot


class RunState(NamedTuple):
    """A whole run's state, as one checkpoint stores it."""

    weights: dict[str, dict[str, torch.Tensor]]
    """Each dictionary's state_dict, by slot name."""
    state: dict[str, Any]
    """Step, slot states (optimizer, schedule, clocks, controller) and per-rank states."""
    meta: dict[str, Any]
    """What a resume checks: step counts, world, parallel mode, run config, dictionaries."""


def to_cpu(obj: Any) -> Any:
    """A nested state with every tensor on the CPU (safe to pickle across nodes)."""
    if isinstance(obj, torch.Tensor):
        return obj.detach().cpu()
    if isinstance(obj, dict):
        return {k: to_cpu(v) for k, v in obj.items()}
    if isinstance(obj, list | tuple):
        return type(obj)(to_cpu(v) for v in obj)
    return obj


def slot_meta(slots: list[Slot], dist: Distributed) -> dict[str, dict[str, Any]]:
    """{name: method, d_in, d_sae} of every dictionary of the run, on every rank."""
    mine = {
        s.name: {"method": s.sae.method, "d_in": s.sae.d_in, "d_sae": s.sae.d_sae} for s in slots
    }
    if dist.mode == "data":
        return mine
    merged = {k: v for part in dist.all_gather(mine) for k, v in part.items()}
    return dict(sorted(merged.items()))


def gather_state(
    slots: list[Slot],
    dist: Distributed,
    stream: BaseStream,
    step: int,
    n_steps: int,
    run_config: dict[str, Any],
) -> RunState | None:
    """The whole run's state on rank 0 (None on the other ranks, which only send theirs)."""
    own = {s.name: (dict(s.sae.state_dict()), s.state()) for s in slots}
    rank_state = {
        "stream": stream.state_dict(),
        "torch_rng": torch.get_rng_state(),
        "python_rng": random.getstate(),
    }
    ranks = dist.gather(plain_state(rank_state))
    if dist.mode == "hooks":
        own = {k: v for part in dist.gather(to_cpu(own)) for k, v in part.items()}
    all_meta = slot_meta(slots, dist)
    if not dist.is_main:
        return None
    split = {"world": dist.world, "parallel": dist.mode}
    state = {"step": step, "slots": {n: own[n][1] for n in all_meta}, **split, "ranks": ranks}
    meta = {"step": step, "n_steps": n_steps, **split, "run_config": run_config, "slots": all_meta}
    return RunState({n: own[n][0] for n in all_meta}, plain_state(state), meta)


def read_state(
    root: Path, slots: list[Slot], dist: Distributed, run_config: dict[str, Any]
) -> RunState:
    """The newest checkpoint under `root`, read and checked on rank 0, broadcast to all."""
    # Through JSON, as the checkpoint stored it (tuples become lists).
    now = json.loads(json.dumps({"run_config": run_config, "slots": slot_meta(slots, dist)}))

    def read() -> RunState:
        weights, state, meta = load_checkpoint(root)
        saved = {"run_config": canonical_run_config(meta.get("run_config")), "slots": meta["slots"]}
        diff = describe_mismatch(saved, now)
        where = root.parent
        if diff:
            raise SaekitError(
                f"The checkpoint in {where} was written by a different recipe: "
                f"{'; '.join(diff[:6])}. Resume with the recipe that wrote it, or choose "
                "another train.output_dir."
            )
        saved_split = (meta.get("world", 1), meta.get("parallel", "data"))
        if saved_split[0] != dist.world or (dist.world > 1 and saved_split[1] != dist.mode):
            raise SaekitError(
                f"The checkpoint in {where} was written by {saved_split[0]} process(es) "
                f"with train.parallel={saved_split[1]}; resume it with the same number of "
                f"processes (now {dist.world}) and the same train.parallel."
            )
        return RunState(weights, state, meta)

    return dist.broadcast(dist.on_main(read))  # type: ignore[return-value]


def canonical_run_config(run_config: Any) -> Any:
    """A run config whose `saes` entries are written the way `Recipe.identity` writes them
    (flat keys of older checkpoints mapped, each method's section filled in)."""
    if not isinstance(run_config, dict) or not isinstance(run_config.get("saes"), list):
        return run_config
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        saes = [to_dict(from_dict(SAEConfig, dict(e)).canonical()) for e in run_config["saes"]]
    return {**run_config, "saes": saes}


def restore_state(
    slots: list[Slot], dist: Distributed, stream: BaseStream, run_state: RunState
) -> int:
    """Restore every owned dictionary, this rank's stream and RNGs; returns the step."""
    weights, state = run_state.weights, run_state.state
    for slot in slots:
        slot.sae.load_state_dict(weights[slot.name])
        slot.load(state["slots"][slot.name])
    # Checkpoints from before the `ranks` list held one process's state at the top level.
    ranks = state.get("ranks") or [state]
    mine = ranks[dist.rank]
    stream.load_state_dict(mine["stream"])
    torch.set_rng_state(mine["torch_rng"])
    random.setstate(rng_tuples(mine["python_rng"]))
    return int(state["step"])
