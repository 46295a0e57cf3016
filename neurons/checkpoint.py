"""Checkpoint (de)serialisation: the model's parameters as safetensors, a pydantic manifest inside.

A checkpoint is untrusted input (it comes from another node's bucket, possibly published by a
stake majority that is wrong), so loading checks, in order and before touching the model: the size
cap, the safetensors header (``compression.safetensors_header``, the reader payloads use too, so
nothing is allocated for a file that will be refused), the manifest, exact parameter names, shapes
and dtypes, that the tensors hash to the fingerprint the manifest claims, and that every value is
finite and within the network's ``bounds.max_abs_param``. Only then are the parameters copied in:
on any refusal the model is untouched. No pickle anywhere.
"""

from __future__ import annotations

import math

import torch
from pydantic import BaseModel, ConfigDict, Field, ValidationError
from safetensors.torch import save as safetensors_save

from compression.safetensors_header import HeaderError, SafetensorsHeader, read_header
from neurons.fingerprint import model_fingerprint
from protocol.fingerprint_record import MAX_WINDOW
from protocol.validation import describe

CHECKPOINT_FORMAT_VERSION = 1
_MANIFEST_KEY = "tessera.checkpoint"
# safetensors dtype names for the dtypes a model may hold.
DTYPE_NAMES = {torch.float32: "F32", torch.bfloat16: "BF16", torch.float16: "F16", torch.float64: "F64"}
SAFETENSORS_DTYPES = {name: dtype for dtype, name in DTYPE_NAMES.items()}
# Header room: the manifest plus one entry per parameter (name, dtype, shape, offsets).
_MAX_HEADER_BASE = 64 * 1024
_MAX_HEADER_PER_PARAM = 1024


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


class CheckpointValueError(CheckpointError):
    """A parameter holds a non-finite value or one beyond the network's bound on |θ|."""


class CheckpointManifest(BaseModel):
    # strict: a validator's manifest is taken literally ("global_step": true is not a step)
    model_config = ConfigDict(extra="forbid", frozen=True, strict=True)

    format_version: int = CHECKPOINT_FORMAT_VERSION
    run_id: str = Field(min_length=1, max_length=256)
    window: int = Field(ge=0, le=MAX_WINDOW, description="the model is θ after this window's outer step")
    global_step: int = Field(ge=0, le=MAX_WINDOW * 1_000_000, description="inner steps taken so far")
    fingerprint: str = Field(pattern=r"^[0-9a-f]+$", max_length=128)


def checkpoint_bytes(model: torch.nn.Module, manifest: CheckpointManifest) -> bytes:
    """Serialise the model's parameters with ``manifest`` in the safetensors metadata."""
    actual = model_fingerprint(model)
    if manifest.fingerprint != actual:
        raise CheckpointMismatch(f"manifest fingerprint {manifest.fingerprint} is not the model's ({actual})")
    tensors = {name: param.detach().cpu().contiguous() for name, param in model.named_parameters()}
    return safetensors_save(tensors, metadata={_MANIFEST_KEY: manifest.model_dump_json()})


def load_checkpoint(
    data: bytes,
    model: torch.nn.Module,
    max_bytes: int,
    *,
    max_abs_param: float,
    expected_run_id: str | None = None,
    expected_fingerprint: str | None = None,
) -> CheckpointManifest:
    """Verify ``data`` against the local model and copy its parameters in; returns the manifest.

    Raises a CheckpointError subclass, and leaves ``model`` untouched, for any refused input."""
    if len(data) > max_bytes:
        raise CheckpointTooLarge(f"checkpoint is {len(data)} bytes, cap is {max_bytes}")
    params = dict(model.named_parameters())
    header = _read_header(data, len(params))
    manifest = _read_manifest(header)
    if expected_run_id is not None and manifest.run_id != expected_run_id:
        raise CheckpointMismatch(f"checkpoint is for run {manifest.run_id}, expected {expected_run_id}")
    if expected_fingerprint is not None and manifest.fingerprint != expected_fingerprint:
        raise CheckpointMismatch(f"checkpoint holds {manifest.fingerprint}, expected {expected_fingerprint}")
    _check_layout(header, params)
    tensors = _tensors(header, data)
    found = model_fingerprint(tensors)
    if found != manifest.fingerprint:
        raise CheckpointCorrupt(f"checkpoint tensors hash to {found}, manifest claims {manifest.fingerprint}")
    check_parameter_values(tensors, max_abs_param, CheckpointValueError)
    with torch.no_grad():
        for name, param in params.items():
            param.copy_(tensors[name].to(param.device))
    return manifest


