"""GPipe in one process: every micro-batch forward through all stages, then backward in reverse.

Each boundary crossing goes through the boundary codec *and* the wire frame (bytes out, bytes
in, checked as a peer's), so the byte counts are those a real link would carry and the receiving
stage's graph starts at a fresh leaf: no autograd edge crosses a boundary.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

import torch

from pipeline.codec import DenseCodec, SubspaceCodec
from pipeline.stage import Stage, lm_loss
from pipeline.wire import Expected, FrameKind, decode_frame, encode_frame

Codec = DenseCodec | SubspaceCodec


@dataclass
class Traffic:
    """Bytes that crossed boundaries, forward (activations) and backward (gradients)."""

    activation_bytes: int = 0
    gradient_bytes: int = 0
    per_boundary: list[int] = field(default_factory=list)  # both directions, per boundary

    def add(self, boundary: int, n: int, forward: bool) -> None:
        while len(self.per_boundary) <= boundary:
            self.per_boundary.append(0)
        self.per_boundary[boundary] += n
        if forward:
            self.activation_bytes += n
        else:
            self.gradient_bytes += n

    def merge(self, other: Traffic) -> None:
        self.activation_bytes += other.activation_bytes
        self.gradient_bytes += other.gradient_bytes
        for b, n in enumerate(other.per_boundary):
            while len(self.per_boundary) <= b:
                self.per_boundary.append(0)
            self.per_boundary[b] += n


def _cross(payload, kind: FrameKind, codec: Codec, vocab: int, ids: torch.Tensor, traffic: Traffic, b: int):
    frame = encode_frame(kind, payload, vocab)
    traffic.add(b, len(frame), forward=kind is FrameKind.ACTIVATION)
    batch, seq = ids.shape
    with_ids = kind is FrameKind.ACTIVATION and codec.sends_token_ids
    return decode_frame(frame, Expected(kind, batch, seq, codec.width, vocab, with_ids))


def gpipe_step(
    stages: Sequence[Stage], codecs: Sequence[Codec], batch: torch.Tensor, n_micro: int, vocab: int
) -> tuple[torch.Tensor, Traffic]:
    """Accumulate every stage's gradients for ``batch`` (mean loss over all tokens); return the loss."""
    if len(codecs) != len(stages) - 1:
        raise ValueError(f"{len(stages)} stages need {len(stages) - 1} boundary codecs, got {len(codecs)}")
    if batch.shape[0] % n_micro:
        raise ValueError(f"a batch of {batch.shape[0]} rows does not split into {n_micro} micro-batches")
    traffic = Traffic()
    saved: list[list[tuple[torch.Tensor | None, torch.Tensor]]] = [[] for _ in stages]
    losses = []
    for ids in batch.chunk(n_micro):
        x: torch.Tensor | None = None
        out = ids  # replaced by each stage's output; the first stage reads the ids
        for s, stage in enumerate(stages):
            if s > 0:
                codec = codecs[s - 1]
                msg = _cross(codec.encode_activation(out, ids), FrameKind.ACTIVATION, codec, vocab, ids, traffic, s - 1)
                x = codec.decode_activation(msg, ids).requires_grad_(True)
            out = stage.train_forward(x, ids)  # bf16 autocast on CUDA, as the workers and miners
            saved[s].append((x, out))
        losses.append(lm_loss(out, ids) / n_micro)
    for m in reversed(range(n_micro)):
        losses[m].backward()
        for s in range(len(stages) - 1, 0, -1):
            codec, (x, _) = codecs[s - 1], saved[s][m]
            ids = batch.chunk(n_micro)[m]
            msg = _cross(codec.encode_gradient(x.grad), FrameKind.GRADIENT, codec, vocab, ids, traffic, s - 1)
            saved[s - 1][m][1].backward(codec.decode_gradient(msg))
    return torch.stack([loss.detach() for loss in losses]).sum(), traffic
