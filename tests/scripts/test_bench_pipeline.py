"""Smoke test of the pipeline benchmark: a few windows at toy size; checks the JSON and the
relations that must hold whatever the numbers (not timings, not loss targets)."""

import json
import subprocess
import sys
from pathlib import Path

SCRIPT = Path(__file__).resolve().parents[2] / "scripts" / "bench_pipeline.py"


def test_small_run_compares_the_settings(tmp_path):
    cmd = [sys.executable, str(SCRIPT), "--json", "--small", "--windows", "2", "--ks", "4", "--replicas", "2",
           "--groups", "1", "--eval-batches", "1", "--eval-every", "1", "--data-dir", str(tmp_path)]
    result = json.loads(subprocess.run(cmd, capture_output=True, text=True, timeout=300, check=True).stdout)
    runs = {row["setting"]: row for row in result["runs"]}
    assert set(runs) == {"full", "pipe-dense", "all-sub-k4", "het-sub-k4", "het-sub-k4-keep", "all-sub-k4-projagg",
                         "het-proj-k4", "all-proj-k4", "het-adapt-k4", "all-adapt-k4"}
    # a pipeline without compression is the same computation as a full replica
    assert abs(runs["pipe-dense"]["final_heldout_loss"] - runs["full"]["final_heldout_loss"]) < 1e-3
    assert runs["full"]["bytes"]["activations"] == 0
    dense = runs["pipe-dense"]["boundary_bytes_per_micro_batch_both_directions"]["dense"]
    sub = runs["het-sub-k4"]["boundary_bytes_per_micro_batch_both_directions"]["subspace"]
    assert dense / sub > 7  # hidden 64, k 4: (2 x 256 B) / (18 + 16 B) per token, both directions
    # all replicas compressed send twice the activation bytes of one compressed group out of two
    assert runs["all-sub-k4"]["bytes"]["activations"] == 2 * runs["het-sub-k4"]["bytes"]["activations"]
    # a projected boundary sends what an exact one sends (k coordinates + token ids per token)
    assert runs["het-proj-k4"]["boundary_bytes_per_micro_batch_both_directions"]["subspace"] == sub
    assert runs["all-proj-k4"]["bytes"]["activations"] == 2 * runs["het-proj-k4"]["bytes"]["activations"]
    # an adaptive boundary sends the same frames plus each window's basis: 2 windows x 1 boundary x
    # (64 x 4 float32) per compressed group; nothing else sends one
    assert runs["het-adapt-k4"]["boundary_bytes_per_micro_batch_both_directions"]["subspace"] == sub
    assert runs["het-adapt-k4"]["bytes"]["activations"] == runs["het-proj-k4"]["bytes"]["activations"]
    assert runs["het-adapt-k4"]["bytes"]["window_basis"] == 2 * 1 * 64 * 4 * 4
    assert runs["all-adapt-k4"]["bytes"]["window_basis"] == 2 * runs["het-adapt-k4"]["bytes"]["window_basis"]
    assert all(row["bytes"]["window_basis"] == 0 for name, row in runs.items() if "adapt" not in name)
    # the window's basis is not the seeded one: the same network trains to another θ
    for kind in ("het", "all"):
        assert runs[f"{kind}-adapt-k4"]["curve"] != runs[f"{kind}-proj-k4"]["curve"]
    # projecting the aggregate keeps θ in the subspace; top-k alone does not
    assert runs["all-sub-k4-projagg"]["off_subspace_fraction"] < 1e-3 < runs["all-sub-k4"]["off_subspace_fraction"]
    for row in runs.values():
        assert row["bytes"]["pseudo_gradient"] > 0
        assert [p["window"] for p in row["curve"]] == [0, 1]
