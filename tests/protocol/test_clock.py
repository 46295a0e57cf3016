from __future__ import annotations

import threading
import time

import pytest

from protocol.chain import Chain, Metagraph
from protocol.clock import UploadSlot, WindowClock, first_block, upload_slot, wait_for_block, window_of


class WallClockChain(Chain):
    """Blocks from the wall clock, counting how often the chain is polled."""

    netuid = 1

    def __init__(self, block_time: float, genesis: float | None = None):
        self._bt = block_time
        self.genesis = time.time() if genesis is None else genesis
        self.polls = 0

    def block(self) -> int:
        self.polls += 1
        return int((time.time() - self.genesis) // self._bt)

    def block_timestamp(self, block: int) -> float:
        return self.genesis + block * self._bt

    def block_time(self) -> float:
        return self._bt

    def metagraph(self, block=None) -> Metagraph:
        return Metagraph(self.netuid, 0, ())

    def commitments(self, block=None):
        return {}

    def commit(self, signer, data):
        raise NotImplementedError

    def set_weights(self, signer, weights, version_key=0):
        raise NotImplementedError

    def weights_policy(self, uid):
        raise NotImplementedError

    def is_registered(self, hotkey):
        return False


def test_window_arithmetic():
    assert [window_of(b, 10) for b in (0, 9, 10, 25)] == [0, 0, 1, 2]
    assert first_block(3, 10) == 30
    assert all(window_of(first_block(w, 7), 7) == w for w in range(50))


def test_upload_slot_opens_with_the_next_window_on_chain_time():
    chain = WallClockChain(block_time=12.0, genesis=1000.0)
    slot = upload_slot(chain, window=4, blocks_per_window=10, slot_seconds=30.0)
    assert slot == UploadSlot(1000.0 + 50 * 12.0, 1000.0 + 50 * 12.0 + 30.0)
    assert slot.contains(slot.start) and slot.contains(slot.end) and not slot.contains(slot.end + 0.001)
    start, end = WindowClock(chain, 10, 30.0).upload_slot(4)
    assert (start, end) == slot


def test_wait_for_block_sleeps_instead_of_spinning():
    chain = WallClockChain(block_time=0.05)
    target = chain.block() + 4
    started = time.monotonic()
    assert wait_for_block(chain, target)
    elapsed = time.monotonic() - started
    assert chain.block() >= target
    assert 0.1 <= elapsed < 2.0
    assert chain.polls < 15  # a few polls per block at most, never a busy loop


def test_stop_event_ends_a_long_wait_promptly():
    chain = WallClockChain(block_time=10.0)
    stop = threading.Event()
    threading.Timer(0.1, stop.set).start()
    started = time.monotonic()
    assert wait_for_block(chain, chain.block() + 500, stop) is False
    assert time.monotonic() - started < 1.0


def test_clock_refuses_nonsense_settings():
    with pytest.raises(ValueError):
        WindowClock(WallClockChain(1.0), 0, 1.0)
    with pytest.raises(ValueError):
        WindowClock(WallClockChain(1.0), 10, 0.0)
