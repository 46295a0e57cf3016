import hashlib
import json
import struct

import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from safetensors.torch import load

from compression import (
    CodecParams,
    ErrorFeedbackCompressor,
    PayloadError,
    PayloadManifest,
    SignatureError,
    decode_message,
    decode_payload,
    encode_payload,
)
from compression.wire import read_manifest

SHAPES = {"layer.w": (64, 128), "layer.b": (96,), "odd": (30, 50)}
KEY = b"test-key"
CAP = 1 << 20


def sign(digest: bytes) -> bytes:
    return hashlib.sha256(KEY + digest).digest()


def verify(digest: bytes, sig: bytes) -> bool:
    return sig == sign(digest)


def make(seed=0, **manifest_overrides):
    g = torch.Generator().manual_seed(seed)
    comp = ErrorFeedbackCompressor(SHAPES)
    msg = comp.compress({n: torch.randn(s, generator=g) for n, s in SHAPES.items()})
    fields = dict(run_id="run-1", window=7, uid=3, hotkey="5Hot", global_step=70, data_digest="abc")
    fields.update(manifest_overrides)
    return msg, PayloadManifest.for_message(msg, **fields)


@pytest.fixture(scope="module")
def payload():
    msg, manifest = make()
    return msg, manifest, encode_payload(msg, manifest, sign)


def test_round_trip(payload):
    msg, manifest, data = payload
    out = decode_payload(data, SHAPES, CAP, verify, codec=CodecParams())
    assert out.manifest.model_copy(update={"blob_sizes": []}) == manifest  # sizes are filled on encode
    assert len(out.content_hash) == 32
    local = decode_message(msg)
    for name, st_ in out.update.items():
        assert torch.equal(st_.indices, local[name].indices)
        assert torch.equal(st_.values, local[name].values)
        assert st_.indices.dtype == torch.int64 and st_.values.dtype == torch.float32
        assert bool((st_.indices[1:] > st_.indices[:-1]).all())


def test_encoding_is_deterministic_and_readable_by_safetensors(payload):
    msg, manifest, data = payload
    assert encode_payload(msg, manifest, sign) == data
    tensors = load(data)
    # one uint8 tensor holding every parameter's blob back to back
    assert set(tensors) == {"update"} and tensors["update"].dtype == torch.uint8
    assert tensors["update"].numel() == sum(b.numel() for b in msg.blobs.values())


def test_signature_is_checked(payload):
    msg, manifest, data = payload
    with pytest.raises(SignatureError, match="bad signature"):
        decode_payload(data, SHAPES, CAP, lambda d, s: False)
    unsigned = encode_payload(msg, manifest, None)
    with pytest.raises(PayloadError, match="bad signature"):
        decode_payload(unsigned, SHAPES, CAP, verify)
    decode_payload(unsigned, SHAPES, CAP, None)  # verification is the caller's choice
    other = encode_payload(msg, manifest.model_copy(update={"window": 8}), None)
    assert decode_payload(other, SHAPES, CAP).content_hash != decode_payload(unsigned, SHAPES, CAP).content_hash


def test_size_cap(payload):
    data = payload[2]
    with pytest.raises(PayloadError, match="exceeds the cap"):
        decode_payload(data, SHAPES, len(data) - 1)


def test_wrong_missing_extra_parameters(payload):
    data = payload[2]
    with pytest.raises(PayloadError, match="shape"):
        decode_payload(data, {**SHAPES, "odd": (50, 30)}, CAP)
    with pytest.raises(PayloadError, match="names"):
        decode_payload(data, {**SHAPES, "new": (8,)}, CAP)
    with pytest.raises(PayloadError, match="names"):
        decode_payload(data, {k: v for k, v in SHAPES.items() if k != "odd"}, CAP)


def test_codec_pinning(payload):
    with pytest.raises(PayloadError, match="codec"):
        decode_payload(payload[2], SHAPES, CAP, codec=CodecParams(topk_per_chunk=32))


def test_manifest_must_describe_message():
    msg, manifest = make()
    with pytest.raises(ValueError):
        encode_payload(msg, manifest.model_copy(update={"shapes": [[1]]}))


def _rewrite(data: bytes, mutate) -> bytes:
    (n,) = struct.unpack("<Q", data[:8])
    header = json.loads(data[8 : 8 + n])
    body = data[8 + n :]
    header, body = mutate(header, body)
    raw = json.dumps(header).encode()
    return struct.pack("<Q", len(raw)) + raw + body


def test_header_tampering_is_rejected(payload):
    data = payload[2]

    def bad_manifest(h, b):
        h["__metadata__"]["manifest"] = h["__metadata__"]["manifest"].replace('"window":7', '"window": 7')
        return h, b

    def extra_meta(h, b):
        h["__metadata__"]["more"] = "x"
        return h, b

    def gap(h, b):
        return h, b + b"\x00"

    def dtype(h, b):
        h["update"]["dtype"] = "F32"
        return h, b

    def sizes(h, b):  # re-canonicalised, so only the tiling check can catch it
        m = json.loads(h["__metadata__"]["manifest"])
        m["blob_sizes"][0] += 1
        h["__metadata__"]["manifest"] = json.dumps(m, sort_keys=True, separators=(",", ":"))
        return h, b

    cases = ((bad_manifest, "canonical"), (extra_meta, "exactly"), (gap, "trailing"), (dtype, "dtype"), (sizes, "tile"))
    for mutate, reason in cases:
        with pytest.raises(PayloadError, match=reason):
            decode_payload(_rewrite(data, mutate), SHAPES, CAP)


