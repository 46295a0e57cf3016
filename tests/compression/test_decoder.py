"""Decoding all blobs of a message together: same result as the encoder meant, hostile-input safe."""

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from compression import CodecParams, PayloadError
from compression.decoder import HEADER_BYTES, decode_blobs
from compression.encoder import MessageEncoder

SHAPES = {"a.weight": (128, 192), "b.odd": (100, 300), "c.norm": (640,), "d.tiny": (3,)}
LAYOUTS = {n: CodecParams().layout(s) for n, s in SHAPES.items()}


def _message(seed: int = 0):
    torch.manual_seed(seed)
    enc = MessageEncoder(LAYOUTS)
    flat = torch.randn(enc.numel)
    out = enc.encode(flat)
    return enc, out, {n: b.numpy().tobytes() for n, b in out.blobs.items()}


def test_decodes_what_the_encoder_meant():
    enc, out, blobs = _message()
    got = decode_blobs(blobs, LAYOUTS)
    dense = torch.zeros(enc.numel)
    dense[out.flat_indices] = out.decoded
    for i, name in enumerate(enc.names):
        sparse = got[name]
        assert bool((sparse.indices[1:] > sparse.indices[:-1]).all())  # sorted, unique
        assert torch.equal(sparse.to_dense(), enc.view(dense, i))


def test_a_bad_blob_is_named():
    _, _, blobs = _message(1)
    blobs["b.odd"] = blobs["b.odd"][:-1]  # unary stream cut short
    with pytest.raises(PayloadError, match="b.odd"):
        decode_blobs(blobs, LAYOUTS)
    _, _, blobs = _message(1)
    bad = bytearray(blobs["c.norm"])
    bad[0:2] = (0).to_bytes(2, "little")  # Golomb parameter 0
    blobs["c.norm"] = bytes(bad)
    with pytest.raises(PayloadError, match="c.norm: Golomb parameter"):
        decode_blobs(blobs, LAYOUTS)


def test_an_extra_terminator_or_trailing_byte_is_refused():
    _, _, blobs = _message(2)
    with pytest.raises(PayloadError, match="a.weight"):
        decode_blobs({**blobs, "a.weight": blobs["a.weight"] + b"\x80"}, LAYOUTS)
    with pytest.raises(PayloadError, match="a.weight"):
        decode_blobs({**blobs, "a.weight": blobs["a.weight"] + b"\x00"}, LAYOUTS)


@settings(max_examples=150, deadline=None)
@given(st.data())
def test_flipped_bytes_give_a_payload_error_or_valid_indices(data):
    _, _, blobs = _message(3)
    name = data.draw(st.sampled_from(sorted(blobs)))
    raw = bytearray(blobs[name])
    for _ in range(data.draw(st.integers(1, 4))):
        pos = data.draw(st.integers(HEADER_BYTES, len(raw) - 1))
        raw[pos] ^= data.draw(st.integers(1, 255))
    blobs[name] = bytes(raw)
    try:
        got = decode_blobs(blobs, LAYOUTS)
    except PayloadError:
        return
    for n, sparse in got.items():
        numel = LAYOUTS[n].numel
        assert sparse.indices.numel() == LAYOUTS[n].n_kept
        assert int(sparse.indices.min()) >= 0 and int(sparse.indices.max()) < numel
        assert bool((sparse.indices[1:] > sparse.indices[:-1]).all())
        assert bool(torch.isfinite(sparse.values).all())


def _last_byte(blob: bytes, op) -> bytes:
    return blob[:-1] + bytes([op(blob[-1])])


def test_terminators_moved_between_blobs_blame_a_changed_blob():
    # One terminator too many in the first blob and one too few in the third keep the total
    # right; the untouched blob between them must not be the one named.
    _, _, blobs = _message(0)
    assert blobs["a.weight"][-1] & 1 == 0 and bin(blobs["c.norm"][-1]).count("1") >= 2
    blobs["a.weight"] = _last_byte(blobs["a.weight"], lambda b: b | 1)  # a padding bit becomes a terminator
    blobs["c.norm"] = _last_byte(blobs["c.norm"], lambda b: b & ~(1 << (b.bit_length() - 1)))  # two gaps merge
    with pytest.raises(PayloadError, match=r"^(a\.weight|c\.norm): "):
        decode_blobs(blobs, LAYOUTS)



def test_terminator_positions_are_sized_by_the_layout_not_by_the_stream(monkeypatch):
    # m = 1 allows a unary stream of one bit per element; all ones, it sets twice the kept
    # count. The count is checked before any per-terminator tensor exists, so what the
    # decoder allocates stays sized by the layout, not by how many bits a peer sets.
    import compression.decoder as decoder

    lay = CodecParams(chunk_size=8, topk_per_chunk=32).layout((64, 64))  # 64 chunks of 64, keep 32
    unary_bytes = (lay.n_kept + lay.n_chunks * (lay.chunk_elems - lay.k)) // 8
    hostile = (1).to_bytes(2, "little") + bytes(16) + bytes(lay.n_kept // 4) + b"\xff" * unary_bytes
    located = []
    monkeypatch.setattr(decoder, "set_bit_positions", lambda data: located.append(data) or torch.zeros(0))
    with pytest.raises(PayloadError, match="w: unary stream codes the wrong number of gaps"):
        decode_blobs({"w": hostile}, {"w": lay})
    assert located == []


@pytest.mark.parametrize("slot", [0, 1, 2, 3])
def test_a_value_table_with_a_wrong_sign_is_refused(slot):
    # Code bit 1 is the sign, so the encoder's table is (+, +, -, -); a table that flips one
    # would decode kept values with the opposite sign of the codes that carry them.
    _, _, blobs = _message(4)
    raw = bytearray(blobs["b.odd"])
    at = 2 + 4 * slot
    raw[at : at + 4] = torch.tensor([-1.0 if slot < 2 else 1.0]).numpy().tobytes()
    with pytest.raises(PayloadError, match="b.odd: value table"):
        decode_blobs({**blobs, "b.odd": bytes(raw)}, LAYOUTS)


def test_zero_table_entries_of_either_sign_are_accepted():
    _, _, blobs = _message(4)
    raw = bytearray(blobs["c.norm"])
    raw[2:18] = torch.tensor([-0.0, 0.0, 0.0, -0.0]).numpy().tobytes()
    assert decode_blobs({**blobs, "c.norm": bytes(raw)}, LAYOUTS)["c.norm"].values.abs().sum() == 0
