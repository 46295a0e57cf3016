"""Per-parameter encoding: top-k per chunk, 2-bit values, Golomb-coded positions, one byte blob.

Blob layout (n = kept values, fixed by the shape and the codec parameters; every length but
the unary stream's follows from n, M and the high fields, and the unary length is bounded
before anything is unpacked):

    [0:2]         Golomb parameter M, uint16 little-endian
    [2:18]        centroid table, 4 x float32 little-endian
    [18:18+H]     high remainder fields, c-1 bits each       H = ceil(n * (c-1) / 8)
    [..+C]        2-bit value codes, 4 per byte              C = ceil(n / 4)
    [..+L]        low remainder bits of the long fields      L = ceil(#long / 8)
    [..end]       unary quotients, one terminator per index

Positions are coded per chunk: the first gap is the position itself, later gaps are the
distance to the previous kept position minus one, so each chunk decodes with one cumsum.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from pydantic import BaseModel, ConfigDict, Field

from compression.bitpack import unpack_codes2
from compression.chunking import ChunkLayout, chunk_layout
from compression.encoder import MessageEncoder
from compression.errors import PayloadError
from compression.golomb import MAX_M, GolombError, golomb_decode, golomb_decode_high, high_stream_bytes
from compression.quantize import dequantize
from compression.sparse import SparseTensor, SparseUpdate

HEADER_BYTES = 18


class CodecParams(BaseModel):
    """What a reader needs besides the shapes to decode a message."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    chunk_size: int = Field(default=64, ge=1, le=256)
    topk_per_chunk: int = Field(default=64, ge=1)
    value_bits: int = Field(default=2, ge=2, le=2)
    index_code: str = Field(default="golomb-split", pattern="^golomb-split$")

    def layout(self, shape: tuple[int, ...]) -> ChunkLayout:
        return chunk_layout(shape, self.chunk_size, self.topk_per_chunk)


@dataclass
class CompressedMessage:
    """One peer's compressed pseudo-gradient: per parameter, one uint8 blob (on CPU)."""

    params: CodecParams
    shapes: dict[str, tuple[int, ...]]
    blobs: dict[str, torch.Tensor]

    @property
    def n_kept(self) -> int:
        return sum(self.params.layout(s).n_kept for s in self.shapes.values())


@dataclass
class EncodedTensor:
    """Encoder output for one parameter: the blob plus what error feedback needs."""

    blob: torch.Tensor
    flat_indices: torch.Tensor
    decoded: torch.Tensor


def encode_tensor(t: torch.Tensor, layout: ChunkLayout) -> EncodedTensor:
    """Compress one float tensor. A model's parameters go through one
    :class:`compression.encoder.MessageEncoder` together, which is much faster than one by one."""
    flat = t.detach().reshape(-1).to(torch.float32).contiguous()
    enc = MessageEncoder({"t": layout}, t.device).encode(flat)
    return EncodedTensor(blob=enc.blobs["t"], flat_indices=enc.flat_indices, decoded=enc.decoded)


def _max_unary_bytes(layout: ChunkLayout, m: int) -> int:
    # Gaps of one chunk sum to at most chunk_elems - k, so the quotients to at most that // m.
    bits = layout.n_kept + layout.n_chunks * ((layout.chunk_elems - layout.k) // m)
    return (bits + 7) // 8


def _read_header(blob: torch.Tensor, layout: ChunkLayout, name: str) -> tuple[int, torch.Tensor]:
    if blob.numel() < HEADER_BYTES:
        raise PayloadError(f"{name}: blob of {blob.numel()} bytes is shorter than its header")
    m = int(blob[0].item()) | int(blob[1].item()) << 8
    if not 1 <= m <= min(MAX_M, layout.chunk_elems):
        raise PayloadError(f"{name}: Golomb parameter {m} out of range")
    table = blob[2:HEADER_BYTES].clone().view(torch.float32)
    if not bool(torch.isfinite(table).all()):
        raise PayloadError(f"{name}: non-finite value table")
    return m, table


def _decode_positions(blob: torch.Tensor, layout: ChunkLayout, m: int, name: str) -> torch.Tensor:
    """In-chunk positions (n_chunks, k), strictly increasing and inside the chunk."""
    n = layout.n_kept
    high_end = HEADER_BYTES + high_stream_bytes(n, m)
    low_start = high_end + (n + 3) // 4
    if blob.numel() <= low_start:
        raise PayloadError(f"{name}: blob of {blob.numel()} bytes is too short for {n} kept values")
    try:
        a, n_long = golomb_decode_high(blob[HEADER_BYTES:high_end], n, m)
        unary_start = low_start + (n_long + 7) // 8
        if not 1 <= blob.numel() - unary_start <= _max_unary_bytes(layout, m):
            raise PayloadError(f"{name}: blob length {blob.numel()} does not fit {n} kept values")
        gaps = golomb_decode(a, blob[low_start:unary_start], blob[unary_start:], m)
    except GolombError as err:
        raise PayloadError(f"{name}: {err}") from err
    local = torch.cumsum(gaps.view(layout.n_chunks, layout.k) + 1, dim=1) - 1
    if bool((local[:, -1] >= layout.chunk_elems).any()):
        raise PayloadError(f"{name}: index out of range of its chunk")
    return local


def decode_blob(blob: torch.Tensor, layout: ChunkLayout, name: str = "?") -> SparseTensor:
    """Decode one parameter's blob (uint8, CPU) into sorted flat indices and float32 values."""
    m, table = _read_header(blob, layout, name)
    local = _decode_positions(blob, layout, m, name)
    n = layout.n_kept
    code_start = HEADER_BYTES + high_stream_bytes(n, m)
    code_len = (n + 3) // 4
    codes = unpack_codes2(blob[code_start : code_start + code_len], code_len * 4)
    if bool(codes[n:].any()):
        raise PayloadError(f"{name}: value code padding is not zero")
    values = dequantize(codes[:n], table)
    flat = layout.local_to_flat(local)
    if layout.tile_cols == layout.cols:
        # Tiles span whole rows, so chunk order is already flat order.
        return SparseTensor(shape=layout.shape, indices=flat, values=values)
    flat, order = torch.sort(flat)
    return SparseTensor(shape=layout.shape, indices=flat, values=values[order])


def decode_message(msg: CompressedMessage) -> SparseUpdate:
    """Decode an in-memory message (the miner's own, without going through the wire)."""
    return {
        name: decode_blob(blob, msg.params.layout(msg.shapes[name]), name) for name, blob in msg.blobs.items()
    }
