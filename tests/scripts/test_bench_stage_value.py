"""Smoke test of the stage-value benchmark: a miniature 2-layer model, one seed, no warm-up; checks
the JSON's shape and the relations that hold whatever the numbers (not their values)."""

import json
import math
import sys
from pathlib import Path

import pytest

from tests.scripts.miniature import miniature_hparams

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "scripts"))

import bench_stage_value  # noqa: E402


def two_layer_hparams(path: Path) -> Path:
    """The miniature preset with 2 layers, one per stage (it has no pipeline section: k comes from --k)."""
    data = json.loads(miniature_hparams(path).read_text())
    data["model"]["num_layers"] = 2
    path.write_text(json.dumps(data))
    return path


def test_every_mode_and_stage_has_finite_gains(tmp_path: Path, capsys: pytest.CaptureFixture[str]):
    bench_stage_value.main(["--json", "--seeds", "1", "--warm", "1,0", "--k", "4",
                            "--hparams", str(two_layer_hparams(tmp_path / "h.json")),
                            "--data-dir", str(tmp_path / "data"), "--corpus-chars", "150000"])
    result = json.loads(capsys.readouterr().out)
    assert result["k"] == 4 and result["seeds"] == 1 and result["warm"] == [0, 1]
    rows = {(r["mode"], r["stage"]): r for r in result["rows"] if r["warm"] == 0}
    modes = ("dense", "exact-keep", "exact-full-delta", "projected", "adaptive")
    assert set(rows) == {(m, s) for m in modes for s in (0, 1)}
    assert len(result["rows"]) == 2 * len(rows)  # the same at warm-up 1
    assert [rows[("dense", s)]["layers"] for s in (0, 1)] == ["embed+layers[0:1]", "layers[1:2]+head"]
    for r in rows.values():
        for key in ("own_gain", "random_gain", "edge", "unique_t"):
            assert math.isfinite(r[key]["mean"]) and r[key]["sd"] is None  # one seed: no sd
        assert r["edge"]["mean"] == pytest.approx(r["own_gain"]["mean"] - r["random_gain"]["mean"])
        assert r["per_seed_edge"] == [r["edge"]["mean"]]
    # an update trained on the group's data lowers the loss there (dense: a full replica's update)
    assert rows[("dense", 0)]["own_gain"]["mean"] > 0
    # θ0 is not projected: its residual writers lie mostly outside a 4-dim subspace of 32
    assert 0.5 < result["off_subspace"]["0"]["mean"] <= 1.0
    # one warm-up window (2 inner steps + outer step) moves θ before the second measurement
    assert result["off_subspace"]["1"]["mean"] != result["off_subspace"]["0"]["mean"]
    assert all(math.isfinite(v["mean"]) for v in result["theta_w_random_loss"].values())
    # adaptive is projected onto another basis: the same window, another update (the probe was used)
    for s in (0, 1):
        assert rows[("adaptive", s)]["own_gain"]["mean"] != rows[("projected", s)]["own_gain"]["mean"]
    # the window's principal basis, fitted on the first batch, keeps more of the boundary on the
    # others than a random 4-dim basis of 32 (which keeps about 4/32)
    for kept in result["boundary_kept"].values():
        assert 0 < kept["seeded"]["mean"] < kept["window"]["mean"] <= 1
    # the table renders from the saved JSON
    saved = tmp_path / "sv.json"
    saved.write_text(json.dumps(result))
    bench_stage_value.main(["--table-from", str(saved)])
    table = capsys.readouterr().out.splitlines()
    assert len(table) == 2 + len(result["rows"]) + 1 + 2 + 2 and "exact-keep" in table[2 + 2]
    assert "adaptive" in table[2 + 8] and table[-2].startswith("| 0 |")
