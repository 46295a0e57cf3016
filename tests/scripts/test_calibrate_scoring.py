"""Smoke test of the payment-rule calibration: a miniature network for two windows, JSON shape only."""

import json
import subprocess
import sys
from pathlib import Path

from tests.scripts.miniature import miniature_hparams

SCRIPT = Path(__file__).resolve().parents[2] / "scripts" / "calibrate_scoring.py"


def test_tiny_run_prints_the_calibration_json(tmp_path: Path):
    args = [sys.executable, str(SCRIPT), "--json", "--seeds", "1", "--windows", "2", "--honest", "2",
            "--free-riders", "late_mean_copy,prev_aggregate", "--hparams", str(miniature_hparams(tmp_path / "h.json")),
            "--data-dir", str(tmp_path / "data"), "--corpus-chars", "150000"]
    result = json.loads(subprocess.run(args, capture_output=True, text=True, timeout=300, check=True).stdout)
    assert 0.0 <= result["honest_unpaid_pct"] <= 100.0 and result["honest_miner_windows"] == 4
    assert set(result["free_rider_paid_pct"]) == {"late_mean_copy", "prev_aggregate"}
    assert result["free_rider_miner_windows"] == {"late_mean_copy": 2, "prev_aggregate": 1}  # nothing to re-send in window 0
    assert set(result["windows_to_first_pay"]) == {"mean", "max", "never_paid"}
    assert set(result["t_by_kind"]) == {"honest", "honest_window0", "late_mean_copy", "prev_aggregate"}
    assert len(result["sweep"]) == 20 and {"threshold", "decay", "honest_unpaid_pct"} <= set(result["sweep"][0])
    rows = result["per_window"]
    assert [(r["seed"], r["window"]) for r in rows] == [(0, 0), (0, 1)]
    first = rows[0]["miners"]["1"]
    assert first["kind"] == "honest" and -4.0 <= first["t"] <= 4.0 and first["z"] == first["t"]
    assert isinstance(first["paid"], bool)
