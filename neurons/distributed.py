"""Several processes, one node: the world torchrun starts, and what its ranks exchange.

``torchrun --nproc_per_node N tessera miner …`` starts N copies of the node. Rank 0 (the
*leader*) is the node: it alone talks to the chain and to storage, signs and uploads. The other
ranks (*followers*) never open a chain or a bucket; they wait for the leader's commands
(``Command``: train a window, evaluate candidates, stop), receive what the command needs (θ, the
optimizer state, the batches, the updates) by broadcast from the leader, do their share, and
send results back. A follower that gets ``stop`` (or sees the leader vanish) exits.

Exact data parallelism. A payload must not depend on how many processes made it, so every
rank's arithmetic must be the arithmetic of one process. The rule (``neurons.train``): an inner
step's batch of B rows is cut into M equal micro-batches of B/M consecutive rows, in G groups of
k = M/G; the gradient is ``(S_0 + S_1 + … + S_{G-1}) / M`` summed left to right, where S_r is the
left-to-right sum of group r's unscaled micro-batch gradients. A world of G ranks computes S_r on
rank r and sums the gathered S_0..S_{G-1} in rank order (``ordered_sum_``) — not ``all_reduce``,
whose summation order is the backend's business and is not the single-process order once G > 2.
One process computes the same with ``InnerTrainer(micro_batches=M, groups=G)`` (with k = 1, any G
is plain accumulation: ``--micro-batches M`` alone reproduces a world of M). Same kernels on the
same shapes give the same gradients, so θ, Δ, the error feedback and the payload are the same
bytes (on the same hardware class and the same number of CPU threads per process;
tests/neurons/test_distributed.py checks it on CPU/gloo).

Control messages travel with ``broadcast_object_list`` (pickle between our own processes, never
peer bytes: updates are decoded and checked by the leader before they are sent); tensors travel
as tensors.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import timedelta
from typing import Any

import torch
import torch.distributed as dist

from neurons.config import ConfigError

log = logging.getLogger(__name__)

# Elements per all_gather in ``ordered_sum_``: the gather holds world × this many values at once,
# so memory stays bounded (64 MiB of fp32 per rank at 8 ranks) whatever the model's size.
GATHER_BUCKET = 1 << 21


class DistributedError(ConfigError):
    """The torchrun environment or the micro-batch setting is unusable; the message names the
    variable or flag to fix (a start-up error: one line from ``neurons.cli``)."""


@dataclass(frozen=True)
class World:
    """This process's place among the node's processes (one process: rank 0 of 1)."""

    rank: int = 0
    size: int = 1
    local_rank: int = 0

    @property
    def leader(self) -> bool:
        return self.rank == 0

    @property
    def distributed(self) -> bool:
        return self.size > 1

    @classmethod
    def from_env(cls, env: Mapping[str, str] | None = None) -> World:
        """RANK / WORLD_SIZE / LOCAL_RANK as torchrun sets them; none of them: one process."""
        env = os.environ if env is None else env
        names = ("RANK", "WORLD_SIZE", "LOCAL_RANK")
        given = {n: env.get(n) for n in names if env.get(n) is not None}
        if not given:
            return cls()
        if len(given) != len(names):
            missing = ", ".join(n for n in names if n not in given)
            raise DistributedError(f"torchrun environment incomplete: {missing} not set (start the node with torchrun)")
        try:
            rank, size, local = (int(given[n]) for n in names)
        except ValueError as exc:
            raise DistributedError(f"torchrun environment: RANK/WORLD_SIZE/LOCAL_RANK must be integers ({exc})") from exc
        if size < 1 or not 0 <= rank < size or local < 0:
            raise DistributedError(f"torchrun environment: rank {rank} of world size {size} is impossible")
        return cls(rank, size, local)

    def device(self, configured: str) -> str:
        """The device this rank uses: ``cuda`` becomes ``cuda:<local rank>`` (one GPU per rank)."""
        if self.distributed and configured in ("cuda", "cuda:0"):
            return f"cuda:{self.local_rank}"
        return configured


def check_micro_batches(batch_size: int, micro_batches: int | None, world: World) -> int:
    """The micro-batch count a node of ``world`` trains with, or ``DistributedError`` naming the fix."""
    m = micro_batches or world.size
    if m % world.size:
        raise DistributedError(f"--micro-batches {m} with {world.size} ranks: every rank takes the same number of "
                               f"micro-batches; give a multiple of {world.size}")
    if batch_size % m:
        raise DistributedError(f"batch_size {batch_size} does not split into {m} equal micro-batches: "
                               f"use a world size / --micro-batches that divides {batch_size}")
    return m


# Followers wait in a broadcast while the leader catches up, joins or sleeps to the next window;
# the default collective timeout (30 min on gloo) would end them in a long catch-up.
COMMAND_TIMEOUT = timedelta(hours=24)


def init_world(device: str, env: Mapping[str, str] | None = None) -> World:
    """Join the process group torchrun set up (gloo on CPU, nccl on CUDA); one process: nothing."""
    world = World.from_env(env)
    if not world.distributed or dist.is_initialized():
        return world
    backend = "nccl" if device.startswith("cuda") else "gloo"
    if backend == "nccl":
        torch.cuda.set_device(world.local_rank)
    dist.init_process_group(backend=backend, timeout=COMMAND_TIMEOUT)
    log.info("rank %d of %d joined the node's process group (%s)", world.rank, world.size, backend)
    return world


def close_world(world: World) -> None:
    if world.distributed and dist.is_initialized():
        dist.destroy_process_group()


# --- collectives -----------------------------------------------------------------------------


def ordered_sum_(tensors: Sequence[torch.Tensor], world: World, bucket: int = GATHER_BUCKET) -> None:
    """Replace every tensor by the sum over ranks, added in rank order (rank 0 + rank 1 + …),
    identically on every rank. Tensors of one dtype and device, contiguous."""
    if not world.distributed or not tensors:
        return
    flat_views = [t.view(-1) for t in tensors]
    total = sum(v.numel() for v in flat_views)
    ref = flat_views[0]
    for start in range(0, total, bucket):
        stop = min(total, start + bucket)
        mine = _slice_concat(flat_views, start, stop).to(ref.dtype)
        parts = [torch.empty_like(mine) for _ in range(world.size)]
        dist.all_gather(parts, mine)
        acc = parts[0].clone()
        for part in parts[1:]:
            acc += part
        _slice_scatter(flat_views, start, acc)


def _slice_concat(views: Sequence[torch.Tensor], start: int, stop: int) -> torch.Tensor:
    """Elements [start, stop) of the concatenation of ``views``, without building all of it."""
    out, offset = [], 0
    for v in views:
        lo, hi = max(start, offset), min(stop, offset + v.numel())
        if lo < hi:
            out.append(v[lo - offset: hi - offset])
        offset += v.numel()
        if offset >= stop:
            break
    return torch.cat(out)


def _slice_scatter(views: Sequence[torch.Tensor], start: int, values: torch.Tensor) -> None:
    offset, pos = 0, 0
    stop = start + values.numel()
    for v in views:
        lo, hi = max(start, offset), min(stop, offset + v.numel())
        if lo < hi:
            v[lo - offset: hi - offset].copy_(values[pos: pos + hi - lo])
            pos += hi - lo
        offset += v.numel()
        if offset >= stop:
            break


def broadcast_tensors_(tensors: Iterable[torch.Tensor], world: World) -> None:
    """Overwrite every tensor with the leader's copy, in place (same shapes on every rank)."""
    if not world.distributed:
        return
    with torch.no_grad():
        for t in tensors:
            dist.broadcast(t.data, src=0)


