"""``tessera stage``: one stage of a pipeline group as its own process, talking TCP to its neighbours.

    tessera stage --hparams H --group G --stage 0/2 --next HOST:PORT   --windows W --state-dir D0
    tessera stage --hparams H --group G --stage 1/2 --listen HOST:PORT --windows W --state-dir D1

This first version trains the group *alone* (no chain, no bucket): each window every stage
trains its slice for H inner steps (``pipeline.worker``), compresses its own pseudo-gradient
with SparseLoCo and applies it as the outer step; the first stage's embedding update travels
down the chain so every stage's anchor (the embedding table it rebuilds boundaries from) stays
the same θ. A window is all-or-nothing (``pipeline.group``): a lost neighbour makes the stage
put back θ_w and retry that window with the restarted neighbour. State (the stage's parameters,
the anchor, the last completed window) is saved after every window, so a killed stage restarts
where the group is. Hooking stages into the network as miners is described in docs/pipeline.md.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import socket
from dataclasses import asdict
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file

from compression import PayloadError, decode_blob, decode_message, outer_step
from neurons.config import ConfigError, host_port
from neurons.corpus import DEFAULT_MAX_CHARS, ensure_embedded_data
from neurons.data import assigned_batches
from neurons.model import build_model
from neurons.shards import TokenShards
from neurons.train import lr_at
from pipeline.basis import subspace_basis
from pipeline.group import WindowOutcome, run_window
from pipeline.payload import StageCompressor
from pipeline.stage import Stage, split_layers
from pipeline.subspace import EMBED_NAME, SubspaceConstraint
from pipeline.transport import Hello, Link, StageLost, accept_upstream, connect_downstream
from pipeline.worker import StageWorker
from protocol.hparams import Hparams, load_hparams

log = logging.getLogger(__name__)
_ANCHOR = "anchor/embedding"


def configure(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--hparams", default=os.environ.get("TESSERA_HPARAMS", "tiny"))
    parser.add_argument("--group", required=True, help="the pipeline group's name (all its stages use the same)")
    parser.add_argument("--stage", required=True, help="S/N: this process is stage S of N (0-based)")
    parser.add_argument("--listen", default=None, help="HOST:PORT the upstream stage connects to (stages S > 0)")
    parser.add_argument("--next", default=None, help="HOST:PORT of the downstream stage (stages S < N-1)")
    parser.add_argument("--uid", type=int, default=1, help="whose data assignment the group trains on")
    parser.add_argument("--windows", type=int, default=4, help="train until this many windows are complete")
    parser.add_argument("--max-skips", type=int, default=5, help="give up after this many lost windows in a row")
    parser.add_argument("--timeout", type=float, default=30.0, help="seconds a neighbour may stay silent")
    parser.add_argument("--micro-batches", type=int, default=2)
    parser.add_argument("--state-dir", type=Path, required=True, help="this stage's saved state")
    parser.add_argument("--data-dir", type=Path, default=Path("~/.cache/tessera/data").expanduser())
    parser.add_argument("--corpus-chars", type=int, default=DEFAULT_MAX_CHARS)
    parser.add_argument("--json-out", type=Path, default=None, help="write the per-window report here")
    parser.set_defaults(func=run)


def _endpoint(value: str | None, flag: str) -> tuple[str, int]:
    try:
        return host_port(value or "", flag)
    except ValueError as exc:
        raise ConfigError(str(exc)) from None


def _position(text: str) -> tuple[int, int]:
    s, sep, n = text.partition("/")
    if not sep or not s.isdigit() or not n.isdigit() or not 0 <= int(s) < int(n) or int(n) < 2:
        raise ConfigError(f"--stage must be S/N with 0 <= S < N and N >= 2, got {text!r}")
    return int(s), int(n)


class StageProcess:
    """Everything one stage holds between windows."""

    def __init__(self, args: argparse.Namespace, hp: Hparams) -> None:
        self.args, self.hp = args, hp
        self.index, self.n = _position(args.stage)
        self.upstream = _endpoint(args.listen, "--listen") if self.index > 0 else None
        self.downstream = _endpoint(args.next, "--next") if self.index < self.n - 1 else None
        model = build_model(hp.model, hp.seed)
        self.constraint = None
        if hp.pipeline is not None:
            basis = subspace_basis(hp.seed, hp.model.hidden_size, hp.pipeline.subspace_dim, hp.pipeline.basis_seed_tag)
            self.constraint = SubspaceConstraint(basis, project_weights=hp.pipeline.boundary == "exact")
            if hp.pipeline.boundary == "adaptive":
                # the window's basis is fitted on θ_w's prefix up to the boundary, which only a stage
                # that follows the whole θ holds (a stage miner in a network); alone, the seeded one
                log.warning("pipeline.boundary adaptive needs the whole θ (a stage miner in a network); "
                            "this standalone group projects onto the seeded basis (as 'projected')")
            self.constraint.project_(dict(model.named_parameters()), anchor_embedding=None)
        self.stage = Stage(model, split_layers(hp.model.num_layers, self.n)[self.index])
        self.anchor = dict(model.named_parameters())[EMBED_NAME].detach().clone()
        self.worker = StageWorker(self.stage, hp.training, self.constraint, args.micro_batches,
                                  lambda step: lr_at(step, hp.training))
        self.compressor = StageCompressor(self.stage, hp.codec)
        self.shards: TokenShards | None = None
        self.next_window = self._load()

    @property
    def _state_file(self) -> Path:
        return self.args.state_dir / f"{self.args.group}-stage{self.index}of{self.n}.safetensors"

    def _load(self) -> int:
        if not self._state_file.is_file():
            return 0
        tensors = load_file(self._state_file)
        expected = set(self.stage.params) | {_ANCHOR, "last_window"}
        if set(tensors) != expected:
            raise ConfigError(f"{self._state_file} holds another stage layout; use a fresh --state-dir")
        with torch.no_grad():
            for name, p in self.stage.params.items():
                p.copy_(tensors[name])
        self.anchor = tensors[_ANCHOR]
        return int(tensors["last_window"]) + 1

    def save(self, window: int) -> None:
        tensors = {n: p.detach().clone() for n, p in self.stage.params.items()}
        tensors[_ANCHOR] = self.anchor.clone()
        tensors["last_window"] = torch.tensor(window, dtype=torch.int64)
        self.args.state_dir.mkdir(parents=True, exist_ok=True)
        tmp = self._state_file.with_suffix(".tmp")
        save_file(tensors, tmp)
        os.replace(tmp, self._state_file)  # a kill mid-save leaves the previous window's state

    def connect(self, server: socket.socket | None, window: int) -> tuple[Link | None, Link | None]:
        hello = Hello(run_id=self.hp.run_id, group=self.args.group, stage=self.index, n_stages=self.n, window=window)
        up = accept_upstream(server, hello, self.args.timeout) if server is not None else None
        down = None
        if self.downstream is not None:
            down = connect_downstream(*self.downstream, hello, self.args.timeout)
        return up, down


def _embedding_update(proc: StageProcess, payload, up: Link | None, down: Link | None) -> torch.Tensor:
    """The first stage's embedding update, as every stage of the group decodes it (dense)."""
    layout = proc.compressor.inner.params.layout(tuple(proc.anchor.shape))
    if up is None:
        blob = payload.message.blobs[EMBED_NAME].numpy().tobytes()
    else:
        blob = up.recv_frame(max_bytes=4 * proc.anchor.numel() + 1024)
    if down is not None:
        down.send_frame(blob)
    try:
        sparse = decode_blob(torch.frombuffer(bytearray(blob), dtype=torch.uint8), layout, EMBED_NAME)
    except PayloadError as exc:
        raise StageLost(f"the upstream stage sent an undecodable embedding update: {exc}") from exc
    return sparse.to_dense()


