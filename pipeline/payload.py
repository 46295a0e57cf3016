"""A stage's SparseLoCo pseudo-gradient: the project's codec over the parameters it holds.

The message is an ordinary ``compression`` message whose shapes are the stage's own parameters;
``layers`` names the range so a reader (and the operator) can tell which part of θ it covers.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

import torch

from compression import CompressedMessage, ErrorFeedbackCompressor
from pipeline.stage import LayerRange, Stage
from protocol.hparams import CodecConfig


@dataclass(frozen=True)
class StagePayload:
    layers: LayerRange
    message: CompressedMessage


class StageCompressor:
    """Error feedback + top-k + 2-bit + index coding for one stage's parameters only."""

    def __init__(self, stage: Stage, codec: CodecConfig) -> None:
        self.stage = stage
        self.inner = ErrorFeedbackCompressor(
            stage.shapes(), chunk_size=codec.chunk_size, topk_per_chunk=codec.topk_per_chunk, beta=codec.ef_beta
        )

    def compress(self, start: Mapping[str, torch.Tensor]) -> StagePayload:
        """Δ = θ_start − θ_now over this stage's parameters (``start`` may hold the whole model)."""
        deltas = {n: start[n] - p.detach() for n, p in self.stage.params.items()}
        return StagePayload(layers=self.stage.span, message=self.inner.compress(deltas))


def payload_bytes(message: CompressedMessage) -> int:
    """Blob bytes of a message (what dominates the wire payload; the manifest is a few hundred)."""
    return sum(int(blob.numel()) for blob in message.blobs.values())


class StagePayloadError(ValueError):
    """A stage payload does not cover exactly the parameters of the layer range it names."""


def check_stage_names(names: set[str], layers: LayerRange, model_names: set[str]) -> None:
    """A reader's check (the payload is a peer's): the parameters must be exactly those the range owns.

    A stage that sent fewer would silently not train part of its slice; one that sent more would
    push updates into layers the group assigned to another stage (or to nobody)."""
    if not 0 <= layers.start < layers.stop <= layers.num_layers:
        raise StagePayloadError(f"layer range [{layers.start}:{layers.stop}] is not inside 0..{layers.num_layers}")
    owned = {n for n in model_names if layers.owns(n)}
    unknown = names - model_names
    if unknown:
        raise StagePayloadError(f"{layers.label}: parameters the model does not have: {sorted(unknown)[:3]}")
    if names != owned:
        extra, missing = sorted(names - owned), sorted(owned - names)
        raise StagePayloadError(f"{layers.label}: names outside the range {extra[:3]}, missing from it {missing[:3]}")
