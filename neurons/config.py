"""Node-local settings: CLI flags in bittensor's style, with TESSERA_* environment fallbacks.

Network-wide settings live in hparams; this is only what differs per node (wallet, chain, bucket,
device, paths). Secrets (bucket write key, read secret) come from the environment only, so they
never appear in a process list or a shell history; they are pydantic SecretStr and never logged.
A missing or malformed setting is a one-line ``ConfigError`` that names it, before any work starts.
"""

from __future__ import annotations

import argparse
import os
from pathlib import Path
from typing import Literal

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    SecretStr,
    ValidationError,
    ValidationInfo,
    field_validator,
    model_validator,
)

from neurons.behaviours.kinds import HONEST, KINDS
from protocol.hparams import PRESET_DIR
from protocol.validation import first_problem


class ConfigError(ValueError):
    """A node setting is missing or malformed; the message names the flag or variable."""


class BucketConfig(BaseModel):
    """This node's own bucket: written with the write key, read by peers with the read key."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    endpoint_url: str = Field(min_length=1)
    name: str = Field(min_length=3, max_length=63)
    region: str = "auto"
    write_key_id: SecretStr
    write_secret: SecretStr
    read_key_id: str = Field(min_length=1)
    read_secret: SecretStr


def host_port(value: str, flag: str) -> tuple[str, int]:
    """``HOST:PORT`` (IPv6 hosts in brackets) as a pair; ValueError naming the flag otherwise."""
    host, sep, port = value.rpartition(":")
    host = host.removeprefix("[").removesuffix("]")
    if not sep or not host or not port.isdigit() or not 0 < int(port) < 65536:
        raise ValueError(f"{flag} must be HOST:PORT, got {value!r}")
    return host, int(port)


MAX_STAGES = 64  # what a stage's handshake (pipeline.transport.Hello) can name


class PipelineStageConfig(BaseModel):
    """A miner that is one stage of a pipeline group (docs/pipeline.md "In the network"): it trains
    layers of ``protocol.layers.split_layers`` with its neighbours over TCP and uploads the
    pseudo-gradient of its own layers. The operator names the group and the neighbours."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    group: str = Field(min_length=1, max_length=64, pattern=r"^[A-Za-z0-9._-]+$")
    stage: str = Field(pattern=r"^[0-9]{1,2}/[0-9]{1,2}$")
    listen: str | None = None  # HOST:PORT the upstream stage connects to (every stage but the first)
    next: str | None = None  # HOST:PORT of the downstream stage (every stage but the last)
    timeout: float = Field(default=20.0, gt=0, le=600)

    @property
    def index(self) -> int:
        return int(self.stage.partition("/")[0])

    @property
    def n_stages(self) -> int:
        return int(self.stage.partition("/")[2])

    @property
    def listen_address(self) -> tuple[str, int] | None:
        return host_port(self.listen, "--pipeline.listen") if self.listen is not None else None

    @property
    def next_address(self) -> tuple[str, int] | None:
        return host_port(self.next, "--pipeline.next") if self.next is not None else None

    @model_validator(mode="after")
    def _neighbours(self) -> PipelineStageConfig:
        if not 0 <= self.index < self.n_stages or not 2 <= self.n_stages <= MAX_STAGES:
            raise ValueError(f"--pipeline.stage must be S/N with 0 <= S < N and 2 <= N <= {MAX_STAGES}, got {self.stage!r}")
        if (self.index > 0) != (self.listen is not None):
            raise ValueError("every stage but the first needs --pipeline.listen HOST:PORT (and the first none)")
        if (self.index < self.n_stages - 1) != (self.next is not None):
            raise ValueError("every stage but the last needs --pipeline.next HOST:PORT (and the last none)")
        _ = self.listen_address, self.next_address  # malformed HOST:PORT fails now, naming the flag
        return self


