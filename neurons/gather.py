"""The window's gather set, and the one outer step every node applies after the window.

G(w) comes from chain state at the first block of w (stake-weighted validator weights), so
every node derives it alone. Payloads that fail the checks any node can make are replaced by the
next reserves in a fixed order; the survivors are aggregated and applied. The same function is
used live (right after the upload slot closes) and when a joining node replays past windows.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass

import torch

from compression import CodecParams, aggregate, outer_step
from neurons.fetch import FetchedPayload, fetch_many
from neurons.peers import PeerDirectory
from protocol.acceptance import AcceptanceRule, ValueBounds
from protocol.chain import Chain, Metagraph
from protocol.clock import WindowClock
from protocol.gather_set import GatherSet, select_gather_set
from protocol.hparams import Hparams


@dataclass
class WindowGather:
    window: int
    gather_set: GatherSet
    accepted: list[int]
    fetched: dict[int, FetchedPayload]

    @property
    def updates(self):
        return [self.fetched[uid].decoded.update for uid in self.accepted]


def miner_uids(metagraph: Metagraph, owner_uid: int | None) -> list[int]:
    """Miners are the neurons without a validator permit, other than the subnet owner's uid."""
    return sorted(n.uid for n in metagraph.neurons if not n.validator_permit and n.uid != owner_uid)


# Each peer's fetch (HEAD + GET + retries) must end within this share of a window, and never in
# less than MIN_FETCH_SECONDS: a miner trains its next window only after the gather, and a
# validator judges one window per window.
FETCH_WINDOW_SHARE = 0.25
MIN_FETCH_SECONDS = 3.0


def fetch_budget(chain: Chain, hparams: Hparams) -> float:
    """Seconds every peer's fetch gets, from the window's length on this chain."""
    window_seconds = chain.block_time() * hparams.window.blocks_per_window
    return max(MIN_FETCH_SECONDS, FETCH_WINDOW_SHARE * window_seconds)


def acceptance_rule(
    hparams: Hparams, clock: WindowClock, window: int, param_norms: Mapping[str, float] | None = None
) -> AcceptanceRule:
    """The rule every node judges window ``window``'s payloads by (θ_w's norms bound the updates)."""
    start, _ = clock.upload_slot(window)
    return acceptance_rule_for(hparams, window, start, param_norms)


def acceptance_rule_for(
    hparams: Hparams, window: int, slot_start: float, param_norms: Mapping[str, float] | None = None
) -> AcceptanceRule:
    """``acceptance_rule`` with the slot's start given (``tessera inspect`` has no chain clock)."""
    return AcceptanceRule(
        run_id=hparams.run_id,
        window=window,
        slot_start=slot_start,
        slot_seconds=hparams.window.upload_slot_seconds,
        max_bytes=hparams.codec.max_payload_bytes,
        codec=CodecParams(chunk_size=hparams.codec.chunk_size, topk_per_chunk=hparams.codec.topk_per_chunk),
        bounds=ValueBounds.from_hparams(hparams),
        param_norms=param_norms,
    )


def gather_window(
    chain: Chain,
    clock: WindowClock,
    peers: PeerDirectory,
    hparams: Hparams,
    shapes: Mapping[str, tuple[int, ...]],
    window: int,
    also_fetch: Iterable[int] = (),
    param_norms: Mapping[str, float] | None = None,
) -> WindowGather:
    """Fetch G(w) and its reserves (plus ``also_fetch``, for validators) and pick who counts."""
    at_start = chain.metagraph(clock.first_block(window))
    peers.refresh(chain.metagraph())
    gather_set = select_gather_set(
        at_start, hparams.outer.gather_peers, hparams.outer.reserve_peers, candidates=miner_uids(at_start, hparams.scoring.burn_uid)
    )
    order = list(gather_set.gather) + list(gather_set.reserves)
    extra = [uid for uid in also_fetch if uid not in order]
    rule = acceptance_rule(hparams, clock, window, param_norms)
    fetched = fetch_many(peers, order + extra, rule, shapes, fetch_budget(chain, hparams))
    # Gather members first, then reserves in their fixed order fill any gap.
    accepted = [uid for uid in order if fetched[uid].ok][: hparams.outer.gather_peers]
    return WindowGather(window, gather_set, accepted, fetched)


def apply_gather(model: torch.nn.Module, gathered: WindowGather, shapes, outer_lr: float) -> None:
    """θ_{w+1} = θ_w − lr · aggregate(G(w)); a window with no accepted payload changes nothing."""
    if not gathered.accepted:
        return
    dense = aggregate(gathered.updates, shapes)
    outer_step(model, dense, lr=outer_lr)