def test_hostile_json_is_contained(payload):
    deep = b"[" * 50_000
    data = struct.pack("<Q", len(deep)) + deep
    with pytest.raises(PayloadError):
        decode_payload(data, SHAPES, CAP)
    huge_claim = struct.pack("<Q", 1 << 62) + b"{}"
    with pytest.raises(PayloadError, match="header length"):
        decode_payload(huge_claim, SHAPES, CAP)


def test_a_tensor_name_that_cannot_be_encoded_is_refused(payload):
    """A lone surrogate written as a JSON escape once crashed every node inside content_hash."""

    def surrogate(h, b):
        h["\ud800"] = h.pop("update")
        return h, b

    data = _rewrite(payload[2], surrogate)
    assert b"\\ud800" in data  # json.dumps wrote the escape, as an attacker would
    with pytest.raises(PayloadError, match="UTF-8"):
        decode_payload(data, SHAPES, CAP, verify)


@pytest.mark.parametrize(
    "header",
    [
        {"__metadata__": {"\udfff": "x"}},  # an unencodable metadata key
        {"__metadata__": {"manifest": "\ud800", "sig": ""}},  # ...or value
        {"update": {"dtype": "U8", "shape": "12", "data_offsets": [0, 12]}},  # shape not a list
        {"update": {"dtype": "U8", "shape": [True], "data_offsets": [0, 1]}},  # bool is not a size
        {"update": {"dtype": ["U8"], "shape": [12], "data_offsets": [0, 12]}},  # unhashable dtype
        {"update": {"dtype": "U8", "shape": [12], "data_offsets": {"0": 12}}},
        {"update": [[["deep"]]]},
    ],
)
def test_hostile_headers_are_payload_errors(payload, header):
    raw = json.dumps(header).encode()
    data = struct.pack("<Q", len(raw)) + raw + b"\x00" * 12
    with pytest.raises(PayloadError):
        decode_payload(data, SHAPES, CAP, verify)


def _check_invariants(out):
    for name, st_ in out.update.items():
        numel = torch.Size(SHAPES[name]).numel()
        assert st_.indices.numel() == 0 or (0 <= int(st_.indices[0]) and int(st_.indices[-1]) < numel)
        assert bool((st_.indices[1:] > st_.indices[:-1]).all())
        assert bool(torch.isfinite(st_.values).all())


FAST = settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])


@FAST
@given(cut=st.integers(min_value=0, max_value=10_000))
def test_truncation_never_crashes(payload, cut):
    data = payload[2]
    with pytest.raises(PayloadError):
        decode_payload(data[: cut % len(data)], SHAPES, CAP)


@FAST
@given(edits=st.lists(st.tuples(st.integers(min_value=0), st.integers(0, 255)), min_size=1, max_size=8))
def test_byte_flips_fail_cleanly_or_decode_validly(payload, edits):
    buf = bytearray(payload[2])
    for pos, val in edits:
        buf[pos % len(buf)] = val
    try:
        out = decode_payload(bytes(buf), SHAPES, CAP)
    except PayloadError:
        return
    _check_invariants(out)


@FAST
@given(edits=st.lists(st.tuples(st.integers(min_value=0), st.integers(0, 255)), min_size=1, max_size=6))
def test_body_flips_with_a_valid_signature(payload, edits):
    """An attacker can sign garbage: the blob decoder alone must stand."""
    msg, manifest, _ = payload
    blobs = {n: b.clone() for n, b in msg.blobs.items()}
    names = sorted(blobs)
    for i, (pos, val) in enumerate(edits):
        blob = blobs[names[i % len(names)]]
        blob[pos % blob.numel()] = val
    forged = encode_payload(type(msg)(params=msg.params, shapes=msg.shapes, blobs=blobs), manifest, sign)
    try:
        out = decode_payload(forged, SHAPES, CAP, verify)
    except PayloadError:
        return
    _check_invariants(out)


@FAST
@given(data=st.binary(max_size=4096))
def test_random_bytes_are_rejected(data):
    with pytest.raises(PayloadError):
        decode_payload(data, SHAPES, CAP)


def test_read_manifest_is_what_decoding_finds(payload):
    _, _, data = payload
    assert read_manifest(data, len(SHAPES)) == decode_payload(data, SHAPES, CAP, verify).manifest


@FAST
@given(st.binary(max_size=2048), st.integers(0, 4096))
def test_read_manifest_of_any_bytes_is_a_manifest_or_payload_error(payload, junk, cut):
    _, _, data = payload
    for candidate in (junk, data[:cut], junk + data[cut:]):
        try:
            assert isinstance(read_manifest(candidate, len(SHAPES)), PayloadManifest)
        except PayloadError:
            pass
