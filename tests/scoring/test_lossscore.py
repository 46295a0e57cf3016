import math
import random

import pytest
import torch

from compression.sparse import SparseTensor
from scoring.lossscore import (
    T_CLIP,
    LossMeasurement,
    UpdateMismatchError,
    apply_dense_temporarily,
    apply_sparse_temporarily,
    loss_score,
    measure_update,
    per_sequence_gains,
    reference_losses,
    reference_t,
    relative_improvement,
    sequence_losses,
    unique_t,
    welch_t,
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
    """Per-sample loss, in batch order (what a LossFn returns)."""
    with torch.no_grad():
        return torch.cat([((model.lin(x) - y) ** 2).mean(dim=1) for x, y in batches])


def test_measure_update_own_vs_random():
    torch.manual_seed(3)
    model = Tiny()
    own = [(torch.randn(4, 16), torch.randn(4, 8)), (torch.randn(4, 16), torch.randn(4, 8))]
    rand = [(torch.randn(32, 16), torch.randn(32, 8))]
    # a step fitted to "own" data only: a gradient step on it
    x, y = torch.cat([b[0] for b in own]), torch.cat([b[1] for b in own])
    loss = ((model.lin(x) - y) ** 2).mean()
    grads = torch.autograd.grad(loss, [model.lin.weight, model.lin.bias])
    up = {
        n: SparseTensor(tuple(g.shape), torch.arange(g.numel()), g.reshape(-1).detach())
        for n, g in zip(["lin.weight", "lin.bias"], grads, strict=True)
    }
    model.train()
    m = measure_update(model, up, 0.3, own, rand, mse)
    assert model.training  # mode restored
    assert len(m.own_before) == len(m.own_after) == 8 and len(m.rand_after) == 32  # per sequence
    assert m.after_own < m.before_own
    assert unique_t(m) > 2.33  # fitted to its own data: a clear own-data edge
    assert m.before_rand == pytest.approx(float(mse(model, rand).mean()))
    m2 = measure_update(model, up, 0.3, own, rand, mse, before_rand=[123.0] * 32)
    assert m2.rand_before == (123.0,) * 32


def test_loss_score_is_relative_improvement_of_the_mean():
    m = LossMeasurement.of([4.0, 4.0], [3.0, 3.0], [4.0, 4.0], [3.9, 3.7])
    assert loss_score(m) == pytest.approx(0.05)
    tie = LossMeasurement.of([4.0] * 3, [4.0] * 3, [4.0] * 3, [4.0] * 3)
    assert loss_score(tie) == 0.0 and unique_t(tie) == 0.0
    assert relative_improvement(4.0, float("nan")) == -1.0
    assert relative_improvement(1.0, 100.0) == -1.0
    assert relative_improvement(0.0, 0.0) == -1.0


def test_welch_t_known_values_and_guards():
    # means 2.5 vs 0.5, variances 5/3 and 1/3, n = 4 each: se = sqrt(0.5), t = 2 / sqrt(0.5)
    assert welch_t([1, 2, 3, 4], [0, 0, 1, 1]) == pytest.approx(2 * math.sqrt(2))
    # unequal sizes and variances: (2 − 0) / sqrt(1/3 + 0.5/2)
    assert welch_t([1, 2, 3], [-0.5, 0.5]) == pytest.approx(2 / math.sqrt(1 / 3 + 0.25))
    assert welch_t([0, 0, 0, 10], [0, 0]) == pytest.approx(2.5 / math.sqrt(25 / 4))
    assert welch_t([5, 6, 7, 8, 9, 10], [0, 0.001, 0, 0.001]) == T_CLIP  # clipped
    assert welch_t([0, 0.001, 0, 0.001], [5, 6, 7, 8]) == -T_CLIP
    assert welch_t([1, 1], [0, 0]) == T_CLIP and welch_t([0, 0], [1, 1]) == -T_CLIP  # zero variance
    assert welch_t([1, 1], [1, 1]) == 0.0
    assert welch_t([1], [0, 2]) == 0.0  # one value: no variance, no evidence
    assert math.isnan(welch_t([1e200, -1e200], [0, 1]))  # overflow is the caller's fault


def test_unique_t_faults_on_non_finite():
    ok = ([4.0, 4.1, 3.9], [3.0, 3.2, 2.9])
    assert unique_t(LossMeasurement.of(*ok, [4.0, 4.1, 3.9], [4.0, 4.0, 3.95])) > 0
    for bad in (float("nan"), float("inf")):
        assert unique_t(LossMeasurement.of(*ok, [4.0, 4.1, 3.9], [4.0, bad, 3.9])) == -T_CLIP
        assert unique_t(LossMeasurement.of([4.0, bad, 3.9], ok[1], [4.0] * 3, [3.9] * 3)) == -T_CLIP
    assert unique_t(LossMeasurement.of(*ok, [4.0, 1e308, 3.9], [-1e308, 4.0, 3.9])) == -T_CLIP
    assert per_sequence_gains([2.0, 0.0], [1.0, 1.0]) is None and per_sequence_gains([2.0], [1.0, 1.0]) is None
    assert per_sequence_gains([2.0, 4.0], [1.0, 5.0]) == [0.5, -0.25]


def test_sequence_losses_match_the_mean_lm_loss():
    from transformers import LlamaConfig, LlamaForCausalLM

    cfg = LlamaConfig(vocab_size=64, hidden_size=16, intermediate_size=32, num_hidden_layers=1,
                      num_attention_heads=2, num_key_value_heads=2, max_position_embeddings=16)
    model = LlamaForCausalLM(cfg)
    batches = [torch.randint(0, 64, (3, 12)) for _ in range(2)]
    per_seq = sequence_losses(model, batches)
    assert per_seq.shape == (6,) and per_seq.dtype == torch.float64
    with torch.no_grad():
        means = [float(model(input_ids=b, labels=b).loss) for b in batches]
    assert float(per_seq.mean()) == pytest.approx(sum(means) / 2, rel=1e-5)


def test_sequence_losses_split_large_logits_into_passes(monkeypatch):
    from transformers import LlamaConfig, LlamaForCausalLM

    from scoring import lossscore

    cfg = LlamaConfig(vocab_size=64, hidden_size=16, intermediate_size=32, num_hidden_layers=1,
                      num_attention_heads=2, num_key_value_heads=2, max_position_embeddings=16)
    model = LlamaForCausalLM(cfg)
    batches = [torch.randint(0, 64, (5, 12))]
    whole = sequence_losses(model, batches)
    calls = []
    forward = model.forward
    monkeypatch.setattr(model, "forward", lambda **kw: calls.append(kw["input_ids"].shape[0]) or forward(**kw))
    monkeypatch.setattr(lossscore, "MAX_LOGIT_ELEMENTS", 2 * 12 * 64)  # two sequences' logits per pass
    split = sequence_losses(model, batches)
    assert calls == [2, 2, 1]
    assert torch.allclose(split, whole, rtol=1e-5)


def _with_improvability(seed: int, edge: float, n: int = 16):
    """Losses where each sequence has its own 'improvability' k_s (shared by every update, as
    measured on the real model) and the peer adds ``edge`` on its own sequences only."""
    gen = random.Random(seed)
    k = [gen.lognormvariate(0, 0.6) for _ in range(2 * n)]  # heterogeneous sequences
    before = [4.0 + gen.random() for _ in range(2 * n)]
    noise = [gen.gauss(0, 0.0005) for _ in range(2 * n)]
    peer = [b * (1 - 0.01 * ks - (edge if i < n else 0.0) - e) for i, (b, ks, e) in enumerate(zip(before, k, noise, strict=True))]
    ref = [b * (1 - 0.008 * ks - gen.gauss(0, 0.0005)) for b, ks in zip(before, k, strict=True)]
    return LossMeasurement.of(before[:n], peer[:n], before[n:], peer[n:], ref[:n], ref[n:])


def test_reference_t_sees_an_edge_that_sequence_spread_hides_from_welch():
    m = _with_improvability(0, edge=0.002)
    plain = LossMeasurement.of(m.own_before, m.own_after, m.rand_before, m.rand_after)
    assert unique_t(plain) < 2.33  # the edge drowns in how differently sequences improve
    assert unique_t(m) > 2.33  # removing each sequence's improvability shows it


def test_reference_t_is_centred_for_an_update_without_edge():
    ts = [unique_t(_with_improvability(seed, edge=0.0)) for seed in range(300)]
    assert abs(sum(ts) / len(ts)) < 0.2
    assert sum(t > 2.33 for t in ts) / len(ts) < 0.03  # a false-pay rate near the nominal 1 %


def test_reference_t_degenerate_reference_falls_back_to_welch():
    own_b, own_a, rand_b, rand_a = [4.0, 4.1, 3.9], [3.0, 3.2, 2.9], [4.0, 4.1, 3.9], [4.0, 4.0, 3.95]
    plain = unique_t(LossMeasurement.of(own_b, own_a, rand_b, rand_a))
    flat = LossMeasurement.of(own_b, own_a, rand_b, rand_a, own_b, rand_b)  # reference changed nothing: x ≡ 0
    assert unique_t(flat) == plain
    broken = LossMeasurement.of(own_b, own_a, rand_b, rand_a, [float("nan")] * 3, rand_b)  # ours, not a fault
    assert unique_t(broken) == plain
    assert reference_t([0.1, 0.2], [0.0, 0.1], [0.1], [0.0, 0.1]) is None  # lengths differ
    assert reference_t([0.1], [0.0, 0.1], [0.1], [0.0, 0.1]) is None  # too few sequences
    assert math.isnan(reference_t([1e300, -1e300, 1.0], [0.0, 1e300, 2.0], [0.1, 0.2, 0.3], [0.3, 0.1, 0.2]))


def test_apply_dense_temporarily_restores_bit_exactly():
    torch.manual_seed(5)
    model = Tiny()
    before = snapshot(model)
    dense = {n: torch.randn(p.shape) for n, p in model.named_parameters()}
    with pytest.raises(RuntimeError), apply_dense_temporarily(model, dense, 0.3):
        assert not torch.equal(model.lin.weight, before["lin.weight"])
        raise RuntimeError("boom")
    assert bits_equal(snapshot(model), before)
    with pytest.raises(UpdateMismatchError):
        with apply_dense_temporarily(model, {"lin.weight": torch.zeros(3, 3)}, 1.0):
            pass
    assert bits_equal(snapshot(model), before)


def test_reference_losses_measure_every_peer_with_one_application():
    torch.manual_seed(6)
    model = Tiny()
    before = snapshot(model)
    own = {1: [(torch.randn(4, 16), torch.randn(4, 8))], 2: [(torch.randn(3, 16), torch.randn(3, 8))]}
    rand = [(torch.randn(5, 16), torch.randn(5, 8))]
    dense = {"lin.bias": torch.ones(8)}
    ref_own, ref_rand = reference_losses(model, dense, 0.5, own, rand, mse)
    assert [len(ref_own[1]), len(ref_own[2]), len(ref_rand)] == [4, 3, 5]
    with apply_dense_temporarily(model, dense, 0.5):
        assert ref_rand == pytest.approx(tuple(float(x) for x in mse(model, rand)))
    assert bits_equal(snapshot(model), before)
