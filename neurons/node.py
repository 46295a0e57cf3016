"""What miners and validators share: building a node from its config, and keeping θ in step.

A node holds θ_w (``node.window`` = w): the model after every window before w was applied. It
gets there by loading local state, or the newest majority-confirmed validator checkpoint, or θ0,
and then replaying each missing window with the very same gather + outer step used live.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path

import bittensor
import torch

from compression import CodecParams
from compression.budget import PayloadCapError, check_payload_cap
from neurons import metrics
from neurons.config import NodeConfig
from neurons.dataset import open_run_data
from neurons.distributed import (
    STOP,
    Command,
    World,
    check_micro_batches,
    close_world,
    follow,
    init_world,
    send,
)
from neurons.events import EventLog, WindowRecord
from neurons.fingerprint import model_fingerprint
from neurons.gather import UpdateLimits, WindowGather, apply_gather, gather_window
from neurons.memory import MemoryEstimate, check_memory, device_memory, local_world_size
from neurons.model import build_model, param_shapes
from neurons.peers import CATCH_UP_OPEN_PATIENCE_SECONDS, PeerDirectory
from neurons.progress import progress
from neurons.run_origin import load_origin
from neurons.selfcheck import preflight
from neurons.shards import TokenShards
from neurons.state import restore_node_state
from protocol.acceptance import parameter_norms
from protocol.chain import Chain, ChainError, NotRegisteredError
from protocol.chain_factory import open_chain
from protocol.clock import WindowClock
from protocol.commitment import BucketCommitment
from protocol.devchain import DevChain
from protocol.fingerprint_record import FingerprintRecord
from protocol.hparams import Hparams, HparamsError, load_hparams
from protocol.keys import (
    checkpoint_prefix,
    fingerprint_key,
    fingerprint_prefix,
    payload_prefix,
    window_of_key,
)
from protocol.origin import RunOrigin
from protocol.roles import excluded_reason
from protocol.signing import HotkeySigner
from storage import ObjectExists, ObjectStore, StorageError
from storage.endpoints import EndpointPolicy
from storage.retention import prune_old_windows
from storage.s3 import S3Store

log = logging.getLogger(__name__)


@dataclass
class Node:
    config: NodeConfig
    hparams: Hparams
    chain: Chain
    signer: HotkeySigner
    uid: int
    clock: WindowClock
    store: ObjectStore
    peers: PeerDirectory
    model: torch.nn.Module
    shapes: dict[str, tuple[int, ...]]
    events: EventLog
    stop: threading.Event
    window: int = 0
    extra_state: dict[str, torch.Tensor] = field(default_factory=dict)
    origin: RunOrigin | None = None  # None only for nodes assembled by hand (tests): origin block 0
    world: World = field(default_factory=World)  # this node's processes (torchrun); rank 0 is this one

    @property
    def name(self) -> str:
        return f"{self.config.role}-{self.uid}"

    @property
    def state_path(self) -> Path:
        return self.config.state_dir / "node_state.safetensors"

    def sleep_until(self, unix_time: float) -> bool:
        """Sleep until ``unix_time``; False when asked to stop first."""
        return not self.stop.wait(max(0.0, unix_time - time.time()))


def build_node(config: NodeConfig, stop: threading.Event, world: World | None = None) -> Node:
    hparams = load_hparams(config.hparams)
    est = check_fits_device(config, hparams, world or World())  # before any chain or bucket I/O
    if est is not None:
        log.info("memory per device: %.2f GiB needed (computed, neurons.memory), fits", est.needed_bytes / 2**30)
    preflight(config, hparams)  # wallet, chain, role, bucket keys: nothing is committed before they work
    if config.threads:
        torch.set_num_threads(config.threads)
    chain = open_chain(
        config.network, str(config.devchain) if config.devchain else None, config.netuid, config.archive_endpoint
    )
    wallet = bittensor.Wallet(name=config.wallet_name, hotkey=config.wallet_hotkey, path=str(config.wallet_path))
    signer = HotkeySigner(wallet)
    uid = chain.metagraph().uid_of(signer.hotkey)
    if uid is None:
        raise NotRegisteredError(f"hotkey {signer.hotkey} is not registered on netuid {config.netuid}")
    bucket = config.bucket
    store = S3Store(
        endpoint_url=bucket.endpoint_url,
        bucket=bucket.name,
        access_key_id=bucket.write_key_id.get_secret_value(),
        secret_access_key=bucket.write_secret.get_secret_value(),
        region=bucket.region,
    )
    commit_bucket_if_needed(chain, signer, uid, config)
    origin = load_origin(
        chain, hparams, devchain_start=chain.slots.start_block if isinstance(chain, DevChain) else None,
        policy=EndpointPolicy(allow_loopback=config.devchain is not None),
    )
    log.info("run %s starts at block %d; the head (block %d) is in window %d", hparams.run_id, origin.start_block,
             chain.block(), (chain.block() - origin.start_block) // hparams.window.blocks_per_window)
    return assemble_node(config, hparams, chain, signer, uid, store, stop, origin, world)


def assemble_node(
    config: NodeConfig, hparams: Hparams, chain: Chain, signer: HotkeySigner, uid: int, store: ObjectStore,
    stop: threading.Event, origin: RunOrigin | None = None, world: World | None = None,
) -> Node:
    """A Node from the parts that need I/O to obtain; the rest (θ0, clock, peers, log) follows from them."""
    world = world or World()
    model = node_model(config, hparams, world)
    try:  # payloads every reader would refuse: fail now, naming the numbers, not in a window
        codec = CodecParams(chunk_size=hparams.codec.chunk_size, topk_per_chunk=hparams.codec.topk_per_chunk)
        check_payload_cap(param_shapes(model), codec, hparams.codec.max_payload_bytes, hparams.name)
    except PayloadCapError as exc:
        raise HparamsError(str(exc)) from exc
    start = origin.start_block if origin is not None else 0
    clock = WindowClock(chain, hparams.window.blocks_per_window, hparams.window.upload_slot_seconds, start)
    config.state_dir.mkdir(parents=True, exist_ok=True)
    return Node(
        config=config, hparams=hparams, chain=chain, signer=signer, uid=uid, clock=clock, store=store,
        peers=PeerDirectory.for_node(chain, local_subnet=config.devchain is not None),
        model=model, shapes=param_shapes(model),
        events=EventLog(config.state_dir / "events.jsonl"), stop=stop, origin=origin, world=world,
    )


def node_model(config: NodeConfig, hparams: Hparams, world: World) -> torch.nn.Module:
    """θ0 on the node's device, after checking that this rank's device can hold the node: the
    micro-batch rule and the computed memory per device (``neurons.memory``) fail now, in one
    line, not in the middle of a window."""
    check_fits_device(config, hparams, world)
    model = build_model(hparams.model, hparams.seed).to(config.device)
    if config.activation_checkpointing:  # recomputation gives the same bits (tests/neurons/test_memory.py)
        enable_activation_checkpointing(model)
    return model


def enable_activation_checkpointing(model: torch.nn.Module) -> None:
    """transformers 5.24 calls it ``activation_checkpointing_enable``; 5.17 (in the range the
    project allows) has only the older ``gradient_checkpointing_enable``, same arguments."""
    if hasattr(model, "activation_checkpointing_enable"):
        model.activation_checkpointing_enable(activation_checkpointing_kwargs={"use_reentrant": False})
    else:
        model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})


def check_fits_device(config: NodeConfig, hparams: Hparams, world: World) -> MemoryEstimate | None:
    """The micro-batch rule, then the computed memory per device against this rank's device
    (None when ``--memory-check false``); a typed one-line error if either fails."""
    check_micro_batches(hparams.training.batch_size, config.micro_batches, world)
    if not config.memory_check:
        return None
    available = device_memory(config.device, local_world_size())
    stage = None
    p = config.pipeline
    if p is not None and p.n_stages <= hparams.model.num_layers and not hparams.model.tie_embeddings:
        stage = (p.index, p.n_stages)  # an impossible split is the self-check's to refuse, in one line
    return check_memory(hparams, config.role, world.size, config.device, available, config.activation_checkpointing,
                        config.micro_batches, stage=stage)


def follow_leader(config: NodeConfig, world: World, runner) -> int:
    """Ranks other than 0: no chain, no bucket, no wallet; the model, doing the leader's commands
    (``runner.follower_handlers``) until it says stop."""
    import signal

    # torchrun signals every rank at once; a follower that died at once would break the leader's
    # collective mid-window. It ends on the leader's stop instead (or when the leader is gone).
    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, signal.SIG_IGN)
    hparams = load_hparams(config.hparams)
    if config.threads:
        torch.set_num_threads(config.threads)
    model = node_model(config, hparams, world)
    done = follow(world, runner.follower_handlers(model, hparams, config, world))
    log.info("rank %d of %d stopped after %d commands", world.rank, world.size, done)
    return 0


def open_shards(node: Node) -> TokenShards:
    """The run's shards (``neurons.dataset.open_run_data``): the dataset the origin names, fetched
    shard by shard and verified, or the operator's copy of it (``--data-dir``), held to the origin's
    data digest; with neither (a devchain without a published origin), the embedded corpus."""
    origin = node.origin
    return open_run_data(
        data_url=origin.data_url if origin else None, data_digest=origin.data_digest if origin else None,
        cache_dir=node.config.state_dir / "data", data_dir=node.config.data_dir,
        vocab_size=node.hparams.model.vocab_size, tokenizer=node.hparams.model.tokenizer,
        allow_loopback=node.config.devchain is not None,
    )


def commit_bucket_if_needed(chain: Chain, signer: HotkeySigner, uid: int, config: NodeConfig) -> None:
    """Publish this node's read-only bucket credentials unless the chain already holds them."""
    b = config.bucket
    wanted = BucketCommitment(
        endpoint_url=b.endpoint_url, bucket=b.name, region=b.region,
        access_key_id=b.read_key_id, secret_access_key=b.read_secret.get_secret_value(),
    ).encode()
    if chain.commitments().get(uid) != wanted:
        chain.commit(signer, wanted)
        log.info("committed bucket %s for uid %d", b.name, uid)


