"""What a behaviour sees while it builds window w's payload: nothing an ordinary miner lacks.

The miner fills a ``WindowContext`` at upload time. Reading peers goes through the same fetch and
acceptance rule every node uses (``neurons.fetch``), from the same read-only buckets the chain's
commitments name, so a copier needs no access that any registered miner does not have.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from compression import CodecParams, CompressedMessage, SparseUpdate
from neurons.fetch import fetch_many
from neurons.gather import acceptance_rule, miner_uids
from neurons.node import Node
from protocol.acceptance import parameter_norms

# Each read of the window's other uploads gets this long; they sit on the same S3 server as
# ours on a local network, so anything slower is a peer that is not there yet.
PEER_READ_SECONDS = 1.5


@dataclass(frozen=True)
class WindowContext:
    """Window ``window`` as the miner holds it at upload time."""

    window: int
    uid: int
    shapes: dict[str, tuple[int, ...]]
    codec: CodecParams
    honest: CompressedMessage | None  # this window's honest message, if the miner trained
    sign: Callable[[CompressedMessage], bytes]  # a payload for this window, signed as ours, claiming our θ
    peer_updates: Callable[[], dict[int, SparseUpdate]]  # other miners' accepted uploads, read now


def read_peer_uploads(node: Node, window: int) -> dict[int, SparseUpdate]:
    """Every other miner's payload of ``window`` that any node would accept right now, by uid."""
    metagraph = node.chain.metagraph()
    node.peers.refresh(metagraph)
    others = [uid for uid in miner_uids(metagraph, node.hparams) if uid != node.uid]
    rule = acceptance_rule(node.hparams, node.clock, window, parameter_norms(node.model))
    fetched = fetch_many(node.peers, others, rule, node.shapes, PEER_READ_SECONDS)
    return {uid: f.decoded.update for uid, f in fetched.items() if f.ok and f.decoded is not None}
