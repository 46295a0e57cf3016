"""2-bit value quantizer: sign + two magnitude levels, with a per-tensor centroid table.

Code layout: bit 1 = negative, bit 0 = high magnitude. The magnitude threshold comes from a
few Lloyd (1-D two-means) iterations on an evenly spaced sample of |v| (pooled over both signs); each
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
# The threshold is fitted on an evenly spaced sample of this many magnitudes: it needs only a
# good estimate, and a small sample keeps the fit cheap for large layers.
FIT_SAMPLE = 2048

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
    return lloyd_thresholds(mag.reshape(1, -1), iterations)[0]


def lloyd_thresholds(mag: torch.Tensor, iterations: int) -> torch.Tensor:
    """:func:`lloyd_threshold` of each row of ``mag`` (rows = tensors, columns = a sample of
    their magnitudes), all rows at once; float32 (rows,)."""
    n = mag.shape[1]
    total = mag.sum(dim=1)
    t = total / max(n, 1)
    for _ in range(iterations):
        high = mag >= t.unsqueeze(1)
        n_high = high.sum(dim=1)
        sum_high = torch.where(high, mag, 0).sum(dim=1)
        n_low = n - n_high
        low_mean = (total - sum_high) / n_low.clamp(min=1)
        high_mean = sum_high / n_high.clamp(min=1)
        t = torch.where((n_low > 0) & (n_high > 0), (low_mean + high_mean) / 2, t)
    return t


def _default_threshold(mag: torch.Tensor) -> torch.Tensor:
    return lloyd_threshold(mag, LLOYD_ITERATIONS)


def fit_sample(count: int) -> torch.Tensor:
    """``FIT_SAMPLE`` evenly spaced positions in ``range(count)`` (repeating when count is
    smaller): the sample a threshold is fitted on. A fixed size lets the thresholds of many
    tensors be fitted at once, one row each."""
    return torch.arange(FIT_SAMPLE, dtype=torch.int64) * count // FIT_SAMPLE


def quantize(values: torch.Tensor, threshold: Threshold = _default_threshold) -> tuple[torch.Tensor, torch.Tensor]:
    """(codes uint8 in 0..3, table float32[4]) for a flat float tensor of kept values."""
    values = values.reshape(-1).to(torch.float32)
    t = threshold(values.abs()[fit_sample(values.numel()).to(values.device)])
    codes, table = quantize_segments(values, [values.numel()], t.reshape(1))
    return codes, table[0]


def quantize_segments(
    values: torch.Tensor, counts: list[int], thresholds: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    """Codes (uint8) and one table per segment (float32 (n_segments, 4)) for float32 ``values``
    made of runs of ``counts[i]`` values, each run split at its own threshold ``thresholds[i]``."""
    n_segments = thresholds.numel()
    runs = torch.tensor(counts, device=values.device)
    codes = ((values < 0).to(torch.uint8) << 1) | (values.abs() >= thresholds.repeat_interleave(runs)).to(torch.uint8)
    key = torch.arange(0, N_CODES * n_segments, N_CODES, device=values.device).repeat_interleave(runs)
    key += codes
    sums = torch.zeros(N_CODES * n_segments, dtype=torch.float64, device=values.device)
    sums.index_add_(0, key, values.to(torch.float64))
    hits = torch.bincount(key, minlength=N_CODES * n_segments)
    # An empty code never decodes anything; give it a finite placeholder of the right sign.
    th = thresholds.to(torch.float64)
    fallback = torch.stack([th * 0.5, th, -th * 0.5, -th], dim=1).reshape(-1)
    table = torch.where(hits > 0, sums / hits.clamp(min=1), fallback).to(torch.float32)
    return codes, table.view(n_segments, N_CODES)


def dequantize(codes: torch.Tensor, table: torch.Tensor) -> torch.Tensor:
    """float32 values for 2-bit codes."""
    return table[codes.to(torch.int64)]


def dequantize_segments(codes: torch.Tensor, tables: torch.Tensor, runs: torch.Tensor) -> torch.Tensor:
    """float32 values for codes made of runs (``runs[i]`` codes) each with its table ``tables[i]``."""
    first = torch.arange(0, tables.numel(), N_CODES, device=codes.device).repeat_interleave(runs)
    return tables.reshape(-1)[first + codes]
