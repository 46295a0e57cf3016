"""Stage 2 of Gauntlet: does one peer's update, applied alone, lower the loss?

The update is applied in place to only the coordinates it touches and reverted bit-exactly, so
a validator can test every candidate on one copy of θ_w without cloning the model. Losses are
kept per sequence: the unique-data statistic (``unique_t``) needs their spread, not only their
mean, to tell a real own-data edge from noise.

Most of that spread is not noise of the peer's update but a property of each sequence: an update
in the common descent direction helps some sequences several times more than others, whoever sent
it. A *reference* update that knows none of the window's assignments (the previous window's
aggregate: public, applied already, fixed before anyone trained) measures that per-sequence
"improvability" on the same sequences; regressing the peer's per-sequence gains on the
reference's removes it (``reference_t``). Measured on the project's own model and data
(docs/scoring.md): honest t after window 0 rose from 2.0 ± 1.3 to 2.9 ± 1.0 while free-riders
stay centred on 0 with unit spread, for one extra forward pass per peer.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F

from compression.sparse import SparseUpdate

# Losses of every sequence in ``batches``, in order (any 1-d sequence of numbers or a tensor).
LossFn = Callable[[torch.nn.Module, Sequence[Any]], Sequence[float] | torch.Tensor]
Losses = tuple[float, ...]

# |t| beyond this adds nothing: one window can never outweigh the record by more than 4 sigma,
# and a fault (a payload that should never have been sent) counts as the worst window.
T_CLIP = 4.0


class UpdateMismatchError(ValueError):
    """The update names a parameter the model lacks, or its shape or indices do not fit."""


@dataclass(frozen=True)
class LossMeasurement:
    """Per-sequence losses before/after applying one peer's update, on its own and on random data."""

    own_before: Losses
    own_after: Losses
    rand_before: Losses
    rand_after: Losses
    # Losses with the window's reference update applied instead (same sequences); empty: none.
    own_reference: Losses = ()
    rand_reference: Losses = ()

    @classmethod
    def of(cls, own_before, own_after, rand_before, rand_after, own_reference=(), rand_reference=()) -> LossMeasurement:
        """From any iterables of numbers (tensors included), as plain float tuples."""
        values = (own_before, own_after, rand_before, rand_after, own_reference, rand_reference)
        return cls(*(tuple(float(x) for x in v) for v in values))

    def with_reference(self, own_reference, rand_reference) -> LossMeasurement:
        return LossMeasurement.of(self.own_before, self.own_after, self.rand_before, self.rand_after,
                                  own_reference, rand_reference)

    @property
    def before_rand(self) -> float:
        return _mean(self.rand_before)

    @property
    def after_rand(self) -> float:
        return _mean(self.rand_after)

    @property
    def before_own(self) -> float:
        return _mean(self.own_before)

    @property
    def after_own(self) -> float:
        return _mean(self.own_after)


def _mean(values: Sequence[float]) -> float:
    return math.fsum(values) / len(values) if values else math.nan


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


@contextmanager
def apply_dense_temporarily(model: torch.nn.Module, dense: Mapping[str, torch.Tensor], lr: float) -> Iterator[None]:
    """Within the block θ ← θ − lr · dense for every named parameter; on exit (also on an
    exception) the saved values are written back bit-exactly."""
    params = dict(model.named_parameters())
    for name, d in dense.items():
        if name not in params or tuple(params[name].shape) != tuple(d.shape):
            raise UpdateMismatchError(f"reference update does not fit parameter {name!r}")
    saved: list[tuple[torch.Tensor, torch.Tensor]] = []
    try:
        with torch.no_grad():
            for name, d in dense.items():
                p = params[name]
                saved.append((p, p.detach().clone()))
                p.sub_((lr * d.to(device=p.device, dtype=torch.float32)).to(p.dtype))
        yield
    finally:
        with torch.no_grad():
            for p, old in reversed(saved):
                p.copy_(old)


