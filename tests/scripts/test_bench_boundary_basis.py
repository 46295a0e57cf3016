"""Smoke test of scripts/bench_boundary_basis.py on a miniature 2-layer model."""

from __future__ import annotations

import json

from scripts.bench_boundary_basis import main
from tests.scripts.miniature import miniature_hparams


def test_bench_boundary_basis_reports_both_bases_per_boundary_and_k(tmp_path, capsys):
    path = miniature_hparams(tmp_path / "mini.json")
    data = json.loads(path.read_text())
    data["model"]["num_layers"] = 2
    path.write_text(json.dumps(data))
    assert main(["--hparams", str(path), "--warm", "0,1", "--k", "2,4", "--data-dir", str(tmp_path / "data"),
                 "--json"]) == 0
    rows = json.loads(capsys.readouterr().out)["rows"]
    assert [(r["warm_windows"], r["k"]) for r in rows] == [(0, 2), (0, 4), (1, 2), (1, 4)]
    for r in rows:
        assert r["boundary_after_layer"] == 1
        assert 0.0 <= r["seeded"] <= 1.0 and 0.0 <= r["window"] <= 1.0
    # a basis fitted to the window keeps more than a random one of the same size
    assert all(r["window"] > r["seeded"] for r in rows)
