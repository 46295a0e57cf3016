import torch

from pipeline.basis import subspace_basis


def test_basis_is_orthonormal_and_fixed_by_the_seed():
    u = subspace_basis(seed=1, hidden=128, k=8)
    assert u.shape == (128, 8) and u.dtype == torch.float32
    assert torch.allclose(u.T @ u, torch.eye(8), atol=1e-6)
    assert torch.equal(u, subspace_basis(seed=1, hidden=128, k=8))
    assert not torch.allclose(u, subspace_basis(seed=2, hidden=128, k=8))


def test_basis_refuses_a_dimension_that_compresses_nothing():
    for k in (0, 128, 200):
        try:
            subspace_basis(seed=1, hidden=128, k=k)
        except ValueError as exc:
            assert "k=" in str(exc)
        else:
            raise AssertionError(f"k={k} accepted")
