"""Small models for the pipeline tests (CPU, well under 1M parameters)."""

from __future__ import annotations

import pytest
import torch

from neurons.model import build_model
from pipeline.basis import subspace_basis
from protocol.hparams import ModelConfig

SMALL = ModelConfig(
    vocab_size=256, hidden_size=64, intermediate_size=128, num_layers=2, num_heads=4, num_kv_heads=4, max_seq_len=32
)


@pytest.fixture
def small_model():
    return build_model(SMALL, seed=7)


@pytest.fixture
def basis():
    return subspace_basis(seed=7, hidden=SMALL.hidden_size, k=4)


@pytest.fixture
def batch():
    generator = torch.Generator().manual_seed(3)
    return torch.randint(0, SMALL.vocab_size, (4, 16), generator=generator)
