"""Which layers of the model a pipeline stage holds: the split every node computes alone.

A pipeline group's stage S of N holds ``split_layers(num_layers, N)[S]``: a contiguous slice of
the decoder layers, plus the token embedding on the first stage and the final norm and LM head on
the last. The rule lives in ``protocol`` because it is part of what a payload may claim: a stage's
payload names its range, and every reader checks the range is the canonical one for (S, N) and
that the payload holds exactly that range's parameters (``protocol.acceptance``).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass


class StageLayoutError(ValueError):
    """The requested split of layers into stages is impossible; the message says why."""


@dataclass(frozen=True)
class LayerRange:
    """Layers [start, stop) of a model with ``num_layers`` layers."""

    start: int
    stop: int
    num_layers: int

    @property
    def first(self) -> bool:
        return self.start == 0

    @property
    def last(self) -> bool:
        return self.stop == self.num_layers

    @property
    def label(self) -> str:
        extra = ("embed+" if self.first else "") + f"layers[{self.start}:{self.stop}]" + ("+head" if self.last else "")
        return extra

    def owns(self, name: str) -> bool:
        """Whether parameter ``name`` of the full model belongs to this stage."""
        if name.startswith("model.layers."):
            index = name.split(".")[2]
            return index.isdigit() and self.start <= int(index) < self.stop
        if name.startswith("model.embed_tokens."):
            return self.first
        return self.last  # model.norm.*, lm_head.*


def split_layers(num_layers: int, n_stages: int) -> list[LayerRange]:
    """Contiguous and as even as possible; earlier stages take the remainder layers."""
    if not 1 <= n_stages <= num_layers:
        raise StageLayoutError(f"cannot split {num_layers} layers into {n_stages} stages (need 1 <= stages <= layers)")
    base, extra = divmod(num_layers, n_stages)
    ranges, start = [], 0
    for s in range(n_stages):
        stop = start + base + (1 if s < extra else 0)
        ranges.append(LayerRange(start, stop, num_layers))
        start = stop
    return ranges


def owned_shapes(shapes: Mapping[str, tuple[int, ...]], span: LayerRange) -> dict[str, tuple[int, ...]]:
    """The entries of a full model's ``shapes`` that ``span`` holds."""
    return {name: shape for name, shape in shapes.items() if span.owns(name)}
