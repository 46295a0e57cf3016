"""scripts/attack_report.py: what it plans and how it reads a summary (fast), and one short
matrix on the real local subnet (integration: two subnets of real processes, about 3 minutes on
two cores)."""

from __future__ import annotations

import importlib.util
import json
import subprocess
import sys
from pathlib import Path

import pytest

SCRIPT = Path(__file__).resolve().parents[2] / "scripts" / "attack_report.py"
KEYS = {"adversary_weight_share", "honest_weight_share", "loss", "honest_only_loss", "first_rejected_window"}


def load():
    spec = importlib.util.spec_from_file_location("attack_report", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up there
    spec.loader.exec_module(module)
    return module


def _window(n: int, weights: dict[str, float], rejected: dict[str, str], honest: float, adversary: float) -> dict:
    return {"window": n, "loss": 7.0 - n / 10, "weights": weights, "rejected": rejected,
            "honest_weight_share": honest, "adversary_weight_share": adversary}


def test_the_plan_is_honest_only_first_then_each_kind_then_mixed() -> None:
    ar = load()
    runs = ar.plan_runs(["copy", "zeros"], per_kind=2, each=True, mixed=["copy", "zeros"])
    assert [(r.name, r.adversaries) for r in runs] == [
        ("honest_only", ()), ("copy", ("copy", "copy")), ("zeros", ("zeros", "zeros")), ("mixed", ("copy", "zeros")),
    ]
    assert [r.name for r in ar.plan_runs(["copy"], 2, each=False, mixed=["copy"])] == ["honest_only", "mixed"]
    assert [r.name for r in ar.plan_runs(["copy"], 2, each=True, mixed=[])] == ["honest_only", "copy"]


def test_a_summary_becomes_one_matrix_entry() -> None:
    ar = load()
    summary = {
        "outcome": "done", "miners": [2, 3], "adversaries": {"4": "copy", "5": "copy"},
        "windows": [
            _window(10, {}, {"4": "missing", "5": "missing"}, 0.0, 0.0),  # no weights set yet
            _window(11, {"0": 0.5, "2": 0.3, "4": 0.2}, {"5": "copy"}, 0.6, 0.4),
            _window(12, {"0": 0.5, "2": 0.25, "3": 0.25}, {"4": "copy", "5": "copy"}, 1.0, 0.0),
        ],
    }
    entry = ar.digest(summary, honest_only_loss=6.5, seconds=12.34)
    assert KEYS <= set(entry)
    assert entry["adversary_weight_share"] == [0.0, 0.4, 0.0] and entry["honest_weight_share"] == [0.0, 0.6, 1.0]
    assert entry["loss"] == pytest.approx(5.8) and entry["honest_only_loss"] == 6.5
    assert entry["first_rejected_window"] == 0  # both missing in the first scored window
    assert entry["rejections"] == {"4": ["missing", None, "copy"], "5": ["missing", "copy", "copy"]}
    assert entry["honest_unpaid_windows"] == 1  # uid 3 in window 11; window 10 set no weights
    assert entry["honest_miner_windows"] == 6


def test_pairs_halve_the_runs_and_each_kind_gets_its_own_share() -> None:
    ar = load()
    runs = ar.plan_runs(["copy", "zeros", "late"], per_kind=2, each=True, mixed=[], pairs=True)
    assert [(r.name, r.adversaries) for r in runs] == [
        ("honest_only", ()), ("copy+zeros", ("copy", "zeros")), ("late", ("late", "late")),
    ]
    summary = {
        "outcome": "done", "miners": [2, 3], "adversaries": {"4": "copy", "5": "zeros"},
        "windows": [_window(11, {"0": 0.5, "2": 0.2, "3": 0.2, "5": 0.1}, {"4": "copy"}, 0.8, 0.2)],
    }
    zeros = ar.digest(summary, 6.5, 1.0, kind="zeros")
    assert zeros["adversary_weight_share"] == [pytest.approx(0.2)] and zeros["rejections"] == {"5": [None]}
    assert ar.digest(summary, 6.5, 1.0, kind="copy")["adversary_weight_share"] == [0.0]


def test_no_rejection_and_no_windows_are_null() -> None:
    ar = load()
    assert ar.first_rejected_window([_window(1, {}, {}, 0, 0)], ["4"]) is None
    entry = ar.digest({"outcome": "no summary", "windows": [], "miners": [], "adversaries": {}}, None, 1.0)
    assert entry["loss"] is None and entry["adversary_weight_share"] == []


@pytest.mark.integration
def test_short_mixed_matrix_on_the_local_subnet(tmp_path: Path) -> None:
    cmd = [sys.executable, str(SCRIPT), "--json", "--behaviours", "zeros,sign_flip,copy", "--windows", "3",
           "--honest", "2", "--only-mixed", "--block-time", "1.0", "--workdir", str(tmp_path)]
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=600)
    logs = "".join(p.read_text(errors="replace")[-3000:] for p in sorted(tmp_path.glob("*.log")))
    assert done.returncode == 0, done.stderr[-3000:] + logs
    report = json.loads(done.stdout)
    mixed = report["behaviours"]["mixed"]
    assert report["honest_only"]["outcome"] == "done" and mixed["outcome"] == "done", (report, logs)
    assert KEYS <= set(mixed) and len(mixed["adversary_weight_share"]) == 3
    assert mixed["honest_only_loss"] == report["honest_only"]["loss"]
    for honest, adversary in zip(mixed["honest_weight_share"], mixed["adversary_weight_share"], strict=True):
        assert 0.0 <= adversary <= 1.0 and honest + adversary in (0.0, pytest.approx(1.0))
    # by the third scored window the adversaries hold (almost) none of the miners' weight
    assert mixed["adversary_weight_share"][-1] < 0.05, mixed
    # the copier is refused as a copy whenever it had something to copy, and never paid for it
    copier = next(uid for uid, kind in mixed["adversaries"].items() if kind == "copy")
    assert set(mixed["rejections"][copier]) <= {"copy", "missing"} and "copy" in mixed["rejections"][copier], mixed
