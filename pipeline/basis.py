"""The frozen subspace basis U (hidden x k, orthonormal columns) every node derives alone.

U is a function of (run seed, tag, hidden size, k) only: it is not a parameter, never in a
payload, never moved by an outer step, so every replica and every stage agrees on it without
sending a byte. The draw follows neurons.model: uniform bits from a generator seeded by a hash
(exact on any CPU); the orthonormalisation is a float64 QR rounded once to float32.
"""

from __future__ import annotations

import hashlib

import torch


def basis_seed(seed: int, tag: str, hidden: int, k: int) -> int:
    digest = hashlib.blake2b(f"{tag}:{seed}:{hidden}:{k}".encode(), digest_size=8).digest()
    return int.from_bytes(digest, "little") & ((1 << 63) - 1)


def subspace_basis(seed: int, hidden: int, k: int, tag: str = "tessera-subspace") -> torch.Tensor:
    """A float32 (hidden, k) matrix with orthonormal columns."""
    if not 0 < k < hidden:
        raise ValueError(f"subspace dimension k={k} must be in (0, hidden={hidden})")
    generator = torch.Generator(device="cpu").manual_seed(basis_seed(seed, tag, hidden, k))
    draw = torch.rand((hidden, k), generator=generator, dtype=torch.float64).sub_(0.5)
    q, r = torch.linalg.qr(draw)
    # QR's sign convention varies between LAPACKs; fix it so diag(R) > 0 everywhere.
    q = q * torch.sign(torch.diagonal(r)).unsqueeze(0)
    return q.to(torch.float32).contiguous()
