"""Copy detection: near-duplicate top-k index sets between uploads.

A copier takes another miner's payload (this window's, or one it saw earlier, or the published
aggregate), perhaps adds a little noise, and re-uploads it. Top-k selection makes the *set of kept
coordinates* a strong signature: an honest miner trained on its own data keeps a visibly different
set, while small noise on a copy barely moves it (the copied coordinates stay the largest).

Each upload is reduced to a bottom-k sketch (the ``size`` smallest hashes of its global
coordinate keys, with the sign of each kept value). Two sketches estimate the Jaccard index of the
full sets, from which we get the *containment* of the smaller set in the larger one (so copying
only part of a payload is caught too) and the sign agreement on shared coordinates (so a copy whose
index set was shaken by larger noise is still caught when nearly all its values point the same way).
Sketches are small and fixed-size, so comparing every pair of a window and a bounded memory of
earlier windows stays cheap at any model size.
"""

from __future__ import annotations

import zlib
from collections import deque
from collections.abc import Iterable, Mapping
from dataclasses import dataclass

import numpy as np

from compression.sparse import SparseUpdate

# Memory source for the validator's own aggregate of a window: a "miner" that re-uploads the
# aggregate everyone already applied is a free-rider, and its set sits inside the aggregate's.
AGGREGATE_SOURCE = -1

_U64 = np.uint64


@dataclass(frozen=True)
class IndexSketch:
    """Bottom-k sketch of one upload's kept coordinates (sorted hashes, aligned value signs)."""

    hashes: np.ndarray  # uint64, sorted ascending, unique
    positive: np.ndarray  # bool, sign of the value at each hashed coordinate
    total: int  # number of kept coordinates in the whole upload


@dataclass(frozen=True)
class CopyPolicy:
    """When two sketches are called duplicates.

    ``overlap`` is the containment threshold (``ScoringConfig.copy_overlap_threshold``). The
    second rule accepts somewhat less overlap when the signs agree almost everywhere, for a copy
    whose index set was shaken by noise. It stays well above honest overlap because honest peers
    agree in sign on the coordinates they share too (those are where the common gradient
    direction dominates): signs add evidence only on top of a large overlap.
    """

    overlap: float = 0.9
    sign_overlap: float = 0.7
    sign_agreement: float = 0.98
    min_shared: int = 32  # below this many shared sketch entries the sign rule has no power


@dataclass(frozen=True)
class Similarity:
    containment: float
    sign_agreement: float
    shared: int


@dataclass(frozen=True)
class Upload:
    uid: int
    last_modified: float  # storage LastModified (seconds); the earlier upload is the original
    sketch: IndexSketch


@dataclass(frozen=True)
class CopyFinding:
    uid: int
    original: int  # uid of the original (or AGGREGATE_SOURCE)
    original_window: int
    similarity: Similarity

    @property
    def detail(self) -> str:
        s = self.similarity
        return (
            f"copy of uid {self.original} window {self.original_window} "
            f"(containment {s.containment:.2f}, sign agreement {s.sign_agreement:.2f})"
        )


def _splitmix64(x: np.ndarray) -> np.ndarray:
    # A fixed, well-mixing 64-bit hash so every validator builds the same sketch.
    with np.errstate(over="ignore"):
        x = x + _U64(0x9E3779B97F4A7C15)
        x = (x ^ (x >> _U64(30))) * _U64(0xBF58476D1CE4E5B9)
        x = (x ^ (x >> _U64(27))) * _U64(0x94D049BB133111EB)
        return x ^ (x >> _U64(31))


def sketch_update(update: SparseUpdate, size: int = 2048) -> IndexSketch:
    """Reduce an update to the ``size`` smallest hashes of its (parameter, index) keys."""
    keys, signs = [], []
    for name in sorted(update):
        st = update[name]
        idx = st.indices.detach().cpu().numpy().astype(np.uint64)
        tag = _U64(zlib.crc32(name.encode())) << _U64(32)
        keys.append(_splitmix64(idx ^ tag))
        signs.append(st.values.detach().cpu().numpy() > 0)
    if not keys:
        return IndexSketch(np.zeros(0, np.uint64), np.zeros(0, bool), 0)
    hashes, positive = np.concatenate(keys), np.concatenate(signs)
    total = hashes.size
    if total > size:
        # Only the ``size`` smallest distinct hashes are kept: select candidates in linear time
        # (every hash up to the size-th smallest, duplicates included, in their original order)
        # instead of sorting them all; with duplicates among them, fewer than ``size`` distinct
        # remain and the full sort below decides, so the sketch is the same either way.
        cut = np.partition(hashes, size - 1)[size - 1]
        at = np.flatnonzero(hashes <= cut)
        if np.unique(hashes[at]).size == size:
            hashes, positive = hashes[at], positive[at]
    hashes, first = np.unique(hashes, return_index=True)  # sorted; collisions are negligible
    positive = positive[first]
    return IndexSketch(hashes[:size].copy(), positive[:size].copy(), total)


