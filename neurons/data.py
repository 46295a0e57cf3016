"""Which token samples a node trains or evaluates on, derived the same way on every node.

A *sample* is ``seq_len`` consecutive tokens of one shard (documents run across sample edges, as
in any pre-training stream). The tail ``HELDOUT_FRACTION`` of every shard's tokens is held out:
training and the validators' random pool never draw from it, the fixed evaluation set only does.
The split is made in tokens, so it does not move when ``seq_len`` changes.

Sample choice uses a keyed pseudo-random permutation of the sample indices (a small Feistel network
over blake2b with cycle walking): any position of the permutation is computed on its own, with no
library RNG whose stream could change between versions, and distinct positions never collide.

- ``assigned_batches``: keyed by (seed, window). Miner ``uid`` takes positions
  ``uid, uid + UID_STRIDE, uid + 2·UID_STRIDE, ...``, so miners' data within a window is disjoint
  (until the pool wraps) and the first k samples of a miner do not depend on how many it asked for
  — a validator asking for 2 batches gets the first 2 batches that miner trained on.
- ``random_batches``: keyed by a validator's private secret and the window; a miner cannot predict it,
  and it leaves out every registered miner's assignment of that window (``Assignments``), so no
  miner can have trained on it: the unique-data test compares an update on data its miner was
  given against data nobody was given.
- ``heldout_batches``: evenly spaced samples of the held-out split, identical every time.
"""

from __future__ import annotations

import bisect
import functools
import hashlib
import itertools
import logging
from collections.abc import Collection
from dataclasses import dataclass
from typing import Literal

import numpy as np
import torch

from neurons.shards import TokenShards

HELDOUT_FRACTION = 0.02
UID_STRIDE = 256  # bittensor subnets hold at most 256 uids; disjoint positions for each of them
_FEISTEL_ROUNDS = 6

Split = Literal["train", "heldout"]


class DataError(ValueError):
    """The shards cannot supply what was asked (too small for the split, bad arguments)."""


log = logging.getLogger(__name__)


