"""Shared fixtures for the training pieces: one embedded corpus per test session."""

from __future__ import annotations

from pathlib import Path

import pytest

from neurons.corpus import ensure_embedded_data
from neurons.shards import TokenShards
from protocol.hparams import Hparams, load_hparams

# Smaller than the default corpus: enough samples for every test, built in about a second.
TEST_CORPUS_CHARS = 1_500_000


@pytest.fixture(scope="session")
def hparams() -> Hparams:
    return load_hparams("tiny")


@pytest.fixture(scope="session")
def corpus_args(hparams: Hparams) -> dict[str, int]:
    return {"vocab_size": hparams.model.vocab_size, "max_chars": TEST_CORPUS_CHARS}


@pytest.fixture(scope="session")
def corpus_dir(tmp_path_factory: pytest.TempPathFactory, corpus_args: dict[str, int]) -> Path:
    return ensure_embedded_data(tmp_path_factory.mktemp("corpus-cache"), **corpus_args)


@pytest.fixture(scope="session")
def corpus(corpus_dir: Path) -> TokenShards:
    return TokenShards(corpus_dir)


@pytest.fixture(scope="package", autouse=True)
def _one_torch_thread():
    """One intra-op thread: on 2 shared cores, OpenMP spin-waiting makes 2 threads several x slower."""
    import torch

    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(previous)
