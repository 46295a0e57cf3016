"""The wire format: a safetensors file of per-parameter uint8 blobs plus a signed manifest.

Writing and reading both handle the (trivial) safetensors layout here: writing so that the
same message always gives the same bytes (the library orders metadata keys arbitrarily), and
reading strictly, so every malformed input maps to a PayloadError with a reason and nothing is allocated
beyond what the size-checked bytes already occupy:

    u64 little-endian header length N | N bytes of JSON header | tensor bytes

The header's ``__metadata__`` holds ``manifest`` (canonical JSON of PayloadManifest) and ``sig``
(hex signature over the content hash). The content hash is sha256 over a domain tag, the
canonical manifest and every blob in name order (name, length, bytes).
"""

from __future__ import annotations

import hashlib
import json
import struct
from collections.abc import Callable, Mapping
from dataclasses import dataclass

import torch
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from compression.codec import CodecParams, CompressedMessage, decode_blob
from compression.errors import PayloadError
from compression.sparse import SparseUpdate

FORMAT_VERSION = 1
_DOMAIN = b"tessera-payload-v1\x00"
_MAX_HEADER_BASE = 64 * 1024
_MAX_HEADER_PER_PARAM = 1024

Sign = Callable[[bytes], bytes]
Verify = Callable[[bytes, bytes], bool]


class PayloadManifest(BaseModel):
    """Who sent the payload, for which window, and how to decode it."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    format_version: int = FORMAT_VERSION
    run_id: str = Field(max_length=256)
    window: int = Field(ge=0)
    uid: int = Field(ge=0)
    hotkey: str = Field(max_length=128)
    global_step: int = Field(ge=0)
    codec: CodecParams = CodecParams()
    shapes: dict[str, list[int]]
    data_digest: str = Field(default="", max_length=256)
    # fingerprint of the model θ_w the sender trained from; validators compare it with their own
    base_fingerprint: str = Field(default="", max_length=128)

    def canonical_json(self) -> str:
        return json.dumps(self.model_dump(mode="json"), sort_keys=True, separators=(",", ":"))


@dataclass(frozen=True)
class DecodedPayload:
    manifest: PayloadManifest
    content_hash: bytes
    update: SparseUpdate


def content_hash(manifest_json: str, blobs: Mapping[str, bytes]) -> bytes:
    h = hashlib.sha256(_DOMAIN)
    h.update(manifest_json.encode())
    for name in sorted(blobs):
        data = blobs[name]
        h.update(name.encode() + b"\x00" + len(data).to_bytes(8, "little"))
        h.update(data)
    return h.digest()


def encode_payload(msg: CompressedMessage, manifest: PayloadManifest, sign: Sign | None = None) -> bytes:
    """Serialize ``msg``; the manifest's shapes and codec must describe the message."""
    if {k: list(v) for k, v in msg.shapes.items()} != manifest.shapes or manifest.codec != msg.params:
        raise ValueError("manifest shapes/codec do not describe this message")
    manifest_json = manifest.canonical_json()
    blobs = {name: msg.blobs[name].contiguous().cpu() for name in sorted(msg.blobs)}
    digest = content_hash(manifest_json, {n: b.numpy().tobytes() for n, b in blobs.items()})
    sig = sign(digest).hex() if sign is not None else ""
    return _serialize({n: b.numpy().tobytes() for n, b in blobs.items()}, {"manifest": manifest_json, "sig": sig})


def _serialize(blobs: Mapping[str, bytes], metadata: dict[str, str]) -> bytes:
    """safetensors bytes with sorted keys and blobs in name order; header space-padded to 8."""
    header: dict[str, object] = {"__metadata__": metadata}
    offset = 0
    for name in sorted(blobs):
        size = len(blobs[name])
        header[name] = {"dtype": "U8", "shape": [size], "data_offsets": [offset, offset + size]}
        offset += size
    raw = json.dumps(header, sort_keys=True, separators=(",", ":")).encode()
    raw += b" " * (-len(raw) % 8)
    return struct.pack("<Q", len(raw)) + raw + b"".join(blobs[n] for n in sorted(blobs))


def _parse_header(data: bytes, n_expected: int) -> tuple[dict, int]:
    if len(data) < 8:
        raise PayloadError("payload shorter than the safetensors length prefix")
    (n,) = struct.unpack("<Q", data[:8])
    if n > len(data) - 8 or n > _MAX_HEADER_BASE + _MAX_HEADER_PER_PARAM * n_expected:
        raise PayloadError(f"safetensors header length {n} is out of bounds")
    try:
        header = json.loads(data[8 : 8 + n])
    except (ValueError, RecursionError) as err:
        raise PayloadError(f"safetensors header is not JSON: {type(err).__name__}") from err
    if not isinstance(header, dict):
        raise PayloadError("safetensors header is not an object")
    return header, 8 + n


