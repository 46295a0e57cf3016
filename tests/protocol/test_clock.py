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


def test_windows_count_from_the_origin_on_a_chain_far_from_genesis():
    from protocol.devchain_clock import SlotSchedule

    class LateChain(WallClockChain):
        """A head past 5,000,000 with 20 % of slots missed (protocol.devchain_clock)."""

        def __init__(self):
            super().__init__(block_time=1.0, genesis=time.time() - 200.0)
            self.slots = SlotSchedule(self.genesis, 1.0, start_block=5_000_000, missed_slots=0.2, seed=5)

        def block(self) -> int:
            return self.slots.block_at(time.time())

        def block_timestamp(self, block: int) -> float:
            return self.slots.timestamp(block, time.time())

    chain = LateChain()
    clock = WindowClock(chain, blocks_per_window=10, upload_slot_seconds=3.0, origin_block=5_000_050)
    head = chain.block()
    assert 5_000_100 < head < 5_000_200
    assert clock.current_window() == (head - 5_000_050) // 10 < 15  # small: global_step starts small
    assert clock.first_block(0) == 5_000_050 and clock.window_of(5_000_049) == -1
    assert clock.block_opened(clock.current_window()) and not clock.block_opened(clock.current_window() + 1)
    # the slot of a window that closed comes from a produced block's own timestamp
    slot = clock.upload_slot(2)
    assert slot.start == chain.slots.timestamp(5_000_080, time.time())
    before = WindowClock(chain, 10, 3.0, origin_block=head + 1000)
    assert before.current_window() == 0  # the run has not begun: nodes wait at window 0
