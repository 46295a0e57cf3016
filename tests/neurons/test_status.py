"""``tessera status``: what it reports matches what a validator did, and peers' bytes cannot break it.

The scenario test runs one real validator window in this process (tiny preset, devchain, the
real SeaweedFS server on loopback) against two honest payloads, one garbage payload and one
malformed commitment, then runs ``tessera status --devchain ... --json`` and compares it with
the validator's event record for that window. The hostile-input tests feed the readers crafted
commitments, listings and fingerprint records through stores that answer whatever a test says.
"""

from __future__ import annotations

import datetime as dt
import io
import json
import random
import threading
import time
from contextlib import redirect_stdout
from pathlib import Path

import pytest

from neurons.cli import main
from neurons.status import StatusReader, open_peer_store, read_listing
from protocol.commitment import BucketCommitment
from protocol.devchain import DevChain
from protocol.fingerprint_record import FingerprintRecord
from protocol.hparams import load_hparams
from protocol.keys import fingerprint_key, payload_key
from protocol.signing import HotkeySigner
from storage import BadResponse, ListingTooLong, ObjectInfo, StorageTimeout
from storage.endpoints import EndpointPolicy
from storage.local import LocalStore

RUN = load_hparams("tiny").run_id
NOW = dt.datetime.now(dt.UTC)


def status_json(*args: str) -> dict:
    out = io.StringIO()
    with redirect_stdout(out):
        assert main(["status", *args, "--json"]) == 0
    return json.loads(out.getvalue())


# --- hostile input: commitments -----------------------------------------------------------------

GARBAGE_COMMITMENTS = [
    "", "x", "1", "9http://a,b,c,d,e", "1,,,,", "1http://127.0.0.1:1,bk,,k,s,extra", "1.~~~~,bucket,,k,s",
    "1ftp://host,bucket,,k,s", "1http://[::1,bucket,,k,s", "1http://h:99999,bucket,,k,s",
    "1" + "a" * 300, "1http://ex\u00e4mple.com,bucket,,k,s", "1http://u@h.com,bucket,,k,s", "\x00\xff",
    "1http://h.com,BUCKET!,,k,s", "1http://h.com,bucket,reg ion,k,s",
]


@pytest.mark.parametrize("text", GARBAGE_COMMITMENTS)
def test_a_malformed_commitment_is_unreadable_with_a_reason(text: str) -> None:
    store, _, why = open_peer_store(text, EndpointPolicy())
    assert store is None and why


@pytest.mark.parametrize("endpoint", ["http://169.254.169.254", "http://10.0.0.1:9000", "http://127.0.0.1:8333",
                                      "http://[fe80::1]:80", "http://0.0.0.0:80"])
def test_a_commitment_to_a_refused_address_is_unreadable_without_connecting(endpoint: str) -> None:
    text = BucketCommitment(endpoint_url=endpoint, bucket="bkt", region="us-east-1", access_key_id="k",
                            secret_access_key="s").encode()
    store, label, why = open_peer_store(text, EndpointPolicy())  # a real network's policy
    assert store is None and label == f"bkt@{endpoint}" and "EndpointRefused" in why


# --- hostile input: listings and fingerprint records ------------------------------------------------


class ScriptedStore(LocalStore):
    """A bucket whose listing is whatever the test scripts (or raises), with real objects for GET."""

    def __init__(self, root: Path, listing=None, error: BaseException | None = None) -> None:
        super().__init__(root)
        self.listing, self.error = listing, error

    def list(self, prefix: str = "", *, deadline: float | None = None) -> list[ObjectInfo]:
        if self.error is not None:
            raise self.error
        if self.listing is None:
            return super().list(prefix, deadline=deadline)
        return [ObjectInfo(k, 10, NOW) for k in self.listing]


def test_a_listing_keeps_only_this_uids_objects_of_this_run_and_the_past() -> None:
    keys = [
        payload_key(RUN, 3, 2), payload_key(RUN, 4, 2), payload_key(RUN, 4, 7),  # uid 7: another node's
        payload_key(RUN, 99, 2),  # a window that cannot exist yet
        f"{RUN}/payloads/notawindow/00002.safetensors", f"{RUN}/payloads/0000000005/00002.json",
        f"{RUN}/../x", "garbage", f"{RUN}/fingerprints/0000000004/00002.json", fingerprint_key(RUN, 4, 22),
    ]
    listing = read_listing(ScriptedStore(Path("/nonexistent"), keys), RUN, 2, time.monotonic() + 5, newest=10)
    assert sorted(listing.payloads) == [3, 4]
    assert listing.fingerprints == {4}


