"""The window clock: windows from block numbers, upload slots from chain block timestamps.

Windows count from the run's origin (``protocol.origin``): ``window = (block - start_block) //
blocks_per_window``, so window 0 begins at the origin block however far the chain's head is from
genesis, and ``global_step`` (``window x inner_steps``) starts small. A payload for window w
counts only if the storage server's LastModified lies in ``[t(first block of w+1), t(first block
of w+1) + slot_seconds]``, where ``t`` is the chain's own timestamp of a block that exists, never
a prediction and never a local clock: ``block_opened`` tells whether it exists yet.

Nodes wait for wall-clock instants themselves (``neurons.node``); ``wait_for_block`` is for
callers that wait on the chain directly (the devchain's tests). It sleeps until the block's
expected time (from the chain's block time), then re-checks the chain; it never spins, and a
``threading.Event`` ends the wait at once.
"""

from __future__ import annotations

import threading
import time
from typing import NamedTuple

from protocol.chain import Chain

# Never sleep less than this between chain polls, so a late block cannot turn into a busy loop.
_MIN_POLL_SECONDS = 0.02


class UploadSlot(NamedTuple):
    start: float
    end: float

    def contains(self, timestamp: float) -> bool:
        return self.start <= timestamp <= self.end


def window_of(block: int, blocks_per_window: int, origin_block: int = 0) -> int:
    """The window ``block`` falls in; negative before the origin."""
    return (block - origin_block) // blocks_per_window


def first_block(window: int, blocks_per_window: int, origin_block: int = 0) -> int:
    return origin_block + window * blocks_per_window


def upload_slot(
    chain: Chain, window: int, blocks_per_window: int, slot_seconds: float, origin_block: int = 0
) -> UploadSlot:
    """The slot in which window ``window``'s payloads must land: it opens when w+1 begins."""
    opens = chain.block_timestamp(first_block(window + 1, blocks_per_window, origin_block))
    return UploadSlot(opens, opens + slot_seconds)


def wait_for_block(chain: Chain, block: int, stop: threading.Event | None = None) -> bool:
    """Sleep until the chain reaches ``block``. False if ``stop`` was set first."""
    stop = stop or threading.Event()
    block_time = chain.block_time()
    poll_floor = max(_MIN_POLL_SECONDS, block_time / 20)
    while not stop.is_set():
        current = chain.block()
        if current >= block:
            return True
        # Expected arrival from the current block's timestamp; re-check the chain on waking.
        expected = chain.block_timestamp(current) + (block - current) * block_time
        stop.wait(max(poll_floor, expected - time.time()))
    return False


class WindowClock:
    """The clock bound to one chain and one network's window settings."""

    def __init__(self, chain: Chain, blocks_per_window: int, upload_slot_seconds: float, origin_block: int = 0):
        if blocks_per_window <= 0:
            raise ValueError("blocks_per_window must be positive")
        if upload_slot_seconds <= 0:
            raise ValueError("upload_slot_seconds must be positive")
        if origin_block < 0:
            raise ValueError("origin_block must be >= 0")
        self.chain = chain
        self.blocks_per_window = blocks_per_window
        self.upload_slot_seconds = upload_slot_seconds
        self.origin_block = origin_block

    def window_of(self, block: int) -> int:
        return window_of(block, self.blocks_per_window, self.origin_block)

    def first_block(self, window: int) -> int:
        return first_block(window, self.blocks_per_window, self.origin_block)

    def current_window(self) -> int:
        """The window the chain's head is in; 0 before the origin (the run has not begun)."""
        return max(0, self.window_of(self.chain.block()))

    def block_opened(self, window: int) -> bool:
        """Whether the block that opens ``window`` exists, so its timestamp is real."""
        return self.chain.block() >= self.first_block(window)

    def upload_slot(self, window: int) -> UploadSlot:
        """Window ``window``'s slot; exact only once ``block_opened(window + 1)``, before that
        it is the backend's prediction (good for sleeping, never for judging or uploading)."""
        return upload_slot(self.chain, window, self.blocks_per_window, self.upload_slot_seconds, self.origin_block)

    def window_start_time(self, window: int) -> float:
        return self.chain.block_timestamp(self.first_block(window))
