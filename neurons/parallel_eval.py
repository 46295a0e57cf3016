"""Stage 2 over all the node's ranks: each rank measures a share of the candidates on its own θ_w.

Every candidate's measurement is independent (its update applied alone to θ_w, then reverted
bit-exactly: ``scoring.lossscore``), so the work splits by candidate. The leader sends θ_w and
the window's reference update to every rank, and to each rank only the updates and assigned
batches of its own candidates (every ``size``-th uid in sorted order); each rank measures its
share with the same code a single process runs; the leader gathers the measurements. Same θ_w,
same batches, same kernels: the same losses, so the same scores as one process.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

import torch
import torch.distributed as dist

from compression.sparse import SparseTensor, SparseUpdate
from neurons.distributed import (
    EVALUATE,
    Command,
    World,
    broadcast_tensor_dict,
    broadcast_tensors_,
    gather_objects,
    send,
)
from scoring.lossscore import (
    LossMeasurement,
    apply_sparse_temporarily,
    measure_update,
    reference_losses,
    sequence_losses,
)


@dataclass(frozen=True)
class EvalShare:
    """One rank's part of a window's stage 2 (tensors on the CPU while in transit)."""

    updates: dict[int, SparseUpdate]
    own: dict[int, list[torch.Tensor]]
    rand: list[torch.Tensor]
    before_rand: tuple[float, ...]
    lr: float
    has_reference: bool
    contexts: dict[int, SparseUpdate] = field(default_factory=dict)  # applied under a uid's update


def measure_candidates(
    world: World, model: torch.nn.Module, updates: Mapping[int, SparseUpdate], lr: float,
    own: Mapping[int, Sequence[torch.Tensor]], rand: Sequence[torch.Tensor], before_rand: Sequence[float],
    reference: Mapping[str, torch.Tensor] | None,
    contexts: Mapping[int, SparseUpdate] | None = None,
) -> dict[int, LossMeasurement]:
    """Leader: every candidate's measurement, split over the world (one process: all here).
    ``contexts``: per uid an update applied first, its measurement's baseline (a pipeline
    stage's group partners, ``neurons.stage_groups.stage_contexts``)."""
    uids = sorted(updates)
    contexts = contexts or {}
    if not world.distributed:  # one process: no copies, the validator's own tensors
        share = EvalShare(dict(updates), {u: list(own[u]) for u in uids}, list(rand), tuple(before_rand), lr,
                          reference is not None, dict(contexts))
        return _measure(world, model, [share], reference)
    shares = [
        EvalShare(
            updates={u: _to_cpu(updates[u]) for u in uids[r:: world.size]},
            own={u: [b.cpu() for b in own[u]] for u in uids[r:: world.size]},
            rand=[b.cpu() for b in rand], before_rand=tuple(float(x) for x in before_rand), lr=lr,
            has_reference=reference is not None,
            contexts={u: _to_cpu(contexts[u]) for u in uids[r:: world.size] if u in contexts},
        )
        for r in range(world.size)
    ]
    send(Command(EVALUATE), world)
    return _measure(world, model, shares, reference)


def evaluate_handler(model: torch.nn.Module, world: World):
    """A follower's ``evaluate`` command: measure the share the leader sends."""

    def handle(command: Command) -> None:
        _measure(world, model, None, None)

    return handle


def _measure(
    world: World, model: torch.nn.Module, shares: list[EvalShare] | None, reference: Mapping[str, torch.Tensor] | None
) -> dict[int, LossMeasurement]:
    device = str(next(model.parameters()).device)
    broadcast_tensors_(model.parameters(), world)  # θ_w
    share = _scatter(shares, world)
    reference = broadcast_tensor_dict(reference if world.leader else None, world, device) if share.has_reference else None
    plain = {uid: u for uid, u in share.updates.items() if uid not in share.contexts}
    out = {uid: measure_update(model, u, share.lr, share.own[uid], share.rand, sequence_losses, share.before_rand)
           for uid, u in plain.items()}
    if reference is not None and out:
        # the previous window's aggregate on the same sequences (scoring.lossscore.reference_t)
        ref_own, ref_rand = reference_losses(model, reference, share.lr, {u: share.own[u] for u in out}, share.rand,
                                             sequence_losses)
        out = {uid: m.with_reference(ref_own[uid], ref_rand) for uid, m in out.items()}
    for uid, update in share.updates.items():
        if uid in share.contexts:
            out[uid] = _measure_in_context(model, uid, update, share, reference)
    merged: dict[int, LossMeasurement] = {}
    for part in gather_objects(out, world):
        merged.update(part)
    return dict(sorted(merged.items()))


def _measure_in_context(
    model: torch.nn.Module, uid: int, update: SparseUpdate, share: EvalShare,
    reference: Mapping[str, torch.Tensor] | None,
) -> LossMeasurement:
    """``uid``'s measurement on θ_w plus its context: the "before" losses and the reference's are
    taken under the context too. A reference measured from θ_w alone would not match: the context
    (a stage's partners, trained on this very data) lowers the own sequences' losses, and relative
    gains of any update then lean towards them; a free-riding stage re-uploading the last
    aggregate's part showed t 0.61 ± 1.14 that way on the tiny model, against about 0."""
    own = share.own[uid]
    with apply_sparse_temporarily(model, share.contexts[uid], share.lr):
        m = measure_update(model, update, share.lr, own, share.rand, sequence_losses)
        if reference is None:
            return m
        ref_own, ref_rand = reference_losses(model, reference, share.lr, {uid: own}, share.rand, sequence_losses)
    return m.with_reference(ref_own[uid], ref_rand)


def _scatter(shares: list[EvalShare] | None, world: World) -> EvalShare:
    if not world.distributed:
        return shares[0]
    box: list[EvalShare | None] = [None]
    dist.scatter_object_list(box, shares if world.leader else None, src=0)
    return box[0]


def _to_cpu(update: SparseUpdate) -> SparseUpdate:
    return {n: SparseTensor(t.shape, t.indices.cpu(), t.values.cpu()) for n, t in update.items()}

