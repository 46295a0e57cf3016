"""The devchain's block production: a late head, block-time jitter and missed slots, the same in
every process.

A real Aura chain has a slot every ``block_time`` seconds; the slot's author may miss it (no
block, the next one is a slot later) and stamps the block with its own clock a little after the
slot starts. The devchain reproduces that without a block producer: slot ``s`` starts at
``genesis + s x block_time``; it is missed when a seeded hash of ``s`` falls below
``missed_slots``, else its block's timestamp is the slot start plus a seeded jitter in
``[0, jitter)``. Every process that opens the file derives the same blocks and timestamps from
(genesis, block_time, seed), so they agree on the chain without talking to each other.

Block numbers start at ``start_block`` (the block at genesis, slot 0, never missed), so a test
chain can have a head around 5,000,000 as finney does, with the subnet registered there.

A block not produced yet has no timestamp; ``timestamp`` then returns the time it is expected at if
no further slot is missed (head's timestamp + one block time per block), which is what a node
can sleep on but never judge by (``protocol.clock``).
"""

from __future__ import annotations

import bisect
import hashlib
import math
from dataclasses import dataclass, field

MAX_MISSED_SLOTS = 0.9  # more than this and a "chain" barely makes blocks


def _unit(seed: int, tag: str, slot: int) -> float:
    """A number in [0, 1) fixed by (seed, tag, slot)."""
    digest = hashlib.blake2b(f"{seed}:{tag}:{slot}".encode(), digest_size=8).digest()
    return int.from_bytes(digest, "big") / 2**64


@dataclass
class SlotSchedule:
    genesis: float
    block_time: float
    start_block: int = 0
    missed_slots: float = 0.0
    jitter: float = 0.0
    seed: int = 0
    # produced slots after slot 0, ascending, extended on demand (the scan is deterministic)
    _produced: list[int] = field(default_factory=list, repr=False)
    _scanned: int = field(default=0, repr=False)

    def __post_init__(self) -> None:
        if not 0.0 <= self.missed_slots <= MAX_MISSED_SLOTS:
            raise ValueError(f"missed_slots must be in [0, {MAX_MISSED_SLOTS}], got {self.missed_slots}")
        if not 0.0 <= self.jitter < self.block_time:
            raise ValueError(f"jitter must be in [0, block_time={self.block_time}), got {self.jitter}")
        if self.start_block < 0:
            raise ValueError(f"start_block must be >= 0, got {self.start_block}")

    @property
    def simple(self) -> bool:
        return self.missed_slots == 0.0 and self.jitter == 0.0

    def produced(self, slot: int) -> bool:
        return slot == 0 or _unit(self.seed, "missed", slot) >= self.missed_slots

    def slot_time(self, slot: int) -> float:
        """The timestamp the block of ``slot`` carries (if the slot is produced)."""
        offset = 0.0 if slot == 0 or self.jitter == 0.0 else self.jitter * _unit(self.seed, "jitter", slot)
        return self.genesis + slot * self.block_time + offset

    def _scan_to(self, slot: int) -> None:
        while self._scanned < slot:
            self._scanned += 1
            if self.produced(self._scanned):
                self._produced.append(self._scanned)

    def _slot_of(self, k: int) -> int:
        """The slot of the k-th block after the start block (k >= 1)."""
        while len(self._produced) < k:
            # about k / (1 - missed) slots hold k blocks; scan in chunks
            self._scan_to(self._scanned + max(64, k - len(self._produced)))
        return self._produced[k - 1]

    def block_at(self, now: float) -> int:
        """The head at unix time ``now``: blocks whose timestamp has come."""
        slot = math.floor((now - self.genesis) / self.block_time)
        if slot <= 0:
            return self.start_block
        if self.simple:
            return self.start_block + slot
        self._scan_to(slot)
        count = bisect.bisect_right(self._produced, slot)
        if count and self._produced[count - 1] == slot and self.slot_time(slot) > now:
            count -= 1  # this slot's block is stamped a little later than the slot starts
        return self.start_block + count

    def timestamp(self, block: int, now: float) -> float:
        """``block``'s timestamp if it exists at ``now``, else when it is expected."""
        k = block - self.start_block
        if k <= 0:
            return self.genesis + k * self.block_time  # blocks before the devchain's start
        if self.simple:
            return self.genesis + k * self.block_time
        head = self.block_at(now)
        if block <= head:
            return self.slot_time(self._slot_of(k))
        head_time = self.timestamp(head, now)
        return head_time + (block - head) * self.block_time
