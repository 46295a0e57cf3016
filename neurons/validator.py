"""The validator: follow the network like a miner, and judge every miner's payload each window.

Window w, evaluated while w+1 runs (DESIGN.md "Validator, for window w"):
  wait for w's upload slot to close → fetch every registered miner's payload (stage 1: on time,
  size, decodes, signature, manifest, in sync, not a copy) → stage 2 for every candidate that
  passed (its update alone on θ_w: loss on its own data and on data it could not predict) →
  the same outer step as everyone → held-out loss → score book, ratings, weights → set_weights
  every ``windows_per_weights`` → fingerprint, checkpoint, local state.
"""

from __future__ import annotations

import logging
import os
import time
from collections.abc import Collection
from dataclasses import dataclass, field, replace

import torch

from compression.sparse import SparseUpdate
from neurons import metrics
from neurons.checkpoint import CheckpointManifest, checkpoint_bytes
from neurons.data import Assignments, assigned_batches, heldout_batches, random_batches
from neurons.distributed import EVALUATE
from neurons.events import WindowRecord
from neurons.fetch import FetchedPayload
from neurons.fingerprint import model_fingerprint
from neurons.gather import miner_uids
from neurons.node import (
    Node,
    apply,
    catch_up,
    configure_role,
    gather,
    open_shards,
    prune_own_objects,
    publish_fingerprint,
    run_windows,
    start_window,
    wait_for_slot_close,
    warn_if_excluded,
)
from neurons.parallel_eval import evaluate_handler, measure_candidates
from neurons.stage_groups import claim_of, data_uid, partner_update, stage_contexts, stage_group_problems
from neurons.state import save_node_state
from neurons.train import evaluate
from neurons.verdicts import log_window, rejection_details, weights_line, window_verdicts
from neurons.weights_schedule import WeightsOutcome, WeightsSchedule
from protocol.acceptance import RejectReason, Stage1Result
from protocol.keys import checkpoint_key
from scoring.copycheck import CopyMemory, CopyPolicy, Upload, find_copies, sketch_update
from scoring.gauntlet import AlreadyScoredError, WindowEvidence, WindowResult, score_window
from scoring.lossscore import LossMeasurement, sequence_losses
from scoring.outliers import norm_outliers, scaled_to, typical_norms, update_norm
from scoring.sampling import StageTwoSample, sample_candidates
from scoring.state import ScoreBook, ScoreBookError
from scoring.sync import sync_score
from scoring.weights import GatePolicy
from storage import ObjectExists, StorageError
from storage.atomic import atomic_write

log = logging.getLogger(__name__)

HELDOUT_BATCHES = 4
MAX_LAG_WINDOWS = 3


@dataclass
class Stage1:
    results: dict[int, Stage1Result]
    sync: dict[int, float]
    norms: dict[int, float] = field(default_factory=dict)  # update norm of every in-sync candidate
    # per candidate, a typical update's norm over the same parameters (absent: too few to say)
    typical: dict[int, float] = field(default_factory=dict)


