"""``tessera stage`` as real processes on loopback: a 2-stage group trains windows, a stage killed
mid-run restarts from its saved state, and both stages end on the same θ (same anchor)."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
from safetensors.torch import load_file

from neurons.corpus import ensure_embedded_data
from protocol.hparams import load_hparams

CHARS = 150_000


def _hparams(tmp: Path) -> Path:
    raw = load_hparams("tiny").model_dump(mode="json")
    raw["model"].update(vocab_size=512, hidden_size=64, intermediate_size=128, num_layers=2, max_seq_len=32)
    raw["training"].update(inner_steps=3, batch_size=4, seq_len=32)
    raw["pipeline"] = {"subspace_dim": 4}
    path = tmp / "pipe.json"
    path.write_text(json.dumps(raw))
    return path


def _free_port() -> int:
    with socket.create_server(("127.0.0.1", 0)) as s:
        return s.getsockname()[1]


def _start(tmp: Path, hp: Path, stage: int, port: int, windows: int) -> subprocess.Popen:
    where = ["--listen", f"127.0.0.1:{port}"] if stage else ["--next", f"127.0.0.1:{port}"]
    cmd = [sys.executable, "-m", "neurons.cli", "stage", "--hparams", str(hp), "--group", "g", "--stage", f"{stage}/2",
           *where, "--windows", str(windows), "--timeout", "20", "--state-dir", str(tmp / f"state{stage}"),
           "--data-dir", str(tmp / "data"), "--corpus-chars", str(CHARS), "--json-out", str(tmp / f"s{stage}.json")]
    return subprocess.Popen(cmd, cwd=Path(__file__).resolve().parents[2], env={**os.environ, "PYTHONPATH": "."},
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)


def _trained(path: Path) -> list[int]:
    try:
        return [w["window"] for w in json.loads(path.read_text())["windows"] if w["trained"]]
    except (OSError, ValueError):
        return []


@pytest.mark.integration
def test_a_group_trains_survives_a_killed_stage_and_ends_on_one_theta(tmp_path):
    ensure_embedded_data(tmp_path / "data", 512, CHARS)  # once, before the stages race for it
    hp, port, windows = _hparams(tmp_path), _free_port(), 4
    down = _start(tmp_path, hp, 1, port, windows)
    up = _start(tmp_path, hp, 0, port, windows)
    deadline = time.monotonic() + 120
    while not _trained(tmp_path / "s1.json") and time.monotonic() < deadline:
        time.sleep(0.05)
    assert _trained(tmp_path / "s1.json"), down.stderr.read() if down.poll() is not None else "stage 1 never trained"
    down.send_signal(signal.SIGKILL)  # mid-run: the group is somewhere in a later window
    down.wait(timeout=10)
    restarted = _start(tmp_path, hp, 1, port, windows)
    assert up.wait(timeout=180) == 0, up.stderr.read()
    assert restarted.wait(timeout=60) == 0, restarted.stderr.read()
    assert _trained(tmp_path / "s0.json") == list(range(windows))  # every window trained once, in order
    s0 = load_file(tmp_path / "state0" / "g-stage0of2.safetensors")
    s1 = load_file(tmp_path / "state1" / "g-stage1of2.safetensors")
    assert int(s0["last_window"]) == int(s1["last_window"]) == windows - 1
    # the anchor of stage 1 is exactly stage 0's embedding: one θ across the group
    assert (s1["anchor/embedding"] == s0["model.embed_tokens.weight"]).all()
    assert (s0["anchor/embedding"] == s0["model.embed_tokens.weight"]).all()