def broadcast_object(obj: Any, world: World) -> Any:
    """The leader's ``obj`` on every rank (a small control message; tensors go by broadcast)."""
    if not world.distributed:
        return obj
    box = [obj if world.leader else None]
    dist.broadcast_object_list(box, src=0)
    return box[0]


def broadcast_tensor_dict(tensors: Mapping[str, torch.Tensor] | None, world: World, device: str) -> dict[str, torch.Tensor]:
    """The leader's name → tensor dict on every rank: names, shapes and dtypes first, then the values."""
    layout = broadcast_object(
        None if not world.leader else [(k, tuple(v.shape), v.dtype) for k, v in (tensors or {}).items()], world
    )
    if world.leader:
        out = {k: v.detach().to(device).contiguous() for k, v in (tensors or {}).items()}
    else:
        out = {k: torch.empty(shape, dtype=dtype, device=device) for k, shape, dtype in layout}
    broadcast_tensors_(out.values(), world)
    return out


def gather_objects(obj: Any, world: World) -> list[Any]:
    """Every rank's ``obj``, in rank order, on the leader (followers get an empty list)."""
    if not world.distributed:
        return [obj]
    out: list[Any] = [None] * world.size if world.leader else []
    dist.gather_object(obj, out if world.leader else None, dst=0)
    return out


def shard(items: Sequence[Any], world: World) -> list[Any]:
    """This rank's share of ``items``: every size-th one from its rank (balanced, order kept)."""
    return list(items[world.rank:: world.size])


# --- the leader's commands -------------------------------------------------------------------

TRAIN, EVALUATE, STOP = "train", "evaluate", "stop"


@dataclass(frozen=True)
class Command:
    """What the leader asks every follower to do next; ``args`` are small (big data follows by
    broadcast, in the order the command's handler reads it)."""

    kind: str
    args: dict[str, Any] = field(default_factory=dict)


def send(command: Command, world: World) -> None:
    """Leader only: announce the next command (every follower is blocked in ``receive``)."""
    if world.distributed:
        if not world.leader:
            raise DistributedError("only rank 0 sends commands")
        broadcast_object(command, world)


def receive(world: World) -> Command:
    return broadcast_object(None, world)


def follow(world: World, handlers: Mapping[str, Any]) -> int:
    """A follower's whole life: run each command's handler until ``stop``; returns commands done.

    A handler is ``handler(command) -> None`` and takes part in the same collectives as the
    leader's matching call. If the leader dies, the next collective raises (gloo/nccl: a
    connection error) and the follower ends with it: torchrun then stops the whole group."""
    done = 0
    while True:
        command = receive(world)
        if command.kind == STOP:
            return done
        handler = handlers.get(command.kind)
        if handler is None:
            raise DistributedError(f"rank {world.rank} has no handler for command {command.kind!r}")
        handler(command)
        done += 1
