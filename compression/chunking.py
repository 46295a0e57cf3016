"""Chunk layout: how a parameter is cut into tiles for per-chunk top-k.

A 2-D tensor (R, C) is tiled into blocks of (largest divisor of R <= side) x (largest divisor of
C <= side); with the default side 64 a large matrix gets 64x64 = 4096-element tiles. Tensors of
more dimensions are viewed as (shape[0], rest). A 1-D tensor is cut "the same way" in the sense
of tile *size*: chunks of the largest divisor of its length <= side*side, so biases and norm
weights are chunked at the same density as matrices instead of keeping everything.

Each chunk keeps ``k = round(topk * chunk_elems / side**2)`` values (at least 1, at most all),
so the density is the same for every tensor even where the divisors are small.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch


def largest_divisor_at_most(n: int, limit: int) -> int:
    """Largest d with d | n and d <= limit (n >= 1)."""
    for d in range(min(n, limit), 0, -1):
        if n % d == 0:
            return d
    return 1


@dataclass(frozen=True)
class ChunkLayout:
    """Tiling of one parameter: a (rows, cols) view cut into (tile_rows, tile_cols) tiles."""

    shape: tuple[int, ...]
    rows: int
    cols: int
    tile_rows: int
    tile_cols: int
    k: int

    @property
    def numel(self) -> int:
        return self.rows * self.cols

    @property
    def chunk_elems(self) -> int:
        return self.tile_rows * self.tile_cols

    @property
    def n_chunks(self) -> int:
        return self.numel // self.chunk_elems

    @property
    def n_kept(self) -> int:
        return self.n_chunks * self.k

    def to_chunks(self, t: torch.Tensor, out: torch.Tensor | None = None, absolute: bool = False) -> torch.Tensor:
        """(n_chunks, chunk_elems) copy of ``t`` in tile order; ``absolute`` fuses abs into the copy."""
        tiled = t.reshape(self.rows // self.tile_rows, self.tile_rows, self.cols // self.tile_cols, self.tile_cols)
        tiled = tiled.permute(0, 2, 1, 3)
        if out is None:
            out = torch.empty(tiled.shape, dtype=t.dtype, device=t.device)
        out = out.view(tiled.shape)
        if absolute:
            torch.abs(tiled, out=out)
        else:
            out.copy_(tiled)
        return out.view(self.n_chunks, self.chunk_elems)

    def local_to_flat(self, local: torch.Tensor) -> torch.Tensor:
        """Map (n_chunks, k) positions inside each tile to flat int64 positions in the tensor."""
        origin = ChunkOrigins.of([self], [0], local.device)
        return origin.flat(local.to(torch.int64), per_chunk=True).reshape(-1)


@dataclass(frozen=True)
class ChunkOrigins:
    """Where each chunk of several parameters laid end to end in one flat buffer begins.

    Position p inside chunk c is flat element ``base[c] + (p // tile_cols[c]) * stride[c] +
    p % tile_cols[c]`` of the buffer (``stride`` = the parameter's row length). The encoder,
    the decoder and :meth:`ChunkLayout.local_to_flat` all map positions through this."""

    base: torch.Tensor
    stride: torch.Tensor
    tile_cols: torch.Tensor

    @classmethod
    def of(cls, layouts: list[ChunkLayout], offsets: list[int], device: torch.device | str = "cpu") -> ChunkOrigins:
        base, stride, tile_cols = [], [], []
        for lay, offset in zip(layouts, offsets, strict=True):
            chunk = torch.arange(lay.n_chunks, dtype=torch.int64)
            per_row = lay.cols // lay.tile_cols
            base.append(offset + (chunk // per_row) * lay.tile_rows * lay.cols + (chunk % per_row) * lay.tile_cols)
            stride.append(torch.full((lay.n_chunks,), lay.cols, dtype=torch.int64))
            tile_cols.append(torch.full((lay.n_chunks,), lay.tile_cols, dtype=torch.int64))
        return cls(*(torch.cat(t).to(device) for t in (base, stride, tile_cols)))

    def repeat(self, counts: torch.Tensor) -> ChunkOrigins:
        """Each chunk's entry repeated ``counts[c]`` times: one entry per kept value."""
        return ChunkOrigins(*(t.repeat_interleave(counts) for t in (self.base, self.stride, self.tile_cols)))

    def flat(self, local: torch.Tensor, per_chunk: bool = False) -> torch.Tensor:
        """Flat positions of in-chunk positions ``local``: one per entry, or with
        ``per_chunk`` a (chunks, k) matrix, row c inside chunk c."""
        base, stride, tile_cols = (t.unsqueeze(1) if per_chunk else t for t in (self.base, self.stride, self.tile_cols))
        return base + (local // tile_cols) * stride + local % tile_cols


def chunk_layout(shape: tuple[int, ...] | torch.Size, chunk_size: int = 64, topk_per_chunk: int = 64) -> ChunkLayout:
    """The tiling every node derives from a parameter's shape and the codec parameters."""
    shape = tuple(int(s) for s in shape)
    numel = math.prod(shape)
    if numel == 0:
        raise ValueError(f"cannot chunk an empty tensor of shape {shape}")
    if len(shape) >= 2:
        rows, cols = shape[0], numel // shape[0]
        tile_rows = largest_divisor_at_most(rows, chunk_size)
        tile_cols = largest_divisor_at_most(cols, chunk_size)
    else:
        rows, cols = 1, numel
        tile_rows, tile_cols = 1, largest_divisor_at_most(numel, chunk_size * chunk_size)
    elems = tile_rows * tile_cols
    k = min(elems, max(1, round(topk_per_chunk * elems / (chunk_size * chunk_size))))
    return ChunkLayout(shape=shape, rows=rows, cols=cols, tile_rows=tile_rows, tile_cols=tile_cols, k=k)
