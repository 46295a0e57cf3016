"""Smoke test of the codec benchmark: runs it with --small and checks the JSON shape, not timings."""

import json
import subprocess
import sys
from pathlib import Path

SCRIPT = Path(__file__).resolve().parents[2] / "scripts" / "bench_compression.py"
KEYS = {
    "bits_per_index", "bits_per_value", "ratio_vs_fp32", "ratio_vs_bf16",
    "encode_elems_per_s", "decode_elems_per_s", "decode_aggregate_elems_per_s", "rel_error",
}


def test_small_run_prints_one_json_object():
    proc = subprocess.run([sys.executable, str(SCRIPT), "--json", "--small"], capture_output=True, text=True,
                          timeout=300, check=True)
    result = json.loads(proc.stdout)
    assert set(result["cases"]) == {"llama_drift", "student_t_synthetic"}
    for case in result["cases"].values():
        for fmt in ("tessera", "reference"):
            assert KEYS <= set(case[fmt])
            assert all(isinstance(case[fmt][k], float) and case[fmt][k] > 0 for k in KEYS)
        assert 7.0 < case["floor_bits_per_index"] < 7.5
        assert case["reference"]["bits_per_index"] == 12.0
        assert case["tessera"]["bits_per_index"] < case["reference"]["bits_per_index"]
        assert case["tessera"]["rel_error"] <= case["reference"]["rel_error"]
