import torch

from compression.quantize import dequantize, quantize


def test_no_sign_flips_and_centroids_are_means():
    v = torch.distributions.StudentT(3.0).sample((10_000,))
    codes, table = quantize(v)
    d = dequantize(codes, table)
    assert torch.equal(d > 0, v > 0)
    for c in range(4):
        members = v[codes == c]
        assert torch.allclose(table[c], members.mean(), rtol=1e-5)
    assert table[0] < table[1] and table[2] > table[3]  # low/high magnitude per sign


def test_more_lloyd_iterations_do_not_hurt():
    v = torch.distributions.StudentT(3.0).sample((20_000,))
    errs = [(dequantize(*quantize(v, iterations=i)) - v).norm().item() for i in (0, 1, 4)]
    assert errs[2] <= errs[1] * 1.0001 and errs[1] <= errs[0] * 1.0001


def test_degenerate_inputs_give_finite_tables():
    for v in (torch.full((100,), 2.5), torch.tensor([-1.0]), torch.zeros(5), torch.tensor([1.0, -1.0])):
        codes, table = quantize(v)
        assert torch.isfinite(table).all()
        assert torch.allclose(dequantize(codes, table), v)
