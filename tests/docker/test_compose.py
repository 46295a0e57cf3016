"""docker/compose.yaml (the devnet) and docker/compose.live.yaml, read as data: each node gets its
own env file, its own wallet (read-only) and state, a GPU when its device is CUDA, and the
devnet bootstraps everything the nodes' settings name (buckets, keys, wallets, chain)."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest
import yaml

DOCKER = Path(__file__).resolve().parents[2] / "docker"
COMPOSE_FILES = ("compose.yaml", "compose.live.yaml")
NODE_ROLES = ("miner", "validator")
SECRET_VARS = ("TESSERA_BUCKET_WRITE_KEY_ID", "TESSERA_BUCKET_WRITE_SECRET", "TESSERA_BUCKET_READ_SECRET")
IMAGE_DEFAULTS = {"TESSERA_WALLET_PATH": "/wallets", "TESSERA_STATE_DIR": "/state"}  # ENV in the Dockerfile


def _interpolate(text: str, env: dict[str, str]) -> str:
    """Compose's ${VAR}, ${VAR:-default} and ${VAR:?error}; $$ is a literal $."""

    def one(match: re.Match[str]) -> str:
        name, op, arg = match.group(1), match.group(2), match.group(3)
        if name in env and env[name] != "":
            return env[name]
        if op == ":?":
            raise AssertionError(f"compose would stop: {arg}")
        return arg or ""

    text = re.sub(r"\$\{(\w+)(?:(:[-?])([^}]*))?\}", one, text.replace("$$", "\0"))
    return text.replace("\0", "$")


def _load(name: str) -> dict:
    # the live file substitutes docker/.env; its committed template stands in for it
    env = _env_file(DOCKER / "env.example") if name == "compose.live.yaml" else {}
    return yaml.safe_load(_interpolate((DOCKER / name).read_text(), env))


def _env_file(path: Path) -> dict[str, str]:
    if not path.exists():  # compose.live.yaml names the operator's copy of the committed template
        path = path.with_name(path.name + ".example")
    pairs = (line.split("=", 1) for line in path.read_text().splitlines() if line and not line.startswith("#"))
    return {key.strip(): value.strip() for key, value in pairs}


def _nodes(compose: dict) -> dict[str, dict]:
    return {name: svc for name, svc in compose["services"].items() if svc.get("command", [None])[0] in NODE_ROLES}


def _node_env(svc: dict) -> dict[str, str]:
    env = dict(IMAGE_DEFAULTS)
    for path in svc["env_file"]:
        env |= _env_file(DOCKER / path)
    return env | {k: str(v) for k, v in (svc.get("environment") or {}).items()}


def _mounts(svc: dict) -> list[dict]:
    mounts = []
    for volume in svc.get("volumes", []):
        if isinstance(volume, str):  # short syntax source:target[:ro]
            parts = volume.split(":")
            mounts.append({"source": parts[0], "target": parts[1], "read_only": parts[2:] == ["ro"]})
        else:
            mounts.append(volume)
    return mounts


def _wallet_mount(svc: dict) -> dict:
    wallets = _node_env(svc)["TESSERA_WALLET_PATH"]
    found = [m for m in _mounts(svc) if m["target"] == wallets or m["target"].startswith(wallets + "/")]
    assert len(found) == 1, f"expected one wallet mount under {wallets}, got {found}"
    return found[0]


def _gpu(svc: dict) -> bool:
    devices = svc.get("deploy", {}).get("resources", {}).get("reservations", {}).get("devices", [])
    return any("gpu" in d.get("capabilities", []) for d in devices)


@pytest.mark.parametrize("name", COMPOSE_FILES)
def test_one_miner_and_one_validator(name: str) -> None:
    roles = sorted(svc["command"][0] for svc in _nodes(_load(name)).values())
    assert roles == ["miner", "validator"]


