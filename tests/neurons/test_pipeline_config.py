"""--pipeline.* settings: a miner that is one stage of a pipeline group names its group, its
S/N and its neighbours' HOST:PORT; anything else is one ConfigError naming the flag at start-up,
not a socket error minutes later."""

from __future__ import annotations

import argparse

import pytest

from neurons.config import ConfigError, NodeConfig, add_node_arguments, node_config_from_args
from tests.neurons.test_config import BASE_FLAGS, SECRETS_ENV

LISTEN = ["--pipeline.listen", "127.0.0.1:7000"]
NEXT = ["--pipeline.next", "127.0.0.1:7001"]


def _config(flags: list[str], role: str = "miner", env: dict[str, str] | None = None) -> NodeConfig:
    parser = argparse.ArgumentParser()
    add_node_arguments(parser)
    return node_config_from_args(role, parser.parse_args([*BASE_FLAGS, *flags]), {**SECRETS_ENV, **(env or {})})


def _stage(stage: str, *flags: str) -> list[str]:
    return ["--pipeline.group", "g0", "--pipeline.stage", stage, *flags]


def test_a_miner_without_pipeline_flags_is_no_stage():
    assert _config([]).pipeline is None


def test_the_first_stage_names_only_its_downstream_neighbour():
    p = _config(_stage("0/2", *NEXT, "--pipeline.timeout", "7.5")).pipeline
    assert (p.group, p.index, p.n_stages, p.timeout) == ("g0", 0, 2, 7.5)
    assert p.listen_address is None and p.next_address == ("127.0.0.1", 7001)


def test_the_last_stage_names_only_where_it_listens():
    p = _config(_stage("1/2", *LISTEN)).pipeline
    assert (p.index, p.n_stages, p.timeout) == (1, 2, 20.0)
    assert p.listen_address == ("127.0.0.1", 7000) and p.next_address is None


def test_a_middle_stage_names_both_neighbours():
    p = _config(_stage("1/3", *LISTEN, *NEXT)).pipeline
    assert (p.index, p.n_stages) == (1, 3)
    assert (p.listen_address, p.next_address) == (("127.0.0.1", 7000), ("127.0.0.1", 7001))


def test_an_ipv6_host_goes_in_brackets():
    assert _config(_stage("1/2", "--pipeline.listen", "[::1]:7000")).pipeline.listen_address == ("::1", 7000)


def test_every_pipeline_flag_reads_its_environment_variable():
    env = {
        "TESSERA_PIPELINE_GROUP": "env-group",
        "TESSERA_PIPELINE_STAGE": "1/3",
        "TESSERA_PIPELINE_LISTEN": "0.0.0.0:7100",
        "TESSERA_PIPELINE_NEXT": "10.0.0.2:7200",
        "TESSERA_PIPELINE_TIMEOUT": "3",
    }
    p = _config([], env=env).pipeline
    assert (p.group, p.stage, p.timeout) == ("env-group", "1/3", 3.0)
    assert (p.listen_address, p.next_address) == (("0.0.0.0", 7100), ("10.0.0.2", 7200))
    assert _config(["--pipeline.group", "flag-group"], env=env).pipeline.group == "flag-group"  # a flag wins


@pytest.mark.parametrize(
    ("flags", "named"),
    [
        (["--pipeline.stage", "0/2", *NEXT], "--pipeline.group"),
        (["--pipeline.group", "g0", *NEXT], "--pipeline.stage"),
        (_stage("2/2", *LISTEN), "--pipeline.stage"),
        (_stage("0/1"), "--pipeline.stage"),
        (_stage("a/b", *NEXT), "--pipeline.stage"),
        (_stage("0/2", *LISTEN, *NEXT), "--pipeline.listen"),
        (_stage("1/2", *LISTEN, *NEXT), "--pipeline.next"),
        (_stage("1/3", *LISTEN), "--pipeline.next"),
        (_stage("1/3", *NEXT), "--pipeline.listen"),
        (_stage("0/2", "--pipeline.next", "127.0.0.1"), "--pipeline.next"),
        (_stage("0/2", "--pipeline.next", "127.0.0.1:0"), "--pipeline.next"),
        (_stage("0/2", "--pipeline.next", "127.0.0.1:70000"), "--pipeline.next"),
        (_stage("0/2", "--pipeline.next", "host:"), "--pipeline.next"),
        (_stage("1/2", "--pipeline.listen", ":7000"), "--pipeline.listen"),
        (_stage("1/2", "--pipeline.listen", "[]:7000"), "--pipeline.listen"),
        (_stage("0/2", *NEXT, "--pipeline.timeout", "0"), "--pipeline.timeout"),
    ],
)
def test_a_bad_stage_setting_is_refused_naming_the_flag(flags, named):
    with pytest.raises(ConfigError, match=named) as info:
        _config(flags)
    assert "\n" not in str(info.value)


def test_pipeline_flags_are_for_miners_only():
    with pytest.raises(ConfigError, match=r"--pipeline\.\* flags are for miners"):
        _config(_stage("0/2", *NEXT), role="validator")
