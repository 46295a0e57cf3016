"""Encoding every parameter of a model in one pass: the same blobs as one-by-one, far fewer ops.

A model has a few large matrices and many small tensors (norms, biases). Encoded one at a time,
each parameter costs a few dozen tensor operations whatever its size, and for small models that
per-operation overhead, not the arithmetic, sets the speed. Here the work is batched:

- parameters whose chunks have the same size and k share one top-k and one sort (a batch is
  capped in elements so the scratch buffer stays bounded on a GPU);
- thresholds, value tables, Golomb streams and bit packing run once over all kept values, with
  a segment index (the parameter) per value;
- the blobs of all parameters come out of one concatenation.

What is sent is exactly the per-parameter blob format of :mod:`compression.codec`. The plan
(which chunk sits where in the flat error buffer) depends only on the shapes, so it is built
once per compressor.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

import torch

from compression.bitpack import pack_fixed_segments
from compression.chunking import ChunkLayout, ChunkOrigins
from compression.golomb import golomb_encode_segments, golomb_parameter_for_mean, run_totals
from compression.quantize import (
    LLOYD_ITERATIONS,
    dequantize_segments,
    fit_sample,
    lloyd_thresholds,
    quantize_segments,
)

# Largest number of elements whose chunks are copied into one top-k batch (float32: 256 MiB).
MAX_BATCH_ELEMS = 1 << 26


@dataclass(frozen=True)
class _Batch:
    """Parameters whose chunks have one size and k, stacked into one (rows, chunk_elems) matrix."""

    members: list[int]  # parameter indices, in row order
    chunk_elems: int
    k: int  # the most any row keeps
    origins: ChunkOrigins  # of the rows (chunks) in the flat error buffer
    # (rows, k) bool, False in the last column of rows that keep k - 1; None when all keep k
    keep: torch.Tensor | None = None

    @property
    def rows(self) -> int:
        return self.origins.base.shape[0]


@dataclass
class EncodedMessage:
    """Blobs by name (uint8, CPU) plus what error feedback needs: the kept flat positions in
    the error buffer and the values the receivers will decode there."""

    blobs: dict[str, torch.Tensor]
    flat_indices: torch.Tensor
    decoded: torch.Tensor


class MessageEncoder:
    """Encodes a flat float32 buffer holding every parameter back to back, in sorted name order."""

    def __init__(self, layouts: Mapping[str, ChunkLayout], device: torch.device | str = "cpu") -> None:
        self.device = torch.device(device)
        self.names = sorted(layouts)
        self.layouts = [layouts[n] for n in self.names]
        sizes = [lay.numel for lay in self.layouts]
        self.offsets = [sum(sizes[:i]) for i in range(len(sizes))]
        self.numel = sum(sizes)
        self.batches = self._plan_batches()
        # Kept values come out batch by batch, each parameter's as one contiguous run; a
        # "segment" is a parameter numbered in that order, and every per-parameter quantity
        # below (thresholds, tables, streams) is indexed by it.
        order = [i for b in self.batches for i in b.members]
        self.segment_names = [self.names[i] for i in order]
        self.counts = [self.layouts[i].n_kept for i in order]
        starts = [sum(self.counts[:r]) for r in range(len(order))]
        self.runs = torch.tensor(self.counts, device=self.device)
        # Row r: the positions (among all kept values) of segment r's threshold-fitting sample.
        self.sample = torch.stack([s + fit_sample(c) for s, c in zip(starts, self.counts, strict=True)]).to(self.device)
        self._scratch = torch.empty(max(b.rows * b.chunk_elems for b in self.batches), device=self.device)

    def _plan_batches(self) -> list[_Batch]:
        by_shape: dict[tuple[int, int], list[int]] = {}
        for i, lay in enumerate(self.layouts):
            by_shape.setdefault((lay.chunk_elems, lay.k + (lay.extra > 0)), []).append(i)
        batches = []
        for (chunk_elems, k), members in by_shape.items():
            run: list[int] = []
            for i in members:
                if run and sum(self._tiled(j) for j in run) + self._tiled(i) > MAX_BATCH_ELEMS:
                    batches.append(self._batch(run, chunk_elems, k))
                    run = []
                run.append(i)
            batches.append(self._batch(run, chunk_elems, k))
        return batches

    def _tiled(self, i: int) -> int:
        """Elements of parameter ``i``'s tiles, padding included (what it takes of the scratch)."""
        return self.layouts[i].n_chunks * self.layouts[i].chunk_elems

    def _batch(self, members: list[int], chunk_elems: int, k: int) -> _Batch:
        layouts = [self.layouts[i] for i in members]
        origins = ChunkOrigins.of(layouts, [self.offsets[i] for i in members], self.device)
        keep = None
        if any(lay.chunk_ks().ne(k).any() for lay in layouts):
            ks = torch.cat([lay.chunk_ks() for lay in layouts]).to(self.device)
            keep = torch.arange(k, device=self.device) < ks.unsqueeze(1)
        return _Batch(members, chunk_elems, k, origins, keep)

    def view(self, flat: torch.Tensor, i: int) -> torch.Tensor:
        """Parameter ``i``'s slice of a flat buffer, in its own shape."""
        return flat[self.offsets[i] : self.offsets[i] + self.layouts[i].numel].view(self.layouts[i].shape)

    def encode(self, flat: torch.Tensor) -> EncodedMessage:
        """Encode the float32 buffer ``flat`` (numel = all parameters); it is not modified."""
        if flat.numel() != self.numel or flat.dtype != torch.float32:
            raise ValueError(f"expected a float32 buffer of {self.numel} elements, got {flat.dtype} x {flat.numel()}")
        positions, gaps = zip(*(self._select(flat, b) for b in self.batches), strict=True)
        flat_indices = positions[0] if len(positions) == 1 else torch.cat(positions)
        gaps = gaps[0] if len(gaps) == 1 else torch.cat(gaps)
        values = flat[flat_indices]
        thresholds = lloyd_thresholds(values[self.sample].abs(), LLOYD_ITERATIONS)
        codes, tables = quantize_segments(values, self.counts, thresholds)
        bad = [self.segment_names[r] for r in torch.nonzero(~torch.isfinite(tables).all(dim=1)).reshape(-1).tolist()]
        if bad:
            raise ValueError(f"non-finite values in the tensors to compress: {', '.join(bad)}")
        decoded = dequantize_segments(codes, tables, self.runs)
        return EncodedMessage(self._blobs(gaps, codes, tables), flat_indices, decoded)

    def _select(self, flat: torch.Tensor, batch: _Batch) -> tuple[torch.Tensor, torch.Tensor]:
        """Flat positions of the k largest |x| of each chunk, chunk by chunk in ascending order,
        and the in-chunk gaps between them (the first gap is the first position)."""
        mags = self._scratch[: batch.rows * batch.chunk_elems].view(batch.rows, batch.chunk_elems)
        row = 0
        for i in batch.members:
            lay = self.layouts[i]
            lay.to_chunks(self.view(flat, i), out=mags[row : row + lay.n_chunks], absolute=True)
            row += lay.n_chunks
        # Non-negative IEEE floats order exactly like their bit patterns; integer top-k is faster.
        # Padded slots hold -0.0, the smallest int32, so they are never among the k largest.
        keys = mags.view(torch.int32)
        local = keys.topk(batch.k, dim=1, sorted=False).indices.sort(dim=1).values
        if batch.keep is not None:
            local = _drop_smallest(keys, local, batch.keep, batch.chunk_elems)
        positions = batch.origins.flat(local, per_chunk=True)
        gaps = torch.diff(local, dim=1, prepend=local.new_full((batch.rows, 1), -1)) - 1
        if batch.keep is not None:
            return positions[batch.keep], gaps[batch.keep]
        return positions.reshape(-1), gaps.reshape(-1)

    def _blobs(self, gaps: torch.Tensor, codes: torch.Tensor, tables: torch.Tensor) -> dict[str, torch.Tensor]:
        n = len(self.counts)
        gap_sums = run_totals(torch.cumsum(gaps, 0), self.counts)
        ms = [golomb_parameter_for_mean(s / c) for s, c in zip(gap_sums, self.counts, strict=True)]
        streams = golomb_encode_segments(gaps, self.counts, ms)
        packed_codes = pack_fixed_segments(codes, self.counts, 2)
        headers = torch.cat([
            torch.tensor([[m & 255, m >> 8] for m in ms], dtype=torch.uint8, device=tables.device),
            tables.contiguous().view(torch.uint8).view(n, 16),
        ], dim=1)
        parts, sizes = [], []
        for r, s in enumerate(streams):
            pieces = [headers[r], s.high, packed_codes[r], s.low, s.unary]
            parts.extend(pieces)
            sizes.append(sum(p.numel() for p in pieces))
        joined = torch.cat(parts).cpu()
        return dict(zip(self.segment_names, torch.split(joined, sizes), strict=True))


def _drop_smallest(keys: torch.Tensor, local: torch.Tensor, keep: torch.Tensor, chunk_elems: int) -> torch.Tensor:
    """``local`` (sorted positions of each row's k largest) with, in rows that keep k - 1, the
    smallest of them (the last such position on ties, so the choice is the same on every
    device) moved to the end as ``chunk_elems``; ``keep`` masks that column out."""
    k = local.shape[1]
    picked = keys.gather(1, local)
    lowest = picked == picked.min(dim=1, keepdim=True).values
    drop = (lowest * torch.arange(1, k + 1, device=local.device)).argmax(dim=1)
    short = ~keep[:, -1]
    local = local.clone()
    local[short, drop[short]] = chunk_elems
    return local.sort(dim=1).values
