"""End to end: real processes, a devchain file, a real S3 server on loopback.

These run whole (tiny) subnets, so they take a minute or two each; they are the proof that the
pieces work together as an operator would run them.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from neurons.corpus import ensure_embedded_data
from neurons.events import read_records
from neurons.localnet.launcher import plan_network, start_node, stop_nodes
from neurons.localnet.seaweedfs import SeaweedServer
from protocol.hparams import load_hparams
from scoring.state import ScoreBook

pytestmark = pytest.mark.integration
REPO = Path(__file__).resolve().parents[3]


def test_localnet_two_miners_one_validator(tmp_path: Path) -> None:
    out = tmp_path / "summary.json"
    cmd = [sys.executable, "-m", "neurons.cli", "localnet", "--miners", "2", "--validators", "1",
           "--windows", "3", "--workdir", str(tmp_path / "net"), "--json-out", str(out)]
    done = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, timeout=420)
    logs = _log_tails(tmp_path / "net" / "logs")
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:] + logs
    summary = json.loads(out.read_text())
    assert len(summary["miners"]) == 2 and len(summary["validators"]) == 1
    windows = summary["windows"]
    assert len(windows) == 3
    for w in windows:
        # every node (2 miners, 1 validator) holds the same model after every window
        assert len(w["fingerprints"]) == 3 and len(set(w["fingerprints"].values())) == 1, logs
        # both honest miners' payloads arrived, were accepted and are tiny next to dense fp32
        assert sorted(w["payload_bytes"], key=int) == [str(u) for u in summary["miners"]], (w, logs)
        assert not set(w["rejected"]) & {str(u) for u in summary["miners"]}, (w, logs)
        assert max(w["payload_bytes"].values()) * 100 < summary["dense_fp32_bytes"]
    assert windows[-1]["loss"] < windows[0]["loss"]


def _log_tails(logs_dir: Path, chars: int = 2500) -> str:
    """The end of every node's log, for a failure message that says what the nodes saw."""
    return "".join(f"\n--- {p.name}\n{p.read_text(errors='replace')[-chars:]}" for p in sorted(logs_dir.glob("*.log")))


def _wait(condition, timeout: float, what: str) -> None:
    deadline = time.time() + timeout
    while time.time() < deadline:
        if condition():
            return
        time.sleep(0.5)
    raise AssertionError(f"timed out waiting for {what}")


def _live(records: list[dict]) -> list[dict]:
    return [r for r in records if not r.get("replayed")]


def test_late_miner_catches_up_and_killed_validator_keeps_scores(tmp_path: Path) -> None:
    hp = load_hparams("tiny")
    data_dir = ensure_embedded_data(tmp_path / "data", hp.model.vocab_size)
    chain, specs = plan_network(tmp_path, miners=3, validators=1, block_time=1.0)
    (tmp_path / "logs").mkdir()
    validator, early, other, late = specs
    v_events = tmp_path / "nodes" / validator.name / "events.jsonl"
    identities = [i for s in specs for i in (s.writer, s.reader)]
    try:
        with SeaweedServer(tmp_path / "s3", identities) as s3:
            def start(spec):
                start_node(spec, tmp_path, s3.endpoint_url, "tiny", data_dir)

            start(validator)
            start(early)
            start(other)
            _wait(lambda: len(_live(read_records(v_events))) >= 3, 240, "three scored windows")
            book_path = tmp_path / "nodes" / validator.name / "scores.json"
            before = ScoreBook.load(book_path).records[early.uid]
            assert before.windows_evaluated >= 2 and before.sigma < 25 / 3  # rated against the other miner

            os.kill(validator.process.pid, signal.SIGKILL)
            validator.process.wait()
            start(late)  # joins two or more windows after the network started
            late_started = chain.block() // hp.window.blocks_per_window
            start(validator)
            n_before = len(_live(read_records(v_events)))
            _wait(lambda: len(_live(read_records(v_events))) >= n_before + 3, 240, "windows after restart")
    finally:
        stop_nodes(specs)
    after = ScoreBook.load(tmp_path / "nodes" / validator.name / "scores.json").records[early.uid]
    # the restarted validator continued the same book: counts grew, the rating kept its history
    assert after.windows_evaluated > before.windows_evaluated
    assert after.first_window == before.first_window
    assert after.sigma <= before.sigma
    # the late miner replayed to the network's θ and, from the first window it worked live (its
    # start-up takes a window or two on a loaded machine), had a payload accepted (in sync,
    # evaluated) within one window; it is aggregated once validators weigh it (protocol.gather_set)
    late_records = read_records(tmp_path / "nodes" / late.name / "events.jsonl")
    first_live = min(r["window"] for r in _live(late_records))
    assert first_live >= late_started
    key = str(late.uid)
    accepted = [r["window"] for r in _live(read_records(v_events))
                if key in r["payload_bytes"] and key not in r["rejected"]]
    assert accepted and accepted[0] <= first_live + 1, (accepted, first_live, late_started)
    validator_fp = {r["window"]: r["fingerprint"] for r in read_records(v_events)}
    assert all(validator_fp.get(r["window"], r["fingerprint"]) == r["fingerprint"] for r in late_records)
