"""Decoding every parameter's blob of a payload in one pass (the inverse of ``encoder``).

Blobs come from peers, so everything is checked before it is used: per blob, in name order and
with plain integers, the header (Golomb parameter, a finite value table signed +, +, -, -) and
every stream length that follows from it; the unary stream's length is bounded before a bit of
it is unpacked.
Then the streams of all blobs are read together with a fixed number of tensor operations: fields
are gathered at their bit offsets from one byte tensor, unary terminators are counted per blob
(a byte popcount) and only then located with one ``nonzero``, so no tensor grows with the bits
a peer sets. Each remaining check (zero padding, terminator counts, trailing bytes, positions
inside their chunk and outside its padding, see ``compression.chunking``) runs on all blobs at
once and, when it fails, names the first blob that fails it. Any problem is a :class:`PayloadError`.
"""

from __future__ import annotations

import functools
import math
import struct
from collections.abc import Mapping
from dataclasses import dataclass

import torch

from compression.bitpack import set_bit_positions, unpack_fixed
from compression.chunking import ChunkLayout, ChunkOrigins
from compression.errors import PayloadError
from compression.golomb import MAX_M, golomb_split, run_totals
from compression.sparse import SparseTensor

HEADER_BYTES = 18  # Golomb parameter (uint16) + 4 float32 centroids; see compression.codec
_POPCOUNT = torch.tensor([bin(byte).count("1") for byte in range(256)], dtype=torch.int64)


@dataclass
class _Blob:
    """Where one blob's streams lie in the joined bytes (all offsets in bytes, absolute)."""

    name: str
    layout: ChunkLayout
    start: int
    end: int
    m: int
    table: tuple[float, float, float, float]

    @property
    def n(self) -> int:
        return self.layout.n_kept

    @property
    def high_bits(self) -> int:
        return golomb_split(self.m)[0]

    @property
    def high_start(self) -> int:
        return self.start + HEADER_BYTES

    @property
    def code_start(self) -> int:
        return self.high_start + (self.n * self.high_bits + 7) // 8

    @property
    def low_start(self) -> int:
        return self.code_start + (self.n + 3) // 4


class _Plan:
    """What follows from the layouts alone (the same for every payload of a run), per kept
    value or per chunk, in name-then-chunk order."""

    def __init__(self, layouts: tuple[ChunkLayout, ...]) -> None:
        self.counts = [lay.n_kept for lay in layouts]
        self.runs = torch.tensor(self.counts)
        starts = [sum(self.counts[:i]) for i in range(len(layouts))]
        self.rank = torch.arange(sum(self.counts)) - torch.tensor(starts).repeat_interleave(self.runs)
        chunks = torch.tensor([lay.n_chunks for lay in layouts])
        self.k = torch.cat([lay.chunk_ks() for lay in layouts])
        self.uniform_k = layouts[0].k if all(lay.extra == 0 and lay.k == layouts[0].k for lay in layouts) else None
        self.chunk_end = torch.cumsum(self.k, 0) - 1
        self.chunk_of_value = torch.arange(self.k.numel()).repeat_interleave(self.k)
        self.limit = torch.tensor([lay.chunk_elems for lay in layouts]).repeat_interleave(chunks)
        self.blob_of_chunk = torch.arange(len(layouts)).repeat_interleave(chunks)
        # Where each kept value's chunk begins, all parameters laid end to end.
        sizes = [lay.numel for lay in layouts]
        self.offsets = [sum(sizes[:i]) for i in range(len(layouts))]
        self.origins = ChunkOrigins.of(list(layouts), self.offsets).repeat(self.k)
        # Per kept value: its blob, that blob's offset among all parameters and its value table row.
        self.blob_of_value = torch.arange(len(layouts)).repeat_interleave(self.runs)
        self.value_offset = torch.tensor(self.offsets, dtype=torch.int64)[self.blob_of_value]
        self.table_row = 4 * self.blob_of_value
        # Tiles narrower than a row: chunk order is not flat order, the values need sorting.
        self.needs_sort = any(lay.tile_cols != lay.cols for lay in layouts)
        self.real = _RealExtent.of(layouts, self.k) if any(lay.padded for lay in layouts) else None

    def per_value(self, per_blob: list[int]) -> torch.Tensor | int:
        """A per-blob quantity for every kept value; a plain int when all blobs share it (the
        usual case for large models), which saves materialising it."""
        if all(v == per_blob[0] for v in per_blob):
            return per_blob[0]
        return torch.tensor(per_blob, dtype=torch.int64)[self.blob_of_value]  # a gather: cheaper than repeating


