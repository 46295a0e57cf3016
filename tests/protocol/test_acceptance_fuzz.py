"""Hostile-input suite for the two readers every node runs on what any peer can publish: payload bytes
(``judge_payload``) and chain commitments (``BucketCommitment.decode``).

Property: every input ends in an accepted verdict or a typed rejection; never another exception, and
never the boundary guard's "unexpected ..." rejection (that would be a reader bug the guard hid).
Accepted payloads carry only finite values inside the network's bound. The larger campaign is
``scripts/fuzz_acceptance.py``.
"""

from __future__ import annotations

import functools
import json
import math
import struct

import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from compression import ErrorFeedbackCompressor, PayloadManifest, encode_payload
from compression.wire import content_hash
from neurons.gather import acceptance_rule_for
from protocol.acceptance import AcceptanceRule, PayloadVerdict, RejectReason, judge_payload
from protocol.commitment import BucketCommitment, CommitmentError
from protocol.hparams import load_hparams
from protocol.signing import HotkeySigner

SHAPES = {"embed.weight": (128, 32), "layer.weight": (64, 64), "layer.bias": (64,), "norm.weight": (32,)}
UID, WINDOW = 3, 5
FUZZ = settings(max_examples=250, deadline=None, suppress_health_check=[HealthCheck.too_slow])

JSON = st.recursive(
    st.none() | st.booleans() | st.integers(min_value=-(2**70), max_value=2**70) | st.floats() | st.text(max_size=8),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=6), inner, max_size=4),
    max_leaves=12,
)


@functools.cache
def signer() -> HotkeySigner:
    return HotkeySigner.from_uri("//Fuzz")


@functools.cache
def real() -> tuple[bytes, dict, bytes, tuple[int, ...], AcceptanceRule]:
    """(signed payload, its manifest as a dict, its body, blob sizes, the tiny network's rule)."""
    hparams = load_hparams("tiny")
    codec = hparams.codec
    compressor = ErrorFeedbackCompressor(SHAPES, chunk_size=codec.chunk_size, topk_per_chunk=codec.topk_per_chunk)
    gen = torch.Generator().manual_seed(0)
    message = compressor.compress({n: torch.randn(s, generator=gen) * 0.01 for n, s in SHAPES.items()})
    manifest = PayloadManifest.for_message(message, run_id=hparams.run_id, window=WINDOW, uid=UID,
                                           hotkey=signer().hotkey, global_step=0)
    data = encode_payload(message, manifest, sign=signer().sign)
    header, body = split(data)
    meta = json.loads(header["__metadata__"]["manifest"])
    norms = {n: float(torch.randn(s, generator=gen).double().norm()) for n, s in SHAPES.items()}
    return data, meta, body, tuple(meta["blob_sizes"]), acceptance_rule_for(hparams, WINDOW, 0.0, norms)


def split(data: bytes) -> tuple[dict, bytes]:
    (n,) = struct.unpack("<Q", data[:8])
    return json.loads(data[8 : 8 + n]), data[8 + n :]


def join(header: dict | str, body: bytes) -> bytes:
    raw = (header if isinstance(header, str) else json.dumps(header)).encode("utf-8", "surrogatepass")
    raw += b" " * (-len(raw) % 8)
    return struct.pack("<Q", len(raw)) + raw + body


def resign(manifest: dict, body: bytes) -> bytes:
    """A payload of ``body`` whose manifest is ``manifest``, correctly signed by the uid's hotkey."""
    text = json.dumps(manifest, sort_keys=True, separators=(",", ":"))
    sig = signer().sign(content_hash(text, {"update": body})).hex()
    header = {"__metadata__": {"manifest": text, "sig": sig},
              "update": {"dtype": "U8", "shape": [len(body)], "data_offsets": [0, len(body)]}}
    return join(json.dumps(header, sort_keys=True, separators=(",", ":")), body)


def judge(data: bytes) -> PayloadVerdict:
    """The verdict, checked: typed, and an accepted update is finite and inside the bound."""
    verdict = judge_payload(data, UID, signer().hotkey, real()[4], SHAPES)
    result = verdict.result
    assert not result.detail.startswith("unexpected"), result.detail  # a reader bug behind the guard
    if result.passed:
        bound = real()[4].bounds.max_abs_value
        for name, sparse in verdict.decoded.update.items():
            values = sparse.values
            assert bool(torch.isfinite(values).all()) and float(values.abs().max()) <= bound, name
    else:
        assert isinstance(result.reason, RejectReason)
    return verdict


def test_the_real_payload_is_accepted():
    assert judge(real()[0]).result.passed


@FUZZ
@given(st.binary(max_size=4096))
def test_arbitrary_bytes_are_rejected_with_a_reason(data):
    assert not judge(data).result.passed


@FUZZ
@given(st.lists(st.tuples(st.sampled_from(("set", "insert", "delete")), st.integers(min_value=0), st.integers(0, 255)),
                min_size=1, max_size=6))
def test_edited_bytes_of_a_real_payload_get_a_typed_verdict(edits):
    data = bytearray(real()[0])
    for op, at, byte in edits:
        at %= len(data) + (op == "insert")
        if op == "set":
            data[at] = byte
        elif op == "insert":
            data.insert(at, byte)
        elif len(data) > 1:
            del data[at]
    judge(bytes(data))


