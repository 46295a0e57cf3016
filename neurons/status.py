"""``tessera status``: the network as any outsider can see it, from the chain and the buckets.

For any chain (``--subtensor.network`` or ``--devchain``): the current window and the run's
origin; per miner its bucket, the last window it published a payload for (from a bounded listing
of its bucket) and whether that payload landed in its upload slot; per validator the weight it
gives each miner on chain; and the fingerprint every node published for the newest window the
validators have fingerprinted, with who agrees with the validators' stake majority.

Everything read from a bucket or a commitment is the peer's to write, so hostile: a commitment
that does not decode, an endpoint the policy refuses, a listing that is too long, garbled or
slow, a fingerprint record that does not parse -- each makes only that peer's row "unreadable"
with the reason, never the command fail. Every peer's reads share one deadline (``--timeout``),
and all peers are read concurrently, so the command ends within about that long.
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from collections import defaultdict
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field

from pydantic import BaseModel

from protocol.acceptance import Stage1Result, check_slot, contained
from protocol.chain import Chain, ChainError, Metagraph, NeuronInfo
from protocol.clock import WindowClock
from protocol.commitment import BucketCommitment, CommitmentError
from protocol.fingerprint_record import MAX_RECORD_BYTES, FingerprintRecord, FingerprintRecordError
from protocol.hparams import Hparams, HparamsError, load_hparams
from protocol.keys import ObjectKeyError, fingerprint_key, window_of_key
from protocol.origin import OriginError
from protocol.roles import role_of
from storage import ObjectStore, StorageError
from storage.endpoints import EndpointPolicy
from storage.s3 import S3Store

# A status listing reads at most this many pages of 1000 keys from one bucket: retention keeps a
# handful of windows, so an honest bucket lists in one page; a bucket that lists on and on is
# shown as unreadable instead of read to the end.
MAX_LIST_PAGES = 4
DEFAULT_TIMEOUT = 10.0
MAX_WORKERS = 16
_PAYLOAD_SUFFIX = ".safetensors"


class NodeStatus(BaseModel):
    """One registered uid as the chain and its bucket show it."""

    uid: int
    hotkey: str
    stake: float
    validator_permit: bool
    role: str  # protocol.roles: miner | validator | none
    bucket: str | None = None  # "<bucket>@<endpoint>" from the commitment
    unreadable: str | None = None  # why the bucket (or its commitment) could not be read
    last_payload_window: int | None = None
    last_payload_on_time: bool | None = None
    fingerprint_window: int | None = None  # newest window this node published a fingerprint for
    fingerprint: str | None = None  # its fingerprint for the reference window
    gathered: list[int] | None = None  # uids it aggregated in the reference window
    agrees: bool | None = None  # fingerprint == the validators' stake majority (None: nothing to compare)
    weights: dict[int, float] = {}  # validators only: the weights it has on chain, by miner uid


class NetworkStatus(BaseModel):
    netuid: int
    block: int
    window: int
    run_id: str
    origin: dict
    reference_window: int | None  # newest window a validator published a fingerprint for
    majority_fingerprint: str | None  # held by more than half the validators' stake, if any
    miners: list[NodeStatus]
    validators: list[NodeStatus]
    others: list[NodeStatus]


@dataclass
class _Listing:
    """What one bucket listing told us about one uid's objects in this run."""

    payloads: dict[int, float] = field(default_factory=dict)  # window -> LastModified (unix)
    fingerprints: set[int] = field(default_factory=set)


def run_origin(chain: Chain, hparams: Hparams, policy: EndpointPolicy) -> tuple[int, dict]:
    """(start block, what to show) of the run's origin (``neurons.run_origin``): the record the
    subnet owner published, or on a devchain without one its start block. An origin that cannot
    be read is shown with the reason, and windows then count from block 0."""
    from neurons.run_origin import load_origin
    from protocol.devchain import DevChain

    start = chain.slots.start_block if isinstance(chain, DevChain) else None
    try:
        origin = load_origin(chain, hparams, devchain_start=start, policy=policy)
    except OriginError as exc:
        return 0, {"unreadable": str(exc)[:300]}
    return origin.start_block, origin.model_dump(mode="json")


def open_peer_store(text: str | None, policy: EndpointPolicy) -> tuple[ObjectStore | None, str | None, str | None]:
    """(store, "<bucket>@<endpoint>", None) for a usable commitment, else (None, label, why not)."""
    if not text:
        return None, None, "no bucket commitment on chain"
    try:
        commitment = BucketCommitment.decode(text)
    except CommitmentError as exc:
        return None, None, f"malformed bucket commitment: {exc}"
    label = f"{commitment.bucket}@{commitment.endpoint_url}"
    try:
        store = S3Store(
            endpoint_url=commitment.endpoint_url, bucket=commitment.bucket,
            access_key_id=commitment.access_key_id, secret_access_key=commitment.secret_access_key,
            region=commitment.region, policy=policy, max_pages=MAX_LIST_PAGES,
        )
    except StorageError as exc:
        return None, label, f"bucket not usable ({type(exc).__name__}): {exc}"
    return store, label, None