@pytest.mark.parametrize("name", COMPOSE_FILES)
def test_each_node_mounts_only_its_own_wallet_read_only(name: str) -> None:
    nodes = _nodes(_load(name))
    sources = []
    for node, svc in nodes.items():
        mount = _wallet_mount(svc)
        assert mount.get("read_only") is True, f"{node}: wallet mount {mount} is writable"
        sources.append(mount["source"])
        # the wallet named in the settings is the one mounted
        env = _node_env(svc)
        wallet_dir = f"{env['TESSERA_WALLET_PATH']}/{env['TESSERA_WALLET_NAME']}"
        assert mount["target"] in (env["TESSERA_WALLET_PATH"], wallet_dir), (node, mount)
    assert len(set(sources)) == len(sources), f"nodes share a wallet mount: {sources}"


@pytest.mark.parametrize("name", COMPOSE_FILES)
def test_each_node_has_its_own_state_volume(name: str) -> None:
    compose = _load(name)
    states = []
    for node, svc in _nodes(compose).items():
        state = [m for m in _mounts(svc) if m["target"] == _node_env(svc)["TESSERA_STATE_DIR"]]
        assert len(state) == 1 and not state[0].get("read_only"), (node, state)
        assert state[0]["source"] in compose["volumes"], f"{node}: state is not a named volume"
        states.append(state[0]["source"])
    assert len(set(states)) == len(states)


@pytest.mark.parametrize("name", COMPOSE_FILES)
def test_every_named_volume_is_declared(name: str) -> None:
    compose = _load(name)
    for svc in compose["services"].values():
        for mount in _mounts(svc):
            if mount.get("type", "volume") == "volume":
                assert mount["source"] in compose["volumes"], mount
            else:
                assert mount["source"].startswith("/") or (DOCKER / mount["source"]).exists(), mount


@pytest.mark.parametrize("name", COMPOSE_FILES)
def test_one_env_file_per_node_holding_only_its_own_secrets(name: str) -> None:
    nodes = _nodes(_load(name))
    files = {node: svc["env_file"] for node, svc in nodes.items()}
    assert all(len(f) == 1 for f in files.values()), files
    assert len({f[0] for f in files.values()}) == len(files), f"nodes share an env file: {files}"
    secrets = {}
    for node, svc in nodes.items():
        env = _env_file(DOCKER / svc["env_file"][0])
        assert all(env.get(var) for var in SECRET_VARS), f"{node}: its env file lacks a bucket secret"
        secrets[node] = {env[var] for var in SECRET_VARS} | {env["TESSERA_BUCKET_READ_KEY_ID"]}
        # secrets only from the env file: never in the compose file's command or environment
        inline = json.dumps(svc.get("command")) + json.dumps(svc.get("environment") or {})
        assert not any(var in inline for var in SECRET_VARS), node
    (a, sa), (b, sb) = secrets.items()
    assert not sa & sb, f"{a} and {b} share bucket credentials: {sa & sb}"
    for node, svc in nodes.items():
        text = (DOCKER / svc["env_file"][0]).read_text() if (DOCKER / svc["env_file"][0]).exists() else ""
        others = secrets[b if node == a else a]
        assert not any(value in text for value in others), f"{node}'s env file holds another node's key"


@pytest.mark.parametrize("name", COMPOSE_FILES)
def test_gpu_requested_exactly_where_the_device_is_cuda(name: str) -> None:
    for node, svc in _nodes(_load(name)).items():
        device = _node_env(svc).get("TESSERA_DEVICE", "cpu")
        assert _gpu(svc) == device.startswith("cuda"), f"{node}: device {device}, GPU reserved {_gpu(svc)}"


def test_live_nodes_run_on_a_real_network_with_a_gpu() -> None:
    for node, svc in _nodes(_load("compose.live.yaml")).items():
        env = _node_env(svc)
        assert env.get("TESSERA_SUBTENSOR_NETWORK") and "TESSERA_DEVCHAIN" not in env, node
        assert _gpu(svc), node


# -- the devnet: `docker compose up` must give the nodes everything their settings name ---------


def _devnet() -> tuple[dict, dict[str, dict]]:
    compose = _load("compose.yaml")
    return compose, _nodes(compose)


