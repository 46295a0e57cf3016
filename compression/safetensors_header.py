"""The one reader of safetensors headers, for payloads and checkpoints alike.

Both come from other nodes, so every byte is hostile. The layout is

    u64 little-endian header length N | N bytes of UTF-8 JSON header | tensor bytes

and ``read_header`` either returns a header every later step can trust blindly or raises
``HeaderError`` -- for *any* input, never another exception. What it guarantees on return:

* the header length fits both the data and the caller's cap;
* the JSON is UTF-8, nested no deeper than a safetensors header ever is (checked on the raw text
  before parsing, so a ``[[[[...`` bomb never reaches the recursive parser), an object, without
  duplicate keys;
* every string in it (tensor names, dtypes, metadata) can be encoded as UTF-8 again (a JSON
  ``"\\ud800"`` escape decodes to a lone surrogate that crashes ``str.encode`` later, e.g. inside
  a content hash);
* ``__metadata__``, when present, maps str to str;
* every other entry is exactly ``{dtype, shape, data_offsets}`` with a known dtype (or one of the
  caller's), a shape of at most ``MAX_RANK`` non-negative ints, offsets ``[begin, end]`` whose span
  is exactly what dtype and shape need, and the entries tile the body with no overlap, gap or
  trailing byte.
"""

from __future__ import annotations

import json
import math
import re
import struct
from collections.abc import Collection
from dataclasses import dataclass

# bytes per element of every safetensors dtype this reader accepts
DTYPE_SIZES = {
    "BOOL": 1, "U8": 1, "I8": 1, "F8_E5M2": 1, "F8_E4M3": 1,
    "U16": 2, "I16": 2, "F16": 2, "BF16": 2,
    "U32": 4, "I32": 4, "F32": 4,
    "U64": 8, "I64": 8, "F64": 8,
}
METADATA_KEY = "__metadata__"
# header object > entry object > shape / data_offsets list: nothing legitimate nests deeper
MAX_DEPTH = 3
MAX_RANK = 8
_ENTRY_KEYS = frozenset({"dtype", "shape", "data_offsets"})
# A JSON string (possessive, so a long run of escapes cannot make the regex backtrack), and the
# brackets left once strings are gone; used to measure nesting without recursing.
_STRING = re.compile(r'"(?:[^"\\]++|\\.)*+"', re.DOTALL)
_BRACKET = re.compile(r"[\[\]{}]")


class HeaderError(ValueError):
    """The safetensors header is malformed; ``reason`` names the problem in one line."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


@dataclass(frozen=True)
class TensorSpec:
    """One tensor of the header, already checked against the body it lives in."""

    name: str
    dtype: str
    shape: tuple[int, ...]
    begin: int  # offsets relative to the start of the body
    end: int


@dataclass(frozen=True)
class SafetensorsHeader:
    """A checked header: tensors in body order, the metadata (None when absent), where the body starts."""

    tensors: dict[str, TensorSpec]
    metadata: dict[str, str] | None
    body_offset: int

    def blobs(self, data: bytes) -> dict[str, memoryview]:
        """Each tensor's bytes, sliced (without copying) from the ``data`` this header was read from."""
        view = memoryview(data)[self.body_offset :]
        return {name: view[t.begin : t.end] for name, t in self.tensors.items()}


def read_header(data: bytes, max_header_bytes: int, dtypes: Collection[str] | None = None) -> SafetensorsHeader:
    """Parse and check the header of ``data``; ``dtypes`` narrows the accepted dtypes."""
    body_offset, text = _header_text(data, max_header_bytes)
    raw = _parse_json(text)
    metadata = _metadata(raw.pop(METADATA_KEY, None))
    allowed = DTYPE_SIZES.keys() if dtypes is None else set(dtypes) & DTYPE_SIZES.keys()
    specs = [_entry(name, entry, allowed) for name, entry in raw.items()]
    _check_tiling(specs, len(data) - body_offset)
    specs.sort(key=lambda t: (t.begin, t.end))
    return SafetensorsHeader({t.name: t for t in specs}, metadata, body_offset)


