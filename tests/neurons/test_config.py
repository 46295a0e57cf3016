"""Node settings: flags and TESSERA_* variables become a NodeConfig, or one ConfigError naming the
setting; secrets come only from the environment and never show in reprs or error reports."""

from __future__ import annotations

import argparse
import traceback
from pathlib import Path

import pytest

from neurons.config import ConfigError, NodeConfig, add_node_arguments, node_config_from_args

WRITE_KEY_ID = "WRITEKEYID0000000001"
WRITE_SECRET = "write-secret-Zq9xV7wT3sK1"
READ_SECRET = "read-secret-Hm4pL2nB8cD6"
SECRETS_ENV = {
    "TESSERA_BUCKET_WRITE_KEY_ID": WRITE_KEY_ID,
    "TESSERA_BUCKET_WRITE_SECRET": WRITE_SECRET,
    "TESSERA_BUCKET_READ_SECRET": READ_SECRET,
}
BASE_FLAGS = [
    "--netuid", "7",
    "--devchain", "/tmp/tessera-chain.db",
    "--bucket.endpoint", "http://127.0.0.1:8333",
    "--bucket.name", "miner-bucket",
    "--bucket.read-key-id", "reader",
    "--state-dir", "/tmp/tessera-state",
]


def _parse(flags: list[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser()
    add_node_arguments(parser)
    return parser.parse_args(flags)


def _config(flags: list[str], env: dict[str, str] | None = None, role: str = "miner") -> NodeConfig:
    return node_config_from_args(role, _parse(flags), SECRETS_ENV if env is None else env)


def _without(flags: list[str], flag: str) -> list[str]:
    i = flags.index(flag)
    return flags[:i] + flags[i + 2 :]


def test_flags_and_secret_env_make_a_config():
    config = _config([*BASE_FLAGS, "--wallet.name", "cold", "--wallet.hotkey", "hot", "--threads", "2"], role="validator")

    assert config.role == "validator" and config.netuid == 7
    assert (config.wallet_name, config.wallet_hotkey, config.threads) == ("cold", "hot", 2)
    assert config.devchain == Path("/tmp/tessera-chain.db") and config.network is None
    assert config.state_dir == Path("/tmp/tessera-state")
    bucket = config.bucket
    assert (bucket.endpoint_url, bucket.name, bucket.read_key_id, bucket.region) == (
        "http://127.0.0.1:8333", "miner-bucket", "reader", "auto",
    )
    assert bucket.write_key_id.get_secret_value() == WRITE_KEY_ID
    assert bucket.write_secret.get_secret_value() == WRITE_SECRET
    assert bucket.read_secret.get_secret_value() == READ_SECRET


def test_every_flag_has_an_environment_fallback_and_flags_win():
    env = {
        **SECRETS_ENV,
        "TESSERA_NETUID": "9",
        "TESSERA_SUBTENSOR_NETWORK": "test",
        "TESSERA_BUCKET_ENDPOINT": "https://example.com",
        "TESSERA_BUCKET_NAME": "env-bucket",
        "TESSERA_BUCKET_READ_KEY_ID": "env-reader",
        "TESSERA_STATE_DIR": "/tmp/env-state",
        "TESSERA_MAX_WINDOWS": "5",
    }
    from_env = _config([], env)
    assert (from_env.netuid, from_env.network, from_env.bucket.name, from_env.max_windows) == (9, "test", "env-bucket", 5)

    overridden = _config(["--netuid", "3", "--bucket.name", "flag-bucket"], env)
    assert (overridden.netuid, overridden.bucket.name) == (3, "flag-bucket")


def test_state_dir_defaults_per_role():
    config = _config(_without(BASE_FLAGS, "--state-dir"), role="validator")
    assert config.state_dir == Path("~/.tessera").expanduser() / "validator"


@pytest.mark.parametrize(
    ("missing", "named"),
    [
        ("TESSERA_BUCKET_WRITE_SECRET", "TESSERA_BUCKET_WRITE_SECRET"),
        ("TESSERA_BUCKET_WRITE_KEY_ID", "TESSERA_BUCKET_WRITE_KEY_ID"),
        ("TESSERA_BUCKET_READ_SECRET", "TESSERA_BUCKET_READ_SECRET"),
    ],
)
def test_a_missing_secret_names_its_variable(missing, named):
    env = {k: v for k, v in SECRETS_ENV.items() if k != missing}
    with pytest.raises(ConfigError, match=named):
        _config(BASE_FLAGS, env)


@pytest.mark.parametrize(
    ("flags", "named"),
    [
        (["--netuid", "-1"], "--netuid"),
        (["--netuid", "one"], "--netuid"),
        (["--threads", "0"], "--threads"),
        (["--max-windows", "-3"], "--max-windows"),
        (["--bucket.name", "ab"], "--bucket.name"),
    ],
)
def test_a_malformed_flag_names_the_flag(flags, named):
    with pytest.raises(ConfigError, match=named):
        _config([*BASE_FLAGS, *flags])


def test_a_missing_required_flag_names_it():
    with pytest.raises(ConfigError, match="--netuid"):
        _config(_without(BASE_FLAGS, "--netuid"))
    with pytest.raises(ConfigError, match="--bucket.endpoint"):
        _config(_without(BASE_FLAGS, "--bucket.endpoint"))


def test_exactly_one_chain_backend():
    with pytest.raises(ConfigError, match="exactly one of --subtensor.network or --devchain"):
        _config([*BASE_FLAGS, "--subtensor.network", "finney"])
    with pytest.raises(ConfigError, match="exactly one of --subtensor.network or --devchain"):
        _config(_without(BASE_FLAGS, "--devchain"))
    assert _config([*_without(BASE_FLAGS, "--devchain"), "--subtensor.network", "local"]).network == "local"


def test_an_error_is_one_line():
    with pytest.raises(ConfigError) as info:
        _config([*BASE_FLAGS, "--netuid", "x"])
    assert "\n" not in str(info.value)


def test_secrets_are_absent_from_repr_and_str():
    config = _config(BASE_FLAGS)
    for text in (repr(config), str(config), repr(config.bucket), str(config.bucket)):
        assert WRITE_SECRET not in text and WRITE_KEY_ID not in text and READ_SECRET not in text


def test_secrets_are_absent_from_a_config_error_traceback():
    # Some other setting is wrong while the secrets are set: the full report (chained causes
    # included, as a logger with exc_info would print it) must not carry them.
    # (pydantic elides the middle of long inputs in its messages, so a short secret is the
    # one that would show.)
    short = "s3cr3tW"
    env = {"TESSERA_BUCKET_WRITE_KEY_ID": WRITE_KEY_ID, "TESSERA_BUCKET_WRITE_SECRET": short}
    with pytest.raises(ConfigError) as info:
        _config(BASE_FLAGS, env)
    report = "".join(traceback.format_exception(info.value))
    assert "TESSERA_BUCKET_READ_SECRET" in report
    assert short not in report


def test_secrets_cannot_be_given_as_flags():
    parser = argparse.ArgumentParser()
    add_node_arguments(parser)
    with pytest.raises(SystemExit):
        parser.parse_args([*BASE_FLAGS, "--bucket.write-secret", WRITE_SECRET])
