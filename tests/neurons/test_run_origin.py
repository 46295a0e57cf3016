"""neurons.run_origin: the owner publishes the origin once; nodes read it, or fall back on a devchain."""

from __future__ import annotations

import pytest

from neurons.run_origin import OriginMissing, load_origin, publish_origin, read_origin
from protocol.devchain import DevChain
from protocol.hparams import load_hparams
from protocol.origin import OriginError, RunOrigin, hparams_digest, origin_key
from storage.endpoints import EndpointPolicy
from storage.local import LocalStore

HP = load_hparams("tiny")


def origin(start: int = 5_000_000) -> RunOrigin:
    return RunOrigin(start_block=start, hparams_digest=hparams_digest(HP), data_digest="d" * 64, tokenizer="t")


def test_published_once_and_read_back(tmp_path):
    store = LocalStore(tmp_path / "owner")
    assert publish_origin(store, origin(), HP) is True
    assert publish_origin(store, origin(), HP) is False  # the same record again: fine
    assert read_origin(store, HP) == origin()
    with pytest.raises(OriginError, match="a run starts once"):
        publish_origin(store, origin(5_000_001), HP)


def test_a_missing_or_hostile_record_is_a_typed_error(tmp_path):
    store = LocalStore(tmp_path / "owner")
    with pytest.raises(OriginMissing, match="has no origin"):
        read_origin(store, HP)
    store.put(origin_key(HP.run_id), b'{"start_block": 1}' + b" " * 5000)
    with pytest.raises(OriginError, match="bytes"):
        read_origin(store, HP)


def test_a_devchain_without_a_published_origin_counts_from_its_start_block(tmp_path):
    chain = DevChain.create(tmp_path / "c.db", block_time=0.05, start_block=5_000_000)
    policy = EndpointPolicy(allow_loopback=True)
    got = load_origin(chain, HP, devchain_start=5_000_000, policy=policy)
    assert got.start_block == 5_000_000 and got.hparams_digest == hparams_digest(HP)
    with pytest.raises(OriginMissing, match="must publish it"):
        load_origin(chain, HP, devchain_start=None, policy=policy)  # a real chain: no fallback
