"""Vectorized bit packing (MSB first within each byte). No Python loops over elements.

Fixed-width fields are packed eight at a time: eight w-bit values fill exactly w bytes, so
they are combined into one int64 word and split into bytes, with no per-bit tensors.
"""

from __future__ import annotations

import torch

_WORD_FIELDS = 8
_MAX_WORD_WIDTH = 8


def _arange_desc(n: int, step: int, device: torch.device) -> torch.Tensor:
    return torch.arange(n - 1, -1, -1, device=device, dtype=torch.int64) * step


def pack_fixed(values: torch.Tensor, width: int) -> torch.Tensor:
    """Pack non-negative integers < 2**width, ``width`` bits each, into ceil(n*width/8) bytes."""
    n = values.numel()
    if width == 0 or n == 0:
        return torch.empty(0, dtype=torch.uint8, device=values.device)
    if width > _MAX_WORD_WIDTH:
        bits = (values.reshape(-1, 1).to(torch.int64) >> _arange_desc(width, 1, values.device)) & 1
        return pack_fixed(bits, 1)
    v = values.reshape(-1).to(torch.int64)
    pad = (-n) % _WORD_FIELDS
    if pad:
        v = torch.cat([v, v.new_zeros(pad)])
    words = (v.view(-1, _WORD_FIELDS) << _arange_desc(_WORD_FIELDS, width, v.device)).sum(dim=1)
    out = (words.unsqueeze(1) >> _arange_desc(width, 8, v.device)) & 255
    return out.to(torch.uint8).reshape(-1)[: (n * width + 7) // 8]


def unpack_fixed(data: torch.Tensor, count: int, width: int) -> torch.Tensor:
    """Inverse of :func:`pack_fixed` (int64); ``data`` must hold at least count*width bits."""
    if width == 0 or count == 0:
        return torch.zeros(count, dtype=torch.int64, device=data.device)
    if width > _MAX_WORD_WIDTH:
        bits = unpack_fixed(data, count * width, 1).view(count, width)
        return (bits << _arange_desc(width, 1, data.device)).sum(dim=1)
    words_needed = (count + _WORD_FIELDS - 1) // _WORD_FIELDS
    b = data.reshape(-1)[: words_needed * width].to(torch.int64)
    pad = words_needed * width - b.numel()
    if pad:
        b = torch.cat([b, b.new_zeros(pad)])
    words = (b.view(-1, width) << _arange_desc(width, 8, b.device)).sum(dim=1)
    fields = (words.unsqueeze(1) >> _arange_desc(_WORD_FIELDS, width, b.device)) & ((1 << width) - 1)
    return fields.reshape(-1)[:count]


def pack_set_bits(positions: torch.Tensor, total_bits: int) -> torch.Tensor:
    """Bytes of a ``total_bits``-long stream with ones at the given distinct positions."""
    out = torch.zeros((total_bits + 7) // 8, dtype=torch.int32, device=positions.device)
    # Distinct bits of one byte add without carries, so the integer add is an OR, in any order.
    out.index_add_(0, positions >> 3, (128 >> (positions & 7)).to(torch.int32))
    return out.to(torch.uint8)


def _byte_starts(byte_counts: list[int]) -> list[int]:
    starts, at = [], 0
    for n in byte_counts:
        starts.append(at)
        at += n
    return starts


def _split_bytes(packed: torch.Tensor, starts: list[int], lengths: list[int]) -> list[torch.Tensor]:
    return [packed[s : s + n] for s, n in zip(starts, lengths, strict=True)]


def pack_fixed_segments(values: torch.Tensor, counts: list[int], width: int) -> list[torch.Tensor]:
    """:func:`pack_fixed` of each run of ``counts[i]`` consecutive fields, each its own byte stream.

    One pack for all runs: every run is padded to a multiple of eight fields, which fill whole
    bytes, so each run's bytes begin on a byte boundary of the joint output.
    """
    lengths = [(c * width + 7) // 8 for c in counts]
    padded = [-(-c // _WORD_FIELDS) * _WORD_FIELDS for c in counts]
    if padded == counts:
        packed = pack_fixed(values, width)
    else:
        run = torch.repeat_interleave(
            torch.arange(len(counts), device=values.device), torch.tensor(counts, device=values.device)
        )
        shift = torch.tensor(
            [p - c for p, c in zip(_byte_starts(padded), _byte_starts(counts), strict=True)], device=values.device
        )
        spread = values.new_zeros(sum(padded))
        spread[torch.arange(values.numel(), device=values.device) + shift[run]] = values
        packed = pack_fixed(spread, width)
    return _split_bytes(packed, [p * width // 8 for p in _byte_starts(padded)], lengths)


def set_bit_positions(data: torch.Tensor) -> torch.Tensor:
    """Positions (int64, ascending) of the one bits in ``data``."""
    shifts = torch.arange(7, -1, -1, device=data.device, dtype=torch.uint8)
    bits = (data.reshape(-1, 1) >> shifts) & 1
    return torch.nonzero(bits.reshape(-1)).reshape(-1)
