"""The network's model: a Llama built from the hparams preset, initialised identically everywhere.

Initialisation does not use transformers' own init (which draws from the process-global RNG in
an order set by module construction). Every parameter gets its own generator seeded from
(seed, parameter name) and a *uniform* draw with the usual standard deviation: uniform bits
scaled by one multiply and one subtract are exact IEEE operations, so θ0 is bit-identical on any
CPU, unlike normal draws whose vectorised log/cos can differ in the last bit between CPUs.
"""

from __future__ import annotations

import hashlib
import math

import torch
from transformers import LlamaConfig, LlamaForCausalLM

from protocol.hparams import ModelConfig

INIT_STD = 0.02


def llama_config(cfg: ModelConfig) -> LlamaConfig:
    """The transformers config for a preset (no hub lookups, sdpa attention, no KV cache)."""
    config = LlamaConfig(
        vocab_size=cfg.vocab_size,
        hidden_size=cfg.hidden_size,
        intermediate_size=cfg.intermediate_size,
        num_hidden_layers=cfg.num_layers,
        num_attention_heads=cfg.num_heads,
        num_key_value_heads=cfg.num_kv_heads,
        max_position_embeddings=cfg.max_seq_len,
        tie_word_embeddings=cfg.tie_embeddings,
        rope_parameters={"rope_type": "default", "rope_theta": cfg.rope_theta},
        initializer_range=INIT_STD,
        use_cache=False,
        bos_token_id=None,
        eos_token_id=None,
        pad_token_id=None,
    )
    config._attn_implementation = "sdpa"
    return config


def build_model(cfg: ModelConfig, seed: int) -> LlamaForCausalLM:
    """A float32 Llama on CPU with deterministic weights θ0 for ``seed`` (move it to a device after)."""
    model = LlamaForCausalLM(llama_config(cfg)).to(dtype=torch.float32)
    init_parameters(model, seed, num_layers=cfg.num_layers)
    return model


@torch.no_grad()
def init_parameters(model: torch.nn.Module, seed: int, num_layers: int) -> None:
    """Overwrite every parameter: norms to 1, matrices uniform with std 0.02, residual outputs scaled.

    The projections that write into the residual stream (``o_proj``, ``down_proj``) get std
    0.02/sqrt(2·layers), the GPT-2 recipe that keeps the residual's variance flat with depth.
    """
    residual_std = INIT_STD / math.sqrt(2 * num_layers)
    for name, param in model.named_parameters():
        if param.ndim == 1:  # RMSNorm weights (Llama has no biases)
            param.fill_(1.0)
            continue
        std = residual_std if name.endswith(("o_proj.weight", "down_proj.weight")) else INIT_STD
        half_width = std * math.sqrt(3.0)  # uniform(-a, a) has std a/sqrt(3)
        generator = torch.Generator(device="cpu").manual_seed(_param_seed(seed, name))
        draw = torch.rand(param.shape, generator=generator, dtype=torch.float32)
        param.copy_(draw.mul_(2 * half_width).sub_(half_width))


def param_shapes(model: torch.nn.Module) -> dict[str, tuple[int, ...]]:
    """Parameter name → shape, in ``named_parameters`` order (tied weights appear once)."""
    return {name: tuple(param.shape) for name, param in model.named_parameters()}


def param_count(model: torch.nn.Module) -> int:
    return sum(param.numel() for param in model.parameters())


def _param_seed(seed: int, name: str) -> int:
    digest = hashlib.blake2b(f"tessera-init:{seed}:{name}".encode(), digest_size=8).digest()
    return int.from_bytes(digest, "little") & ((1 << 63) - 1)
