"""Stage 2's measurement next to a context (``neurons.parallel_eval``): a pipeline stage is
measured on θ_w plus its group partners' updates. Its "before" losses are taken under the
context, its "after" under context and update, and θ_w is restored bit-exactly afterwards."""

from __future__ import annotations

import torch

from compression.sparse import SparseTensor
from neurons.distributed import World
from neurons.model import build_model
from neurons.parallel_eval import measure_candidates
from protocol.hparams import ModelConfig
from scoring.lossscore import apply_sparse_temporarily, measure_update, reference_losses, sequence_losses

SMALL = ModelConfig(vocab_size=256, hidden_size=32, intermediate_size=64, num_layers=2, num_heads=4, num_kv_heads=4,
                    max_seq_len=32)

LR = 0.7


def _update(model, prefix: str, seed: int, scale: float = 5e-2) -> dict[str, SparseTensor]:
    g = torch.Generator().manual_seed(seed)
    out = {}
    for name, p in model.named_parameters():
        if name.startswith(prefix):
            idx = torch.randperm(p.numel(), generator=g)[: max(1, p.numel() // 8)].sort().values
            out[name] = SparseTensor(tuple(p.shape), idx, torch.randn(idx.numel(), generator=g) * scale)
    return out


def test_a_candidate_with_a_context_is_measured_on_theta_plus_the_context_and_theta_is_restored():
    model = build_model(SMALL, 0)
    g = torch.Generator().manual_seed(3)
    own = {u: list(torch.randint(0, SMALL.vocab_size, (2, 4, 16), generator=g).unbind(0)) for u in (1, 2)}
    rand = list(torch.randint(0, SMALL.vocab_size, (2, 4, 16), generator=g).unbind(0))
    stage1, partner = _update(model, "model.layers.1", 1), _update(model, "model.layers.0", 2)
    assert stage1 and partner and not set(stage1) & set(partner)
    theta = {n: p.detach().clone() for n, p in model.named_parameters()}
    before = sequence_losses(model, rand)

    got = measure_candidates(World(), model, {1: stage1, 2: stage1}, LR, own, rand, before, None, {1: partner})

    for name, p in model.named_parameters():
        assert torch.equal(p, theta[name]), name
    with apply_sparse_temporarily(model, partner, LR):
        expected = measure_update(model, stage1, LR, own[1], rand, sequence_losses)
    alone = measure_update(model, stage1, LR, own[2], rand, sequence_losses, before)
    assert got[1] == expected and got[2] == alone
    # the context moved the baseline: uid 1's "before" is not θ_w's
    assert got[1].rand_before != tuple(float(x) for x in before)


def test_a_candidates_reference_losses_are_taken_under_its_context_too():
    """With a reference update, a candidate in context gets the reference's losses on θ_w plus the
    context (the same baseline as its own), the others on θ_w."""
    model = build_model(SMALL, 0)
    g = torch.Generator().manual_seed(5)
    own = {u: list(torch.randint(0, SMALL.vocab_size, (2, 4, 16), generator=g).unbind(0)) for u in (1, 2)}
    rand = list(torch.randint(0, SMALL.vocab_size, (2, 4, 16), generator=g).unbind(0))
    stage1, partner = _update(model, "model.layers.1", 1), _update(model, "model.layers.0", 2)
    reference = {n: torch.randn(p.shape, generator=g) * 1e-2 for n, p in model.named_parameters()}
    before = sequence_losses(model, rand)

    got = measure_candidates(World(), model, {1: stage1, 2: stage1}, LR, own, rand, before, reference, {1: partner})

    with apply_sparse_temporarily(model, partner, LR):
        ref_own, ref_rand = reference_losses(model, reference, LR, {1: own[1]}, rand, sequence_losses)
    plain_own, plain_rand = reference_losses(model, reference, LR, {2: own[2]}, rand, sequence_losses)
    assert got[1].own_reference == ref_own[1] and got[1].rand_reference == ref_rand
    assert got[2].own_reference == plain_own[2] and got[2].rand_reference == plain_rand
    assert got[1].rand_reference != got[2].rand_reference
