"""A stage: a contiguous slice of a Llama's layers (plus the embedding on the first stage and the
final norm + LM head on the last), run with the same modules the unsplit model uses.

A stage's parameter names are the model's own names, so its SparseLoCo payload carries exactly
the entries of a full replica's payload that belong to its layers; the parameters it does not
hold are absent, and ``compression.aggregate`` already skips peers that lack a parameter.
"""

from __future__ import annotations

import inspect

import torch
import torch.nn.functional as F
from transformers import LlamaForCausalLM
from transformers.masking_utils import create_causal_mask

from protocol.layers import LayerRange, StageLayoutError, split_layers
from protocol.precision import training_autocast

__all__ = ["LayerRange", "Stage", "StageLayoutError", "lm_loss", "split_layers"]


def mask_cache_arg(fn) -> str | None:
    """The name ``fn`` (``create_causal_mask``) gives its cache argument: ``past_key_values`` in
    transformers 5.17 (the GPU image's), ``cache`` in 5.24 (pyproject allows >=5,<6); None if neither."""
    params = inspect.signature(fn).parameters
    return next((n for n in ("cache", "past_key_values") if n in params), None)


_MASK_CACHE_ARG = mask_cache_arg(create_causal_mask)  # read once, at import


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
        if _MASK_CACHE_ARG is None:  # at start-up, not in the middle of a window
            raise RuntimeError("transformers.masking_utils.create_causal_mask takes neither `cache` nor "
                               "`past_key_values`: this transformers is not one pipeline.stage knows")
        self.model = model
        self.span = span
        self.params: dict[str, torch.nn.Parameter] = {n: p for n, p in model.named_parameters() if span.owns(n)}

    def shapes(self) -> dict[str, tuple[int, ...]]:
        return {n: tuple(p.shape) for n, p in self.params.items()}

    @property
    def device(self) -> torch.device:
        return next(iter(self.params.values())).device

    def forward(self, hidden: torch.Tensor | None, token_ids: torch.Tensor) -> torch.Tensor:
        """First stage: token ids → hidden. Middle: hidden → hidden. Last: → logits. In the
        precision of the caller's context (fp32 unless it autocasts; ``train_forward`` does)."""
        inner = self.model.model
        h = inner.embed_tokens(token_ids.to(inner.embed_tokens.weight.device)) if self.span.first else hidden
        if h is None:
            raise ValueError(f"stage {self.span.label} needs the previous stage's hidden state")
        position_ids = torch.arange(h.shape[1], device=h.device).unsqueeze(0)
        mask = create_causal_mask(config=self.model.config, inputs_embeds=h, attention_mask=None,
                                  position_ids=position_ids, **{_MASK_CACHE_ARG: None})
        position_embeddings = inner.rotary_emb(h, position_ids=position_ids)
        for layer in inner.layers[self.span.start : self.span.stop]:
            h = layer(h, attention_mask=mask, position_embeddings=position_embeddings, position_ids=position_ids)
        if not self.span.last:
            return h
        return self.model.lm_head(inner.norm(h))

    def train_forward(self, hidden: torch.Tensor | None, token_ids: torch.Tensor) -> torch.Tensor:
        """``forward`` as a miner trains: under ``protocol.precision.training_autocast`` (bf16 on
        CUDA, fp32 on CPU). The hidden state a non-last stage returns stays fp32 either way (the
        residual stream adds the bf16 blocks' outputs to the fp32 embedding), so what crosses a
        boundary, and its gradient, are fp32 as the wire carries them; the last stage's logits
        are bf16 on CUDA (``lm_loss`` takes them to fp32)."""
        with training_autocast(self.device):
            return self.forward(hidden, token_ids)
