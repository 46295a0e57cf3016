"""Deterministic aggregation of peers' sparse updates, the outer step, and index overlap.

Order independence is made exact rather than hoped for: each peer's clip factor depends only on
that peer and on the sorted list of norms; the clipped values are turned into 64-bit fixed point
on a per-parameter scale (a power of two derived from the largest magnitude, an order-free
max) and summed with integer adds, which are associative. The same payloads in any order, on
any device, give the same bits.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence

import torch

from compression.sparse import SparseTensor, SparseUpdate

# Fixed-point headroom: |sum| <= peers * 2**_VALUE_BITS must stay below 2**62.
_VALUE_BITS = 50


def _lower_median(values: torch.Tensor) -> torch.Tensor:
    """The lower of the two middle values for an even count: with two peers, the smaller norm,
    so one peer with a huge update cannot pull the clip level up to half its own size."""
    return values.sort().values[(values.numel() - 1) // 2]


def _clip_factors(parts: Sequence[SparseTensor], max_norm: float | None = None) -> torch.Tensor:
    """Per peer min(1, clip / norm) in float64 with clip = the lower median norm, capped at
    ``max_norm`` when given (a zero norm keeps factor 1). The cap does not depend on who else is
    in the set: where hostile peers are half of it, the median is theirs, the cap still holds."""
    norms = torch.stack([p.values.to(torch.float64).norm() for p in parts])
    med = _lower_median(norms)
    if max_norm is not None:
        med = med.clamp(max=max_norm)
    return torch.where(norms > med, med / norms.clamp(min=1e-300), torch.ones_like(norms))


def _aggregate_param(
    parts: Sequence[SparseTensor], shape: tuple[int, ...], device: torch.device, max_norm: float | None = None
) -> torch.Tensor:
    numel = math.prod(shape)
    factors = _clip_factors(parts, max_norm).to(device)
    lengths = torch.tensor([p.values.numel() for p in parts], device=device)
    idx = torch.cat([p.indices.to(device) for p in parts])
    clipped = torch.cat([p.values.to(device=device, dtype=torch.float64) for p in parts]) * factors.repeat_interleave(lengths)
    peak = float(clipped.abs().max().item()) if clipped.numel() else 0.0
    if peak == 0.0:
        return torch.zeros(shape, dtype=torch.float32, device=device)
    shift = _VALUE_BITS - math.frexp(peak)[1]  # peak * 2**shift < 2**_VALUE_BITS
    # Scaling by a power of two is exact, and below 2**53 the rounding to integers is too; the
    # integer adds then give the same sum in any order.
    sums = torch.zeros(numel, dtype=torch.int64, device=device)
    sums.index_add_(0, idx, torch.round(clipped * 2.0**shift).to(torch.int64))
    counts = torch.bincount(idx, minlength=numel)
    mean = sums.to(torch.float64).mul_(2.0**-shift).div_(counts.clamp(min=1))
    return mean.to(torch.float32).view(shape)


def aggregate(
    updates: Sequence[SparseUpdate],
    shapes: Mapping[str, tuple[int, ...]],
    device: torch.device | str | None = None,
    max_norms: Mapping[str, float] | None = None,
) -> dict[str, torch.Tensor]:
    """Dense float32 update per parameter: clip each peer to the (lower) median norm, capped at
    ``max_norms[name]`` when given, then the mean where peers overlap.

    Peers missing a parameter simply do not contribute to it; with no peers the update is zero.
    """
    if len(updates) > 2 ** (62 - _VALUE_BITS):
        raise ValueError(f"too many peers for the fixed-point accumulator: {len(updates)}")
    out: dict[str, torch.Tensor] = {}
    for name, shape in shapes.items():
        shape = tuple(int(d) for d in shape)
        parts = [u[name] for u in updates if name in u]
        for p in parts:
            if tuple(p.shape) != shape:
                raise ValueError(f"{name}: peer update shape {tuple(p.shape)} != {shape}")
        dev = torch.device(device) if device is not None else (parts[0].values.device if parts else torch.device("cpu"))
        if not parts:
            out[name] = torch.zeros(shape, dtype=torch.float32, device=dev)
            continue
        out[name] = _aggregate_param(parts, shape, dev, max_norms.get(name) if max_norms else None)
    return out


@torch.no_grad()
def outer_step(params: Mapping[str, torch.Tensor] | torch.nn.Module, dense_update: Mapping[str, torch.Tensor], lr: float = 1.0) -> None:
    """theta <- theta - lr * delta in place, for every parameter named in ``dense_update``."""
    named = dict(params.named_parameters()) if isinstance(params, torch.nn.Module) else dict(params)
    missing = set(dense_update) - set(named)
    if missing:
        raise KeyError(f"update names parameters the model lacks: {sorted(missing)[:3]}")
    for name, delta in dense_update.items():
        p = named[name]
        p.sub_(delta.to(device=p.device, dtype=torch.float32).mul(lr).to(p.dtype))