@FUZZ
@given(st.sampled_from(("update", "__metadata__", "extra", "\ud800")),
       st.sampled_from((None, "dtype", "shape", "data_offsets", "manifest", "sig", "new")), JSON)
def test_hostile_header_json_gets_a_typed_rejection(entry, key, value):
    header, body = split(real()[0])
    if key is None or not isinstance(header.get(entry), dict):
        header[entry] = value
    else:
        header[entry][key] = value
    verdict = judge(join(json.dumps(header), body))  # NaN/Infinity written as JSON's non-standard tokens
    assert not verdict.result.passed or header == split(real()[0])[0]


@FUZZ
@given(st.sampled_from(("run_id", "window", "uid", "hotkey", "global_step", "format_version", "shapes", "blob_sizes",
                        "names_digest", "data_digest", "base_fingerprint", "codec", "extra")), JSON)
def test_resigned_manifest_fields_get_a_typed_verdict(field, value):
    manifest = dict(real()[1], **{field: value})
    verdict = judge(resign(manifest, real()[2]))
    if verdict.result.passed:  # only harmless fields may change and still pass
        m = verdict.decoded.manifest
        assert (m.run_id, m.window, m.uid, m.hotkey) == (real()[4].run_id, WINDOW, UID, signer().hotkey)


@FUZZ
@given(st.lists(st.integers(0, 2**32 - 1), min_size=4, max_size=4), st.integers(0, len(SHAPES) - 1),
       st.integers(0, 2**16 - 1))
def test_resigned_value_tables_are_finite_and_bounded_or_refused(table_bits, blob, golomb_m):
    """Any float32 bit pattern (NaN, inf, 3.4e38, subnormals) in a signed value table."""
    _, manifest, body, sizes, _ = real()
    start = sum(sizes[:blob])
    edited = bytearray(body)
    edited[start : start + 2] = struct.pack("<H", golomb_m) if golomb_m % 3 == 0 else body[start : start + 2]
    edited[start + 2 : start + 18] = struct.pack("<4I", *table_bits)
    verdict = judge(resign(manifest, bytes(edited)))
    table = struct.unpack("<4f", struct.pack("<4I", *table_bits))
    if not all(math.isfinite(v) for v in table):
        assert verdict.result.reason is RejectReason.UNDECODABLE


@FUZZ
@given(st.floats(min_value=1e4, max_value=3.4e38))
def test_finite_poison_in_a_signed_payload_is_out_of_bounds(scale):
    _, manifest, body, sizes, _ = real()
    edited = bytearray(body)
    for start in (sum(sizes[:i]) for i in range(len(sizes))):
        edited[start + 2 : start + 18] = struct.pack("<4f", scale, scale, -scale, -scale)
    assert judge(resign(manifest, bytes(edited))).result.reason is RejectReason.OUT_OF_BOUNDS


@FUZZ
@given(st.binary(max_size=3000))
def test_random_bodies_signed_by_the_right_key_get_a_typed_verdict(body):
    _, manifest, real_body, sizes, _ = real()
    if len(body) != len(real_body):
        cut = len(body) // len(sizes)
        manifest = dict(manifest, blob_sizes=[cut] * (len(sizes) - 1) + [len(body) - cut * (len(sizes) - 1)])
    judge(resign(manifest, body))


# --- commitments --------------------------------------------------------------------------------------

VALID = (
    BucketCommitment.for_r2("0123456789abcdef0123456789abcdef", "tessera-bucket", "a1" * 16, "b2" * 32).encode(),
    BucketCommitment(endpoint_url="https://s3.example.com", bucket="payloads", region="us-east-1",
                     access_key_id="KEYID", secret_access_key="secret").encode(),
)
HOSTILE_FIELDS = st.sampled_from((
    "http://[::1", "http://[fe80::1%eth0]:x", "http://[::1]:99999", "http://[]", "http://user:pw@h.com", "http://:80",
    "https://", "us east", "a" * 70, "\ud800", ".~~~~", "." + "0" * 25, "", "\x00", "\u202e", "é",
)) | st.text(max_size=40)


def decode(text: str) -> BucketCommitment | None:
    try:
        commitment = BucketCommitment.decode(text)
    except CommitmentError:
        return None
    assert isinstance(commitment, BucketCommitment)
    return commitment


@settings(max_examples=300, deadline=None)
@given(st.text(max_size=200))
def test_any_text_decodes_or_raises_commitment_error(text):
    decode(text)
    decode("1" + text)


@settings(max_examples=300, deadline=None)
@given(st.sampled_from(VALID), st.integers(0, 4), HOSTILE_FIELDS)
def test_a_hostile_field_in_a_valid_commitment_decodes_or_raises_commitment_error(valid, index, value):
    parts = valid[1:].split(",")
    parts[index] = value
    commitment = decode("1" + ",".join(parts))
    if commitment is not None:
        assert commitment.endpoint_url.startswith(("http://", "https://"))


@settings(max_examples=200, deadline=None)
@given(st.sampled_from(VALID), st.binary(max_size=16), st.integers(min_value=0))
def test_raw_bytes_spliced_into_a_commitment(valid, junk, at):
    raw = valid.encode()
    at %= len(raw) + 1
    decode((raw[:at] + junk + raw[at:]).decode("utf-8", "surrogateescape"))


@pytest.mark.parametrize("valid", VALID)
def test_the_valid_commitments_decode(valid):
    assert decode(valid) is not None
