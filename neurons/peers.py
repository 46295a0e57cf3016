"""Who the peers are and where their buckets live, from the chain's commitments.

Each node commits a read-only key for its own bucket; a reader turns that commitment into a
read-only store. Stores are cached by commitment string, so a peer that re-commits (new bucket,
rotated key) is picked up on the next refresh and everyone else keeps their connections.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass

from protocol.chain import Chain, Metagraph
from protocol.commitment import BucketCommitment, CommitmentError
from storage import ObjectStore
from storage.s3 import S3Store

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Peer:
    uid: int
    hotkey: str
    store: ObjectStore


def read_only_store(commitment: BucketCommitment) -> ObjectStore:
    return S3Store(
        endpoint_url=commitment.endpoint_url,
        bucket=commitment.bucket,
        access_key_id=commitment.access_key_id,
        secret_access_key=commitment.secret_access_key,
        region=commitment.region,
    )


class PeerDirectory:
    def __init__(self, chain: Chain, make_store: Callable[[BucketCommitment], ObjectStore] = read_only_store):
        self._chain = chain
        self._make_store = make_store
        self._stores: dict[str, ObjectStore] = {}
        self._peers: dict[int, Peer] = {}

    def refresh(self, metagraph: Metagraph) -> None:
        """Re-read every commitment; uids without a valid one are simply absent."""
        raw = self._chain.commitments()
        peers: dict[int, Peer] = {}
        for neuron in metagraph.neurons:
            text = raw.get(neuron.uid)
            if not text:
                continue
            store = self._stores.get(text)
            if store is None:
                try:
                    store = self._make_store(BucketCommitment.decode(text))
                except CommitmentError as exc:
                    log.warning("uid %d has a malformed bucket commitment: %s", neuron.uid, exc)
                    continue
                self._stores[text] = store
            peers[neuron.uid] = Peer(neuron.uid, neuron.hotkey, store)
        self._peers = peers

    def get(self, uid: int) -> Peer | None:
        return self._peers.get(uid)

    def __iter__(self):
        return iter(sorted(self._peers.values(), key=lambda p: p.uid))
