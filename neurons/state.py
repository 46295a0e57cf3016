"""A node's own state on disk, so a restart (even after SIGKILL) resumes where it stopped.

One safetensors file: the model's parameters under ``model.``, plus any extra tensors the role
keeps (error-feedback buffers, optimizer moments) under ``extra.``, and the run id and window in
the metadata (``StateMetadata``). Written through ``storage.atomic`` (temporary file, fsync,
rename), so a kill mid-write leaves the previous state intact. No pickle.

Reading trusts nothing, since a disk, a copy or an operator can damage the file: the header goes
through the same strict reader as peers' payloads and checkpoints, the metadata through a pydantic
model, parameter names and shapes must be the model's, and every value must be finite (parameters
also within the network's ``bounds.max_abs_param``). ``load_node_state`` returns None when there is
no state for this run and raises ``NodeStateError`` (naming the file and the problem) for anything
else; the model is untouched unless the whole file is good.

What a node does with a bad file (``restore_node_state``): log it, move it aside as
``<name>.corrupt`` (nothing is deleted, an operator can look at it) and carry on as if there were no
state -- i.e. join from the majority's checkpoint. A corrupt file must not stop a node for good,
and silently resuming from a damaged θ would put it out of step with the network.
"""

from __future__ import annotations

import logging
import mmap
import os
from dataclasses import dataclass
from pathlib import Path

import torch
from pydantic import BaseModel, ConfigDict, Field, ValidationError
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file

from compression.safetensors_header import HeaderError, SafetensorsHeader, read_header
from neurons.checkpoint import DTYPE_NAMES, check_parameter_values
from protocol.hparams import BoundsConfig
from protocol.validation import describe
from storage.atomic import atomic_path

log = logging.getLogger(__name__)

# The network's default bound, for callers that do not pass hparams.bounds.max_abs_param (tests).
DEFAULT_MAX_ABS_PARAM = BoundsConfig().max_abs_param
# Header room: the metadata plus, per parameter, its own entry and a few extra tensors (moments, EF).
_MAX_HEADER_BASE = 64 * 1024
_MAX_HEADER_PER_PARAM = 8 * 1024


class NodeStateError(ValueError):
    """The node's state file cannot be used; the message names the file and the problem."""


