"""Counting what autograd saves for the backward, for the memory tests (``neurons.memory``'s counts
are checked against it)."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

import torch


class SavedStorages:
    """The distinct storages seen (a model's own parameters excluded): data_ptr -> bytes."""

    def __init__(self, model: torch.nn.Module) -> None:
        self.params = {p.untyped_storage().data_ptr() for p in model.parameters()}
        self.seen: dict[int, int] = {}

    def add(self, t: torch.Tensor) -> torch.Tensor:
        storage = t.untyped_storage()
        if storage.data_ptr() not in self.params:
            self.seen.setdefault(storage.data_ptr(), storage.nbytes())
        return t

    @property
    def bytes(self) -> int:
        return sum(self.seen.values())


@contextmanager
def saved_storages(model: torch.nn.Module) -> Iterator[SavedStorages]:
    """Within the block, every tensor autograd saves is counted once per storage."""
    counter = SavedStorages(model)
    with torch.autograd.graph.saved_tensors_hooks(counter.add, lambda t: t):
        yield counter
