"""Signing payload content hashes with a hotkey, and verifying them from an ss58 address alone.

Placeholder contract for parallel work: the protocol issue fills in the bittensor-backed
implementation (``HotkeySigner`` from a Wallet/Keypair, ``verify`` from ss58).
"""

from __future__ import annotations

from typing import Protocol


class Signer(Protocol):
    """Something that holds a hotkey: its ss58 address and a way to sign bytes with it."""

    @property
    def hotkey(self) -> str: ...

    def sign(self, message: bytes) -> bytes: ...
