"""A node's own state on disk, so a restart (even after SIGKILL) resumes where it stopped.

One safetensors file: the model's parameters under ``model.``, plus any extra tensors the role
keeps (error-feedback buffers, optimizer moments) under their own prefixes, and the run id and
window in the metadata. Written to a temporary file, fsynced and renamed, so a kill mid-write
leaves the previous state intact. No pickle.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path

import torch
from safetensors import SafetensorError, safe_open
from safetensors.torch import load_file, save_file


@dataclass
class RestoredState:
    window: int
    extra: dict[str, torch.Tensor]


def save_node_state(path: Path, model: torch.nn.Module, run_id: str, window: int, extra: dict[str, torch.Tensor]) -> None:
    tensors = {f"model.{n}": p.detach().to("cpu").contiguous() for n, p in model.named_parameters()}
    tensors.update({f"extra.{k}": v.detach().to("cpu").contiguous() for k, v in extra.items()})
    meta = {"run_id": run_id, "window": str(window)}
    tmp = path.with_suffix(".tmp")
    save_file(tensors, str(tmp), metadata=meta)
    with open(tmp, "rb+") as fh:
        os.fsync(fh.fileno())
    os.replace(tmp, path)


def load_node_state(path: Path, model: torch.nn.Module, run_id: str) -> RestoredState | None:
    """Load the state into ``model``; None when there is none for this run (or it is unreadable)."""
    if not path.exists():
        return None
    try:
        with safe_open(str(path), framework="pt") as fh:
            meta = fh.metadata() or {}
        window = _window(meta)
        if meta.get("run_id") != run_id or window is None:
            return None
        tensors = load_file(str(path))
    except (SafetensorError, OSError, json.JSONDecodeError):
        return None
    params = dict(model.named_parameters())
    loaded = {k.removeprefix("model."): v for k, v in tensors.items() if k.startswith("model.")}
    if set(loaded) != set(params) or any(loaded[n].shape != p.shape for n, p in params.items()):
        return None
    with torch.no_grad():
        for name, p in params.items():
            p.copy_(loaded[name].to(p.device))
    extra = {k.removeprefix("extra."): v for k, v in tensors.items() if k.startswith("extra.")}
    return RestoredState(window=window, extra=extra)


def _window(meta: dict[str, str]) -> int | None:
    """The window recorded in the metadata; None when it is missing or not a window number."""
    raw = meta.get("window", "")
    return int(raw) if raw.isascii() and raw.isdigit() else None