class Validator:
    def __init__(self, node: Node) -> None:
        self.node = node
        hp = node.hparams
        self.shards = open_shards(node)
        self.book_path = node.config.state_dir / "scores.json"
        self.book = _load_book(self.book_path)
        self.copies = CopyMemory(hp.scoring.copy_memory_windows)
        self.copy_policy = CopyPolicy(overlap=hp.scoring.copy_overlap_threshold)
        self.secret = _validator_secret(node.config.state_dir / "validator.secret")
        self.eval_budget = node.config.eval_budget  # stage-2 measurements per window (None: all)
        t = hp.training
        # The last applied aggregate: stage 2's reference update (None until a window was applied here).
        self.reference: dict[str, torch.Tensor] | None = None
        self.heldout = heldout_batches(self.shards, HELDOUT_BATCHES, t.batch_size, t.seq_len)
        self.weights = WeightsSchedule(
            node.chain, node.signer, node.uid, version_key=hp.scoring.weights_version_key,
            windows_per_weights=hp.scoring.windows_per_weights, name=node.name,
        )

    @staticmethod
    def follower_handlers(model, hparams, config, world) -> dict:
        """What a rank other than 0 does for a validator (``neurons.node.follow_leader``): stage 2."""
        return {EVALUATE: evaluate_handler(model, world)}

    def run(self) -> None:
        start_window(self.node)
        catch_up(self.node)
        run_windows(self.node, self.one_window, self.ready)

    def ready(self) -> bool:
        """Wait until window ``node.window`` can be judged; False if asked to stop."""
        node = self.node
        warn_if_excluded(node)  # every window: a validator whose weights would not count says why
        # Judging a window late is fine (LastModified decides what was on time); only a
        # validator that fell far behind replays instead, to rejoin the present quickly.
        if node.clock.current_window() - node.window > MAX_LAG_WINDOWS:
            catch_up(node)
        return not node.stop.is_set() and wait_for_slot_close(node, node.window)

    def one_window(self) -> None:
        node, hp, w = self.node, self.node.hparams, self.node.window
        times: dict[str, float] = {}
        tick = time.time()
        metagraph = node.chain.metagraph(node.clock.first_block(w))
        miners = [uid for uid in miner_uids(metagraph, hp) if uid != node.uid]  # not itself before its first weights
        gathered = gather(node, also_fetch=miners)
        times["fetch"], tick = time.time() - tick, time.time()
        base = model_fingerprint(node.model)
        stage1 = self.stage1(w, {uid: gathered.fetched[uid] for uid in miners}, base)
        times["filter"], tick = time.time() - tick, time.time()
        sample = self.sample(w, stage1, miners)
        measurements = self.stage2(w, gathered.fetched, stage1, miners, sample.chosen)
        times["loss"], tick = time.time() - tick, time.time()
        metrics.observe("evaluate", times["loss"])
        metrics.peers((r.passed, str(r.reason)) for r in stage1.results.values())
        self.reference = apply(node, gathered)  # the next window's stage-2 reference
        heldout = evaluate(node.model, self.heldout)
        metrics.loss("heldout", heldout)
        try:
            hotkeys = {n.uid: n.hotkey for n in metagraph.neurons}
            evidence = WindowEvidence(w, hotkeys, list(stage1.results.values()), measurements, stage1.sync)
            result = score_window(self.book, evidence, hp.scoring, hp.outer, burn_uid=hp.scoring.burn_uid,
                                  seed=hp.run_id, gate=self.gate(sample))
        except AlreadyScoredError:
            # killed after saving the book but before saving θ: the window is re-applied, not re-scored
            log.info("%s window %d was scored before a restart", node.name, w)
            result = WindowResult(w, {}, {}, {}, {})
        self.book.save(self.book_path)
        weights_set = self.maybe_set_weights(w, result.weights)
        verdicts = window_verdicts(w, stage1.results, self.book, result.scores, result.weights, self.gate(sample))
        log_window(log, node.name, w, verdicts,
                   weights_line(weights_set.status, weights_set.note, result.weights, hp.scoring.burn_uid))
        times["score"] = time.time() - tick
        fp = model_fingerprint(node.model)
        publish_fingerprint(node, w, fp, gathered.accepted)
        self.maybe_checkpoint(w, fp)
        save_node_state(node.state_path, node.model, hp.run_id, node.window, {})
        prune_own_objects(node)
        node.events.append(
            WindowRecord(
                node.name, "validator", node.uid, w, fp, gathered.accepted, loss=heldout, heldout_loss=heldout,
                payload_bytes={u: f.downloaded for u, f in gathered.fetched.items() if f.downloaded and u in miners},
                scores=result.scores, weights=result.weights, stage_seconds=times, weights_block=weights_set.block,
                weights_note=weights_set.note,
                rejected={u: str(r.reason) for u, r in stage1.results.items() if not r.passed},
                rejected_detail=rejection_details(stage1.results), verdicts=verdicts,
            )
        )
        log.info("%s window %d: held-out loss %.4f, scores %s", node.name, w, heldout, result.scores)

    def stage1(self, w: int, fetched: dict[int, FetchedPayload], base_fingerprint: str) -> Stage1:
        """I/O verdicts from the fetch, then sync (base fingerprint) and copy checks."""
        results = {uid: f.result for uid, f in fetched.items()}
        sync: dict[int, float] = {}
        for uid, f in fetched.items():
            if not f.ok:
                continue
            sync[uid] = sync_score(f.decoded.manifest.base_fingerprint, base_fingerprint)
            if sync[uid] < self.node.hparams.scoring.min_sync_score:
                results[uid] = Stage1Result.reject(uid, RejectReason.OUT_OF_SYNC, "trained from another θ")
        passed = {u: fetched[u].decoded.update for u, r in results.items() if r.passed}
        norms = {u: update_norm(update) for u, update in passed.items()}
        typical = typical_norms(passed)
        for uid, detail in norm_outliers(norms, typical).items():  # boosting, not contribution (scoring.outliers)
            results[uid] = Stage1Result.reject(uid, RejectReason.OUT_OF_BOUNDS, detail)
        for uid, detail in stage_group_problems(fetched, results).items():
            results[uid] = Stage1Result.reject(uid, RejectReason.UNGROUPED, detail)
        candidates = [fetched[u] for u, r in results.items() if r.passed]
        sketches = {f.uid: sketch_update(f.decoded.update) for f in candidates}
        uploads = [Upload(f.uid, f.last_modified or 0.0, sketches[f.uid]) for f in candidates]
        for uid, finding in find_copies(w, uploads, self.copies, self.copy_policy).items():
            results[uid] = Stage1Result.reject(uid, RejectReason.COPY, finding.detail)
        self.copies.remember(w, {u: s for u, s in sketches.items() if results[u].passed})
        return Stage1(results, sync, norms, typical)

    def sample(self, w: int, stage1: Stage1, miners: list[int]) -> StageTwoSample:
        """Who stage 2 measures this window: every candidate, or with ``--validator.eval-budget``
        a secret sample that still measures every miner within a few windows (``scoring.sampling``)."""
        passed = [u for u, r in stage1.results.items() if r.passed]
        return sample_candidates(passed, miners, w, self.secret, self.eval_budget)

    def gate(self, sample: StageTwoSample) -> GatePolicy:
        """The payment gate, its staleness widened by the windows the sample may leave a miner out."""
        policy = GatePolicy.from_config(self.node.hparams.scoring)
        return replace(policy, stale_windows=policy.stale_windows + sample.excused_windows)

    def stage2(
        self, w: int, fetched: dict[int, FetchedPayload], stage1: Stage1, miners: list[int],
        chosen: Collection[int] | None = None,
    ) -> dict[int, LossMeasurement]:
        """Every candidate that passed stage 1 (of ``chosen`` when given), measured on θ_w (a
        pipeline stage: on θ_w plus its group partners' updates), then reverted, with per-sequence
        losses on its assigned data and on random data no registered miner was given. Each update
        is measured at most at the window's median norm, as the aggregate's clip would apply it:
        a larger step buys no larger LossScore (``scoring.outliers``)."""
        results = stage1.results
        hp = self.node.hparams
        candidates = sorted(u for u, r in results.items() if r.passed and (chosen is None or u in chosen))
        contexts = stage_contexts({u: claim_of(fetched[u]) for u, r in results.items() if r.passed})
        scaled = {u: scaled_to(fetched[u].decoded.update, stage1.norms[u], stage1.typical.get(u))
                  for u in {*candidates, *(p for u in candidates for p in contexts.get(u, ()))}}
        stages = [u for u in candidates if fetched[u].decoded.manifest.pipeline_stage is not None]
        whole = [u for u in candidates if u not in stages]
        given = Assignments(hp.seed, tuple(miners), hp.training.inner_steps * hp.training.batch_size)
        # A stage carries part of a replica's update and so a smaller own-data edge: it is measured
        # on more sequences (scoring.stage_eval_factor), next to its group partners' updates
        # (neurons.stage_groups.stage_contexts), on its group's data (stage 0's assignment).
        n = hp.scoring.eval_batches
        measured = self.measure(w, fetched, {u: scaled[u] for u in whole}, n, given)
        context = {u: partner_update(scaled, contexts[u]) for u in stages if u in contexts}
        stage_n = n * hp.scoring.stage_eval_factor
        return measured | self.measure(w, fetched, {u: scaled[u] for u in stages}, stage_n, given, context)

    def measure(
        self, w: int, fetched: dict[int, FetchedPayload], updates: dict[int, SparseUpdate], n: int,
        given: Assignments, contexts: dict[int, SparseUpdate] | None = None,
    ) -> dict[int, LossMeasurement]:
        """``updates`` measured on ``n`` batches of each one's data uid's assignment and ``n``
        random batches no registered miner was given. Every rank of the node measures a share
        (neurons.parallel_eval), with the previous window's aggregate as reference on the same
        sequences (scoring.lossscore.reference_t)."""
        if not updates:
            return {}
        node, t = self.node, self.node.hparams.training
        rand = random_batches(self.shards, self.secret, w, n, t.batch_size, t.seq_len, exclude=given)
        own = {u: assigned_batches(self.shards, node.hparams.seed, data_uid(fetched[u]), w, n, t.batch_size, t.seq_len)
               for u in updates}
        contexts = contexts or {}
        # θ_w's losses on the random batches, shared by every update measured without a context
        before = sequence_losses(node.model, rand) if set(updates) - set(contexts) else ()
        return measure_candidates(node.world, node.model, updates, node.hparams.outer.outer_lr, own, rand, before,
                                  self.reference, contexts)

    def maybe_set_weights(self, w: int, weights: dict[int, float]) -> WeightsOutcome:
        """Hand the window's weights to the schedule, which sets them when the chain allows."""
        outcome = self.weights.step(w, weights)
        if outcome.status in ("set", "refused", "failed"):
            metrics.weights_set(outcome.status == "set")
        return outcome

    def maybe_checkpoint(self, w: int, fingerprint: str) -> None:
        """Every ``interval_windows`` windows, publish θ_{w+1} for joining nodes."""
        node, hp = self.node, self.node.hparams
        if (w + 1) % hp.checkpoint.interval_windows:
            return
        manifest = CheckpointManifest(
            run_id=hp.run_id, window=w, global_step=(w + 1) * hp.training.inner_steps, fingerprint=fingerprint
        )
        try:
            node.store.put(checkpoint_key(hp.run_id, w), checkpoint_bytes(node.model, manifest))
        except ObjectExists:
            pass
        except StorageError as exc:
            log.warning("%s could not publish checkpoint %d: %s", node.name, w, exc)


