"""The per-window event log: what a node appends is what a reader gets back, torn tails skipped."""

from __future__ import annotations

import json
from dataclasses import asdict

from neurons.events import EventLog, WindowRecord, read_records


def _record(window: int, **kw) -> WindowRecord:
    return WindowRecord(node="miner-1", role="miner", uid=1, window=window, fingerprint=f"fp{window}", gathered=[1, 2], **kw)


def test_append_then_read_round_trips_every_field(tmp_path):
    log = EventLog(tmp_path / "state" / "events.jsonl")  # the parent is created on demand
    first = _record(3, loss=2.5, payload_bytes={1: 900}, rejected={4: "late"}, stage_seconds={"gather": 0.1})
    second = _record(4, weights={1: 0.75}, scores={1: 0.3}, weights_block=42, replayed=True)
    log.append(first)
    log.append(second)

    records = read_records(log.path)

    # JSON turns int dict keys into strings; everything else comes back as written.
    expected = [json.loads(json.dumps(asdict(r))) for r in (first, second)]
    assert records == expected
    assert [r["window"] for r in records] == [3, 4]
    assert records[1]["replayed"] is True and records[0]["loss"] == 2.5


def test_each_record_is_one_line(tmp_path):
    log = EventLog(tmp_path / "events.jsonl")
    for w in range(3):
        log.append(_record(w))
    lines = log.path.read_text(encoding="utf-8").splitlines()
    assert len(lines) == 3
    assert all(json.loads(line)["window"] == w for w, line in enumerate(lines))


def test_a_torn_last_line_is_skipped(tmp_path):
    log = EventLog(tmp_path / "events.jsonl")
    log.append(_record(0))
    log.append(_record(1))
    whole = json.dumps(asdict(_record(2)), sort_keys=True)
    with log.path.open("a", encoding="utf-8") as fh:
        fh.write(whole[: len(whole) // 2])  # a writer killed mid-line, no newline

    assert [r["window"] for r in read_records(log.path)] == [0, 1]

    # A restarted node reopens the log: its first record must not be glued onto the torn tail.
    EventLog(log.path).append(_record(3))
    assert [r["window"] for r in read_records(log.path)] == [0, 1, 3]

def test_a_missing_file_reads_as_no_records(tmp_path):
    assert read_records(tmp_path / "nope.jsonl") == []
