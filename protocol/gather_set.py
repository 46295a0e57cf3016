"""The gather set G(w): whose payloads every node aggregates for window w.

Derived by every node from chain state at the first block of w, so no one has to publish it:
miners ranked by the stake-weighted weights validators have set; the top ``gather_peers`` are
gathered, the next ``reserve_peers`` stand by. Candidates no validator weighs are in neither
tier; while no candidate is weighed at all (a new network) every candidate is gathered, in uid
order. A payload that cannot be
fetched in time or is refused is replaced by the next reserve in that fixed order
(``neurons.gather.gather_window``), so honest nodes that see the same failures reach the same set.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

from protocol.chain import Metagraph
from protocol.roles import is_validator


@dataclass(frozen=True)
class GatherSet:
    gather: list[int]
    reserves: list[int]


def consensus_weights(metagraph: Metagraph, validator_min_stake: float = 0.0) -> dict[int, float]:
    """Σ_v stake_v · w_v[uid] / Σ_v stake_v over validators by ``protocol.roles`` (weights set,
    a permit, stake > 0 and >= ``validator_min_stake``)."""
    voters = [n for n in metagraph.neurons if is_validator(n, validator_min_stake)]
    total = sum(n.stake for n in voters)
    out: dict[int, float] = {}
    if total <= 0:
        return out
    for v in voters:
        norm = sum(w for w in v.weights.values() if w > 0)
        if norm <= 0:
            continue
        for uid, w in v.weights.items():
            if w > 0:
                out[uid] = out.get(uid, 0.0) + v.stake * (w / norm) / total
    return out


def select_gather_set(
    metagraph: Metagraph,
    gather_peers: int,
    reserve_peers: int,
    candidates: Iterable[int],
    validator_min_stake: float = 0.0,
) -> GatherSet:
    """Rank ``candidates`` (registered miners the caller considers) by consensus weight, ties by
    uid, and split them into tiers; only miners weighed above zero are in either tier.

    A miner every validator rejects (weight 0) is never aggregated: validators score every
    candidate whether gathered or not, so a newcomer enters by earning weight, not by filling a
    free slot. While no candidate has any weight (a new network, or validators that burn
    everything), every candidate is gathered in uid order, under the value bounds every node
    applies (``protocol.acceptance``).
    """
    registered = set(metagraph.uids)
    pool = sorted({u for u in candidates if u in registered})
    weight = consensus_weights(metagraph, validator_min_stake)
    weighted = [u for u in pool if weight.get(u, 0.0) > 0]
    if not weighted:
        return GatherSet(gather=pool, reserves=[])
    ranked = sorted(weighted, key=lambda u: (-weight[u], u))
    return GatherSet(
        gather=ranked[:gather_peers],
        reserves=ranked[gather_peers : gather_peers + reserve_peers],
    )
