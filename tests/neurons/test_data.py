from __future__ import annotations

from pathlib import Path

import pytest
import torch

from neurons.data import (
    UID_STRIDE,
    Assignments,
    DataError,
    SampleSpace,
    assigned_batches,
    heldout_batches,
    permuted_index,
    random_batches,
)
from neurons.shards import ShardWriter, TokenShards

SEQ = 16
SECRET = b"validator-secret-0123456789"


@pytest.fixture(scope="module")
def unique_shards(tmp_path_factory: pytest.TempPathFactory) -> TokenShards:
    """Two shards where every non-eos token id is unique, so a sample's content names its position."""
    out = tmp_path_factory.mktemp("unique")
    writer = ShardWriter(out, vocab_size=1 << 16, eos_id=0, shard_tokens=30_000)
    next_id = 1
    for _ in range(500):
        writer.add_document(list(range(next_id, next_id + 99)))
        next_id += 99
    writer.finish("cd" * 32)
    return TokenShards(out)


def _ids(batches: list[torch.Tensor]) -> set[int]:
    return {int(t) for b in batches for t in b.flatten() if int(t) != 0}


def _rows(batches: list[torch.Tensor]) -> list[tuple[int, ...]]:
    return [tuple(row.tolist()) for b in batches for row in b]


@pytest.mark.parametrize("size", [1, 2, 7, 100, 1000, 4097])
def test_permuted_index_is_a_permutation(size: int) -> None:
    key = b"k" * 32
    assert sorted(permuted_index(i, size, key) for i in range(size)) == list(range(size))


def test_permuted_index_depends_on_key() -> None:
    a = [permuted_index(i, 1000, b"a" * 32) for i in range(50)]
    b = [permuted_index(i, 1000, b"b" * 32) for i in range(50)]
    assert a != b
    with pytest.raises(DataError):
        permuted_index(1000, 1000, b"a" * 32)


def test_assigned_batches_deterministic_shape_dtype(unique_shards: TokenShards) -> None:
    first = assigned_batches(unique_shards, 7, uid=3, window=5, n_batches=4, batch_size=2, seq_len=SEQ)
    again = assigned_batches(TokenShards(unique_shards.directory), 7, uid=3, window=5, n_batches=4, batch_size=2, seq_len=SEQ)
    assert len(first) == 4
    assert all(b.shape == (2, SEQ) and b.dtype == torch.int64 for b in first)
    assert all(torch.equal(x, y) for x, y in zip(first, again, strict=True))


def test_assignment_varies_with_seed_uid_and_window(unique_shards: TokenShards) -> None:
    def rows(seed: int, uid: int, window: int) -> list[tuple[int, ...]]:
        return _rows(assigned_batches(unique_shards, seed, uid, window, 2, 4, SEQ))

    base = rows(7, 1, 5)
    assert rows(8, 1, 5) != base
    assert rows(7, 2, 5) != base
    assert rows(7, 1, 6) != base


def test_uids_get_disjoint_data_within_a_window(unique_shards: TokenShards) -> None:
    per_uid = [_ids(assigned_batches(unique_shards, 7, uid, 9, 2, 4, SEQ)) for uid in range(6)]
    for i in range(len(per_uid)):
        for j in range(i + 1, len(per_uid)):
            assert not per_uid[i] & per_uid[j]


def test_fewer_batches_are_a_prefix(unique_shards: TokenShards) -> None:
    """A validator asking for fewer batches (or another batch size) sees what the miner trained on."""
    full = _rows(assigned_batches(unique_shards, 7, 4, 2, n_batches=4, batch_size=4, seq_len=SEQ))
    part = _rows(assigned_batches(unique_shards, 7, 4, 2, n_batches=3, batch_size=2, seq_len=SEQ))
    assert part == full[:6]


def test_random_batches_keyed_by_secret_and_window(unique_shards: TokenShards) -> None:
    a = _rows(random_batches(unique_shards, SECRET, 3, 2, 4, SEQ))
    assert a == _rows(random_batches(unique_shards, SECRET, 3, 2, 4, SEQ))
    assert a != _rows(random_batches(unique_shards, SECRET + b"x", 3, 2, 4, SEQ))
    assert a != _rows(random_batches(unique_shards, SECRET, 4, 2, 4, SEQ))
    with pytest.raises(DataError, match="secret"):
        random_batches(unique_shards, b"short", 3, 2, 4, SEQ)