def start_window(node: Node) -> None:
    """Set θ and ``node.window`` from local state if it belongs to this run, else join.

    A corrupt state file (``NodeStateError``) is moved aside as ``<name>.corrupt`` and logged by
    ``restore_node_state``; the node then joins from a checkpoint as if it had none."""
    restored = restore_node_state(node.state_path, node.model, node.hparams.run_id, node.hparams.bounds.max_abs_param)
    if restored is not None:
        node.window, node.extra_state = restored.window, restored.extra
        log.info("%s resumed from local state at window %d", node.name, node.window)
        return
    from neurons.join import join_from_checkpoint  # joining needs peers; keep import local to the slow path

    node.window = join_from_checkpoint(node)


def wait_for_window_open(node: Node, window: int) -> bool:
    """Sleep until the block that opens ``window`` exists; False if asked to stop first.

    Only then is its timestamp (the start of window w-1's upload slot) real: a prediction from the
    head is wrong by a block time for every slot missed meanwhile, and would send a miner's upload
    early. Sleeps to the predicted time, then polls the head every twentieth of a block."""
    poll = node.chain.block_time() / 20
    while not node.clock.block_opened(window):
        expected = node.clock.window_start_time(window)
        if node.stop.wait(max(poll, expected - time.time())):
            return False
    return not node.stop.is_set()


