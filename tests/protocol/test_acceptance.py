import pytest
import torch

from compression.sparse import SparseTensor
from scoring.filters import RejectReason, Stage1Result, Verdict, check_size, check_slot, check_update

SHAPES = {"w": (4, 8), "b": (8,)}


def st(shape, idx, vals):
    return SparseTensor(shape, torch.tensor(idx, dtype=torch.int64), torch.tensor(vals, dtype=torch.float32))


def test_result_requires_reason_exactly_when_rejected():
    assert Stage1Result.accept(3).verdict is Verdict.PASSED
    r = Stage1Result.reject(3, RejectReason.COPY, "x")
    assert r.verdict is Verdict.REJECTED and r.is_fault
    assert not Stage1Result.reject(3, RejectReason.MISSING).is_fault
    with pytest.raises(ValueError):
        Stage1Result(uid=1, passed=True, reason=RejectReason.LATE)
    with pytest.raises(ValueError):
        Stage1Result(uid=1, passed=False)


@pytest.mark.parametrize(
    ("t", "reason"), [(99.0, RejectReason.EARLY), (100.0, None), (106.0, None), (106.5, RejectReason.LATE)]
)
def test_slot(t, reason):
    got = check_slot(t, slot_start=100.0, slot_seconds=6.0)
    assert (got.reason if got else None) == reason


def test_size():
    assert check_size(10, 10) is None
    assert check_size(11, 10).reason is RejectReason.OVERSIZED


def test_valid_update_passes():
    assert check_update({"w": st((4, 8), [0, 5, 31], [1, -1, 2]), "b": st((8,), [], [])}, SHAPES) is None


@pytest.mark.parametrize(
    ("update", "reason"),
    [
        ({"x": st((8,), [0], [1])}, RejectReason.WRONG_SHAPE),
        ({"w": st((8, 4), [0], [1])}, RejectReason.WRONG_SHAPE),
        ({"w": st((4, 8), [32], [1])}, RejectReason.WRONG_SHAPE),
        ({"w": st((4, 8), [-1], [1])}, RejectReason.WRONG_SHAPE),
        ({"w": st((4, 8), [3, 3], [1, 1])}, RejectReason.WRONG_SHAPE),
        ({"w": st((4, 8), [5, 3], [1, 1])}, RejectReason.WRONG_SHAPE),
        ({"w": st((4, 8), [1, 2], [1])}, RejectReason.WRONG_SHAPE),
        ({"w": st((4, 8), [1, 2], [1, float("nan")])}, RejectReason.NON_FINITE),
        ({"b": st((8,), [1], [float("inf")])}, RejectReason.NON_FINITE),
    ],
)
def test_bad_updates_rejected(update, reason):
    got = check_update(update, SHAPES)
    assert got is not None and got.reason is reason


def test_float_indices_rejected():
    bad = SparseTensor((8,), torch.tensor([1.0]), torch.tensor([1.0]))
    assert check_update({"b": bad}, SHAPES).reason is RejectReason.WRONG_SHAPE
