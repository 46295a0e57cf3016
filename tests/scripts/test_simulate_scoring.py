import importlib.util
import sys
from pathlib import Path

SCRIPT = Path(__file__).resolve().parents[2] / "scripts" / "simulate_scoring.py"


def load():
    spec = importlib.util.spec_from_file_location("simulate_scoring", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up there
    spec.loader.exec_module(module)
    return module


def test_real_model_simulation_pays_only_contributors():
    sim = load()
    out = sim.run(windows=10, seed=0)
    kinds, total = out["kinds"], out["summary"]["total_weight"]
    for uid, kind in kinds.items():
        if kind in ("free-rider", "copier", "attacker"):
            assert total[uid] == 0.0, kind
        else:
            assert total[uid] > 0.0, kind
    s = out["summary"]
    assert s["newcomer_first_paid"] - s["newcomer_joined"] <= 4
    assert all(r["rejected"] == {"6": "copy"} for r in out["windows"])
