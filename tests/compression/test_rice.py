import pytest
import torch

from compression.rice import RiceError, best_rice_parameter, rice_cost_bits, rice_decode, rice_encode


def _uniform_gaps(chunks=50, n=4096, k=64):
    pos = torch.stack([torch.randperm(n)[:k].sort().values for _ in range(chunks)])
    return (torch.diff(pos, dim=1, prepend=torch.full((chunks, 1), -1)) - 1).reshape(-1)


@pytest.mark.parametrize("b", [0, 1, 4, 5, 6, 12])
def test_round_trip_and_exact_size(b):
    gaps = _uniform_gaps()
    rem, unary = rice_encode(gaps, b)
    assert torch.equal(rice_decode(rem, unary, gaps.numel(), b), gaps)
    assert rice_cost_bits(gaps, b) <= 8 * (rem.numel() + unary.numel()) < rice_cost_bits(gaps, b) + 16


def test_best_parameter_near_floor_for_64_of_4096():
    gaps = _uniform_gaps(chunks=200)
    b = best_rice_parameter(gaps)
    assert b in (5, 6)
    assert rice_cost_bits(gaps, b) / gaps.numel() < 7.7
    assert all(rice_cost_bits(gaps, b) <= rice_cost_bits(gaps, o) for o in range(0, 12))


def test_rejects_malformed_streams():
    gaps = torch.tensor([3, 0, 70, 1])
    rem, unary = rice_encode(gaps, 5)
    _, unary0 = rice_encode(gaps, 0)
    with pytest.raises(RiceError, match="expected 5"):
        rice_decode(torch.empty(0, dtype=torch.uint8), unary0, 5, 0)
    with pytest.raises(RiceError, match="trailing"):
        rice_decode(rem, torch.cat([unary, torch.zeros(1, dtype=torch.uint8)]), 4, 5)
    with pytest.raises(RiceError, match="wrong length"):
        rice_decode(rem[:-1], unary, 4, 5)
    bad = rem.clone()
    bad[-1] |= 1  # 20 bits in 3 bytes: the last 4 are padding
    with pytest.raises(RiceError, match="padding"):
        rice_decode(bad, unary, 4, 5)
