from __future__ import annotations

import json
import struct

import pytest
import torch
from safetensors.torch import save as safetensors_save

from neurons.checkpoint import (
    CheckpointCorrupt,
    CheckpointFormatError,
    CheckpointManifest,
    CheckpointMismatch,
    CheckpointTooLarge,
    checkpoint_bytes,
    load_checkpoint,
)
from neurons.fingerprint import model_fingerprint
from neurons.model import build_model

CAP = 64 << 20


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
    loaded = load_checkpoint(data, target, max_bytes=CAP, expected_run_id=hparams.run_id)
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
        load_checkpoint(data, target, max_bytes=len(data) - 1)


def test_refuses_other_shapes_and_names(source, hparams) -> None:
    _, _, data = source
    wider = build_model(hparams.model.model_copy(update={"intermediate_size": 256}), 2)
    before = model_fingerprint(wider)
    with pytest.raises(CheckpointMismatch, match="shape"):
        load_checkpoint(data, wider, max_bytes=CAP)
    _assert_untouched(wider, before)
    deeper = build_model(hparams.model.model_copy(update={"num_layers": 3}), 2)
    with pytest.raises(CheckpointMismatch, match="names"):
        load_checkpoint(data, deeper, max_bytes=CAP)


def test_refuses_other_dtype(source, hparams) -> None:
    _, _, data = source
    half = build_model(hparams.model, 2).to(torch.bfloat16)
    with pytest.raises(CheckpointMismatch, match="dtype"):
        load_checkpoint(data, half, max_bytes=CAP)


def test_refuses_other_run(source, hparams) -> None:
    _, _, data = source
    with pytest.raises(CheckpointMismatch, match="run"):
        load_checkpoint(data, build_model(hparams.model, 2), max_bytes=CAP, expected_run_id="other-run")


def test_refuses_tampered_tensor_bytes(source, hparams) -> None:
    _, _, data = source
    tampered = bytearray(data)
    tampered[-3] ^= 0x01  # one bit of the last parameter
    target = build_model(hparams.model, 2)
    before = model_fingerprint(target)
    with pytest.raises(CheckpointCorrupt):
        load_checkpoint(bytes(tampered), target, max_bytes=CAP)
    _assert_untouched(target, before)


@pytest.mark.parametrize(
    "data",
    [b"", b"\x01\x02", struct.pack("<Q", 10**9) + b"{}", struct.pack("<Q", 4) + b"nope", struct.pack("<Q", 2) + b"[]"],
)
def test_refuses_garbage(data: bytes, hparams) -> None:
    with pytest.raises(CheckpointFormatError):
        load_checkpoint(data, build_model(hparams.model, 2), max_bytes=CAP)


def test_refuses_plain_safetensors_without_manifest(hparams) -> None:
    model = build_model(hparams.model, 2)
    plain = safetensors_save({n: p.detach() for n, p in model.named_parameters()})
    with pytest.raises(CheckpointFormatError, match="manifest"):
        load_checkpoint(plain, model, max_bytes=CAP)
    bad = safetensors_save({"x": torch.zeros(1)}, metadata={"tessera.checkpoint": json.dumps({"run_id": ""})})
    with pytest.raises(CheckpointFormatError, match="invalid"):
        load_checkpoint(bad, model, max_bytes=CAP)
