"""Miner timing decisions: whether a window is worth training, and the upload inside its slot.

The clock is a DevChain whose genesis the test places, so "now" sits exactly where a case needs
it within a window; storage is a LocalStore, made flaky where a case needs failures.
"""

from __future__ import annotations

import datetime as dt
import logging
import math
import threading
import time
from pathlib import Path

import pytest

from compression import decode_payload
from neurons.behaviours.strategies import Zeros
from neurons.cli import main
from neurons.config import BucketConfig, NodeConfig
from neurons.miner import Miner
from neurons.node import assemble_node
from protocol.devchain import DevChain
from protocol.hparams import Hparams
from protocol.keys import payload_key
from protocol.signing import HotkeySigner
from storage import StorageError
from storage.errors import StorageUnavailable
from storage.local import LocalStore

BLOCK_TIME = 2.0
W = 5  # the window every case looks at


class FlakyStore(LocalStore):
    """A LocalStore whose first ``failures`` puts fail as if the server were down."""

    def __init__(self, root: Path, failures: int) -> None:
        super().__init__(root)
        self.failures, self.attempts = failures, 0

    def put(self, key: str, data: bytes):
        self.attempts += 1
        if self.attempts <= self.failures:
            raise StorageUnavailable(f"put {key}: connection refused (attempt {self.attempts})")
        return super().put(key, data)


def make_miner(tmp_path: Path, hparams: Hparams, corpus_dir: Path, genesis: float, store: LocalStore,
               slot_seconds: float | None = None) -> Miner:
    if slot_seconds is not None:
        window = hparams.window.model_copy(update={"upload_slot_seconds": slot_seconds})
        hparams = hparams.model_copy(update={"window": window})
    chain = DevChain.create(tmp_path / "chain.db", netuid=1, block_time=BLOCK_TIME, genesis=genesis)
    bucket = BucketConfig(
        endpoint_url="http://127.0.0.1:9", name="unused", write_key_id="w", write_secret="ws",
        read_key_id="r", read_secret="rs",
    )
    config = NodeConfig(
        role="miner", netuid=1, devchain=chain.path, bucket=bucket, state_dir=tmp_path / "state", data_dir=corpus_dir,
    )
    signer = HotkeySigner.from_uri("//Alice")
    return Miner(assemble_node(config, hparams, chain, signer, 1, store, threading.Event()))


def own_key(miner: Miner) -> str:
    return payload_key(miner.node.hparams.run_id, W, miner.node.uid)  # the run id follows the slot length


def window_seconds(hparams: Hparams) -> float:
    return hparams.window.blocks_per_window * BLOCK_TIME


def genesis_at(hparams: Hparams, into_window: float) -> float:
    """A genesis that puts now ``into_window`` seconds after window W began."""
    return time.time() - W * window_seconds(hparams) - into_window


def genesis_with_slot_start(hparams: Hparams, slot_start: float) -> float:
    """A genesis whose window W+1 (the upload slot of W) begins at ``slot_start``."""
    return slot_start - (W + 1) * window_seconds(hparams)


# --- has_time_to_train ---------------------------------------------------------------------------


@pytest.mark.parametrize(("into_window", "expected"), [(0.1, True), (0.35, True), (0.7, False), (0.95, False)])
def test_without_a_measurement_it_assumes_half_a_window(tmp_path, hparams, corpus_dir, into_window, expected):
    # window 20 s, slot 3 s: half a window (10 s) fits while 10 <= 20 - t + 1.5, i.e. until t = 11.5 s
    length = window_seconds(hparams)
    miner = make_miner(tmp_path, hparams, corpus_dir, genesis_at(hparams, into_window * length), LocalStore(tmp_path / "s"))
    assert miner.train_seconds is None
    assert miner.has_time_to_train(W) is expected


@pytest.mark.parametrize(("margin", "expected"), [(-0.5, True), (0.5, False)])
def test_a_measured_time_trains_only_if_done_by_the_slot_middle(tmp_path, hparams, corpus_dir, margin, expected):
    length, slot = window_seconds(hparams), hparams.window.upload_slot_seconds
    into = 0.8 * length  # too late for the half-window guess, early enough for a fast miner
    miner = make_miner(tmp_path, hparams, corpus_dir, genesis_at(hparams, into), LocalStore(tmp_path / "s"))
    left_until_slot_middle = (length - into) + slot / 2
    miner.train_seconds = left_until_slot_middle + margin
    assert miner.has_time_to_train(W) is expected


