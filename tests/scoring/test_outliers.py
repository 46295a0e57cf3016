"""Boosted updates: rejected when far above the window's median norm, measured clipped otherwise."""

from __future__ import annotations

import pytest
import torch

from compression.sparse import SparseTensor
from scoring.outliers import norm_outliers, scaled_to, typical_norm, typical_norms, update_norm


def update(*values: float) -> dict[str, SparseTensor]:
    v = torch.tensor(values, dtype=torch.float32)
    return {"w": SparseTensor((8,), torch.arange(len(values)), v)}


def test_update_norm_spans_every_parameter():
    u = {**update(3.0), "b": SparseTensor((2,), torch.tensor([1]), torch.tensor([4.0]))}
    assert update_norm(u) == pytest.approx(5.0)
    assert update_norm({}) == 0.0


def test_an_update_far_above_the_median_is_an_outlier():
    updates = {uid: update(v) for uid, v in {1: 1.0, 2: 1.1, 3: 0.95, 4: 3.0, 5: 1.9}.items()}
    norms = {uid: update_norm(u) for uid, u in updates.items()}
    found = norm_outliers(norms, typical_norms(updates))
    assert set(found) == {4} and "2.7x" in found[4]  # median 1.1


@pytest.mark.parametrize("values", [{1: 1.0, 2: 50.0}, {}, {1: 0.0, 2: 0.0, 3: 5.0}])
def test_too_few_peers_or_a_zero_median_finds_nothing(values):
    updates = {uid: update(v) for uid, v in values.items()}
    assert norm_outliers({uid: update_norm(u) for uid, u in updates.items()}, typical_norms(updates)) == {}


def test_a_partial_update_is_compared_over_its_own_parameters():
    """Pipeline stages send half the model each: neither they nor the whole-model updates next to
    them look boosted, while a stage that boosts its half still does."""
    def whole(a: float, b: float) -> dict[str, SparseTensor]:
        return {"a": update(a)["w"], "b": update(b)["w"]}

    updates = {1: whole(1.0, 1.0), 2: whole(1.1, 0.9), 3: {"a": update(1.0)["w"]}, 4: {"b": update(1.0)["w"]},
               5: {"a": update(0.9)["w"]}, 6: {"b": update(1.05)["w"]}, 7: {"b": update(2.5)["w"]}}
    norms = {uid: update_norm(u) for uid, u in updates.items()}
    typical = typical_norms(updates)
    assert typical[1] == pytest.approx(2**0.5) and typical[3] == pytest.approx(1.0)
    assert set(norm_outliers(norms, typical)) == {7}
    # the old rule (one median of whole norms, 1.05 here) called the whole-model updates boosted too
    assert norms[1] > 1.3 * typical_norm(norms)


def test_majority_sets_what_is_typical():
    assert typical_norm({1: 1.0, 2: 3.0, 3: 3.0}) == 3.0
    assert typical_norm({1: 1.0, 2: 3.0}) is None


def test_scaled_to_clips_only_from_above():
    u = update(3.0, 4.0)
    assert scaled_to(u, 5.0, None) is u and scaled_to(u, 5.0, 10.0) is u
    clipped = scaled_to(u, 5.0, 1.0)
    assert update_norm(clipped) == pytest.approx(1.0)
    assert torch.equal(clipped["w"].indices, u["w"].indices)
