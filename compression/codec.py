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

from compression.chunking import ChunkLayout, chunk_layout
from compression.decoder import HEADER_BYTES as HEADER_BYTES  # the blob format's header size
from compression.decoder import decode_blobs
from compression.encoder import MessageEncoder
from compression.sparse import SparseTensor, SparseUpdate


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


def decode_blob(blob: torch.Tensor, layout: ChunkLayout, name: str = "?") -> SparseTensor:
    """Decode one parameter's blob (uint8, CPU) into sorted flat indices and float32 values.
    A payload's blobs are decoded together by :func:`compression.decoder.decode_blobs`."""
    return decode_blobs({name: blob.numpy().tobytes()}, {name: layout})[name]


def decode_message(msg: CompressedMessage) -> SparseUpdate:
    """Decode an in-memory message (the miner's own, without going through the wire)."""
    layouts = {name: msg.params.layout(msg.shapes[name]) for name in msg.blobs}
    return decode_blobs({name: blob.numpy().tobytes() for name, blob in msg.blobs.items()}, layouts)
