"""The start-up self-check and ``tessera doctor``, against a real S3 server (SeaweedFS on
loopback) and a devchain: every bad setting ends the start within seconds, before anything is
written on chain, with one line on stderr that names the flag or variable to fix."""

from __future__ import annotations

import socket
import time
from dataclasses import dataclass
from pathlib import Path

import pytest

from neurons import cli
from neurons.config import NodeConfig
from neurons.localnet.seaweedfs import READ_ONLY, READ_WRITE, Identity, SeaweedServer
from neurons.selfcheck import PROBE_PREFIX, SelfCheckFailed, preflight
from protocol.devchain import DevChain
from protocol.hparams import load_hparams
from protocol.signing import HotkeySigner, create_wallet

BUCKET = "node-bucket"
NETUID = 7
START_LIMIT_S = 10.0  # the bound for a failed start


@dataclass(frozen=True)
class Net:
    chain: Path
    wallets: Path
    server: SeaweedServer
    writer: Identity
    reader: Identity


@pytest.fixture(scope="module")
def net(tmp_path_factory: pytest.TempPathFactory):
    root = tmp_path_factory.mktemp("selfcheck")
    chain = DevChain.create(root / "chain.sqlite", netuid=NETUID, block_time=0.02)
    wallets = root / "wallets"
    for name, stake in (("owner", 0.0), ("miner", 0.0), ("validator", 100.0)):  # uid 0: the owner
        wallet = create_wallet(name, "default", wallets)
        chain.register(HotkeySigner(wallet), wallet.coldkeypub.ss58_address, stake=stake)
    create_wallet("stranger", "default", wallets)  # a wallet that is not registered
    writer = Identity.generate("writer", READ_WRITE, [BUCKET])
    reader = Identity.generate("reader", READ_ONLY, [BUCKET])
    # writes every bucket: with a key scoped to one bucket, SeaweedFS answers AccessDenied
    # (not NoSuchBucket) for any other name, as a scoped R2 token would
    anywhere = Identity.generate("anywhere", READ_WRITE)
    with SeaweedServer(root / "s3", [writer, reader, anywhere], [BUCKET]) as server:
        yield Net(chain.path, wallets, server, writer, reader)


def closed_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def flags(net: Net, over: dict[str, str | None] | None = None) -> list[str]:
    """Node flags of a good setup (a registered miner, its bucket), with ``over`` replacing some
    (None drops a flag)."""
    values = {
        "--netuid": str(NETUID), "--devchain": str(net.chain), "--wallet.name": "miner",
        "--wallet.path": str(net.wallets), "--bucket.endpoint": net.server.endpoint_url,
        "--bucket.name": BUCKET, "--bucket.region": "us-east-1", "--bucket.read-key-id": net.reader.access_key,
    }
    values.update(over or {})
    out = []
    for flag, value in values.items():
        if value is not None:
            out += [flag, value]
    return out


@pytest.fixture
def env(net: Net, monkeypatch: pytest.MonkeyPatch, tmp_path: Path):
    """The three secrets in the environment (as an operator sets them); returns a setter."""
    for name in list(__import__("os").environ):
        if name.startswith("TESSERA_"):
            monkeypatch.delenv(name)
    monkeypatch.setenv("TESSERA_STATE_DIR", str(tmp_path / "state"))
    secrets = {
        "TESSERA_BUCKET_WRITE_KEY_ID": net.writer.access_key,
        "TESSERA_BUCKET_WRITE_SECRET": net.writer.secret_key,
        "TESSERA_BUCKET_READ_SECRET": net.reader.secret_key,
    }
    for name, value in secrets.items():
        monkeypatch.setenv(name, value)
    return monkeypatch.setenv


def start(argv: list[str], capsys) -> tuple[int, list[str], float]:
    began = time.monotonic()
    code = cli.main(argv)
    took = time.monotonic() - began
    return code, capsys.readouterr().err.strip().splitlines(), took


def assert_failed_start(net: Net, argv: list[str], capsys, fix: str, lines: int = 1) -> str:
    """The start fails in time with ``lines`` lines on stderr (one per problem), the first naming ``fix``."""
    code, err, took = start(argv, capsys)
    assert code == 2
    assert len(err) == lines, err
    assert fix in err[0], err[0]
    assert not any("Traceback" in line for line in err)
    assert took < START_LIMIT_S
    assert DevChain(net.chain).commitments() == {}  # nothing was committed on chain
    return err[0]


# --- one test per bad setting ------------------------------------------------------------------


def test_missing_wallet(net, env, capsys):
    line = assert_failed_start(net, ["miner", *flags(net, {"--wallet.name": "nobody"})], capsys, "--wallet.name")
    assert "self-check wallet" in line


def test_unregistered_wallet(net, env, capsys):
    line = assert_failed_start(net, ["miner", *flags(net, {"--wallet.name": "stranger"})], capsys, "tessera chain register")
    assert "not registered on netuid 7" in line


def test_wrong_netuid(net, env, capsys):
    assert_failed_start(net, ["validator", *flags(net, {"--wallet.name": "validator", "--netuid": "3"})], capsys, "--netuid")


def test_unknown_hparams_lists_presets(net, env, capsys):
    line = assert_failed_start(net, ["miner", *flags(net, {"--hparams": "huge"})], capsys, "--hparams")
    assert "tiny" in line and "150M" in line


def test_bad_device(net, env, capsys):
    assert_failed_start(net, ["miner", *flags(net, {"--device": "gpu"})], capsys, "--device")


