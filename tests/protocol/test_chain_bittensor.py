"""BittensorChain through bittensor 11's real Client, with an in-memory substrate behind it."""

from __future__ import annotations

import pytest

from protocol.chain import ChainError, OldStateError, RateLimitedError, WeightsRefusedError
from protocol.chain_bittensor import BittensorChain
from protocol.commitment import BucketCommitment
from protocol.signing import HotkeySigner
from tests.protocol.fake_substrate import BLOCK_MS, GENESIS_MS, U16_MAX, FakeSubstrate, block_hash_of

NETUID = 7
ALICE, BOB, CHARLIE = (HotkeySigner.from_uri(u) for u in ("//Alice", "//Bob", "//Charlie"))


def _neurons() -> list[dict]:
    return [
        {"hotkey": ALICE.hotkey, "coldkey": "5Cold0", "permit": True, "stake_rao": 2_000 * 10**9, "incentive_u16": 0},
        {"hotkey": BOB.hotkey, "coldkey": "5Cold1", "permit": False, "stake_rao": 0, "incentive_u16": U16_MAX},
    ]


@pytest.fixture
def fake(monkeypatch, tmp_path) -> FakeSubstrate:
    # the SDK caches token symbols on disk at connect; keep that out of the home directory
    monkeypatch.setenv("BTCLI_TOKEN_SYMBOLS_CACHE", str(tmp_path / "symbols.json"))
    return FakeSubstrate(NETUID, _neurons(), head=1000)


@pytest.fixture
def chain(fake):
    chain = BittensorChain("finney", NETUID, substrate=fake)
    yield chain
    chain.close()


def test_block_and_timestamps(chain, fake):
    assert chain.block() == 1000
    assert chain.block_time() == BLOCK_MS / 1000
    assert chain.block_timestamp(990) == (GENESIS_MS + 990 * BLOCK_MS) / 1000
    assert ("Timestamp.Now", "[]", block_hash_of(990)) in fake.reads
    # a block not produced yet: the head's time plus the remaining blocks at the chain's pace
    assert chain.block_timestamp(1010) == (GENESIS_MS + 1000 * BLOCK_MS) / 1000 + 10 * BLOCK_MS / 1000


