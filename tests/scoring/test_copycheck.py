import numpy as np
import torch

import scoring.copycheck as copycheck
from compression.sparse import SparseTensor, SparseUpdate
from scoring.copycheck import (
    AGGREGATE_SOURCE,
    CopyMemory,
    CopyPolicy,
    Upload,
    containment_bound,
    find_copies,
    is_duplicate,
    shared_counts,
    similarity,
    sketch_update,
)

SHAPES = {"a": (64, 64), "b": (128, 64)}
POLICY = CopyPolicy(overlap=0.9)


def topk_update(dense: dict[str, torch.Tensor], density: float = 1 / 16) -> SparseUpdate:
    out = {}
    for name, t in dense.items():
        flat = t.reshape(-1)
        k = int(flat.numel() * density)
        idx = flat.abs().topk(k).indices.sort().values
        out[name] = SparseTensor(tuple(t.shape), idx, flat[idx].clone())
    return out


def field(seed: int, shared: torch.Tensor | None = None, own_scale: float = 1.0) -> dict[str, torch.Tensor]:
    gen = torch.Generator().manual_seed(seed)
    out = {}
    for name, shape in SHAPES.items():
        own = own_scale * torch.randn(shape, generator=gen)
        out[name] = own if shared is None else own + shared[name]
    return out


def honest_pair() -> tuple[SparseUpdate, SparseUpdate]:
    # both peers see a common gradient direction plus their own data's part, as honest miners do
    common = field(0)
    return topk_update(field(1, common)), topk_update(field(2, common))


def noisy_copy(dense: dict[str, torch.Tensor], update: SparseUpdate, noise: float, seed: int) -> SparseUpdate:
    """What a copier does: decode, add dense noise, re-run top-k."""
    gen = torch.Generator().manual_seed(seed)
    noisy = {}
    for name, st in update.items():
        d = st.to_dense()
        noisy[name] = d + noise * d.abs().max() * torch.randn(d.shape, generator=gen)
    return topk_update(noisy)


def test_honest_peers_are_not_duplicates():
    a, b = honest_pair()
    sim = similarity(sketch_update(a), sketch_update(b))
    assert 0.05 < sim.containment < 0.8  # they do share coordinates...
    assert not is_duplicate(sim, POLICY)  # ...but not like a copy


def test_exact_copy_is_duplicate():
    a, _ = honest_pair()
    sim = similarity(sketch_update(a), sketch_update(a))
    assert sim.containment == 1.0 and sim.sign_agreement == 1.0


def test_small_noise_copy_caught_by_overlap():
    common = field(0)
    dense = field(1, common)
    a = topk_update(dense)
    sim = similarity(sketch_update(a), sketch_update(noisy_copy(dense, a, 0.01, 5)))
    assert sim.containment >= 0.9 and is_duplicate(sim, POLICY)


def test_larger_noise_copy_caught_by_signs():
    a = topk_update(field(1, field(0)))
    copy = noisy_copy({}, a, 0.15, 6)
    sim = similarity(sketch_update(a), sketch_update(copy))
    assert 0.7 < sim.containment < 0.9  # the index set moved noticeably
    assert sim.sign_agreement >= 0.98 and is_duplicate(sim, POLICY)


def test_partial_copy_caught_by_containment():
    a, _ = honest_pair()
    half = {"a": a["a"]}  # only one parameter copied
    assert is_duplicate(similarity(sketch_update(half), sketch_update(a)), POLICY)


def test_original_is_earliest_then_lowest_uid():
    a, b = honest_pair()
    sa, sb = sketch_update(a), sketch_update(b)
    ups = [Upload(7, 10.0, sa), Upload(3, 12.0, sa), Upload(5, 11.0, sa), Upload(9, 10.0, sb)]
    found = find_copies(4, ups, CopyMemory(), POLICY)
    assert set(found) == {3, 5}
    assert all(f.original == 7 and f.original_window == 4 for f in found.values())
    tie = find_copies(4, [Upload(8, 1.0, sa), Upload(2, 1.0, sa)], CopyMemory(), POLICY)
    assert set(tie) == {8} and tie[8].original == 2


def test_replay_of_remembered_upload_and_aggregate():
    a, b = honest_pair()
    memory = CopyMemory(max_windows=2)
    memory.remember(3, {1: sketch_update(a), AGGREGATE_SOURCE: sketch_update(b)})
    ups = [Upload(2, 0.0, sketch_update(a)), Upload(4, 0.0, sketch_update({"b": b["b"]}))]
    found = find_copies(5, ups, memory, POLICY)
    assert found[2].original == 1 and found[2].original_window == 3
    assert found[4].original == AGGREGATE_SOURCE
    assert "copy of uid 1 window 3" in found[2].detail
    # same-window entries of memory are not "earlier"
    assert find_copies(3, ups[:1], memory, POLICY) == {}


def test_memory_is_bounded():
    a, _ = honest_pair()
    memory = CopyMemory(max_windows=2)
    for w in range(5):
        memory.remember(w, {w: sketch_update(a)})
    assert sorted({w for w, _, _ in memory.before(10)}) == [3, 4]


def test_copy_of_a_replay_is_not_made_original():
    a, _ = honest_pair()
    memory = CopyMemory()
    memory.remember(1, {1: sketch_update(a)})
    sk = sketch_update(a)
    found = find_copies(2, [Upload(5, 1.0, sk), Upload(6, 2.0, sk)], memory, POLICY)
    assert {f.original for f in found.values()} == {1}


