import torch

from compression.quantize import FIT_SAMPLE, dequantize, lloyd_threshold, optimal_threshold, quantize


def test_no_sign_flips_and_centroids_are_means():
    v = torch.distributions.StudentT(3.0).sample((10_000,))
    codes, table = quantize(v)
    d = dequantize(codes, table)
    assert torch.equal(d > 0, v > 0)
    for c in range(4):
        members = v[codes == c]
        assert torch.allclose(table[c], members.mean(), rtol=1e-5)
    assert table[0] < table[1] and table[2] > table[3]  # low/high magnitude per sign


def test_optimal_split_beats_lloyd_and_lloyd_improves_on_the_mean():
    v = torch.distributions.StudentT(3.0).sample((FIT_SAMPLE,))  # exactly FIT_SAMPLE: fitted on every value once

    def err(threshold):
        return (dequantize(*quantize(v, threshold)) - v).norm().item()

    lloyd = [err(lambda m, i=i: lloyd_threshold(m, i)) for i in (0, 1, 4)]
    assert lloyd[2] <= lloyd[1] * 1.0001 and lloyd[1] <= lloyd[0] * 1.0001
    assert err(optimal_threshold) <= lloyd[2] * 1.0001


def test_optimal_threshold_by_brute_force():
    mag = torch.tensor([0.1, 0.2, 0.25, 1.0, 1.1, 5.0])
    best = min(range(1, 6), key=lambda k: mag[:k].var(unbiased=False) * k + mag[k:].var(unbiased=False) * (6 - k))
    want = (mag[:best].mean() + mag[best:].mean()) / 2
    assert torch.allclose(optimal_threshold(mag[torch.randperm(6)]), want)


def test_degenerate_inputs_give_finite_tables():
    for v in (torch.full((100,), 2.5), torch.tensor([-1.0]), torch.zeros(5), torch.tensor([1.0, -1.0])):
        codes, table = quantize(v)
        assert torch.isfinite(table).all()
        assert torch.allclose(dequantize(codes, table), v)
