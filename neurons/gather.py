"""The window's gather set, and the one outer step every node applies after the window.

G(w) comes from chain state at the first block of w (stake-weighted validator weights), so
every node derives it alone. Payloads that fail the checks any node can make are replaced by the
next reserves in a fixed order; the survivors are aggregated and applied. The same function is
used live (right after the upload slot closes) and when a joining node replays past windows.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable, Mapping
from dataclasses import dataclass

import torch

from compression import CodecParams, aggregate, outer_step
from neurons.fetch import FetchedPayload, fetch_many
from neurons.peers import PeerDirectory
from protocol import roles
from protocol.acceptance import AcceptanceRule, ValueBounds, parameter_norms
from protocol.chain import Chain, Metagraph
from protocol.clock import WindowClock
from protocol.gather_set import GatherSet, select_gather_set
from protocol.hparams import Hparams

log = logging.getLogger(__name__)


@dataclass
class WindowGather:
    window: int
    gather_set: GatherSet
    accepted: list[int]
    fetched: dict[int, FetchedPayload]
    # ||θ_w|| per parameter as the payloads were judged; the outer step's caps reuse it
    param_norms: Mapping[str, float] | None = None

    @property
    def updates(self):
        return [self.fetched[uid].decoded.update for uid in self.accepted]


def miner_uids(metagraph: Metagraph, hparams: Hparams) -> list[int]:
    """The miners by the network's rule (``protocol.roles``: not by permits); the subnet owner's
    uid is ``scoring.burn_uid``."""
    return roles.miner_uids(metagraph, hparams, hparams.scoring.burn_uid)


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
        num_layers=hparams.model.num_layers,
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
    open_patience: float | None = None,
) -> WindowGather:
    """Fetch G(w) and its reserves (plus ``also_fetch``, for validators) and pick who counts.
    ``open_patience``: how long to wait for peers' stores still being opened (replays)."""
    at_start = chain.metagraph(clock.first_block(window))
    peers.refresh(chain.metagraph(), open_patience)
    gather_set = select_gather_set(
        at_start, hparams.outer.gather_peers, hparams.outer.reserve_peers, candidates=miner_uids(at_start, hparams),
        validator_min_stake=hparams.roles.validator_min_stake,
    )
    order = list(gather_set.gather) + list(gather_set.reserves)
    extra = [uid for uid in also_fetch if uid not in order]
    rule = acceptance_rule(hparams, clock, window, param_norms)
    fetched = fetch_many(peers, order + extra, rule, shapes, fetch_budget(chain, hparams))
    # Gather members first, then reserves in their fixed order fill any gap.
    accepted = [uid for uid in order if fetched[uid].ok][: hparams.outer.gather_peers]
    return WindowGather(window, gather_set, accepted, fetched, param_norms)


@dataclass(frozen=True)
class UpdateLimits:
    """What the outer step may do to θ, whoever is in the gather set (``BoundsConfig``)."""

    clip_ratio: float  # each peer's update capped at clip_ratio x ||θ_p|| + floor
    floor: float
    max_abs_param: float  # an outer step that would leave |θ| above this (or non-finite) is not taken

    @classmethod
    def from_hparams(cls, hparams: Hparams) -> UpdateLimits:
        b = hparams.bounds
        return cls(clip_ratio=b.clip_update_ratio, floor=hparams.max_abs_value, max_abs_param=b.max_abs_param)


def apply_gather(
    model: torch.nn.Module, gathered: WindowGather, shapes, outer_lr: float, limits: UpdateLimits | None = None
) -> dict[str, torch.Tensor] | None:
    """θ_{w+1} = θ_w − lr · aggregate(G(w)); a window with no accepted payload changes nothing.

    With ``limits``, each peer is also clipped to a share of ||θ_p|| (so hostile peers that are
    half the set still move θ by no more than that), and a step that would make θ non-finite or
    larger than ``max_abs_param`` is not taken at all. Both depend only on θ_w and the payloads,
    so every node decides the same. Returns the dense update applied (a validator keeps it as the
    next window's stage-2 reference: a direction that knows none of that window's assignments),
    or None when θ did not change."""
    if not gathered.accepted:
        return None
    max_norms = None
    if limits is not None:
        norms = gathered.param_norms or parameter_norms(model)  # θ_w: measured once per window when gathered
        max_norms = {n: limits.clip_ratio * norm + limits.floor for n, norm in norms.items()}
    dense = aggregate(gathered.updates, shapes, max_norms=max_norms)
    if limits is not None and not _step_stays_bounded(model, dense, outer_lr, limits.max_abs_param):
        log.error("window %d: the outer step would leave θ non-finite or beyond |θ| <= %g; not applied",
                  gathered.window, limits.max_abs_param)
        return None
    outer_step(model, dense, lr=outer_lr)
    return dense


def _step_stays_bounded(model: torch.nn.Module, dense, lr: float, max_abs: float) -> bool:
    with torch.no_grad():
        for name, p in model.named_parameters():
            if name in dense:
                after = p.detach().float() - lr * dense[name].to(p.device)
                if not bool(torch.isfinite(after).all()) or float(after.abs().max()) > max_abs:
                    return False
    return True
