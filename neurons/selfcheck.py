"""The start-up self-check, and ``tessera doctor`` which runs it alone.

Everything a node needs from the outside world is tried before anything is committed on chain,
so a wrong setting ends the start in seconds with a line that names the flag or variable to fix,
instead of a bad bucket committed for every peer to read and a failure a training window later:

- the wallet's hotkey loads; the chain answers, serves ``--netuid`` and has the hotkey registered;
- the network's role rule (``protocol.roles``) gives the hotkey the role it is started as
  (a miner nobody would score, a validator whose weights would not count: ``--force`` overrides
  only this one);
- the commitment fits on chain; the write key lists the bucket, puts a probe object and reads it
  back; the read-only key that is about to be committed reads the probe through the very store
  peers will build from the commitment, and cannot write; the probe is deleted.

Each check is a ``Check``; ``preflight`` (node start) raises ``SelfCheckFailed`` with the
failed ones, ``tessera doctor`` prints them all.
"""

from __future__ import annotations

import logging
import secrets
import socket
import time
from collections.abc import Callable
from dataclasses import dataclass, field

from neurons.behaviours.kinds import HONEST
from neurons.config import ConfigError, NodeConfig
from protocol.chain import Chain, ChainError, Metagraph
from protocol.commitment import BucketCommitment
from protocol.hparams import Hparams
from protocol.signing import HotkeySigner, SigningError
from storage.endpoints import EndpointPolicy
from storage.errors import (
    AccessDenied,
    BucketNotFound,
    EndpointRefused,
    ObjectExists,
    StorageError,
    StorageUnavailable,
)
from storage.retry import RetryPolicy
from storage.s3 import S3Store
from storage.store import ObjectStore

log = logging.getLogger(__name__)

PROBE_PREFIX = "tessera-selfcheck"
# Every chain call and storage operation of the check ends well inside the 10 s an operator
# should wait for a verdict; a live node's own clients keep their longer, window-sized limits.
CHAIN_TIMEOUT_S = 8.0
STORAGE_DEADLINE_S = 5.0
_QUICK_RETRY = RetryPolicy(attempts=2, base_delay=0.1, max_delay=0.5)

WRITE_KEY_ID = "TESSERA_BUCKET_WRITE_KEY_ID"
WRITE_SECRET = "TESSERA_BUCKET_WRITE_SECRET"
READ_SECRET = "TESSERA_BUCKET_READ_SECRET"


class StartupError(ConfigError):
    """A node cannot start as configured: a setting names something that does not work (a bucket
    the key cannot write, a hotkey the chain does not know); the message says what to fix."""


@dataclass(frozen=True)
class Check:
    name: str
    ok: bool
    detail: str
    fix: str = ""
    forceable: bool = False  # a role mismatch: --force starts the node anyway

    def line(self) -> str:
        if self.ok:
            return f"ok    {self.name}: {self.detail}"
        return f"FAIL  {self.name}: {self.detail} -- fix: {self.fix}"


class SelfCheckFailed(StartupError):
    def __init__(self, failed: list[Check]) -> None:
        self.failed = failed
        super().__init__("; ".join(f"{c.name}: {c.detail} -- fix: {c.fix}" for c in failed))


def preflight(config: NodeConfig, hparams: Hparams) -> list[Check]:
    """Node start: every check; raise ``SelfCheckFailed`` unless all pass (or only role checks
    fail and ``--force`` was given, which is logged as a warning)."""
    if config.behaviour != HONEST:
        # a local network's attacker (some serve a stalling endpoint on purpose) is judged by the
        # validators, not stopped by its own start-up
        log.info("self-check skipped: behaviour %s", config.behaviour)
        return []
    checks = run_checks(config, hparams)
    failed = []
    for check in checks:
        if check.ok:
            continue
        if check.forceable and config.force:
            log.warning("self-check: %s: %s (starting anyway: --force)", check.name, check.detail)
        else:
            failed.append(check)
    if failed:
        raise SelfCheckFailed(failed)
    log.info("self-check passed: %s", "; ".join(f"{c.name}: {c.detail}" for c in checks if c.ok))
    return checks


def run_checks(config: NodeConfig, hparams: Hparams) -> list[Check]:
    """Every check in order; a check whose prerequisite failed is left out, not reported twice."""
    return [*pipeline_checks(config, hparams), *chain_checks(config, hparams), *bucket_checks(config)]


# --- a pipeline stage ------------------------------------------------------------------------


