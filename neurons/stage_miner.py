"""A miner that is one stage of a pipeline group (docs/pipeline.md "In the network").

It is a miner in every respect the network sees: its own hotkey, bucket and commitment; it
follows θ with the same gather and outer step as every node, so it holds θ_w like them and its
fingerprint is theirs. What differs is the window's work: instead of training the whole model it
trains its slice of layers (``protocol.layers.split_layers``) together with its neighbour stages
over TCP (``pipeline.worker``, GPipe; subspace-compressed boundaries when the hparams carry a
``pipeline`` section), and uploads the SparseLoCo pseudo-gradient of its own layers, its payload
naming the range and the group's data (``compression.StageClaim``).

Choices, and why:
- The group trains on stage 0's assignment; stage 0 passes its uid down the chain in the
  handshake, so no stage needs to be told another's uid, and validators check the claim.
- A window is all-or-nothing (``pipeline.group``): a lost neighbour makes every stage of the
  group put back θ_w, its optimizer and its error feedback, and upload nothing for the window.
- Subspace boundaries default to *adaptive* (``pipeline.boundary``): the stage trains θ_w itself
  and only what crosses a boundary is projected, onto the window's top-k principal directions
  that the upstream stage computes from θ_w and sends once (``pipeline.window_basis``). With ``exact`` boundaries the stage starts from
  θ_w with its residual writers projected and measures Δ from there, not from θ_w: full replicas
  keep θ's residual writers out of the subspace, and a Δ that pulled them all back would be as
  large as θ itself and be refused by every reader's bounds. docs/pipeline.md ("Which boundary")
  has the measurement that picked the default.
- One TCP connection per boundary per window, opened by the upstream stage: a stage that was
  killed and restarted simply answers the next window's connection.
"""

from __future__ import annotations

import logging
import socket
import time

import torch

from compression import CompressedMessage, ErrorFeedbackCompressor, StageClaim
from neurons.config import PipelineStageConfig
from neurons.data import assigned_batches
from neurons.miner import Miner
from neurons.node import Node
from neurons.train import load_optimizer_state, lr_at, optimizer_state_tensors
from pipeline.basis import subspace_basis
from pipeline.group import run_window
from pipeline.stage import Stage
from pipeline.subspace import EMBED_NAME, SubspaceConstraint
from pipeline.transport import Hello, Link, StageLost, accept_upstream, connect_downstream
from pipeline.window_basis import basis_bytes, boundary_basis, decode_basis, encode_basis
from pipeline.wire import BoundaryError
from pipeline.worker import StageWorker
from protocol.chain import Metagraph
from protocol.layers import split_layers
from protocol.signing import verify_signature

log = logging.getLogger(__name__)

MICRO_BATCHES = 2  # every stage of a group cuts a batch the same way (frames are checked against it)


def hello_problem(theirs: Hello, metagraph: Metagraph) -> str | None:
    """Why a neighbour's Hello is not acceptable, or None: it must be signed by the hotkey it
    names, that hotkey must hold the uid it claims on this subnet, and a stage 0 trains on its
    own uid's data. A stranger that reaches the listening port can therefore not pose as a
    neighbour without a registered hotkey, and one that does is named in the log."""
    if theirs.uid is None or not theirs.hotkey:
        return "its handshake names no uid and hotkey"
    try:
        signature = bytes.fromhex(theirs.signature)
    except ValueError:
        return "its handshake signature is not hex"
    if not verify_signature(theirs.hotkey, theirs.signing_bytes(), signature):
        return f"its handshake is not signed by hotkey {theirs.hotkey[:16]}"
    if metagraph.uid_of(theirs.hotkey) != theirs.uid:
        return f"hotkey {theirs.hotkey[:16]} does not hold uid {theirs.uid} on this subnet"
    if theirs.stage == 0 and theirs.data_uid != theirs.uid:
        return f"stage 0 (uid {theirs.uid}) names uid {theirs.data_uid}'s data, not its own"
    return None


