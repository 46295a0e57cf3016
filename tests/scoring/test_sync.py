import pytest
import torch

from scoring.sync import Fingerprint, fingerprint, sample_values, step_scale, sync_score


def params(seed: int) -> dict[str, torch.Tensor]:
    gen = torch.Generator().manual_seed(seed)
    return {"b": torch.randn(10, generator=gen), "a": torch.randn(4, 5, generator=gen)}


def test_sample_values_follow_name_order_and_seed():
    p = params(0)
    s = sample_values(p.items(), count=8, seed=1)
    assert s == sample_values(reversed(list(p.items())), count=8, seed=1)
    flat = torch.cat([p["a"].reshape(-1), p["b"]])
    pos = torch.randint(0, 30, (8,), generator=torch.Generator().manual_seed(1)).sort().values
    assert s == tuple(float(x) for x in flat[pos])
    assert sample_values([], 8) == ()


def test_sync_score_by_distance_in_steps():
    p = params(0)
    own = fingerprint("d0", p.items(), count=64)
    assert sync_score(fingerprint("d0", p.items(), count=64), own) == 1.0
    step = {k: v - 0.01 for k, v in p.items()}
    after = fingerprint("d1", step.items(), count=64)
    scale = step_scale(own, after)
    assert scale == pytest.approx(0.01)
    one_behind = sync_score(own, after, scale)
    assert one_behind == pytest.approx(2 / 3)
    far = fingerprint("d9", {k: v - 0.05 for k, v in p.items()}.items(), count=64)
    assert sync_score(far, after, scale) == 0.0
    assert sync_score(None, own, scale) == 0.0
    assert sync_score(Fingerprint("x", (float("nan"),) * 64), own, scale) == 0.0
    assert sync_score(Fingerprint("x", (1.0,)), own, scale) == 0.0


def test_plain_digests():
    assert sync_score("abc", "abc") == 1.0
    assert sync_score("abc", "abd") == 0.0
    assert sync_score(None, "abc") == 0.0
    assert sync_score(Fingerprint("abc", ()), "abc") == 1.0


def test_json_round_trip():
    fp = fingerprint("d", params(1).items(), count=5)
    assert Fingerprint.from_json(fp.to_json()) == fp
    with pytest.raises(ValueError):
        Fingerprint.from_json({"digest": "d", "sample": 3})
