from __future__ import annotations

import json
import struct

import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from safetensors.torch import save as safetensors_save

from neurons.checkpoint import (
    CheckpointCorrupt,
    CheckpointError,
    CheckpointFormatError,
    CheckpointManifest,
    CheckpointMismatch,
    CheckpointTooLarge,
    CheckpointValueError,
    checkpoint_bytes,
    load_checkpoint,
)
from neurons.fingerprint import model_fingerprint
from neurons.model import build_model

CAP = 64 << 20
BOUND = 1.0e3


@pytest.fixture(scope="module")
def source(hparams):
    model = build_model(hparams.model, 1)
    manifest = CheckpointManifest(run_id=hparams.run_id, window=12, global_step=96, fingerprint=model_fingerprint(model))
    return model, manifest, checkpoint_bytes(model, manifest)


def _assert_untouched(model: torch.nn.Module, fingerprint: str) -> None:
    assert model_fingerprint(model) == fingerprint


def test_round_trip(source, hparams) -> None:
    model, manifest, data = source
    target = build_model(hparams.model, 2)
    assert model_fingerprint(target) != manifest.fingerprint
    loaded = load_checkpoint(data, target, max_bytes=CAP, max_abs_param=BOUND, expected_run_id=hparams.run_id)
    assert loaded == manifest
    assert model_fingerprint(target) == manifest.fingerprint
    assert all(torch.equal(a, b) for a, b in zip(model.parameters(), target.parameters(), strict=True))


def test_save_refuses_a_manifest_for_other_weights(source, hparams) -> None:
    _, manifest, _ = source
    with pytest.raises(CheckpointMismatch, match="fingerprint"):
        checkpoint_bytes(build_model(hparams.model, 2), manifest)


def test_refuses_oversized(source, hparams) -> None:
    _, _, data = source
    target = build_model(hparams.model, 2)
    with pytest.raises(CheckpointTooLarge):
        load_checkpoint(data, target, max_bytes=len(data) - 1, max_abs_param=BOUND)


def test_refuses_other_shapes_and_names(source, hparams) -> None:
    _, _, data = source
    wider = build_model(hparams.model.model_copy(update={"intermediate_size": 256}), 2)
    before = model_fingerprint(wider)
    with pytest.raises(CheckpointMismatch, match="shape"):
        load_checkpoint(data, wider, max_bytes=CAP, max_abs_param=BOUND)
    _assert_untouched(wider, before)
    deeper = build_model(hparams.model.model_copy(update={"num_layers": 3}), 2)
    with pytest.raises(CheckpointMismatch, match="names"):
        load_checkpoint(data, deeper, max_bytes=CAP, max_abs_param=BOUND)


def test_refuses_other_dtype(source, hparams) -> None:
    _, _, data = source
    half = build_model(hparams.model, 2).to(torch.bfloat16)
    with pytest.raises(CheckpointMismatch, match="dtype"):
        load_checkpoint(data, half, max_bytes=CAP, max_abs_param=BOUND)


def test_refuses_other_run(source, hparams) -> None:
    _, _, data = source
    with pytest.raises(CheckpointMismatch, match="run"):
        load_checkpoint(
            data, build_model(hparams.model, 2), max_bytes=CAP, max_abs_param=BOUND, expected_run_id="other-run"
        )


def test_refuses_tampered_tensor_bytes(source, hparams) -> None:
    _, _, data = source
    tampered = bytearray(data)
    tampered[-3] ^= 0x01  # one bit of the last parameter
    target = build_model(hparams.model, 2)
    before = model_fingerprint(target)
    with pytest.raises(CheckpointCorrupt):
        load_checkpoint(bytes(tampered), target, max_bytes=CAP, max_abs_param=BOUND)
    _assert_untouched(target, before)


@pytest.mark.parametrize(
    "data",
    [b"", b"\x01\x02", struct.pack("<Q", 10**9) + b"{}", struct.pack("<Q", 4) + b"nope", struct.pack("<Q", 2) + b"[]"],
)
def test_refuses_garbage(data: bytes, hparams) -> None:
    with pytest.raises(CheckpointFormatError):
        load_checkpoint(data, build_model(hparams.model, 2), max_bytes=CAP, max_abs_param=BOUND)


def test_refuses_plain_safetensors_without_manifest(hparams) -> None:
    model = build_model(hparams.model, 2)
    plain = safetensors_save({n: p.detach() for n, p in model.named_parameters()})
    with pytest.raises(CheckpointFormatError, match="manifest"):
        load_checkpoint(plain, model, max_bytes=CAP, max_abs_param=BOUND)
    bad = safetensors_save({"x": torch.zeros(1)}, metadata={"tessera.checkpoint": json.dumps({"run_id": ""})})
    with pytest.raises(CheckpointFormatError, match="invalid"):
        load_checkpoint(bad, model, max_bytes=CAP, max_abs_param=BOUND)


