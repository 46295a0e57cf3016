"""The in-process GPipe pipeline against the unsplit model."""

import copy

import torch

from pipeline.codec import DenseCodec, SubspaceCodec
from pipeline.schedule import gpipe_step
from pipeline.stage import Stage, lm_loss, split_layers
from pipeline.subspace import EMBED_NAME, SubspaceConstraint


def _unsplit(model, batch, n_micro):
    total = 0.0
    for ids in batch.chunk(n_micro):
        loss = model(input_ids=ids, labels=ids, use_cache=False).loss / n_micro
        loss.backward()
        total += float(loss.detach())
    return total


def test_two_stages_without_compression_match_the_unsplit_model(small_model, batch):
    reference = copy.deepcopy(small_model)
    ref_loss = _unsplit(reference, batch, n_micro=2)
    stages = [Stage(small_model, r) for r in split_layers(2, 2)]
    loss, traffic = gpipe_step(stages, [DenseCodec(64)], batch, n_micro=2, vocab=256)
    assert abs(float(loss) - ref_loss) < 1e-5
    ref_grads = dict(reference.named_parameters())
    for name, p in small_model.named_parameters():
        assert torch.allclose(p.grad, ref_grads[name].grad, rtol=1e-4, atol=1e-7), name
    # two micro-batches of 2 x 16 tokens, 64 float32 each way
    assert traffic.activation_bytes == traffic.gradient_bytes == 2 * (18 + 2 * 16 * 64 * 4)


def test_stage_loss_is_the_models_own_loss(small_model, batch):
    stage = Stage(small_model, split_layers(2, 1)[0])
    expected = small_model(input_ids=batch, labels=batch, use_cache=False).loss
    assert torch.allclose(lm_loss(stage.forward(None, batch), batch), expected, atol=1e-6)


def test_subspace_boundaries_are_exact_on_a_constrained_model(small_model, basis, batch):
    params = dict(small_model.named_parameters())
    anchor = params[EMBED_NAME].detach().clone()
    SubspaceConstraint(basis).project_(params, anchor)
    reference = copy.deepcopy(small_model)
    ref_loss = _unsplit(reference, batch, n_micro=2)
    stages = [Stage(small_model, r) for r in split_layers(2, 2)]
    loss, traffic = gpipe_step(stages, [SubspaceCodec(basis, anchor)], batch, n_micro=2, vocab=256)
    assert abs(float(loss) - ref_loss) < 1e-5
    ref_grads = dict(reference.named_parameters())
    for name in stages[1].params:  # after the boundary: the same gradients
        assert torch.allclose(params[name].grad, ref_grads[name].grad, rtol=1e-4, atol=1e-7), name
    assert traffic.activation_bytes == 2 * (18 + 2 * 16 * (4 * 4 + 2))
    assert traffic.gradient_bytes == 2 * (18 + 2 * 16 * 4 * 4)
