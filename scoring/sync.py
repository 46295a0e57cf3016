"""Sync score: is a miner training on the same global model as the validator?

Every node publishes a small fingerprint of θ after each window: a digest of all parameter bits
plus the values at a few hundred fixed positions. Identical digests mean identical models (the
aggregation is deterministic). When digests differ (another hardware class, or a node that
missed updates), the sampled values tell *how far* apart the models are, measured in typical
per-window steps: a node one step behind is close, one that never applied the aggregate drifts
away a little more every window.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable
from dataclasses import dataclass

import torch


@dataclass(frozen=True)
class Fingerprint:
    digest: str  # sha256 over every parameter's name, shape, dtype and raw bytes, in name order
    sample: tuple[float, ...]  # values at ``sample_positions`` (flat positions over all params)

    def to_json(self) -> dict[str, object]:
        return {"digest": self.digest, "sample": list(self.sample)}

    @classmethod
    def from_json(cls, data: dict[str, object]) -> Fingerprint:
        sample = data["sample"]
        if not isinstance(sample, list):
            raise ValueError("fingerprint sample must be a list of floats")
        return cls(digest=str(data["digest"]), sample=tuple(float(x) for x in sample))


def _ordered(named: Iterable[tuple[str, torch.Tensor]]) -> list[tuple[str, torch.Tensor]]:
    return sorted(((n, t.detach()) for n, t in named), key=lambda item: item[0])


def sample_positions(total: int, count: int, seed: int) -> torch.Tensor:
    """``count`` fixed flat positions in [0, total), the same on every node for a given seed."""
    gen = torch.Generator().manual_seed(seed)
    return torch.randint(0, total, (min(count, total),), generator=gen).sort().values


def fingerprint(
    named_params: Iterable[tuple[str, torch.Tensor]], count: int = 256, seed: int = 0
) -> Fingerprint:
    params = _ordered(named_params)
    h = hashlib.sha256()
    flats = []
    for name, t in params:
        h.update(f"{name}:{tuple(t.shape)}:{t.dtype}".encode())
        cpu = t.contiguous().cpu()
        h.update(cpu.reshape(-1).view(torch.uint8).numpy().tobytes())
        flats.append(cpu.reshape(-1).to(torch.float64))
    flat = torch.cat(flats) if flats else torch.zeros(0, dtype=torch.float64)
    pos = sample_positions(flat.numel(), count, seed) if flat.numel() else torch.zeros(0, dtype=torch.int64)
    return Fingerprint(digest=h.hexdigest(), sample=tuple(float(x) for x in flat[pos].tolist()))


def sync_score(
    peer: Fingerprint | None, own: Fingerprint, step_scale: float, max_steps_behind: float = 3.0
) -> float:
    """1.0 for the same model; falls linearly to 0 at ``max_steps_behind`` typical steps away.

    ``step_scale`` is the mean absolute change of the sampled values over one window (the caller
    knows it from its own last outer step). A missing or malformed fingerprint scores 0.
    """
    if peer is None or len(peer.sample) != len(own.sample):
        return 0.0
    if peer.digest == own.digest:
        return 1.0
    if not own.sample or step_scale <= 0:
        return 0.0
    a = torch.tensor(peer.sample, dtype=torch.float64)
    b = torch.tensor(own.sample, dtype=torch.float64)
    if not bool(torch.isfinite(a).all()):
        return 0.0
    steps = float((a - b).abs().mean()) / step_scale
    return max(0.0, min(1.0, 1.0 - steps / max_steps_behind))


def step_scale(before: Fingerprint, after: Fingerprint) -> float:
    """Mean absolute change of the sampled values between two consecutive fingerprints."""
    if len(before.sample) != len(after.sample) or not before.sample:
        return 0.0
    a = torch.tensor(before.sample, dtype=torch.float64)
    b = torch.tensor(after.sample, dtype=torch.float64)
    return float((a - b).abs().mean())