def test_unreachable_chain(net, env, capsys):
    argv = ["miner", *flags(net, {"--devchain": None}), "--subtensor.network", f"ws://127.0.0.1:{closed_port()}"]
    # the second line: on a real network, peers refuse this test's loopback bucket endpoint
    line = assert_failed_start(net, argv, capsys, "--subtensor.network", lines=2)
    assert "cannot connect" in line


def test_missing_devchain(net, env, capsys, tmp_path):
    assert_failed_start(net, ["miner", *flags(net, {"--devchain": str(tmp_path / "none.sqlite")})], capsys, "--devchain")


def test_wrong_write_secret(net, env, capsys):
    env("TESSERA_BUCKET_WRITE_SECRET", "x" * 40)
    line = assert_failed_start(net, ["miner", *flags(net)], capsys, "TESSERA_BUCKET_WRITE_SECRET")
    assert net.writer.secret_key not in line


def test_unknown_write_key_id(net, env, capsys):
    env("TESSERA_BUCKET_WRITE_KEY_ID", "TSNOSUCHKEY000000000")
    assert_failed_start(net, ["miner", *flags(net)], capsys, "TESSERA_BUCKET_WRITE_KEY_ID")


def test_missing_bucket(net, env, capsys):
    anywhere = net.server.identity("anywhere")
    env("TESSERA_BUCKET_WRITE_KEY_ID", anywhere.access_key)
    env("TESSERA_BUCKET_WRITE_SECRET", anywhere.secret_key)
    line = assert_failed_start(net, ["miner", *flags(net, {"--bucket.name": "no-such-bucket"})], capsys, "--bucket.name")
    assert "does not exist" in line


def test_unreachable_endpoint(net, env, capsys):
    argv = ["miner", *flags(net, {"--bucket.endpoint": f"http://127.0.0.1:{closed_port()}"})]
    line = assert_failed_start(net, argv, capsys, "--bucket.endpoint")
    assert "unreachable" in line


def test_wrong_read_key_id(net, env, capsys):
    line = assert_failed_start(net, ["miner", *flags(net, {"--bucket.read-key-id": "TSWRONGREADKEY000000"})], capsys, "--bucket.read-key-id")
    assert "self-check read key" in line


def test_wrong_read_secret(net, env, capsys):
    env("TESSERA_BUCKET_READ_SECRET", "y" * 40)
    assert_failed_start(net, ["miner", *flags(net)], capsys, "TESSERA_BUCKET_READ_SECRET")


def test_a_read_key_that_can_write_is_refused(net, env, capsys):
    # the write key committed as the "read-only" one: anyone could overwrite this node's payloads
    env("TESSERA_BUCKET_READ_SECRET", net.writer.secret_key)
    line = assert_failed_start(net, ["miner", *flags(net, {"--bucket.read-key-id": net.writer.access_key})], capsys, "read-only key")
    assert "can WRITE" in line
    assert net.server.store(net.writer, BUCKET).list(PROBE_PREFIX + "/") == []  # its probe was removed too


def test_a_validator_without_permit_or_stake_is_refused_unless_forced(net, env, capsys):
    line = assert_failed_start(net, ["validator", *flags(net)], capsys, "--force")
    assert "self-check role" in line and "no validator permit" in line


def test_a_staked_validator_started_as_miner_passes_until_it_sets_weights(net, env):
    # the network's rule (protocol.roles): a miner is whoever sets no weights, stake or not
    config = _config(net, "miner", over={"--wallet.name": "validator"})
    assert preflight(config, load_hparams("tiny"))


def test_force_starts_despite_the_role(net, env):
    hparams = load_hparams("tiny")
    with pytest.raises(SelfCheckFailed) as info:
        preflight(_config(net, "validator"), hparams)
    assert [c.name for c in info.value.failed] == ["role"]
    checks = preflight(_config(net, "validator", force=True), hparams)
    assert [c.name for c in checks if not c.ok] == ["role"]


# --- doctor ------------------------------------------------------------------------------------


def test_doctor_passes_a_good_setup_and_leaves_nothing_behind(net, env, capsys):
    code = cli.main(["doctor", "--role", "miner", *flags(net)])
    out = capsys.readouterr()
    assert code == 0, out.err
    names = [line.split(":")[0].split()[-1] for line in out.out.splitlines() if line.startswith("ok")]
    for name in ("wallet", "chain", "registration", "role", "commitment", "bucket", "key", "read-only", "delete"):
        assert name in names
    assert out.err == ""
    assert net.server.store(net.writer, BUCKET).list(PROBE_PREFIX + "/") == []
    assert DevChain(net.chain).commitments() == {}


def test_doctor_reports_every_failure(net, env, capsys):
    env("TESSERA_BUCKET_WRITE_SECRET", "x" * 40)
    code = cli.main(["doctor", "--role", "miner", *flags(net, {"--wallet.name": "stranger"})])
    err = capsys.readouterr().err.splitlines()
    assert code == 2
    assert [line.split(":")[0] for line in err] == ["FAIL  registration", "FAIL  write key"]


def test_log_level_debug_after_the_command_adds_the_traceback(net, env, capsys, caplog):
    with caplog.at_level("DEBUG", logger="tessera"):
        code = cli.main(["miner", *flags(net, {"--wallet.name": "nobody"}), "--log-level", "DEBUG"])
    assert code == 2
    assert len(capsys.readouterr().err.strip().splitlines()) == 1
    assert any(r.exc_info for r in caplog.records if r.name == "tessera")


def _config(net: Net, role: str, force: bool = False, over: dict[str, str] | None = None) -> NodeConfig:
    import argparse

    from neurons.config import add_node_arguments, node_config_from_args

    parser = argparse.ArgumentParser()
    add_node_arguments(parser)
    argv = flags(net, over) + (["--force"] if force else [])
    return node_config_from_args(role, parser.parse_args(argv))