@dataclass(frozen=True)
class _RealExtent:
    """Per kept value of a padded layout: its chunk's real rows and columns, the tile width, and
    the blob it belongs to (values of unpadded layouts are left out)."""

    at: torch.Tensor  # positions of those values among all kept values
    rows: torch.Tensor
    cols: torch.Tensor
    tile_cols: torch.Tensor
    blob: torch.Tensor

    @classmethod
    def of(cls, layouts: tuple[ChunkLayout, ...], k: torch.Tensor) -> _RealExtent:
        rows, cols, tile_cols, blob, padded = [], [], [], [], []
        for i, lay in enumerate(layouts):
            _, _, nr, nc = lay.chunk_extent()
            rows.append(nr)
            cols.append(nc)
            tile_cols.append(torch.full((lay.n_chunks,), lay.tile_cols, dtype=torch.int64))
            blob.append(torch.full((lay.n_chunks,), i, dtype=torch.int64))
            padded.append(torch.full((lay.n_chunks,), lay.padded))
        per_value = [torch.cat(t).repeat_interleave(k) for t in (rows, cols, tile_cols, blob, padded)]
        at = torch.nonzero(per_value.pop()).reshape(-1)
        return cls(at, *(t[at] for t in per_value))

    def in_padding(self, local: torch.Tensor, n_blobs: int) -> torch.Tensor:
        """Bool per blob: one of its in-chunk positions lies in the padding of its chunk."""
        pos = local[self.at]
        bad = (pos // self.tile_cols >= self.rows) | (pos % self.tile_cols >= self.cols)
        out = torch.zeros(n_blobs, dtype=torch.bool)
        return out.index_fill_(0, self.blob[bad], True)


@functools.lru_cache(maxsize=8)
def _plan(layouts: tuple[ChunkLayout, ...]) -> _Plan:
    return _Plan(layouts)


def decode_blobs(blobs: Mapping[str, bytes], layouts: Mapping[str, ChunkLayout]) -> dict[str, SparseTensor]:
    """Sorted flat indices and float32 values per parameter, for blobs in the codec's format."""
    names = sorted(blobs)
    if not names:
        return {}
    unknown = next((n for n in names if n not in layouts), None)
    if unknown is not None:
        raise PayloadError(f"{unknown}: no such parameter in the local model")
    joined = b"".join(blobs[n] for n in names)
    parsed, at = [], 0
    for name in names:
        parsed.append(_read_header(name, layouts[name], joined, at, at + len(blobs[name])))
        at += len(blobs[name])
    data = torch.frombuffer(bytearray(joined + b"\0\0"), dtype=torch.uint8)
    return _Decoding(parsed, data, _plan(tuple(layouts[n] for n in names))).run()


def _read_header(name: str, layout: ChunkLayout, joined: bytes, start: int, end: int) -> _Blob:
    if end - start < HEADER_BYTES:
        raise PayloadError(f"{name}: blob of {end - start} bytes is shorter than its header")
    m = int.from_bytes(joined[start : start + 2], "little")
    if not 1 <= m <= min(MAX_M, layout.chunk_elems):
        raise PayloadError(f"{name}: Golomb parameter {m} out of range")
    table = struct.unpack("<4f", joined[start + 2 : start + HEADER_BYTES])
    if not all(math.isfinite(v) for v in table):
        raise PayloadError(f"{name}: non-finite value table")
    if not (table[0] >= 0 and table[1] >= 0 and table[2] <= 0 and table[3] <= 0):
        # Code bit 1 is the sign (compression.quantize): the encoder's tables are (+, +, -, -).
        raise PayloadError(f"{name}: value table signs are not (+, +, -, -)")
    blob = _Blob(name, layout, start, end, m, table)
    if end <= blob.low_start:
        raise PayloadError(f"{name}: blob of {end - start} bytes is too short for {blob.n} kept values")
    return blob


def _fields(data: torch.Tensor, first_bit: torch.Tensor, width: torch.Tensor | int) -> torch.Tensor:
    """The ``width``-bit fields (MSB first, width <= 16) starting at bit ``first_bit`` of ``data``
    (int64 bytes, two zero bytes past the end)."""
    byte = first_bit >> 3
    word = (data[byte] << 16) | (data[byte + 1] << 8) | data[byte + 2]
    mask = (1 << width) - 1 if isinstance(width, int) else (torch.ones_like(first_bit) << width) - 1
    return (word >> (24 - (first_bit & 7) - width)) & mask


class _Decoding:
    """One payload's blobs decoded together; every per-value tensor is in name-then-chunk order."""

    def __init__(self, blobs: list[_Blob], data: torch.Tensor, plan: _Plan) -> None:
        self.blobs, self.data, self.plan = blobs, data, plan
        self.counts, self.runs, self.rank = plan.counts, plan.runs, plan.rank
        self._per_value = plan.per_value

    def _fail_first(self, bad: torch.Tensor, what: str) -> None:
        """Raise for the first blob flagged in ``bad`` (bool per blob)."""
        if bool(bad.any()):
            raise PayloadError(f"{self.blobs[int(torch.nonzero(bad)[0])].name}: {what}")

    def _check_padding(self, stream_end: list[int], used_bits: list[int], what: str) -> None:
        """The unused low bits of each stream's last byte must be zero."""
        pad = torch.tensor([(-u) % 8 for u in used_bits])
        last = self.data[torch.tensor([max(e - 1, 0) for e in stream_end])].to(torch.int64)
        self._fail_first((pad > 0) & ((last & ((1 << pad) - 1)) != 0), f"{what} padding is not zero")

    def _slices(self, starts: list[int], ends: list[int]) -> torch.Tensor:
        return torch.cat([self.data[a:b] for a, b in zip(starts, ends, strict=True)])

    def _read(self, starts: list[int], widths: list[int]) -> torch.Tensor:
        """Every blob's fixed-width fields (n per blob) from its stream beginning at byte ``starts``.

        When every stream has one width and ends on a byte boundary, the streams laid end to end
        are one packed stream: unpacked eight fields per word. Otherwise each field is gathered
        at its own bit offset."""
        width = widths[0]
        if all(w == width for w in widths) and all(n * width % 8 == 0 for n in self.counts):
            ends = [s + n * width // 8 for s, n in zip(starts, self.counts, strict=True)]
            return unpack_fixed(self._slices(starts, ends), sum(self.counts), width)
        data = self.data.to(torch.int64)
        width_of = self._per_value(widths)
        return _fields(data, self._per_value([8 * s for s in starts]) + self.rank * width_of, width_of)

    def run(self) -> dict[str, SparseTensor]:
        gaps = self._gaps()
        local = self._local_positions(gaps)
        codes = self._read([b.code_start for b in self.blobs], [2] * len(self.blobs))
        self._check_padding([b.low_start for b in self.blobs], [2 * b.n for b in self.blobs], "value code")
        return self._to_sparse(local, codes)

    def _gaps(self) -> torch.Tensor:
        blobs = self.blobs
        m = self._per_value([b.m for b in blobs])
        u = self._per_value([golomb_split(b.m)[1] for b in blobs])
        a = self._read([b.high_start for b in blobs], [b.high_bits for b in blobs])
        self._check_padding([b.code_start for b in blobs], [b.n * b.high_bits for b in blobs], "remainder stream")
        long = (a >= u) & (m > 1) if isinstance(m, torch.Tensor) or m > 1 else torch.zeros_like(a, dtype=torch.bool)
        long_seen = torch.cumsum(long, 0)
        n_long = run_totals(long_seen, self.counts)
        unary_start = [b.low_start + (k + 7) // 8 for b, k in zip(blobs, n_long, strict=True)]
        for b, us in zip(blobs, unary_start, strict=True):
            if not 1 <= b.end - us <= _max_unary_bytes(b.layout, b.m):
                raise PayloadError(f"{b.name}: blob length {b.end - b.start} does not fit {b.n} kept values")
        self._check_padding(unary_start, n_long, "low-bit stream")
        # The j-th long field of a blob takes bit j of its low stream; the streams laid end to
        # end, that is bit (global long rank) + 8 * (stream's byte start) - (longs before it).
        low_bits = unpack_fixed(self._slices([b.low_start for b in blobs], unary_start), 8 * sum(
            us - b.low_start for b, us in zip(blobs, unary_start, strict=True)), 1)
        byte_at, longs_before, shift = 0, 0, []
        for b, us, k in zip(blobs, unary_start, n_long, strict=True):
            shift.append(8 * byte_at - longs_before)
            byte_at, longs_before = byte_at + us - b.low_start, longs_before + k
        low_at = (long_seen - 1 + self._per_value(shift)).clamp(0, max(low_bits.numel() - 1, 0))
        low = low_bits[low_at] if low_bits.numel() else torch.zeros_like(a)
        r = torch.where(long, ((a << 1) | low) - u, a)
        return self._quotients(unary_start) * m + r

    def _quotients(self, unary_start: list[int]) -> torch.Tensor:
        """Zeros before each terminator of every blob's unary stream, checked to code n values."""
        blob_end = [b.end for b in self.blobs]
        stream = self._slices(unary_start, blob_end)
        sizes = [e - s for s, e in zip(unary_start, blob_end, strict=True)]
        # Count each stream's terminators before locating them: the positions tensor is then
        # sized by the layouts (n per blob), not by how many bits a peer chose to set.
        found = run_totals(torch.cumsum(_POPCOUNT[stream.to(torch.int64)], 0), sizes)
        self._fail_first(torch.tensor(found) != self.runs, "unary stream codes the wrong number of gaps")
        ends = set_bit_positions(stream)
        first_bit = torch.tensor([8 * sum(sizes[:i]) for i in range(len(sizes))])
        # Each stream holding its n_i terminators, blob i's are entries first_i..last_i of
        # ``ends``; the last must lie in its stream's final byte (no trailing bytes).
        last = torch.cumsum(self.runs, 0) - 1
        self._fail_first((ends[last] - first_bit) // 8 != torch.tensor(sizes) - 1, "unary stream has trailing bytes")
        # Quotient = distance to the previous terminator minus one; a blob's first is measured
        # from the start of its own stream.
        previous = torch.cat([ends.new_full((1,), -1), ends[:-1]])
        previous[last - self.runs + 1] = first_bit - 1
        return ends - previous - 1

    def _local_positions(self, gaps: torch.Tensor) -> torch.Tensor:
        """In-chunk positions: per chunk, the running sum of gap + 1, minus one."""
        plan = self.plan
        if plan.uniform_k is not None:  # one k: chunks are rows of a matrix
            local = (torch.cumsum((gaps + 1).view(-1, plan.uniform_k), dim=1) - 1).view(-1)
        else:
            steps = torch.cumsum(gaps + 1, 0)
            before = torch.cat([steps.new_zeros(1), steps[plan.chunk_end[:-1]]])
            local = steps - before[plan.chunk_of_value] - 1
        out_of_range = torch.zeros(len(self.blobs), dtype=torch.bool)
        out_of_range.index_fill_(0, plan.blob_of_chunk[local[plan.chunk_end] >= plan.limit], True)
        self._fail_first(out_of_range, "index out of range of its chunk")
        if plan.real is not None:
            # Padding carries no gradient and maps to no coordinate of the tensor.
            self._fail_first(plan.real.in_padding(local, len(self.blobs)), "index in the padding of its chunk")
        return local

    def _to_sparse(self, local: torch.Tensor, codes: torch.Tensor) -> dict[str, SparseTensor]:
        """All blobs at once: one table lookup, one sort. Blob i's flat positions (its offset
        added) lie in [offset_i, offset_i + numel_i), so sorting them all keeps every blob's
        values together and in name order; each blob's tensors are then views of the whole."""
        plan = self.plan
        flat = plan.origins.flat(local)
        tables = torch.tensor([b.table for b in self.blobs], dtype=torch.float32).view(-1)
        values = tables[plan.table_row + codes]
        if plan.needs_sort:
            flat, order = torch.sort(flat)
            values = values[order]
        indices = (flat - plan.value_offset).split(self.counts)
        return {
            b.name: SparseTensor(shape=b.layout.shape, indices=idx, values=vals)
            for b, idx, vals in zip(self.blobs, indices, values.split(self.counts), strict=True)
        }


def _max_unary_bytes(layout: ChunkLayout, m: int) -> int:
    # Gaps of one chunk sum to at most chunk_elems - k, so the quotients to at most that // m
    # (k the smaller per-chunk count, which makes this a bound for every chunk).
    bits = layout.n_kept + layout.n_chunks * ((layout.chunk_elems - layout.k) // m)
    return (bits + 7) // 8