def test_sketch_is_deterministic_and_bounded():
    a, _ = honest_pair()
    s1, s2 = sketch_update(a, size=256), sketch_update(a, size=256)
    assert s1.hashes.size == 256 and (s1.hashes == s2.hashes).all()
    assert s1.total == sum(st.indices.numel() for st in a.values())
    assert sketch_update({}).total == 0
    assert similarity(sketch_update({}), s1).containment == 0.0


def mixed_window() -> tuple[list[Upload], CopyMemory, list[SparseUpdate]]:
    """Honest uploads, exact, noisy and partial copies of each other and of remembered ones."""
    common = field(0)
    dense = [field(10 + i, common, own_scale=1.0 + 0.5 * i) for i in range(6)]
    ups = [topk_update(d) for d in dense]
    ups += [ups[0], noisy_copy(dense[1], ups[1], 0.05, 1), noisy_copy(dense[2], ups[2], 0.3, 2)]
    ups.append({"a": ups[3]["a"]})  # part of uid 3's payload
    old = [topk_update(field(50 + i, common)) for i in range(3)]
    memory = CopyMemory(3)
    memory.remember(4, {100 + i: sketch_update(u) for i, u in enumerate(old)})
    ups.append(noisy_copy(field(50, common), old[0], 0.05, 3))  # a replay of a remembered upload
    uploads = [Upload(uid, float(uid % 4), sketch_update(u, size=256)) for uid, u in enumerate(ups)]
    return uploads, memory, ups


def test_shared_counts_match_pairwise_intersections():
    uploads, memory, _ = mixed_window()
    rows = [u.sketch for u in uploads]
    cols = [sk for _, _, sk in memory.before(5)] + rows
    counts = shared_counts(rows, cols)
    for i, a in enumerate(rows):
        for j, b in enumerate(cols):
            assert counts[i, j] == np.intersect1d(a.hashes, b.hashes).size
    assert shared_counts([], cols).shape == (0, len(cols))


def test_containment_bound_never_below_the_estimate():
    uploads, memory, _ = mixed_window()
    sketches = [u.sketch for u in uploads] + [sk for _, _, sk in memory.before(5)]
    shared = shared_counts(sketches, sketches)
    may = copycheck._may_duplicate(shared, sketches, sketches, POLICY)
    for i, a in enumerate(sketches):
        for j, b in enumerate(sketches):
            sim = similarity(a, b)
            assert containment_bound(int(shared[i, j]), a, b) >= sim.containment - 1e-12
            assert may[i, j] == (containment_bound(int(shared[i, j]), a, b) >= 0.7)  # the matrix form agrees
            if is_duplicate(sim, POLICY):
                assert may[i, j]


def test_prefiltered_verdicts_equal_comparing_every_pair(monkeypatch):
    uploads, memory, _ = mixed_window()
    fast = find_copies(5, uploads, memory, POLICY)
    assert {6, 7, 10} <= set(fast)  # the exact copy, the noisy copy and the replay are caught
    assert 3 in fast and fast[3].original == 9  # the partial copy (9 uploaded first) groups with 3
    every_pair = lambda shared, rows, cols, policy: np.ones((len(rows), len(cols)), bool)  # noqa: E731
    monkeypatch.setattr(copycheck, "_may_duplicate", every_pair)  # compare every pair exactly
    assert find_copies(5, uploads, memory, POLICY) == fast


def test_shared_counts_bounded_blocks_give_the_same_counts(monkeypatch):
    uploads, memory, _ = mixed_window()
    rows = [u.sketch for u in uploads]
    whole = shared_counts(rows, rows)
    monkeypatch.setattr(copycheck, "_PAIRS_PER_BLOCK", 100)  # many small blocks
    assert (shared_counts(rows, rows) == whole).all()


def full_sort_sketch(update: SparseUpdate, size: int = 2048):
    """The sketch by sorting every hash (what ``sketch_update`` computed before its selection)."""
    keys, signs = [], []
    for name in sorted(update):
        st = update[name]
        tag = np.uint64(copycheck.zlib.crc32(name.encode())) << np.uint64(32)
        keys.append(copycheck._splitmix64(st.indices.numpy().astype(np.uint64) ^ tag))
        signs.append(st.values.numpy() > 0)
    hashes, first = np.unique(np.concatenate(keys), return_index=True)
    return hashes[:size], np.concatenate(signs)[first][:size]


def test_sketch_selection_equals_sorting_every_hash(monkeypatch):
    _, _, ups = mixed_window()
    for update in ups:
        for size in (16, 256, 2048, 10**6):
            got = sketch_update(update, size=size)
            hashes, positive = full_sort_sketch(update, size)
            assert np.array_equal(got.hashes, hashes) and np.array_equal(got.positive, positive)
    # a hash with many collisions: the selection sees duplicates and the full sort decides
    monkeypatch.setattr(copycheck, "_splitmix64", lambda x: x % np.uint64(97))
    for size in (16, 96, 200):
        got = sketch_update(ups[0], size=size)
        hashes, positive = full_sort_sketch(ups[0], size)
        assert np.array_equal(got.hashes, hashes) and np.array_equal(got.positive, positive)
