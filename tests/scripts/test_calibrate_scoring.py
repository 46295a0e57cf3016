"""Smoke test of the payment-rule calibration: a miniature network for two windows, JSON shape only."""

import json
import subprocess
import sys
from pathlib import Path

from protocol.hparams import load_hparams

SCRIPT = Path(__file__).resolve().parents[2] / "scripts" / "calibrate_scoring.py"


def miniature_hparams(path: Path) -> Path:
    """The tiny preset shrunk to seconds: a 1-layer model, 2 inner steps of 4 short sequences."""
    data = load_hparams("tiny").model_dump(mode="json")
    data["model"].update(vocab_size=400, hidden_size=32, intermediate_size=64, num_layers=1, num_heads=2,
                         num_kv_heads=2, max_seq_len=32)
    data["training"].update(inner_steps=2, batch_size=4, seq_len=32, warmup_steps=2)
    data["scoring"].update(eval_batches=1)
    path.write_text(json.dumps(data))
    return path


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
