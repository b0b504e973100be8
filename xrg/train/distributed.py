"""Training on several processes with ``torch.distributed``, started by ``torchrun``.

``torchrun --nproc_per_node N -m xrg train ...`` (multi-node: torchrun's usual
``--nnodes``/``--rdzv-*`` flags) starts N copies of the command; each reads ``RANK``,
``WORLD_SIZE`` and ``LOCAL_RANK`` from its environment and joins one process group
(:func:`init_from_environment`: ``gloo`` on CPU, ``nccl`` on CUDA). Without those variables
nothing here does anything and every helper is the identity, so a single-process run is
bit-identical to one without this module.

How the loops in :mod:`xrg.train.loop` use it (data parallelism with one global batch):

* **The batch order is global.** Every rank draws the same seeded epoch permutation and the
  same global batches (the config's batch size is the *global* batch); rank ``r`` trains on
  ``batch[r::world_size]`` (:func:`shard`). A checkpoint records the position in global
  batches, so a run resumes under another world size at the same place.
* **Gradients are all-reduced once per optimizer step**, as one flat buffer, each rank's
  weighted by its share of the global batch (:class:`GradientSync`, an optimizer step
  pre-hook), so an update is the one a single process would make on the global batch up to
  the per-rank statistics below. ``DistributedDataParallel`` itself is not used: the critics'
  gradient penalty differentiates through a gradient (``create_graph=True``), which DDP's
  reducer does not support, and the GAN steps update several optimizers over shared modules
  per batch; a pre-step hook on each optimizer syncs exactly what that optimizer steps.
* **BatchNorm statistics are per rank** while training (SyncBatchNorm needs an accelerator;
  on ``gloo``/CPU it refuses), so a rank normalises with its shard's statistics — on 2
  processes, half the batch. The generators' BatchNorm re-estimation at epoch ends runs on
  all ranks' shards and averages the running statistics (:func:`average_buffers`).
* **Randomness**: the models start from the same seed on every rank (and rank 0's weights are
  broadcast, :func:`broadcast_module`); ranks above 0 then draw their noise from a stream of
  their own (:func:`reseed_rank`). Rank 0 keeps the single-process stream, and it is rank 0's
  RNG state a checkpoint keeps.
* **Files are rank 0's**: checkpoints, metrics, sample grids, progress bars and printed
  lines; the others wait at a barrier where rank 0 writes.
* **Stops and failures are collective**: a stop signal seen by any rank stops all of them at
  the same step (:func:`any_rank`), and a non-finite loss on any rank raises on every rank,
  so no rank is left waiting in a collective.
"""

from __future__ import annotations

import os
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import torch
import torch.distributed as dist
from torch import nn

from xrg.errors import ConfigError

#: Environment variables torchrun sets for every process it starts.
TORCHRUN_VARIABLES = ("RANK", "WORLD_SIZE", "LOCAL_RANK")


@dataclass(frozen=True)
class World:
    """This process's place among the training processes (rank 0 of 1 without torchrun)."""

    rank: int = 0
    world_size: int = 1
    local_rank: int = 0

    @property
    def distributed(self) -> bool:
        return self.world_size > 1

    @property
    def is_main(self) -> bool:
        return self.rank == 0


def world() -> World:
    """The current process group's world (rank 0 of 1 when none is initialised)."""
    if not (dist.is_available() and dist.is_initialized()):
        return World()
    return World(dist.get_rank(), dist.get_world_size(), int(os.environ.get("LOCAL_RANK", dist.get_rank())))


def is_main() -> bool:
    """Whether this process writes files and prints (rank 0, or the only process)."""
    return world().is_main


def environment_world(environ: Mapping[str, str] | None = None) -> World:
    """The world torchrun describes in ``environ`` (rank 0 of 1 without its variables); a malformed one is refused."""
    environ = os.environ if environ is None else environ
    if "WORLD_SIZE" not in environ:
        return World()
    try:
        values = {name: int(environ.get(name, "0")) for name in TORCHRUN_VARIABLES}
    except ValueError as exc:
        shown = ", ".join(f"{name}={environ.get(name)!r}" for name in TORCHRUN_VARIABLES)
        raise ConfigError(f"torchrun's environment is not integers ({shown}): {exc}") from exc
    size, rank = values["WORLD_SIZE"], values["RANK"]
    if size < 1 or not 0 <= rank < size:
        raise ConfigError(f"torchrun's environment has RANK={rank} outside WORLD_SIZE={size}")
    return World(rank, size, values["LOCAL_RANK"])


def init_from_environment(device: str | torch.device = "cpu") -> World:
    """Join the process group torchrun set up (``gloo`` on CPU, ``nccl`` on CUDA); the world.

    Does nothing for a single process (no torchrun, or ``WORLD_SIZE=1``) or when a group
    exists already. On CUDA each process takes the GPU of its ``LOCAL_RANK``.
    """
    wanted = environment_world()
    if not wanted.distributed:
        return world()
    if dist.is_initialized():
        return world()
    device = torch.device(device)
    if device.type == "cuda":
        torch.cuda.set_device(wanted.local_rank)
    dist.init_process_group(backend="nccl" if device.type == "cuda" else "gloo")
    return world()


def local_device(device: str | torch.device) -> torch.device:
    """``device`` as this rank uses it: ``cuda`` becomes this process's GPU under torchrun."""
    device = torch.device(device)
    if device.type == "cuda" and device.index is None and world().distributed:
        return torch.device("cuda", world().local_rank)
    return device


def shutdown() -> None:
    """Leave the process group (at the end of a command), when there is one."""
    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()


