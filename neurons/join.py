"""Joining without a leader: the newest validator checkpoint whose fingerprint validators holding
more than half of all validator stake published, else θ0 at window 0; the caller replays since.

Who decides. The *electorate* is every neuron with a validator permit in the current metagraph,
except the joining node itself, each weighing its current stake. A fingerprint of θ_{w+1} is
confirmed only when the stake of the validators that published it is more than half of the
electorate's *whole* stake -- silent validators count against it, not as abstentions. This closes
two holes of a head count over whoever answered:

* Sybils: many permit holders with almost no stake cannot outvote one validator holding most of
  it, since each answer weighs its stake, not 1.
* A lone answer: a validator that publishes a window before the others do, or keeps its objects
  after the honest ones were pruned, is not "the majority of those who answered" any more; unless
  it holds more than half of all validator stake by itself, it confirms nothing.

Consequences, by design:

* Joining needs a majority *of stake to be reachable*. With two equal-stake validators both must
  have published the same fingerprint for the window (exactly half is not enough); if one is down,
  unreachable, or has not yet published the newest window, that window is passed over and an older
  checkpoint both confirmed is used (validators checkpoint every ``interval_windows`` and retain
  ``retention_windows`` >= 2 intervals, so an older one normally exists and the replay is longer).
* The joiner is not in its own electorate: a validator that lost its local state cannot vouch for
  itself, so the others decide alone -- with two equal validators, the other one's answer is a
  majority of the electorate. In a one-validator network the restarting validator itself has no
  electorate at all and falls back to θ0, as before this rule.
* Stake is read from the metagraph at join time, not as of the window: validators that since left
  or unstaked no longer vote, new stake does. All permit holders with zero stake (possible on a
  chain that grants permits without stake) means nobody can confirm anything: θ0.
* The localnet (every validator VALIDATOR_STAKE, miners and owner 0) keeps working: with one
  validator its answer is all of the stake, so a late miner joins from its checkpoints as before;
  with N validators a late miner needs more than N/2 of them to agree, which honest ones do.

When nothing qualifies the node starts from θ0 at window 0 and ``neurons.node.catch_up`` replays
every window since. That is correct only while the network is younger than the payload retention;
later, the early payloads are pruned, those windows replay as "nothing accepted" (θ unchanged), and
the node ends out of step: its payloads fail the validators' sync check and nothing reloads it
automatically. The log says why no checkpoint qualified. This is the price of refusing an
unconfirmed checkpoint -- being out of step costs the joiner its rewards; loading a forged θ would
cost the same and also spread it.

Containment. Every object read from a validator (fingerprint record, checkpoint listing,
checkpoint) goes through ``from_validator``: a typed refusal or any unforeseen exception makes only
that validator's vote or checkpoint not count, logged with the exception named; the join goes on.
A checkpoint is loaded only if its tensors are finite and within ``bounds.max_abs_param``, so even
a stake majority cannot hand a joiner NaN or exploding parameters (it falls back to an older one).

Still open: validators holding more than half of the stake can forge together (the same trust
Bittensor's consensus places in stake); and if the honest majority's stake is offline, honest
joiners cannot join correctly until it returns.
"""

from __future__ import annotations

import logging
import math
import time
from collections import defaultdict
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import TypeVar

from neurons.checkpoint import CheckpointError, load_checkpoint
from neurons.model import build_model
from neurons.peers import CATCH_UP_OPEN_PATIENCE_SECONDS
from neurons.progress import progress
from protocol.chain import Metagraph
from protocol.fingerprint_record import MAX_RECORD_BYTES, FingerprintRecord, FingerprintRecordError
from protocol.keys import ObjectKeyError, checkpoint_key, checkpoint_prefix, fingerprint_key, window_of_key
from protocol.roles import sets_weights
from storage import ObjectNotFound, StorageError, StorageUnavailable

log = logging.getLogger(__name__)
T = TypeVar("T")
# What a validator's objects are expected to fail with; anything else is a bug or an attack the
# readers did not foresee, and is logged as such (still only that validator's loss).
_EXPECTED = (StorageError, CheckpointError, FingerprintRecordError, ObjectKeyError)
# Retention keeps retention_windows / interval_windows checkpoints per validator (2-3 in every
# preset); more than this many in a listing is junk, and only the newest are worth a try.
MAX_CHECKPOINTS_PER_VALIDATOR = 8


