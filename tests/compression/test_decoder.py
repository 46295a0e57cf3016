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


# Layouts at the edges: every element kept (m can only code gaps of 0), one kept per chunk,
# 1-element tensors, and kept counts whose fields do not fill whole bytes (gathered path).
EDGE_LAYOUTS = [
    CodecParams(chunk_size=cs, topk_per_chunk=tk).layout(shape)
    for cs, tk, shape in [
        (8, 64, (16, 8)), (3, 9, (6, 9)), (64, 1, (64, 64)), (1, 1, (1,)), (64, 64, (1,)), (2, 1, (5, 7)),
        (8, 3, (24, 40)), (16, 200, (48, 16)), (64, 64, (3,)), (4, 5, (37,)), (8, 63, (8, 8)),
    ]
]


def _by_hand(lay, local, codes, m, table=(0.5, 1.0, -0.5, -1.0)) -> bytes:
    """A blob in the codec's format with any Golomb parameter, written from its parts."""
    from compression.bitpack import pack_fixed
    from compression.golomb import golomb_encode

    gaps = (torch.diff(local, dim=1, prepend=local.new_full((lay.n_chunks, 1), -1)) - 1).reshape(-1)
    s = golomb_encode(gaps, m)
    head = m.to_bytes(2, "little") + torch.tensor(table, dtype=torch.float32).numpy().tobytes()
    return b"".join(t.numpy().tobytes() for t in (s.high, pack_fixed(codes, 2), s.low, s.unary)).join([head, b""])


def _rewritten(raw: bytes, lay, sparse) -> bytes:
    """The blob the decoded result re-encodes to with ``raw``'s own header and codes."""
    from compression.bitpack import unpack_fixed
    from compression.golomb import golomb_split

    m, n = int.from_bytes(raw[:2], "little"), lay.n_kept
    marks = torch.zeros(lay.numel)
    marks[sparse.indices] = 1
    local = torch.nonzero(lay.to_chunks(marks.view(lay.shape)))[:, 1].view(lay.n_chunks, lay.k)
    at = HEADER_BYTES + (n * golomb_split(m)[0] + 7) // 8
    codes = unpack_fixed(torch.frombuffer(bytearray(raw[at : at + (n + 3) // 4]), dtype=torch.uint8), n, 2).to(torch.uint8)
    return _by_hand(lay, local, codes, m, torch.frombuffer(bytearray(raw[2:HEADER_BYTES]), dtype=torch.float32).tolist())


@st.composite
def _hand_message(draw):
    layouts, blobs, want = {}, {}, {}
    for i in range(draw(st.integers(1, 3))):
        lay = draw(st.sampled_from(EDGE_LAYOUTS))
        ce, k = lay.chunk_elems, lay.k
        top = min(ce, 65535)
        m = draw(st.sampled_from(sorted({min(v, top) for v in (1, 2, 3, max(1, top - 1), top)})) | st.integers(1, top))
        spread = draw(st.sampled_from(["random", "last", "first"]))
        if spread == "random":
            torch.manual_seed(draw(st.integers(0, 1000)))
            local = torch.rand(lay.n_chunks, ce).argsort(dim=1)[:, :k].sort(dim=1).values
        else:
            local = torch.arange(ce - k, ce) if spread == "last" else torch.arange(k)
            local = local.repeat(lay.n_chunks, 1)
        codes = torch.tensor(draw(st.lists(st.integers(0, 3), min_size=lay.n_kept, max_size=lay.n_kept)))
        layouts[f"p{i}"], blobs[f"p{i}"] = lay, _by_hand(lay, local, codes, m)
        want[f"p{i}"] = (lay.local_to_flat(local), torch.tensor([0.5, 1.0, -0.5, -1.0])[codes])
    return layouts, blobs, want


@settings(max_examples=60, deadline=None)
@given(_hand_message(), st.data())
def test_edge_layouts_decode_any_golomb_parameter_and_accept_only_canonical_blobs(message, data):
    layouts, blobs, want = message
    got = decode_blobs(blobs, layouts)
    for name, (flat, values) in want.items():
        order = flat.argsort()
        assert torch.equal(got[name].indices, flat[order]) and torch.equal(got[name].values, values[order])
    # One bit flipped anywhere: refused, or what is accepted is exactly what its decoding re-encodes to.
    name = data.draw(st.sampled_from(sorted(blobs)))
    raw = bytearray(blobs[name])
    bit = data.draw(st.integers(0, 8 * len(raw) - 1))
    raw[bit // 8] ^= 128 >> (bit % 8)
    try:
        got = decode_blobs({**blobs, name: bytes(raw)}, layouts)
    except PayloadError:
        return
    assert _rewritten(bytes(raw), layouts[name], got[name]) == bytes(raw)


def test_every_truncation_is_refused_and_names_its_blob():
    # Down to and below exactly the header: each prefix of a short blob is refused, by name.
    _, _, blobs = _message(5)
    for name in ("c.norm", "d.tiny"):
        for length in range(len(blobs[name])):
            with pytest.raises(PayloadError, match=f"^{name}: "):
                decode_blobs({**blobs, name: blobs[name][:length]}, LAYOUTS)


@pytest.mark.parametrize("pair", [("a.weight", "b.odd"), ("b.odd", "c.norm"), ("c.norm", "d.tiny")])
def test_a_boundary_moved_between_neighbours_is_refused(pair):
    # The same bytes cut one byte later or earlier: one blob's streams then overlap the next's.
    _, _, blobs = _message(6)
    first, second = pair
    later = {**blobs, first: blobs[first] + blobs[second][:1], second: blobs[second][1:]}
    earlier = {**blobs, first: blobs[first][:-1], second: blobs[first][-1:] + blobs[second]}
    for moved in (later, earlier):
        with pytest.raises(PayloadError, match=f"^({first}|{second}): "):
            decode_blobs(moved, LAYOUTS)


def test_no_blobs_decode_to_nothing_and_an_unknown_name_is_refused():
    _, _, blobs = _message(7)
    assert decode_blobs({}, {}) == {}
    with pytest.raises(PayloadError, match="e.extra: "):
        decode_blobs({**blobs, "e.extra": blobs["d.tiny"]}, LAYOUTS)
