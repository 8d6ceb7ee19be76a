"""What a trainer's checkpoint holds and how every rank gets its part back.

One format for any number of processes: one weights file per dictionary, the slots' optimizer /
schedule / clocks / controller states, and a `ranks` list with each process's stream position
and RNG states (data-parallel ranks read different rows; hook-parallel ranks may draw different
random numbers). Rank 0 writes it; in hooks mode the other ranks first send it their
dictionaries. On resume rank 0 reads and checks it, then broadcasts it to the others, so only
rank 0 needs to see the run directory for a data-parallel resume.
"""

from __future__ import annotations

import json
import random
from typing import TYPE_CHECKING, Any

import torch

from saekit.errors import SaekitError
from saekit.train.checkpoint import (
    describe_mismatch,
    load_checkpoint,
    plain_state,
    rng_tuples,
    save_checkpoint,
)

if TYPE_CHECKING:
    from saekit.train.trainer import Trainer


def to_cpu(obj: Any) -> Any:
    """A nested state with every tensor on the CPU (safe to pickle across nodes)."""
    if isinstance(obj, torch.Tensor):
        return obj.detach().cpu()
    if isinstance(obj, dict):
        return {k: to_cpu(v) for k, v in obj.items()}
    if isinstance(obj, list | tuple):
        return type(obj)(to_cpu(v) for v in obj)
    return obj


def slot_meta(trainer: Trainer) -> dict[str, dict[str, Any]]:
    """{name: method, d_in, d_sae} of every dictionary of the run, on every rank."""
    mine = {
        s.name: {"method": s.sae.method, "d_in": s.sae.d_in, "d_sae": s.sae.d_sae}
        for s in trainer.slots
    }
    if trainer.dist.mode == "data":
        return mine
    merged = {k: v for part in trainer.dist.all_gather(mine) for k, v in part.items()}
    return dict(sorted(merged.items()))


def save_run_state(trainer: Trainer) -> None:
    dist = trainer.dist
    slots = {s.name: (dict(s.sae.state_dict()), s.state()) for s in trainer.slots}
    rank_state = {
        "stream": trainer.stream.state_dict(),
        "torch_rng": torch.get_rng_state(),
        "python_rng": random.getstate(),
    }
    ranks = dist.gather(plain_state(rank_state))
    if dist.mode == "hooks":
        slots = {k: v for part in dist.gather(to_cpu(slots)) for k, v in part.items()}
    all_meta = slot_meta(trainer)
    if not dist.is_main:
        return
    state = {
        "step": trainer.step,
        "slots": {name: slots[name][1] for name in all_meta},
        "world": dist.world,
        "parallel": dist.mode,
        "ranks": ranks,
    }
    meta = {
        "step": trainer.step,
        "n_steps": trainer.n_steps,
        "world": dist.world,
        "parallel": dist.mode,
        "run_config": trainer.run_config,
        "slots": all_meta,
    }
    weights = {name: slots[name][0] for name in all_meta}
    save_checkpoint(trainer.out / "checkpoints", trainer.step, weights, plain_state(state), meta)


def load_run_state(trainer: Trainer) -> int:
    """Restore every owned dictionary, this rank's stream and RNGs; returns the step."""
    dist = trainer.dist
    # Through JSON, as the checkpoint stored it (tuples become lists).
    now = json.loads(json.dumps({"run_config": trainer.run_config, "slots": slot_meta(trainer)}))

    def read() -> tuple[dict[str, Any], dict[str, Any]]:
        weights, state, meta = load_checkpoint(trainer.out / "checkpoints")
        saved = {"run_config": meta.get("run_config"), "slots": meta["slots"]}
        diff = describe_mismatch(saved, now)
        if diff:
            raise SaekitError(
                f"The checkpoint in {trainer.out} was written by a different recipe: "
                f"{'; '.join(diff[:6])}. Resume with the recipe that wrote it, or choose "
                "another train.output_dir."
            )
        saved_split = (meta.get("world", 1), meta.get("parallel", "data"))
        if saved_split[0] != dist.world or (dist.world > 1 and saved_split[1] != dist.mode):
            raise SaekitError(
                f"The checkpoint in {trainer.out} was written by {saved_split[0]} process(es) "
                f"with train.parallel={saved_split[1]}; resume it with the same number of "
                f"processes (now {dist.world}) and the same train.parallel."
            )
        return weights, state

    weights, state = dist.broadcast(dist.on_main(read))  # type: ignore[misc]
    for slot in trainer.slots:
        slot.sae.load_state_dict(weights[slot.name])
        slot.load(state["slots"][slot.name])
    # Checkpoints from before the `ranks` list held one process's state at the top level.
    ranks = state.get("ranks") or [state]
    mine = ranks[dist.rank]
    trainer.stream.load_state_dict(mine["stream"])
    torch.set_rng_state(mine["torch_rng"])
    random.setstate(rng_tuples(mine["python_rng"]))
    return int(state["step"])
