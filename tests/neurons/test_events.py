"""The per-window event log: what a node appends is what a reader gets back, torn tails skipped."""

from __future__ import annotations

import json
import math
from dataclasses import asdict

from hypothesis import given, settings
from hypothesis import strategies as st

from neurons.events import EventLog, WindowRecord, read_event_log, read_records


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


HOSTILE_LINES = [
    b"[" * 100_000,  # deep nesting
    b'{"node": ' + b"{" * 5000,
    b"\xff\xfe not utf-8",
    b"null",
    b"[]",
    b"42",
    b'"a string"',
    b'{"node": "miner-1"}',  # missing fields
    json.dumps({**asdict(_record(5)), "window": "5"}).encode(),  # wrong type
    json.dumps({**asdict(_record(5)), "window": 5.0}).encode(),
    json.dumps({**asdict(_record(5)), "uid": True}).encode(),
    json.dumps({**asdict(_record(5)), "gathered": "1,2"}).encode(),
    json.dumps({**asdict(_record(5)), "payload_bytes": {"x": 3}}).encode(),
    json.dumps({**asdict(_record(5)), "scores": {"1": "high"}}).encode(),
    json.dumps({**asdict(_record(5)), "surprise": 1}).encode(),
    json.dumps({**asdict(_record(5)), "window": 1}).replace('"window": 1', '"window": 1' + "0" * 5000).encode(),
    json.dumps({**asdict(_record(5)), "node": "\ud800"}).encode(),  # escaped lone surrogate
    b" " * 10 + b"{" + b"x" * (5 << 20) + b"}",  # over the line cap
]


def test_hostile_lines_are_skipped_and_reported_and_good_ones_kept(tmp_path):
    log = EventLog(tmp_path / "events.jsonl")
    log.append(_record(0))
    with log.path.open("ab") as fh:
        for line in HOSTILE_LINES:
            fh.write(line + b"\n")
    log.append(_record(1, loss=float("nan")))  # a diverged loss is a valid observation

    contents = read_event_log(log.path)
    assert [r["window"] for r in contents.records] == [0, 1]
    assert math.isnan(contents.records[1]["loss"])
    assert [s.line for s in contents.skipped] == list(range(2, 2 + len(HOSTILE_LINES)))
    assert all(s.problem for s in contents.skipped)
    assert [r["window"] for r in read_records(log.path)] == [0, 1]


def test_records_missing_optional_fields_read_with_their_defaults(tmp_path):
    path = tmp_path / "events.jsonl"
    minimal = {"node": "v-0", "role": "validator", "uid": 0, "window": 2, "fingerprint": "ab", "gathered": []}
    path.write_text(json.dumps(minimal) + "\n")
    assert read_records(path) == [json.loads(json.dumps(asdict(WindowRecord(**minimal))))]


@settings(max_examples=200, deadline=None)
@given(lines=st.lists(st.binary(max_size=200), max_size=5))
def test_arbitrary_bytes_never_raise(tmp_path_factory, lines):
    path = tmp_path_factory.mktemp("fuzz") / "events.jsonl"
    path.write_bytes(b"\n".join(lines))
    contents = read_event_log(path)
    assert all(isinstance(r, dict) for r in contents.records)


JSONISH = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats() | st.text(st.characters(exclude_categories=()), max_size=6),
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=12), inner, max_size=3),
    max_leaves=15,
)


@settings(max_examples=200, deadline=None)
@given(changes=st.dictionaries(st.sampled_from(sorted(asdict(_record(0)))) | st.text(max_size=5), JSONISH, max_size=4))
def test_arbitrary_field_values_read_as_records_or_are_skipped(tmp_path_factory, changes):
    path = tmp_path_factory.mktemp("fuzz") / "events.jsonl"
    path.write_text(json.dumps({**asdict(_record(0)), **changes}) + "\n")
    contents = read_event_log(path)
    assert len(contents.records) + len(contents.skipped) == 1


def test_a_record_the_reader_would_refuse_is_flagged_when_written(tmp_path, caplog):
    log = EventLog(tmp_path / "events.jsonl")
    with caplog.at_level("WARNING"):
        log.append(_record(0, uploaded_bytes=12.5))  # a float where the schema says int
    assert "will not read back" in caplog.text
    assert read_records(log.path) == []
