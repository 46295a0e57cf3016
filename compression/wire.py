"""The wire format: a safetensors file of one uint8 tensor plus a signed manifest.

Writing handles the (trivial) safetensors layout here, so that the same message always gives the
same bytes (the library orders metadata keys arbitrarily). Reading goes through the one strict
header reader (``compression.safetensors_header``, shared with checkpoints), so every malformed
input maps to a PayloadError with a reason and nothing is allocated beyond what the size-checked
bytes already occupy:

    u64 little-endian header length N | N bytes of JSON header | tensor bytes

The header's ``__metadata__`` holds ``manifest`` (canonical JSON of PayloadManifest) and ``sig``
(hex signature over the content hash). The content hash is sha256 over a domain tag, the
canonical manifest and the tensor bytes.

All parameters' encoded blobs are concatenated, in sorted name order, into the single tensor
``update``; the manifest lists each parameter's shape and blob size in that order, plus a digest
of the names. Per-parameter safetensors entries and a name->shape map would repeat every name
twice: for a small model that header was ~15 % of the payload (3.5 kB of 21 kB for the tiny
preset), which is the difference between 1/177 and 1/200 of dense fp32.
"""

from __future__ import annotations

import hashlib
import json
import struct
from collections.abc import Callable, Mapping
from dataclasses import dataclass

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from compression.codec import CodecParams, CompressedMessage
from compression.decoder import decode_blobs
from compression.errors import PayloadError, SignatureError
from compression.safetensors_header import HeaderError, SafetensorsHeader, read_header
from compression.sparse import SparseUpdate

FORMAT_VERSION = 2
_DOMAIN = b"tessera-payload-v2\x00"
_TENSOR = "update"
_MAX_HEADER_BASE = 64 * 1024
_MAX_HEADER_PER_PARAM = 1024

Sign = Callable[[bytes], bytes]
Verify = Callable[[bytes, bytes], bool]
# (manifest, the whole model's shapes) -> the shapes a pipeline stage's payload must hold
StagePart = Callable[["PayloadManifest", Mapping[str, tuple[int, ...]]], Mapping[str, tuple[int, ...]]]


class StageClaim(BaseModel):
    """What a pipeline stage's payload says about itself (docs/pipeline.md "In the network").

    Its update covers only layers [layer_start, layer_stop) of the model (plus the embedding on the
    first stage, the head on the last); the group trained on ``data_uid``'s assignment, the uid
    of its stage 0. Readers check the range is the canonical one for (index, n_stages) and that
    the update holds exactly its parameters; validators check the group claim."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    group: str = Field(min_length=1, max_length=64, pattern=r"^[A-Za-z0-9._-]+$")
    index: int = Field(ge=0, le=63)
    n_stages: int = Field(ge=2, le=64)
    layer_start: int = Field(ge=0)
    layer_stop: int = Field(ge=1)
    data_uid: int = Field(ge=0)


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
    # per parameter, in sorted name order: its shape and the byte size of its encoded blob
    names_digest: str = Field(max_length=64)
    shapes: list[list[int]]
    blob_sizes: list[int] = Field(default_factory=list)
    data_digest: str = Field(default="", max_length=256)
    # fingerprint of the model θ_w the sender trained from; validators compare it with their own
    base_fingerprint: str = Field(default="", max_length=128)
    # set by a pipeline stage only; a whole-model payload leaves it out of the JSON entirely
    pipeline_stage: StageClaim | None = None

    def canonical_json(self) -> str:
        dumped = self.model_dump(mode="json", exclude={"pipeline_stage"} if self.pipeline_stage is None else None)
        return json.dumps(dumped, sort_keys=True, separators=(",", ":"))

    @classmethod
    def for_message(cls, msg: CompressedMessage, **fields: object) -> PayloadManifest:
        """A manifest describing ``msg``'s parameters and codec; ``fields`` give the rest."""
        names = sorted(msg.shapes)
        return cls(
            codec=msg.params, names_digest=names_digest(names), shapes=[list(msg.shapes[n]) for n in names], **fields
        )


def names_digest(names: list[str]) -> str:
    """Short digest of the sorted parameter names: the manifest's stand-in for the names."""
    return hashlib.sha256("\n".join(sorted(names)).encode()).hexdigest()[:16]


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
    names = sorted(msg.blobs)
    described = PayloadManifest.for_message(msg, **_identity_fields(manifest))
    if (manifest.names_digest, manifest.shapes, manifest.codec) != (
        described.names_digest, described.shapes, described.codec
    ):
        raise ValueError("manifest shapes/codec do not describe this message")
    blobs = [msg.blobs[n].contiguous().cpu().numpy().tobytes() for n in names]
    manifest = manifest.model_copy(update={"blob_sizes": [len(b) for b in blobs]})
    manifest_json = manifest.canonical_json()
    body = b"".join(blobs)
    digest = content_hash(manifest_json, {_TENSOR: body})
    sig = sign(digest).hex() if sign is not None else ""
    return _serialize({_TENSOR: body}, {"manifest": manifest_json, "sig": sig})


def _identity_fields(manifest: PayloadManifest) -> dict[str, object]:
    skip = {"codec", "names_digest", "shapes", "blob_sizes"}
    return {k: getattr(manifest, k) for k in PayloadManifest.model_fields if k not in skip}


