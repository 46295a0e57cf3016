import pytest
import torch

from compression.codec import HEADER_BYTES, CodecParams, decode_blob, encode_tensor
from compression.errors import PayloadError


def _naive_topk_flat(t, lay):
    """The largest chunk_ks()[c] magnitudes of each chunk c (padded slots hold -0.0, never chosen)."""
    ks = lay.chunk_ks()
    local = lay.to_chunks(t, absolute=True).topk(int(ks.max()), dim=1).indices
    keep = torch.arange(local.shape[1]) < ks.unsqueeze(1)
    return lay.local_to_flat(local)[keep.reshape(-1)].sort().values


@pytest.mark.parametrize("shape", [(128, 256), (100, 300), (640,), (64, 64), (199, 199), (2048, 199), (4099,), (1, 7)])
def test_round_trip_selects_topk_and_decodes_table_values(shape):
    torch.manual_seed(1)
    t = torch.randn(shape)
    lay = CodecParams().layout(shape)
    enc = encode_tensor(t, lay)
    st = decode_blob(enc.blob, lay)
    assert torch.equal(st.indices, _naive_topk_flat(t, lay))
    assert st.indices.dtype == torch.int64 and st.values.dtype == torch.float32
    assert torch.equal(enc.flat_indices.sort().values, st.indices)
    # The decoder's values are exactly what the encoder subtracts from the error buffer.
    order = enc.flat_indices.argsort()
    assert torch.equal(enc.decoded[order], st.values)
    assert torch.equal(torch.sign(st.values), torch.sign(t.reshape(-1)[st.indices]))


def test_encoding_is_deterministic_and_compact():
    t = torch.randn(256, 256)
    lay = CodecParams().layout(t.shape)
    a, b = encode_tensor(t, lay), encode_tensor(t.clone(), lay)
    assert torch.equal(a.blob, b.blob)
    assert (a.blob.numel() - HEADER_BYTES) * 8 / lay.n_kept < 9.7


def test_non_finite_input_is_refused_at_encode():
    t = torch.randn(64, 64)
    t[3, 3] = float("nan")
    with pytest.raises(ValueError, match="non-finite"):
        encode_tensor(t, CodecParams().layout(t.shape))


def _blob(shape=(64, 128)):
    lay = CodecParams().layout(shape)
    return encode_tensor(torch.randn(shape), lay).blob, lay


def test_rejects_non_finite_table():
    blob, lay = _blob()
    blob[2:6] = torch.tensor([float("inf")]).view(torch.uint8)
    with pytest.raises(PayloadError, match="non-finite"):
        decode_blob(blob, lay)


def test_rejects_bad_lengths_and_rice_parameter():
    blob, lay = _blob()
    with pytest.raises(PayloadError):
        decode_blob(blob[:-1], lay)
    with pytest.raises(PayloadError):
        decode_blob(torch.cat([blob, torch.zeros(1, dtype=torch.uint8)]), lay)
    with pytest.raises(PayloadError, match="shorter"):
        decode_blob(blob[:5], lay)
    bad = blob.clone()
    bad[0:2] = torch.tensor([0, 0xF0], dtype=torch.uint8)
    with pytest.raises(PayloadError, match="Golomb parameter"):
        decode_blob(bad, lay)


def test_rejects_out_of_range_positions():
    # One chunk of 64 elements keeping 2: positions 40 and 81, the second past the chunk's end,
    # in a unary stream short enough to pass the length bound.
    from compression.golomb import golomb_encode

    lay = CodecParams(chunk_size=8, topk_per_chunk=2).layout((8, 8))
    assert lay.k == 2
    s = golomb_encode(torch.tensor([40, 40]), 8)
    table = torch.tensor([1.0, 2.0, -1.0, -2.0]).view(torch.uint8)
    header = torch.tensor([8, 0], dtype=torch.uint8)
    blob = torch.cat([header, table, s.high, torch.zeros(1, dtype=torch.uint8), s.low, s.unary])
    with pytest.raises(PayloadError, match="out of range"):
        decode_blob(blob, lay)
