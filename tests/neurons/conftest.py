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


# --- node plumbing (fetch, gather, peers, join): tiny signed payloads, a fast devchain ---------

PLUMBING_BLOCK_TIME = 0.02  # devchain writes wait one block for inclusion: keep it short


TINY_SHAPES: dict[str, tuple[int, ...]] = {"weight": (16, 64), "bias": (16,)}  # torch.nn.Linear(64, 16)


@pytest.fixture(scope="session")
def tiny_shapes() -> dict[str, tuple[int, ...]]:
    """Parameter shapes of a one-layer model, small enough that payloads are under 1 kB."""
    return dict(TINY_SHAPES)


@pytest.fixture(scope="session")
def tiny_model():
    """``tiny_model(seed)`` -> a ``torch.nn.Linear(64, 16)`` with seeded random parameters."""
    import torch

    def build(seed: int = 0) -> torch.nn.Module:
        gen = torch.Generator().manual_seed(seed)
        model = torch.nn.Linear(64, 16)
        with torch.no_grad():
            for p in model.parameters():
                p.copy_(torch.randn(p.shape, generator=gen))
        return model

    return build


@pytest.fixture(scope="session")
def make_payload():
    """``make_payload(signer, uid=, window=, run_id=, seed=0, sign=True, ..., **manifest)`` -> bytes.

    A real SparseLoCo payload of TINY_SHAPES: error feedback + compression of a random
    pseudo-gradient of about ``scale`` per coordinate (inside the tiny preset's value bound; by
    default chunk 8x8, top-16 per chunk), manifest from the message, hotkey signature.
    """
    import torch

    from compression import ErrorFeedbackCompressor, PayloadManifest, encode_payload

    def build(signer, *, uid: int, window: int, run_id: str, seed: int = 0, sign: bool = True, scale: float = 0.01,
              shapes: dict[str, tuple[int, ...]] | None = None, chunk_size: int = 8, topk_per_chunk: int = 16,
              **manifest: object) -> bytes:
        shapes = shapes or TINY_SHAPES
        compressor = ErrorFeedbackCompressor(shapes, chunk_size=chunk_size, topk_per_chunk=topk_per_chunk)
        gen = torch.Generator().manual_seed(seed)
        message = compressor.compress({n: torch.randn(s, generator=gen) * scale for n, s in shapes.items()})
        fields = {"run_id": run_id, "window": window, "uid": uid, "hotkey": signer.hotkey, "global_step": 0}
        fields.update(manifest)
        return encode_payload(message, PayloadManifest.for_message(message, **fields), sign=signer.sign if sign else None)

    return build


@pytest.fixture
def devchain(tmp_path: Path):
    from protocol.devchain import DevChain

    return DevChain.create(tmp_path / "chain.db", netuid=1, block_time=PLUMBING_BLOCK_TIME)


def set_last_modified(store, key: str, when: float) -> None:
    """Fake the server's LastModified of a LocalStore object (it is the file's mtime, by design)."""
    import os
    from urllib.parse import quote

    path = store.root / "objects" / quote(key, safe="")
    os.utime(path, ns=(round(when * 1e9),) * 2)
    assert abs(store.head(key).last_modified.timestamp() - when) < 1e-3


@pytest.fixture(scope="session")
def stamp():
    """``stamp(local_store, key, unix_time)``: set the object's LastModified."""
    return set_last_modified
