"""protocol.devchain_clock and the devchain's time options: a late head, jitter, missed slots."""

from __future__ import annotations

import pytest

from protocol.chain import ChainError
from protocol.devchain import DevChain
from protocol.devchain_clock import SlotSchedule

START = 5_000_000


def test_without_misses_or_jitter_blocks_follow_the_wall_clock_from_the_start_block():
    s = SlotSchedule(genesis=100.0, block_time=12.0, start_block=START)
    assert [s.block_at(t) for t in (0.0, 100.0, 111.9, 112.0, 100.0 + 12 * 40)] == [START, START, START, START + 1, START + 40]
    assert s.timestamp(START + 40, now=0.0) == 100.0 + 12 * 40


def test_missed_slots_and_jitter_are_the_same_in_every_process():
    a = SlotSchedule(0.0, 1.0, START, missed_slots=0.2, jitter=0.4, seed=9)
    b = SlotSchedule(0.0, 1.0, START, missed_slots=0.2, jitter=0.4, seed=9)
    other = SlotSchedule(0.0, 1.0, START, missed_slots=0.2, jitter=0.4, seed=10)
    now = 1000.0
    blocks = range(START + 1, START + 400)
    assert [a.timestamp(x, now) for x in blocks] == [b.timestamp(x, now) for x in blocks]
    assert [a.timestamp(x, now) for x in blocks] != [other.timestamp(x, now) for x in blocks]
    produced = a.block_at(now) - START
    assert 0.7 * 1000 < produced < 0.9 * 1000  # about 20 % of 1000 slots missed


def test_a_block_exists_from_its_own_timestamp_and_timestamps_only_grow():
    s = SlotSchedule(0.0, 1.0, START, missed_slots=0.3, jitter=0.5, seed=3)
    stamps = [s.timestamp(x, now=500.0) for x in range(START, START + 300)]
    assert all(x < y for x, y in zip(stamps, stamps[1:], strict=False))
    gaps = [y - x for x, y in zip(stamps, stamps[1:], strict=False)]
    assert max(gaps) > 1.5  # some slots were missed: the next block came a slot (or more) later
    for offset, t in enumerate(stamps):
        assert s.block_at(t) == START + offset
        assert s.block_at(t - 1e-6) == START + offset - 1 or offset == 0


def test_a_future_block_is_predicted_from_the_head_and_becomes_exact_once_produced():
    s = SlotSchedule(0.0, 1.0, START, missed_slots=0.5, jitter=0.0, seed=1)
    head = s.block_at(50.0)
    predicted = s.timestamp(head + 5, now=50.0)
    assert predicted == s.timestamp(head, now=50.0) + 5.0
    actual = s.timestamp(head + 5, now=500.0)
    assert actual >= predicted  # a missed slot only ever makes a block later


@pytest.mark.parametrize(
    "kwargs", [{"missed_slots": 0.95}, {"missed_slots": -0.1}, {"jitter": 1.0}, {"jitter": -1.0}, {"start_block": -1}]
)
def test_impossible_schedules_are_refused(tmp_path, kwargs):
    with pytest.raises(ChainError, match="block schedule"):
        DevChain.create(tmp_path / "c.db", block_time=1.0, **kwargs)


def test_a_devchain_with_a_late_head_refuses_reads_from_before_its_subnet(tmp_path):
    chain = DevChain.create(tmp_path / "c.db", block_time=0.05, start_block=START, missed_slots=0.2, seed=4)
    assert START <= chain.block() < START + 100
    reopened = DevChain(chain.path)  # another process derives the same schedule from the file
    assert reopened.block_timestamp(START + 3) == chain.block_timestamp(START + 3)
    assert chain.metagraph(START).block == START
    with pytest.raises(ChainError, match="does not exist at block 0"):
        chain.metagraph(0)
    with pytest.raises(ChainError, match="does not exist"):
        chain.commitments(START - 1)
