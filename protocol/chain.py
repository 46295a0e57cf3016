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


class RateLimitedError(ChainError):
    """The chain refused a write because the same call was made too recently.

    ``retry_at`` is the first block at which it would be accepted, when the backend knows it."""

    def __init__(self, message: str, retry_at: int | None = None):
        super().__init__(message)
        self.retry_at = retry_at


class WeightsRefusedError(ChainError):
    """The chain refused a weight vector or its version key (repeating the same call would fail
    again): version key older than the subnet's, fewer weights than ``MinAllowedWeights``, a weight
    above ``MaxWeightsLimit``, unknown uids, no validator permit."""


class OldStateError(ChainError):
    """State at an old block could not be read: the node has pruned it and no archive node
    (``--subtensor.archive-endpoint``) answered for it."""


U16_MAX = 65535


@dataclass(frozen=True)
class WeightsPolicy:
    """The subnet's rules for one validator's next ``set_weights``, read at ``block``.

    ``last_update`` is the block this uid last set (or committed) weights, None if never;
    ``max_weight_share`` is ``MaxWeightsLimit / 65535``: no weight may exceed that share of the
    row's sum; ``version_key`` is the subnet's ``WeightsVersionKey`` (ours must be >= it);
    ``subnet_size`` bounds how many weights a row can have (the chain asks for
    ``min(min_allowed_weights, subnet_size)``)."""

    block: int
    rate_limit: int
    last_update: int | None
    min_allowed_weights: int
    max_weight_share: float
    version_key: int
    commit_reveal: bool
    subnet_size: int

    @property
    def next_allowed_block(self) -> int:
        """First head block at which a weight set passes the rate limit (the SDK's preflight
        rule, ``head - last_update >= rate_limit``)."""
        if self.last_update is None or self.rate_limit <= 0:
            return self.block
        return max(self.block, self.last_update + self.rate_limit)


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
    def set_weights(self, signer: Signer, weights: dict[int, float], version_key: int = 0) -> None:
        """Set this validator's weights (normalized by the chain/backend), under ``version_key``.
        Refusals raise ``RateLimitedError`` or ``WeightsRefusedError``."""

    @abstractmethod
    def weights_policy(self, uid: int) -> WeightsPolicy:
        """The subnet's weight-setting rules and ``uid``'s last update, at the head."""

    @abstractmethod
    def is_registered(self, hotkey: str) -> bool:
        """Whether ``hotkey`` holds a uid on the subnet."""

    def uid_of(self, hotkey: str) -> int | None:
        """The uid ``hotkey`` holds now, or None."""
        return self.metagraph().uid_of(hotkey)
