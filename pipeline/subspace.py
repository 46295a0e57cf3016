"""The subspace constraint: what keeps the residual stream minus the token embeddings in span(U).

In a Llama block the residual stream is only ever written by two projections, attention
``o_proj`` and MLP ``down_proj`` (no biases). If both map into span(U), every layer's output is
``embed(tokens) + U @ coordinates``. The token embedding itself is *anchored*: within a window
a compressed replica keeps ``E = E_anchor + (drift in span(U))`` where ``E_anchor`` is the
global embedding at the window's start, which every stage holds; so a stage can rebuild the
embedding part from token ids alone.

The constraint is kept by projection, not by a new parameterisation: parameters keep the
network's names and shapes, so a stage's payload aggregates with full replicas' payloads by
name exactly as today. A compressed replica projects after every inner step and once at the
start of a window (the outer step's sparse, quantized update is not exactly in span(U)).
"""

from __future__ import annotations

from collections.abc import Iterable

import torch

EMBED_NAME = "model.embed_tokens.weight"
_WRITERS = ("self_attn.o_proj.weight", "mlp.down_proj.weight")


def residual_writer_names(names: Iterable[str]) -> list[str]:
    """The parameters that write into the residual stream (one o_proj and one down_proj per block)."""
    return [n for n in names if n.endswith(_WRITERS)]


class SubspaceConstraint:
    """Projects a model's residual writers (and its embedding drift) onto span(U).

    ``project_weights=False`` is the *projected boundary* variant (``pipeline.boundary:
    projected``): the weights stay free and only what crosses a boundary is projected, so the
    receiving stage sees ``embed(tokens) + U Uᵀ (h − embed(tokens))`` instead of ``h``. That
    boundary is lossy, but the group trains the network's own θ through it rather than a
    projected copy of θ; in a network whose full replicas keep θ's residual writers out of span(U),
    only this variant's updates still improve θ (docs/pipeline.md, "Which boundary")."""

    def __init__(self, basis: torch.Tensor, project_weights: bool = True) -> None:
        if basis.ndim != 2 or basis.shape[1] >= basis.shape[0]:
            raise ValueError(f"basis must be (hidden, k) with k < hidden, got {tuple(basis.shape)}")
        self.basis = basis
        self.project_weights = project_weights

    @property
    def k(self) -> int:
        return int(self.basis.shape[1])

    def project_rows(self, x: torch.Tensor) -> torch.Tensor:
        """x @ U U^T: each row (a vector in the hidden space) onto span(U)."""
        u = self.basis.to(device=x.device, dtype=x.dtype)
        return (x @ u) @ u.T

    def project_columns(self, w: torch.Tensor) -> torch.Tensor:
        """U U^T @ w: a (hidden, in) weight's outputs onto span(U)."""
        u = self.basis.to(device=w.device, dtype=w.dtype)
        return u @ (u.T @ w)

    @torch.no_grad()
    def project_(self, params: dict[str, torch.Tensor], anchor_embedding: torch.Tensor | None) -> None:
        """In place: residual writers into span(U); the embedding to anchor + projected drift.

        ``params`` may hold any subset of the model (a stage's slice); what is absent is skipped.
        Nothing happens for a projected-boundary constraint (``project_weights=False``).
        """
        if not self.project_weights:
            return
        for name in residual_writer_names(params):
            params[name].copy_(self.project_columns(params[name]))
        if EMBED_NAME in params and anchor_embedding is not None:
            emb = params[EMBED_NAME]
            anchor = anchor_embedding.to(device=emb.device, dtype=emb.dtype)
            emb.copy_(anchor + self.project_rows(emb - anchor))
