"""The precision a node trains in: bf16 autocast on CUDA, plain fp32 everywhere else.

One rule for every trainer: the whole-model miner (``neurons.train``) and a pipeline stage
(``pipeline.worker``) compute the same way on the same device, so a stage costs what its slice
of a miner costs (the start-up memory check counts it so: ``neurons.memory``) and both packages
import the rule from here (``pipeline`` does not import ``neurons``).
"""

from __future__ import annotations

from contextlib import AbstractContextManager, nullcontext

import torch


def training_autocast(device: torch.device | str) -> AbstractContextManager:
    """bf16 autocast on CUDA; on CPU nothing (it would be slower there and would change the
    numerics the tests and the CPU localnet rely on, which compare runs bit for bit)."""
    if torch.device(device).type == "cuda":
        return torch.autocast(device_type="cuda", dtype=torch.bfloat16)
    return nullcontext()
