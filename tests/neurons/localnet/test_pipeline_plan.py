"""The localnet's pipeline groups: --pipeline-groups GxN and --kill-stage G/S@W parse or are
refused by argparse, and plan_network wires each group's stage miners into a chain of loopback
ports (no process is started here)."""

from __future__ import annotations

import argparse
from pathlib import Path

import pytest

from neurons.localnet.launcher import KillPlan, NodeSpec, _groups, _kill_plan, plan_network

# Registration waits one block per node; the stages' wiring does not depend on the block time.
FAST_BLOCK_TIME = 0.02


def _flag(spec: NodeSpec, flag: str) -> str | None:
    """The value of ``flag`` in a stage's --pipeline.* flags (each given at most once), or None."""
    assert spec.pipeline.count(flag) <= 1, spec.pipeline
    return spec.pipeline[spec.pipeline.index(flag) + 1] if flag in spec.pipeline else None


def _port(address: str | None) -> int:
    assert address is not None and address.startswith("127.0.0.1:")  # loopback only
    return int(address.rpartition(":")[2])


@pytest.mark.parametrize(("text", "expected"), [("1x2", (1, 2)), ("2X3", (2, 3)), ("10x16", (10, 16))])
def test_pipeline_groups_parse(text, expected):
    assert _groups(text) == expected


@pytest.mark.parametrize("text", ["0x2", "1x1", "x2", "12", "1x", "-1x2", "1x2x3", "1*2", ""])
def test_malformed_pipeline_groups_are_refused(text):
    with pytest.raises(argparse.ArgumentTypeError, match="--pipeline-groups is GxN"):
        _groups(text)


def test_kill_stage_parses_and_names_the_stage_miner():
    plan = _kill_plan("0/1@5")
    assert plan == KillPlan(0, 1, 5)
    assert plan.name == "stage-g0-s1"
    assert _kill_plan("12/3@40").name == "stage-g12-s3"


@pytest.mark.parametrize("text", ["0/1", "0@5", "0-1@5", "a/1@5", "0/b@5", "0/1@w", "/1@5", "0/1@", "0/1@-5", ""])
def test_malformed_kill_stage_is_refused(text):
    with pytest.raises(argparse.ArgumentTypeError, match="--kill-stage is G/S@W"):
        _kill_plan(text)


def test_plan_network_wires_each_group_into_a_chain_of_stage_miners(tmp_path: Path):
    _, specs = plan_network(tmp_path, miners=1, validators=1, block_time=FAST_BLOCK_TIME, pipeline_groups=(2, 3))

    assert [(s.name, s.role) for s in specs[:2]] == [("validator-0", "validator"), ("miner-0", "miner")]
    assert all(not s.pipeline for s in specs[:2])
    stages = specs[2:]  # registered after the plain miners, group by group, stage by stage
    assert [s.name for s in stages] == [f"stage-g{g}-s{s}" for g in range(2) for s in range(3)]
    assert all(s.role == "miner" for s in stages)
    assert len({s.uid for s in specs}) == len(specs) and 0 not in {s.uid for s in specs}  # uid 0: the owner
    assert len({s.bucket for s in specs}) == len(specs)
    assert all(tuple(s.writer.buckets) == tuple(s.reader.buckets) == (s.bucket,) for s in stages)

    for g in range(2):
        group = stages[3 * g : 3 * g + 3]
        assert [_flag(s, "--pipeline.group") for s in group] == [f"g{g}"] * 3
        assert [_flag(s, "--pipeline.stage") for s in group] == ["0/3", "1/3", "2/3"]
        assert [(_flag(s, "--pipeline.listen") is None, _flag(s, "--pipeline.next") is None) for s in group] == [
            (True, False),  # stage 0: downstream only
            (False, False),  # the middle stage: both neighbours
            (False, True),  # the last stage: upstream only
        ]
        for up, down in zip(group, group[1:], strict=False):
            assert _port(_flag(up, "--pipeline.next")) == _port(_flag(down, "--pipeline.listen"))