def read_listing(store: ObjectStore, run_id: str, uid: int, deadline: float, newest: int) -> _Listing:
    """This uid's payload and fingerprint windows in ``store`` (keys of other uids, other runs or
    that do not follow the layout are ignored; so are windows after ``newest``, which cannot
    exist yet). Raises StorageError when the listing fails."""
    listing = _Listing()
    own = f"/{uid:05d}"
    for info in store.list(f"{run_id}/", deadline=deadline):
        try:
            window = window_of_key(info.key)
        except ObjectKeyError:
            continue
        if window > newest:
            continue
        if info.key.endswith(own + _PAYLOAD_SUFFIX) and "/payloads/" in info.key:
            listing.payloads[window] = info.last_modified.timestamp()
        elif info.key.endswith(own + ".json") and "/fingerprints/" in info.key:
            listing.fingerprints.add(window)
    return listing


def read_fingerprint(store: ObjectStore, run_id: str, uid: int, window: int, deadline: float) -> FingerprintRecord:
    """The record ``uid`` published for ``window``; FingerprintRecordError if it is not one."""
    data = store.get(fingerprint_key(run_id, window, uid), max_bytes=MAX_RECORD_BYTES, deadline=deadline)
    record = FingerprintRecord.parse(data)
    if (record.uid, record.window) != (uid, window):
        raise FingerprintRecordError(f"record claims uid {record.uid} window {record.window}")
    return record


def _guarded(uid: int, what: str, read: Callable[[], object]) -> tuple[object | None, str | None]:
    """(value, None), or (None, why) for a typed failure; anything else escapes the reader into
    ``protocol.acceptance.contained``, the boundary guard, and costs only this peer."""
    def typed():
        try:
            return read(), None
        except (StorageError, FingerprintRecordError) as exc:
            return None, f"{what}: {type(exc).__name__}: {str(exc)[:200]}"

    got = contained(uid, what, typed)
    if isinstance(got, Stage1Result):
        return None, f"{what}: {got.detail[:200]}"
    return got


class StatusReader:
    """Collects a ``NetworkStatus``. ``open_store(commitment_text, policy)`` turns a commitment into
    a bucket (``open_peer_store``; tests swap in stores that answer what they script)."""

    def __init__(self, chain: Chain, hparams: Hparams, policy: EndpointPolicy, timeout: float = DEFAULT_TIMEOUT):
        self.chain, self.hparams, self.policy, self.timeout = chain, hparams, policy, timeout
        self.open_store = open_peer_store

    def collect(self) -> NetworkStatus:
        hp = self.hparams
        block = self.chain.block()
        start, origin = run_origin(self.chain, hp, self.policy)
        clock = WindowClock(self.chain, hp.window.blocks_per_window, hp.window.upload_slot_seconds, start)
        window = max(0, clock.window_of(block))
        metagraph = self.chain.metagraph(block)
        commitments = self.chain.commitments(block)
        deadline = time.monotonic() + self.timeout
        rows = {n.uid: self._row(n, metagraph) for n in metagraph.neurons}
        stores: dict[int, ObjectStore] = {}
        listings: dict[int, _Listing] = {}

        def read_one(neuron: NeuronInfo) -> None:
            row = rows[neuron.uid]
            store, row.bucket, row.unreadable = self.open_store(commitments.get(neuron.uid), self.policy)
            if store is None:
                return
            listing, why = _guarded(neuron.uid, "bucket listing",
                                    lambda: read_listing(store, hp.run_id, neuron.uid, deadline, window))
            if listing is None:
                row.unreadable = why
                return
            stores[neuron.uid], listings[neuron.uid] = store, listing
            self._fill_payload(row, listing, clock)

        _each(metagraph.neurons, read_one)
        reference = max((max(listings[u].fingerprints, default=-1) for u in listings if self._votes(rows[u])),
                        default=-1)
        reference = reference if reference >= 0 else None
        if reference is not None:
            self._read_fingerprints(rows, stores, listings, reference, deadline)
        majority = self._majority(rows.values())
        for row in rows.values():
            if row.fingerprint is not None and majority is not None:
                row.agrees = row.fingerprint == majority
        return NetworkStatus(
            netuid=self.chain.netuid, block=block, window=window, run_id=hp.run_id,
            origin=origin, reference_window=reference, majority_fingerprint=majority,
            miners=[r for r in rows.values() if r.role == "miner"],
            validators=[r for r in rows.values() if r.role == "validator"],
            others=[r for r in rows.values() if r.role not in ("miner", "validator")],
        )

    def _row(self, neuron: NeuronInfo, metagraph: Metagraph) -> NodeStatus:
        verdict = role_of(metagraph, neuron.uid, self.hparams, self.hparams.scoring.burn_uid)
        return NodeStatus(
            uid=neuron.uid, hotkey=neuron.hotkey, stake=neuron.stake, validator_permit=neuron.validator_permit,
            role=verdict.role, weights={u: round(w, 6) for u, w in sorted(neuron.weights.items())},
        )

    @staticmethod
    def _votes(row: NodeStatus) -> bool:
        """Validators by the network's rule (``protocol.roles``): their fingerprints are the ones
        compared. A staked uid that has set no weights yet is a miner by that rule, and so here."""
        return row.role == "validator"

    def _fill_payload(self, row: NodeStatus, listing: _Listing, clock: WindowClock) -> None:
        row.fingerprint_window = max(listing.fingerprints, default=None)
        if not listing.payloads:
            return
        last = max(listing.payloads)
        row.last_payload_window = last
        if not clock.block_opened(last + 1):
            return  # its slot has not opened yet: a payload already there is early, but say nothing yet
        slot = clock.upload_slot(last)
        row.last_payload_on_time = check_slot(listing.payloads[last], slot.start, clock.upload_slot_seconds) is None

    def _read_fingerprints(self, rows, stores, listings, reference: int, deadline: float) -> None:
        def read_one(uid: int) -> None:
            if reference not in listings[uid].fingerprints:
                return
            record, why = _guarded(uid, f"fingerprint record {reference}",
                                   lambda: read_fingerprint(stores[uid], self.hparams.run_id, uid, reference, deadline))
            if record is None:
                rows[uid].unreadable = why
                return
            rows[uid].fingerprint, rows[uid].gathered = record.fingerprint, list(record.gathered)

        _each(list(stores), read_one)

    @staticmethod
    def _majority(rows) -> str | None:
        """The fingerprint behind more than half of all voting validators' stake (read or not)."""
        voters = [r for r in rows if StatusReader._votes(r)]
        total = sum(max(0.0, r.stake) for r in voters)
        behind: dict[str, float] = defaultdict(float)
        for r in voters:
            if r.fingerprint is not None:
                behind[r.fingerprint] += max(0.0, r.stake)
        best = max(behind.items(), key=lambda item: item[1], default=None)
        return best[0] if best is not None and best[1] * 2 > total else None