def _serialize(blobs: Mapping[str, bytes], metadata: dict[str, str]) -> bytes:
    """safetensors bytes with sorted keys and blobs in name order; header space-padded to 8."""
    raw = _header({name: len(data) for name, data in blobs.items()}, metadata)
    return struct.pack("<Q", len(raw)) + raw + b"".join(blobs[n] for n in sorted(blobs))


def _header(sizes: Mapping[str, int], metadata: dict[str, str]) -> bytes:
    header: dict[str, object] = {"__metadata__": metadata}
    offset = 0
    for name in sorted(sizes):
        size = sizes[name]
        header[name] = {"dtype": "U8", "shape": [size], "data_offsets": [offset, offset + size]}
        offset += size
    raw = json.dumps(header, sort_keys=True, separators=(",", ":")).encode()
    return raw + b" " * (-len(raw) % 8)


def framing_bytes(manifest: PayloadManifest, sig_bytes: int = 64) -> int:
    """Bytes of a payload with this manifest besides its blobs (length prefix and padded header
    holding a ``sig_bytes`` signature), exactly as ``encode_payload`` writes them."""
    metadata = {"manifest": manifest.canonical_json(), "sig": "0" * (2 * sig_bytes)}
    return 8 + len(_header({_TENSOR: sum(manifest.blob_sizes)}, metadata))


def _parse_header(data: bytes, n_expected: int) -> SafetensorsHeader:
    """The checked safetensors header (one reader for payloads and checkpoints); PayloadError if not."""
    try:
        return read_header(data, _MAX_HEADER_BASE + _MAX_HEADER_PER_PARAM * n_expected, dtypes=("U8",))
    except HeaderError as err:
        raise PayloadError(f"safetensors {err.reason}") from err


def _slice_blobs(header: SafetensorsHeader, data: bytes) -> dict[str, bytes]:
    """Each tensor's bytes; the reader already checked they are uint8 vectors tiling the body."""
    return {name: bytes(view) for name, view in header.blobs(data).items()}


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


def _split_blobs(
    blobs: Mapping[str, bytes], manifest: PayloadManifest, expected: Mapping[str, tuple[int, ...]]
) -> dict[str, bytes]:
    """Check the manifest describes exactly the local parameters, then cut the one tensor."""
    if set(blobs) != {_TENSOR}:
        raise PayloadError(f"payload must hold exactly one tensor named {_TENSOR!r}")
    names = sorted(expected)
    if manifest.names_digest != names_digest(names):
        raise PayloadError("parameter names differ from the local model's")
    if manifest.shapes != [list(expected[n]) for n in names]:
        bad = next((n for n, s in zip(names, manifest.shapes, strict=False) if s != list(expected[n])), None)
        raise PayloadError(f"parameter shapes differ from the local model's (first: {bad}, count {len(manifest.shapes)})")
    body, sizes = blobs[_TENSOR], manifest.blob_sizes
    if len(sizes) != len(names) or any(n < 0 for n in sizes) or sum(sizes) != len(body):
        raise PayloadError("blob sizes do not tile the update tensor")
    out, offset = {}, 0
    for name, size in zip(names, sizes, strict=True):
        out[name] = body[offset : offset + size]
        offset += size
    return out


def _check_signature(digest: bytes, sig_hex: str, verify: Verify | None) -> None:
    if verify is None:
        return
    try:
        sig = bytes.fromhex(sig_hex)
    except ValueError as err:
        raise SignatureError("signature is not hex") from err
    if not sig or not verify(digest, sig):
        raise SignatureError("bad signature")


def read_manifest(data: bytes, n_params: int) -> PayloadManifest:
    """What a payload says about itself (its header only: nothing decoded, signature unchecked);
    PayloadError if the header or manifest is malformed."""
    return _read_manifest(_parse_header(data, n_params).metadata)[0]


def decode_payload(
    data: bytes,
    expected_shapes: Mapping[str, tuple[int, ...]],
    max_bytes: int,
    verify: Verify | None = None,
    codec: CodecParams | None = None,
    stage_part: StagePart | None = None,
) -> DecodedPayload:
    """Parse, authenticate and decode a payload; any problem raises PayloadError(reason).

    ``codec``, when given, is the only codec accepted (the network's hparams). A payload that
    claims to be a pipeline stage's must decode to ``stage_part(manifest, expected_shapes)``, the
    part of the model its claim covers (which raises PayloadError for a claim it refuses); a
    reader without ``stage_part`` refuses such payloads."""
    if len(data) > max_bytes:
        raise PayloadError(f"payload of {len(data)} bytes exceeds the cap of {max_bytes}")
    header = _parse_header(data, len(expected_shapes))
    manifest, raw, sig = _read_manifest(header.metadata)
    if codec is not None and manifest.codec != codec:
        raise PayloadError(f"codec {manifest.codec} differs from the network's {codec}")
    if manifest.pipeline_stage is not None:
        if stage_part is None:
            raise PayloadError("a pipeline stage's partial payload, which this reader does not accept")
        expected_shapes = stage_part(manifest, expected_shapes)
    blobs = _slice_blobs(header, data)
    digest = content_hash(raw, blobs)
    _check_signature(digest, sig, verify)
    blobs = _split_blobs(blobs, manifest, expected_shapes)
    layouts = {name: manifest.codec.layout(tuple(expected_shapes[name])) for name in blobs}
    update = decode_blobs({name: bytes(b) for name, b in blobs.items()}, layouts)
    return DecodedPayload(manifest=manifest, content_hash=digest, update=update)
