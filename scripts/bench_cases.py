"""Inputs for the codec benchmark: a real pseudo-gradient and a heavy-tailed synthetic one.

Realistic: a small transformers LlamaForCausalLM built from a config (nothing downloaded) is
trained with AdamW on the bytes of the Python standard library's own sources (vocab 256); the
drift theta_before - theta_after over a few steps is the pseudo-gradient. Peers other than the
first are that drift with independent multiplicative noise, so their top-k sets differ in part.

Synthetic: Student-t (3 degrees of freedom) matrices; peers are the same values rolled by
different offsets, which gives unrelated chunk contents without sampling 20 x 100M values.
"""

from __future__ import annotations

import math
import sysconfig
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import torch

Tensors = dict[str, torch.Tensor]


@dataclass
class Case:
    shapes: dict[str, tuple[int, ...]]
    peer: Callable[[int], Tensors]
    description: str


def stdlib_bytes(limit: int) -> torch.Tensor:
    """Up to ``limit`` bytes of the standard library's .py files, in a fixed order."""
    root = Path(sysconfig.get_paths()["stdlib"])
    chunks, total = [], 0
    for path in sorted(root.glob("*.py")):
        data = path.read_bytes()
        chunks.append(data)
        total += len(data)
        if total >= limit:
            break
    return torch.frombuffer(bytearray(b"".join(chunks)[:limit]), dtype=torch.uint8).to(torch.int64)


def _batches(text: torch.Tensor, steps: int, batch: int, seq: int, gen: torch.Generator):
    for _ in range(steps):
        starts = torch.randint(0, text.numel() - seq - 1, (batch,), generator=gen)
        yield torch.stack([text[s : s + seq + 1] for s in starts.tolist()])


def llama_drift(hidden: int, layers: int, inter: int, warm: int, steps: int, seed: int = 0) -> Tensors:
    """theta_before - theta_after of a byte-level Llama over ``steps`` AdamW steps after ``warm``."""
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(seed)
    seq = 128
    config = LlamaConfig(
        vocab_size=256, hidden_size=hidden, intermediate_size=inter, num_hidden_layers=layers,
        num_attention_heads=max(1, hidden // 64), num_key_value_heads=max(1, hidden // 64),
        max_position_embeddings=seq, tie_word_embeddings=False,
    )
    model = LlamaForCausalLM(config)
    opt = torch.optim.AdamW(model.parameters(), lr=1e-3, betas=(0.9, 0.95), weight_decay=0.1)
    text, gen = stdlib_bytes(4_000_000), torch.Generator().manual_seed(seed)
    before: Tensors = {}
    for i, batch in enumerate(_batches(text, warm + steps, 8, seq, gen)):
        if i == warm:
            before = {n: p.detach().clone() for n, p in model.named_parameters()}
        loss = model(input_ids=batch[:, :-1], labels=batch[:, :-1]).loss
        opt.zero_grad()
        loss.backward()
        opt.step()
    return {n: before[n] - p.detach() for n, p in model.named_parameters()}


def realistic_case(small: bool) -> Case:
    if small:
        drift = llama_drift(hidden=128, layers=1, inter=344, warm=1, steps=2)
    else:
        drift = llama_drift(hidden=512, layers=2, inter=1408, warm=8, steps=8)
    shapes = {n: tuple(t.shape) for n, t in drift.items()}

    def peer(p: int) -> Tensors:
        if p == 0:
            return drift
        gen = torch.Generator().manual_seed(1000 + p)
        return {n: t * (1 + 0.5 * torch.randn(t.shape, generator=gen)) for n, t in drift.items()}

    n = sum(math.prod(s) for s in shapes.values())
    return Case(shapes, peer, f"Llama byte-level, {n / 1e6:.1f}M params, AdamW drift on stdlib sources")


def synthetic_case(small: bool) -> Case:
    side, count = (1024, 2) if small else (4096, 6)
    gen = torch.Generator().manual_seed(7)
    shapes = {f"t{i}": (side, side) for i in range(count)}
    base = {}
    for name, shape in shapes.items():
        # Student-t(3) = normal / sqrt(chi2_3 / 3), sampled from normals for speed.
        z = torch.randn(shape, generator=gen)
        chi2 = torch.randn((3, *shape), generator=gen).square_().sum(0).div_(3)
        base[name] = z.div_(chi2.sqrt_())
        del chi2

    def peer(p: int) -> Tensors:
        return base if p == 0 else {n: t.view(-1).roll(p * 4099).view(t.shape) for n, t in base.items()}

    n = sum(math.prod(s) for s in shapes.values())
    return Case(shapes, peer, f"Student-t(3), {count} x {side}x{side} = {n / 1e6:.1f}M elements")