class StateMetadata(BaseModel):
    """The state file's safetensors metadata (all values are strings there)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    run_id: str = Field(min_length=1, max_length=256)
    window: str = Field(pattern=r"^[0-9]{1,10}$")  # the decimal window, as safetensors stores only strings


@dataclass
class RestoredState:
    window: int
    extra: dict[str, torch.Tensor]


def save_node_state(path: Path, model: torch.nn.Module, run_id: str, window: int, extra: dict[str, torch.Tensor]) -> None:
    tensors = {f"model.{n}": p.detach().to("cpu").contiguous() for n, p in model.named_parameters()}
    tensors.update({f"extra.{k}": v.detach().to("cpu").contiguous() for k, v in extra.items()})
    meta = StateMetadata(run_id=run_id, window=str(window))
    with atomic_path(path) as tmp:
        save_file(tensors, str(tmp), metadata=meta.model_dump())  # streams: no second copy in memory


def load_node_state(
    path: Path, model: torch.nn.Module, run_id: str, max_abs_param: float = DEFAULT_MAX_ABS_PARAM
) -> RestoredState | None:
    """Load the state into ``model``; None when there is none for this run, NodeStateError when it is bad."""
    if not path.exists():
        return None
    params = dict(model.named_parameters())
    header = _read_header(path, len(params))
    meta = _metadata(path, header)
    if meta.run_id != run_id:
        return None  # another run's state is not damaged, just not ours: start as if there were none
    _check_layout(path, header, params)
    try:
        tensors = load_file(str(path))
    except (SafetensorError, OSError) as exc:
        raise NodeStateError(f"node state {path}: tensors do not load: {exc}") from exc
    loaded = {k.removeprefix("model."): v for k, v in tensors.items() if k.startswith("model.")}
    extra = {k.removeprefix("extra."): v for k, v in tensors.items() if k.startswith("extra.")}
    _check_values(path, loaded, extra, max_abs_param)
    with torch.no_grad():
        for name, p in params.items():
            p.copy_(loaded[name].to(p.device))
    return RestoredState(window=int(meta.window), extra=extra)


def restore_node_state(
    path: Path, model: torch.nn.Module, run_id: str, max_abs_param: float = DEFAULT_MAX_ABS_PARAM
) -> RestoredState | None:
    """``load_node_state``, but a bad file is logged and moved aside and the node starts without state."""
    try:
        return load_node_state(path, model, run_id, max_abs_param)
    except NodeStateError as exc:
        aside = set_aside(path)
        log.error("%s; moved to %s, joining from the network instead", exc, aside)
        return None


def set_aside(path: Path) -> Path:
    """Rename ``path`` to ``<name>.corrupt`` (``.corrupt.1``, ... if taken); returns the new path."""
    aside = path.with_name(f"{path.name}.corrupt")
    n = 0
    while aside.exists():
        n += 1
        aside = path.with_name(f"{path.name}.corrupt.{n}")
    os.replace(path, aside)
    return aside


def _read_header(path: Path, n_params: int) -> SafetensorsHeader:
    """The checked header, read through a memory map so the tensors are not loaded twice."""
    cap = _MAX_HEADER_BASE + _MAX_HEADER_PER_PARAM * n_params
    try:
        with open(path, "rb") as fh:
            if os.fstat(fh.fileno()).st_size < 8:
                raise NodeStateError(f"node state {path}: shorter than the safetensors length prefix")
            with mmap.mmap(fh.fileno(), 0, access=mmap.ACCESS_READ) as data:
                return read_header(data, cap)
    except OSError as exc:
        raise NodeStateError(f"node state {path}: cannot be read: {exc}") from exc
    except HeaderError as exc:
        raise NodeStateError(f"node state {path}: safetensors {exc.reason}") from exc


def _metadata(path: Path, header: SafetensorsHeader) -> StateMetadata:
    try:
        return StateMetadata.model_validate(header.metadata or {})
    except ValidationError as exc:
        raise NodeStateError(f"node state {path}: metadata {describe(exc, 'metadata')}") from exc


def _check_layout(path: Path, header: SafetensorsHeader, params: dict[str, torch.nn.Parameter]) -> None:
    names = header.tensors.keys()
    stray = sorted(n for n in names if not n.startswith(("model.", "extra.")))
    found = {n.removeprefix("model.") for n in names if n.startswith("model.")}
    if stray or found != params.keys():
        missing, extra = sorted(params.keys() - found), sorted(found - params.keys())
        raise NodeStateError(f"node state {path}: parameters differ from the model's: missing {missing[:5]}, "
                             f"unexpected {[ascii(n) for n in (extra + stray)[:5]]}")
    for name, p in params.items():
        spec = header.tensors[f"model.{name}"]
        if spec.shape != tuple(p.shape):
            raise NodeStateError(f"node state {path}: {name} has shape {list(spec.shape)}, the model {list(p.shape)}")
        if spec.dtype != DTYPE_NAMES.get(p.dtype):
            raise NodeStateError(f"node state {path}: {name} is {spec.dtype}, the model {p.dtype}")


def _check_values(path: Path, params: dict[str, torch.Tensor], extra: dict[str, torch.Tensor], bound: float) -> None:
    try:
        check_parameter_values(params, bound, NodeStateError)
        # optimizer moments and error feedback have no network bound, but NaN/inf there is damage too
        check_parameter_values(extra, float("inf"), NodeStateError)
    except NodeStateError as exc:
        raise NodeStateError(f"node state {path}: {exc}") from exc