def test_metagraph_is_pinned_to_the_requested_block(chain, fake):
    fake.weights = {0: [(1, U16_MAX), (0, U16_MAX // 3)]}
    mg = chain.metagraph(block=900)
    assert mg.block == 900 and mg.netuid == NETUID
    assert [n.hotkey for n in mg.neurons] == [ALICE.hotkey, BOB.hotkey]
    alice, bob = mg.neurons
    assert alice.stake == pytest.approx(2000.0) and alice.validator_permit and not bob.validator_permit
    assert bob.incentive == pytest.approx(1.0)
    assert alice.weights == pytest.approx({1: 0.75, 0: 0.25}, rel=1e-4)
    pinned = {read for read in fake.reads if read[0] in ("SubnetInfoRuntimeApi.get_metagraph", "SubtensorModule.Weights")}
    assert pinned and all(h == block_hash_of(900) for _, _, h in pinned)


def test_unknown_subnet_is_a_chain_error(fake):
    chain = BittensorChain("finney", NETUID + 1, substrate=fake)
    with pytest.raises(ChainError, match="does not exist"):
        chain.metagraph()
    chain.close()


def test_commit_round_trips_through_the_chain(chain, fake):
    text = BucketCommitment.for_r2("ab" * 16, "bucket-one", "cd" * 16, "ef" * 32).encode()
    chain.commit(BOB, text)
    (call, signer), = fake.submitted
    assert (call.module, call.function) == ("Commitments", "set_commitment") and signer == BOB.hotkey
    assert list(call.params["info"]["fields"][0]) == [f"Raw{len(text)}"]
    assert chain.commitments() == {1: text}
    assert BucketCommitment.decode(chain.commitments()[1]).bucket == "bucket-one"


def test_commit_over_the_raw_limit_is_refused_before_submitting(chain, fake):
    with pytest.raises(ChainError, match="128"):
        chain.commit(BOB, "x" * 129)
    assert fake.submitted == []


def test_set_weights_goes_through_the_sdk_intent(chain, fake):
    chain.set_weights(ALICE, {0: 1.0, 1: 3.0})
    (call, signer), = fake.submitted
    assert (call.module, call.function) == ("SubtensorModule", "set_mechanism_weights") and signer == ALICE.hotkey
    assert dict(zip(call.params["dests"], call.params["weights"], strict=True)) == {0: round(U16_MAX / 3), 1: U16_MAX}
    assert chain.metagraph().by_uid(0).weights == pytest.approx({0: 0.25, 1: 0.75}, rel=1e-4)


def test_set_weights_from_an_unregistered_hotkey_fails_fast(chain, fake):
    with pytest.raises(ChainError, match="not registered"):
        chain.set_weights(CHARLIE, {0: 1.0})
    assert fake.submitted == []


def test_registration_check(chain):
    assert chain.is_registered(BOB.hotkey) and chain.uid_of(BOB.hotkey) == 1
    assert not chain.is_registered(CHARLIE.hotkey)


def test_signer_without_keypair_is_refused(chain):
    class Bare:
        hotkey = ALICE.hotkey

        def sign(self, message: bytes) -> bytes:
            return ALICE.sign(message)

    with pytest.raises(ChainError, match="keypair"):
        chain.commit(Bare(), "hello")


def test_set_weights_passes_the_version_key(chain, fake):
    chain.set_weights(ALICE, {0: 1.0, 1: 1.0}, version_key=42)
    (call, _), = fake.submitted
    assert call.params["version_key"] == 42


def test_weights_policy_reads_the_subnets_rules_at_the_head(chain, fake):
    fake.rules.weights_rate_limit, fake.rules.min_allowed_weights = 360, 2
    fake.rules.max_weights_limit, fake.rules.weights_version_key = 40000, 9
    chain.set_weights(ALICE, {0: 1.0, 1: 1.0}, version_key=9)
    policy = chain.weights_policy(0)
    assert (policy.block, policy.last_update, policy.rate_limit) == (1001, 1001, 360)
    assert policy.next_allowed_block == 1001 + 360 and policy.min_allowed_weights == 2
    assert policy.max_weight_share == pytest.approx(40000 / U16_MAX) and policy.version_key == 9
    assert policy.subnet_size == 2 and not policy.commit_reveal
    assert chain.weights_policy(1).last_update is None  # never set


def test_sdk_value_error_for_state_missing_at_a_block_is_a_chain_error(chain, fake):
    fake.missing.add("SubnetInfoRuntimeApi.get_metagraph")
    with pytest.raises(ChainError, match="ValueError") as caught:
        chain.metagraph(block=990)
    assert not isinstance(caught.value, OldStateError)
    fake.missing = {"SubtensorModule.WeightsSetRateLimit"}
    with pytest.raises(ChainError, match="weights_policy"):
        chain.weights_policy(0)


def test_pruned_state_without_an_archive_names_the_flag(chain, fake):
    fake.pruned_below = 900
    assert chain.metagraph(block=950).block == 950
    with pytest.raises(OldStateError, match="--subtensor.archive-endpoint"):
        chain.metagraph(block=899)
    with pytest.raises(OldStateError, match="--subtensor.archive-endpoint"):
        chain.block_timestamp(10)


def test_pruned_reads_go_to_the_archive_node(fake):
    fake.pruned_below = 900
    archive = FakeSubstrate(NETUID, _neurons(), head=1000)
    archive.commitments = {BOB.hotkey: {"deposit": 0, "block": 5, "info": {"fields": [{"Raw3": "0x6f6c64"}]}}}
    chain = BittensorChain("finney", NETUID, archive_endpoint="ws://127.0.0.1:9", substrate=fake, archive_substrate=archive)
    try:
        assert chain.commitments(800) == {1: "old"}
        assert chain.metagraph(850).block == 850 and chain.block_timestamp(10) == (GENESIS_MS + 10 * BLOCK_MS) / 1000
        primary_reads = len(fake.reads)
        chain.metagraph(700)  # below a block the node pruned: straight to the archive
        assert len(fake.reads) == primary_reads
        assert chain.metagraph(950).block == 950  # recent state still comes from the node
        assert len(fake.reads) > primary_reads
        archive.pruned_below = 100  # an archive that is not one
        with pytest.raises(OldStateError, match="ws://127.0.0.1:9.*--subtensor.archive-endpoint"):
            chain.metagraph(50)
    finally:
        chain.close()


def test_refused_extrinsics_are_typed(chain, fake):
    fake.rules.weights_version_key = 3
    with pytest.raises(WeightsRefusedError, match="IncorrectWeightVersionKey"):
        chain.set_weights(ALICE, {0: 1.0, 1: 1.0}, version_key=2)
    chain.set_weights(ALICE, {0: 1.0, 1: 1.0}, version_key=3)
    with pytest.raises(RateLimitedError, match="rate limit"):  # caught by the SDK's preflight
        chain.set_weights(ALICE, {0: 1.0, 1: 1.0}, version_key=3)
    fake.rules.commitment_rate_limit = 50
    chain.commit(BOB, "first")
    with pytest.raises(RateLimitedError, match="CommitmentSetRateLimitExceeded"):  # refused on chain
        chain.commit(BOB, "second")
    assert chain.commitments() == {1: "first"}
