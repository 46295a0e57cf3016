"""The adaptive boundary's basis: what the upstream stage computes, and what the receiver accepts."""

from __future__ import annotations

import pytest
import torch

from pipeline.window_basis import basis_bytes, decode_basis, encode_basis, principal_basis
from pipeline.wire import BoundaryError


def _planted(hidden: int = 32, k: int = 3, tokens: int = 400, noise: float = 0.01) -> tuple[torch.Tensor, torch.Tensor]:
    """Rows that live (up to small noise) in a known k-dim subspace, and that subspace."""
    g = torch.Generator().manual_seed(0)
    q, _ = torch.linalg.qr(torch.randn(hidden, k, generator=g, dtype=torch.float64))
    rows = torch.randn(tokens, k, generator=g, dtype=torch.float64) @ q.T
    return (rows + noise * torch.randn(tokens, hidden, generator=g, dtype=torch.float64)).float(), q


def test_principal_basis_is_orthonormal_and_finds_the_planted_subspace():
    rows, planted = _planted()
    basis = principal_basis(rows, 3)
    assert basis.shape == (32, 3) and basis.dtype == torch.float32
    assert torch.allclose(basis.double().T @ basis.double(), torch.eye(3, dtype=torch.float64), atol=1e-5)
    # the planted directions lie in span(basis): projecting them changes almost nothing
    assert float((planted - basis.double() @ (basis.double().T @ planted)).norm()) < 0.01
    # a random basis of the same size keeps little of the same rows
    random_basis, _ = torch.linalg.qr(torch.randn(32, 3, generator=torch.Generator().manual_seed(1)))
    kept = lambda b: float((rows.double() @ b.double()).pow(2).sum() / rows.double().pow(2).sum())  # noqa: E731
    assert kept(basis) > 0.99 > 0.5 > kept(random_basis)


def test_principal_basis_is_the_same_for_the_same_rows_whatever_their_batch_shape():
    rows, _ = _planted()
    assert torch.equal(principal_basis(rows, 3), principal_basis(rows.reshape(4, 100, 32), 3))
    # each column's sign is fixed: its largest entry is positive
    basis = principal_basis(rows, 3)
    assert bool((basis.gather(0, basis.abs().argmax(0, keepdim=True)) > 0).all())


@pytest.mark.parametrize("k", [0, 32, 40])
def test_principal_basis_refuses_a_dimension_outside_the_hidden_size(k):
    with pytest.raises(ValueError, match="subspace dimension"):
        principal_basis(torch.randn(10, 32), k)


def test_a_basis_round_trips_through_its_bytes():
    basis = principal_basis(_planted()[0], 3)
    data = encode_basis(basis)
    assert len(data) == basis_bytes(32, 3) == 384
    assert torch.equal(decode_basis(data, 32, 3), basis)


def _hostile_bases() -> list[tuple[bytes, str]]:
    good = principal_basis(_planted()[0], 3)
    nan = good.clone()
    nan[0, 0] = float("nan")
    return [
        (encode_basis(good)[:-4], "bytes, expected 384"),
        (encode_basis(good) + b"\0" * 4, "bytes, expected 384"),
        (b"", "bytes, expected 384"),
        (encode_basis(nan), "non-finite"),
        (encode_basis(good * 2), "not orthonormal"),  # right shape, scaled columns
        (encode_basis(torch.zeros(32, 3)), "not orthonormal"),
        (encode_basis(torch.cat([good[:, :1]] * 3, dim=1)), "not orthonormal"),  # one direction three times
        (encode_basis(torch.full((32, 3), 1e30)), "not orthonormal"),
    ]


@pytest.mark.parametrize(("data", "words"), _hostile_bases())
def test_a_hostile_basis_is_a_boundary_error_naming_the_problem(data: bytes, words: str):
    with pytest.raises(BoundaryError, match=words):
        decode_basis(data, 32, 3)
