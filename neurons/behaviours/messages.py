"""Payload transformations the behaviours publish, on real compressed messages.

Each starts from what an honest node holds (its own compressed message, peers' decoded updates,
the applied aggregate) and goes through the real codec, so a transformed payload differs from an
honest one only in the way its behaviour names. Value-table edits work on the encoded blob
itself (the 4 float32 centroids after the Golomb parameter): scaling them multiplies every kept
value exactly and leaves the index set untouched, which is what ``scaled`` claims to be. A
table must keep its (+, +, -, -) sign order, so a negated update is re-encoded instead
(``negated``): same coordinates, values re-quantized.
"""

from __future__ import annotations

import struct
from collections.abc import Mapping, Sequence

import torch

from compression import CodecParams, CompressedMessage, ErrorFeedbackCompressor, SparseUpdate, decode_message

_TABLE = slice(2, 18)  # a blob's value table: 4 little-endian float32 after the uint16 Golomb parameter

Dense = dict[str, torch.Tensor]


def value_table(blob: torch.Tensor) -> tuple[float, ...]:
    return struct.unpack("<4f", blob.numpy().tobytes()[_TABLE])


def with_value_table(blob: torch.Tensor, table: Sequence[float]) -> torch.Tensor:
    """The blob with its 4 centroids replaced; indices and codes are kept byte for byte."""
    raw = bytearray(blob.numpy().tobytes())
    raw[_TABLE] = struct.pack("<4f", *table)
    return torch.frombuffer(raw, dtype=torch.uint8).clone()


def scale_values(msg: CompressedMessage, factors: float | Mapping[str, float]) -> CompressedMessage:
    """``msg`` with every kept value of parameter p multiplied by ``factors[p]`` (or one factor >= 0)."""
    blobs = {}
    for name, blob in msg.blobs.items():
        factor = factors if isinstance(factors, float | int) else factors[name]
        if factor < 0:
            raise ValueError("a negative factor breaks the table's sign order; use negated()")
        blobs[name] = with_value_table(blob, [v * factor for v in value_table(blob)])
    return CompressedMessage(params=msg.params, shapes=dict(msg.shapes), blobs=blobs)


def negated(msg: CompressedMessage) -> CompressedMessage:
    """``msg`` pointing the other way: the same coordinates, every value's sign flipped."""
    return encode_dense({name: -t for name, t in dense_of(decode_message(msg)).items()}, msg.params)


def encode_dense(dense: Mapping[str, torch.Tensor], params: CodecParams) -> CompressedMessage:
    """The top-k message of a dense update, from an empty error buffer (nothing carried over)."""
    shapes = {name: tuple(t.shape) for name, t in dense.items()}
    fresh = ErrorFeedbackCompressor(shapes, chunk_size=params.chunk_size, topk_per_chunk=params.topk_per_chunk, beta=1.0)
    return fresh.compress(dense)


def dense_of(update: SparseUpdate) -> Dense:
    return {name: part.to_dense() for name, part in update.items()}


def random_message(
    shapes: Mapping[str, tuple[int, ...]], chunk_size: int, topk_per_chunk: int, seed: int
) -> CompressedMessage:
    """A real compressed message of the model's shapes, from a random pseudo-gradient."""
    gen = torch.Generator().manual_seed(seed)
    delta = {name: torch.randn(shape, generator=gen) * 1e-3 for name, shape in shapes.items()}
    return encode_dense(delta, CodecParams(chunk_size=chunk_size, topk_per_chunk=topk_per_chunk))


def zeros_message(shapes: Mapping[str, tuple[int, ...]], params: CodecParams) -> CompressedMessage:
    return encode_dense({name: torch.zeros(shape) for name, shape in shapes.items()}, params)


def noise_like(msg: CompressedMessage, seed: int) -> CompressedMessage:
    """Random coordinates and signs whose per-parameter norm equals ``msg``'s.

    Same codec, same number of kept values, same size on the wire: only what the update does to
    the loss can tell it from an honest one.
    """
    noise = random_message(msg.shapes, msg.params.chunk_size, msg.params.topk_per_chunk, seed)
    want, have = _norms(msg), _norms(noise)
    return scale_values(noise, {name: want[name] / have[name] if have[name] else 0.0 for name in msg.blobs})


def _norms(msg: CompressedMessage) -> dict[str, float]:
    return {name: float(part.values.norm()) for name, part in decode_message(msg).items()}


def with_noise(dense: Mapping[str, torch.Tensor], relative: float, seed: int) -> Dense:
    """``dense`` plus Gaussian noise of ``relative`` x the RMS of each parameter's non-zero values.

    Small enough that a sparse copy's own coordinates stay the largest (its index set barely
    moves), which is the copier's hope of looking like its own work while keeping the value.
    """
    gen = torch.Generator().manual_seed(seed)
    out = {}
    for name, t in dense.items():
        kept = t[t != 0]
        rms = float(kept.pow(2).mean().sqrt()) if kept.numel() else 0.0
        out[name] = t + torch.randn(t.shape, generator=gen) * (relative * rms)
    return out


def mean_dense(updates: Sequence[SparseUpdate], shapes: Mapping[str, tuple[int, ...]]) -> Dense:
    """The plain mean of several peers' updates (zero where a peer kept nothing)."""
    out = {name: torch.zeros(shape) for name, shape in shapes.items()}
    for update in updates:
        for name, part in update.items():
            out[name].view(-1).index_add_(0, part.indices, part.values / len(updates))
    return out
