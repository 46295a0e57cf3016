"""Boundary frames come from another machine: every malformed or unexpected one is refused."""

import math
import struct

import pytest
import torch

from pipeline.codec import Boundary
from pipeline.wire import HEADER_BYTES, BoundaryError, Expected, FrameKind, decode_frame, encode_frame

VOCAB = 70000  # > 2**16: ids travel as 4 bytes
EXPECT = Expected(FrameKind.ACTIVATION, batch=2, seq=3, width=4, vocab=VOCAB, with_ids=True)


def _frame(values=None, ids=None, vocab=VOCAB):
    values = torch.arange(24, dtype=torch.float32).view(2, 3, 4) if values is None else values
    ids = torch.tensor([[0, 1, 65535], [65536, 69999, 5]]) if ids is None else ids
    return encode_frame(FrameKind.ACTIVATION, Boundary(values, ids), vocab)


def test_a_frame_round_trips_bit_exactly_with_wide_and_narrow_ids():
    msg = decode_frame(_frame(), EXPECT)
    assert torch.equal(msg.values, torch.arange(24, dtype=torch.float32).view(2, 3, 4))
    assert msg.token_ids.tolist() == [[0, 1, 65535], [65536, 69999, 5]]
    narrow = Expected(FrameKind.ACTIVATION, 2, 3, 4, vocab=65536, with_ids=True)
    ids = torch.tensor([[0, 32767, 32768], [65535, 1, 2]])
    assert decode_frame(_frame(ids=ids, vocab=65536), narrow).token_ids.tolist() == ids.tolist()


@pytest.mark.parametrize(
    "mutate, needle",
    [
        (lambda f: f[:HEADER_BYTES - 1], "shorter than"),
        (lambda f: b"XXXX" + f[4:], "magic"),
        (lambda f: f[:-1], "header implies"),
        (lambda f: f + b"\0", "header implies"),
        (lambda f: f[:4] + bytes([2]) + f[5:], "expected"),  # a gradient where an activation is due
        (lambda f: f[:6] + struct.pack("<I", 1 << 30) + f[10:], "expected"),  # a huge batch
        (lambda f: f[:5] + bytes([0]) + f[6:], "expected"),  # ids left out
    ],
)
def test_malformed_frames_are_refused_with_a_reason(mutate, needle):
    with pytest.raises(BoundaryError, match=needle):
        decode_frame(mutate(_frame()), EXPECT)


def test_non_finite_values_and_out_of_vocab_ids_are_refused():
    bad = torch.zeros(2, 3, 4)
    bad[1, 2, 3] = math.nan
    with pytest.raises(BoundaryError, match="non-finite"):
        decode_frame(_frame(values=bad), EXPECT)
    with pytest.raises(BoundaryError, match="outside"):
        decode_frame(_frame(ids=torch.tensor([[0, 1, 2], [3, 4, 70000]]), vocab=1 << 20), EXPECT)


def test_random_bytes_never_escape_as_another_exception():
    generator = torch.Generator().manual_seed(5)
    good = bytearray(_frame())
    for trial in range(200):
        data = bytearray(good)
        for pos in torch.randint(0, len(data), (1 + trial % 4,), generator=generator).tolist():
            data[pos] = int(torch.randint(0, 256, (1,), generator=generator))
        try:
            decode_frame(bytes(data), EXPECT)
        except BoundaryError:
            pass