def similarity(a: IndexSketch, b: IndexSketch) -> Similarity:
    """Estimate containment of the smaller set in the larger, and sign agreement where shared."""
    if a.hashes.size == 0 or b.hashes.size == 0:
        return Similarity(0.0, 0.0, 0)
    k = min(a.hashes.size, b.hashes.size)
    union_k = np.union1d(a.hashes, b.hashes)[:k]
    in_a = np.isin(union_k, a.hashes, assume_unique=True)
    in_b = np.isin(union_k, b.hashes, assume_unique=True)
    both = union_k[in_a & in_b]
    jaccard = both.size / union_k.size
    # |A ∩ B| = J (|A| + |B|) / (1 + J); divide by the smaller set for containment
    inter = jaccard * (a.total + b.total) / (1.0 + jaccard)
    containment = min(1.0, inter / min(a.total, b.total))
    if both.size == 0:
        return Similarity(containment, 0.0, 0)
    sa = a.positive[np.searchsorted(a.hashes, both)]
    sb = b.positive[np.searchsorted(b.hashes, both)]
    return Similarity(containment, float((sa == sb).mean()), int(both.size))


# Shared-hash pairs expanded at a time by ``shared_counts`` (memory stays bounded when many
# uploads share most hashes, e.g. a flood of copies).
_PAIRS_PER_BLOCK = 1 << 22


def shared_counts(rows: list[IndexSketch], cols: list[IndexSketch]) -> np.ndarray:
    """|hashes(a) ∩ hashes(b)| for every a in ``rows`` and b in ``cols`` (int64, rows x cols).

    One sort and a search over all sketches at once instead of a comparison per pair: every hash
    of a row sketch is looked up among the column sketches' sorted hashes, and each (row, column)
    pair that shares it is counted."""
    out = np.zeros((len(rows), len(cols)), np.int64)
    if not rows or not cols:
        return out
    col_hashes = np.concatenate([s.hashes for s in cols])
    col_owner = np.repeat(np.arange(len(cols)), [s.hashes.size for s in cols])
    order = np.argsort(col_hashes, kind="stable")
    col_hashes, col_owner = col_hashes[order], col_owner[order]
    block: list[int] = []
    pairs = 0
    for i, sk in enumerate(rows):
        lo = np.searchsorted(col_hashes, sk.hashes, "left")
        n = np.searchsorted(col_hashes, sk.hashes, "right") - lo
        block.append(i)
        pairs += int(n.sum())
        if pairs >= _PAIRS_PER_BLOCK or i == len(rows) - 1:
            _count_block(out, rows, block, col_hashes, col_owner)
            block, pairs = [], 0
    return out


def _count_block(
    out: np.ndarray, rows: list[IndexSketch], block: list[int], col_hashes: np.ndarray, col_owner: np.ndarray
) -> None:
    hashes = np.concatenate([rows[i].hashes for i in block])
    owner = np.repeat(np.asarray(block), [rows[i].hashes.size for i in block])
    lo = np.searchsorted(col_hashes, hashes, "left")
    n = np.searchsorted(col_hashes, hashes, "right") - lo
    total = int(n.sum())
    if total == 0:
        return
    # entry e matches column entries lo_e .. lo_e + n_e - 1: expand them all with one arange
    offset = np.cumsum(n) - n
    at = np.repeat(lo - offset, n) + np.arange(total)
    pair = np.repeat(owner, n) * out.shape[1] + col_owner[at]
    out += np.bincount(pair, minlength=out.size).reshape(out.shape)


def containment_bound(shared: int, a: IndexSketch, b: IndexSketch) -> float:
    """The most ``similarity(a, b).containment`` can be when the sketches share ``shared`` hashes:
    its Jaccard estimate counts shared hashes among the k smallest of the union, so it is at most
    shared / k, and containment grows with the Jaccard estimate."""
    k = min(a.hashes.size, b.hashes.size)
    if k == 0:
        return 0.0
    jaccard = min(1.0, shared / k)
    return min(1.0, jaccard * (a.total + b.total) / (1.0 + jaccard) / min(a.total, b.total))


