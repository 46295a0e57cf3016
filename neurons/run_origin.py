"""Reading and publishing the run's origin (``protocol.origin``) through the subnet owner's bucket.

The owner's uid (``scoring.burn_uid``) commits its bucket like any node; the record lies at
``origin_key(run_id)`` there. A node reads it once at start. Everything read is the owner's
bytes and is read like a peer's: endpoint policy, size cap, deadline, strict parse.

On the devchain a run without a published record still starts (the tests and hand-made local
networks have no owner bucket): its windows then count from the devchain's start block, the block
its subnet was registered at, and the node says so. On any other chain a missing origin is an
``OriginError`` that names the fix.
"""

from __future__ import annotations

import logging
import time

from neurons.peers import read_only_store
from protocol.chain import Chain
from protocol.commitment import BucketCommitment, CommitmentError
from protocol.hparams import Hparams
from protocol.origin import MAX_ORIGIN_BYTES, OriginError, RunOrigin, check_origin, hparams_digest, origin_key
from storage import ObjectExists, ObjectNotFound, ObjectStore, StorageError
from storage.endpoints import EndpointPolicy

log = logging.getLogger(__name__)

ORIGIN_READ_SECONDS = 30.0


class OriginMissing(OriginError):
    """The owner has published no origin record for this run (yet)."""


def owner_store(chain: Chain, owner_uid: int, policy: EndpointPolicy) -> ObjectStore:
    """A read-only store of the owner's committed bucket, or ``OriginMissing``."""
    text = chain.commitments().get(owner_uid)
    if not text:
        raise OriginMissing(f"the subnet owner's uid {owner_uid} has committed no bucket, so no origin can be read")
    try:
        return read_only_store(BucketCommitment.decode(text), policy)
    except (CommitmentError, StorageError, ValueError) as exc:
        raise OriginError(f"the subnet owner's (uid {owner_uid}) bucket commitment is unusable: {exc}") from exc


def read_origin(store: ObjectStore, hparams: Hparams, seconds: float = ORIGIN_READ_SECONDS) -> RunOrigin:
    """The checked origin of ``hparams``' run from ``store`` (the owner's bucket)."""
    key = origin_key(hparams.run_id)
    try:
        data = store.get(key, MAX_ORIGIN_BYTES, deadline=time.monotonic() + seconds)
    except ObjectNotFound as exc:
        raise OriginMissing(f"the subnet owner's bucket has no {key}: the run {hparams.run_id} has no origin") from exc
    except StorageError as exc:
        raise OriginError(f"reading the run's origin {key} failed: {exc}") from exc
    return check_origin(RunOrigin.parse(data), hparams)


def publish_origin(store: ObjectStore, origin: RunOrigin, hparams: Hparams) -> bool:
    """The owner's side: put the record once (conditional put). True if written now; an identical
    record already there is fine, a different one is an ``OriginError`` (a run starts once)."""
    check_origin(origin, hparams)
    key = origin_key(hparams.run_id)
    try:
        store.put(key, origin.to_bytes())
        return True
    except ObjectExists:
        present = RunOrigin.parse(store.get(key, MAX_ORIGIN_BYTES))
        if present != origin:
            raise OriginError(
                f"{key} already holds another origin (start block {present.start_block}); a run starts once: "
                "change the hparams for a new run"
            ) from None
        return False


def load_origin(chain: Chain, hparams: Hparams, *, devchain_start: int | None, policy: EndpointPolicy) -> RunOrigin:
    """The run's origin for a starting node; ``devchain_start`` (the devchain's start block) is the
    fallback when no record is published on a devchain."""
    owner = hparams.scoring.burn_uid
    try:
        if owner is None:
            raise OriginMissing("scoring.burn_uid names no subnet owner uid, so no origin can be read")
        return read_origin(owner_store(chain, owner, policy), hparams)
    except OriginMissing as exc:
        if devchain_start is None:
            raise OriginMissing(f"{exc}. The subnet owner must publish it (docs/chain.md, 'The run's origin')") from exc
        log.warning("%s; on this devchain windows count from its start block %d", exc, devchain_start)
        return RunOrigin(start_block=devchain_start, hparams_digest=hparams_digest(hparams), data_digest="",
                         tokenizer="unpublished")
