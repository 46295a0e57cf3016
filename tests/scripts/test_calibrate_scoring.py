"""Smoke tests of the payment-rule calibration: a miniature network for two windows (JSON shape), and
a pipeline group's uploads (two stages that partition θ, both in the aggregate, both measured)."""

import json
import subprocess
import sys
from pathlib import Path

import pytest

from compression.sparse import SparseTensor
from neurons.corpus import ensure_embedded_data
from neurons.shards import TokenShards
from neurons.stage_groups import stage_contexts
from protocol.hparams import load_hparams
from scripts.calibrate_scoring import Network, parse_kinds
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


def pipeline_hparams(path: Path) -> Path:
    """The miniature preset with two untied layers and a k=4 pipeline section (adaptive boundaries)."""
    data = json.loads(miniature_hparams(path).read_text())
    data["model"].update(num_layers=2, tie_embeddings=False)
    data["pipeline"] = {"subspace_dim": 4}
    path.write_text(json.dumps(data))
    return path


def test_a_group_uploads_its_two_stages_and_both_are_measured_on_stage_0s_data(tmp_path: Path):
    hp = load_hparams(str(pipeline_hparams(tmp_path / "h.json")))
    shards = TokenShards(ensure_embedded_data(tmp_path / "data", hp.model.vocab_size, 150000))
    kinds = parse_kinds(2, "late_mean_copy", groups=1)
    assert kinds == {1: "honest", 2: "honest", 3: "late_mean_copy", 4: "stage0", 5: "stage1"}
    net = Network(hp, shards, 0, kinds)
    assert net.groups[4].adaptive and net.data_uid(5) == 4 and net.data_uid(4) == 4
    uploads, honest = net.uploads(0, switch=1)
    stage0, stage1 = set(uploads[4]), set(uploads[5])
    assert stage0 and stage1 and not stage0 & stage1 and stage0 | stage1 == set(net.shapes)  # a partition of θ
    assert "model.embed_tokens.weight" in stage0 and "lm_head.weight" in stage1
    assert len(honest) == 4  # both stages are in the aggregate next to the two full miners
    measured, ratios = net.measure(0, uploads)
    assert set(measured) == set(ratios) == {1, 2, 3, 4, 5} and all(r is not None and r > 0 for r in ratios.values())
    # as the validator's stage 2: each stage next to its partner's update, on twice the sequences
    assert len(measured[5].own_before) == len(measured[4].own_before) == 2 * len(measured[1].own_before)
    assert measured[5].own_before != measured[4].own_before  # different partners applied before
    alone = Network(hp, shards, 0, kinds, stage_context=False, stage_eval_factor=1)
    uploads, _ = alone.uploads(0, switch=1)
    measured, _ = alone.measure(0, uploads)
    assert measured[5].own_before == measured[4].own_before != measured[1].own_before  # the group's data: stage 0's
    # a boosted upload is measured at the window's typical norm, as the validator's stage 2 measures it
    boosted = {n: SparseTensor(t.shape, t.indices, t.values * 3) for n, t in uploads[1].items()}
    scaled, _ = net.measure(0, {1: uploads[1], 2: uploads[1], 3: boosted})
    assert scaled[3].rand_after == pytest.approx(scaled[1].rand_after, rel=1e-4)


def test_groups_enter_the_json_as_stage_kinds(tmp_path: Path):
    args = [sys.executable, str(SCRIPT), "--json", "--seeds", "1", "--windows", "2", "--honest", "2",
            "--free-riders", "late_mean_copy", "--groups", "1", "--hparams", str(pipeline_hparams(tmp_path / "h.json")),
            "--data-dir", str(tmp_path / "data"), "--corpus-chars", "150000"]
    result = json.loads(subprocess.run(args, capture_output=True, text=True, timeout=300, check=True).stdout)
    assert result["honest_miner_windows"] == 4 and result["stage_miner_windows"] == {"stage0": 2, "stage1": 2}
    assert set(result["stage_unpaid_pct"]) == {"stage0", "stage1"} and set(result["free_rider_paid_pct"]) == {"late_mean_copy"}
    assert {"stage0", "stage0_window0", "stage1", "stage1_window0"} <= set(result["t_by_kind"])
    assert set(result["loss_score_positive_pct"]) == {"honest", "late_mean_copy", "stage0", "stage1"}
    assert set(result["sweep"][0]["stage_unpaid_pct"]) == {"stage0", "stage1"}
    stages = [m for r in result["per_window"] for m in r["miners"].values() if m["kind"] in ("stage0", "stage1")]
    assert len(stages) == 4 and all(-4.0 <= m["t"] <= 4.0 and m["norm_ratio"] > 0 for m in stages)


def test_a_stage_rider_claims_stage_1_of_a_group_and_crowds_that_index(tmp_path: Path):
    """The free-rider the stage contexts are built against: it claims the group's data and stage 1's
    layers and uploads the last aggregate's stage-1 part. Stage 1 then has two claimants, so stage 0
    is measured alone and each claimant next to stage 0 (neurons.stage_groups.stage_contexts)."""
    with pytest.raises(SystemExit, match="needs --groups"):
        parse_kinds(1, "", groups=0, stage_riders=1)
    hp = load_hparams(str(pipeline_hparams(tmp_path / "h.json")))
    shards = TokenShards(ensure_embedded_data(tmp_path / "data", hp.model.vocab_size, 150000))
    kinds = parse_kinds(1, "", groups=1, stage_riders=1)
    assert kinds == {1: "honest", 2: "stage0", 3: "stage1", 4: "stage_rider"}
    net = Network(hp, shards, 0, kinds)
    claim = net.claim(4)
    assert (claim.data_uid, claim.index, claim.group) == (2, 1, net.claim(3).group) and net.data_uid(4) == 2
    assert net.claim(1) is None
    uploads, honest = net.uploads(0, switch=1)
    assert 4 not in uploads and len(honest) == 3  # nothing to re-upload in window 0; riders never aggregate
    assert stage_contexts({u: net.claim(u) for u in uploads}) == {2: (3,), 3: (2,)}
    net.step(honest)
    uploads, honest = net.uploads(1, switch=1)
    assert set(uploads[4]) == set(uploads[3]) and len(honest) == 3
    assert stage_contexts({u: net.claim(u) for u in uploads}) == {3: (2,), 4: (2,)}
