"""The hostile-input campaign script: a small run prints the JSON it promises, with zero crashes, controls
accepted and hostile inputs refused in every class, deterministically for a seed; its catch-all
counts what a reader lets escape."""

from __future__ import annotations

import importlib.util
import json
import re
import sys
from pathlib import Path

import pytest

SCRIPT = Path(__file__).resolve().parents[2] / "scripts" / "fuzz_acceptance.py"
CLASSES = ("payload", "commitment", "fingerprint", "checkpoint")
KEYS = {"n", "seed", "classes", "skipped", "counts", "by_mutator", "crashes", "crash_examples", "poisoned",
        "poison_examples", "slowest", "slowest_per_class", "seconds_total", "peak_memory"}


@pytest.fixture(scope="module")
def fuzz():
    spec = importlib.util.spec_from_file_location("fuzz_acceptance_under_test", SCRIPT)
    assert spec and spec.loader
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up while the class is built
    spec.loader.exec_module(module)
    yield module
    sys.modules.pop(spec.name, None)


@pytest.fixture(scope="module")
def small_run(fuzz):
    return fuzz.main(["--n", "200", "--seed", "3", "--json", "--store-builds", "2"])


def test_small_run_prints_the_promised_json(small_run, capsys):
    assert KEYS <= set(small_run)
    assert small_run["n"] == 200 and small_run["seed"] == 3 and small_run["skipped"] == {}
    assert set(small_run["counts"]) == set(CLASSES)
    assert sum(sum(c.values()) for c in small_run["counts"].values()) == 200
    assert small_run["peak_memory"]["ru_maxrss_mib"] > 0 and small_run["slowest"]["seconds"] >= 0


def test_no_crash_or_poison_and_every_class_both_accepts_and_refuses(small_run):
    assert small_run["crashes"] == 0, small_run["crash_examples"]
    assert small_run["poisoned"] == 0, small_run["poison_examples"]
    for cls in CLASSES:
        outcomes = small_run["counts"][cls]
        assert set(outcomes) <= {"accepted"} | {o for o in outcomes if o.startswith("rejected:")}
        assert small_run["by_mutator"][cls]["control"] == {"accepted": 3}  # the harness can accept
        assert sum(n for o, n in outcomes.items() if o.startswith("rejected:")) > 25  # and hostile input is refused
    assert "rejected:CheckpointValueError" in small_run["counts"]["checkpoint"] or \
        "rejected:out_of_bounds" in small_run["counts"]["payload"]


def unsigned(data: object) -> object:
    """The input with its sr25519 signature masked: those are randomised, every other byte is the seed's."""
    return re.sub(rb'"sig":"[0-9a-f]{128}"', b'"sig":"?"', data) if isinstance(data, bytes) else data


def test_a_seed_gives_the_same_inputs(fuzz):
    targets, _ = fuzz.build_targets(list(CLASSES), store_builds=0)
    for index in range(12, 100):
        target = targets[CLASSES[index % 4]]
        mutator, once = fuzz.generate(target, 11, index, index // 4, 3)
        again = fuzz.generate(target, 11, index, index // 4, 3)[1]
        assert unsigned(once) == unsigned(again), mutator
        assert target.judge(once) == target.judge(again), mutator


def test_the_catch_all_counts_escaping_exceptions_as_crashes(fuzz):
    class Leaky:
        def judge(self, data):
            raise KeyError(data)

    campaign = fuzz.Campaign()
    fuzz.run_one(campaign, Leaky(), "payload", "bytes.flip", 7, b"\x00\xff")
    assert campaign.n_crashes == 1 and campaign.counts["payload"]["crash"] == 1
    assert campaign.crashes[0]["error"].startswith("KeyError") and campaign.crashes[0]["head_hex"] == "00ff"


def test_a_contained_reader_bug_is_a_crash_too(fuzz):
    """``judge_payload`` never raises, but a rejection that only the boundary guard produced is a reader bug."""
    target = fuzz.build_targets(["payload"], store_builds=0)[0]["payload"]
    from protocol.acceptance import PayloadVerdict, RejectReason, Stage1Result

    target._judge = lambda *a: PayloadVerdict(Stage1Result.reject(3, RejectReason.UNDECODABLE, "unexpected KeyError x"))
    campaign = fuzz.Campaign()
    fuzz.run_one(campaign, target, "payload", "control", 0, target.control)
    assert campaign.n_crashes == 1 and "boundary guard" in campaign.crashes[0]["error"]


def test_replay_of_one_input(fuzz, tmp_path, capsys):
    dump = tmp_path / "input.bin"
    result = fuzz.main(["--seed", "3", "--classes", "fingerprint", "--index", "1", "--dump", str(dump)])
    assert result["outcome"] == "accepted" and result["mutator"] == "control"
    assert json.loads(capsys.readouterr().out.strip().splitlines()[-1])["index"] == 1
    assert json.loads(dump.read_bytes())["window"] == 41


def test_the_campaign_finds_the_surrogate_crash_when_the_header_check_is_gone(fuzz, monkeypatch, capsys):
    """Sensitivity: without the header reader's UTF-8 round trip (issue 7's remote crash), names like
    "\\ud800" reach the content hash and the campaign reports crashes behind the boundary guard."""
    import compression.safetensors_header as header

    if not hasattr(header, "_text"):
        pytest.skip("the header reader changed shape; this sensitivity check needs updating")
    monkeypatch.setattr(header, "_text", lambda value, what: value)
    result = fuzz.main(["--n", "600", "--classes", "payload", "--json", "--no-tracemalloc"])
    assert result["crashes"] > 0
    assert all("UnicodeEncodeError" in c["error"] for c in result["crash_examples"])
