"""The miner: train on its own data for a window, publish the compressed drift, follow the network.

Window w, top to bottom (DESIGN.md "One window, step by step"):
  train H inner steps from θ_w → Δ = θ_w − θ_local → error feedback + compress → signed payload
  → upload when w+1 begins (inside the slot) → gather G(w) → outer step → θ_{w+1} → fingerprint.

On a local network ``--behaviour KIND`` swaps in a strategy (``neurons.behaviours``) that the
window asks where an attacker would differ: whether and on what to train, what to publish and
when, whether to apply the outer step. ``honest`` (the default) is the window above.
"""

from __future__ import annotations

import logging
import time

import torch

from compression import (
    CompressedMessage,
    ErrorFeedbackCompressor,
    PayloadManifest,
    SparseUpdate,
    StageClaim,
    encode_payload,
)
from neurons import metrics
from neurons.behaviours.context import WindowContext, read_peer_uploads
from neurons.behaviours.kinds import BYTE_LEVEL_KINDS
from neurons.behaviours.strategies import Behaviour, make_behaviour
from neurons.data import assigned_batches
from neurons.distributed import TRAIN
from neurons.events import WindowRecord
from neurons.fingerprint import model_fingerprint
from neurons.gather import WindowGather, fetch_budget
from neurons.join import Electorate, join_from_checkpoint, majority_fingerprint
from neurons.node import (
    Node,
    advance,
    catch_up,
    configure_role,
    gather,
    open_shards,
    prune_own_objects,
    publish_fingerprint,
    run_node,
    run_windows,
    start_window,
    wait_for_slot_close,
    wait_for_window_open,
    warn_if_excluded,
)
from neurons.parallel_train import make_trainer, train_handler
from neurons.standing import log_standing
from neurons.state import save_node_state
from neurons.train import InnerTrainer
from protocol.keys import payload_key
from storage import ObjectExists, StorageError

log = logging.getLogger(__name__)

# Validators publish θ_{w+1}'s fingerprint after judging window w, one window behind the miners.
RESYNC_LAG = 2
SKIP_DECAY = 0.75  # per skipped window, the measured training time is trusted this much less
# A behaviour that reads peers' uploads keeps trying until this long before its put must end.
PEER_POLL_SECONDS = 0.5


