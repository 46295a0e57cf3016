"""Boundary codecs: what one stage hands the next (activations) and the previous (gradients).

``SubspaceCodec`` sends, per token, the k coordinates of ``hidden - E_anchor[token]`` in the
basis U plus the token id; the receiver rebuilds ``E_anchor[token] + U @ coordinates``. For a
model whose residual writers are in span(U) (``pipeline.subspace``) this is exact up to float32
rounding; for any other model it is the orthogonal projection (lossy).

Gradients need no token ids: the sender's output only moves inside span(U), so only the
component of dL/dh in span(U) matters, ``U^T dL/dh`` (exact by the chain rule, not an
approximation, when the constraint holds).

``DenseCodec`` sends the full hidden state: the uncompressed baseline.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch


@dataclass(frozen=True)
class Boundary:
    """What crosses one boundary for one micro-batch: per-token vectors, token ids if needed."""

    values: torch.Tensor  # (batch, seq, width) float32
    token_ids: torch.Tensor | None  # (batch, seq) int64, or None for gradients / the dense codec


class DenseCodec:
    """The uncompressed boundary: the hidden state itself, in both directions."""

    def __init__(self, hidden: int) -> None:
        self.width = hidden
        self.sends_token_ids = False

    def encode_activation(self, hidden: torch.Tensor, token_ids: torch.Tensor) -> Boundary:
        return Boundary(hidden.detach().to(torch.float32), None)

    def decode_activation(self, msg: Boundary, token_ids: torch.Tensor | None = None) -> torch.Tensor:
        return msg.values

    def encode_gradient(self, grad: torch.Tensor) -> Boundary:
        return Boundary(grad.detach().to(torch.float32), None)

    def decode_gradient(self, msg: Boundary) -> torch.Tensor:
        return msg.values


class SubspaceCodec:
    """Coordinates in span(U) relative to the anchored token embedding, plus token ids."""

    def __init__(self, basis: torch.Tensor, anchor_embedding: torch.Tensor) -> None:
        if anchor_embedding.shape[1] != basis.shape[0]:
            raise ValueError(f"embedding width {anchor_embedding.shape[1]} != basis rows {basis.shape[0]}")
        self.basis = basis.to(torch.float32)
        # A frozen copy: the stage that trains the embedding must not move the receiver's anchor.
        self.anchor = anchor_embedding.detach().to(torch.float32).clone()
        self.width = int(basis.shape[1])
        self.sends_token_ids = True

    def _u(self, like: torch.Tensor) -> torch.Tensor:
        return self.basis.to(like.device)

    def encode_activation(self, hidden: torch.Tensor, token_ids: torch.Tensor) -> Boundary:
        hidden = hidden.detach().to(torch.float32)
        rest = hidden - self.anchor.to(hidden.device)[token_ids]
        return Boundary(rest @ self._u(hidden), token_ids)

    def decode_activation(self, msg: Boundary, token_ids: torch.Tensor | None = None) -> torch.Tensor:
        ids = msg.token_ids if msg.token_ids is not None else token_ids
        if ids is None:
            raise ValueError("the subspace codec needs the micro-batch's token ids to rebuild the embedding part")
        return self.anchor.to(msg.values.device)[ids] + msg.values @ self._u(msg.values).T

    def encode_gradient(self, grad: torch.Tensor) -> Boundary:
        grad = grad.detach().to(torch.float32)
        return Boundary(grad @ self._u(grad), None)

    def decode_gradient(self, msg: Boundary) -> torch.Tensor:
        return msg.values @ self._u(msg.values).T
