"""Boundary frames on the wire: a fixed header, float32 values, optional token ids.

A frame comes from another machine, so the reader trusts nothing: the receiver says what it
expects (kind, batch, seq, width, vocab) from its own schedule and the run's hparams, and
anything else - wrong magic, sizes, lengths, non-finite values, token ids outside the vocab - is
a :class:`BoundaryError` naming the problem. Sizes are checked before any tensor is built.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass
from enum import IntEnum

import torch

from pipeline.codec import Boundary

MAGIC = b"TSB1"
_HEADER = struct.Struct("<4sBBIII")  # magic, kind, id bytes (0, 2 or 4), batch, seq, width
HEADER_BYTES = _HEADER.size
MAX_FRAME_BYTES = 1 << 30


class BoundaryError(ValueError):
    """A boundary frame is malformed or is not the one this stage expects; the message says which."""


class FrameKind(IntEnum):
    ACTIVATION = 1
    GRADIENT = 2


@dataclass(frozen=True)
class Expected:
    """What the receiving stage knows the next frame must be."""

    kind: FrameKind
    batch: int
    seq: int
    width: int
    vocab: int
    with_ids: bool


def id_bytes(vocab: int) -> int:
    return 2 if vocab <= 1 << 16 else 4


def frame_bytes(batch: int, seq: int, width: int, ids_width: int) -> int:
    """The exact size of a frame (header + values + ids)."""
    return HEADER_BYTES + batch * seq * (4 * width + ids_width)


def encode_frame(kind: FrameKind, msg: Boundary, vocab: int) -> bytes:
    batch, seq, width = (int(d) for d in msg.values.shape)
    width_ids = id_bytes(vocab) if msg.token_ids is not None else 0
    header = _HEADER.pack(MAGIC, int(kind), width_ids, batch, seq, width)
    values = msg.values.detach().to(device="cpu", dtype=torch.float32).contiguous().numpy().tobytes()
    if msg.token_ids is None:
        return header + values
    dtype = torch.int16 if width_ids == 2 else torch.int32
    # uint16 ids travel as their int16 bit pattern (torch has no uint16 arithmetic on every build)
    ids = msg.token_ids.to(device="cpu", dtype=torch.int64)
    if width_ids == 2:
        ids = torch.where(ids >= 1 << 15, ids - (1 << 16), ids)
    return header + values + ids.to(dtype).contiguous().numpy().tobytes()


def decode_frame(data: bytes, expected: Expected) -> Boundary:
    if len(data) > MAX_FRAME_BYTES:
        raise BoundaryError(f"frame of {len(data)} bytes exceeds the {MAX_FRAME_BYTES}-byte cap")
    if len(data) < HEADER_BYTES:
        raise BoundaryError(f"frame of {len(data)} bytes is shorter than its {HEADER_BYTES}-byte header")
    magic, kind, width_ids, batch, seq, width = _HEADER.unpack_from(data)
    if magic != MAGIC:
        raise BoundaryError(f"bad magic {magic!r}: not a tessera boundary frame")
    want_ids = id_bytes(expected.vocab) if expected.with_ids else 0
    got = (kind, width_ids, batch, seq, width)
    want = (int(expected.kind), want_ids, expected.batch, expected.seq, expected.width)
    if got != want:
        raise BoundaryError(f"frame header (kind, id bytes, batch, seq, width) = {got}, expected {want}")
    size = frame_bytes(batch, seq, width, width_ids)
    if len(data) != size:
        raise BoundaryError(f"frame has {len(data)} bytes, its header implies {size}")
    n_values = batch * seq * width
    end = HEADER_BYTES + 4 * n_values
    values = torch.frombuffer(bytearray(data[HEADER_BYTES:end]), dtype=torch.float32).view(batch, seq, width)
    if not torch.isfinite(values).all():
        raise BoundaryError("frame carries non-finite values")
    if not width_ids:
        return Boundary(values, None)
    raw = torch.frombuffer(bytearray(data[end:]), dtype=torch.int16 if width_ids == 2 else torch.int32)
    ids = raw.to(torch.int64)
    if width_ids == 2:
        ids = torch.where(ids < 0, ids + (1 << 16), ids)
    if ids.numel() and (int(ids.min()) < 0 or int(ids.max()) >= expected.vocab):
        raise BoundaryError(f"token ids outside [0, {expected.vocab})")
    return Boundary(values, ids.view(batch, seq))
