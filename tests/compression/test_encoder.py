"""The batched encoder produces, for every parameter, what encoding it alone produces."""

import pytest
import torch

from compression import CodecParams, decode_blob, encode_tensor
from compression import encoder as encoder_module
from compression.bitpack import pack_fixed, pack_fixed_segments
from compression.encoder import MessageEncoder
from compression.golomb import golomb_encode, golomb_encode_segments, run_totals
from compression.quantize import quantize_segments

SHAPES = {
    "embed": (256, 128),
    "odd": (100, 300),  # tiles smaller than 64x64: its own batch
    "norm": (640,),  # 1-D
    "proj": (128, 128),
    "small": (8,),
}


def _model(seed: int = 0) -> dict[str, torch.Tensor]:
    torch.manual_seed(seed)
    return {n: torch.distributions.StudentT(3.0).sample(s) * (1 + i) for i, (n, s) in enumerate(SHAPES.items())}


def _encode_all(tensors):
    layouts = {n: CodecParams().layout(t.shape) for n, t in tensors.items()}
    enc = MessageEncoder(layouts)
    flat = torch.cat([tensors[n].reshape(-1) for n in enc.names])
    return enc, layouts, flat, enc.encode(flat)


def test_each_blob_equals_encoding_that_parameter_alone():
    tensors = _model(0)
    enc, layouts, flat, out = _encode_all(tensors)
    assert len(enc.batches) >= 3  # several chunk shapes really were batched separately
    for name, t in tensors.items():
        alone = encode_tensor(t, layouts[name])
        got, want = decode_blob(out.blobs[name], layouts[name]), decode_blob(alone.blob, layouts[name])
        assert torch.equal(got.indices, want.indices), name
        assert torch.allclose(got.values, want.values, rtol=1e-6), name


def test_error_feedback_outputs_point_at_the_flat_buffer():
    enc, layouts, flat, out = _encode_all(_model(1))
    # decoded values sit at flat_indices, with the sign of what was there
    assert torch.equal(torch.sign(out.decoded), torch.sign(flat[out.flat_indices]))
    decoded_by_param = {n: decode_blob(out.blobs[n], layouts[n]) for n in enc.names}
    dense = torch.zeros_like(flat)
    dense[out.flat_indices] = out.decoded
    for i, name in enumerate(enc.names):
        assert torch.equal(enc.view(dense, i), decoded_by_param[name].to_dense())


def test_batch_size_cap_does_not_change_the_bytes(monkeypatch):
    tensors = _model(2)
    _, _, _, whole = _encode_all(tensors)
    monkeypatch.setattr(encoder_module, "MAX_BATCH_ELEMS", 128 * 128)
    enc, _, _, split = _encode_all(tensors)
    assert len(enc.batches) > 3
    assert all(torch.equal(whole.blobs[n], split.blobs[n]) for n in tensors)


def test_non_finite_parameter_is_named():
    tensors = _model()
    tensors["proj"][3, 4] = float("inf")
    with pytest.raises(ValueError, match="proj"):
        _encode_all(tensors)


def test_wrong_buffer_is_refused():
    enc, _, flat, _ = _encode_all(_model())
    with pytest.raises(ValueError, match="float32 buffer"):
        enc.encode(flat[:-1])
    with pytest.raises(ValueError, match="float32 buffer"):
        enc.encode(flat.double())


def test_golomb_segments_equal_one_by_one():
    gen = torch.Generator().manual_seed(3)
    counts, ms = [64, 0, 5, 200, 1], [44, 7, 1, 300, 2]  # several widths, an empty run, M = 1
    gaps = [torch.randint(0, 400, (c,), generator=gen) for c in counts]
    together = golomb_encode_segments(torch.cat(gaps), counts, ms)
    for g, m, streams in zip(gaps, ms, together, strict=True):
        alone = golomb_encode(g, m)
        for part in ("high", "low", "unary"):
            assert torch.equal(getattr(streams, part), getattr(alone, part)), (m, part)


def test_pack_fixed_segments_equal_one_by_one():
    gen = torch.Generator().manual_seed(4)
    counts = [8, 3, 0, 13, 16]
    for width in (1, 2, 5, 11):
        runs = [torch.randint(0, 1 << width, (c,), generator=gen) for c in counts]
        packed = pack_fixed_segments(torch.cat(runs), counts, width)
        assert [p.tolist() for p in packed] == [pack_fixed(r, width).tolist() for r in runs]


def test_run_totals():
    x = torch.tensor([1, 2, 3, 4, 5, 6])
    assert run_totals(torch.cumsum(x, 0), [2, 0, 3, 1]) == [3, 0, 12, 6]


def test_quantize_segments_uses_each_runs_own_threshold_and_table():
    values = torch.tensor([0.1, -0.1, 1.0, -1.0, 10.0, -10.0, 100.0, -100.0])
    codes, tables = quantize_segments(values, [4, 4], torch.tensor([0.5, 50.0]))
    assert codes.tolist() == [0, 2, 1, 3, 0, 2, 1, 3]
    assert torch.equal(tables, torch.tensor([[0.1, 1.0, -0.1, -1.0], [10.0, 100.0, -10.0, -100.0]]))
