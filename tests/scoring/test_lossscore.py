import pytest
import torch

from compression.sparse import SparseTensor
from scoring.lossscore import (
    LossMeasurement,
    UpdateMismatchError,
    apply_sparse_temporarily,
    loss_score,
    measure_update,
    relative_improvement,
    unique_indicator,
)


class Tiny(torch.nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.lin = torch.nn.Linear(16, 8)
        self.lowp = torch.nn.Parameter(torch.randn(32, dtype=torch.bfloat16))


def snapshot(model):
    return {n: p.detach().clone() for n, p in model.named_parameters()}


def bits_equal(a, b):
    return all(torch.equal(a[n].view(-1).view(torch.uint8), b[n].view(-1).view(torch.uint8)) for n in a)


def random_update(model, seed, frac=0.3):
    gen = torch.Generator().manual_seed(seed)
    up = {}
    for name, p in model.named_parameters():
        k = max(1, int(p.numel() * frac))
        idx = torch.randperm(p.numel(), generator=gen)[:k].sort().values
        up[name] = SparseTensor(tuple(p.shape), idx, torch.randn(k, generator=gen) * 1e-2)
    return up


def test_apply_touches_only_indices_and_restores_bit_exact():
    torch.manual_seed(0)
    model = Tiny()
    before = snapshot(model)
    up = random_update(model, 1)
    with apply_sparse_temporarily(model, up, lr=0.7):
        for name, p in model.named_parameters():
            flat, orig = p.detach().view(-1), before[name].view(-1)
            idx = up[name].indices
            mask = torch.ones(flat.numel(), dtype=torch.bool)
            mask[idx] = False
            assert torch.equal(flat[mask], orig[mask])
            expect = (orig[idx].float() - 0.7 * up[name].values).to(p.dtype)
            assert torch.equal(flat[idx], expect)
    assert bits_equal(before, snapshot(model))


def test_restore_on_exception_and_repeated_use():
    model = Tiny()
    before = snapshot(model)
    up = random_update(model, 2, frac=1.0)
    with pytest.raises(RuntimeError), apply_sparse_temporarily(model, up, lr=1.0):
        raise RuntimeError("boom")
    for _ in range(3):
        with apply_sparse_temporarily(model, up, lr=1.0):
            pass
    assert bits_equal(before, snapshot(model))


@pytest.mark.parametrize(
    "bad",
    [
        {"nope": SparseTensor((2,), torch.tensor([0]), torch.tensor([1.0]))},
        {"lin.bias": SparseTensor((9,), torch.tensor([0]), torch.tensor([1.0]))},
        {"lin.bias": SparseTensor((8,), torch.tensor([8]), torch.tensor([1.0]))},
        {"lin.bias": SparseTensor((8,), torch.tensor([2, 2]), torch.tensor([1.0, 1.0]))},
    ],
)
def test_bad_update_changes_nothing(bad):
    model = Tiny()
    before = snapshot(model)
    good = {"lin.weight": SparseTensor((8, 16), torch.tensor([0, 1]), torch.tensor([5.0, 5.0]))}
    with pytest.raises(UpdateMismatchError), apply_sparse_temporarily(model, {**good, **bad}, lr=1.0):
        pass
    assert bits_equal(before, snapshot(model))


def mse(model, batches):
    with torch.no_grad():
        return sum(float(((model.lin(x) - y) ** 2).mean()) for x, y in batches) / len(batches)


def test_measure_update_own_vs_random():
    torch.manual_seed(3)
    model = Tiny()
    own = [(torch.randn(4, 16), torch.randn(4, 8))]
    rand = [(torch.randn(64, 16), torch.randn(64, 8))]
    # a step fitted to "own" data only: a gradient step on it
    loss = ((model.lin(own[0][0]) - own[0][1]) ** 2).mean()
    grads = torch.autograd.grad(loss, [model.lin.weight, model.lin.bias])
    up = {
        n: SparseTensor(tuple(g.shape), torch.arange(g.numel()), g.reshape(-1).detach())
        for n, g in zip(["lin.weight", "lin.bias"], grads, strict=True)
    }
    model.train()
    m = measure_update(model, up, 0.1, own, rand, mse)
    assert model.training  # mode restored
    assert m.after_own < m.before_own
    assert unique_indicator(m) == 1
    assert m.before_rand == pytest.approx(mse(model, rand))
    m2 = measure_update(model, up, 0.1, own, rand, mse, before_rand=123.0)
    assert m2.before_rand == 123.0


def test_scores():
    m = LossMeasurement(before_own=4.0, after_own=3.0, before_rand=4.0, after_rand=3.8)
    assert loss_score(m) == pytest.approx(0.05)
    assert unique_indicator(m) == 1
    assert unique_indicator(m, margin=0.3) == -1
    tie = LossMeasurement(4.0, 4.0, 4.0, 4.0)
    assert loss_score(tie) == 0.0 and unique_indicator(tie) == -1
    assert relative_improvement(4.0, float("nan")) == -1.0
    assert relative_improvement(1.0, 100.0) == -1.0
    assert relative_improvement(0.0, 0.0) == -1.0
