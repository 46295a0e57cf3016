"""The published fingerprint record: what a node writes reads back; any other bytes are a typed error."""

from __future__ import annotations

import json

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from protocol.fingerprint_record import MAX_GATHERED, FingerprintRecord, FingerprintRecordError

GOOD = {"window": 7, "fingerprint": "ab" * 16, "gathered": [1, 4, 9], "uid": 3}


def test_round_trip():
    record = FingerprintRecord(**GOOD)
    assert FingerprintRecord.parse(record.to_bytes()) == record
    # any JSON spelling of the same record is the same record (writers need not be canonical)
    assert FingerprintRecord.parse(json.dumps(GOOD, indent=2).encode()) == record


def _with(**changes) -> bytes:
    return json.dumps({**GOOD, **changes}).encode()


@pytest.mark.parametrize(
    "data",
    [
        b"",
        b"\xff\xfe",
        b"[" * 100_000,
        b'{"window": ' + b"[" * 50_000,
        b"[]",
        b"null",
        b'{"window": 7',
        _with(window="7"),
        _with(window=-1),
        _with(window=7.0),
        _with(window=True),
        _with(window=10**400),
        _with(uid=10**5),
        _with(fingerprint="XYZ"),
        _with(fingerprint=""),
        _with(fingerprint="a" * 129),
        _with(fingerprint=["ab"]),
        _with(gathered="1,2"),
        _with(gathered=[1, -2]),
        _with(gathered=[[1]]),
        _with(gathered=list(range(MAX_GATHERED + 1))),
        _with(extra=1),
        json.dumps({k: v for k, v in GOOD.items() if k != "uid"}).encode(),
        b'{"window": 7, "fingerprint": "\\ud800", "gathered": [], "uid": 3}',
        b'{"window": NaN, "fingerprint": "ab", "gathered": [], "uid": 3}',
        b" " * 70_000,  # over the size cap
    ],
)
def test_hostile_records_are_typed_errors(data):
    with pytest.raises(FingerprintRecordError):
        FingerprintRecord.parse(data)


def test_the_size_cap_is_the_callers():
    with pytest.raises(FingerprintRecordError, match="cap"):
        FingerprintRecord.parse(FingerprintRecord(**GOOD).to_bytes(), max_bytes=10)


def _parses_or_refuses(data: bytes) -> None:
    try:
        FingerprintRecord.parse(data)
    except FingerprintRecordError:
        pass


@settings(max_examples=300, deadline=None)
@given(data=st.binary(max_size=256))
def test_arbitrary_bytes_parse_or_are_refused(data):
    _parses_or_refuses(data)


JSONISH = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats() | st.text(st.characters(exclude_categories=()), max_size=8),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=10), inner, max_size=4),
    max_leaves=16,
)


@settings(max_examples=300, deadline=None)
@given(record=st.fixed_dictionaries({}, optional={k: JSONISH | st.just(v) for k, v in GOOD.items()}) | JSONISH)
def test_arbitrary_json_parses_or_is_refused(record):
    _parses_or_refuses(json.dumps(record).encode())
