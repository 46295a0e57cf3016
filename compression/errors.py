"""Typed errors of the codec."""

from __future__ import annotations


class PayloadError(ValueError):
    """A payload was refused; ``reason`` names the problem in one line (it goes into logs and scores)."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


class SignatureError(PayloadError):
    """The payload is well formed but its signature is missing, malformed or not the signer's."""