@dataclass(frozen=True)
class SampleSpace:
    """The samples of one split at one ``seq_len``: a global sample index maps to (shard, token start)."""

    shards: TokenShards
    seq_len: int
    split: Split
    starts: tuple[int, ...]  # per shard: first token of this split
    cumulative: tuple[int, ...]  # per shard: samples in shards before it, plus a final total

    @classmethod
    def build(cls, shards: TokenShards, seq_len: int, split: Split) -> SampleSpace:
        if seq_len <= 0:
            raise DataError(f"seq_len must be positive, got {seq_len}")
        starts, counts = [], []
        for i in range(len(shards)):
            n = shards.index.shards[i].n_tokens
            cut = n - int(np.ceil(n * HELDOUT_FRACTION))
            lo, hi = (0, cut) if split == "train" else (cut, n)
            starts.append(lo)
            counts.append((hi - lo) // seq_len)
        cumulative = tuple(int(c) for c in np.concatenate([[0], np.cumsum(counts)]))
        if cumulative[-1] == 0:
            raise DataError(f"shards at {shards.directory} hold no {split} samples of {seq_len} tokens")
        return cls(shards, seq_len, split, tuple(starts), cumulative)

    def __len__(self) -> int:
        return self.cumulative[-1]

    def sample(self, index: int) -> np.ndarray:
        if not 0 <= index < len(self):
            raise DataError(f"sample {index} outside [0, {len(self)})")
        shard = bisect.bisect_right(self.cumulative, index) - 1
        start = self.starts[shard] + (index - self.cumulative[shard]) * self.seq_len
        return np.asarray(self.shards.tokens(shard)[start : start + self.seq_len], dtype=np.int64)

    def batches(self, indices: list[int], batch_size: int) -> list[torch.Tensor]:
        """Group samples in order into int64 tensors of ``[batch_size, seq_len]``."""
        if batch_size <= 0 or len(indices) % batch_size:
            raise DataError(f"{len(indices)} samples do not split into batches of {batch_size}")
        rows = np.stack([self.sample(i) for i in indices])
        return list(torch.from_numpy(rows).split(batch_size))


def permuted_index(position: int, size: int, key: bytes) -> int:
    """Position ``position`` of a keyed pseudo-random permutation of ``range(size)``."""
    if not 0 <= position < size:
        raise DataError(f"position {position} outside [0, {size})")
    half = max(1, ((size - 1).bit_length() + 1) // 2)
    mask = (1 << half) - 1
    x = position
    while True:  # cycle walking: a permutation of [0, 4^half) restricted to [0, size)
        left, right = x >> half, x & mask
        for round_no in range(_FEISTEL_ROUNDS):
            digest = hashlib.blake2b(
                right.to_bytes(8, "little"), key=key[:64], person=round_no.to_bytes(16, "little"), digest_size=8
            ).digest()
            left, right = right, left ^ (int.from_bytes(digest, "little") & mask)
        x = (left << half) | right
        if x < size:
            return x


def _key(*parts: bytes) -> bytes:
    return hashlib.blake2b(b"\x00".join(parts), digest_size=32).digest()


def _count(n_batches: int, batch_size: int) -> int:
    if n_batches <= 0 or batch_size <= 0:
        raise DataError(f"need positive n_batches and batch_size, got {n_batches} and {batch_size}")
    return n_batches * batch_size


def assigned_indices(space: SampleSpace, seed: int, uid: int, window: int, count: int) -> list[int]:
    """Training-sample indices assigned to ``uid`` in ``window`` (the first ``count`` of them).

    Two-level, so a window's assignments stay in a few shards: the window's key orders the shards,
    and position ``p`` falls in the shard where ``p`` lands in that order, at a keyed position
    inside it. Every miner's positions lie in ``[0, UID_STRIDE × count)``, so all of a window's
    assignments come from the first shards of that window's order (a miner fetches those, not the
    corpus: ``neurons.dataset``), and the order changes every window. With one shard this is the
    plain keyed permutation.
    """
    if uid < 0 or window < 0:
        raise DataError(f"uid and window must be non-negative, got {uid} and {window}")
    key = _key(b"tessera-assign", seed.to_bytes(16, "little", signed=True), window.to_bytes(8, "little"))
    order = _ShardOrder.build(space, key)
    return [order.index((uid + j * UID_STRIDE) % len(space)) for j in range(count)]


@dataclass(frozen=True)
class _ShardOrder:
    """The shards of a ``SampleSpace`` in one window's keyed order (see ``assigned_indices``)."""

    space: SampleSpace
    key: bytes
    shards: tuple[int, ...]  # shard ids in this window's order (only those holding samples)
    ends: tuple[int, ...]  # positions covered by the shards up to and including each

    @classmethod
    @functools.lru_cache(maxsize=16)  # noqa: B019 -- few live (space, window) pairs; a validator asks per uid
    def build(cls, space: SampleSpace, key: bytes) -> _ShardOrder:
        counts = np.diff(space.cumulative)
        n = len(counts)
        shard_key = _key(b"tessera-shard-order", key)
        shards = [s for s in (permuted_index(k, n, shard_key) for k in range(n)) if counts[s] > 0]
        return cls(space, key, tuple(shards), tuple(int(e) for e in np.cumsum([counts[s] for s in shards])))

    def index(self, position: int) -> int:
        k = bisect.bisect_right(self.ends, position)
        shard = self.shards[k]
        local = position - (self.ends[k - 1] if k else 0)
        size = self.space.cumulative[shard + 1] - self.space.cumulative[shard]
        return self.space.cumulative[shard] + permuted_index(local, size, self.key)


def assigned_batches(
    shards: TokenShards, seed: int, uid: int, window: int, n_batches: int, batch_size: int, seq_len: int
) -> list[torch.Tensor]:
    """The batches miner ``uid`` trains on in ``window``; every node computes the same ones."""
    space = SampleSpace.build(shards, seq_len, "train")
    return space.batches(assigned_indices(space, seed, uid, window, _count(n_batches, batch_size)), batch_size)


@dataclass(frozen=True)
class Assignments:
    """The samples miners were given in a window: the first ``count`` of each uid in ``uids``
    under the network ``seed`` (a miner trains ``inner_steps × batch_size`` of them)."""

    seed: int
    uids: Collection[int]
    count: int

    def indices(self, space: SampleSpace, window: int) -> set[int]:
        return {i for uid in self.uids for i in assigned_indices(space, self.seed, uid, window, self.count)}


def random_batches(
    shards: TokenShards,
    secret: bytes,
    window: int,
    n_batches: int,
    batch_size: int,
    seq_len: int,
    exclude: Assignments | None = None,
) -> list[torch.Tensor]:
    """Training-split batches chosen by a validator's private ``secret``; unpredictable to miners.

    Samples in ``exclude`` (the window's assignments) are skipped: the pool is the secret
    permutation's order with them left out, so it is still fixed by (secret, window, miners).
    When the assignments cover nearly the whole split (many registered uids on a small corpus:
    anyone can register), the pool is topped up with assigned samples in the same secret order
    and a warning says so: a weaker test for a window, never a validator that stops."""
    if len(secret) < 16:
        raise DataError("the validator secret must be at least 16 bytes to be unguessable")
    space = SampleSpace.build(shards, seq_len, "train")
    key = _key(b"tessera-random", secret, window.to_bytes(8, "little"))
    count = _count(n_batches, batch_size)
    if count > len(space):
        raise DataError(f"the training split has {len(space)} samples of {seq_len} tokens; asked for {count}")
    taken = exclude.indices(space, window) if exclude is not None else set()
    order = (permuted_index(position, len(space), key) for position in range(len(space)))
    if count <= len(space) - len(taken):
        chosen = list(itertools.islice((i for i in order if i not in taken), count))
    else:
        log.warning("window %d: only %d of %d training samples are unassigned; the random pool takes %d "
                    "assigned ones (a larger corpus avoids this)", window, len(space) - len(taken), len(space),
                    count - (len(space) - len(taken)))
        ordered = list(order)
        chosen = ([i for i in ordered if i not in taken] + [i for i in ordered if i in taken])[:count]
    return space.batches(chosen, batch_size)


def heldout_batches(shards: TokenShards, n_batches: int, batch_size: int, seq_len: int) -> list[torch.Tensor]:
    """The fixed evaluation set: evenly spaced samples of the held-out split."""
    space = SampleSpace.build(shards, seq_len, "heldout")
    count = _count(n_batches, batch_size)
    if count > len(space):
        raise DataError(f"held-out split has {len(space)} samples of {seq_len} tokens; asked for {count}")
    return space.batches([k * len(space) // count for k in range(count)], batch_size)
