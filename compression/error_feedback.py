"""Error-feedback compression of pseudo-gradients (the miner's side of SparseLoCo).

Per parameter: e <- beta * e + delta; compress e; e <- e - decode(message). What the message
could not carry (unselected coordinates and the quantization residual of selected ones) stays
in e and is sent in a later window.
"""

from __future__ import annotations

from collections.abc import Mapping

import torch

from compression.codec import CodecParams, CompressedMessage
from compression.encoder import MessageEncoder

_PREFIX = "error/"


class ErrorFeedbackCompressor:
    """Holds the error-feedback buffers (float32, on ``device``) of one miner."""

    def __init__(
        self,
        shapes: Mapping[str, tuple[int, ...]],
        chunk_size: int = 64,
        topk_per_chunk: int = 64,
        beta: float = 0.95,
        device: torch.device | str = "cpu",
    ) -> None:
        if not 0.0 < beta <= 1.0:
            raise ValueError(f"error-feedback beta must be in (0, 1], got {beta}")
        self.params = CodecParams(chunk_size=chunk_size, topk_per_chunk=topk_per_chunk)
        self.beta = beta
        self.device = torch.device(device)
        self.shapes = {name: tuple(int(d) for d in shape) for name, shape in shapes.items()}
        self.layouts = {name: self.params.layout(shape) for name, shape in self.shapes.items()}
        self.encoder = MessageEncoder(self.layouts, self.device)
        # One flat buffer for all parameters (what the encoder reads); ``error`` holds views of it.
        self._flat = torch.zeros(self.encoder.numel, dtype=torch.float32, device=self.device)
        self.error = {name: self.encoder.view(self._flat, i) for i, name in enumerate(self.encoder.names)}

    def compress(self, deltas: Mapping[str, torch.Tensor]) -> CompressedMessage:
        """Fold ``deltas`` (theta_before - theta_after) into the error and compress it."""
        if set(deltas) != set(self.shapes):
            missing, extra = set(self.shapes) - set(deltas), set(deltas) - set(self.shapes)
            raise KeyError(f"pseudo-gradient names differ: missing {sorted(missing)}, extra {sorted(extra)}")
        for name, delta in deltas.items():
            if tuple(delta.shape) != self.shapes[name]:
                raise ValueError(f"{name}: shape {tuple(delta.shape)} != {self.shapes[name]}")
        for name, e in self.error.items():
            # e <- delta + beta * e, in one pass
            torch.add(deltas[name].to(device=e.device, dtype=e.dtype), e, alpha=self.beta, out=e)
        enc = self.encoder.encode(self._flat)
        self._flat.index_add_(0, enc.flat_indices, enc.decoded, alpha=-1.0)
        return CompressedMessage(params=self.params, shapes=dict(self.shapes), blobs=enc.blobs)

    def state_dict(self) -> dict[str, torch.Tensor]:
        """Tensors only (safetensors-ready): the error buffers under ``error/<name>``."""
        # Copies: the buffers are views of one flat tensor, and safetensors refuses shared storage.
        return {_PREFIX + name: e.clone() for name, e in self.error.items()}

    def reset(self) -> None:
        """Forget the residual: every error buffer back to zero."""
        for t in self.error.values():
            t.zero_()

    def load_state_dict(self, state: Mapping[str, torch.Tensor]) -> None:
        expected = {_PREFIX + n for n in self.shapes}
        if set(state) != expected:
            raise KeyError(f"error-feedback state names differ: {sorted(set(state) ^ expected)}")
        for name, shape in self.shapes.items():
            t = state[_PREFIX + name]
            if tuple(t.shape) != shape:
                raise ValueError(f"{name}: saved error has shape {tuple(t.shape)}, expected {shape}")
            self.error[name].copy_(t.to(device=self.device, dtype=torch.float32))
