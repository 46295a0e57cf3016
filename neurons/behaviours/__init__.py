"""Miner behaviours for local networks: the honest miner's window with one decision changed.

``tessera miner --behaviour KIND`` (devchain only) runs the honest miner's window -- train, Δ,
compress, payload, upload, gather -- and asks a small strategy object (``strategies``) at each
point where a free-rider or an attacker would act differently: what data to train on, whether to
train at all, what to publish, when to upload, whether to apply the outer step. ``kinds`` holds
the vocabulary (importable without torch, for the config check); ``messages`` the payload
transformations; ``context`` what a strategy may look at while it builds its payload.
"""

from neurons.behaviours.kinds import ADVERSARIAL_KINDS, BYTE_LEVEL_KINDS, HONEST, KINDS

__all__ = ["ADVERSARIAL_KINDS", "BYTE_LEVEL_KINDS", "HONEST", "KINDS"]