def test_a_fast_miner_trains_where_the_guess_would_skip(tmp_path, hparams, corpus_dir):
    miner = make_miner(tmp_path, hparams, corpus_dir, genesis_at(hparams, 0.8 * window_seconds(hparams)),
                       LocalStore(tmp_path / "s"))
    assert not miner.has_time_to_train(W)
    miner.train_seconds = 1.0
    assert miner.has_time_to_train(W)


# --- upload ----------------------------------------------------------------------------------------


def test_upload_retries_inside_the_slot(tmp_path, hparams, corpus_dir, caplog):
    store = FlakyStore(tmp_path / "s", failures=2)
    slot_start = math.floor(time.time()) - 1.0  # the slot opened a second ago and runs 30 s
    miner = make_miner(tmp_path, hparams, corpus_dir, genesis_with_slot_start(hparams, slot_start), store, 30.0)
    with caplog.at_level(logging.WARNING, logger="neurons.miner"):
        assert miner.upload(W, b"payload") == len(b"payload")
    assert store.attempts == 3
    assert store.get(own_key(miner), 1024) == b"payload"
    assert sum("retrying" in r.message for r in caplog.records) == 2


def test_upload_gives_up_when_the_slot_ends(tmp_path, hparams, corpus_dir, caplog):
    store = FlakyStore(tmp_path / "s", failures=10**6)
    slot_start = math.floor(time.time()) - 1.0
    miner = make_miner(tmp_path, hparams, corpus_dir, genesis_with_slot_start(hparams, slot_start), store, 4.0)
    _, slot_end = miner.node.clock.upload_slot(W)
    with caplog.at_level(logging.ERROR, logger="neurons.miner"):
        assert miner.upload(W, b"payload") == 0
    finished = time.time()
    assert slot_end <= finished <= slot_end + 2.5  # the longest back-off is 2 s
    assert store.attempts >= 3
    assert any("missed the upload slot" in r.message for r in caplog.records)
    with pytest.raises(StorageError):
        store.head(own_key(miner))


def test_upload_never_overwrites(tmp_path, hparams, corpus_dir):
    store = FlakyStore(tmp_path / "s", failures=0)
    slot_start = math.floor(time.time()) - 1.0
    miner = make_miner(tmp_path, hparams, corpus_dir, genesis_with_slot_start(hparams, slot_start), store, 30.0)
    key = own_key(miner)
    store.put(key, b"uploaded before a restart")
    assert miner.upload(W, b"a different payload") == 0
    assert store.attempts == 2  # the put above, then exactly one refused put: no retry loop
    assert store.get(key, 1024) == b"uploaded before a restart"


def test_upload_waits_for_the_slot_to_open(tmp_path, hparams, corpus_dir):
    store = FlakyStore(tmp_path / "s", failures=0)
    slot_start = math.ceil(time.time()) + 1.0
    miner = make_miner(tmp_path, hparams, corpus_dir, genesis_with_slot_start(hparams, slot_start), store, 30.0)
    assert miner.upload(W, b"payload") == len(b"payload")
    # LastModified has whole seconds on real servers: even truncated it must not precede the slot
    landed = store.head(own_key(miner)).last_modified
    assert landed.replace(microsecond=0) >= dt.datetime.fromtimestamp(slot_start, dt.UTC)


def test_a_stopped_miner_does_not_upload(tmp_path, hparams, corpus_dir):
    store = FlakyStore(tmp_path / "s", failures=0)
    slot_start = math.ceil(time.time()) + 30.0
    miner = make_miner(tmp_path, hparams, corpus_dir, genesis_with_slot_start(hparams, slot_start), store, 30.0)
    miner.node.stop.set()
    started = time.time()
    assert miner.upload(W, b"payload") == 0
    assert time.time() - started < 1.0 and store.attempts == 0


def test_one_slow_window_does_not_stop_training_for_good(tmp_path, hparams, corpus_dir):
    # measured once at 2.5 windows (a cold start under load): skip, but retry after a few windows
    length = window_seconds(hparams)
    miner = make_miner(tmp_path, hparams, corpus_dir, genesis_at(hparams, 0.05 * length), LocalStore(tmp_path / "s"))
    miner.train_seconds = 2.5 * length
    skipped = 0
    while not miner.has_time_to_train(W):
        skipped += 1
        assert skipped < 10, "a miner measured slow once never trains again"
    assert 2 <= skipped <= 5
    assert miner.train_seconds <= length


def test_a_miner_whose_windows_start_late_every_time_still_trains(tmp_path, hparams, corpus_dir):
    # no measurement yet, and 60 % of every window gone before it could start (a gather that waits
    # for a stalling peer's deadline): the half-window guess decays like a measured time does
    length = window_seconds(hparams)
    miner = make_miner(tmp_path, hparams, corpus_dir, genesis_at(hparams, 0.6 * length), LocalStore(tmp_path / "s"))
    assert miner.train_seconds is None
    skipped = 0
    while not miner.has_time_to_train(W):
        skipped += 1
        assert skipped < 10, "a miner that never got a measurement never trains"
    assert 1 <= skipped <= 3


