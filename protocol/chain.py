"""The Chain interface: everything tessera needs from a Bittensor-style chain, and nothing more.

Backends: ``protocol.chain_bittensor`` (the real SDK) and ``protocol.devchain`` (a SQLite file
shared by processes on one machine). Nodes only ever talk to this interface.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass, field

from protocol.signing import Signer


class ChainError(RuntimeError):
    """A chain call failed; the message says which call and why."""


class NotRegisteredError(ChainError):
    """The hotkey has no uid on the subnet."""


@dataclass(frozen=True)
class NeuronInfo:
    uid: int
    hotkey: str
    coldkey: str
    stake: float
    validator_permit: bool
    incentive: float = 0.0
    # weights this neuron has set, as {uid: normalized weight}; empty for miners
    weights: dict[int, float] = field(default_factory=dict)


@dataclass(frozen=True)
class Metagraph:
    netuid: int
    block: int
    neurons: tuple[NeuronInfo, ...]

    def by_uid(self, uid: int) -> NeuronInfo:
        for n in self.neurons:
            if n.uid == uid:
                return n
        raise KeyError(f"uid {uid} not in metagraph at block {self.block}")

    def uid_of(self, hotkey: str) -> int | None:
        for n in self.neurons:
            if n.hotkey == hotkey:
                return n.uid
        return None

    @property
    def uids(self) -> list[int]:
        return [n.uid for n in self.neurons]


class Chain(ABC):
    """Read and write what the subnet keeps on chain. Implementations raise ``ChainError``."""

    netuid: int

    @abstractmethod
    def block(self) -> int:
        """The current (best) block number."""

    @abstractmethod
    def block_timestamp(self, block: int) -> float:
        """Unix time (seconds) at which ``block`` was produced; for a block not yet produced,
        the time it is expected at (head timestamp + remaining blocks x block time)."""

    def block_time(self) -> float:
        """Seconds per block. Backends override; 12 s is Bittensor mainnet's slot."""
        return 12.0

    @abstractmethod
    def metagraph(self, block: int | None = None) -> Metagraph:
        """Neurons with stake and weights as of ``block`` (current block when None)."""

    @abstractmethod
    def commitments(self, block: int | None = None) -> dict[int, str]:
        """Every uid's committed string as of ``block``."""

    @abstractmethod
    def commit(self, signer: Signer, data: str) -> None:
        """Publish ``data`` as this hotkey's commitment on the subnet."""

    @abstractmethod
    def set_weights(self, signer: Signer, weights: dict[int, float]) -> None:
        """Set this validator's weights (normalized by the chain/backend)."""

    @abstractmethod
    def is_registered(self, hotkey: str) -> bool:
        """Whether ``hotkey`` holds a uid on the subnet."""

    def uid_of(self, hotkey: str) -> int | None:
        """The uid ``hotkey`` holds now, or None."""
        return self.metagraph().uid_of(hotkey)