@dataclass(frozen=True)
class Electorate:
    """The validators whose published fingerprints decide a join, each with the stake it weighs."""

    stakes: dict[int, float]

    @classmethod
    def from_metagraph(cls, metagraph: Metagraph, joiner: int) -> Electorate:
        """Every permit holder that sets weights (``protocol.roles``: a paid miner holds stake and
        a permit too, but publishes no fingerprints, and must not dilute the vote), but ``joiner``;
        a non-finite or negative stake weighs nothing."""
        return cls({
            n.uid: n.stake if math.isfinite(n.stake) and n.stake > 0 else 0.0
            for n in metagraph.neurons
            if n.validator_permit and sets_weights(n) and n.uid != joiner
        })

    @property
    def uids(self) -> list[int]:
        return sorted(self.stakes)

    @property
    def total(self) -> float:
        return math.fsum(self.stakes.values())

    def confirms(self, agreeing: float) -> bool:
        """More than half of *all* the electorate's stake, answering or not (so 0 of 0 is no)."""
        return agreeing * 2 > self.total


# Every read from a validator's bucket has a total deadline, so a validator whose server drips or
# hangs delays a join by at most this much per object. Checkpoints are big (fp32 θ): their
# deadline grows with the cap at a slow-but-usable rate.
SMALL_READ_SECONDS = 30.0
MAX_PARALLEL_READS = 16
CHECKPOINT_MIN_BYTES_PER_S = 5 << 20


def _deadline(seconds: float) -> float:
    return time.monotonic() + seconds


def checkpoint_cap(node) -> int:
    """Largest checkpoint we accept: fp32 parameters plus generous room for the header."""
    return 4 * sum(math.prod(s) for s in node.shapes.values()) + (1 << 20)


def from_validator(uid: int, what: str, read: Callable[[], T], unreachable: set[int] | None = None) -> T | None:
    """``read()``, or None when it fails: containment at the boundary of one validator's objects.

    Every object a joiner reads from a validator (fingerprint records, listings, checkpoints) is
    read through here, so one validator's hostile or broken object only makes *its* vote or
    checkpoint not count; the join itself never fails because of it. A validator whose server
    timed out or could not be reached goes into ``unreachable`` and is not asked again during the
    join: each hanging validator costs one deadline, not one per object."""
    if unreachable is not None and uid in unreachable:
        return None
    try:
        return read()
    except ObjectNotFound:
        return None  # not published (yet) or pruned: no vote, nothing to report
    except StorageUnavailable as exc:  # includes StorageTimeout
        if unreachable is not None:
            unreachable.add(uid)
        log.warning("%s of validator %d unreachable, not asked again in this join: %s", what, uid, exc)
    except _EXPECTED as exc:
        log.warning("%s of validator %d unusable: %s: %s", what, uid, type(exc).__name__, exc)
    except Exception as exc:  # noqa: BLE001 -- the boundary guard: name the exception, skip the peer
        log.warning("%s of validator %d raised unexpectedly, skipped: %s: %s", what, uid, type(exc).__name__, exc)
    return None


def _each_validator(uids: list[int], read: Callable[[int], T]) -> dict[int, T]:
    """``read(uid)`` for every validator at once: the slowest one, not their sum, bounds the wait."""
    if not uids:
        return {}
    with ThreadPoolExecutor(max_workers=min(MAX_PARALLEL_READS, len(uids))) as pool:
        return dict(zip(uids, pool.map(read, uids), strict=True))


def _published_fingerprint(
    node, uid: int, window: int, unreachable: set[int] | None = None, seconds: float = SMALL_READ_SECONDS
) -> str | None:
    """The fingerprint validator ``uid`` published for ``window``; None if none (or not readable)."""
    peer = node.peers.get(uid)
    if peer is None:
        return None
    key = fingerprint_key(node.hparams.run_id, window, uid)
    record = from_validator(uid, f"fingerprint record {window}",
                            lambda: FingerprintRecord.parse(
                                peer.store.get(key, max_bytes=MAX_RECORD_BYTES, deadline=_deadline(seconds))),
                            unreachable)
    if record is None:
        return None
    if (record.uid, record.window) != (uid, window):
        # a record copied from another validator or window is not this validator's vote
        log.warning("fingerprint record %d of validator %d claims uid %d window %d; ignored",
                    window, uid, record.uid, record.window)
        return None
    return record.fingerprint


def majority_fingerprint(
    node, electorate: Electorate, window: int, unreachable: set[int] | None = None, seconds: float = SMALL_READ_SECONDS
) -> str | None:
    """The fingerprint of θ_{window+1} published by more than half of the electorate's stake
    (each validator's record read within ``seconds``)."""
    stake_behind: dict[str, float] = defaultdict(float)
    published = _each_validator(
        electorate.uids, lambda uid: _published_fingerprint(node, uid, window, unreachable, seconds)
    )
    for uid, fingerprint in published.items():
        if fingerprint is not None:
            stake_behind[fingerprint] += electorate.stakes[uid]
    if not stake_behind:
        return None
    fingerprint, agreeing = max(stake_behind.items(), key=lambda item: item[1])
    if electorate.confirms(agreeing):
        return fingerprint
    log.info("window %d: best fingerprint has stake %.6g of %.6g, not a majority; passed over",
             window, agreeing, electorate.total)
    return None