def wait_for_slot_close(node: Node, window: int) -> bool:
    """Sleep until window's upload slot has closed (plus a grace); False if asked to stop. The
    slot is taken from the real timestamp of the block that opens window + 1."""
    if not wait_for_window_open(node, window + 1):
        return False
    _, slot_end = node.clock.upload_slot(window)
    return node.sleep_until(slot_end + node.config.gather_grace_seconds)


def gather(node: Node, also_fetch: Iterable[int] = (), replay: bool = False) -> WindowGather:
    """Fetch and check the payloads of window ``node.window`` (G(w), reserves, ``also_fetch``)."""
    return gather_window(
        node.chain, node.clock, node.peers, node.hparams, node.shapes, node.window, also_fetch,
        param_norms=parameter_norms(node.model), open_patience=CATCH_UP_OPEN_PATIENCE_SECONDS if replay else None,
    )


def apply(node: Node, gathered: WindowGather) -> dict[str, torch.Tensor] | None:
    """The outer step: θ_w → θ_{w+1}; the dense update applied, or None (``apply_gather``)."""
    with metrics.timed("apply"):
        limits = UpdateLimits.from_hparams(node.hparams)
        applied = apply_gather(node.model, gathered, node.shapes, node.hparams.outer.outer_lr, limits)
    node.window = gathered.window + 1
    return applied


