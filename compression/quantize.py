"""2-bit value quantizer: sign + two magnitude levels, with a per-tensor centroid table.

Code layout: bit 1 = negative, bit 0 = high magnitude. The magnitude threshold comes from a
few Lloyd (1-D two-means) iterations on a strided sample of |v| (pooled over both signs); each
of the four codes then decodes to the mean of the values it holds. The exact optimal split
(``optimal_threshold``) is kept for comparison: it is within 0.2 % of the error but its sort
costs more than the iterations on this CPU. Because the sign is its own bit no kept value can come back with the wrong sign, unlike
the reference's 4 equal bins over 6 sigma whose middle bin straddles zero. docs/benchmarks.md
has the measured comparison (reference bins, mean threshold, Lloyd iterations, optimal split).
"""

from __future__ import annotations

from collections.abc import Callable

import torch

N_CODES = 4
LLOYD_ITERATIONS = 3
# The threshold is fitted on an evenly strided sample of at most this many magnitudes: it needs
# only a good estimate, and a small sample keeps the fit cheap for large layers.
FIT_SAMPLE = 8192

Threshold = Callable[[torch.Tensor], torch.Tensor]


def optimal_threshold(mag: torch.Tensor) -> torch.Tensor:
    """Midpoint of the two means of the split of ``mag`` with the least squared error (0-d)."""
    s = mag.sort().values.to(torch.float64)
    n = s.numel()
    if n < 2:
        return s.sum().to(torch.float32)
    prefix = s.cumsum(0)[:-1]
    total = prefix[-1] + s[-1]
    low_n = torch.arange(1, n, device=mag.device, dtype=torch.float64)
    # Least squared error <=> largest sum of (group sum)^2 / (group size).
    score = prefix.square() / low_n + (total - prefix).square() / (n - low_n)
    k = torch.argmax(score)
    low_mean = prefix[k] / low_n[k]
    high_mean = (total - prefix[k]) / (n - low_n[k])
    return ((low_mean + high_mean) / 2).to(torch.float32)


def lloyd_threshold(mag: torch.Tensor, iterations: int = 4) -> torch.Tensor:
    """Lloyd (k-means) iterations from the mean; 0 iterations = threshold at the mean magnitude."""
    t = mag.mean()
    for _ in range(iterations):
        high = mag >= t
        n_high = high.sum()
        n_low = mag.numel() - n_high
        sum_high = torch.where(high, mag, 0).sum()
        low_mean = (mag.sum() - sum_high) / n_low.clamp(min=1)
        high_mean = sum_high / n_high.clamp(min=1)
        t = torch.where((n_low > 0) & (n_high > 0), (low_mean + high_mean) / 2, t)
    return t


def _default_threshold(mag: torch.Tensor) -> torch.Tensor:
    return lloyd_threshold(mag, LLOYD_ITERATIONS)


def quantize(values: torch.Tensor, threshold: Threshold = _default_threshold) -> tuple[torch.Tensor, torch.Tensor]:
    """(codes uint8 in 0..3, table float32[4]) for a flat float tensor of kept values."""
    values = values.reshape(-1).to(torch.float32)
    mag = values.abs()
    stride = -(-mag.numel() // FIT_SAMPLE)
    t = threshold(mag[::stride])
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
