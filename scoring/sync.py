"""Sync score: is a miner training on the same global model as the validator?

Every node publishes a small fingerprint of θ after each window: a digest of all parameter bits
(``neurons.fingerprint``) and, optionally, the values at a few hundred fixed positions. Identical
digests mean identical models (the aggregation is deterministic). When digests differ (another hardware class, or a node that
missed updates), the sampled values tell *how far* apart the models are, measured in typical
per-window steps: a node one step behind is close, one that never applied the aggregate drifts
away a little more every window.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

import torch


@dataclass(frozen=True)
class Fingerprint:
    digest: str  # hash of every parameter's exact bits (the caller's; equal digests = same model)
    sample: tuple[float, ...]  # values at ``sample_positions`` (flat positions over all params)

    def to_json(self) -> dict[str, object]:
        return {"digest": self.digest, "sample": list(self.sample)}

    @classmethod
    def from_json(cls, data: dict[str, object]) -> Fingerprint:
        sample = data["sample"]
        if not isinstance(sample, list):
            raise ValueError("fingerprint sample must be a list of floats")
        return cls(digest=str(data["digest"]), sample=tuple(float(x) for x in sample))


def sample_positions(total: int, count: int, seed: int) -> torch.Tensor:
    """``count`` fixed flat positions in [0, total), the same on every node for a given seed."""
    gen = torch.Generator().manual_seed(seed)
    return torch.randint(0, total, (min(count, total),), generator=gen).sort().values


@torch.no_grad()
def sample_values(
    named_params: Iterable[tuple[str, torch.Tensor]], count: int = 256, seed: int = 0
) -> tuple[float, ...]:
    """θ at ``count`` fixed positions of all parameters laid end to end in name order."""
    params = sorted(((n, t.detach()) for n, t in named_params), key=lambda item: item[0])
    sizes = [t.numel() for _, t in params]
    total = sum(sizes)
    if total == 0:
        return ()
    pos = sample_positions(total, count, seed)
    bounds = torch.tensor(sizes).cumsum(0)
    which = torch.searchsorted(bounds, pos, right=True)  # parameter holding each position
    out = []
    for p, k in zip(pos.tolist(), which.tolist(), strict=True):
        offset = p - (int(bounds[k - 1]) if k else 0)
        out.append(float(params[k][1].reshape(-1)[offset]))
    return tuple(out)


def fingerprint(
    digest: str, named_params: Iterable[tuple[str, torch.Tensor]], count: int = 256, seed: int = 0
) -> Fingerprint:
    """``digest`` is the node's exact-bits hash (e.g. ``neurons.fingerprint.model_fingerprint``)."""
    return Fingerprint(digest=digest, sample=sample_values(named_params, count, seed))


def sync_score(
    peer: Fingerprint | str | None,
    own: Fingerprint | str,
    step_scale: float = 0.0,
    max_steps_behind: float = 3.0,
) -> float:
    """1.0 for the same model; falls linearly to 0 at ``max_steps_behind`` typical steps away.

    ``step_scale`` is the mean absolute change of the sampled values over one window (the caller
    knows it from its own last outer step). A missing or malformed fingerprint scores 0. Plain
    digest strings (no samples) give 1 on equality and 0 otherwise.
    """
    if isinstance(peer, str) or isinstance(own, str):
        peer_digest = peer if isinstance(peer, str) else (peer.digest if peer else None)
        own_digest = own if isinstance(own, str) else own.digest
        return 1.0 if peer_digest == own_digest else 0.0
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