def reference_losses(
    model: torch.nn.Module,
    reference: Mapping[str, torch.Tensor],
    lr: float,
    own_batches: Mapping[int, Sequence[Any]],
    random_batches: Sequence[Any],
    loss_fn: LossFn,
) -> tuple[dict[int, Losses], Losses]:
    """Per-sequence losses with the reference update applied once: on every peer's assigned
    batches and on the random batches (one extra forward pass per peer, one per window)."""
    was_training = model.training
    model.eval()
    try:
        with apply_dense_temporarily(model, reference, lr):
            own = {uid: tuple(float(x) for x in loss_fn(model, b)) for uid, b in own_batches.items()}
            rand = tuple(float(x) for x in loss_fn(model, random_batches))
    finally:
        model.train(was_training)
    return own, rand


def measure_update(
    model: torch.nn.Module,
    update: SparseUpdate,
    lr: float,
    own_batches: Sequence[Any],
    random_batches: Sequence[Any],
    loss_fn: LossFn,
    before_rand: Sequence[float] | None = None,
) -> LossMeasurement:
    """Per-sequence losses on the peer's assigned data and on unpredictable data, before and after
    its update (three forward passes over the data, two when ``before_rand`` is given).

    ``before_rand`` may be passed in: when every peer is tested on the same random batches the
    "before" losses are the same for all of them and need computing once per window.
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
    return LossMeasurement.of(b_own, a_own, b_rand, a_rand)


# fp32 logits of one forward pass stay under this many elements (1 GiB): a 128k-vocabulary model's
# batch of 8 x 2048 tokens would otherwise hold 8 GiB of logits plus their log-softmax at once.
MAX_LOGIT_ELEMENTS = 2**28


def _rows_per_pass(batch: torch.Tensor, model: torch.nn.Module) -> int:
    """Sequences per forward pass so that the logits fit ``MAX_LOGIT_ELEMENTS`` (at least one).
    Small models keep whole batches, so their losses are bit-for-bit what they were."""
    vocab = getattr(getattr(model, "config", None), "vocab_size", None)
    if not vocab or batch.dim() != 2:
        return max(1, batch.shape[0])
    per_row = batch.shape[1] * int(vocab)
    return max(1, min(batch.shape[0], MAX_LOGIT_ELEMENTS // per_row))


@torch.no_grad()
def sequence_losses(model: torch.nn.Module, batches: Sequence[torch.Tensor]) -> torch.Tensor:
    """Mean next-token loss of every sequence of a causal LM (``model(input_ids=…).logits``),
    computed in float32 (scoring compares small deltas), returned as float64 on the CPU.

    With sequences of equal length, their mean is the token-weighted mean the trainer reports."""
    device = next(model.parameters()).device
    was_training = model.training
    model.eval()  # also when called outside measure_update (the window's shared "before" losses)
    try:
        out = []
        for batch in batches:
            for rows in batch.split(_rows_per_pass(batch, model)):
                rows = rows.to(device)
                logits = model(input_ids=rows, use_cache=False).logits[:, :-1].float()
                nll = F.cross_entropy(logits.reshape(-1, logits.shape[-1]), rows[:, 1:].reshape(-1), reduction="none")
                out.append(nll.view(rows.shape[0], -1).double().mean(dim=1).cpu())
        return torch.cat(out)
    finally:
        model.train(was_training)


def relative_improvement(before: float, after: float) -> float:
    """(before − after) / before, clipped to [−1, 1]; anything non-finite counts as −1 (harmful)."""
    if not (math.isfinite(before) and math.isfinite(after)) or before <= 0:
        return -1.0
    return max(-1.0, min(1.0, (before - after) / before))


def loss_score(m: LossMeasurement) -> float:
    """LossScore: relative improvement of the mean loss on data the peer could not know."""
    return relative_improvement(m.before_rand, m.after_rand)


def per_sequence_gains(before: Sequence[float], after: Sequence[float]) -> list[float] | None:
    """r_i = (before_i − after_i) / before_i per sequence; None if any value is unusable (a
    non-finite loss, or a before-loss ≤ 0, which a language model's cross-entropy never is)."""
    if len(before) != len(after):
        return None
    gains = []
    for b, a in zip(before, after, strict=True):
        if not (math.isfinite(b) and math.isfinite(a)) or b <= 0:
            return None
        gains.append((b - a) / b)
    return gains


def welch_t(x: Sequence[float], y: Sequence[float]) -> float:
    """Welch's t of mean(x) − mean(y) (unequal variances), clipped to ±``T_CLIP``.

    Fewer than two values on a side carry no variance: 0 (no evidence). Zero pooled variance is
    the limit of the formula: ±``T_CLIP`` by the sign of the difference, 0 when equal. NaN (from an
    overflow in the variance) is the caller's to treat as a fault."""
    if len(x) < 2 or len(y) < 2:
        return 0.0
    try:
        mx, my = _mean(x), _mean(y)
        vx = math.fsum((v - mx) ** 2 for v in x) / (len(x) - 1)
        vy = math.fsum((v - my) ** 2 for v in y) / (len(y) - 1)
        se = math.sqrt(vx / len(x) + vy / len(y))
    except OverflowError:  # float ** and fsum raise instead of returning inf
        return math.nan
    diff = mx - my
    if se == 0.0:
        return math.copysign(T_CLIP, diff) if diff else 0.0
    t = diff / se
    return max(-T_CLIP, min(T_CLIP, t)) if math.isfinite(t) else math.nan


def reference_t(own: Sequence[float], rand: Sequence[float], own_x: Sequence[float], rand_x: Sequence[float]) -> float | None:
    """t of c in the least-squares fit  y = a + b·x + c·[own sequence]  over both groups, where y is
    the peer's per-sequence gain and x the reference update's gain on the same sequence: the
    peer's own-data edge after what the reference says about each sequence. Clipped to
    ±``T_CLIP``. None when the fit says nothing (too few sequences, x constant or collinear with
    the group) so the caller falls back to Welch; NaN on an overflow (a fault)."""
    y = [*own, *rand]
    if len(own) < 2 or len(rand) < 2 or len(own_x) != len(own) or len(rand_x) != len(rand):
        return None
    design = torch.tensor([[1.0, float(x), float(i < len(own))] for i, x in enumerate([*own_x, *rand_x])],
                          dtype=torch.float64)
    target = torch.tensor(y, dtype=torch.float64)
    if not (bool(torch.isfinite(design).all()) and bool(torch.isfinite(target).all())):
        return math.nan
    gram = design.T @ design
    if int(torch.linalg.matrix_rank(gram)) < 3:
        return None
    inverse = torch.linalg.inv(gram)
    coef = inverse @ (design.T @ target)
    residual = target - design @ coef
    dof = len(y) - 3
    variance = float(residual @ residual) / dof if dof > 0 else math.nan
    c, se2 = float(coef[2]), variance * float(inverse[2, 2])
    if not (math.isfinite(c) and math.isfinite(se2)):
        return math.nan
    if se2 <= 0.0:
        return math.copysign(T_CLIP, c) if c else 0.0
    return max(-T_CLIP, min(T_CLIP, c / math.sqrt(se2)))


def unique_t(m: LossMeasurement) -> float:
    """The window's unique-data statistic: how much more the peer's update helps its own
    assigned sequences than random ones nobody was assigned, in units of its uncertainty,
    clipped to ±``T_CLIP``. With reference losses, ``reference_t`` (the per-sequence
    improvability removed); without (no earlier aggregate yet), Welch's t of the mean
    per-sequence relative improvement on each side.

    An honest miner trained on its assignment, so its update helps those sequences more than
    data nobody was assigned: t well above 0. A free-rider (zero update, someone else's data, a
    copy of the aggregate) helps "its" data no more than any other: t is noise around 0. A
    measurement that is not finite is a fault: −``T_CLIP``.
    """
    own = per_sequence_gains(m.own_before, m.own_after)
    rand = per_sequence_gains(m.rand_before, m.rand_after)
    if own is None or rand is None:
        return -T_CLIP
    t: float | None = None
    if m.own_reference and m.rand_reference:
        own_x = per_sequence_gains(m.own_before, m.own_reference)
        rand_x = per_sequence_gains(m.rand_before, m.rand_reference)
        if own_x is not None and rand_x is not None:  # a broken reference is ours, not the peer's fault
            t = reference_t(own, rand, own_x, rand_x)
    if t is None:
        t = welch_t(own, rand)
    return t if math.isfinite(t) else -T_CLIP
