import itertools
import random

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from compression import SparseTensor, aggregate, outer_step

SHAPE = (4, 5)


def sp(indices, values, shape=SHAPE):
    return SparseTensor(shape=shape, indices=torch.tensor(indices, dtype=torch.int64),
                        values=torch.tensor(values, dtype=torch.float32))


def test_scatter_mean_where_peers_overlap():
    a = {"w": sp([0, 3], [1.0, 2.0])}
    b = {"w": sp([3, 7], [4.0, -1.0])}
    c = {"w": sp([3, 9], [3.0, 0.5])}
    # Norms: a 2.236, b 4.123, c 3.041 -> median 3.041 clips b by 3.041/4.123.
    out = aggregate([a, b, c], {"w": SHAPE})["w"].reshape(-1)
    f = 3.0413812651491097 / 4.123105625617661
    assert out[0].item() == pytest.approx(1.0)
    assert out[3].item() == pytest.approx((2.0 + 4.0 * f + 3.0) / 3)
    assert out[7].item() == pytest.approx(-1.0 * f)
    assert out[9].item() == pytest.approx(0.5)
    assert out.dtype == torch.float32 and int((out != 0).sum()) == 4


def test_with_two_peers_the_larger_update_is_clipped_to_the_smaller():
    honest = {"w": sp([0, 1], [0.3, 0.4])}  # norm 0.5
    hostile = {"w": sp([1, 2], [-3.0e4, 4.0e4])}  # norm 5e4: clipped to 0.5, not to the mean 2.5e4
    out = aggregate([honest, hostile], {"w": SHAPE})["w"].reshape(-1)
    assert out[0].item() == pytest.approx(0.3)
    assert out[1].item() == pytest.approx((0.4 - 0.3) / 2)
    assert out[2].item() == pytest.approx(0.4)


def test_a_norm_cap_holds_whoever_is_in_the_set():
    honest = {"w": sp([0], [0.1])}
    hostile = [{"w": sp([1, 2], [30.0, 40.0])}, {"w": sp([3, 4], [-30.0, 40.0])}]  # norms 50: the median is theirs
    out = aggregate([honest, *hostile], {"w": SHAPE}, max_norms={"w": 1.0})["w"].reshape(-1)
    assert out[0].item() == pytest.approx(0.1)  # under the cap: untouched
    assert float(out[1:5].norm()) == pytest.approx(2**0.5)  # each hostile update cut to norm 1
    uncapped = aggregate([honest, *hostile], {"w": SHAPE})["w"].reshape(-1)
    assert float(uncapped[1:5].norm()) == pytest.approx(50 * 2**0.5)


def test_missing_parameters_and_no_peers():
    out = aggregate([{"w": sp([1], [2.0])}, {}], {"w": SHAPE, "b": (3,)})
    assert out["w"].reshape(-1)[1].item() == 2.0
    assert torch.equal(out["b"], torch.zeros(3))
    assert torch.equal(aggregate([], {"w": SHAPE})["w"], torch.zeros(SHAPE))
    with pytest.raises(ValueError):
        aggregate([{"w": sp([1], [1.0], shape=(5, 4))}], {"w": SHAPE})


def _random_peer(rng: random.Random, numel=2000, kept=120):
    gen = torch.Generator().manual_seed(rng.randrange(1 << 30))
    idx = torch.randperm(numel, generator=gen)[:kept].sort().values
    vals = torch.randn(kept, generator=gen) * rng.uniform(0.01, 100)
    return {"w": SparseTensor(shape=(40, 50), indices=idx, values=vals)}


@settings(max_examples=25, deadline=None)
@given(seed=st.integers(0, 2**31), peers=st.integers(1, 9))
def test_bit_identical_under_any_peer_order(seed, peers):
    rng = random.Random(seed)
    ups = [_random_peer(rng) for _ in range(peers)]
    ref = aggregate(ups, {"w": (40, 50)})["w"]
    for _ in range(4):
        rng.shuffle(ups)
        assert torch.equal(aggregate(ups, {"w": (40, 50)})["w"], ref)


def test_all_permutations_of_a_small_set():
    rng = random.Random(5)
    ups = [_random_peer(rng, numel=2000, kept=1500) for _ in range(4)]
    outs = {aggregate(list(p), {"w": (40, 50)})["w"].numpy().tobytes() for p in itertools.permutations(ups)}
    assert len(outs) == 1


def test_outer_step_on_dict_and_module():
    params = {"w": torch.ones(SHAPE)}
    outer_step(params, {"w": torch.full(SHAPE, 0.25)}, lr=2.0)
    assert torch.equal(params["w"], torch.full(SHAPE, 0.5))
    lin = torch.nn.Linear(3, 2, bias=False)
    before = lin.weight.detach().clone()
    outer_step(lin, {"weight": torch.ones(2, 3)})
    assert torch.allclose(lin.weight, before - 1)
    with pytest.raises(KeyError):
        outer_step(lin, {"nope": torch.ones(1)})
