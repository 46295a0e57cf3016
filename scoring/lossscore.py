"""Stage 2 of Gauntlet: does one peer's update, applied alone, lower the loss?

The update is applied in place to only the coordinates it touches and reverted bit-exactly, so
a validator can test every candidate on one copy of θ_w without cloning the model.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

import torch

from compression.sparse import SparseUpdate

LossFn = Callable[[torch.nn.Module, Sequence[Any]], float]


class UpdateMismatchError(ValueError):
    """The update names a parameter the model lacks, or its shape or indices do not fit."""


@dataclass(frozen=True)
class LossMeasurement:
    """Mean loss before/after applying one peer's update, on its own data and on random data."""

    before_own: float
    after_own: float
    before_rand: float
    after_rand: float


def _prepare(
    params: dict[str, torch.nn.Parameter], update: SparseUpdate
) -> list[tuple[torch.Tensor, torch.Tensor, torch.Tensor]]:
    """Validate everything before touching any weight, so a bad update changes nothing."""
    staged = []
    for name in sorted(update):
        st = update[name]
        p = params.get(name)
        if p is None:
            raise UpdateMismatchError(f"model has no parameter {name!r}")
        if tuple(p.shape) != tuple(st.shape):
            raise UpdateMismatchError(f"{name}: update shape {tuple(st.shape)} != {tuple(p.shape)}")
        if not p.is_contiguous():
            raise UpdateMismatchError(f"{name}: parameter is not contiguous")
        idx = st.indices.to(device=p.device, dtype=torch.int64)
        if idx.numel() and (int(idx.min()) < 0 or int(idx.max()) >= p.numel()):
            raise UpdateMismatchError(f"{name}: index out of range [0, {p.numel()})")
        if idx.numel() > 1 and not bool((idx[1:] > idx[:-1]).all()):
            # duplicates would make the in-place write order-dependent and the restore ambiguous
            raise UpdateMismatchError(f"{name}: indices not sorted and unique")
        staged.append((p.detach().view(-1), idx, st.values.to(p.device)))
    return staged


@contextmanager
def apply_sparse_temporarily(model: torch.nn.Module, update: SparseUpdate, lr: float) -> Iterator[None]:
    """Within the block, θ[idx] ← θ[idx] − lr · v for every touched coordinate; on exit (also on
    an exception) the saved original values are written back, restoring θ bit-exactly."""
    staged = _prepare(dict(model.named_parameters()), update)
    saved: list[tuple[torch.Tensor, torch.Tensor, torch.Tensor]] = []
    try:
        with torch.no_grad():
            for flat, idx, values in staged:
                old = flat[idx].clone()
                saved.append((flat, idx, old))
                # compute in float32 at least, then cast back to the parameter's dtype
                work = old.to(torch.promote_types(old.dtype, torch.float32))
                flat[idx] = (work - lr * values.to(work.dtype)).to(flat.dtype)
        yield
    finally:
        with torch.no_grad():
            for flat, idx, old in reversed(saved):
                flat[idx] = old


def measure_update(
    model: torch.nn.Module,
    update: SparseUpdate,
    lr: float,
    own_batches: Sequence[Any],
    random_batches: Sequence[Any],
    loss_fn: LossFn,
    before_rand: float | None = None,
) -> LossMeasurement:
    """Loss on the peer's assigned data and on unpredictable data, before and after its update.

    ``before_rand`` may be passed in: when every peer is tested on the same random batches the
    "before" loss is the same for all of them and needs computing once per window.
    """
    was_training = model.training
    model.eval()
    try:
        b_own = loss_fn(model, own_batches)
        b_rand = loss_fn(model, random_batches) if before_rand is None else before_rand
        with apply_sparse_temporarily(model, update, lr):
            a_own = loss_fn(model, own_batches)
            a_rand = loss_fn(model, random_batches)
    finally:
        model.train(was_training)
    return LossMeasurement(float(b_own), float(a_own), float(b_rand), float(a_rand))


def relative_improvement(before: float, after: float) -> float:
    """(before − after) / before, clipped to [−1, 1]; anything non-finite counts as −1 (harmful)."""
    if not (math.isfinite(before) and math.isfinite(after)) or before <= 0:
        return -1.0
    return max(-1.0, min(1.0, (before - after) / before))


def loss_score(m: LossMeasurement) -> float:
    """LossScore: relative improvement on data the peer could not know."""
    return relative_improvement(m.before_rand, m.after_rand)


def unique_indicator(m: LossMeasurement, margin: float = 0.0) -> int:
    """+1 if the update helps the peer's own assigned data more than random data, else −1.

    An honest miner trained on its assignment, so its update fits that data best. A free-rider
    (zero update, someone else's data) does no better on "its" data than on any other: its
    indicator is a coin flip at best (a tie counts as −1). ``margin`` asks for own-data
    improvement to exceed the random one by that much (absolute, in relative-improvement units).
    """
    own = relative_improvement(m.before_own, m.after_own)
    rand = relative_improvement(m.before_rand, m.after_rand)
    return 1 if own > rand + margin else -1
