"""Chunk layout: how a parameter is cut into tiles for per-chunk top-k.

A tensor is viewed as (rows, cols) = (shape[0], rest); a 1-D tensor as (1, numel). Each side is
cut into the fewest tiles that fit its limit, as equal as possible: ``t = ceil(n / limit)``
tiles of side ``s = ceil(n / t)``. The row limit is ``chunk_size`` (taller when the rows are
narrower than ``chunk_size``), the column limit ``chunk_size**2 // tile_rows``, so a tile holds
at most ``chunk_size**2`` elements: 64 x 64 for a large matrix, up to 4096 along a bias.

When ``s`` does not divide ``n``, the side is padded to ``t * s``: the last ``t * s - n`` tiles
along it are one row (column) short, so every tile keeps at least ``(s - 1)`` real rows and no
tile is mostly padding. A prime side therefore costs at most one padded row per tile instead of
degenerating to 1-wide tiles. Padded positions carry nothing: the encoder never selects them and
the decoder refuses an index that lands in one. Sides that divide evenly (every preset's) are
not padded, and their tiles are what the older largest-divisor rule gave.

The kept count follows the configured density on the *real* elements: ``round(numel * topk /
chunk_size**2)`` values (at least one per chunk, at most what the smallest tile holds), spread
over the chunks as evenly as possible: ``k`` each, and ``k + 1`` for the first ``extra``
chunks. The wire format is unchanged: it only ever relied on each side knowing every chunk's
kept count.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch

# abs() never yields -0.0, and as int32 its bits are the smallest value: top-k over the int32
# view of magnitudes (compression.encoder) ranks a padded slot below every real element.
PAD_MAGNITUDE = -0.0


def largest_divisor_at_most(n: int, limit: int) -> int:
    """Largest d with d | n and d <= limit (n >= 1)."""
    for d in range(min(n, limit), 0, -1):
        if n % d == 0:
            return d
    return 1


def split_side(n: int, limit: int) -> tuple[int, int]:
    """(tiles, tile side): the fewest tiles of at most ``limit`` covering ``n``, as equal as can be."""
    tiles = -(-n // max(limit, 1))
    return tiles, -(-n // tiles)


@dataclass(frozen=True)
class ChunkLayout:
    """Tiling of one parameter: a (rows, cols) view cut into (tile_rows, tile_cols) tiles, padded
    to whole tiles; chunk c keeps ``k + (c < extra)`` values."""

    shape: tuple[int, ...]
    rows: int
    cols: int
    tile_rows: int
    tile_cols: int
    k: int
    extra: int = 0

    @property
    def numel(self) -> int:
        return self.rows * self.cols

    @property
    def chunk_elems(self) -> int:
        return self.tile_rows * self.tile_cols

    @property
    def tiles_down(self) -> int:
        return -(-self.rows // self.tile_rows)

    @property
    def tiles_across(self) -> int:
        return -(-self.cols // self.tile_cols)

    @property
    def pad_rows(self) -> int:
        """How many tile-rows (the last ones) are one row short."""
        return self.tiles_down * self.tile_rows - self.rows

    @property
    def pad_cols(self) -> int:
        return self.tiles_across * self.tile_cols - self.cols

    @property
    def padded(self) -> bool:
        return self.pad_rows > 0 or self.pad_cols > 0

    @property
    def n_chunks(self) -> int:
        return self.tiles_down * self.tiles_across

    @property
    def n_kept(self) -> int:
        return self.n_chunks * self.k + self.extra

    def chunk_ks(self) -> torch.Tensor:
        """Kept values per chunk (int64, chunk order)."""
        ks = torch.full((self.n_chunks,), self.k, dtype=torch.int64)
        ks[: self.extra] += 1
        return ks

    def chunk_extent(self) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
        """Per chunk: first real row, first real column, real rows, real columns (int64)."""
        r0, nr = _side_extent(self.tiles_down, self.tile_rows, self.pad_rows)
        c0, nc = _side_extent(self.tiles_across, self.tile_cols, self.pad_cols)
        across = self.tiles_across
        return r0.repeat_interleave(across), c0.repeat(self.tiles_down), nr.repeat_interleave(across), nc.repeat(self.tiles_down)

    def to_chunks(self, t: torch.Tensor, out: torch.Tensor | None = None, absolute: bool = False) -> torch.Tensor:
        """(n_chunks, chunk_elems) copy of ``t`` in tile order; ``absolute`` fuses abs into the copy.
        Padded slots hold ``PAD_MAGNITUDE`` with ``absolute``, zero otherwise."""
        shape = (self.tiles_down, self.tiles_across, self.tile_rows, self.tile_cols)
        if out is None:
            out = torch.empty(shape, dtype=t.dtype, device=t.device)
        out = out.view(shape)
        if self.padded:
            _copy_padded(self, t.reshape(self.rows, self.cols), out, absolute)
            return out.view(self.n_chunks, self.chunk_elems)
        tiled = t.reshape(self.tiles_down, self.tile_rows, self.tiles_across, self.tile_cols).permute(0, 2, 1, 3)
        if absolute:
            torch.abs(tiled, out=out)
        else:
            out.copy_(tiled)
        return out.view(self.n_chunks, self.chunk_elems)

    def local_to_flat(self, local: torch.Tensor) -> torch.Tensor:
        """Map (n_chunks, k) positions inside each tile to flat int64 positions in the tensor."""
        origin = ChunkOrigins.of([self], [0], local.device)
        return origin.flat(local.to(torch.int64), per_chunk=True).reshape(-1)


def _side_extent(tiles: int, side: int, pad: int) -> tuple[torch.Tensor, torch.Tensor]:
    """First real index and real length of each tile along one side: the last ``pad`` are short."""
    i = torch.arange(tiles, dtype=torch.int64)
    short = (i >= tiles - pad).to(torch.int64)
    return i * side - (i - (tiles - pad)).clamp(min=0), side - short


def _copy_padded(lay: ChunkLayout, x: torch.Tensor, out: torch.Tensor, absolute: bool) -> None:
    """Fill ``out`` (tiles_down, tiles_across, tile_rows, tile_cols) from the (rows, cols) ``x``:
    full and short tiles are two blocks per side, each copied with one reshape."""
    out.fill_(PAD_MAGNITUDE if absolute else 0.0)
    row_blocks = _blocks(lay.tiles_down, lay.tile_rows, lay.pad_rows)
    col_blocks = _blocks(lay.tiles_across, lay.tile_cols, lay.pad_cols)
    for t_r, n_r, start_r, len_r in row_blocks:
        for t_c, n_c, start_c, len_c in col_blocks:
            src = x[start_r : start_r + n_r * len_r, start_c : start_c + n_c * len_c]
            dst = out[t_r : t_r + n_r, t_c : t_c + n_c, :len_r, :len_c]
            dst.copy_(src.reshape(n_r, len_r, n_c, len_c).permute(0, 2, 1, 3))
            if absolute:
                dst.abs_()


def _blocks(tiles: int, side: int, pad: int) -> list[tuple[int, int, int, int]]:
    """(first tile, tile count, first real index, real length per tile) of the full tiles and
    of the short ones along one side, leaving out an empty block."""
    full = tiles - pad
    blocks = [(0, full, 0, side), (full, pad, full * side, side - 1)]
    return [b for b in blocks if b[1] > 0]


@dataclass(frozen=True)
class ChunkOrigins:
    """Where each chunk of several parameters laid end to end in one flat buffer begins.

    Position p inside chunk c is flat element ``base[c] + (p // tile_cols[c]) * stride[c] +
    p % tile_cols[c]`` of the buffer (``stride`` = the parameter's row length), for p in the
    chunk's real part. The encoder, the decoder and :meth:`ChunkLayout.local_to_flat` all map
    positions through this."""

    base: torch.Tensor
    stride: torch.Tensor
    tile_cols: torch.Tensor

    @classmethod
    def of(cls, layouts: list[ChunkLayout], offsets: list[int], device: torch.device | str = "cpu") -> ChunkOrigins:
        base, stride, tile_cols = [], [], []
        for lay, offset in zip(layouts, offsets, strict=True):
            row0, col0, _, _ = lay.chunk_extent()
            base.append(offset + row0 * lay.cols + col0)
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
    area = chunk_size * chunk_size
    rows, cols = (shape[0], numel // shape[0]) if len(shape) >= 2 else (1, numel)
    # Narrow matrices get taller tiles so that a tile still approaches ``area`` elements.
    _, tile_rows = split_side(rows, max(chunk_size, area // cols))
    tiles_across, tile_cols = split_side(cols, area // tile_rows)
    n_chunks = -(-rows // tile_rows) * tiles_across
    # The smallest tile's real elements: a chunk can keep no more than that without padding.
    smallest = (tile_rows - (rows % tile_rows != 0)) * (tile_cols - (cols % tile_cols != 0))
    kept = min(max(round(topk_per_chunk * numel / area), n_chunks), n_chunks * smallest)
    k, extra = divmod(kept, n_chunks)
    return ChunkLayout(shape=shape, rows=rows, cols=cols, tile_rows=tile_rows, tile_cols=tile_cols, k=k, extra=extra)
