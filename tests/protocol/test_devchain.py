from __future__ import annotations

import multiprocessing
import sqlite3
import time

import pytest

from protocol.chain import ChainError, NotRegisteredError
from protocol.clock import wait_for_block
from protocol.commitment import BucketCommitment
from protocol.devchain import DevChain
from protocol.signing import HotkeySigner

BLOCK_TIME = 0.05


@pytest.fixture
def chain(tmp_path) -> DevChain:
    return DevChain.create(tmp_path / "chain.db", netuid=3, block_time=BLOCK_TIME, max_uids=8, max_validators=2)


def signer(i: int) -> HotkeySigner:
    return HotkeySigner.from_uri(f"//Tessera{i}")


def coldkey(i: int) -> str:
    return HotkeySigner.from_uri(f"//Cold{i}").hotkey


def test_blocks_follow_the_wall_clock(chain):
    assert chain.block_timestamp(10) == pytest.approx(chain.genesis + 10 * BLOCK_TIME)
    first = chain.block()
    time.sleep(3 * BLOCK_TIME)
    assert chain.block() >= first + 2


def test_open_checks_file_and_netuid(chain, tmp_path):
    assert DevChain(chain.path, 3).netuid == 3
    with pytest.raises(ChainError, match="netuid 3, not 4"):
        DevChain(chain.path, 4)
    with pytest.raises(ChainError, match="tessera chain create"):
        DevChain(tmp_path / "missing.db")
    with pytest.raises(ChainError, match="already exists"):
        DevChain.create(chain.path)


def test_registration_assigns_uids_and_is_idempotent(chain):
    assert chain.register(signer(0), coldkey(0), stake=5.0) == 0
    assert chain.register(signer(1), coldkey(1)) == 1
    assert chain.register(signer(0), coldkey(0)) == 0
    with pytest.raises(ChainError, match="already owned"):
        chain.register(signer(1), coldkey(0))
    assert chain.is_registered(signer(1).hotkey) and chain.uid_of(signer(1).hotkey) == 1
    mg = chain.metagraph()
    assert [(n.uid, n.hotkey, n.coldkey, n.stake) for n in mg.neurons] == [
        (0, signer(0).hotkey, coldkey(0), 5.0), (1, signer(1).hotkey, coldkey(1), 0.0)]


def test_subnet_cap(tmp_path):
    chain = DevChain.create(tmp_path / "small.db", block_time=BLOCK_TIME, max_uids=1)
    chain.register(signer(0), coldkey(0))
    with pytest.raises(ChainError, match="full"):
        chain.register(signer(1), coldkey(1))


def test_writes_need_a_valid_signature_and_a_registered_hotkey(chain):
    class Forger:
        hotkey = signer(0).hotkey

        def sign(self, message: bytes) -> bytes:
            return signer(1).sign(message)

    with pytest.raises(ChainError, match="does not verify"):
        chain.register(Forger(), coldkey(0))
    with pytest.raises(NotRegisteredError):
        chain.commit(signer(2), "hello")


def test_history_by_block(chain):
    v, m = signer(0), signer(1)
    chain.register(v, coldkey(0), stake=10.0)
    chain.register(m, coldkey(1))
    chain.commit(m, "first")
    chain.set_weights(v, {1: 1.0})
    before = chain.block()
    wait_for_block(chain, before + 1)
    chain.commit(m, "second")
    chain.set_weights(v, {0: 1.0, 1: 3.0})
    assert chain.commitments(before) == {1: "first"}
    assert chain.metagraph(before).by_uid(0).weights == {1: 1.0}
    assert chain.commitments() == {1: "second"}
    assert chain.metagraph().by_uid(0).weights == {0: 0.25, 1: 0.75}
    assert chain.metagraph(0).neurons == ()  # nothing was registered at genesis


