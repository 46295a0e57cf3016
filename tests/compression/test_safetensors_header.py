"""The one safetensors header reader: real files read back exactly; anything else is a HeaderError."""

from __future__ import annotations

import json
import struct

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from safetensors.torch import save

from compression.safetensors_header import MAX_DEPTH, HeaderError, read_header

CAP = 1 << 16


def _file(header: object, body: bytes = b"", raw: bytes | None = None) -> bytes:
    text = raw if raw is not None else json.dumps(header).encode()
    return struct.pack("<Q", len(text)) + text + body


def test_reads_what_the_safetensors_library_writes():
    tensors = {"b": torch.arange(6, dtype=torch.float32).view(2, 3), "a": torch.ones(4, dtype=torch.bfloat16)}
    data = save(tensors, metadata={"k": "v"})
    header = read_header(data, CAP)

    assert header.metadata == {"k": "v"}
    assert {n: (t.dtype, t.shape) for n, t in header.tensors.items()} == {"a": ("BF16", (4,)), "b": ("F32", (2, 3))}
    blobs = header.blobs(data)
    assert bytes(blobs["b"]) == tensors["b"].numpy().tobytes()
    assert header.body_offset + sum(len(b) for b in blobs.values()) == len(data)


def test_no_metadata_and_no_tensors_is_a_valid_empty_header():
    header = read_header(_file({}), CAP)
    assert header.tensors == {} and header.metadata is None


def test_dtypes_can_be_narrowed():
    data = _file({"x": {"dtype": "F32", "shape": [1], "data_offsets": [0, 4]}}, b"\0" * 4)
    assert read_header(data, CAP).tensors["x"].dtype == "F32"
    with pytest.raises(HeaderError, match="dtype"):
        read_header(data, CAP, dtypes=("U8",))


def _entry(dtype="U8", shape=(4,), offsets=(0, 4)) -> dict:
    return {"dtype": dtype, "shape": list(shape) if isinstance(shape, tuple) else shape, "data_offsets": offsets}


@pytest.mark.parametrize(
    ("data", "reason"),
    [
        (b"", "length prefix"),
        (b"\x01" * 7, "length prefix"),
        (struct.pack("<Q", 1 << 63) + b"{}", "out of bounds"),
        (_file(None, raw=b"{}" + b" " * CAP), "out of bounds"),  # within the data, beyond the cap
        (_file(None, raw=b'{"\xff": 1}'), "UTF-8"),
        (_file(None, raw='{"a": 1}'.encode("utf-16")), "UTF-8"),
        (_file(None, raw=b"{nope"), "not JSON"),
        (_file(None, raw=b"[]"), "not an object"),
        (_file(None, raw=b"1" * 5000), "not JSON"),  # an int longer than Python will parse
        (_file(None, raw=b'{"a": NaN}'), "constant"),
        (_file(None, raw=b"[" * 60_000), "nests deeper"),
        (_file(None, raw=b'{"a": {"b": [[1]]}}'), "nests deeper"),
        (_file(None, raw=b'{"a": {"b": [[' + b'"' + b"\\" * 1000 + b'"]]}}'), "nests deeper"),
        (_file(None, raw=b'{"x": 1, "x": 2}'), "repeats"),
        (_file(None, raw=b'{"\\ud800": {}}'), "UTF-8"),
        (_file({"__metadata__": "x"}), "__metadata__"),
        (_file({"__metadata__": {"k": 1}}), "__metadata__"),
        (_file(None, raw=b'{"__metadata__": {"k": "\\udc80"}}'), "UTF-8"),
        (_file({"x": [1]}), "not an object"),
        (_file({"x": {**_entry(), "extra": 1}}, b"\0" * 4), "not an object"),
        (_file({"x": _entry(dtype="Q7")}, b"\0" * 4), "dtype"),
        (_file({"x": _entry(dtype=None)}, b"\0" * 4), "dtype"),
        (_file({"x": _entry(shape="4")}, b"\0" * 4), "shape"),
        (_file({"x": _entry(shape=[True, 4])}, b"\0" * 4), "shape"),
        (_file({"x": _entry(shape=[-4])}, b"\0" * 4), "shape"),
        (_file({"x": _entry(shape=[4.0])}, b"\0" * 4), "shape"),
        (_file({"x": _entry(shape=[1] * 9 + [4])}, b"\0" * 4), "shape"),
        (_file({"x": _entry(offsets=[0])}, b"\0" * 4), "data_offsets"),
        (_file({"x": _entry(offsets=[0, 4.0])}, b"\0" * 4), "data_offsets"),
        (_file({"x": _entry(offsets=[0, 1 << 64])}, b"\0" * 4), "data_offsets"),
        (_file({"x": _entry(offsets=[4, 0])}, b"\0" * 4), "span"),
        (_file({"x": _entry(shape=[5])}, b"\0" * 4), "span"),
        (_file({"x": _entry(offsets=[0, 4])}, b"\0" * 5), "trailing"),
        (_file({"x": _entry(offsets=[0, 4])}, b"\0" * 3), "truncated"),
        (_file({"x": _entry(offsets=[1, 5])}, b"\0" * 5), "gaps"),
        (_file({"x": _entry(), "y": _entry()}, b"\0" * 4), "overlaps"),
    ],
)
def test_malformed_headers_are_header_errors_that_say_why(data, reason):
    with pytest.raises(HeaderError, match=reason):
        read_header(data, CAP)


