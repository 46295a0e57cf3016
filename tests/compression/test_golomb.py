import math
import struct

import pytest
import torch

from compression.chunking import chunk_layout
from compression.decoder import decode_blobs
from compression.golomb import golomb_encode, golomb_parameter_for_mean, golomb_split

CHUNK, K = 4096, 64


def _uniform_positions(chunks=50):
    return torch.stack([torch.randperm(CHUNK)[:K].sort().values for _ in range(chunks)])


def _gaps(pos):
    return (torch.diff(pos, dim=1, prepend=torch.full((pos.shape[0], 1), -1)) - 1).reshape(-1)


def _size_bits(gaps, m):
    """The code's size from its definition: unary q + 1, c - 1 high bits, one more if long."""
    high_bits, u = golomb_split(m)
    q, r = gaps // m, gaps % m
    long = int((r >= u).sum()) if m > 1 else 0
    return int(q.sum()) + gaps.numel() * (1 + high_bits) + long


def _stream_bits(s):
    return 8 * (s.high.numel() + s.low.numel() + s.unary.numel())


@pytest.mark.parametrize("m", [1, 2, 3, 5, 32, 44, 45, 64, 100, 4096])
def test_round_trip_through_the_decoder_and_exact_size(m):
    pos = _uniform_positions()
    gaps = _gaps(pos)
    s = golomb_encode(gaps, m)
    assert _size_bits(gaps, m) <= _stream_bits(s) < _size_bits(gaps, m) + 24  # only byte padding added
    # Wrap the streams in a blob (header, zero value codes) and decode it as a payload would be.
    n = gaps.numel()
    header = m.to_bytes(2, "little") + struct.pack("<4f", 1.0, 2.0, -1.0, -2.0)
    blob = header + s.high.numpy().tobytes() + bytes((n + 3) // 4) + s.low.numpy().tobytes() + s.unary.numpy().tobytes()
    layout = chunk_layout((CHUNK * pos.shape[0],))
    assert (layout.k, layout.chunk_elems) == (K, CHUNK)
    got = decode_blobs({"t": blob}, {"t": layout})["t"]
    want = (pos + CHUNK * torch.arange(pos.shape[0]).unsqueeze(1)).reshape(-1)
    assert torch.equal(got.indices, want)


def test_closed_form_parameter_beats_rice_and_stays_near_floor():
    gaps = _gaps(_uniform_positions(chunks=200))
    m = golomb_parameter_for_mean(float(gaps.double().mean()))
    bits = _stream_bits(golomb_encode(gaps, m)) / gaps.numel()
    floor = (math.lgamma(CHUNK + 1) - math.lgamma(K + 1) - math.lgamma(CHUNK - K + 1)) / math.log(2) / K
    assert floor < bits < 7.5
    assert bits <= min(_stream_bits(golomb_encode(gaps, 1 << b)) for b in range(3, 9)) / gaps.numel()


def test_parameter_for_degenerate_means():
    assert golomb_parameter_for_mean(0.0) == 1
    assert golomb_parameter_for_mean(63.0) in range(40, 48)  # 64 of 4096: about 44
