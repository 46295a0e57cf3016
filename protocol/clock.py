"""The window clock: windows from block numbers, upload slots from chain block timestamps.

``window = block // blocks_per_window``. A payload for window w counts only if the storage
server's LastModified lies in ``[t(first block of w+1), t(first block of w+1) + slot_seconds]``,
where ``t`` is the chain's own block timestamp, never a local clock.

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


def window_of(block: int, blocks_per_window: int) -> int:
    return block // blocks_per_window


def first_block(window: int, blocks_per_window: int) -> int:
    return window * blocks_per_window


def upload_slot(chain: Chain, window: int, blocks_per_window: int, slot_seconds: float) -> UploadSlot:
    """The slot in which window ``window``'s payloads must land: it opens when w+1 begins."""
    opens = chain.block_timestamp(first_block(window + 1, blocks_per_window))
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

    def __init__(self, chain: Chain, blocks_per_window: int, upload_slot_seconds: float):
        if blocks_per_window <= 0:
            raise ValueError("blocks_per_window must be positive")
        if upload_slot_seconds <= 0:
            raise ValueError("upload_slot_seconds must be positive")
        self.chain = chain
        self.blocks_per_window = blocks_per_window
        self.upload_slot_seconds = upload_slot_seconds

    def window_of(self, block: int) -> int:
        return window_of(block, self.blocks_per_window)

    def first_block(self, window: int) -> int:
        return first_block(window, self.blocks_per_window)

    def current_window(self) -> int:
        return self.window_of(self.chain.block())

    def upload_slot(self, window: int) -> UploadSlot:
        return upload_slot(self.chain, window, self.blocks_per_window, self.upload_slot_seconds)

    def window_start_time(self, window: int) -> float:
        return self.chain.block_timestamp(self.first_block(window))