def _header_text(data: bytes, max_header_bytes: int) -> tuple[int, str]:
    if len(data) < 8:
        raise HeaderError("shorter than the safetensors length prefix")
    (n,) = struct.unpack("<Q", data[:8])
    if n > len(data) - 8 or n > max_header_bytes:
        raise HeaderError(f"header length {n} is out of bounds ({len(data) - 8} bytes follow, cap {max_header_bytes})")
    try:
        # explicit UTF-8: json.loads(bytes) would also guess UTF-16/32, which safetensors does not allow
        return 8 + n, bytes(data[8 : 8 + n]).decode("utf-8")
    except UnicodeDecodeError as err:
        raise HeaderError(f"header is not UTF-8 (byte {err.start})") from err


def _parse_json(text: str) -> dict:
    _check_depth(text)
    try:
        raw = json.loads(text, object_pairs_hook=_unique_keys, parse_constant=_no_constant)
    except HeaderError:
        raise
    except (ValueError, RecursionError) as err:  # ValueError covers JSONDecodeError and over-long ints
        raise HeaderError(f"header is not JSON: {type(err).__name__}: {str(err)[:80]}") from err
    if not isinstance(raw, dict):
        raise HeaderError(f"header is a JSON {type(raw).__name__}, not an object")
    return raw


def _check_depth(text: str) -> None:
    """Refuse nesting deeper than MAX_DEPTH before the (recursive) JSON parser sees it."""
    depth = 0
    for match in _BRACKET.finditer(_STRING.sub("", text)):
        depth += 1 if match.group() in "[{" else -1
        if depth > MAX_DEPTH:
            raise HeaderError(f"header nests deeper than {MAX_DEPTH} levels")


def _unique_keys(pairs: list[tuple[str, object]]) -> dict:
    out = {}
    for key, value in pairs:
        if key in out:
            raise HeaderError(f"header repeats the key {_show(key)}")
        out[_text(key, "key")] = value
    return out


def _no_constant(name: str) -> None:
    raise HeaderError(f"header holds the non-JSON constant {name}")


def _text(value: str, what: str) -> str:
    """``value`` if it survives a round trip through UTF-8 (lone surrogates do not)."""
    try:
        value.encode("utf-8")
    except UnicodeEncodeError as err:
        raise HeaderError(f"{what} {_show(value)} cannot be encoded as UTF-8") from err
    return value


def _show(value: str) -> str:
    return ascii(value[:40])


def _metadata(meta: object) -> dict[str, str] | None:
    if meta is None:
        return None
    if not isinstance(meta, dict) or not all(isinstance(v, str) for v in meta.values()):
        raise HeaderError(f"{METADATA_KEY} is not a map of strings to strings")
    return {k: _text(v, "metadata value") for k, v in meta.items()}


def _entry(name: str, entry: object, allowed: Collection[str]) -> TensorSpec:
    if not isinstance(entry, dict) or entry.keys() != _ENTRY_KEYS:
        raise HeaderError(f"{_show(name)}: entry is not an object of exactly {sorted(_ENTRY_KEYS)}")
    dtype, shape, offsets = entry["dtype"], entry["shape"], entry["data_offsets"]
    if not isinstance(dtype, str) or dtype not in allowed:
        raise HeaderError(f"{_show(name)}: dtype {_show(str(dtype))} is not one of {sorted(allowed)}")
    if not (isinstance(shape, list) and len(shape) <= MAX_RANK and all(_size(d) for d in shape)):
        raise HeaderError(f"{_show(name)}: shape is not a list of at most {MAX_RANK} non-negative ints")
    if not (isinstance(offsets, list) and len(offsets) == 2 and all(_size(o) for o in offsets)):
        raise HeaderError(f"{_show(name)}: data_offsets is not [begin, end]")
    begin, end = offsets
    if end < begin or end - begin != math.prod(shape) * DTYPE_SIZES[dtype]:
        raise HeaderError(f"{_show(name)}: data_offsets span {end - begin} bytes, {dtype} {shape} needs another size")
    return TensorSpec(name, dtype, tuple(shape), begin, end)


def _size(value: object) -> bool:
    # bool is an int subclass, and True is not a size; 2**63 bounds what safetensors can address
    return type(value) is int and 0 <= value < 1 << 63


def _check_tiling(specs: list[TensorSpec], body_len: int) -> None:
    cursor = 0
    for t in sorted(specs, key=lambda t: (t.begin, t.end)):
        if t.begin != cursor:
            raise HeaderError(f"{_show(t.name)}: tensor data overlaps or leaves gaps")
        cursor = t.end
    if cursor != body_len:
        raise HeaderError(f"tensor data covers {cursor} bytes, the body holds {body_len} (truncated or trailing bytes)")
