"""Per-parameter encoding: top-k per chunk, 2-bit values, Rice-coded positions, one byte blob.

Blob layout (all lengths follow from the parameter's shape and the codec parameters, so the
only free length is the unary stream, which is bounded before anything is unpacked):

    [0]           Rice parameter b
    [1:17]        centroid table, 4 x float32 little-endian
    [17:17+R]     remainders, b bits per kept index          R = ceil(n * b / 8)
    [..+C]        2-bit value codes, 4 per byte              C = ceil(n / 4)
    [..end]       unary quotients, one terminator per index

Positions are coded per chunk: the first gap is the position itself, later gaps are the
distance to the previous kept position minus one, so each chunk decodes with one cumsum.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from pydantic import BaseModel, ConfigDict, Field

from compression.bitpack import pack_codes2, unpack_codes2
from compression.chunking import ChunkLayout, chunk_layout
from compression.errors import PayloadError
from compression.quantize import dequantize, quantize
from compression.rice import MAX_RICE_BITS, RiceError, best_rice_parameter, rice_decode, rice_encode
from compression.sparse import SparseTensor, SparseUpdate

HEADER_BYTES = 17


class CodecParams(BaseModel):
    """What a reader needs besides the shapes to decode a message."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    chunk_size: int = Field(default=64, ge=1, le=256)
    topk_per_chunk: int = Field(default=64, ge=1)
    value_bits: int = Field(default=2, ge=2, le=2)
    index_code: str = Field(default="rice-split", pattern="^rice-split$")

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


def select_topk(t: torch.Tensor, layout: ChunkLayout, scratch: torch.Tensor | None = None):
    """Sorted in-chunk positions (n_chunks, k) of the k largest |t| per chunk, and their flat indices."""
    mags = layout.to_chunks(t, out=scratch, absolute=True)
    if mags.dtype == torch.float32:
        # Non-negative IEEE floats order exactly like their bit patterns; integer top-k is faster.
        mags = mags.view(torch.int32)
    local = mags.topk(layout.k, dim=1, sorted=False).indices
    local = local.sort(dim=1).values
    return local, layout.local_to_flat(local)


def encode_tensor(t: torch.Tensor, layout: ChunkLayout, scratch: torch.Tensor | None = None) -> EncodedTensor:
    """Compress one float tensor; ``scratch`` (numel floats) avoids a fresh buffer per call."""
    local, flat = select_topk(t, layout, scratch)
    values = t.reshape(-1)[flat]
    codes, table = quantize(values)
    if not bool(torch.isfinite(table).all()):
        raise ValueError("non-finite values in the tensor to compress")
    gaps = (torch.diff(local, dim=1, prepend=local.new_full((layout.n_chunks, 1), -1)) - 1).reshape(-1)
    b = best_rice_parameter(gaps)
    remainders, unary = rice_encode(gaps, b)
    header = torch.cat([torch.tensor([b], dtype=torch.uint8, device=t.device), table.view(torch.uint8)])
    blob = torch.cat([header, remainders, pack_codes2(codes), unary]).cpu()
    return EncodedTensor(blob=blob, flat_indices=flat, decoded=dequantize(codes, table))


def _max_unary_bytes(layout: ChunkLayout, b: int) -> int:
    # Gaps of one chunk sum to at most chunk_elems - k, so the quotients to at most that >> b.
    bits = layout.n_kept + layout.n_chunks * ((layout.chunk_elems - layout.k) >> b)
    return (bits + 7) // 8


def decode_blob(blob: torch.Tensor, layout: ChunkLayout, name: str = "?") -> SparseTensor:
    """Decode one parameter's blob (uint8, CPU) into sorted flat indices and float32 values."""
    n = layout.n_kept
    if blob.numel() < HEADER_BYTES:
        raise PayloadError(f"{name}: blob of {blob.numel()} bytes is shorter than its header")
    b = int(blob[0].item())
    if b > min(MAX_RICE_BITS, layout.chunk_elems.bit_length()):
        raise PayloadError(f"{name}: Rice parameter {b} out of range")
    table = blob[1:HEADER_BYTES].clone().view(torch.float32)
    if not bool(torch.isfinite(table).all()):
        raise PayloadError(f"{name}: non-finite value table")
    rem_len, code_len = (n * b + 7) // 8, (n + 3) // 4
    unary_len = blob.numel() - HEADER_BYTES - rem_len - code_len
    if not 1 <= unary_len <= _max_unary_bytes(layout, b):
        raise PayloadError(f"{name}: blob length {blob.numel()} does not fit {n} kept values")
    start = HEADER_BYTES + rem_len
    try:
        gaps = rice_decode(blob[HEADER_BYTES:start], blob[start + code_len :], n, b)
    except RiceError as err:
        raise PayloadError(f"{name}: {err}") from err
    local = torch.cumsum(gaps.view(layout.n_chunks, layout.k) + 1, dim=1) - 1
    if bool((local[:, -1] >= layout.chunk_elems).any()):
        raise PayloadError(f"{name}: index out of range of its chunk")
    codes = unpack_codes2(blob[start : start + code_len], code_len * 4)
    if bool(codes[n:].any()):
        raise PayloadError(f"{name}: value code padding is not zero")
    values = dequantize(codes[:n], table)
    flat, order = torch.sort(layout.local_to_flat(local))
    return SparseTensor(shape=layout.shape, indices=flat, values=values[order])


def decode_message(msg: CompressedMessage) -> SparseUpdate:
    """Decode an in-memory message (the miner's own, without going through the wire)."""
    return {
        name: decode_blob(blob, msg.params.layout(msg.shapes[name]), name) for name, blob in msg.blobs.items()
    }