# ---- data -------------------------------------------------------------------------------


def shard(indices: Sequence[int], current: World | None = None) -> list[int]:
    """This rank's part of a global batch: ``indices[rank::world_size]`` (all of it for one process).

    A global batch smaller than the world is refused: a rank with no cases would have no loss.
    """
    current = current or world()
    if not current.distributed:
        return list(indices)
    if len(indices) < current.world_size:
        raise ConfigError(
            f"a global batch of {len(indices)} case(s) cannot be shared by {current.world_size} processes; "
            "use a batch size of at least the number of processes"
        )
    return list(indices[current.rank :: current.world_size])


# ---- collectives ------------------------------------------------------------------------


def barrier() -> None:
    if world().distributed:
        dist.barrier()


def any_rank(flag: int) -> int:
    """The largest ``flag`` over the ranks (``flag`` itself for one process): a stop or a failure seen anywhere."""
    if not world().distributed:
        return flag
    value = torch.tensor([flag], dtype=torch.int64)
    dist.all_reduce(value, op=dist.ReduceOp.MAX)
    return int(value)


def sum_totals(totals: Mapping[str, float]) -> dict[str, float]:
    """An epoch's running totals over all ranks: every amount summed, ``seconds`` the slowest rank's.

    The loops add per-step means and a ``batches`` count, so the sums divide into the mean
    over every rank's steps; counts (``images``, correct pairs) add up as they should.
    """
    if not world().distributed:
        return dict(totals)
    names = sorted(totals)
    gathered: list[Any] = [None] * world().world_size
    dist.all_gather_object(gathered, names)
    if any(other != names for other in gathered):
        raise RuntimeError(f"the ranks' epoch totals name different amounts: {gathered}")
    summed = [name for name in names if name != "seconds"]
    result: dict[str, float] = {}
    if summed:
        values = torch.tensor([float(totals[name]) for name in summed], dtype=torch.float64)
        dist.all_reduce(values)
        result.update(zip(summed, values.tolist()))
    if "seconds" in totals:
        seconds = torch.tensor([float(totals["seconds"])], dtype=torch.float64)
        dist.all_reduce(seconds, op=dist.ReduceOp.MAX)
        result["seconds"] = float(seconds)
    return result


def _flat(tensors: list[torch.Tensor]) -> torch.Tensor:
    return torch.cat([tensor.reshape(-1) for tensor in tensors])


def _unflat(flat: torch.Tensor, tensors: list[torch.Tensor]) -> None:
    offset = 0
    for tensor in tensors:
        count = tensor.numel()
        tensor.copy_(flat[offset : offset + count].view_as(tensor))
        offset += count


@torch.no_grad()
def broadcast_module(module: nn.Module, source: int = 0) -> None:
    """Every parameter and buffer of ``module`` set to rank ``source``'s (one flat broadcast per dtype)."""
    if not world().distributed:
        return
    tensors = [*module.parameters(), *module.buffers()]
    for dtype in sorted({tensor.dtype for tensor in tensors}, key=str):
        group = [tensor.data for tensor in tensors if tensor.dtype == dtype]
        flat = _flat(group)
        dist.broadcast(flat, src=source)
        _unflat(flat, group)


@torch.no_grad()
def average_buffers(module: nn.Module) -> None:
    """The floating-point buffers of ``module`` (BatchNorm running statistics) averaged over the ranks."""
    if not world().distributed:
        return
    group = [buffer for buffer in module.buffers() if buffer.is_floating_point()]
    if not group:
        return
    flat = _flat(group)
    dist.all_reduce(flat)
    flat /= world().world_size
    _unflat(flat, group)


def broadcast_generator(generator: torch.Generator, source: int = 0) -> None:
    """``generator``'s state set to rank ``source``'s (the shuffle, when steps drew from it per rank)."""
    if not world().distributed:
        return
    state = [generator.get_state() if world().rank == source else None]
    dist.broadcast_object_list(state, src=source)
    generator.set_state(state[0])


def reseed_rank(seed: int, step: int) -> None:
    """Ranks above 0 draw their noise from a stream of their own (rank 0 keeps its state)."""
    current = world()
    if current.distributed and current.rank > 0:
        torch.manual_seed((seed * 1_000_003 + step * 7_919 + current.rank) % 2**63)


class GradientSync:
    """All-reduces the gradients an optimizer is about to apply, once per step, in one flat buffer.

    :meth:`attach` registers a step pre-hook on each optimizer; ``share`` (this rank's cases
    over the global batch, set by the loop before each step) weights the rank's gradients, so
    the sum over ranks is the global batch's mean gradient. Parameters without a gradient are
    left alone (every rank runs the same code, so the same ones have none). For one process
    nothing is attached.
    """

    def __init__(self) -> None:
        self.share = 1.0
        self._handles: list[Any] = []

    def attach(self, optimizers: Iterable[torch.optim.Optimizer]) -> None:
        if not world().distributed:
            return
        for optimizer in optimizers:
            self._handles.append(optimizer.register_step_pre_hook(self._hook))

    def _hook(self, optimizer: torch.optim.Optimizer, args: Any, kwargs: Any) -> None:
        grads = [p.grad for group in optimizer.param_groups for p in group["params"] if p.grad is not None]
        if not grads:
            return
        with torch.no_grad():
            for dtype in sorted({grad.dtype for grad in grads}, key=str):
                group = [grad for grad in grads if grad.dtype == dtype]
                flat = _flat(group).mul_(self.share)
                dist.all_reduce(flat)
                _unflat(flat, group)

    def detach(self) -> None:
        for handle in self._handles:
            handle.remove()
        self._handles.clear()
