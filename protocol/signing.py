"""Signing with a hotkey, and verifying a signature from an ss58 address alone.

Keys are bittensor 11's (``bittensor_core.Keypair``, sr25519 by default): a node signs with the
hotkey held in its wallet; anyone verifies with nothing but the hotkey's ss58 address, which is
what the metagraph publishes for each uid.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Protocol

from bittensor_core import KeyfileError, Keypair

if TYPE_CHECKING:  # the full SDK takes ~1 s to import; only wallet creation needs it
    import bittensor

SIGNATURE_BYTES = 64  # sr25519 and ed25519 signatures are both 64 bytes


class SigningError(RuntimeError):
    """A hotkey could not be loaded or used for signing; the message says which and why."""


class Signer(Protocol):
    """Something that holds a hotkey: its ss58 address and a way to sign bytes with it."""

    @property
    def hotkey(self) -> str: ...

    def sign(self, message: bytes) -> bytes: ...


class HotkeySigner:
    """Signs with a hotkey from a bittensor ``Wallet`` or directly from a ``Keypair``.

    ``keypair`` is exposed for the bittensor chain backend, which hands it to the SDK to sign
    extrinsics with the same key.
    """

    def __init__(self, source: bittensor.Wallet | Keypair):
        if not isinstance(source, Keypair):  # a Wallet: its hotkey file is read here
            try:
                keypair = source.hotkey
            except (KeyfileError, OSError, ValueError) as exc:
                raise SigningError(f"cannot load hotkey of {source!r}: {exc}") from exc
        else:
            keypair = source
        self._keypair = keypair

    @classmethod
    def from_uri(cls, uri: str) -> HotkeySigner:
        """A throwaway key from a dev URI such as ``//Alice`` (tests and local networks)."""
        return cls(Keypair.create_from_uri(uri))

    @property
    def keypair(self) -> Keypair:
        return self._keypair

    @property
    def hotkey(self) -> str:
        return self._keypair.ss58_address

    def sign(self, message: bytes) -> bytes:
        return bytes(self._keypair.sign(message))

    def __repr__(self) -> str:
        return f"HotkeySigner({self.hotkey})"


def verify_signature(ss58: str, message: bytes, signature: bytes) -> bool:
    """Whether ``signature`` over ``message`` was made by the key behind ``ss58``.

    A malformed address or signature is simply "not verified", never an exception, so callers
    can treat hostile input uniformly.
    """
    if len(signature) != SIGNATURE_BYTES:
        return False
    try:
        return bool(Keypair(ss58_address=ss58).verify(message, signature))
    except ValueError:
        return False


def create_wallet(name: str, hotkey: str, path: str | Path, *, overwrite: bool = False) -> bittensor.Wallet:
    """Create (or reuse) an unencrypted coldkey + hotkey offline, for local networks and tests.

    Existing key files are kept unless ``overwrite``; the mnemonics are not printed.
    """
    import bittensor

    wallet = bittensor.Wallet(name=name, hotkey=hotkey, path=str(Path(path).expanduser()))
    if overwrite or not wallet.coldkeypub_file.exists_on_device():
        wallet.create_new_coldkey(use_password=False, overwrite=overwrite, suppress=True)
    if overwrite or not wallet.hotkey_file.exists_on_device():
        wallet.create_new_hotkey(use_password=False, overwrite=overwrite, suppress=True)
    return wallet