def pipeline_checks(config: NodeConfig, hparams: Hparams) -> list[Check]:
    """A stage miner (``--pipeline.*``): its slice exists for this model, and its listening port
    can be bound. Both would otherwise fail only after the bucket commitment."""
    from protocol.layers import StageLayoutError, split_layers

    cfg = config.pipeline
    if cfg is None:
        return []
    try:
        if hparams.model.tie_embeddings:
            raise StageLayoutError(f"{hparams.name} ties its embeddings: one parameter would sit on two stages")
        span = split_layers(hparams.model.num_layers, cfg.n_stages)[cfg.index]
    except StageLayoutError as exc:
        return [Check("pipeline stage", False, str(exc), "--pipeline.stage S/N with N <= the preset's layers, "
                      "or a preset with untied embeddings")]
    out = [Check("pipeline stage", True, f"stage {cfg.stage} of group {cfg.group} holds {span.label}")]
    listen = cfg.listen_address
    if listen is not None:
        try:
            with socket.create_server(listen):
                pass
        except OSError as exc:
            return [*out, Check("pipeline port", False, f"cannot listen on {cfg.listen}: {exc}",
                                "--pipeline.listen HOST:PORT, a local address and a free port")]
        out.append(Check("pipeline port", True, f"{cfg.listen} is free"))
    return out


# --- wallet and chain ------------------------------------------------------------------------


def _wallet_fix(config: NodeConfig) -> str:
    return (f"--wallet.name/--wallet.hotkey/--wallet.path (now {config.wallet_name}/{config.wallet_hotkey} "
            f"in {config.wallet_path}); create one with `btcli wallet create`")


def load_signer(config: NodeConfig) -> HotkeySigner:
    import bittensor  # ~1 s to import; only a node or doctor needs it

    wallet = bittensor.Wallet(name=config.wallet_name, hotkey=config.wallet_hotkey, path=str(config.wallet_path))
    return HotkeySigner(wallet)


def open_checked_chain(config: NodeConfig) -> Chain:
    """The configured chain with short call limits (the check must answer within seconds)."""
    if config.devchain is not None:
        from protocol.devchain import DevChain

        return DevChain(config.devchain, config.netuid)
    from protocol.chain_bittensor import BittensorChain

    return BittensorChain(str(config.network), config.netuid, timeout=CHAIN_TIMEOUT_S)


def chain_fix(config: NodeConfig, exc: ChainError) -> str:
    """Which setting a chain failure points at."""
    text = str(exc)
    if "netuid" in text and ("serves" in text or "does not exist" in text):
        return "--netuid (TESSERA_NETUID): the subnet this chain serves"
    if config.devchain is not None:
        return f"--devchain (TESSERA_DEVCHAIN): {config.devchain} must be a devchain made by `tessera chain create`"
    return "--subtensor.network (TESSERA_SUBTENSOR_NETWORK): finney | test | local | ws://host:port of a reachable node"


def _register_fix(config: NodeConfig, hotkey: str) -> str:
    if config.devchain is not None:
        return (f"register it: tessera chain register --path {config.devchain} --wallet.name {config.wallet_name} "
                f"--wallet.hotkey {config.wallet_hotkey} (or pick a registered --wallet.hotkey)")
    return (f"register it: btcli subnets register --netuid {config.netuid} --hotkey "
            f"{config.wallet_name}/{config.wallet_hotkey} (or pick a registered --wallet.hotkey)")


def chain_checks(config: NodeConfig, hparams: Hparams) -> list[Check]:
    try:
        signer: HotkeySigner | None = load_signer(config)
        out = [Check("wallet", True, f"hotkey {signer.hotkey}")]
    except SigningError as exc:
        signer, out = None, [Check("wallet", False, f"hotkey not loadable ({exc})", _wallet_fix(config))]
    try:
        chain = open_checked_chain(config)
    except ChainError as exc:
        return [*out, Check("chain", False, str(exc), chain_fix(config, exc))]
    try:
        metagraph = chain.metagraph()
        out.append(Check("chain", True, f"netuid {config.netuid} at block {metagraph.block}, "
                                        f"{len(metagraph.neurons)} neurons"))
        if signer is not None:
            out.extend(_identity_checks(config, hparams, metagraph, signer.hotkey))
    except ChainError as exc:
        out.append(Check("chain", False, str(exc), chain_fix(config, exc)))
    finally:
        close = getattr(chain, "close", None)
        if close is not None:
            close()
    return out