def advance(node: Node, replay: bool = False) -> WindowGather | None:
    """Wait for window ``node.window``'s slot to close, gather it, apply it; None if stopped."""
    if not wait_for_slot_close(node, node.window):
        return None
    gathered = gather(node, replay=replay)
    apply(node, gathered)
    return gathered


def catch_up(node: Node) -> None:
    """Replay every window that closed before now, so θ is the network's θ for the current window."""
    behind = node.clock.current_window() - node.window
    with progress(f"{node.name} catching up", total=behind, min_total=2) as replayed:  # a terminal only
        while not node.stop.is_set() and node.window < node.clock.current_window():
            gathered = advance(node, replay=True)
            if gathered is None:
                return
            fp = model_fingerprint(node.model)
            node.events.append(
                WindowRecord(node.name, node.config.role, node.uid, gathered.window, fp, gathered.accepted, replayed=True)
            )
            log.info("%s replayed window %d (%d payloads%s) -> %s", node.name, gathered.window, len(gathered.accepted),
                     _not_counted(gathered), fp)
            replayed()


def _not_counted(gathered: WindowGather) -> str:
    """Why the gather set's other members did not count in a replayed window, for the log: a
    replay that counts fewer payloads than live nodes did ends in another θ. Members that simply
    uploaded nothing are only counted."""
    left_out = [(u, f) for u in gathered.gather_set.gather
                if u not in gathered.accepted and (f := gathered.fetched.get(u)) is not None and not f.ok]
    absent = sum(1 for _, f in left_out if f.result.detail == "no payload")
    detail = [f"uid {u} {f.result.reason} ({f.result.detail[:80]})" for u, f in left_out if f.result.detail != "no payload"]
    parts = ([f"{absent} uploaded nothing"] if absent else []) + detail
    return "; not counted: " + ", ".join(parts) if parts else ""


# After a window failed because the chain or storage misbehaved, wait this long and try again.
WINDOW_RETRY_SECONDS = 2.0


def run_windows(node: Node, one_window: Callable[[], None], ready: Callable[[], bool] | None = None) -> int:
    """Call ``one_window`` once per window until stopped or ``max_windows`` are done; returns how many.

    The caller has already placed θ (``start_window``). Before each window ``ready()`` brings the
    node up to the window it should work on next; False means stop. By default it replays every
    window that closed meanwhile (``catch_up``) and goes on unless a stop was asked for.

    This is where the node's policy for a misbehaving chain or storage lives: a ``ChainError`` or
    ``StorageError`` that escapes a window (the chain unreachable, our own bucket down) is logged
    and the loop tries again after a pause, from wherever θ is; ``ready()`` then replays or skips
    to the present. Peers' misbehaviour never gets here: it is judged per peer
    (``protocol.acceptance``) and costs only that peer.
    """
    ready = ready or (lambda: _caught_up(node))
    done = 0
    while not node.stop.is_set():
        try:
            if not ready():
                break
            working_on = node.window
            metrics.window(working_on)
            one_window()
            metrics.window_done(working_on)
        except (ChainError, StorageError) as exc:
            metrics.window_failed()
            log.warning("%s window %d failed (%s: %s); retrying in %.0f s",
                        node.name, node.window, type(exc).__name__, exc, WINDOW_RETRY_SECONDS)
            node.stop.wait(WINDOW_RETRY_SECONDS)
            continue
        done += 1
        if node.config.max_windows and done >= node.config.max_windows:
            break
    return done


