"""A boundary's subspace chosen each window from what crosses it: the upstream stage's top-k
principal directions of (hidden − embedding), sent once to the downstream stage.

Why: a compressed group in a network whose full replicas train θ unconstrained cannot keep the
boundary exact (that needs θ's residual writers inside the subspace). Its boundary then projects
what crosses it, and how much survives depends on the basis. Measured on the tiny model after a
few windows (docs/pipeline.md, "Which boundary"): a random k = 4 basis keeps 2–3 % of the
boundary's computed part, the window's top-4 principal directions 72–86 %. The basis costs
k x hidden float32 once per window per boundary (2 KiB on tiny, next to ~150 KiB of frames).

Every stage holds θ_w, so the upstream stage computes the basis alone from the model's prefix up
to its boundary on the window's first batch; no stage waits for another to compute it.
"""

from __future__ import annotations

import torch

from pipeline.stage import LayerRange, Stage
from pipeline.wire import BoundaryError

ORTHONORMAL_TOLERANCE = 1e-3


def principal_basis(rest: torch.Tensor, k: int) -> torch.Tensor:
    """(hidden, k) float32, orthonormal: the top-k principal directions (uncentred) of the rows of
    ``rest`` (tokens x hidden), from a float64 eigendecomposition of rest^T rest, each column's
    sign fixed so its largest-magnitude entry is positive."""
    x = rest.detach().reshape(-1, rest.shape[-1]).to(torch.float64)
    hidden = x.shape[1]
    if not 0 < k < hidden:
        raise ValueError(f"subspace dimension k={k} must be in (0, hidden={hidden})")
    _, vectors = torch.linalg.eigh(x.T @ x)  # ascending eigenvalues
    top = vectors[:, -k:].flip(1)
    peak = top.abs().argmax(dim=0)
    top = top * torch.sign(top[peak, torch.arange(k)]).unsqueeze(0)
    return top.to(torch.float32).contiguous()


def boundary_rest(model, stop: int, batch: torch.Tensor, embedding: torch.Tensor) -> torch.Tensor:
    """What crosses the boundary after layer ``stop`` beyond the embedding: the model's layers
    [0, stop) applied to ``batch``, minus its rows of ``embedding`` (the table the receiver
    rebuilds them from, θ_w's)."""
    prefix = Stage(model, LayerRange(0, stop, int(model.config.num_hidden_layers)))
    with torch.no_grad():
        return prefix.forward(None, batch) - embedding[batch]


def boundary_basis(model, stop: int, probe: torch.Tensor, embedding: torch.Tensor, k: int) -> torch.Tensor:
    """The window's basis of the boundary after layer ``stop``: ``principal_basis`` of its rest
    on the probe batch."""
    return principal_basis(boundary_rest(model, stop, probe, embedding), k)


def basis_bytes(hidden: int, k: int) -> int:
    return 4 * hidden * k


def encode_basis(basis: torch.Tensor) -> bytes:
    return basis.detach().to(device="cpu", dtype=torch.float32).contiguous().numpy().tobytes()


def decode_basis(data: bytes, hidden: int, k: int) -> torch.Tensor:
    """The upstream stage's basis, checked as a peer's bytes: exact size, finite, orthonormal
    columns. BoundaryError otherwise (the window is then skipped like any boundary fault)."""
    if len(data) != basis_bytes(hidden, k):
        raise BoundaryError(f"basis of {len(data)} bytes, expected {basis_bytes(hidden, k)} ({hidden} x {k} float32)")
    basis = torch.frombuffer(bytearray(data), dtype=torch.float32).reshape(hidden, k)
    if not bool(torch.isfinite(basis).all()):
        raise BoundaryError("basis holds non-finite values")
    gram = basis.double().T @ basis.double()
    error = float((gram - torch.eye(k, dtype=torch.float64)).abs().max())
    if error > ORTHONORMAL_TOLERANCE:
        raise BoundaryError(f"basis columns are not orthonormal (|U^T U - I| = {error:.3g})")
    return basis