def test_state_of_a_begun_block_never_changes(chain):
    chain.register(signer(0), coldkey(0), stake=1.0)
    now = chain.block()
    snapshot = chain.metagraph(now)
    chain.wait_for_inclusion = False
    chain.register(signer(1), coldkey(1))  # included in a later block
    assert chain.metagraph(now) == snapshot


def test_permits_go_to_the_largest_stakes_and_only_permits_set_weights(chain):
    for i, stake in enumerate([1.0, 5.0, 3.0, 0.0]):
        chain.register(signer(i), coldkey(i), stake=stake)
    mg = chain.metagraph()
    assert [n.validator_permit for n in mg.neurons] == [False, True, True, False]
    with pytest.raises(ChainError, match="validator permit"):
        chain.set_weights(signer(0), {3: 1.0})
    chain.set_stake(signer(0).hotkey, 10.0)
    chain.set_weights(signer(0), {3: 1.0})
    assert chain.metagraph().by_uid(3).incentive == pytest.approx(1.0)


def test_weights_are_validated(chain):
    chain.register(signer(0), coldkey(0), stake=1.0)
    with pytest.raises(ChainError, match="unknown uids"):
        chain.set_weights(signer(0), {5: 1.0})
    with pytest.raises(ChainError, match="zero"):
        chain.set_weights(signer(0), {0: 0.0})
    with pytest.raises(ChainError, match="finite"):
        chain.set_weights(signer(0), {0: float("nan")})
    with pytest.raises(ChainError, match="128"):
        chain.commit(signer(0), "x" * 129)


def test_database_is_in_wal_mode(chain):
    with sqlite3.connect(chain.path) as db:
        assert db.execute("PRAGMA journal_mode").fetchone()[0] == "wal"


# --- several OS processes on one file ------------------------------------------------------------

N_PROCS = 3


def _participant(path: str, i: int) -> int:
    """Register, commit a bucket, then (once everyone is in) set weights over every uid."""
    chain = DevChain(path)
    me = signer(i)
    uid = chain.register(me, coldkey(i), stake=10.0 + i)
    bucket = BucketCommitment(endpoint_url="http://127.0.0.1:8333", bucket=f"node-{i}",
                              access_key_id=f"read{i}", secret_access_key=f"secret{i}")
    chain.commit(me, bucket.encode())
    deadline = time.monotonic() + 60
    while len(chain.metagraph().neurons) < N_PROCS and time.monotonic() < deadline:
        wait_for_block(chain, chain.block() + 1)
    chain.set_weights(me, {n.uid: 1.0 + n.uid * (i + 1) for n in chain.metagraph().neurons})
    return uid


def _observe(path: str, block: int) -> tuple:
    chain = DevChain(path)
    return chain.metagraph(block), chain.commitments(block)


@pytest.mark.integration
def test_concurrent_processes_agree_on_one_chain(tmp_path):
    path = str(tmp_path / "shared.db")
    DevChain.create(path, netuid=2, block_time=BLOCK_TIME)
    ctx = multiprocessing.get_context("spawn")
    with ctx.Pool(N_PROCS) as pool:
        uids = pool.starmap(_participant, [(path, i) for i in range(N_PROCS)])
        chain = DevChain(path)
        block = chain.block()
        views = pool.starmap(_observe, [(path, block)] * N_PROCS)
    assert sorted(uids) == list(range(N_PROCS))
    metagraph, commitments = _observe(path, block)
    assert all(view == (metagraph, commitments) for view in views)
    assert len(metagraph.neurons) == N_PROCS
    assert {BucketCommitment.decode(c).bucket for c in commitments.values()} == {f"node-{i}" for i in range(N_PROCS)}
    for i, uid in enumerate(uids):
        row = metagraph.by_uid(uid).weights
        expected = {u: 1.0 + u * (i + 1) for u in range(N_PROCS)}
        assert row == pytest.approx({u: w / sum(expected.values()) for u, w in expected.items()})
    assert sum(n.incentive for n in metagraph.neurons) == pytest.approx(1.0)