class Miner:
    def __init__(self, node: Node, behaviour: Behaviour | None = None) -> None:
        self.node = node
        self.behaviour = behaviour or make_behaviour(node.config.behaviour)
        self.shards = open_shards(node)
        self.trainer, self.compressor = self.make_trainer()
        # Last measured time to train + compress one window, to skip a window we cannot finish
        # in time. Before the first measurement assume half a window: a miner that comes up late
        # in a window waits for the next one instead of training into a slot it would miss.
        self.train_seconds: float | None = None
        # θ_{w+1}'s fingerprint per window w, to compare with what validators published
        self.fingerprints: dict[int, str] = {}

    def make_trainer(self) -> tuple[InnerTrainer, ErrorFeedbackCompressor]:
        """What trains a window and what compresses its Δ: the whole model here, one pipeline
        stage's layers in ``neurons.stage_miner``."""
        node, hp = self.node, self.node.hparams
        # one process: an InnerTrainer; rank 0 of several: the same, with the followers training along
        trainer = make_trainer(node.model, hp.training, node.config.device, node.world, node.config.micro_batches)
        compressor = ErrorFeedbackCompressor(
            node.shapes, chunk_size=hp.codec.chunk_size, topk_per_chunk=hp.codec.topk_per_chunk,
            beta=hp.codec.ef_beta, device=node.config.device,
        )
        return trainer, compressor

    def stage_claim(self) -> StageClaim | None:
        """What the payload says about the part of θ it covers: None, the whole model."""
        return None

    @staticmethod
    def follower_handlers(model, hparams, config, world) -> dict:
        """What a rank other than 0 does for a miner (``neurons.node.follow_leader``): train."""
        trainer = InnerTrainer(model, hparams.training, config.device, config.micro_batches or world.size, world)
        return {TRAIN: train_handler(trainer)}

    def run(self) -> None:
        node = self.node
        start_window(node)
        self.restore_extra_state(node.extra_state)
        run_windows(node, self.one_window, self.ready)

    def ready(self) -> bool:
        """Back in step if we fell out of it, then replay whatever closed meanwhile."""
        warn_if_excluded(self.node)  # every window: a miner the role rule leaves out says why
        self.rejoin_if_out_of_step()
        catch_up(self.node)
        return not self.node.stop.is_set()

    def rejoin_if_out_of_step(self) -> None:
        """If validators holding a stake majority published another θ than ours for a recent
        window, load the newest confirmed checkpoint and replay from there.

        A node can fall out of step through no one's fault: one payload that it could not fetch
        by the deadline (a loaded machine) while the others did. Its own θ then differs from the
        network's for good, its payloads fail every validator's sync check and it is never paid
        again. Validators judge window w during w+1, so the window checked is RESYNC_LAG back."""
        node, w = self.node, self.node.window - RESYNC_LAG
        own = self.fingerprints.get(w)
        if own is None or not self.behaviour.applies_outer_step:
            return
        for old in [k for k in self.fingerprints if k < w]:
            del self.fingerprints[old]
        electorate = Electorate.from_metagraph(node.chain.metagraph(), joiner=node.uid)
        network = majority_fingerprint(node, electorate, w, seconds=fetch_budget(node.chain, node.hparams))
        if network is None or network == own:
            return
        log.warning("%s is out of step since window %d (θ %s, validators %s); rejoining from a checkpoint",
                    node.name, w, own[:12], network[:12])
        self.fingerprints.clear()
        node.window = join_from_checkpoint(node)

    def restore_extra_state(self, extra: dict[str, torch.Tensor]) -> None:
        """Error feedback and AdamW moments from local state. θ was checked when it was loaded;
        a damaged extra section (names or shapes off) must not stop the miner on every restart:
        it starts those buffers fresh instead, which costs one window's residual and moments."""
        ef = {k.removeprefix("ef."): v for k, v in extra.items() if k.startswith("ef.")}
        opt = {k.removeprefix("opt."): v for k, v in extra.items() if k.startswith("opt.")}
        try:
            if ef:
                self.compressor.load_state_dict(ef)
            self.trainer.load_state_tensors(opt)
        except (KeyError, ValueError) as exc:
            log.error("%s local state's error feedback / optimizer section is damaged (%s); starting them fresh",
                      self.node.name, exc)
            self.compressor.reset()
            self.trainer.reset_optimizer()

    def one_window(self) -> None:
        node, w = self.node, self.node.window
        trains = self.behaviour.trains(w) and self.has_time_to_train(w)
        message, loss = self.train_and_compress(w) if trains else (None, None)
        uploaded = self.publish(w, message)
        gathered = self.follow()
        if gathered is None:
            return
        metrics.loss("train", loss)
        metrics.peers((f.ok, str(f.result.reason)) for f in gathered.fetched.values())
        fp = model_fingerprint(node.model)
        self.fingerprints[w] = fp
        publish_fingerprint(node, w, fp, gathered.accepted)
        extra = {f"ef.{k}": v for k, v in self.compressor.state_dict().items()}
        extra.update({f"opt.{k}": v for k, v in self.trainer.state_tensors().items()})
        save_node_state(node.state_path, node.model, node.hparams.run_id, node.window, extra)
        prune_own_objects(node)
        node.events.append(
            WindowRecord(node.name, "miner", node.uid, w, fp, gathered.accepted, loss=loss, uploaded_bytes=uploaded)
        )
        log.info("%s window %d: loss %s, uploaded %d B, gathered %s -> %s", node.name, w, loss, uploaded, gathered.accepted, fp)
        log_standing(log, node.name, node.uid, w, gathered, node.chain, node.hparams)

    def follow(self) -> WindowGather | None:
        """Gather the window and (unless the behaviour skips it) apply the outer step; None if stopped."""
        node = self.node
        if self.behaviour.applies_outer_step:
            gathered = advance(node)
        elif wait_for_slot_close(node, node.window):
            gathered = gather(node)
            node.window = gathered.window + 1  # on to the next window from the same, now stale, θ
        else:
            gathered = None
        if gathered is not None:
            self.behaviour.observe(gathered, node.shapes)
        return gathered

    def has_time_to_train(self, w: int) -> bool:
        """Whether training window w now can finish by the middle of its upload slot."""
        clock = self.node.clock
        next_start = clock.window_start_time(w + 1)
        window_seconds = next_start - clock.window_start_time(w)
        needed = self.train_seconds if self.train_seconds is not None else window_seconds / 2
        if time.time() + needed <= next_start + self.node.hparams.window.upload_slot_seconds / 2:
            return True
        log.info("%s skips training window %d: %.1f s needed, too little of the window left", self.node.name, w, needed)
        if needed > window_seconds:
            log.warning(
                "%s needs %.1f s to train a %.1f s window: too slow to contribute (CPU threads contended? "
                "try --threads or a faster --device)", self.node.name, needed, window_seconds,
            )
        # A skipped window measures nothing. Without decay one slow window (a cold start, a passing
        # load spike) would keep the miner skipping for good; the assumed half window decays too,
        # so gathers that run long every window (a peer stalling to its deadline) cannot keep a
        # new miner from ever training.
        self.train_seconds = needed * SKIP_DECAY
        return False

    def train_and_compress(self, w: int) -> tuple[CompressedMessage, float]:
        node, hp = self.node, self.node.hparams
        started = time.time()
        base = {n: p.detach().clone() for n, p in node.model.named_parameters()}
        data_uid, data_window = self.behaviour.assignment(node.uid, w)
        batches = assigned_batches(
            self.shards, hp.seed, data_uid, data_window, hp.training.inner_steps, hp.training.batch_size,
            hp.training.seq_len,
        )
        # One network-wide schedule: a miner that joins late is at the same point of warm-up/cosine.
        self.trainer.global_step = w * hp.training.inner_steps
        stats = self.trainer.train_window(batches)
        with torch.no_grad():
            delta = {}
            for name, p in node.model.named_parameters():
                delta[name] = base[name] - p
                p.copy_(base[name])  # back to θ_w: the outer step is applied to the shared model
        message = self.compressor.compress(delta)
        self.train_seconds = time.time() - started
        return message, stats.loss_last

    def signed(self, w: int, message: CompressedMessage) -> bytes:
        """Window w's payload of ``message``: our uid and hotkey, the θ_w we hold, our signature."""
        node, hp = self.node, self.node.hparams
        manifest = PayloadManifest.for_message(
            message, run_id=hp.run_id, window=w, uid=node.uid, hotkey=node.signer.hotkey,
            global_step=(w + 1) * hp.training.inner_steps, base_fingerprint=model_fingerprint(node.model),
            pipeline_stage=self.stage_claim(),
        )
        return encode_payload(message, manifest, sign=node.signer.sign)

    def publish(self, w: int, message: CompressedMessage | None) -> int:
        """Build the behaviour's payload for window w at its upload time and put it; bytes put."""
        node = self.node
        if not wait_for_window_open(node, w + 1):  # the slot starts at that block's real timestamp
            return 0
        start, end = self.behaviour.upload_times(*node.clock.upload_slot(w))
        if not node.sleep_until(start):
            return 0
        ctx = WindowContext(
            window=w, uid=node.uid, shapes=dict(node.shapes), codec=self.compressor.params, honest=message,
            sign=lambda msg: self.signed(w, msg), peer_updates=lambda: self.poll_peers(w, end),
        )
        payload = self.behaviour.payload(ctx)
        return self.upload(w, payload, start, end) if payload is not None else 0

    def poll_peers(self, w: int, end: float) -> dict[int, SparseUpdate]:
        """Other miners' accepted uploads of window w, read until at least one is there or time is up."""
        while True:
            found = read_peer_uploads(self.node, w)
            if found or time.time() > end - 2 * PEER_POLL_SECONDS or self.node.stop.wait(PEER_POLL_SECONDS):
                return found

    def upload(self, w: int, payload: bytes, start: float | None = None, end: float | None = None) -> int:
        """Put the payload from ``start`` (default: the honest time in window w's slot), retrying
        until ``end`` (default: the slot's end); never overwrite."""
        node = self.node
        if start is None or end is None:
            if not wait_for_window_open(node, w + 1):
                return 0
            start, end = Behaviour().upload_times(*node.clock.upload_slot(w))
        if not node.sleep_until(start):
            return 0
        key = payload_key(node.hparams.run_id, w, node.uid)
        delay = 0.25
        while time.time() < end and not node.stop.is_set():
            try:
                with metrics.timed("upload"):
                    node.store.put(key, payload)
                metrics.payload_bytes("uploaded", len(payload))
                return len(payload)
            except ObjectExists:
                return 0  # uploaded before a restart: payloads are immutable
            except StorageError as exc:
                log.warning("%s upload for window %d failed, retrying: %s", node.name, w, exc)
                node.stop.wait(delay)
                delay = min(delay * 2, 2.0)
        log.error("%s missed the upload slot of window %d", node.name, w)
        return 0


def run(args) -> int:
    """``tessera miner``: the honest window with the configured behaviour, or a byte-level adversary."""
    from neurons.config import node_config_from_args

    config = node_config_from_args("miner", args)  # a ConfigError ends the start as one line (neurons.cli)
    if config.behaviour in BYTE_LEVEL_KINDS:
        # These never train or follow θ; they serve crafted bytes or a crafted endpoint. The config
        # refused them off the devchain, so the local subnet's code is only imported there.
        from neurons.localnet.adversary import serve

        return serve(config, config.behaviour)
    if config.pipeline is not None:  # one stage of a pipeline group: trains its layers with its neighbours
        from neurons.stage_miner import StageMiner

        return run_node("miner", args, StageMiner)
    return run_node("miner", args, Miner)


def configure(parser) -> None:
    configure_role(parser, "miner", Miner)
    parser.set_defaults(func=run)


if __name__ == "__main__":
    import sys

    from neurons.cli import main

    sys.exit(main(["miner", *sys.argv[1:]]))
