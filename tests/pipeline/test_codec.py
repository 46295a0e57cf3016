"""The boundary codec: exact on a subspace-constrained model, lossy (a projection) otherwise."""

import torch

from pipeline.basis import subspace_basis
from pipeline.codec import DenseCodec, SubspaceCodec
from pipeline.stage import Stage, split_layers
from pipeline.subspace import EMBED_NAME, SubspaceConstraint
from pipeline.wire import HEADER_BYTES, FrameKind, encode_frame


def _drift_and_constrain(model, basis):
    """Move every parameter (as a window of training would), then re-impose the constraint."""
    params = dict(model.named_parameters())
    anchor = params[EMBED_NAME].detach().clone()
    generator = torch.Generator().manual_seed(11)
    with torch.no_grad():
        for p in params.values():
            p.add_(0.01 * torch.rand(p.shape, generator=generator))
    SubspaceConstraint(basis).project_(params, anchor)
    return anchor


def _first_stage_output(model, batch):
    return Stage(model, split_layers(2, 2)[0]).forward(None, batch).detach()


def test_boundary_activation_is_rebuilt_exactly_from_coordinates_and_token_ids(small_model, basis, batch):
    anchor = _drift_and_constrain(small_model, basis)
    hidden = _first_stage_output(small_model, batch)
    codec = SubspaceCodec(basis, anchor)
    msg = codec.encode_activation(hidden, batch)
    assert msg.values.shape == (*batch.shape, 4)
    rebuilt = codec.decode_activation(msg)
    # float32 rounding only: the error is ~1e-7 of the activation's scale
    assert torch.allclose(rebuilt, hidden, rtol=0, atol=1e-5 * float(hidden.abs().max()))


def test_an_unconstrained_model_loses_the_component_outside_the_subspace(small_model, basis, batch):
    anchor = dict(small_model.named_parameters())[EMBED_NAME].detach().clone()
    hidden = _first_stage_output(small_model, batch)
    codec = SubspaceCodec(basis, anchor)
    error = (codec.decode_activation(codec.encode_activation(hidden, batch)) - hidden).abs().max()
    assert float(error) > 1e-3 * float(hidden.abs().max())


def test_gradient_coordinates_are_the_projection_of_the_gradient(basis):
    grad = torch.randn(2, 5, 64)
    codec = SubspaceCodec(basis, torch.zeros(256, 64))
    back = codec.decode_gradient(codec.encode_gradient(grad))
    assert torch.allclose(back, grad @ basis @ basis.T, atol=1e-6)


def test_boundary_bytes_per_micro_batch_at_the_tiny_preset_shape():
    """hidden 128, vocab 2048 (uint16 ids), k = 4: coordinates + ids vs the dense hidden state."""
    hidden, k, vocab, batch, seq = 128, 4, 2048, 4, 128
    ids = torch.zeros(batch, seq, dtype=torch.int64)
    sub = SubspaceCodec(subspace_basis(0, hidden, k), torch.zeros(vocab, hidden))
    h = torch.zeros(batch, seq, hidden)
    dense_act = len(encode_frame(FrameKind.ACTIVATION, DenseCodec(hidden).encode_activation(h, ids), vocab))
    sub_act = len(encode_frame(FrameKind.ACTIVATION, sub.encode_activation(h, ids), vocab))
    sub_grad = len(encode_frame(FrameKind.GRADIENT, sub.encode_gradient(h), vocab))
    assert dense_act == HEADER_BYTES + batch * seq * hidden * 4
    assert sub_act == HEADER_BYTES + batch * seq * (k * 4 + 2)
    assert sub_grad == HEADER_BYTES + batch * seq * k * 4
    assert dense_act / sub_act >= 20  # 28.4x forward
    assert dense_act / sub_grad >= 20  # 32x backward


def test_a_projected_boundary_constraint_leaves_the_weights_alone(small_model, basis):
    """``pipeline.boundary: projected``: the stage trains θ itself, so project_ must not touch it;
    the exact-boundary default still pulls the residual writers into span(U)."""
    from pipeline.subspace import residual_writer_names

    params = dict(small_model.named_parameters())
    anchor = params[EMBED_NAME].detach().clone()
    generator = torch.Generator().manual_seed(5)
    with torch.no_grad():
        for p in params.values():
            p.add_(0.01 * torch.rand(p.shape, generator=generator))
    before = {n: p.detach().clone() for n, p in params.items()}
    with torch.no_grad():
        SubspaceConstraint(basis, project_weights=False).project_(params, anchor)
    assert all(torch.equal(p, before[n]) for n, p in params.items())

    with torch.no_grad():
        SubspaceConstraint(basis).project_(params, anchor)
    changed = {n for n, p in params.items() if not torch.equal(p, before[n])}
    assert set(residual_writer_names(params)) <= changed and EMBED_NAME in changed


def test_a_projected_boundary_delivers_the_embedding_plus_the_projected_rest(small_model, basis, batch):
    """What the next stage sees over an unconstrained boundary is embed + U Uᵀ (h − embed): the
    part of h outside span(U) is what the boundary loses, and only that."""
    anchor = dict(small_model.named_parameters())[EMBED_NAME].detach().clone()
    hidden = _first_stage_output(small_model, batch)
    codec = SubspaceCodec(basis, anchor)
    seen = codec.decode_activation(codec.encode_activation(hidden, batch))
    expected = anchor[batch] + (hidden - anchor[batch]) @ basis @ basis.T
    assert torch.allclose(seen, expected, rtol=0, atol=1e-5 * float(hidden.abs().max()))
    again = codec.decode_activation(codec.encode_activation(seen, batch))
    assert torch.allclose(again, seen, rtol=0, atol=1e-5 * float(hidden.abs().max()))  # nothing more to lose