def _chain_with(tmp_path: Path, uids: int) -> tuple[DevChain, list[HotkeySigner]]:
    chain = DevChain.create(tmp_path / "chain.db", netuid=1, block_time=0.02)
    signers = [HotkeySigner.from_uri(f"//StatusHostile{i}") for i in range(uids)]
    for s in signers:
        chain.register(s, s.hotkey, stake=0.0)
    return chain, signers


@pytest.mark.parametrize(("error", "expected"), [
    (BadResponse("listed key is not under the prefix"), "BadResponse"),
    (ListingTooLong("more than 4 pages"), "ListingTooLong"),
    (StorageTimeout("deadline passed"), "StorageTimeout"),
    (KeyError("a reader bug"), "KeyError"),  # anything else: the boundary guard, this peer only
])
def test_a_bucket_that_cannot_be_listed_is_unreadable_and_the_rest_is_read(tmp_path, error, expected) -> None:
    chain, _ = _chain_with(tmp_path, 3)  # uid 0: the owner
    stores = {1: ScriptedStore(tmp_path / "bad", error=error), 2: ScriptedStore(tmp_path / "good")}
    stores[2].put(payload_key(RUN, 0, 2), b"p")
    reader = _reader(chain, stores)
    status = reader.collect()
    rows = {r.uid: r for r in status.miners}
    assert expected in rows[1].unreadable and rows[1].last_payload_window is None
    assert rows[2].unreadable is None and rows[2].last_payload_window == 0


@pytest.mark.parametrize("record", [
    b"", b"{", b"\xff\xfe", b"[]", b'{"window": 0}', b"1" * 70000, b'{"a":' * 5000,
    b'{"window": 0, "fingerprint": "zz", "gathered": [], "uid": 1}',
    b'{"window": 0, "fingerprint": "ab", "gathered": [], "uid": 9}',  # another node's record
    b'{"window": "0", "fingerprint": "ab", "gathered": [], "uid": 1}',
])
def test_a_garbage_fingerprint_record_is_unreadable_with_a_reason(tmp_path, record: bytes) -> None:
    chain, signers = _chain_with(tmp_path, 2)
    chain.set_stake(signers[1].hotkey, 100.0)
    chain.set_weights(signers[1], {0: 1.0})  # uid 1 sets weights: a validator (with stake and permit)
    store = ScriptedStore(tmp_path / "v")
    store.put(fingerprint_key(RUN, 0, 1), record)
    status = _reader(chain, {1: store}).collect()
    (validator,) = status.validators
    assert validator.fingerprint is None and "fingerprint record 0" in validator.unreadable
    assert status.majority_fingerprint is None


def _reader(chain: DevChain, stores: dict) -> StatusReader:
    reader = StatusReader(chain, load_hparams("tiny"), EndpointPolicy(allow_loopback=True), timeout=5)
    commitments = {uid: f"c{uid}" for uid in stores}
    reader.chain = _WithCommitments(chain, commitments)
    reader.open_store = lambda text, policy: (
        (stores[int(text[1:])], f"scripted {text}", None) if text else (None, None, "no bucket commitment"))
    return reader


class _WithCommitments:
    """The devchain with commitments the test names (a store per uid stands behind each)."""

    def __init__(self, chain: DevChain, commitments: dict[int, str]) -> None:
        self._chain, self._commitments = chain, commitments

    def __getattr__(self, name: str):
        return getattr(self._chain, name)

    def commitments(self, block: int | None = None) -> dict[int, str]:
        return dict(self._commitments)


def test_the_command_needs_one_chain(capsys) -> None:
    assert main(["status"]) == 2
    assert "exactly one of --subtensor.network or --devchain" in capsys.readouterr().err


# --- the scenario: one real validator window, then status ------------------------------------------

BLOCK_TIME = 0.2


