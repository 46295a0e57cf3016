"""Checkpoint (de)serialisation: the model's parameters as safetensors, a pydantic manifest inside.

A checkpoint is untrusted input (it comes from another node's bucket), so loading checks, in
order and before touching the model: the size cap, the safetensors header (parsed by hand so
nothing is allocated for a file that will be refused), the manifest, exact parameter names,
shapes and dtypes, and finally that the tensors hash to the fingerprint the manifest claims.
Only then are the parameters copied in. No pickle anywhere.
"""

from __future__ import annotations

import json
import struct

import torch
from pydantic import BaseModel, ConfigDict, Field, ValidationError
from safetensors import SafetensorError
from safetensors.torch import load as safetensors_load
from safetensors.torch import save as safetensors_save

from neurons.fingerprint import model_fingerprint

CHECKPOINT_FORMAT_VERSION = 1
_MANIFEST_KEY = "tessera.checkpoint"
# safetensors dtype names for the dtypes a model may hold.
_DTYPE_NAMES = {torch.float32: "F32", torch.bfloat16: "BF16", torch.float16: "F16", torch.float64: "F64"}


class CheckpointError(ValueError):
    """A checkpoint was refused; subclasses name why."""


class CheckpointTooLarge(CheckpointError):
    """The checkpoint is larger than the reader's cap."""


class CheckpointFormatError(CheckpointError):
    """The bytes are not a well-formed tessera checkpoint (header, metadata or manifest)."""


class CheckpointMismatch(CheckpointError):
    """Parameter names, shapes, dtypes or run id differ from the local model's."""


class CheckpointCorrupt(CheckpointError):
    """The tensors do not hash to the fingerprint the manifest claims."""


class CheckpointManifest(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    format_version: int = CHECKPOINT_FORMAT_VERSION
    run_id: str = Field(min_length=1)
    window: int = Field(ge=0, description="the model is θ after this window's outer step")
    global_step: int = Field(ge=0, description="inner steps taken so far; drives the lr schedule")
    fingerprint: str = Field(pattern=r"^[0-9a-f]+$")


def checkpoint_bytes(model: torch.nn.Module, manifest: CheckpointManifest) -> bytes:
    """Serialise the model's parameters with ``manifest`` in the safetensors metadata."""
    actual = model_fingerprint(model)
    if manifest.fingerprint != actual:
        raise CheckpointMismatch(f"manifest fingerprint {manifest.fingerprint} is not the model's ({actual})")
    tensors = {name: param.detach().cpu().contiguous() for name, param in model.named_parameters()}
    return safetensors_save(tensors, metadata={_MANIFEST_KEY: manifest.model_dump_json()})


def load_checkpoint(
    data: bytes, model: torch.nn.Module, max_bytes: int, expected_run_id: str | None = None
) -> CheckpointManifest:
    """Verify ``data`` against the local model and copy its parameters in; returns the manifest."""
    if len(data) > max_bytes:
        raise CheckpointTooLarge(f"checkpoint is {len(data)} bytes, cap is {max_bytes}")
    header = _read_header(data)
    manifest = _read_manifest(header)
    if expected_run_id is not None and manifest.run_id != expected_run_id:
        raise CheckpointMismatch(f"checkpoint is for run {manifest.run_id}, expected {expected_run_id}")
    params = dict(model.named_parameters())
    _check_layout(header, params)
    try:
        tensors = safetensors_load(data)
    except SafetensorError as exc:
        raise CheckpointFormatError(f"checkpoint tensors do not decode: {exc}") from exc
    found = model_fingerprint(tensors)
    if found != manifest.fingerprint:
        raise CheckpointCorrupt(f"checkpoint tensors hash to {found}, manifest claims {manifest.fingerprint}")
    with torch.no_grad():
        for name, param in params.items():
            param.copy_(tensors[name].to(param.device))
    return manifest


def _read_header(data: bytes) -> dict:
    if len(data) < 8:
        raise CheckpointFormatError("checkpoint shorter than the safetensors length prefix")
    (length,) = struct.unpack("<Q", data[:8])
    if length > len(data) - 8:
        raise CheckpointFormatError(f"safetensors header claims {length} bytes, only {len(data) - 8} follow")
    try:
        header = json.loads(data[8 : 8 + length])
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise CheckpointFormatError(f"safetensors header is not JSON: {exc}") from exc
    if not isinstance(header, dict):
        raise CheckpointFormatError("safetensors header is not a JSON object")
    return header


def _read_manifest(header: dict) -> CheckpointManifest:
    metadata = header.get("__metadata__") or {}
    raw = metadata.get(_MANIFEST_KEY) if isinstance(metadata, dict) else None
    if not isinstance(raw, str):
        raise CheckpointFormatError(f"checkpoint metadata has no '{_MANIFEST_KEY}' manifest")
    try:
        manifest = CheckpointManifest.model_validate_json(raw)
    except ValidationError as exc:
        raise CheckpointFormatError(f"checkpoint manifest is invalid: {exc}") from exc
    if manifest.format_version != CHECKPOINT_FORMAT_VERSION:
        raise CheckpointFormatError(f"checkpoint format {manifest.format_version}, this node reads {CHECKPOINT_FORMAT_VERSION}")
    return manifest


def _check_layout(header: dict, params: dict[str, torch.nn.Parameter]) -> None:
    entries = {name: spec for name, spec in header.items() if name != "__metadata__"}
    missing, extra = sorted(params.keys() - entries.keys()), sorted(entries.keys() - params.keys())
    if missing or extra:
        raise CheckpointMismatch(f"parameter names differ: missing {missing[:5]}, unexpected {extra[:5]}")
    for name, param in params.items():
        spec = entries[name]
        if not isinstance(spec, dict):
            raise CheckpointFormatError(f"header entry for {name} is not an object")
        if list(spec.get("shape", [])) != list(param.shape):
            raise CheckpointMismatch(f"{name}: checkpoint shape {spec.get('shape')}, model {list(param.shape)}")
        if spec.get("dtype") != _DTYPE_NAMES.get(param.dtype):
            raise CheckpointMismatch(f"{name}: checkpoint dtype {spec.get('dtype')}, model {param.dtype}")