def _identity_checks(config: NodeConfig, hparams: Hparams, metagraph: Metagraph, hotkey: str) -> list[Check]:
    from protocol.roles import excluded_reason

    uid = metagraph.uid_of(hotkey)
    if uid is None:
        return [Check("registration", False, f"hotkey {hotkey} is not registered on netuid {config.netuid}",
                      _register_fix(config, hotkey))]
    out = [Check("registration", True, f"uid {uid}")]
    why = excluded_reason(metagraph, uid, hparams, hparams.scoring.burn_uid, config.role)
    if why is None:
        out.append(Check("role", True, f"the network's rule makes uid {uid} a {config.role}"))
    else:
        other = "validator" if config.role == "miner" else "miner"
        out.append(Check("role", False, why, f"run `tessera {other}` with this hotkey, use another --wallet.hotkey "
                                              "(or stake: see docs), or pass --force", forceable=True))
    return out


# --- bucket ----------------------------------------------------------------------------------


def _denied_fix(exc: AccessDenied, key_id: str, secret: str, what: str, otherwise: str = "") -> str:
    """S3 names the refused part in its error code, which the typed error's message keeps."""
    text = str(exc)
    if "InvalidAccessKeyId" in text:
        return f"{key_id}: no such access key on this server"
    if "SignatureDoesNotMatch" in text:
        return f"{secret}: it does not belong to the key id"
    return f"{key_id} / {secret}: give a key that may {what} this bucket{otherwise}"


def write_store(config: NodeConfig) -> S3Store:
    b = config.bucket
    return S3Store(
        endpoint_url=b.endpoint_url, bucket=b.name, region=b.region,
        access_key_id=b.write_key_id.get_secret_value(), secret_access_key=b.write_secret.get_secret_value(),
        connect_timeout=3.0, read_timeout=STORAGE_DEADLINE_S, retry=_QUICK_RETRY,
    )


def commitment_of(config: NodeConfig) -> BucketCommitment:
    b = config.bucket
    return BucketCommitment(
        endpoint_url=b.endpoint_url, bucket=b.name, region=b.region,
        access_key_id=b.read_key_id, secret_access_key=b.read_secret.get_secret_value(),
    )


def peer_view(config: NodeConfig, commitment: BucketCommitment) -> ObjectStore:
    """The store a peer builds from our commitment, under a peer's endpoint policy."""
    from neurons.peers import read_only_store

    policy = EndpointPolicy(allow_loopback=config.devchain is not None)
    return read_only_store(BucketCommitment.decode(commitment.encode()), policy)


def _deadline() -> float:
    return time.monotonic() + STORAGE_DEADLINE_S


@dataclass
class _Probe:
    """One run's probe object: a key no protocol prefix uses, unique per attempt."""

    key: str = field(default_factory=lambda: f"{PROBE_PREFIX}/{secrets.token_hex(8)}")
    body: bytes = field(default_factory=lambda: secrets.token_bytes(32))


def bucket_checks(config: NodeConfig) -> list[Check]:
    try:
        commitment = commitment_of(config)
        text = commitment.encode()
    except ValueError as exc:
        return [Check("commitment", False, str(exc).splitlines()[0],
                      "--bucket.endpoint/--bucket.name/--bucket.read-key-id/TESSERA_BUCKET_READ_SECRET: "
                      "the read-only credentials must fit the chain's 128-byte commitment")]
    out = [Check("commitment", True, f"{len(text)} bytes")]
    try:
        store = write_store(config)
    except EndpointRefused as exc:
        return [*out, Check("bucket", False, str(exc), "--bucket.endpoint / --bucket.region")]
    probe = _Probe()
    write = _write_checks(config, store, probe)
    out.extend(write)
    if not all(c.ok for c in write):
        return out
    try:
        out.extend(_read_checks(config, commitment, store, probe))
    finally:
        out.append(_cleanup(store, probe))
    return out


def _write_checks(config: NodeConfig, store: S3Store, probe: _Probe) -> list[Check]:
    b = config.bucket
    where = f"{b.endpoint_url} bucket {b.name}"
    try:
        store.list(PROBE_PREFIX + "/", deadline=_deadline())
    except StorageUnavailable as exc:
        return [Check("bucket", False, f"{where} unreachable ({exc})", "--bucket.endpoint (TESSERA_BUCKET_ENDPOINT)")]
    except BucketNotFound:
        return [Check("bucket", False, f"bucket {b.name} does not exist at {b.endpoint_url}",
                      "--bucket.name (TESSERA_BUCKET_NAME), or create the bucket")]
    except AccessDenied as exc:
        return [Check("write key", False, f"the write key may not list {where} ({exc})",
                      _denied_fix(exc, WRITE_KEY_ID, WRITE_SECRET, "list",
                                  "; or --bucket.name (TESSERA_BUCKET_NAME) if it does not exist"))]
    except StorageError as exc:
        return [Check("bucket", False, f"{where}: {exc}", "--bucket.endpoint / --bucket.region")]
    out = [Check("bucket", True, f"{where} reachable")]
    try:
        store.put(probe.key, probe.body)
        back = store.get(probe.key, len(probe.body), deadline=_deadline())
    except AccessDenied as exc:
        return [*out, Check("write key", False, f"the write key cannot put into {b.name} ({exc})",
                            _denied_fix(exc, WRITE_KEY_ID, WRITE_SECRET, "write to"))]
    except StorageError as exc:
        return [*out, Check("write key", False, f"probe put/get in {b.name} failed ({exc})",
                            "the bucket's server; retry `tessera doctor`")]
    if back != probe.body:
        return [*out, Check("write key", False, f"probe read back from {b.name} differs from what was put",
                            "--bucket.endpoint: the server does not store objects faithfully")]
    return [*out, Check("write key", True, "put and read back a probe object")]


