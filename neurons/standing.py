"""Say why, from a miner's side: whether its upload of a window was gathered, and the last score
the validators gave it on chain.

A miner cannot see a validator's verdict lines, but it sees the same gather every node computes
and the weights validators set; that is enough to tell "uploaded but not gathered (rejected: late)"
from "gathered, weight 0.12". No ``scoring`` import: a miner's path only needs protocol.
"""

from __future__ import annotations

import logging
import math

from neurons.events import one_line
from neurons.gather import WindowGather
from protocol import roles
from protocol.chain import Chain, ChainError, Metagraph
from protocol.hparams import Hparams


def own_upload(uid: int, gathered: WindowGather) -> str:
    """Whether ``uid``'s payload made it into the window's aggregate, and if not, why."""
    if uid in gathered.accepted:
        return "our upload was gathered"
    fetched = gathered.fetched.get(uid)
    if fetched is None:
        return "our upload was not looked at (not in the gather set or its reserves this window)"
    if fetched.ok:
        return "our upload passed but the gather set was full"
    result = fetched.result
    detail = f" — {one_line(result.detail)}" if result.detail else ""
    return f"our upload was not gathered: {result.reason}{detail}"


def chain_weight(metagraph: Metagraph, uid: int, hparams: Hparams) -> str:
    """The stake-weighted mean weight the network's validators give ``uid``, and its incentive."""
    validators = [metagraph.by_uid(v) for v in roles.validator_uids(metagraph, hparams)]
    stakes = [n.stake if math.isfinite(n.stake) and n.stake > 0 else 0.0 for n in validators]
    try:
        incentive = metagraph.by_uid(uid).incentive
    except KeyError:
        return f"uid {uid} is not in the metagraph at block {metagraph.block}"
    if not validators or sum(stakes) <= 0:
        return f"no validator has set weights yet (incentive {incentive:.3f})"
    weight = math.fsum(s * n.weights.get(uid, 0.0) for s, n in zip(stakes, validators, strict=True)) / math.fsum(stakes)
    return f"chain weight {weight:.3f} from {len(validators)} validator(s), incentive {incentive:.3f}"


def log_standing(log: logging.Logger, name: str, uid: int, window: int, gathered: WindowGather,
                 chain: Chain, hparams: Hparams) -> None:
    """One line: this window's upload, and the last score on chain (or why it is unknown)."""
    try:
        standing = chain_weight(chain.metagraph(), uid, hparams)
    except ChainError as exc:
        standing = f"chain weight unknown ({one_line(str(exc))})"
    log.info("%s window %d: %s; %s", name, window, own_upload(uid, gathered), standing)
