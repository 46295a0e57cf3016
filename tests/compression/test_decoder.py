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
# 1-element tensors, kept counts whose fields do not fill whole bytes (gathered path), and
# padded tiles with one more kept value in the first chunks (compression.chunking).
EDGE_LAYOUTS = [
    CodecParams(chunk_size=cs, topk_per_chunk=tk).layout(shape)
    for cs, tk, shape in [
        (8, 64, (16, 8)), (3, 9, (6, 9)), (64, 1, (64, 64)), (1, 1, (1,)), (64, 64, (1,)), (2, 1, (5, 7)),
        (8, 3, (24, 40)), (16, 200, (48, 16)), (64, 64, (3,)), (4, 5, (37,)), (8, 63, (8, 8)),
        (8, 5, (19, 13)), (4, 7, (37,)),
    ]
]
assert any(lay.padded and lay.extra for lay in EDGE_LAYOUTS)


def _real(lay) -> torch.Tensor:
    """(n_chunks, chunk_elems) bool: the slots of each chunk that are not padding."""
    _, _, nrows, ncols = lay.chunk_extent()
    slot = torch.arange(lay.chunk_elems)
    return (slot // lay.tile_cols < nrows.unsqueeze(1)) & (slot % lay.tile_cols < ncols.unsqueeze(1))


def _gaps(chunk: torch.Tensor, pos: torch.Tensor) -> torch.Tensor:
    """In-chunk gaps of positions listed chunk by chunk, ascending within each chunk."""
    prev = torch.cat([pos.new_full((1,), -1), pos[:-1]])
    prev[torch.cat([torch.ones(1, dtype=torch.bool), chunk[1:] != chunk[:-1]])] = -1
    return pos - prev - 1


def _by_hand(lay, gaps, codes, m, table=(0.5, 1.0, -0.5, -1.0)) -> bytes:
    """A blob in the codec's format with any Golomb parameter, written from its parts."""
    from compression.bitpack import pack_fixed
    from compression.golomb import golomb_encode

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
    chunk, pos = torch.nonzero(lay.to_chunks(marks.view(lay.shape))).unbind(1)
    at = HEADER_BYTES + (n * golomb_split(m)[0] + 7) // 8
    codes = unpack_fixed(torch.frombuffer(bytearray(raw[at : at + (n + 3) // 4]), dtype=torch.uint8), n, 2).to(torch.uint8)
    table = torch.frombuffer(bytearray(raw[2:HEADER_BYTES]), dtype=torch.float32).tolist()
    return _by_hand(lay, _gaps(chunk, pos), codes, m, table)


@st.composite
def _hand_message(draw):
    layouts, blobs, want = {}, {}, {}
    for i in range(draw(st.integers(1, 3))):
        lay = draw(st.sampled_from(EDGE_LAYOUTS))
        ce, ks = lay.chunk_elems, lay.chunk_ks()
        top = min(ce, 65535)
        m = draw(st.sampled_from(sorted({min(v, top) for v in (1, 2, 3, max(1, top - 1), top)})) | st.integers(1, top))
        spread = draw(st.sampled_from(["random", "last", "first"]))
        if spread == "random":
            torch.manual_seed(draw(st.integers(0, 1000)))
            score = torch.rand(lay.n_chunks, ce)
        else:
            score = torch.arange(ce, dtype=torch.float32) * (1 if spread == "last" else -1)
            score = score.repeat(lay.n_chunks, 1)
        # Chunk c keeps ks[c] of its real slots: the highest scores, listed in ascending position.
        score[~_real(lay)] = -float("inf")
        order = score.argsort(dim=1, descending=True, stable=True)
        chosen = torch.zeros(lay.n_chunks, ce, dtype=torch.bool)
        chosen.scatter_(1, order, torch.arange(ce) < ks.unsqueeze(1))
        chunk, pos = torch.nonzero(chosen).unbind(1)
        codes = torch.tensor(draw(st.lists(st.integers(0, 3), min_size=lay.n_kept, max_size=lay.n_kept)))
        layouts[f"p{i}"], blobs[f"p{i}"] = lay, _by_hand(lay, _gaps(chunk, pos), codes, m)
        flat = lay.local_to_flat(torch.arange(ce).expand(lay.n_chunks, -1)).view(lay.n_chunks, ce)[chosen]
        want[f"p{i}"] = (flat, torch.tensor([0.5, 1.0, -0.5, -1.0])[codes])
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


def _first_real_slots(lay) -> tuple[torch.Tensor, torch.Tensor]:
    """(chunk, position) of a valid selection: each chunk's first ks[c] real slots."""
    rank = torch.cumsum(_real(lay).to(torch.int64), dim=1) - 1
    chosen = _real(lay) & (rank < lay.chunk_ks().unsqueeze(1))
    return torch.nonzero(chosen).unbind(1)


@pytest.mark.parametrize("shape", [(19, 13), (11, 23), (67,)])
def test_an_index_in_the_padding_is_refused(shape):
    # Padding carries no gradient and maps to no coordinate: a blob naming it is hostile even
    # though the position is inside its chunk.
    lay = CodecParams(chunk_size=8, topk_per_chunk=5).layout(shape)
    assert lay.padded
    chunk, pos = _first_real_slots(lay)
    codes = torch.zeros(lay.n_kept, dtype=torch.int64)
    valid = _by_hand(lay, _gaps(chunk, pos), codes, 3)
    assert decode_blobs({"w": valid}, {"w": lay})["w"].indices.numel() == lay.n_kept
    pos = pos.clone()
    pos[-1] = lay.chunk_elems - 1  # the last chunk is short on its padded side(s): its last slot is padding
    with pytest.raises(PayloadError, match="^w: index in the padding of its chunk"):
        decode_blobs({"w": _by_hand(lay, _gaps(chunk, pos), codes, 3)}, {"w": lay})


def test_padded_layouts_round_trip_through_the_encoder():
    shapes = {"a": (199, 199), "b": (2048, 199), "c": (1, 7), "d": (4099,), "e": (64, 128)}
    layouts = {n: CodecParams().layout(s) for n, s in shapes.items()}
    enc = MessageEncoder(layouts)
    flat = torch.randn(enc.numel, generator=torch.Generator().manual_seed(5))
    out = enc.encode(flat)
    got = decode_blobs({n: b.numpy().tobytes() for n, b in out.blobs.items()}, layouts)
    dense = torch.zeros(enc.numel)
    dense[out.flat_indices] = out.decoded
    for i, name in enumerate(enc.names):
        assert got[name].indices.numel() == layouts[name].n_kept
        assert torch.equal(got[name].to_dense(), enc.view(dense, i))
    # Each chunk's kept values are its largest magnitudes (the padding never among them).
    for i, name in enumerate(enc.names):
        lay = layouts[name]
        mags = lay.to_chunks(enc.view(flat, i), absolute=True)
        kept = torch.zeros(lay.numel, dtype=torch.bool)
        kept[got[name].indices] = True
        marks = lay.to_chunks(kept.view(lay.shape).float()).bool()
        assert torch.equal(marks.sum(dim=1), lay.chunk_ks())
        least_kept = torch.where(marks, mags, torch.inf).min(dim=1).values
        most_left = torch.where(marks | ~_real(lay), -torch.inf, mags).max(dim=1).values
        assert bool((least_kept >= most_left).all())
