"""A stage: a contiguous slice of a Llama's layers (plus the embedding on the first stage and the
final norm + LM head on the last), run with the same modules the unsplit model uses.

A stage's parameter names are the model's own names, so its SparseLoCo payload carries exactly
the entries of a full replica's payload that belong to its layers; the parameters it does not
hold are absent, and ``compression.aggregate`` already skips peers that lack a parameter.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from transformers import LlamaForCausalLM
from transformers.masking_utils import create_causal_mask


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


def lm_loss(logits: torch.Tensor, token_ids: torch.Tensor) -> torch.Tensor:
    """Mean next-token cross-entropy (what LlamaForCausalLM computes with labels=input_ids)."""
    vocab = logits.shape[-1]
    return F.cross_entropy(logits[:, :-1].reshape(-1, vocab).float(), token_ids[:, 1:].reshape(-1))


class Stage:
    """One slice of ``model``; holds references to the model's own modules (no copies)."""

    def __init__(self, model: LlamaForCausalLM, span: LayerRange) -> None:
        if model.config.tie_word_embeddings and span.first != span.last:
            raise StageLayoutError("tied embeddings put one parameter on the first and last stage; untie them")
        if span.num_layers != model.config.num_hidden_layers:
            raise StageLayoutError(f"range for {span.num_layers} layers, model has {model.config.num_hidden_layers}")
        self.model = model
        self.span = span
        self.params: dict[str, torch.nn.Parameter] = {n: p for n, p in model.named_parameters() if span.owns(n)}

    def shapes(self) -> dict[str, tuple[int, ...]]:
        return {n: tuple(p.shape) for n, p in self.params.items()}

    def forward(self, hidden: torch.Tensor | None, token_ids: torch.Tensor) -> torch.Tensor:
        """First stage: token ids → hidden. Middle: hidden → hidden. Last: → logits."""
        inner = self.model.model
        h = inner.embed_tokens(token_ids) if self.span.first else hidden
        if h is None:
            raise ValueError(f"stage {self.span.label} needs the previous stage's hidden state")
        position_ids = torch.arange(h.shape[1], device=h.device).unsqueeze(0)
        mask = create_causal_mask(
            config=self.model.config, inputs_embeds=h, attention_mask=None, cache=None, position_ids=position_ids
        )
        position_embeddings = inner.rotary_emb(h, position_ids=position_ids)
        for layer in inner.layers[self.span.start : self.span.stop]:
            h = layer(h, attention_mask=mask, position_embeddings=position_embeddings, position_ids=position_ids)
        if not self.span.last:
            return h
        return self.model.lm_head(inner.norm(h))
