"""A short hash of a model's exact parameter bits, published by every node after every window.

Nodes that applied the same updates hold bit-identical parameters, so equal fingerprints mean
"in sync"; a single flipped bit anywhere changes it. Parameters are hashed in sorted name order
together with their name, dtype and shape, so a renamed or reshaped tensor cannot collide with
the original.
"""

from __future__ import annotations

import hashlib
from collections.abc import Mapping

import torch

FINGERPRINT_BYTES = 16  # 32 hex characters: short to publish, far beyond accidental collision


def named_tensors(source: torch.nn.Module | Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """The tensors a fingerprint covers: a module's parameters (tied ones once) or a mapping as given."""
    if isinstance(source, torch.nn.Module):
        return dict(source.named_parameters())
    return dict(source)


@torch.no_grad()
def model_fingerprint(source: torch.nn.Module | Mapping[str, torch.Tensor]) -> str:
    """Hex digest of all parameters' bytes in name order; identical bits ⇔ identical fingerprint."""
    hasher = hashlib.blake2b(digest_size=FINGERPRINT_BYTES, person=b"tessera-theta")
    tensors = named_tensors(source)
    for name in sorted(tensors):
        tensor = tensors[name].detach()
        header = f"{name}|{str(tensor.dtype).removeprefix('torch.')}|{tuple(tensor.shape)}\n"
        hasher.update(header.encode())
        raw = tensor.contiguous().reshape(-1).view(torch.uint8).cpu()
        hasher.update(raw.numpy())  # buffer protocol: no extra copy
    return hasher.hexdigest()