def _load_book(path) -> ScoreBook:
    """The score book, or an empty one when the file is damaged: the damaged file is moved aside
    as ``<name>.corrupt`` (nothing is lost; an operator can inspect or restore it) instead of
    stopping the validator on every start. Miners' records rebuild from their next windows."""
    try:
        return ScoreBook.load(path)
    except ScoreBookError as exc:
        aside = path.with_name(path.name + ".corrupt")
        log.error("score book %s is damaged (%s); moved to %s, starting an empty book", path, exc, aside)
        os.replace(path, aside)
        return ScoreBook()


SECRET_BYTES = 32


def _validator_secret(path) -> bytes:
    """A private random secret, kept across restarts, that seeds the unpredictable data pool.

    A file of the wrong length is not used (it would seed a pool others might predict, e.g. an
    empty one): it is moved aside as ``<name>.corrupt`` and a new secret is made."""
    if path.exists():
        secret = path.read_bytes()
        if len(secret) == SECRET_BYTES:
            return secret
        log.error("validator secret %s holds %d bytes, not %d; moved aside, making a new one",
                  path, len(secret), SECRET_BYTES)
        os.replace(path, path.with_name(path.name + ".corrupt"))
    secret = os.urandom(SECRET_BYTES)
    atomic_write(path, secret)  # 0600 from the first byte on disk
    return secret


def configure(parser) -> None:
    configure_role(parser, "validator", Validator)


if __name__ == "__main__":
    import sys

    from neurons.cli import main

    sys.exit(main(["validator", *sys.argv[1:]]))