# --- --behaviour ------------------------------------------------------------------------------------


def _miner_argv(tmp_path: Path, *chain: str) -> list[str]:
    return ["miner", "--netuid", "1", "--bucket.endpoint", "http://127.0.0.1:9", "--bucket.name", "unused",
            "--bucket.read-key-id", "r", "--state-dir", str(tmp_path / "state"), *chain]


@pytest.fixture
def bucket_secrets(monkeypatch: pytest.MonkeyPatch) -> None:
    for var in ("TESSERA_BUCKET_WRITE_KEY_ID", "TESSERA_BUCKET_WRITE_SECRET", "TESSERA_BUCKET_READ_SECRET"):
        monkeypatch.setenv(var, "x")


@pytest.mark.parametrize("kind", ["copy", "huge_values"])
def test_a_behaviour_is_refused_on_a_real_chain_before_any_work(tmp_path, capsys, bucket_secrets, kind):
    argv = _miner_argv(tmp_path, "--subtensor.network", "finney", "--behaviour", kind)
    assert main(argv) == 2
    out = capsys.readouterr().err.strip()  # config errors go to stderr (neurons.cli)
    assert len(out.splitlines()) == 1 and "--behaviour" in out and "local network" in out, out
    assert not (tmp_path / "state").exists()  # refused before the node was built


def test_an_unknown_behaviour_is_refused_with_the_list(tmp_path, capsys, bucket_secrets):
    assert main(_miner_argv(tmp_path, "--devchain", str(tmp_path / "chain.db"), "--behaviour", "nice")) == 2
    assert "sign_flip" in capsys.readouterr().err


def test_the_miner_asks_its_behaviour_what_to_publish(tmp_path, hparams, corpus_dir):
    store = FlakyStore(tmp_path / "s", failures=0)
    slot_start = math.floor(time.time()) - 1.0
    miner = make_miner(tmp_path, hparams, corpus_dir, genesis_with_slot_start(hparams, slot_start), store, 30.0)
    miner.behaviour = Zeros()
    assert not miner.behaviour.trains(W)
    assert miner.publish(W, None) > 0
    payload = store.get(own_key(miner), 1 << 20)
    decoded = decode_payload(payload, miner.node.shapes, 1 << 20)
    assert decoded.manifest.uid == miner.node.uid and decoded.manifest.window == W
    assert all(float(t.values.abs().max()) == 0.0 for t in decoded.update.values())


@pytest.mark.parametrize("damage", ["renamed", "reshaped"])
def test_a_damaged_extra_state_section_starts_those_buffers_fresh(tmp_path, hparams, corpus_dir, damage, caplog):
    import torch

    miner = make_miner(tmp_path, hparams, corpus_dir, genesis_at(hparams, 0.1), LocalStore(tmp_path / "s"))
    extra = {f"ef.{k}": v + 1.0 for k, v in miner.compressor.state_dict().items()}
    name = next(iter(extra))
    if damage == "renamed":  # one flipped bit in a name: a header that still parses
        extra[name.replace("error/", "errox/")] = extra.pop(name)
    else:
        extra[name] = torch.zeros(3)
    with caplog.at_level(logging.ERROR):
        miner.restore_extra_state(extra)
    assert "damaged" in caplog.text
    assert all(float(v.abs().sum()) == 0.0 for v in miner.compressor.state_dict().values())
    assert not miner.trainer.optimizer.state


@pytest.mark.parametrize(("network", "rejoins"), [("bb" * 16, True), ("aa" * 16, False), (None, False)])
def test_a_miner_out_of_step_with_the_validators_rejoins(tmp_path, hparams, corpus_dir, monkeypatch, network, rejoins):
    import neurons.miner as miner_module

    miner = make_miner(tmp_path, hparams, corpus_dir, genesis_at(hparams, 0.1), LocalStore(tmp_path / "s"))
    miner.node.window = W
    miner.fingerprints[W - miner_module.RESYNC_LAG] = "aa" * 16  # ours for that window
    asked = []
    monkeypatch.setattr(miner_module, "majority_fingerprint", lambda node, el, w, seconds: asked.append(w) or network)
    monkeypatch.setattr(miner_module, "join_from_checkpoint", lambda node: 3)
    miner.rejoin_if_out_of_step()
    assert asked == [W - miner_module.RESYNC_LAG]
    assert (miner.node.window == 3) is rejoins
    assert (miner.fingerprints == {}) is rejoins