@pytest.mark.parametrize(
    "fields",
    [{"global_step": True}, {"window": 2**64}, {"window": "3"}, {"format_version": True}, {"global_step": 1.0}],
)
def test_a_manifest_is_taken_literally(fields, hparams) -> None:
    model = build_model(hparams.model, 2)
    tensors = {n: p.detach().clone() for n, p in model.named_parameters()}
    manifest = {"format_version": 1, "run_id": "r", "window": 1, "global_step": 1, "fingerprint": model_fingerprint(tensors)}
    manifest.update(fields)
    data = safetensors_save(tensors, metadata={"tessera.checkpoint": json.dumps(manifest)})
    with pytest.raises(CheckpointFormatError, match="invalid"):
        load_checkpoint(data, model, max_bytes=CAP, max_abs_param=BOUND)


def _forged(model: torch.nn.Module, edit, run_id: str) -> bytes:
    """A checkpoint whose manifest honestly fingerprints tensors that ``edit`` has poisoned."""
    tensors = {n: p.detach().clone() for n, p in model.named_parameters()}
    edit(tensors)
    manifest = CheckpointManifest(run_id=run_id, window=3, global_step=24, fingerprint=model_fingerprint(tensors))
    return safetensors_save(tensors, metadata={"tessera.checkpoint": manifest.model_dump_json()})


@pytest.mark.parametrize(
    ("value", "match"), [(float("nan"), "non-finite"), (float("inf"), "non-finite"), (-1e38, "exceeds"), (1e3 + 1, "exceeds")]
)
def test_refuses_non_finite_or_out_of_bound_parameters_before_touching_the_model(value, match, source, hparams):
    model, _, _ = source

    def poison(tensors):
        next(iter(tensors.values())).view(-1)[5] = value

    data = _forged(model, poison, hparams.run_id)
    target = build_model(hparams.model, 2)
    before = model_fingerprint(target)
    with pytest.raises(CheckpointValueError, match=match):
        load_checkpoint(data, target, max_bytes=CAP, max_abs_param=BOUND)
    _assert_untouched(target, before)
    # the same bytes under a looser network bound are fine when finite
    if match == "exceeds" and abs(value) < 1e4:
        load_checkpoint(data, target, max_bytes=CAP, max_abs_param=1e4)


def _with_header(data: bytes, mutate) -> bytes:
    (n,) = struct.unpack("<Q", data[:8])
    header = json.loads(data[8 : 8 + n])
    raw = mutate(header)
    raw = raw if isinstance(raw, bytes) else json.dumps(header).encode()
    return struct.pack("<Q", len(raw)) + raw + data[8 + n :]


def _first_entry(header: dict) -> dict:
    return header[next(k for k in header if k != "__metadata__")]


HOSTILE_HEADERS = {
    "shape is not a list": lambda h: _first_entry(h).update(shape=7),
    "shape holds a bool": lambda h: _first_entry(h).update(shape=[True] * len(_first_entry(h)["shape"])),
    "deep nesting": lambda h: b'{"__metadata__": ' + b"[" * 10_000 + b"]" * 10_000 + b"}",
    "unencodable name": lambda h: h.update({"\ud800": h.pop(next(k for k in h if k != "__metadata__"))}),
    "metadata not strings": lambda h: h["__metadata__"].update({"tessera.checkpoint": {"run_id": "x"}}),
    "manifest deep": lambda h: h["__metadata__"].update({"tessera.checkpoint": "[" * 100_000}),
    "dtype unknown": lambda h: _first_entry(h).update(dtype="Q8"),
    "offsets floats": lambda h: _first_entry(h).update(data_offsets=[0.0, 4.0]),
}


@pytest.mark.parametrize("mutate", HOSTILE_HEADERS.values(), ids=HOSTILE_HEADERS.keys())
def test_hostile_headers_are_format_errors_and_leave_the_model_alone(mutate, source, hparams):
    _, _, data = source
    target = build_model(hparams.model, 2)
    before = model_fingerprint(target)
    with pytest.raises(CheckpointError):
        load_checkpoint(_with_header(data, mutate), target, max_bytes=CAP, max_abs_param=BOUND)
    _assert_untouched(target, before)


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(edits=st.lists(st.tuples(st.integers(min_value=0), st.integers(0, 255)), min_size=1, max_size=6))
def test_byte_flips_end_in_a_checkpoint_error_or_the_exact_model(edits, source, hparams):
    model, manifest, data = source
    buf = bytearray(data)
    (n,) = struct.unpack("<Q", data[:8])
    for pos, val in edits:
        buf[pos % (8 + n)] = val  # the header: the body is covered by the fingerprint
    target = build_model(hparams.model, 2)
    try:
        load_checkpoint(bytes(buf), target, max_bytes=CAP, max_abs_param=BOUND)
    except CheckpointError:
        return
    assert model_fingerprint(target) == manifest.fingerprint