def test_random_pool_leaves_out_every_miners_assignment(unique_shards: TokenShards) -> None:
    """No registered miner can have trained on the validator's random data of that window."""
    space = SampleSpace.build(unique_shards, SEQ, "train")
    given = Assignments(seed=7, uids=tuple(range(40)), count=50)  # over a quarter of the pool
    assigned = set()
    for uid in given.uids:
        assigned |= set(_rows(assigned_batches(unique_shards, 7, uid, 5, n_batches=25, batch_size=2, seq_len=SEQ)))
    assert len(assigned) == len(given.indices(space, 5)) > len(space) // 4
    plain = set(_rows(random_batches(unique_shards, SECRET, 5, 4, 8, SEQ)))
    assert plain & assigned  # without the exclusion the pool overlaps assignments
    pool = _rows(random_batches(unique_shards, SECRET, 5, 4, 8, SEQ, exclude=given))
    assert len(set(pool)) == 32 and not set(pool) & assigned
    assert pool == _rows(random_batches(unique_shards, SECRET, 5, 4, 8, SEQ, exclude=given))  # deterministic
    other_window = set(_rows(random_batches(unique_shards, SECRET, 6, 4, 8, SEQ, exclude=given)))
    assert other_window != set(pool)
    # Sybils registering enough uids to cover the split must not stop a validator: the pool falls
    # back to assigned samples in the secret order (a weaker window, logged)
    everyone = Assignments(seed=7, uids=tuple(range(UID_STRIDE)), count=len(space))
    crowded = _rows(random_batches(unique_shards, SECRET, 5, 1, 8, SEQ, exclude=everyone))
    assert len(set(crowded)) == 8
    assert crowded == _rows(random_batches(unique_shards, SECRET, 5, 1, 8, SEQ, exclude=everyone))
    with pytest.raises(DataError, match="training split has"):
        random_batches(unique_shards, SECRET, 5, len(space), 8, SEQ)


def test_heldout_is_fixed_and_never_in_training(unique_shards: TokenShards) -> None:
    held = heldout_batches(unique_shards, 2, 4, SEQ)
    assert _rows(held) == _rows(heldout_batches(unique_shards, 2, 4, SEQ))
    train = SampleSpace.build(unique_shards, SEQ, "train")
    heldout_space = SampleSpace.build(unique_shards, SEQ, "heldout")
    train_ids = {int(t) for i in range(len(train)) for t in train.sample(i) if t}
    heldout_ids = {int(t) for i in range(len(heldout_space)) for t in heldout_space.sample(i) if t}
    assert heldout_ids and not train_ids & heldout_ids
    assert _ids(held) <= heldout_ids


def test_split_is_stable_across_seq_len(unique_shards: TokenShards) -> None:
    lo = min(int(t) for t in SampleSpace.build(unique_shards, 8, "heldout").sample(0) if t)
    train_32 = SampleSpace.build(unique_shards, 32, "train")
    assert all(int(t) < lo for t in train_32.sample(0) if t)  # shard 0's train region ends before it


def test_too_much_asked(unique_shards: TokenShards) -> None:
    with pytest.raises(DataError, match="held-out"):
        heldout_batches(unique_shards, 1000, 8, SEQ)
    with pytest.raises(DataError, match="no train samples"):
        assigned_batches(unique_shards, 7, 0, 0, 1, 1, seq_len=10**9)
    with pytest.raises(DataError, match="positive"):
        assigned_batches(unique_shards, 7, 0, 0, 0, 1, SEQ)


def test_pool_wraps_when_many_uids_share_a_small_corpus(tmp_path: Path) -> None:
    writer = ShardWriter(tmp_path, vocab_size=100, eos_id=0)
    writer.add_document(list(range(1, 100)) * 2)
    writer.finish("cd" * 32)
    shards = TokenShards(tmp_path)
    batches = assigned_batches(shards, 1, UID_STRIDE + 5, 0, 4, 4, 8)  # more samples than exist
    assert len(batches) == 4 and all(b.shape == (4, 8) for b in batches)


def test_embedded_corpus_batches(corpus: TokenShards, hparams) -> None:
    t = hparams.training
    batches = assigned_batches(corpus, hparams.seed, 0, 0, t.inner_steps, t.batch_size, t.seq_len)
    assert len(batches) == t.inner_steps
    assert all(int(b.max()) < corpus.vocab_size for b in batches)



def test_a_windows_assignments_stay_in_a_few_shards(tmp_path: Path) -> None:
    """Every miner's samples of a window come from the first shards of that window's keyed order
    (so a miner fetches those, not the corpus), the order moves with the window, and the
    assignment is still a permutation of the samples."""
    from neurons.data import _key, _ShardOrder, assigned_indices

    writer = ShardWriter(tmp_path, vocab_size=100, eos_id=0, shard_tokens=SEQ * 20)
    for _ in range(100):
        writer.add_document([1] * (SEQ * 4 - 1))  # 4 samples per document: 20 shards of ~19 train samples
    writer.finish("cd" * 32)
    space = SampleSpace.build(TokenShards(tmp_path), SEQ, "train")
    assert len(space.cumulative) - 1 == 20

    def shard_of(i: int) -> int:
        return int(torch.searchsorted(torch.tensor(space.cumulative), i, right=True)) - 1

    touched = []
    for window in range(4):
        touched.append({shard_of(i) for uid in range(3) for i in assigned_indices(space, 5, uid, window, 1)})
        assert len(touched[-1]) <= 2  # positions 0..2 lie in the window's first shard or two
    assert len(set().union(*touched)) > 2  # other windows, other shards
    order = _ShardOrder.build(space, _key(b"window key"))
    assert sorted(order.index(p) for p in range(len(space))) == list(range(len(space)))
