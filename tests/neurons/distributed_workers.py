"""Rank functions for tests/neurons/test_distributed.py that spawned processes import: this module
imports only torch and neurons.distributed, so a four-rank spawn does not pay for transformers."""

from __future__ import annotations

import os
import pickle
from pathlib import Path

import torch

from neurons.distributed import close_world, init_world, ordered_sum_


def ordered_sum_main(rank: int, port: int, out: str, ranks: int) -> None:
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), RANK=str(rank), WORLD_SIZE=str(ranks),
                      LOCAL_RANK=str(rank),
                      GLOO_SOCKET_IFNAME="lo")  # gloo's pairs on loopback whatever the hostname resolves to
    world = init_world("cpu")
    try:
        mine = ordered_sum_inputs(ranks)[rank]
        ordered_sum_(mine, world, bucket=7)  # buckets that cut across tensors
        if world.leader:
            Path(out).write_bytes(pickle.dumps(mine))
    finally:
        close_world(world)


def ordered_sum_inputs(ranks: int) -> list[list[torch.Tensor]]:
    g = torch.Generator().manual_seed(5)
    # magnitudes far apart, so that the order of addition shows in the bits
    return [[torch.randn(s, generator=g) * 10.0 ** (3 * r) for s in ((3, 5), (11,), (2,))] for r in range(ranks)]

