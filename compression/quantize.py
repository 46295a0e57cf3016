"""2-bit value quantizer: sign + two magnitude levels, with a per-tensor centroid table.

Code layout: bit 1 = negative, bit 0 = high magnitude. The magnitude threshold is fitted by a
few Lloyd (1-D k-means) iterations on |v| of the kept values, pooled over both signs; each of
the four codes then decodes to the mean of the values it holds. Because the sign is its own bit
no kept value can come back with the wrong sign, unlike the reference's 4 equal bins over +-6
sigma whose middle bin straddles zero (see docs/benchmarks.md for the measured comparison).
"""

from __future__ import annotations

import torch

LLOYD_ITERATIONS = 4
N_CODES = 4
# The threshold is fitted on an evenly strided sample of at most this many magnitudes: the fit
# needs only a good estimate, and small tensors keep the fitting loop cheap for big layers.
FIT_SAMPLE = 32768


def _threshold(mag: torch.Tensor, iterations: int) -> torch.Tensor:
    """Lloyd fit of two magnitude levels; returns the decision threshold (0-d tensor)."""
    t = mag.mean()
    for _ in range(iterations):
        high = mag >= t
        n_high = high.sum()
        n_low = mag.numel() - n_high
        sum_high = torch.where(high, mag, 0).sum()
        low_mean = (mag.sum() - sum_high) / n_low.clamp(min=1)
        high_mean = sum_high / n_high.clamp(min=1)
        # With an empty side keep the old threshold instead of collapsing onto one level.
        t = torch.where((n_low > 0) & (n_high > 0), (low_mean + high_mean) / 2, t)
    return t


def quantize(values: torch.Tensor, iterations: int = LLOYD_ITERATIONS) -> tuple[torch.Tensor, torch.Tensor]:
    """(codes uint8 in 0..3, table float32[4]) for a flat float tensor of kept values."""
    values = values.reshape(-1).to(torch.float32)
    mag = values.abs()
    stride = -(-mag.numel() // FIT_SAMPLE)
    t = _threshold(mag[::stride], iterations)
    codes = ((values < 0).to(torch.uint8) << 1) | (mag >= t).to(torch.uint8)
    wide = codes.to(torch.int64)
    counts = torch.bincount(wide, minlength=N_CODES)
    sums = torch.bincount(wide, weights=values.to(torch.float64), minlength=N_CODES)
    # An empty code never decodes anything; give it a finite placeholder of the right sign.
    fallback = torch.stack([t * 0.5, t, -t * 0.5, -t]).to(torch.float64)
    table = torch.where(counts > 0, sums / counts.clamp(min=1), fallback).to(torch.float32)
    return codes, table


def dequantize(codes: torch.Tensor, table: torch.Tensor) -> torch.Tensor:
    """float32 values for 2-bit codes."""
    return table[codes.to(torch.int64)]
