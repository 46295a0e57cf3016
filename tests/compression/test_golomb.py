import math

import pytest
import torch

from compression.golomb import (
    GolombError,
    best_golomb_parameter,
    golomb_cost_bits,
    golomb_decode,
    golomb_decode_high,
    golomb_encode,
)


def _uniform_gaps(chunks=50, n=4096, k=64):
    pos = torch.stack([torch.randperm(n)[:k].sort().values for _ in range(chunks)])
    return (torch.diff(pos, dim=1, prepend=torch.full((chunks, 1), -1)) - 1).reshape(-1)


def _round_trip(gaps, m):
    s = golomb_encode(gaps, m)
    a, n_long = golomb_decode_high(s.high, gaps.numel(), m)
    assert s.low.numel() == (n_long + 7) // 8
    return s, golomb_decode(a, s.low, s.unary, m)


@pytest.mark.parametrize("m", [1, 2, 3, 5, 32, 44, 45, 64, 100, 4096])
def test_round_trip_and_exact_size(m):
    gaps = _uniform_gaps()
    s, back = _round_trip(gaps, m)
    assert torch.equal(back, gaps)
    size = 8 * (s.high.numel() + s.low.numel() + s.unary.numel())
    assert golomb_cost_bits(gaps, m) <= size < golomb_cost_bits(gaps, m) + 24


def test_best_parameter_beats_rice_and_stays_near_floor():
    gaps = _uniform_gaps(chunks=200)
    m = best_golomb_parameter(gaps)
    bits = golomb_cost_bits(gaps, m) / gaps.numel()
    floor = (math.lgamma(4097) - math.lgamma(65) - math.lgamma(4033)) / math.log(2) / 64
    assert floor < bits < 7.5
    assert bits <= min(golomb_cost_bits(gaps, 1 << b) for b in range(3, 9)) / gaps.numel()
    assert best_golomb_parameter(gaps, limit=4096) == m  # the histogram search agrees


@pytest.mark.parametrize("scale", [1, 3, 20, 300])
def test_histogram_search_matches_exact_search(scale):
    gaps = (torch.distributions.Exponential(1.0 / scale).sample((3000,))).long().clamp(max=4095)
    assert best_golomb_parameter(gaps, limit=4096) == best_golomb_parameter(gaps)


def test_rejects_malformed_streams():
    gaps = torch.tensor([3, 0, 70, 1, 50])
    s = golomb_encode(gaps, 44)
    with pytest.raises(GolombError, match="wrong length"):
        golomb_decode_high(s.high[:-1], 5, 44)
    a, _ = golomb_decode_high(s.high, 5, 44)
    with pytest.raises(GolombError, match="expected 4"):
        golomb_decode(a[:4], s.low, s.unary, 44)
    with pytest.raises(GolombError, match="trailing"):
        golomb_decode(a, s.low, torch.cat([s.unary, torch.zeros(1, dtype=torch.uint8)]), 44)
    bad = s.high.clone()
    bad[-1] |= 1  # 25 bits in 4 bytes: the last 7 are padding
    with pytest.raises(GolombError, match="padding"):
        golomb_decode_high(bad, 5, 44)