class StageOptimizer:
    """The stage's AdamW with the state methods the miner saves and restores (``neurons.train``)."""

    def __init__(self, stage: Stage, worker: StageWorker) -> None:
        self.stage, self.worker = stage, worker

    def state_tensors(self) -> dict[str, torch.Tensor]:
        return optimizer_state_tensors(self.stage.params.items(), self.worker.optimizer)

    def load_state_tensors(self, state: dict[str, torch.Tensor]) -> None:
        load_optimizer_state(self.stage.params.items(), self.worker.optimizer, state)

    def reset_optimizer(self) -> None:
        self.worker.optimizer.state.clear()


class StageMiner(Miner):
    """The miner's window with ``train_and_compress`` done by one pipeline stage and its neighbours."""

    def __init__(self, node: Node, behaviour=None) -> None:
        cfg = node.config.pipeline
        if cfg is None:
            raise ValueError("a StageMiner needs the node's --pipeline.* settings")
        self.cfg: PipelineStageConfig = cfg
        hp = node.hparams
        self.span = split_layers(hp.model.num_layers, cfg.n_stages)[cfg.index]
        self.stage = Stage(node.model, self.span)
        self.constraint = None
        if hp.pipeline is not None:
            basis = subspace_basis(hp.seed, hp.model.hidden_size, hp.pipeline.subspace_dim, hp.pipeline.basis_seed_tag)
            self.constraint = SubspaceConstraint(basis, project_weights=hp.pipeline.boundary == "exact")
        self.adaptive = hp.pipeline is not None and hp.pipeline.boundary == "adaptive"
        self.worker = StageWorker(self.stage, hp.training, self.constraint, MICRO_BATCHES,
                                  lambda step: lr_at(step, hp.training))
        self.data_uid: int | None = None  # learned each window: stage 0's uid, from the handshake
        listen = cfg.listen_address
        self.server = socket.create_server(listen, reuse_port=False) if listen is not None else None
        super().__init__(node, behaviour)
        log.info("%s is stage %s of group %r (%s, %s boundaries)", node.name, cfg.stage, cfg.group, self.span.label,
                 f"subspace k={hp.pipeline.subspace_dim}" if hp.pipeline is not None else "dense")

    def make_trainer(self) -> tuple[StageOptimizer, ErrorFeedbackCompressor]:
        codec = self.node.hparams.codec
        compressor = ErrorFeedbackCompressor(
            self.stage.shapes(), chunk_size=codec.chunk_size, topk_per_chunk=codec.topk_per_chunk,
            beta=codec.ef_beta, device=self.node.config.device,
        )
        return StageOptimizer(self.stage, self.worker), compressor

    def stage_claim(self) -> StageClaim | None:
        return StageClaim(
            group=self.cfg.group, index=self.cfg.index, n_stages=self.cfg.n_stages, layer_start=self.span.start,
            layer_stop=self.span.stop, data_uid=self.data_uid if self.data_uid is not None else self.node.uid,
        )

    def connect(self, w: int) -> tuple[Link | None, Link | None]:
        """This window's links: accept the upstream stage (learning the group's data uid from it),
        then connect downstream passing it on. Each side's Hello is signed by its hotkey and
        must come from a hotkey registered on the subnet (``hello_problem``). StageLost when a
        neighbour does not answer or is refused."""
        node, cfg = self.node, self.cfg
        # a neighbour that has not shown up by the end of the window will not train it with us
        wait = min(cfg.timeout, max(1.0, node.clock.window_start_time(w + 1) - time.time()))
        hello = Hello(run_id=node.hparams.run_id, group=cfg.group, stage=cfg.index, n_stages=cfg.n_stages, window=w,
                      data_uid=node.uid if cfg.index == 0 else None)
        metagraph = node.chain.metagraph()

        def check(theirs: Hello) -> str | None:
            return hello_problem(theirs, metagraph)

        up = down = None
        try:
            if self.server is not None:
                up = accept_upstream(self.server, self.signed_hello(hello), wait, keep_trying=True, check=check)
                up.timeout = cfg.timeout
                if up.hello is None or up.hello.data_uid is None:
                    raise StageLost(f"{up.peer} did not say whose data the group trains on")
                hello = hello.model_copy(update={"data_uid": up.hello.data_uid})
            if cfg.next_address is not None:
                down = connect_downstream(*cfg.next_address, self.signed_hello(hello), wait, check=check)
                down.timeout = cfg.timeout  # once connected, each message gets the full timeout
        except StageLost:
            if up is not None:
                up.bye()
                up.close()
            raise
        self.data_uid = hello.data_uid
        return up, down

    def signed_hello(self, hello: Hello) -> Hello:
        node = self.node
        hello = hello.model_copy(update={"uid": node.uid, "hotkey": node.signer.hotkey})
        return hello.model_copy(update={"signature": node.signer.sign(hello.signing_bytes()).hex()})

    def exchange_bases(
        self, up: Link | None, down: Link | None, probe: torch.Tensor, embedding: torch.Tensor
    ) -> tuple[torch.Tensor | None, torch.Tensor | None]:
        """Adaptive boundaries: receive the basis of the boundary above from the upstream stage,
        compute the one below from θ_w's prefix up to it on the window's first batch and send it
        down (``pipeline.window_basis``)."""
        hp = self.node.hparams
        hidden, k = hp.model.hidden_size, hp.pipeline.subspace_dim
        up_basis = decode_basis(up.recv_frame(basis_bytes(hidden, k)), hidden, k) if up is not None else None
        down_basis = None
        if down is not None:
            down_basis = boundary_basis(self.node.model, self.span.stop, probe, embedding, k)
            data = encode_basis(down_basis)
            down.send_frame(data)
            self.worker.sent_bytes += len(data)
        return up_basis, down_basis

    def train_and_compress(self, w: int) -> tuple[CompressedMessage | None, float | None]:
        """Train this stage's layers for window w with the group; (None, None) when the group
        lost the window, θ_w, the optimizer and the error feedback then as they were."""
        node, hp = self.node, self.node.hparams
        started = time.time()
        try:
            up, down = self.connect(w)
        except StageLost as exc:
            log.warning("%s skips window %d: %s", node.name, w, exc)
            return None, None
        self.worker.sent_bytes = 0
        log.info("%s window %d: training %s with group %r", node.name, w, self.span.label, self.cfg.group)
        t = hp.training
        batches = assigned_batches(self.shards, hp.seed, self.data_uid, w, t.inner_steps, t.batch_size, t.seq_len)
        embedding = dict(node.model.named_parameters())[EMBED_NAME].detach().clone()
        try:
            up_basis, down_basis = self.exchange_bases(up, down, batches[0], embedding) if self.adaptive else (None, None)
        except (StageLost, BoundaryError) as exc:
            log.warning("%s skips window %d: the boundary basis did not arrive intact: %s", node.name, w, exc)
            for link in (up, down):
                if link is not None:
                    link.bye()
                    link.close()
            return None, None
        theta_w = {n: p.detach().clone() for n, p in self.stage.params.items()}
        self.worker.begin_window(embedding, up_basis, down_basis)  # an exact-boundary stage projects its slice here
        start = {n: p.detach().clone() for n, p in self.stage.params.items()}
        error = self.compressor.state_dict()
        result: dict[str, CompressedMessage] = {}

        def compress() -> None:  # inside the window: a stage that fails here makes the group skip
            result["message"] = self.compressor.compress({n: start[n] - p.detach() for n, p in self.stage.params.items()})

        # done by the middle of the upload slot, as Miner.has_time_to_train plans it
        finish_by = node.clock.window_start_time(w + 1) + hp.window.upload_slot_seconds / 2
        outcome = run_window(self.worker, w, batches, w * t.inner_steps, up, down, before_done=compress,
                             on_skip=lambda: self.compressor.load_state_dict(error),
                             deadline=time.monotonic() + max(0.0, finish_by - time.time()))
        for link in (up, down):
            if link is not None:
                link.close()
        with torch.no_grad():  # back to θ_w: the outer step is applied to the shared model
            for name, p in self.stage.params.items():
                p.copy_(theta_w[name])
                p.grad = None
        if not outcome.trained:
            log.warning("%s: group %r lost window %d; nothing uploaded (%s)", node.name, self.cfg.group, w, outcome.reason)
            return None, None
        self.train_seconds = time.time() - started
        loss = outcome.losses[-1] if outcome.losses else None  # only the last stage sees the loss
        log.info("%s trained %s for window %d with group %r (data of uid %d, %d boundary bytes sent)",
                 node.name, self.span.label, w, self.cfg.group, self.data_uid, self.worker.sent_bytes)
        return result["message"], loss