def warn_if_excluded(node: Node) -> None:
    """Say loudly, every window, when the network's role rule (``protocol.roles``) leaves this
    node out of the role it runs as: its work would be ignored without a word otherwise."""
    reason = excluded_reason(
        node.chain.metagraph(), node.uid, node.hparams, node.hparams.scoring.burn_uid, node.config.role
    )
    if reason is not None:
        log.warning("%s is excluded from its role: %s", node.name, reason)


def _caught_up(node: Node) -> bool:
    catch_up(node)
    return not node.stop.is_set()


def publish_fingerprint(node: Node, window: int, fingerprint: str, accepted: list[int]) -> None:
    """Record θ_{window+1}'s fingerprint in our bucket; others compare theirs against it."""
    record = FingerprintRecord(window=window, fingerprint=fingerprint, gathered=accepted, uid=node.uid)
    try:
        node.store.put(fingerprint_key(node.hparams.run_id, window, node.uid), record.to_bytes())
    except ObjectExists:
        pass  # already published before a restart; objects are immutable
    except StorageError as exc:
        log.warning("%s could not publish fingerprint for window %d: %s", node.name, window, exc)


def run_node(role: str, args, runner) -> int:
    """Validate settings, build the node, run ``runner(node).run()`` until done or signalled.

    Under ``torchrun --nproc_per_node N`` rank 0 is the node (chain, storage, signing) and the
    other ranks follow it (``follow_leader``; ``neurons.distributed``)."""
    from neurons.config import node_config_from_args

    config = node_config_from_args(role, args)  # a ConfigError ends the start as one line (neurons.cli)
    world = init_world(config.device)  # torchrun's ranks; one process without it
    config = config.model_copy(update={"device": world.device(config.device)})
    try:
        if not world.leader:
            return follow_leader(config, world, runner)
        return _lead(role, config, world, runner)
    finally:
        close_world(world)


def _lead(role: str, config: NodeConfig, world: World, runner) -> int:
    """Rank 0 (or the only process): the node itself; the followers stop when it returns."""
    import signal
    import sys

    if config.metrics_port is not None:
        try:
            metrics.serve(config.metrics_port, config.metrics_address)
        except metrics.MetricsError as exc:
            print(f"tessera {role}: {exc}", file=sys.stderr)
            return 2
    stop = threading.Event()
    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, lambda *_: stop.set())
    node = build_node(config, stop, world)
    metrics.node_info(role, node.uid, node.hparams.run_id)
    runner(node).run()
    send(Command(STOP), world)  # an exception instead ends the process; torchrun then ends the followers
    log.info("%s stopped at window %d", node.name, node.window)
    return 0


def prune_own_objects(node: Node) -> None:
    """Delete our payloads, fingerprints and checkpoints older than the retention window.

    Retention is at least twice the checkpoint interval, so a joining node always finds a
    checkpoint plus every payload it must replay after it.
    """
    run_id, keep = node.hparams.run_id, node.hparams.checkpoint.retention_windows
    for prefix in (payload_prefix(run_id), fingerprint_prefix(run_id), checkpoint_prefix(run_id)):
        try:
            report = prune_old_windows(node.store, prefix, node.window, keep, window_of_key)
        except StorageError as exc:
            log.warning("%s retention under %s skipped: %s", node.name, prefix, exc)
            continue
        if report.deleted:
            log.info("%s deleted %d objects older than %d windows", node.name, len(report.deleted), keep)


def configure_role(parser, role: str, runner) -> None:
    """The ``tessera miner|validator`` subcommand: node flags, then ``run_node``."""
    from neurons.config import add_node_arguments

    add_node_arguments(parser)
    progress = "Progress bars (neurons.progress) are drawn on a terminal only; TESSERA_NO_PROGRESS=1 turns them off."
    parser.epilog = f"{parser.epilog}\n{progress}" if parser.epilog else progress  # after the secrets help
    parser.set_defaults(func=lambda args: run_node(role, args, runner))
