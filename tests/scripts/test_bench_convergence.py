"""Smoke test of the convergence harness: every method runs through the real codec and the compressed
payload is at most 1/200 of DiLoCo's dense one. Losses are measured, not asserted."""

import json
import subprocess
import sys
from pathlib import Path

SCRIPT = Path(__file__).resolve().parents[2] / "scripts" / "bench_convergence.py"


def test_smoke_runs_every_method_and_sparseloco_sends_at_most_1_200_of_diloco(tmp_path: Path):
    args = [sys.executable, str(SCRIPT), "--json", "--smoke", "--data-dir", str(tmp_path / "data"),
            "--variants", "base,dense_start", "--table", "--plot-dir", str(tmp_path / "img")]
    proc = subprocess.run(args, capture_output=True, text=True, timeout=300, check=True)
    result = json.loads(proc.stdout)
    runs = {(r["method"], r["variant"]): r for r in result["runs"]}
    assert set(runs) == {("ddp", None), ("diloco", None), ("sparseloco", "base"), ("sparseloco", "dense_start")}
    for run in runs.values():
        assert {"method", "H", "seed", "final_loss", "bytes_per_round", "curve"} <= set(run)
        steps = [step for step, _ in run["curve"]]
        assert steps == [0, 2, 4] and run["final_loss"] == run["curve"][-1][1] > 0
    diloco, sparse = runs["diloco", None], runs["sparseloco", "base"]
    assert diloco["bytes_per_round"] == 4 * result["params"]  # one dense fp32 pseudo-gradient
    assert 0 < sparse["bytes_per_round"] * 200 <= diloco["bytes_per_round"]
    # the denser first rounds really send more: the payloads are measured, not computed
    assert runs["sparseloco", "dense_start"]["bytes_per_round"] > 2 * sparse["bytes_per_round"]
    assert runs["ddp", None]["bytes_per_round"] == 2 * diloco["bytes_per_round"]  # H = 2 gradients
    assert (tmp_path / "img" / "convergence_H2.png").stat().st_size > 0
    assert (tmp_path / "img" / "convergence_variants_H2.png").stat().st_size > 0
    ratio = diloco["bytes_per_round"] / sparse["bytes_per_round"]
    assert f"| 2 | 0 | sparseloco | {sparse['final_loss']:.4f} |" in proc.stderr and f"{ratio:.1f}x" in proc.stderr
