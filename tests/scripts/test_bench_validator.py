"""Smoke test of the validator throughput benchmark: two miners of a miniature preset, JSON shape only."""

import json
import sys
from pathlib import Path

import pytest

from tests.scripts.miniature import miniature_hparams

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "scripts"))

import bench_validator  # noqa: E402


def test_two_miners_time_every_stage(tmp_path: Path, capsys: pytest.CaptureFixture[str]):
    """With a stage-2 budget of one, the validator's sampling measures one of the two candidates."""
    bench_validator.main(["--miners", "2", "--json", "--store", "local", "--trained", "2", "--eval-budget", "1",
                          "--hparams", str(miniature_hparams(tmp_path / "h.json")),
                          "--data-dir", str(tmp_path / "data"), "--corpus-chars", "150000"])
    result = json.loads(capsys.readouterr().out)
    [point] = result["points"]
    assert point["miners"] == 2
    assert set(point["stage_seconds"]) == set(bench_validator.STAGES)
    assert all(s > 0 for s in point["stage_seconds"].values())
    assert point["seconds_per_window"] == pytest.approx(sum(point["stage_seconds"].values()))
    # the perturbed copies of trained updates pass stage 1 (none is taken for a copy)
    assert point["candidates"] == 2 and point["rejected"] == {}
    assert point["eval_budget"] == 1 and point["sampling_period"] == 2 and point["evaluated"] == 1
    assert point["fetch_many_accepted"] == 2 and point["stage2_tflops"] > 0
    # the 150M projection is computed from FLOPs, labelled as such, for each assumed device rate
    projected = result["computed_not_measured"]
    assert {(p["assumed_tflops"], p["eval_budget"]) for p in projected} == {(40.0, None), (40.0, 64), (400.0, None), (400.0, 64)}
    assert all(p["preset"] == "150M" and p["margin"] > 0 for p in projected)