def test_nesting_up_to_the_limit_is_fine_and_strings_do_not_count():
    assert MAX_DEPTH == 3
    text = json.dumps({"__metadata__": {"k": "[[[[{{{{ \\\" ]]]]"}}).encode()
    assert read_header(_file(None, raw=text), CAP).metadata == {"k": '[[[[{{{{ \\" ]]]]'}


def _accepts_or_refuses(data: bytes) -> None:
    try:
        read_header(data, CAP)
    except HeaderError:
        pass


@settings(max_examples=300, deadline=None)
@given(data=st.binary(max_size=512))
def test_arbitrary_bytes_end_in_a_header_or_a_header_error(data):
    _accepts_or_refuses(data)
    _accepts_or_refuses(struct.pack("<Q", len(data)) + data)


# names include lone surrogates: json.dumps writes them as "\\ud800" escapes, as an attacker would
TEXT = st.text(st.characters(exclude_categories=()), max_size=6) | st.sampled_from(["\ud800", "a\udfff"])
JSONISH = st.recursive(
    st.none() | st.booleans() | st.integers(-(1 << 70), 1 << 70) | st.floats() | TEXT,
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(TEXT, inner, max_size=4),
    max_leaves=20,
)
ENTRYISH = st.fixed_dictionaries(
    {"dtype": st.sampled_from(["U8", "F32", "BF16", "X"]) | JSONISH,
     "shape": st.lists(st.integers(-2, 6), max_size=3) | JSONISH,
     "data_offsets": st.lists(st.integers(-2, 40), min_size=2, max_size=2) | JSONISH},
    optional={"more": JSONISH},
)
HEADERISH = st.dictionaries(
    TEXT | st.just("__metadata__"),
    ENTRYISH | JSONISH | st.dictionaries(TEXT, TEXT | JSONISH, max_size=3),
    max_size=4,
)


@settings(max_examples=300, deadline=None)
@given(header=HEADERISH | JSONISH, body=st.binary(max_size=40))
def test_arbitrary_json_headers_end_in_a_header_or_a_header_error(header, body):
    _accepts_or_refuses(_file(header, body))  # json.dumps writes NaN/Infinity too, as a hostile writer may
    raw = json.dumps(header, ensure_ascii=False).encode("utf-8", "surrogatepass")  # raw surrogates: not UTF-8
    _accepts_or_refuses(_file(None, body, raw=raw))


def test_a_valid_header_built_from_parts_is_accepted():
    header = {"__metadata__": {"k": "v"}, "b": _entry(offsets=[4, 8]), "a": _entry(offsets=[0, 4])}
    read = read_header(_file(header, bytes(range(8))), CAP)
    assert list(read.tensors) == ["a", "b"]  # body order
    assert {n: bytes(v) for n, v in read.blobs(_file(header, bytes(range(8)))).items()} == {
        "a": bytes(range(4)), "b": bytes(range(4, 8))}
