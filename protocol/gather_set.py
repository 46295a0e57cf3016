"""The gather set G(w): whose payloads every node aggregates for window w.

Derived by every node from chain state at the first block of w, so no one has to publish it:
miners ranked by the stake-weighted weights validators have set; the top ``gather_peers`` are
gathered, the next ``reserve_peers`` stand by. Candidates no validator weighs yet (newcomers)
follow the weighted ones in uid order, so a newcomer can fill a free slot; while no weights exist
at all (a new network) every candidate is gathered, in uid order. A payload that cannot be
fetched in time or is refused is replaced by the next reserve in that fixed order
(``neurons.gather.gather_window``), so honest nodes that see the same failures reach the same set.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

from protocol.chain import Metagraph


@dataclass(frozen=True)
class GatherSet:
    gather: list[int]
    reserves: list[int]


def consensus_weights(metagraph: Metagraph) -> dict[int, float]:
    """Σ_v stake_v · w_v[uid] / Σ_v stake_v over validators (permit, stake > 0, some weights)."""
    voters = [n for n in metagraph.neurons if n.validator_permit and n.stake > 0 and n.weights]
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
    metagraph: Metagraph, gather_peers: int, reserve_peers: int, candidates: Iterable[int]
) -> GatherSet:
    """Rank ``candidates`` (registered miners the caller considers, e.g. those with a bucket
    commitment) by consensus weight, ties and unweighted ones by uid; split into tiers."""
    registered = set(metagraph.uids)
    pool = sorted({u for u in candidates if u in registered})
    weight = consensus_weights(metagraph)
    if not weight:
        # a new network: no validator has weighed anyone yet, so everyone offered is gathered
        return GatherSet(gather=pool, reserves=[])
    ranked = sorted(pool, key=lambda u: (-weight.get(u, 0.0), u))
    return GatherSet(
        gather=ranked[:gather_peers],
        reserves=ranked[gather_peers : gather_peers + reserve_peers],
    )