class NodeConfig(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    role: Literal["miner", "validator"]
    netuid: int = Field(ge=0)
    wallet_name: str = "default"
    wallet_hotkey: str = "default"
    wallet_path: Path = Path("~/.bittensor/wallets").expanduser()
    network: str | None = None
    devchain: Path | None = None
    # an archive node for reads of blocks the network's node has pruned (catch-up, join)
    archive_endpoint: str | None = Field(default=None, pattern=r"^wss?://\S+$")
    hparams: str = "tiny"
    bucket: BucketConfig
    state_dir: Path
    data_dir: Path | None = None
    device: str = "cpu"
    threads: int | None = Field(default=None, gt=0)
    # validators: stage-2 measurements per window (scoring.sampling); None measures every candidate
    eval_budget: int | None = Field(default=None, gt=0)
    max_windows: int | None = Field(default=None, gt=0, description="stop after this many windows")
    # Extra wait after an upload slot closes before gathering, to absorb clock skew between the
    # chain's timestamps and the storage server's LastModified.
    gather_grace_seconds: float = Field(default=0.5, ge=0)
    # What a miner does each window (neurons.behaviours): anything but honest is an attack, for
    # proving Gauntlet on a local network; it is refused wherever real stake is at play.
    behaviour: str = HONEST
    # Run although the start-up self-check finds the chain gives this node another role
    # (neurons.selfcheck); storage and wallet failures are never overridden.
    force: bool = False
    # Prometheus endpoint (neurons.metrics): off unless a port is given; loopback unless told otherwise
    metrics_port: int | None = Field(default=None, ge=0, le=65535)
    metrics_address: str = Field(default="127.0.0.1", min_length=1)
    # Multi-process nodes (neurons.distributed, docs/hardware.md): every inner batch is cut into
    # this many micro-batches (default: the torchrun world size; a payload's bits depend on it).
    micro_batches: int | None = Field(default=None, gt=0)
    activation_checkpointing: bool = False  # recompute activations in the backward: less memory, same bits
    memory_check: bool = True  # refuse to start when the computed memory per device does not fit
    pipeline: PipelineStageConfig | None = None  # miners: this node is one stage of a pipeline group

    @field_validator("behaviour")
    @classmethod
    def _behaviour_allowed(cls, value: str, info: ValidationInfo) -> str:
        if value not in KINDS:
            raise ValueError(f"unknown behaviour {value!r}; one of {', '.join(KINDS)}")
        # role and devchain are declared earlier, so they are validated (or missing) by now
        if value != HONEST and (info.data.get("devchain") is None or info.data.get("role") != "miner"):
            raise ValueError(f"{value} is for miners on a local network (--devchain) only; a real chain runs honest miners")
        return value

    @field_validator("hparams")
    @classmethod
    def _hparams_known(cls, value: str) -> str:
        # a bare name is a preset (protocol.hparams.load_hparams); a path is checked when loaded
        if not Path(value).suffix and not (PRESET_DIR / f"{value}.json").is_file():
            raise ValueError(f"unknown preset {value!r}; presets: {', '.join(preset_names())}, or the path of a JSON file")
        return value

    @field_validator("device")
    @classmethod
    def _device_usable(cls, value: str) -> str:
        problem = device_problem(value)
        if problem:
            raise ValueError(problem)
        return value

    @model_validator(mode="after")
    def _one_chain(self) -> NodeConfig:
        if (self.network is None) == (self.devchain is None):
            raise ValueError("give exactly one of --subtensor.network or --devchain")
        if self.archive_endpoint is not None and self.network is None:
            raise ValueError("--subtensor.archive-endpoint goes with --subtensor.network (a devchain keeps every block)")
        if self.pipeline is not None and self.role != "miner":
            raise ValueError("--pipeline.* flags are for miners (a pipeline stage is a miner)")
        if self.pipeline is not None and self.behaviour != HONEST:
            raise ValueError("--behaviour is for whole-model miners; a pipeline stage trains honestly with its group")
        return self


def preset_names() -> list[str]:
    return sorted(p.stem for p in PRESET_DIR.glob("*.json"))


def device_problem(device: str) -> str | None:
    """Why torch cannot use ``device`` on this machine, or None. Checked with the settings so
    a typo or a missing GPU ends the start in one line instead of after the chain commitment."""
    import torch  # the node needs it anyway; config-only commands never validate a NodeConfig

    try:
        parsed = torch.device(device)
    except RuntimeError:
        return f"unknown device {device!r}; use cpu, cuda, cuda:N or mps"
    if parsed.type == "cuda":
        count = torch.cuda.device_count() if torch.cuda.is_available() else 0
        if count == 0:
            return f"device {device!r}: no CUDA GPU is usable here (torch sees none); use cpu"
        if parsed.index is not None and parsed.index >= count:
            return f"device {device!r}: only {count} CUDA GPU(s) here (cuda:0..cuda:{count - 1})"
    elif parsed.type == "mps" and not torch.backends.mps.is_available():
        return f"device {device!r}: MPS is not available here; use cpu"
    elif parsed.type not in ("cpu", "cuda", "mps"):
        return f"device {device!r}: tessera runs on cpu, cuda or mps"
    return None


# flag -> (field, help). Secrets are deliberately absent: environment only.
_FLAGS: dict[str, tuple[str, str]] = {
    "--netuid": ("netuid", "subnet uid"),
    "--wallet.name": ("wallet_name", "wallet (coldkey) name"),
    "--wallet.hotkey": ("wallet_hotkey", "hotkey name"),
    "--wallet.path": ("wallet_path", "wallets directory"),
    "--subtensor.network": ("network", "finney | test | local | ws://..."),
    "--devchain": ("devchain", "path of an embedded devchain SQLite file"),
    "--subtensor.archive-endpoint": ("archive_endpoint", "archive node (ws://... or wss://...) for reads of pruned old blocks"),
    "--hparams": ("hparams", "preset name (tiny, 150M, ...) or path of an hparams JSON"),
    "--bucket.endpoint": ("bucket.endpoint_url", "S3 endpoint URL of this node's bucket"),
    "--bucket.name": ("bucket.name", "this node's bucket"),
    "--bucket.region": ("bucket.region", "S3 region (R2: auto)"),
    "--bucket.read-key-id": ("bucket.read_key_id", "read-only access key id committed on chain"),
    "--state-dir": ("state_dir", "where this node keeps its state across restarts"),
    "--data-dir": ("data_dir", "pre-tokenised shards (default: the embedded corpus)"),
    "--device": ("device", "torch device"),
    "--threads": ("threads", "torch CPU threads"),
    "--validator.eval-budget": ("eval_budget", "validators: stage-2 measurements per window, a secret sample "
                                               "that measures every miner within a few windows (default: all)"),
    "--max-windows": ("max_windows", "stop after this many windows"),
    "--behaviour": ("behaviour", f"miners on a --devchain only: {', '.join(KINDS)} (default {HONEST})"),
    "--metrics.port": ("metrics_port", "serve Prometheus metrics on this port (default: off)"),
    "--metrics.address": ("metrics_address", "address the metrics endpoint binds (default 127.0.0.1)"),
    "--micro-batches": ("micro_batches", "cut every inner batch into this many micro-batches (default: torchrun's world size)"),
    "--activation-checkpointing": ("activation_checkpointing", "true: recompute activations in the backward (less memory)"),
    "--memory-check": ("memory_check", "false: start although the computed memory per device does not fit"),
    "--pipeline.group": ("pipeline.group", "miners: run as one stage of this pipeline group (docs/pipeline.md)"),
    "--pipeline.stage": ("pipeline.stage", "S/N: this miner is stage S of the group's N (0-based)"),
    "--pipeline.listen": ("pipeline.listen", "HOST:PORT the upstream stage connects to (stages S > 0)"),
    "--pipeline.next": ("pipeline.next", "HOST:PORT of the downstream stage (stages S < N-1)"),
    "--pipeline.timeout": ("pipeline.timeout", "seconds a neighbour stage may stay silent (default 20.0)"),
}
_SECRET_ENV = {
    "bucket.write_key_id": "TESSERA_BUCKET_WRITE_KEY_ID",
    "bucket.write_secret": "TESSERA_BUCKET_WRITE_SECRET",
    "bucket.read_secret": "TESSERA_BUCKET_READ_SECRET",
}


def _env_name(flag: str) -> str:
    return "TESSERA_" + flag.lstrip("-").replace(".", "_").replace("-", "_").upper()


# Defaults that are not a plain field default (computed per role), shown in --help.
_SHOWN_DEFAULTS = {"state_dir": "~/.tessera/<role>", "wallet_path": "~/.bittensor/wallets"}

SECRETS_HELP = """secrets (environment only, never flags, never logged):
  TESSERA_BUCKET_WRITE_KEY_ID   access key id of this node's read-write bucket key
  TESSERA_BUCKET_WRITE_SECRET   its secret; stays on this machine
  TESSERA_BUCKET_READ_SECRET    secret of the read-only key (--bucket.read-key-id), committed on
                                chain so peers can read this node's bucket
every flag also reads TESSERA_<FLAG> (e.g. TESSERA_NETUID); a flag wins over its variable.
`tessera doctor` runs the start-up self-check without starting a node."""


def _default_text(field: str) -> str:
    if field in _SHOWN_DEFAULTS:
        return f", default {_SHOWN_DEFAULTS[field]}"
    model = BucketConfig if field.startswith("bucket.") else NodeConfig
    info = model.model_fields.get(field.rpartition(".")[2])
    if info is None or info.is_required() or info.default is None:
        return ""
    return f", default {info.default}"


def add_node_arguments(parser: argparse.ArgumentParser) -> None:
    for flag, (field, help_text) in _FLAGS.items():
        # dest is the flag itself (dots and all); without a metavar help would print "--netuid --NETUID"
        metavar = flag.rpartition(".")[2].lstrip("-").replace("-", "_").upper()
        parser.add_argument(
            flag, dest=flag, default=None, metavar=metavar,
            help=f"{help_text} (env {_env_name(flag)}{'' if 'default' in help_text else _default_text(field)})",
        )
    parser.add_argument(
        "--force", dest="--force", action="store_true",
        help="start even if the self-check finds the chain gives this hotkey another role than asked",
    )
    parser.epilog = SECRETS_HELP
    parser.formatter_class = argparse.RawDescriptionHelpFormatter


def _set(tree: dict, dotted: str, value: object) -> None:
    head, _, rest = dotted.partition(".")
    if rest:
        _set(tree.setdefault(head, {}), rest, value)
    else:
        tree[head] = value


def node_config_from_args(role: str, args: argparse.Namespace, env: dict[str, str] | None = None) -> NodeConfig:
    """Merge flags (first) and TESSERA_* variables into a validated NodeConfig."""
    env = dict(os.environ) if env is None else env
    raw: dict = {"role": role}
    for flag, (field, _) in _FLAGS.items():
        value = getattr(args, flag, None)
        if value is None:
            value = env.get(_env_name(flag))
        if value is not None:
            _set(raw, field, value)
    for field, var in _SECRET_ENV.items():
        if var in env:
            _set(raw, field, env[var])
    if getattr(args, "--force", False):
        raw["force"] = True
    raw.setdefault("state_dir", str(Path("~/.tessera").expanduser() / role))
    try:
        return NodeConfig.model_validate(raw)
    except ValidationError as exc:
        where, msg = first_problem(exc, "config")
        # from None: the ValidationError's own text echoes the raw input, secrets included
        raise ConfigError(f"invalid node setting {where}: {msg} ({_hint(where)})") from None


def _hint(field: str) -> str:
    for flag, (name, _) in _FLAGS.items():
        if name == field:
            return f"flag {flag} or env {_env_name(flag)}"
    for name, var in _SECRET_ENV.items():
        if name == field:
            return f"env {var}"
    return "see --help"