def _read_checks(config: NodeConfig, commitment: BucketCommitment, store: S3Store, probe: _Probe) -> list[Check]:
    key_id, b = f"--bucket.read-key-id (now {config.bucket.read_key_id})", config.bucket
    try:
        reader = peer_view(config, commitment)
        reader.list(PROBE_PREFIX + "/", deadline=_deadline())  # a listing's error names the refused part
        back = reader.get(probe.key, len(probe.body), deadline=_deadline())
    except EndpointRefused as exc:
        return [Check("read key", False, f"peers would refuse the endpoint ({exc})",
                      "--bucket.endpoint: a public address (private and loopback ones are for --devchain only)")]
    except AccessDenied as exc:
        return [Check("read key", False, f"the read key committed on chain cannot read {b.name} ({exc})",
                      _denied_fix(exc, key_id, READ_SECRET, "read"))]
    except StorageError as exc:
        return [Check("read key", False, f"peers could not read the probe ({exc})", f"{key_id} / {READ_SECRET}")]
    if back != probe.body:
        return [Check("read key", False, "the read key reads another object than the write key put",
                      f"--bucket.endpoint / --bucket.name: both keys must name the same bucket ({key_id})")]
    return [Check("read key", True, "peers can read the probe with the committed key"), _read_only(config, reader, store, probe)]


def _read_only(config: NodeConfig, reader: ObjectStore, store: S3Store, probe: _Probe) -> Check:
    """The committed key is public: if it can write, anyone can overwrite or delete our payloads."""
    key = probe.key + "-readonly"
    try:
        reader.put(key, b"must be refused")
    except AccessDenied:
        return Check("read-only", True, "the committed key cannot write")
    except ObjectExists:  # another key by that name: the write was refused for a different reason
        return Check("read-only", True, "the committed key cannot write")
    except StorageError as exc:
        return Check("read-only", False, f"could not tell whether the committed key can write ({exc})",
                     "retry `tessera doctor`")
    _quietly(lambda: store.delete(key))
    return Check("read-only", False, f"the key committed on chain ({config.bucket.read_key_id}) can WRITE to "
                 f"{config.bucket.name}: anyone could overwrite this node's payloads",
                 f"--bucket.read-key-id / {READ_SECRET}: a read-only key (R2: 'Object Read only' token)")


def _cleanup(store: S3Store, probe: _Probe) -> Check:
    try:
        store.delete(probe.key)
    except AccessDenied as exc:
        return Check("delete", False, f"the write key cannot delete ({exc}); old windows would never be pruned",
                     _denied_fix(exc, WRITE_KEY_ID, WRITE_SECRET, "delete in"))
    except StorageError as exc:
        return Check("delete", False, f"probe {probe.key} not deleted ({exc})", "retry `tessera doctor`")
    return Check("delete", True, "probe deleted")


def _quietly(action: Callable[[], None]) -> None:
    try:
        action()
    except StorageError as exc:
        log.warning("self-check cleanup failed: %s", exc)


# --- tessera doctor --------------------------------------------------------------------------


def doctor(args) -> int:
    """``tessera doctor``: every check, one line each; exit 0 when all pass, 2 otherwise."""
    import sys

    from neurons.config import node_config_from_args
    from protocol.hparams import load_hparams

    config = node_config_from_args(args.role, args)  # a ConfigError is one line at the CLI boundary
    checks = run_checks(config, load_hparams(config.hparams))
    for check in checks:
        print(check.line(), file=sys.stdout if check.ok else sys.stderr)
    failed = [c for c in checks if not c.ok]
    print(f"{len(checks) - len(failed)} of {len(checks)} checks passed", file=sys.stdout)
    return 2 if failed else 0


def configure(parser) -> None:
    from neurons.config import add_node_arguments

    parser.add_argument("--role", choices=("miner", "validator"), required=True,
                        help="the role the node would be started as")
    add_node_arguments(parser)
    parser.set_defaults(func=doctor)