def _may_duplicate(
    shared: np.ndarray, rows: list[IndexSketch], cols: list[IndexSketch], policy: CopyPolicy
) -> np.ndarray:
    """Bool (rows x cols): pairs whose ``containment_bound`` reaches a threshold of
    ``is_duplicate`` (below both no rule can fire, so the exact comparison is skipped)."""
    def arrays(sketches: list[IndexSketch]) -> tuple[np.ndarray, np.ndarray]:
        return (np.array([s.hashes.size for s in sketches], np.float64).reshape(-1, 1),
                np.array([s.total for s in sketches], np.float64).reshape(-1, 1))

    (size_a, total_a), (size_b, total_b) = arrays(rows), (x.T for x in arrays(cols))
    k = np.minimum(size_a, size_b)
    with np.errstate(divide="ignore", invalid="ignore"):
        jaccard = np.minimum(1.0, shared / k)
        bound = np.minimum(1.0, jaccard * (total_a + total_b) / (1.0 + jaccard) / np.minimum(total_a, total_b))
    bound = np.where(k > 0, bound, 0.0)
    return bound >= min(policy.overlap, policy.sign_overlap)


def is_duplicate(s: Similarity, policy: CopyPolicy) -> bool:
    if s.containment >= policy.overlap:
        return True
    return (
        s.containment >= policy.sign_overlap
        and s.shared >= policy.min_shared
        and s.sign_agreement >= policy.sign_agreement
    )


class CopyMemory:
    """Sketches of accepted uploads (and aggregates) from the last ``max_windows`` windows.

    Kept in memory only: after a restart it refills within ``max_windows`` windows.
    """

    def __init__(self, max_windows: int = 3) -> None:
        self.max_windows = max_windows
        self._windows: deque[tuple[int, dict[int, IndexSketch]]] = deque()

    def remember(self, window: int, sketches: Mapping[int, IndexSketch]) -> None:
        if self._windows and self._windows[-1][0] == window:
            self._windows[-1][1].update(sketches)
        else:
            self._windows.append((window, dict(sketches)))
        while len(self._windows) > self.max_windows:
            self._windows.popleft()

    def before(self, window: int) -> Iterable[tuple[int, int, IndexSketch]]:
        """(window, source, sketch) for every remembered upload older than ``window``."""
        for w, sketches in self._windows:
            if w < window:
                for source, sk in sorted(sketches.items()):
                    yield w, source, sk


def find_copies(
    window: int, uploads: Iterable[Upload], memory: CopyMemory, policy: CopyPolicy
) -> dict[int, CopyFinding]:
    """Flag every upload that duplicates a remembered one or an earlier upload of this window.

    Within the window, duplicates are grouped transitively; the member with the earliest storage
    LastModified (ties: lower uid) is the original, unless it too duplicates a remembered upload.
    Only pairs whose shared hashes allow a duplicate (``containment_bound``) are compared exactly,
    so the verdicts are those of comparing every pair, at a fraction of the cost.
    """
    ups = sorted(uploads, key=lambda u: (u.last_modified, u.uid))
    old = list(memory.before(window))
    rows, cols = [u.sketch for u in ups], [sk for _, _, sk in old] + [u.sketch for u in ups]
    may = _may_duplicate(shared_counts(rows, cols), rows, cols, policy)
    findings: dict[int, CopyFinding] = {}
    for i, up in enumerate(ups):
        best = _best_remembered(up.sketch, old, may[i, : len(old)], policy)
        if best is not None:
            findings[up.uid] = CopyFinding(up.uid, best[1], best[0], best[2])
    for group in _duplicate_groups(ups, may[:, len(old) :], policy):
        original = next((u for u in group if u.uid not in findings), None)
        if original is None:
            continue
        for u in group:
            if u is not original and u.uid not in findings:
                sim = similarity(u.sketch, original.sketch)
                findings[u.uid] = CopyFinding(u.uid, original.uid, window, sim)
    return findings


def _best_remembered(
    sketch: IndexSketch, old: list[tuple[int, int, IndexSketch]], may: np.ndarray, policy: CopyPolicy
) -> tuple[int, int, Similarity] | None:
    best: tuple[int, int, Similarity] | None = None
    for j in np.flatnonzero(may):  # in memory order, as comparing every remembered upload would
        w, source, sk = old[j]
        sim = similarity(sketch, sk)
        if is_duplicate(sim, policy) and (best is None or sim.containment > best[2].containment):
            best = (w, source, sim)
    return best


def _duplicate_groups(ups: list[Upload], may: np.ndarray, policy: CopyPolicy) -> list[list[Upload]]:
    """Connected components of the "is a duplicate of" graph, each in upload order (``may``:
    the pairs that can be duplicates at all)."""
    parent = list(range(len(ups)))

    def root(i: int) -> int:
        while parent[i] != i:
            parent[i] = parent[parent[i]]
            i = parent[i]
        return i

    for i, j in zip(*np.nonzero(np.triu(may, k=1)), strict=True):  # pairs i < j in row order
        if is_duplicate(similarity(ups[i].sketch, ups[j].sketch), policy):
            parent[root(j)] = root(i)
    groups: dict[int, list[Upload]] = {}
    for i, up in enumerate(ups):
        groups.setdefault(root(i), []).append(up)
    return [g for g in groups.values() if len(g) > 1]