def test_devnet_s3_keys_match_the_node_settings() -> None:
    compose, nodes = _devnet()
    s3 = compose["services"]["s3"]
    config_mount = next(m for m in _mounts(s3) if m["target"].endswith(".json"))
    assert config_mount.get("read_only") is True
    assert f"-s3.config={config_mount['target']}" in s3["command"]
    identities = json.loads((DOCKER / config_mount["source"]).read_text())["identities"]
    keys = {c["accessKey"]: (c["secretKey"], i["actions"]) for i in identities for c in i["credentials"]}
    for node, svc in nodes.items():
        env = _node_env(svc)
        bucket = env["TESSERA_BUCKET_NAME"]
        secret, actions = keys[env["TESSERA_BUCKET_WRITE_KEY_ID"]]
        assert secret == env["TESSERA_BUCKET_WRITE_SECRET"], node
        assert {f"Read:{bucket}", f"Write:{bucket}", f"List:{bucket}"} <= set(actions), node
        secret, actions = keys[env["TESSERA_BUCKET_READ_KEY_ID"]]
        assert secret == env["TESSERA_BUCKET_READ_SECRET"], node
        assert sorted(actions) == sorted([f"Read:{bucket}", f"List:{bucket}"]), f"{node}: read key can {actions}"


def test_devnet_buckets_are_created_before_the_nodes_start() -> None:
    compose, nodes = _devnet()
    script = " ".join(compose["services"]["buckets"]["command"])
    for node, svc in nodes.items():
        assert _node_env(svc)["TESSERA_BUCKET_NAME"] in script, node
        assert svc["depends_on"]["buckets"]["condition"] == "service_completed_successfully"


def test_devnet_nodes_reach_s3_over_loopback_in_its_network_namespace() -> None:
    compose, nodes = _devnet()
    s3 = compose["services"]["s3"]
    assert "-ip.bind=127.0.0.1" in s3["command"] and "-s3.port=8333" in s3["command"]
    assert compose["services"]["buckets"]["network_mode"] == "service:s3"
    for node, svc in nodes.items():
        assert svc["network_mode"] == "service:s3", node
        assert _node_env(svc)["TESSERA_BUCKET_ENDPOINT"] == "http://127.0.0.1:8333", node


def test_devnet_chain_registers_each_node_wallet_into_the_volume_that_node_mounts() -> None:
    compose, nodes = _devnet()
    devchain = compose["services"]["devchain"]
    script = " ".join(devchain["command"])
    chain_mounts = {m["source"]: m["target"] for m in _mounts(devchain)}
    for node, svc in nodes.items():
        env = _node_env(svc)
        assert svc["depends_on"]["devchain"]["condition"] == "service_completed_successfully"
        wallet_volume = _wallet_mount(svc)["source"]
        written_at = chain_mounts[wallet_volume]
        assert f"--wallet.name {env['TESSERA_WALLET_NAME']} --wallet.path {written_at}" in script, node
        # the chain file the node opens lies in a volume the bootstrap created it in
        chain_file = Path(env["TESSERA_DEVCHAIN"])
        mount = next(m for m in _mounts(svc) if chain_file.is_relative_to(m["target"]))
        assert not mount.get("read_only"), f"{node}: a node writes to the devchain (commitments, weights)"
        created = Path(chain_mounts[mount["source"]]) / chain_file.relative_to(mount["target"])
        assert f"tessera chain create --path {created}" in script, node
    # only the validator is staked (a staked miner would get a validator permit and not be scored)
    validator = next(_node_env(s)["TESSERA_WALLET_NAME"] for s in nodes.values() if s["command"][0] == "validator")
    miner = next(_node_env(s)["TESSERA_WALLET_NAME"] for s in nodes.values() if s["command"][0] == "miner")
    assert re.search(rf"--wallet.name {validator} \S+ \S+ --stake [1-9]", script)
    assert not re.search(rf"--wallet.name {miner} [^\n]*--stake", devchain["command"][0])
