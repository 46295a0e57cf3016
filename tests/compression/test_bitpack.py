import pytest
import torch

from compression.bitpack import (
    pack_fixed,
    pack_set_bits,
    set_bit_positions,
    unpack_fixed,
)


@pytest.mark.parametrize("width", [1, 2, 3, 5, 7, 8, 9, 13])
@pytest.mark.parametrize("count", [1, 7, 8, 9, 1000])
def test_fixed_width_round_trip(width, count):
    v = torch.randint(0, 1 << width, (count,))
    packed = pack_fixed(v, width)
    assert packed.dtype == torch.uint8
    assert packed.numel() == (count * width + 7) // 8
    assert torch.equal(unpack_fixed(packed, count, width), v)


def test_bit_order_is_msb_first():
    assert pack_fixed(torch.tensor([1, 0, 3]), 2).tolist() == [0b01001100]
    assert pack_fixed(torch.tensor([5, 1]), 3).tolist() == [0b10100100, 0b00000000][:1]  # 101 001 00
    assert pack_fixed(torch.tensor([3, 2, 1, 0, 1]), 2).tolist() == [0b11100100, 0b01000000]


def test_width_zero_is_empty():
    assert pack_fixed(torch.tensor([0, 0]), 0).numel() == 0
    assert unpack_fixed(torch.empty(0, dtype=torch.uint8), 3, 0).tolist() == [0, 0, 0]


def test_set_bits_round_trip():
    pos = torch.tensor([0, 7, 8, 9, 30, 31, 63])
    data = pack_set_bits(pos, 64)
    assert data.tolist()[0] == 0b10000001
    assert torch.equal(set_bit_positions(data), pos)