def check_parameter_values(
    tensors: dict[str, torch.Tensor], max_abs_param: float, error: type[Exception] = CheckpointValueError
) -> None:
    """Raise ``error`` naming the first tensor with a non-finite value or one beyond ±max_abs_param."""
    for name in sorted(tensors):
        values = tensors[name].detach()
        if values.numel() == 0 or not values.is_floating_point():
            continue  # integer and bool tensors are finite, and the bound is on parameters (floats)
        if not bool(torch.isfinite(values).all()):
            raise error(f"{name}: holds non-finite values")
        largest = float(values.abs().max())
        if largest > max_abs_param:
            raise error(f"{name}: |value| {largest:.6g} exceeds the network bound {max_abs_param:.6g}")


def _read_header(data: bytes, n_params: int) -> SafetensorsHeader:
    cap = _MAX_HEADER_BASE + _MAX_HEADER_PER_PARAM * n_params
    try:
        return read_header(data, cap, dtypes=SAFETENSORS_DTYPES.keys())
    except HeaderError as exc:
        raise CheckpointFormatError(f"checkpoint safetensors {exc.reason}") from exc


def _read_manifest(header: SafetensorsHeader) -> CheckpointManifest:
    raw = (header.metadata or {}).get(_MANIFEST_KEY)
    if raw is None:
        raise CheckpointFormatError(f"checkpoint metadata has no '{_MANIFEST_KEY}' manifest")
    try:
        manifest = CheckpointManifest.model_validate_json(raw)
    except ValidationError as exc:
        raise CheckpointFormatError(f"checkpoint manifest is invalid: {describe(exc, 'manifest')}") from exc
    if manifest.format_version != CHECKPOINT_FORMAT_VERSION:
        raise CheckpointFormatError(f"checkpoint format {manifest.format_version}, this node reads {CHECKPOINT_FORMAT_VERSION}")
    return manifest



def _check_layout(header: SafetensorsHeader, params: dict[str, torch.nn.Parameter]) -> None:
    specs = header.tensors
    missing, extra = sorted(params.keys() - specs.keys()), sorted(specs.keys() - params.keys())
    if missing or extra:
        raise CheckpointMismatch(f"parameter names differ: missing {missing[:5]}, unexpected {[ascii(n) for n in extra[:5]]}")
    for name, param in params.items():
        spec = specs[name]
        if spec.shape != tuple(param.shape):
            raise CheckpointMismatch(f"{name}: checkpoint shape {list(spec.shape)}, model {list(param.shape)}")
        if spec.dtype != DTYPE_NAMES.get(param.dtype):
            raise CheckpointMismatch(f"{name}: checkpoint dtype {spec.dtype}, model {param.dtype}")


def _tensors(header: SafetensorsHeader, data: bytes) -> dict[str, torch.Tensor]:
    """The tensors, built from exactly the bytes the header reader checked (no second parser)."""
    out = {}
    for name, blob in header.blobs(data).items():
        spec = header.tensors[name]
        dtype = SAFETENSORS_DTYPES[spec.dtype]
        if math.prod(spec.shape) == 0:
            out[name] = torch.empty(spec.shape, dtype=dtype)
        else:  # bytearray: a private, writable copy (frombuffer shares memory with its buffer)
            out[name] = torch.frombuffer(bytearray(blob), dtype=dtype).view(spec.shape)
    return out