@pytest.mark.integration
def test_status_matches_the_validators_events(tmp_path, seaweed, seaweed_bucket, corpus_dir, make_payload) -> None:
    from neurons.config import BucketConfig, NodeConfig
    from neurons.events import read_records
    from neurons.fingerprint import model_fingerprint
    from neurons.node import assemble_node
    from neurons.validator import Validator

    # a run of its own (a fresh seed), so the shared bucket holds nothing else of it
    hp = load_hparams("tiny")
    hp = hp.model_copy(update={"seed": random.randrange(1 << 30)})
    hp_path = tmp_path / "run.json"
    hp_path.write_text(hp.model_dump_json())
    chain = DevChain.create(tmp_path / "chain.db", netuid=1, block_time=BLOCK_TIME)
    names = ["owner", "validator", "miner-a", "miner-b", "garbage", "bad-commitment"]
    signers = [HotkeySigner.from_uri(f"//StatusScenario/{n}") for n in names]
    for s, name in zip(signers, names, strict=True):
        chain.register(s, s.hotkey, stake=1000.0 if name == "validator" else 0.0)
    reader = seaweed.identity("reader")
    good = BucketCommitment(endpoint_url=seaweed.endpoint_url, bucket=seaweed_bucket, region="us-east-1",
                            access_key_id=reader.access_key, secret_access_key=reader.secret_key).encode()
    for uid in (1, 2, 3, 4):
        chain.commit(signers[uid], good)
    chain.commit(signers[5], "1http://127.0.0.1:1,NOT A BUCKET,,k,s")
    writer = seaweed.store("writer", seaweed_bucket)

    writer_id = seaweed.identity("writer")
    bucket = BucketConfig(endpoint_url=seaweed.endpoint_url, name=seaweed_bucket, region="us-east-1",
                          write_key_id=writer_id.access_key, write_secret=writer_id.secret_key,
                          read_key_id=reader.access_key, read_secret=reader.secret_key)
    config = NodeConfig(role="validator", netuid=1, devchain=chain.path, bucket=bucket, state_dir=tmp_path / "v",
                        data_dir=corpus_dir, gather_grace_seconds=0.2)
    node = assemble_node(config, hp, chain, signers[1], 1, writer, threading.Event())
    validator = Validator(node)

    # window w: honest payloads from θ_w (θ0), put as soon as w+1 begins (inside the upload slot)
    bpw = hp.window.blocks_per_window
    w = chain.block() // bpw + 1
    time.sleep(max(0.0, chain.block_timestamp((w + 1) * bpw) - time.time()) + 0.05)
    base = model_fingerprint(node.model)
    for uid in (2, 3):
        data = make_payload(signers[uid], uid=uid, window=w, run_id=hp.run_id, seed=uid, shapes=node.shapes,
                            chunk_size=hp.codec.chunk_size, topk_per_chunk=hp.codec.topk_per_chunk,
                            base_fingerprint=base, global_step=(w + 1) * hp.training.inner_steps)
        writer.put(payload_key(hp.run_id, w, uid), data)
    writer.put(payload_key(hp.run_id, w, 4), b"not a payload at all")
    node.window = w
    validator.one_window()
    (event,) = [r for r in read_records(tmp_path / "v" / "events.jsonl") if r["window"] == w]
    # a miner in step and one that says it holds another θ
    writer.put(fingerprint_key(hp.run_id, w, 2),
               FingerprintRecord(window=w, fingerprint=event["fingerprint"], gathered=[2, 3], uid=2).to_bytes())
    writer.put(fingerprint_key(hp.run_id, w, 3),
               FingerprintRecord(window=w, fingerprint="ab" * 16, gathered=[2, 3], uid=3).to_bytes())

    status = status_json("--devchain", str(chain.path), "--hparams", str(hp_path), "--timeout", "10")

    assert status["run_id"] == hp.run_id and status["reference_window"] == w
    assert status["origin"]["start_block"] == 0  # a devchain without a published origin: its start block
    (v,) = status["validators"]
    assert v["uid"] == 1 and v["fingerprint"] == event["fingerprint"] and v["agrees"] is True
    assert v["gathered"] == event["gathered"] and status["majority_fingerprint"] == event["fingerprint"]
    on_chain = {int(k): x for k, x in v["weights"].items()}
    assert on_chain.keys() == {int(k) for k in event["weights"]}
    for uid, weight in event["weights"].items():
        assert on_chain[int(uid)] == pytest.approx(weight, abs=1e-4)
    miners = {m["uid"]: m for m in status["miners"]}
    assert set(miners) == {2, 3, 4, 5}
    for uid in map(int, event["payload_bytes"]):  # every payload the validator downloaded
        assert miners[uid]["last_payload_window"] == w and miners[uid]["last_payload_on_time"] is True
    assert {int(u) for u in event["rejected"]} >= {4, 5}  # garbage and no usable bucket
    assert miners[2]["agrees"] is True and miners[3]["agrees"] is False
    assert "malformed bucket commitment" in miners[5]["unreadable"]
    assert event["rejected"]["5"] == "missing"

    out = io.StringIO()
    with redirect_stdout(out):
        assert main(["status", "--devchain", str(chain.path), "--hparams", str(hp_path)]) == 0
    table = out.getvalue()
    assert event["fingerprint"][:12] in table and "unreadable" in table
