"""A pipeline replica trains a window and each stage publishes a SparseLoCo payload for its layers."""

import copy

import torch

from compression import aggregate, decode_message
from pipeline.payload import StageCompressor
from pipeline.replica import PipelineReplica
from pipeline.subspace import EMBED_NAME, SubspaceConstraint, residual_writer_names
from protocol.hparams import CodecConfig, TrainingConfig

CFG = TrainingConfig(inner_steps=3, batch_size=4, seq_len=16, lr=2e-3, warmup_steps=1, total_steps=100)
CODEC = CodecConfig(chunk_size=16, topk_per_chunk=16, max_payload_bytes=1 << 20)


def test_stage_payloads_cover_disjoint_layer_ranges_and_aggregate_by_name(small_model, batch):
    start = {n: p.detach().clone() for n, p in small_model.named_parameters()}
    replica = PipelineReplica(small_model, n_stages=2, cfg=CFG, n_micro=2)
    replica.begin_window(0)
    stats = replica.train_window([batch] * 3)
    assert stats.steps == 3 and stats.activation_bytes > 0 and len(stats.per_boundary_bytes) == 1
    payloads = [StageCompressor(stage, CODEC).compress(start) for stage in replica.stages]
    assert [p.layers.label for p in payloads] == ["embed+layers[0:1]", "layers[1:2]+head"]
    names = [set(p.message.shapes) for p in payloads]
    assert not names[0] & names[1] and names[0] | names[1] == set(start)
    shapes = {n: tuple(t.shape) for n, t in start.items()}
    updates = [decode_message(p.message) for p in payloads]
    dense = aggregate(updates, shapes)
    # each parameter's aggregate comes from the one stage that holds it
    for update in updates:
        for name, sparse in update.items():
            assert torch.allclose(dense[name].view(-1)[sparse.indices], sparse.values)


def test_a_compressed_replica_stays_in_the_subspace_and_learns(small_model, basis, batch):
    before = copy.deepcopy(small_model)
    replica = PipelineReplica(small_model, n_stages=2, cfg=CFG, constraint=SubspaceConstraint(basis), n_micro=2)
    anchor = dict(small_model.named_parameters())[EMBED_NAME].detach().clone()
    replica.begin_window(0)
    first = replica.train_window([batch]).loss_mean
    last = replica.train_window([batch] * 4).loss_mean
    assert last < first
    params = dict(small_model.named_parameters())
    for name in residual_writer_names(params):
        w = params[name].detach()
        assert torch.allclose(w, basis @ (basis.T @ w), atol=1e-6), name
    drift = params[EMBED_NAME].detach() - anchor
    assert float(drift.abs().max()) > 0
    assert torch.allclose(drift, drift @ basis @ basis.T, atol=1e-6)
    assert not torch.equal(params["lm_head.weight"], dict(before.named_parameters())["lm_head.weight"])


def test_a_stage_payload_must_cover_exactly_the_range_it_names(small_model):
    import pytest

    from pipeline.payload import StagePayloadError, check_stage_names
    from pipeline.stage import LayerRange

    names = {n for n, _ in small_model.named_parameters()}
    first, second = LayerRange(0, 1, 2), LayerRange(1, 2, 2)
    mine = {n for n in names if first.owns(n)}
    check_stage_names(mine, first, names)
    with pytest.raises(StagePayloadError, match="outside the range"):
        check_stage_names(mine | {"lm_head.weight"}, first, names)
    with pytest.raises(StagePayloadError, match="missing from it"):
        check_stage_names(mine - {"model.embed_tokens.weight"}, first, names)
    with pytest.raises(StagePayloadError, match="does not have"):
        check_stage_names(mine | {"model.layers.7.mlp.down_proj.weight"}, first, names)
    with pytest.raises(StagePayloadError, match="not inside"):
        check_stage_names(set(), LayerRange(1, 5, 2), names)
    check_stage_names({n for n in names if second.owns(n)}, second, names)


def test_an_adaptive_replica_projects_each_boundary_onto_the_windows_own_basis(small_model, basis, batch):
    """Projected weights stay free; with a probe batch the boundary's basis is the window's
    principal one (``pipeline.window_basis``), so the boundary keeps more of what crosses it."""
    from pipeline.window_basis import boundary_basis

    replica = PipelineReplica(small_model, n_stages=2, cfg=CFG,
                              constraint=SubspaceConstraint(basis, project_weights=False), n_micro=2)
    before = {n: p.detach().clone() for n, p in small_model.named_parameters()}
    replica.begin_window(0, probe=batch)
    anchor = before[EMBED_NAME]
    expected = boundary_basis(small_model, 1, batch, anchor, basis.shape[1])
    assert torch.equal(replica.codecs[0].basis, expected) and not torch.equal(expected, basis)
    assert all(torch.equal(p, before[n]) for n, p in small_model.named_parameters())  # weights not projected
    with torch.no_grad():
        rest = replica.stages[0].forward(None, batch) - anchor[batch]
    kept = lambda u: float((rest @ u).pow(2).sum() / rest.pow(2).sum())  # noqa: E731
    assert kept(expected) > kept(basis)
    first = replica.train_window([batch]).loss_mean
    assert replica.train_window([batch] * 4).loss_mean < first
