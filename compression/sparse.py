"""The decoded form of one peer's message: per parameter, the kept coordinates and their values.

This is the contract between the codec (which produces it), aggregation (which combines many)
and scoring (which applies one peer's update alone to measure it).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch


@dataclass(frozen=True)
class SparseTensor:
    """Kept coordinates of one parameter's pseudo-gradient.

    ``indices`` are flat positions into the dense tensor of ``shape`` (int64, sorted, unique);
    ``values`` are the decoded float32 values at those positions. The pseudo-gradient convention
    is Δ = θ_before − θ_after, so the outer step is θ ← θ − lr · Δ.
    """

    shape: tuple[int, ...]
    indices: torch.Tensor
    values: torch.Tensor

    def to_dense(self) -> torch.Tensor:
        dense = torch.zeros(self.shape, dtype=self.values.dtype, device=self.values.device)
        dense.view(-1)[self.indices] = self.values
        return dense


# One peer's decoded update: parameter name -> kept coordinates.
SparseUpdate = dict[str, SparseTensor]