def _slice_blobs(header: dict, body: memoryview) -> dict[str, bytes]:
    """Check every entry is a U8 vector and that the entries tile the body exactly."""
    spans = []
    for name, entry in header.items():
        if not isinstance(entry, dict) or entry.get("dtype") != "U8":
            raise PayloadError(f"{name}: entry is not a uint8 tensor")
        shape, offsets = entry.get("shape"), entry.get("data_offsets")
        if not (isinstance(offsets, list) and len(offsets) == 2 and all(type(o) is int for o in offsets)):
            raise PayloadError(f"{name}: bad data_offsets")
        begin, end = offsets
        if shape != [end - begin] or not 0 <= begin <= end <= len(body):
            raise PayloadError(f"{name}: data_offsets and shape disagree or leave the payload")
        spans.append((begin, end, name))
    spans.sort()
    cursor = 0
    for begin, end, name in spans:
        if begin != cursor:
            raise PayloadError(f"{name}: tensor data overlaps or leaves gaps")
        cursor = end
    if cursor != len(body):
        raise PayloadError("trailing bytes after the tensor data")
    return {name: bytes(body[b:e]) for b, e, name in spans}


def _read_manifest(meta: object) -> tuple[PayloadManifest, str, str]:
    if not isinstance(meta, dict) or set(meta) != {"manifest", "sig"}:
        raise PayloadError("metadata must hold exactly 'manifest' and 'sig'")
    raw, sig = meta["manifest"], meta["sig"]
    if not isinstance(raw, str) or not isinstance(sig, str):
        raise PayloadError("metadata values must be strings")
    try:
        manifest = PayloadManifest.model_validate_json(raw)
    except ValidationError as err:
        raise PayloadError(f"invalid manifest: {err.errors()[0]['loc']} {err.errors()[0]['msg']}") from err
    if manifest.format_version != FORMAT_VERSION:
        raise PayloadError(f"unsupported format_version {manifest.format_version}")
    if manifest.canonical_json() != raw:
        raise PayloadError("manifest is not in canonical form")
    return manifest, raw, sig


def _check_shapes(names: set[str], manifest: PayloadManifest, expected: Mapping[str, tuple[int, ...]]) -> None:
    want = set(expected)
    if names != want:
        raise PayloadError(f"parameters differ: missing {sorted(want - names)[:3]}, extra {sorted(names - want)[:3]}")
    for name, shape in expected.items():
        if manifest.shapes.get(name) != list(shape):
            raise PayloadError(f"{name}: manifest shape {manifest.shapes.get(name)} != expected {list(shape)}")
    if set(manifest.shapes) != want:
        raise PayloadError("manifest lists parameters that are not in the model")


def _check_signature(digest: bytes, sig_hex: str, verify: Verify | None) -> None:
    if verify is None:
        return
    try:
        sig = bytes.fromhex(sig_hex)
    except ValueError as err:
        raise PayloadError("signature is not hex") from err
    if not sig or not verify(digest, sig):
        raise PayloadError("bad signature")


def decode_payload(
    data: bytes,
    expected_shapes: Mapping[str, tuple[int, ...]],
    max_bytes: int,
    verify: Verify | None = None,
    codec: CodecParams | None = None,
) -> DecodedPayload:
    """Parse, authenticate and decode a payload; any problem raises PayloadError(reason).

    ``codec``, when given, is the only codec accepted (the network's hparams)."""
    if len(data) > max_bytes:
        raise PayloadError(f"payload of {len(data)} bytes exceeds the cap of {max_bytes}")
    header, start = _parse_header(data, len(expected_shapes))
    manifest, raw, sig = _read_manifest(header.pop("__metadata__", None))
    if codec is not None and manifest.codec != codec:
        raise PayloadError(f"codec {manifest.codec} differs from the network's {codec}")
    blobs = _slice_blobs(header, memoryview(data)[start:])
    _check_shapes(set(blobs), manifest, expected_shapes)
    digest = content_hash(raw, blobs)
    _check_signature(digest, sig, verify)
    update = {}
    for name in sorted(blobs):
        layout = manifest.codec.layout(tuple(expected_shapes[name]))
        blob = torch.frombuffer(bytearray(blobs[name]), dtype=torch.uint8) if blobs[name] else torch.empty(0, dtype=torch.uint8)
        update[name] = decode_blob(blob, layout, name)
    return DecodedPayload(manifest=manifest, content_hash=digest, update=update)
