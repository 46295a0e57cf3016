"""Typed errors of the codec."""

from __future__ import annotations


class PayloadError(ValueError):
    """A payload was refused; ``reason`` names the problem in one line (it goes into logs and scores)."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason
