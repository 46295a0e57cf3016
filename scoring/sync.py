"""Sync score: is a miner training on the same global model as the validator?

Every node publishes a digest of θ's exact bits after each window
(``neurons.fingerprint.model_fingerprint``), and a miner's payload manifest names the digest of
the model it trained from (``base_fingerprint``). Aggregation is deterministic, so equal digests
mean the same model and anything else means a different one: the score is 1 or 0. There is no
"how far behind" grade; a miner that missed an update reloads and is back in sync next window.
"""

from __future__ import annotations


def sync_score(peer: str | None, own: str) -> float:
    """1.0 when the peer's base-model digest equals ours, else 0.0 (missing or empty included)."""
    return 1.0 if peer and peer == own else 0.0