def _window(proc: StageProcess, server: socket.socket | None, window: int) -> WindowOutcome:
    try:
        up, down = proc.connect(server, window)
    except StageLost as exc:
        return WindowOutcome(window, trained=False, reason=str(exc))
    t, lr = proc.hp.training, proc.hp.outer.outer_lr
    proc.worker.begin_window(proc.anchor)
    start = {n: p.detach().clone() for n, p in proc.stage.params.items()}
    error = proc.compressor.inner.state_dict()
    result: dict = {}

    def exchange() -> None:
        payload = proc.compressor.compress(start)
        result["payload"] = payload
        result["embedding"] = _embedding_update(proc, payload, up, down)

    batches = assigned_batches(proc.shards, proc.hp.seed, proc.args.uid, window, t.inner_steps, t.batch_size, t.seq_len)
    outcome = run_window(proc.worker, window, batches, window * t.inner_steps, up, down,
                         before_done=exchange, on_skip=lambda: proc.compressor.inner.load_state_dict(error))
    for link in (up, down):
        if link is not None:
            link.close()
    if outcome.trained:
        update = {n: s.to_dense() for n, s in decode_message(result["payload"].message).items()}
        with torch.no_grad():
            for name, p in proc.stage.params.items():
                p.copy_(start[name])
        outer_step(proc.stage.params, update, lr=lr)
        proc.anchor = proc.anchor - lr * result["embedding"]
        proc.save(window)
    return outcome


def run(args: argparse.Namespace) -> int:
    hp = load_hparams(args.hparams)
    proc = StageProcess(args, hp)
    proc.shards = TokenShards(ensure_embedded_data(args.data_dir, hp.model.vocab_size, args.corpus_chars))
    server = socket.create_server(proc.upstream) if proc.upstream is not None else None
    report, skips = [], 0
    window = proc.next_window
    try:
        while window < args.windows:
            outcome = _window(proc, server, window)
            report.append(asdict(outcome))
            if args.json_out is not None:
                args.json_out.write_text(json.dumps({"stage": args.stage, "group": args.group, "windows": report}))
            if outcome.trained:
                log.info("window %d trained (%s)", window, proc.stage.span.label)
                window, skips = window + 1, 0
                continue
            skips += 1
            if skips > args.max_skips:
                log.error("gave up after %d lost windows in a row: %s", skips, outcome.reason)
                return 1
    finally:
        if server is not None:
            server.close()
    return 0