def _each(items, fn: Callable) -> None:
    items = list(items)
    if items:
        with ThreadPoolExecutor(max_workers=min(MAX_WORKERS, len(items))) as pool:
            list(pool.map(fn, items))


def collect_status(chain: Chain, hparams: Hparams, *, local_subnet: bool, timeout: float = DEFAULT_TIMEOUT) -> NetworkStatus:
    """The status of the run ``hparams`` names on ``chain``; loopback buckets only on a local subnet."""
    return StatusReader(chain, hparams, EndpointPolicy(allow_loopback=local_subnet), timeout).collect()


# --- the command -------------------------------------------------------------------------------


def configure(parser: argparse.ArgumentParser) -> None:
    env = os.environ.get
    parser.add_argument("--subtensor.network", dest="network", default=env("TESSERA_SUBTENSOR_NETWORK"),
                        help="finney | test | local | ws://... (env TESSERA_SUBTENSOR_NETWORK)")
    parser.add_argument("--devchain", default=env("TESSERA_DEVCHAIN"),
                        help="path of an embedded devchain SQLite file (env TESSERA_DEVCHAIN)")
    parser.add_argument("--netuid", type=int, default=env("TESSERA_NETUID"), help="subnet uid (env TESSERA_NETUID)")
    parser.add_argument("--hparams", default=env("TESSERA_HPARAMS", "tiny"),
                        help="the run's preset or hparams JSON (default tiny; env TESSERA_HPARAMS)")
    parser.add_argument("--timeout", type=float, default=DEFAULT_TIMEOUT,
                        help=f"seconds for reading every bucket (default {DEFAULT_TIMEOUT:g})")
    parser.add_argument("--json", action="store_true", help="machine-readable output")
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from neurons.status_view import print_status
    from protocol.chain_factory import open_chain

    if (args.network is None) == (args.devchain is None):
        return _fail("give exactly one of --subtensor.network or --devchain")
    try:
        hparams = load_hparams(args.hparams)
        netuid = None if args.netuid is None else int(args.netuid)
        if netuid is None and args.network is not None:
            return _fail("--netuid is required with --subtensor.network (or env TESSERA_NETUID)")
        chain = open_chain(args.network, args.devchain, netuid) if netuid is not None else _devchain(args.devchain)
        status = collect_status(chain, hparams, local_subnet=args.devchain is not None, timeout=args.timeout)
    except (HparamsError, ChainError, ValueError) as exc:
        return _fail(str(exc))
    if args.json:
        print(status.model_dump_json(indent=1))
    else:
        print_status(status)
    return 0


def _devchain(path: str) -> Chain:
    from protocol.devchain import DevChain

    return DevChain(path)


def _fail(message: str) -> int:
    print(f"tessera status: error: {message}", file=sys.stderr)
    return 2
