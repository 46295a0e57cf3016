"""``tessera inspect payload``: the acceptance verdict on a file, as JSON, never a traceback."""

from __future__ import annotations

import json
import struct

import pytest
import torch

from compression import ErrorFeedbackCompressor, PayloadManifest, encode_payload
from neurons.cli import main
from neurons.model import build_model, param_shapes
from protocol.signing import HotkeySigner


@pytest.fixture(scope="module")
def tiny_payload(hparams):
    """``tiny_payload(scale)`` -> a signed payload of the tiny preset's model, values about ``scale``."""
    shapes = param_shapes(build_model(hparams.model, hparams.seed))
    signer = HotkeySigner.from_uri("//InspectTest")

    def build(scale: float = 0.01, **manifest: object) -> bytes:
        compressor = ErrorFeedbackCompressor(shapes, chunk_size=hparams.codec.chunk_size,
                                             topk_per_chunk=hparams.codec.topk_per_chunk)
        gen = torch.Generator().manual_seed(0)
        message = compressor.compress({n: torch.randn(s, generator=gen) * scale for n, s in shapes.items()})
        fields = {"run_id": hparams.run_id, "window": 7, "uid": 3, "hotkey": signer.hotkey, "global_step": 0, **manifest}
        return encode_payload(message, PayloadManifest.for_message(message, **fields), sign=signer.sign)

    return build


def inspect(tmp_path, capsys, data: bytes, *extra: str) -> tuple[int, dict]:
    path = tmp_path / "payload.bin"
    path.write_bytes(data)
    code = main(["inspect", "payload", str(path), "--hparams", "tiny", *extra])
    return code, json.loads(capsys.readouterr().out)


def test_an_honest_payload_is_accepted(tmp_path, capsys, tiny_payload):
    code, verdict = inspect(tmp_path, capsys, tiny_payload())
    assert code == 0
    assert verdict["accepted"] is True and verdict["reason"] == ""
    assert (verdict["uid"], verdict["window"]) == (3, 7)


@pytest.mark.parametrize(
    ("make", "reason"),
    [
        (lambda p: p(scale=1e6), "out_of_bounds"),
        (lambda p: p(run_id="another-run"), "wrong_window"),
        (lambda p: p()[:-5], "undecodable"),
        (lambda p: b"", "undecodable"),
        (lambda p: struct.pack("<Q", 40) + b'{"\\ud800": 1' + b" " * 28, "undecodable"),
        (lambda p: struct.pack("<Q", 30_000) + b"[" * 30_000, "undecodable"),
    ],
)
def test_a_hostile_file_gets_a_typed_verdict(tmp_path, capsys, tiny_payload, make, reason):
    code, verdict = inspect(tmp_path, capsys, make(tiny_payload))
    assert code == 0
    assert verdict["accepted"] is False and verdict["reason"] == reason and verdict["detail"]


def test_another_hotkey_fails_the_signature(tmp_path, capsys, tiny_payload):
    other = HotkeySigner.from_uri("//NotTheSigner").hotkey
    code, verdict = inspect(tmp_path, capsys, tiny_payload(), "--hotkey", other)
    assert code == 0 and verdict["reason"] == "bad_signature"


def test_an_oversized_file_is_refused_without_reading_it_all(tmp_path, capsys, hparams):
    code, verdict = inspect(tmp_path, capsys, b"\0" * (hparams.codec.max_payload_bytes + 10))
    assert code == 0 and verdict["reason"] == "oversized"


def test_a_missing_file_or_preset_is_one_line_on_stderr(tmp_path, capsys):
    assert main(["inspect", "payload", str(tmp_path / "nope"), "--hparams", "tiny"]) == 2
    assert "cannot read" in capsys.readouterr().err
    assert main(["inspect", "payload", str(tmp_path / "nope"), "--hparams", "no-such-preset"]) == 2
    assert "not found" in capsys.readouterr().err
