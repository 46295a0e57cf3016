"""Who the peers are and where their buckets live, from the chain's commitments.

Each node commits a read-only key for its own bucket; a reader turns that commitment into a
read-only store. Stores are cached by commitment string, so a peer that re-commits (new bucket,
rotated key) is picked up on the next refresh and everyone else keeps their connections.

A commitment is written by the peer, so it is hostile input: one that does not decode, names an
endpoint the policy refuses (``storage.endpoints``), or from which no client can be built leaves
that peer absent for as long as it stands, with one warning per (uid, commitment); it never
stops ``refresh`` and so never the node.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Iterator
from concurrent.futures import CancelledError, Future, ThreadPoolExecutor, wait
from concurrent.futures import TimeoutError as FutureTimeout
from dataclasses import dataclass

from protocol.chain import Chain, Metagraph
from protocol.commitment import BucketCommitment, CommitmentError
from storage import ObjectStore, StorageError
from storage.endpoints import EndpointPolicy
from storage.s3 import S3Store

log = logging.getLogger(__name__)

# A commitment no store could be opened for is tried again only every this many refreshes:
# opening resolves the endpoint, and many refused peers must not cost DNS time every window.
RETRY_REFUSED_EVERY = 10
# Opening stores (DNS included) runs concurrently and a refresh waits at most this long for it:
# a peer whose name server stalls is absent (MISSING) until its store is ready, and never
# delays the window for everyone else. Honest endpoints open in milliseconds.
OPEN_BUDGET_SECONDS = 2.0
# How long a node that replays or joins waits for peers' stores still being opened (``refresh``).
CATCH_UP_OPEN_PATIENCE_SECONDS = 30.0
OPEN_WORKERS = 8


@dataclass(frozen=True)
class Peer:
    uid: int
    hotkey: str
    store: ObjectStore


def read_only_store(commitment: BucketCommitment, policy: EndpointPolicy | None = None) -> ObjectStore:
    """A peer's bucket as a hostile server: endpoint checked by ``policy`` (default: public
    addresses only) when created and before every request."""
    return S3Store(
        endpoint_url=commitment.endpoint_url,
        bucket=commitment.bucket,
        access_key_id=commitment.access_key_id,
        secret_access_key=commitment.secret_access_key,
        region=commitment.region,
        policy=policy or EndpointPolicy(),
    )


class PeerDirectory:
    """The peers of the current metagraph, each with a read-only store of its bucket.

    ``policy`` is the endpoint policy of the default ``make_store``: public addresses only
    unless the node runs the local subnet (see ``for_node``). A custom ``make_store`` (tests,
    the local-directory backend) is used as given.
    """

    def __init__(
        self,
        chain: Chain,
        make_store: Callable[[BucketCommitment], ObjectStore] | None = None,
        *,
        policy: EndpointPolicy | None = None,
    ) -> None:
        self._chain = chain
        self.policy = policy or EndpointPolicy()
        self._make_store = make_store or self._read_only_store
        self._stores: dict[str, ObjectStore] = {}
        self._peers: dict[int, Peer] = {}
        self._refused: dict[int, str] = {}  # uid -> the commitment already warned about
        self._failed: dict[str, int] = {}  # commitment -> the refresh in which opening it failed
        self._opening: dict[str, Future] = {}  # commitment -> its store being opened
        self._pool: ThreadPoolExecutor | None = None
        self._round = 0
        # uid -> (commitment, hotkey) whose store was still opening at the last refresh
        self._pending: dict[int, tuple[str, str]] = {}
        self._lock = threading.Lock()

    @classmethod
    def for_node(cls, chain: Chain, *, local_subnet: bool) -> PeerDirectory:
        """The directory a node uses: loopback endpoints are allowed only on the local subnet
        (devchain), where every node's bucket is on this machine."""
        return cls(chain, policy=EndpointPolicy(allow_loopback=local_subnet))

    def _read_only_store(self, commitment: BucketCommitment) -> ObjectStore:
        return read_only_store(commitment, self.policy)

    def refresh(self, metagraph: Metagraph, patience: float | None = None) -> None:
        """Re-read every commitment; uids without a usable (or not yet opened) one are absent.

        ``patience``: wait up to this long for *every* store still opening, not only those started
        now (a replaying node, where counting a payload the live nodes counted matters more than
        time: a fresh process can take seconds to build its first clients, and a replay that
        misses an honest peer's payload ends in another θ)."""
        raw = self._chain.commitments()
        self._round += 1
        wanted = {n.uid: raw.get(n.uid) for n in metagraph.neurons if raw.get(n.uid)}
        opened = self._open_new({text: uid for uid, text in wanted.items()}, patience)
        hotkeys = {n.uid: n.hotkey for n in metagraph.neurons}
        with self._lock:
            self._pending = {uid: (text, hotkeys[uid]) for uid, text in wanted.items() if text in self._opening}
        peers: dict[int, Peer] = {}
        stores: dict[str, ObjectStore] = {}
        for neuron in metagraph.neurons:
            text = wanted.get(neuron.uid)
            store = (stores.get(text) or self._stores.get(text) or opened.get(text)) if text else None
            if store is None:
                continue
            stores[text] = store
            self._refused.pop(neuron.uid, None)
            peers[neuron.uid] = Peer(neuron.uid, neuron.hotkey, store)
        # only current commitments are kept, so peers that keep re-committing cannot grow these
        current = set(wanted.values())
        self._failed = {text: r for text, r in self._failed.items() if text in current}
        self._stores, self._peers = stores, peers

    def _open_new(self, owners: dict[str, int], patience: float | None = None) -> dict[str, ObjectStore | None]:
        """Open the stores of commitments not yet open, concurrently, waiting at most
        OPEN_BUDGET_SECONDS for the ones started now (``patience``: that long for all of the
        wanted ones still opening); returns what finished (None: failed). Unfinished ones stay
        pending and are picked up, without waiting, by a later refresh."""
        started = []
        for text, uid in owners.items():
            if text in self._stores or text in self._opening:
                continue
            failed_in = self._failed.get(text)
            if failed_in is not None and self._round - failed_in < RETRY_REFUSED_EVERY:
                continue
            if self._pool is None:
                self._pool = ThreadPoolExecutor(max_workers=OPEN_WORKERS, thread_name_prefix="peer-open")
            self._opening[text] = self._pool.submit(self._open, uid, text)
            started.append(self._opening[text])
        if patience is not None:
            wait([f for text, f in self._opening.items() if text in owners], timeout=patience)
        elif started:
            wait(started, timeout=OPEN_BUDGET_SECONDS)
        done = {text: f for text, f in self._opening.items() if f.done()}
        for text in done:
            del self._opening[text]
        results = {text: f.result() for text, f in done.items()}
        for text, store in results.items():
            if store is None:
                self._failed[text] = self._round
        for text in list(self._opening):
            if text not in owners:  # re-committed or deregistered while opening: not waited for again
                self._opening.pop(text).cancel()
        return results

    def _open(self, uid: int, text: str) -> ObjectStore | None:
        """The store for one peer's commitment, or None (warned once per uid and commitment)."""
        try:
            return self._make_store(BucketCommitment.decode(text))
        except CommitmentError as exc:
            reason = f"has a malformed bucket commitment: {exc}"
        except StorageError as exc:  # refused endpoint, unresolvable host, invalid region
            reason = f"commits an unusable bucket ({type(exc).__name__}): {exc}"
        except Exception as exc:  # noqa: BLE001 -- boundary guard, see below
            # The commitment is the peer's to write and botocore's client construction raises
            # whatever it likes for strange input; one peer's bad commitment must cost only
            # that peer, so anything else is logged with its type (bugs stay visible) and the
            # peer is left out, never raised out of refresh (which would stop every node).
            reason = f"commits a bucket no client can be built for ({type(exc).__name__}: {exc})"
        if self._refused.get(uid) != text:
            self._refused[uid] = text
            log.warning("uid %d %s", uid, reason)
        else:
            log.debug("uid %d %s", uid, reason)
        return None

    def is_opening(self, uid: int) -> bool:
        """Whether ``uid``'s store was still being opened at the last refresh."""
        with self._lock:
            return uid in self._pending

    def await_peer(self, uid: int, deadline: float | None) -> Peer | None:
        """``uid``'s peer once its store has opened, waiting until ``deadline`` (``time.monotonic()``);
        None when it failed or is not ready by then. A fetch uses this for a peer whose client a
        fresh process is still building: that time counts against the peer's own fetch budget,
        side by side with the other peers' fetches, instead of the peer counting as missing."""
        with self._lock:
            text, hotkey = self._pending.get(uid, (None, ""))
            future = self._opening.get(text) if text is not None else None
        if future is None:
            return self.get(uid)
        timeout = None if deadline is None else max(0.0, deadline - time.monotonic())
        try:
            store = future.result(timeout=timeout)
        except (FutureTimeout, CancelledError):
            return None
        return Peer(uid, hotkey, store) if store is not None else None

    def get(self, uid: int) -> Peer | None:
        return self._peers.get(uid)

    def __iter__(self) -> Iterator[Peer]:
        return iter(sorted(self._peers.values(), key=lambda p: p.uid))