def _checkpoint_candidates(node, validators: list[int], now: int, unreachable: set[int] | None = None) -> list[tuple[int, int]]:
    """(window, uid) of the checkpoints the validators list, newest first, at most
    MAX_CHECKPOINTS_PER_VALIDATOR each: a listing of a million keys costs its validator, not the join."""
    found = []
    present = [uid for uid in validators if node.peers.get(uid) is not None]
    listed = _each_validator(present, lambda uid: from_validator(
        uid, "checkpoint listing", lambda: _listed_windows(node, node.peers.get(uid)), unreachable))
    for uid, windows in listed.items():
        windows = windows or []
        future = [w for w in windows if w >= now]
        if future:
            # θ_{w+1} cannot exist before window w+1 begins: whatever is published for it is forged.
            log.warning("validator %d publishes checkpoints for future windows (%d, ...); ignored", uid, max(future))
        past = sorted({w for w in windows if w < now}, reverse=True)[:MAX_CHECKPOINTS_PER_VALIDATOR]
        found.extend((window, uid) for window in past)
    return sorted(found, reverse=True)


def _listed_windows(node, peer) -> list[int]:
    windows = []
    for info in peer.store.list(checkpoint_prefix(node.hparams.run_id), deadline=_deadline(SMALL_READ_SECONDS)):
        try:
            windows.append(window_of_key(info.key))
        except ObjectKeyError:
            continue  # a stray object in the prefix is not a checkpoint
    return windows


def _try_checkpoint(node, uid: int, window: int, expected: str, unreachable: set[int] | None = None) -> bool:
    """Load validator ``uid``'s checkpoint of ``window`` into the model if it holds ``expected``;
    on False the model is untouched (load_checkpoint checks everything before copying)."""
    def load():
        return _load_checkpoint(node, uid, window, expected)

    return from_validator(uid, f"checkpoint {window}", load, unreachable) is not None


def _load_checkpoint(node, uid: int, window: int, expected: str):
    cap = checkpoint_cap(node)
    seconds = max(SMALL_READ_SECONDS, cap / CHECKPOINT_MIN_BYTES_PER_S)
    with progress(f"downloading checkpoint {window} from validator {uid}"):  # a spinner, on a terminal only
        data = node.peers.get(uid).store.get(checkpoint_key(node.hparams.run_id, window), cap, deadline=_deadline(seconds))
    return load_checkpoint(data, node.model, cap, max_abs_param=node.hparams.bounds.max_abs_param,
                           expected_run_id=node.hparams.run_id, expected_fingerprint=expected)


def join_from_checkpoint(node) -> int:
    """Load the best checkpoint into ``node.model``; return the window it holds θ for (0: θ0)."""
    metagraph = node.chain.metagraph()
    node.peers.refresh(metagraph, CATCH_UP_OPEN_PATIENCE_SECONDS)  # a joining node's clients may still be opening
    electorate = Electorate.from_metagraph(metagraph, joiner=node.uid)
    # A checkpoint named for window w holds θ_{w+1}, which validators fingerprinted for w.
    now = node.clock.current_window()
    confirmed: dict[int, str | None] = {}  # one vote count per window, however many copies it has
    unreachable: set[int] = set()  # validators whose servers timed out: asked once per join
    candidates = _checkpoint_candidates(node, electorate.uids, now, unreachable)
    for window, uid in candidates:
        if uid in unreachable:
            continue
        if window not in confirmed:
            confirmed[window] = majority_fingerprint(node, electorate, window, unreachable)
        expected = confirmed[window]
        if expected is not None and _try_checkpoint(node, uid, window, expected, unreachable):
            log.info("%s joined from validator %d's checkpoint of window %d", node.name, uid, window)
            return window + 1
    fresh = build_model(node.hparams.model, node.hparams.seed).to(node.config.device)
    node.model.load_state_dict(fresh.state_dict())
    if candidates:  # a young network has none yet; checkpoints nobody confirmed deserve a warning
        log.warning("%s found no checkpoint confirmed by more than half of validator stake (%.6g)",
                    node.name, electorate.total)
    log.info("%s starts from θ0 at window 0", node.name)
    return 0
