"""Joining without a leader: the newest validator checkpoint whose fingerprint the majority of
validators confirm, else θ0 at window 0; the caller then replays the windows since."""

from __future__ import annotations

import json
import logging
import math
from collections import Counter

from neurons.checkpoint import CheckpointError, load_checkpoint
from neurons.model import build_model
from protocol.keys import ObjectKeyError, checkpoint_key, checkpoint_prefix, fingerprint_key, window_of_key
from storage import StorageError

log = logging.getLogger(__name__)


def checkpoint_cap(node) -> int:
    """Largest checkpoint we accept: fp32 parameters plus generous room for the header."""
    return 4 * sum(math.prod(s) for s in node.shapes.values()) + (1 << 20)


def majority_fingerprint(node, validators: list[int], window: int) -> str | None:
    """The fingerprint of θ_{window+1} that more than half of the answering validators published."""
    seen: list[str] = []
    for uid in validators:
        peer = node.peers.get(uid)
        if peer is None:
            continue
        try:
            record = json.loads(peer.store.get(fingerprint_key(node.hparams.run_id, window, uid), max_bytes=1 << 16))
            seen.append(str(record["fingerprint"]))
        except (StorageError, ValueError, KeyError, TypeError):
            continue
    if not seen:
        return None
    fingerprint, count = Counter(seen).most_common(1)[0]
    return fingerprint if count * 2 > len(seen) else None


def _checkpoint_candidates(node, validators: list[int]) -> list[tuple[int, int]]:
    found = []
    for uid in validators:
        peer = node.peers.get(uid)
        if peer is None:
            continue
        try:
            infos = peer.store.list(checkpoint_prefix(node.hparams.run_id))
        except StorageError as exc:
            log.warning("cannot list checkpoints of validator %d: %s", uid, exc)
            continue
        for info in infos:
            try:
                found.append((window_of_key(info.key), uid))
            except ObjectKeyError:
                continue  # a stray object in the prefix is not a checkpoint
    return sorted(found, reverse=True)


def join_from_checkpoint(node) -> int:
    """Load the best checkpoint into ``node.model``; return the window it holds θ for (0: θ0)."""
    metagraph = node.chain.metagraph()
    node.peers.refresh(metagraph)
    validators = [n.uid for n in metagraph.neurons if n.validator_permit and n.uid != node.uid]
    # A checkpoint named for window w holds θ_{w+1}, which validators fingerprinted for w.
    now = node.clock.current_window()
    for window, uid in _checkpoint_candidates(node, validators):
        if window >= now:
            # θ_{w+1} cannot exist before window w+1 begins; a lone validator naming a future
            # window would otherwise be "the majority" of the one fingerprint found for it.
            log.warning("validator %d publishes a checkpoint for future window %d; ignored", uid, window)
            continue
        expected = majority_fingerprint(node, validators, window)
        if expected is None:
            continue
        try:
            data = node.peers.get(uid).store.get(checkpoint_key(node.hparams.run_id, window), checkpoint_cap(node))
            manifest = load_checkpoint(data, node.model, checkpoint_cap(node))
        except (StorageError, CheckpointError) as exc:
            log.warning("checkpoint %d of validator %d unusable: %s", window, uid, exc)
            continue
        if manifest.fingerprint == expected:
            log.info("%s joined from validator %d's checkpoint of window %d", node.name, uid, window)
            return window + 1
        log.warning("checkpoint %d of validator %d disagrees with the majority fingerprint", window, uid)
    fresh = build_model(node.hparams.model, node.hparams.seed).to(node.config.device)
    node.model.load_state_dict(fresh.state_dict())
    log.info("%s starts from θ0 at window 0", node.name)
    return 0
