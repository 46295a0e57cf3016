"""Golomb coding of index gaps with its parts in separate streams, so decoding is vectorized.

A gap g with parameter M is split into a quotient q = g // M, written in unary (q zeros, then
a one), and a remainder r = g % M in truncated binary: with c = ceil(log2 M) and u = 2**c - M,
r < u takes c - 1 bits and the other remainders take c bits. The streams are

    high  the first c - 1 bits of every remainder field (fixed width: one reshape decodes it)
    low   the c-th bit, only for fields whose first bits read >= u (their count is known once
          ``high`` is decoded, so ``low`` needs no length field)
    unary the quotients; terminators are the set bits (``nonzero``), quotients their spacing

This module writes the streams; ``compression.decoder`` reads them for all blobs of a payload.

M a power of two is Rice coding. For 64 of 4096 positions the gaps are close to geometric with
p = 1/64; the closed-form M (about 44) beats every Rice parameter there (tests/compression/
test_golomb.py) and comes within 0.1 bit of the floor log2 C(4096, 64) / 64 = 7.36 bits per
index (docs/benchmarks.md).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch

from compression.bitpack import pack_fixed_segments, pack_set_bits

MAX_M = 1 << 16


@dataclass(frozen=True)
class GolombStreams:
    high: torch.Tensor
    low: torch.Tensor
    unary: torch.Tensor


def golomb_split(m: int) -> tuple[int, int]:
    """(c - 1, u) for parameter m."""
    c = (m - 1).bit_length()
    return max(c - 1, 0), (1 << c) - m


def golomb_parameter_for_mean(mean: float) -> int:
    """Closed-form M for geometric gaps of this mean (Gallager & van Voorhis): the smallest M
    with (1-p)^M + (1-p)^(M+1) <= 1, p = 1 / (mean + 1). No search over candidates."""
    if mean <= 0.0:
        return 1
    p = 1.0 / (mean + 1.0)
    return max(1, min(MAX_M, math.ceil(math.log(2.0 - p) / -math.log1p(-p))))


def golomb_encode(gaps: torch.Tensor, m: int) -> GolombStreams:
    """Streams for non-negative int64 ``gaps``."""
    return golomb_encode_segments(gaps, [gaps.numel()], [m])[0]


def golomb_encode_segments(gaps: torch.Tensor, counts: list[int], ms: list[int]) -> list[GolombStreams]:
    """Streams of several gap sequences at once, each with its own parameter.

    ``gaps`` holds the sequences back to back, ``counts[i]`` gaps for sequence i, coded with
    ``ms[i]``. The work is a fixed number of tensor operations whatever the number of
    sequences, which is what makes encoding a model of many small parameters fast.
    """
    dev = gaps.device
    runs = torch.tensor(counts, device=dev)
    splits = [golomb_split(m) for m in ms]
    m_of = torch.tensor(ms, device=dev, dtype=torch.int64).repeat_interleave(runs)
    u_of = torch.tensor([u for _, u in splits], device=dev, dtype=torch.int64).repeat_interleave(runs)
    q = torch.div(gaps, m_of, rounding_mode="floor")
    r = gaps - q * m_of
    long = (r >= u_of) & (m_of > 1)
    shifted = r + u_of
    high = _pack_high(torch.where(long, shifted >> 1, r), counts, [h for h, _ in splits])
    # Low bits: one per long field, in order; bit j of sequence i is the j-th long field of i.
    long_count = torch.cumsum(long, 0)
    low = _pack_ones(long_count - 1, long & (shifted & 1).bool(), run_totals(long_count, counts), runs)
    # Unary: after each quotient's zeros a terminator, at bit (q_1+1) + ... + (q_i+1) - 1.
    step_count = torch.cumsum(q + 1, 0)
    unary = _pack_ones(step_count - 1, None, run_totals(step_count, counts), runs)
    return [GolombStreams(high=h, low=lo, unary=un) for h, lo, un in zip(high, low, unary, strict=True)]


def run_totals(running: torch.Tensor, counts: list[int]) -> list[int]:
    """Per run of ``counts[i]`` consecutive elements, the sum of those elements, given the
    running (inclusive cumulative) sum of all of them."""
    at_end = torch.cat([running.new_zeros(1), running])[torch.tensor(counts, device=running.device).cumsum(0)]
    ends = at_end.tolist()
    return [b - a for a, b in zip([0, *ends[:-1]], ends, strict=True)]


def _pack_ones(position: torch.Tensor, keep: torch.Tensor | None, bits: list[int], runs: torch.Tensor) -> list[torch.Tensor]:
    """One byte stream per run, ``bits[i]`` long: ones at ``position`` (counted over all runs
    together) where ``keep``; each run's stream starts on a byte boundary of one packed output."""
    lengths = [(b + 7) // 8 for b in bits]
    starts = [sum(lengths[:i]) for i in range(len(lengths))]
    before = [sum(bits[:i]) for i in range(len(bits))]
    shift = torch.tensor([8 * s - b for s, b in zip(starts, before, strict=True)], device=position.device)
    position = position + shift.repeat_interleave(runs)
    packed = pack_set_bits(position if keep is None else position[keep], 8 * sum(lengths))
    return [packed[s : s + n] for s, n in zip(starts, lengths, strict=True)]


def _pack_high(fields: torch.Tensor, counts: list[int], widths: list[int]) -> list[torch.Tensor]:
    """Each sequence's high stream; sequences of one width are packed together."""
    out = [fields.new_empty(0, dtype=torch.uint8)] * len(counts)
    for width in sorted(set(widths) - {0}):
        members = [i for i, w in enumerate(widths) if w == width]
        if len(members) == len(widths):
            mine = fields
        else:
            wanted = torch.tensor([w == width for w in widths], device=fields.device)
            mine = fields[wanted.repeat_interleave(torch.tensor(counts, device=fields.device))]
        for i, stream in zip(members, pack_fixed_segments(mine, [counts[i] for i in members], width), strict=True):
            out[i] = stream
    return out
