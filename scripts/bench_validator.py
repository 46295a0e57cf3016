"""Validator throughput: seconds per window against the number of miners.

    .venv/bin/python scripts/bench_validator.py --miners 16,64,256 --json

One window of the validator's work per point, on the project's own code paths:

- payloads: ``--trained`` miners (default 4) really train the preset's H inner steps on their own
  assigned data from θ_w (``neurons.train.InnerTrainer``); miner i's pseudo-gradient is trained
  Δ_(i mod K) with each coordinate multiplied by a factor drawn uniformly from [1 - a, 1 + a]
  (a = ``--spread``, a seed per miner). Its top-k index set then shares about 15-20 % with
  another miner's from the same Δ (honest miners trained apart: about 6 %), far below the copy
  check's thresholds, and its norm stays inside the network's bounds (a log-normal factor did not). Each is compressed by the real codec (a fresh
  ``ErrorFeedbackCompressor``), carries θ_w's fingerprint and is signed by its own sr25519 hotkey.
- storage: a real S3 server on loopback (SeaweedFS, ``neurons.localnet.seaweedfs``), one bucket
  written by a read-write key and read through a read-only key, as a validator reads a miner's
  bucket (``--store local`` uses ``storage.local.LocalStore`` instead).
- copy memory: ``copy_memory_windows`` earlier windows of N sketches each (other draws of the same
  perturbation, ``remembered``), so the copy check compares against a full memory as in a
  steady-state window.
- reference: the previous window's aggregate (the trained Δs'), so stage 2 runs its reference
  pass as on every window after the first.

Stages (seconds, ``stage_seconds``):
- ``fetch``: HEAD, slot and size checks, capped GET of every miner's payload, ``MAX_FETCH_WORKERS``
  threads (``neurons.fetch``'s store calls);
- ``decode``: ``protocol.acceptance.judge_payload`` on every payload (signature, codec, manifest,
  bounds);
- ``stage1``: ``Validator.stage1`` (sync, norm outliers, copy check against the memory);
- ``stage2``: ``Validator.stage2`` (every candidate's update alone on θ_w, per-sequence losses on
  its own and on secret random data, the reference update's pass);
- ``aggregate``: the outer step of the gather set and the next reference
  (``neurons.gather.apply_gather``, which also returns the reference);
- ``score``: score book, ratings and weights (``scoring.gauntlet.score_window``).

``fetch_many_seconds`` is the validator's own fetch function (``neurons.fetch.fetch_many``: fetch
and decode together, in threads) on the same objects, as a cross-check of fetch + decode.
A benchmark measures; nothing here asserts a time.
"""

from __future__ import annotations

import argparse
import copy
import json
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from contextlib import ExitStack
from dataclasses import dataclass, replace
from pathlib import Path
from types import SimpleNamespace

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from compression import ErrorFeedbackCompressor, PayloadManifest, SparseUpdate, decode_message, encode_payload  # noqa: E402
from neurons.corpus import DEFAULT_MAX_CHARS, ensure_embedded_data  # noqa: E402
from neurons.data import assigned_batches  # noqa: E402
from neurons.distributed import World  # noqa: E402
from neurons.fetch import MAX_FETCH_WORKERS, FetchedPayload, fetch_many  # noqa: E402
from neurons.fingerprint import model_fingerprint  # noqa: E402
from neurons.gather import UpdateLimits, WindowGather, acceptance_rule_for, apply_gather  # noqa: E402
from neurons.model import build_model, param_shapes  # noqa: E402
from neurons.peers import Peer  # noqa: E402
from neurons.shards import TokenShards  # noqa: E402
from neurons.train import InnerTrainer  # noqa: E402
from neurons.validator import Validator  # noqa: E402
from protocol.acceptance import (  # noqa: E402
    AcceptanceRule,
    RejectReason,
    Stage1Result,
    check_size,
    check_slot,
    judge_payload,
    parameter_norms,
)
from protocol.gather_set import GatherSet  # noqa: E402
from protocol.hparams import Hparams, load_hparams  # noqa: E402
from protocol.keys import payload_key  # noqa: E402
from protocol.signing import HotkeySigner  # noqa: E402
from scoring.copycheck import CopyMemory, CopyPolicy, sketch_update  # noqa: E402
from scoring.gauntlet import WindowEvidence, score_window  # noqa: E402
from scoring.state import ScoreBook  # noqa: E402
from storage import ObjectStore, StorageError  # noqa: E402

WINDOW = 5  # any window after the first: the reference update exists
STAGES = ("fetch", "decode", "stage1", "stage2", "aggregate", "score")
BLOCK_SECONDS = 12.0  # a Bittensor block: a preset's window is blocks_per_window of them
# Forward passes over ``eval_batches`` batches in stage 2 (neurons.parallel_eval): per candidate its
# own data before and after, the random data after, its own data under the reference update;
# per window the random data before and under the reference.
PASSES_PER_CANDIDATE, PASSES_PER_WINDOW = 4, 2


def forward_flops_per_token(hp: Hparams) -> float:
    """Matmul FLOPs of one forward pass, per token: two per weight of every matmul (all but the
    embedding lookup and the norms) plus causal attention (scores and mixing: 2 x 2 x hidden per
    earlier position per layer, (seq_len + 1) / 2 positions on average)."""
    m, seq = hp.model, hp.training.seq_len
    kv_dim = m.num_kv_heads * (m.hidden_size // m.num_heads)
    per_layer = 2 * m.hidden_size**2 + 2 * m.hidden_size * kv_dim + 3 * m.hidden_size * m.intermediate_size
    weights = m.num_layers * per_layer + m.hidden_size * m.vocab_size
    return 2.0 * weights + m.num_layers * 4.0 * m.hidden_size * (seq + 1) / 2


def stage2_flops(hp: Hparams) -> tuple[float, float]:
    """(FLOPs per candidate, FLOPs per window) of stage 2's forward passes for a preset."""
    t = hp.training
    pass_flops = forward_flops_per_token(hp) * hp.scoring.eval_batches * t.batch_size * t.seq_len
    return PASSES_PER_CANDIDATE * pass_flops, PASSES_PER_WINDOW * pass_flops


def projection(preset: str, tflops: float, miners: int, budget: int | None) -> dict:
    """Computed, not measured: stage 2 of ``miners`` candidates of ``preset`` on a device that
    sustains ``tflops`` TFLOP/s, against the preset's window."""
    hp = load_hparams(preset)
    per_candidate, per_window = stage2_flops(hp)
    measured = miners if budget is None else min(miners, budget)
    seconds = (measured * per_candidate + per_window) / (tflops * 1e12)
    window = hp.window.blocks_per_window * BLOCK_SECONDS
    return {"preset": preset, "assumed_tflops": tflops, "miners": miners, "eval_budget": budget,
            "flops_per_candidate": per_candidate, "stage2_seconds": seconds, "window_seconds": window,
            "margin": window / seconds}


@dataclass
class Fixture:
    """What every point shares: the preset, θ_w, the data and the trained pseudo-gradients."""

    hp: Hparams
    shards: TokenShards
    model: torch.nn.Module
    trained: list[dict[str, torch.Tensor]]
    reference: dict[str, torch.Tensor]
    spread: float

    @property
    def shapes(self) -> dict[str, tuple[int, ...]]:
        return param_shapes(self.model)


def train_deltas(hp: Hparams, shards: TokenShards, model: torch.nn.Module, count: int) -> list[dict[str, torch.Tensor]]:
    """``count`` honest pseudo-gradients: H inner steps each on its own assignment, from θ_w."""
    t, out = hp.training, []
    for uid in range(1, count + 1):
        local = copy.deepcopy(model)
        trainer = InnerTrainer(local, t, "cpu")
        trainer.global_step = WINDOW * t.inner_steps
        trainer.train_window(assigned_batches(shards, hp.seed, uid, WINDOW, t.inner_steps, t.batch_size, t.seq_len))
        with torch.no_grad():
            base = dict(model.named_parameters())
            out.append({n: base[n].detach() - p.detach() for n, p in local.named_parameters()})
    return out


def perturbed(fx: Fixture, i: int, draw: int) -> dict[str, torch.Tensor]:
    """Miner i's pseudo-gradient: a trained one, every coordinate scaled by U[1 - a, 1 + a]."""
    gen = torch.Generator().manual_seed(1_000_003 * draw + i)
    delta = fx.trained[i % len(fx.trained)]
    return {n: d * (1 + fx.spread * (2 * torch.rand(d.shape, generator=gen) - 1)) for n, d in delta.items()}


def compressor(hp: Hparams, shapes) -> ErrorFeedbackCompressor:
    c = hp.codec
    return ErrorFeedbackCompressor(shapes, c.chunk_size, c.topk_per_chunk, c.ef_beta)


def make_payloads(fx: Fixture, uids: list[int]) -> tuple[dict[int, bytes], dict[int, str]]:
    """Signed payloads of window ``WINDOW`` and each uid's hotkey."""
    hp, shapes, fp = fx.hp, fx.shapes, model_fingerprint(fx.model)
    payloads, hotkeys = {}, {}
    for uid in uids:
        signer = HotkeySigner.from_uri(f"//bench-validator-miner-{uid}")
        msg = compressor(hp, shapes).compress(perturbed(fx, uid, draw=0))
        manifest = PayloadManifest.for_message(
            msg, run_id=hp.run_id, window=WINDOW, uid=uid, hotkey=signer.hotkey,
            global_step=(WINDOW + 1) * hp.training.inner_steps, base_fingerprint=fp,
        )
        payloads[uid], hotkeys[uid] = encode_payload(msg, manifest, sign=signer.sign), signer.hotkey
    return payloads, hotkeys


MEMORY_POOL = 16  # distinct sketches per remembered window, dealt to the miners in turn


def remembered(fx: Fixture, uids: list[int], windows: int) -> CopyMemory:
    """A copy memory holding ``windows`` earlier windows of one sketch per miner. Each window's
    sketches come from ``MEMORY_POOL`` other draws of the perturbation, dealt round-robin: every
    upload is compared against N sketches per window, as in a steady state, at a fraction of the
    setup cost (remembered sketches are never compared with each other)."""
    memory = CopyMemory(fx.hp.scoring.copy_memory_windows)
    for back in range(windows, 0, -1):
        pool = []
        for i in range(min(MEMORY_POOL, len(uids))):
            update: SparseUpdate = decode_message(compressor(fx.hp, fx.shapes).compress(perturbed(fx, i, draw=back)))
            pool.append(sketch_update(update))
        memory.remember(WINDOW - back, {uid: pool[k % len(pool)] for k, uid in enumerate(uids)})
    return memory


class Directory:
    """The peers a validator reads: every miner's bucket through a read-only store."""

    def __init__(self, store: ObjectStore, hotkeys: dict[int, str]) -> None:
        self.peers = {uid: Peer(uid, hk, store) for uid, hk in hotkeys.items()}

    def get(self, uid: int) -> Peer | None:
        return self.peers.get(uid)


def download(peer: Peer, rule: AcceptanceRule, deadline: float) -> tuple[int, bytes | None, float]:
    """The store calls of ``neurons.fetch._fetch`` before judging: HEAD, slot, size, capped GET."""
    key = payload_key(rule.run_id, rule.window, peer.uid)
    info = peer.store.head(key, deadline=deadline)
    stamp = info.last_modified.timestamp()
    if check_slot(stamp, rule.slot_start, rule.slot_seconds) or check_size(info.size, rule.max_bytes):
        return peer.uid, None, stamp
    return peer.uid, peer.store.get(key, max_bytes=rule.max_bytes, deadline=deadline), stamp


def scoring_validator(fx: Fixture, memory: CopyMemory, budget: int | None) -> Validator:
    """A Validator holding only what ``stage1`` and ``stage2`` read (no chain, bucket or wallet):
    the benchmark calls the validator's own methods instead of copies of them."""
    hp = fx.hp
    v = Validator.__new__(Validator)
    v.node = SimpleNamespace(hparams=hp, model=fx.model, uid=0, world=World())  # one process
    v.shards = fx.shards
    v.copies = memory
    v.copy_policy = CopyPolicy(overlap=hp.scoring.copy_overlap_threshold)
    v.secret = b"bench-validator-secret-32-bytes!"
    v.reference = fx.reference
    v.eval_budget = budget
    return v


def run_point(fx: Fixture, n: int, store_rw: ObjectStore, store_ro: ObjectStore, budget: int | None = None) -> dict:
    hp, shapes = fx.hp, fx.shapes
    uids = list(range(1, n + 1))
    payloads, hotkeys = make_payloads(fx, uids)
    slot_start = time.time() - 1.0
    for uid, data in payloads.items():
        store_rw.put(payload_key(hp.run_id, WINDOW, uid), data)
    theta = {k: v.detach().clone() for k, v in fx.model.state_dict().items()}
    norms = parameter_norms(fx.model)
    # The slot is widened to the time the uploads took: the benchmark times reading, not racing.
    rule = replace(acceptance_rule_for(hp, WINDOW, slot_start, norms), slot_seconds=time.time() - slot_start + 60)
    peers = Directory(store_ro, hotkeys)
    validator = scoring_validator(fx, remembered(fx, uids, hp.scoring.copy_memory_windows), budget)
    times: dict[str, float] = {}

    tick = time.perf_counter()
    deadline = time.monotonic() + 600
    with ThreadPoolExecutor(max_workers=min(MAX_FETCH_WORKERS, n)) as pool:
        got = list(pool.map(lambda u: download(peers.get(u), rule, deadline), uids))
    times["fetch"], tick = time.perf_counter() - tick, time.perf_counter()
    fetched = {}
    for uid, data, stamp in got:
        if data is None:
            fetched[uid] = FetchedPayload(uid, Stage1Result.reject(uid, RejectReason.LATE, "bench slot"))
            continue
        verdict = judge_payload(data, uid, hotkeys[uid], rule, shapes)
        fetched[uid] = FetchedPayload(uid, verdict.result, len(data), stamp, verdict.decoded, len(data))
    times["decode"], tick = time.perf_counter() - tick, time.perf_counter()
    stage1 = validator.stage1(WINDOW, fetched, model_fingerprint(fx.model))
    times["stage1"], tick = time.perf_counter() - tick, time.perf_counter()
    sample = validator.sample(WINDOW, stage1, uids)
    measurements = validator.stage2(WINDOW, fetched, stage1, uids, sample.chosen)
    times["stage2"], tick = time.perf_counter() - tick, time.perf_counter()
    order = [u for u in uids if fetched[u].ok]
    gathered = WindowGather(WINDOW, GatherSet(uids[: hp.outer.gather_peers], []),
                            order[: hp.outer.gather_peers], fetched, norms)
    apply_gather(fx.model, gathered, shapes, hp.outer.outer_lr, UpdateLimits.from_hparams(hp))  # + the reference
    times["aggregate"], tick = time.perf_counter() - tick, time.perf_counter()
    evidence = WindowEvidence(WINDOW, hotkeys, list(stage1.results.values()), measurements, stage1.sync)
    score_window(ScoreBook(), evidence, hp.scoring, hp.outer, burn_uid=hp.scoring.burn_uid, seed=hp.run_id,
                 gate=validator.gate(sample))
    times["score"] = time.perf_counter() - tick
    fx.model.load_state_dict(theta)  # the next point starts from the same θ_w

    tick = time.perf_counter()
    real = fetch_many(peers, uids, rule, shapes, 600)
    fetch_many_seconds = time.perf_counter() - tick
    for uid in uids:  # objects are immutable (conditional put): the next point writes the same keys
        store_rw.delete(payload_key(hp.run_id, WINDOW, uid))
    passed = sum(r.passed for r in stage1.results.values())
    per_candidate, per_window = stage2_flops(hp)
    return {
        "miners": n,
        "seconds_per_window": sum(times.values()),
        "stage_seconds": times,
        "candidates": passed,
        "evaluated": len(measurements),
        "eval_budget": budget,
        "sampling_period": sample.period,
        "rejected": {str(r.reason): sum(1 for x in stage1.results.values() if x.reason == r.reason)
                     for r in stage1.results.values() if not r.passed},
        "payload_bytes": round(sum(map(len, payloads.values())) / n),
        "fetch_many_seconds": fetch_many_seconds,
        "fetch_many_accepted": sum(f.ok for f in real.values()),
        # the CPU's sustained rate in stage 2 (FLOPs counted by ``forward_flops_per_token``)
        "stage2_tflops": (len(measurements) * per_candidate + per_window) / times["stage2"] / 1e12,
    }


def open_stores(stack: ExitStack, kind: str, root: Path) -> tuple[ObjectStore, ObjectStore]:
    """(read-write, read-only) stores on one bucket."""
    if kind == "local":
        from storage.local import LocalStore

        store = LocalStore(root / "bucket")
        return store, store
    from neurons.localnet.seaweedfs import READ_ONLY, READ_WRITE, Identity, SeaweedServer

    writer = Identity.generate("miner", READ_WRITE, ["bench"])
    reader = Identity.generate("validator", READ_ONLY, ["bench"])
    server = stack.enter_context(SeaweedServer(root / "seaweed", [writer, reader]))
    return server.store(writer, "bench"), server.store(reader, "bench")


def fixture(hp: Hparams, data_dir: Path, corpus_chars: int, trained: int, spread: float) -> Fixture:
    shards = TokenShards(ensure_embedded_data(data_dir, hp.model.vocab_size, corpus_chars))
    model = build_model(hp.model, hp.seed)
    deltas = train_deltas(hp, shards, model, trained)
    reference = {n: torch.stack([d[n] for d in deltas]).mean(0) for n in deltas[0]}
    return Fixture(hp, shards, model, deltas, reference, spread)


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--miners", default="16,64,256", help="comma-separated miner counts, one point each")
    ap.add_argument("--json", action="store_true", help="print one JSON object")
    ap.add_argument("--hparams", default="tiny", help="preset name or hparams JSON path")
    ap.add_argument("--store", choices=("s3", "local"), default="s3", help="SeaweedFS on loopback, or a local directory")
    ap.add_argument("--trained", type=int, default=4, help="miners that really train (the others perturb theirs)")
    ap.add_argument("--spread", type=float, default=0.5, help="a: per-coordinate factors drawn from U[1 - a, 1 + a]")
    ap.add_argument("--data-dir", type=Path, default=Path(tempfile.gettempdir()) / "data-cache",
                    help="embedded corpus cache")
    ap.add_argument("--corpus-chars", type=int, default=DEFAULT_MAX_CHARS, help="embedded corpus size (tests)")
    ap.add_argument("--threads", type=int, default=0, help="torch threads (0: torch's default)")
    ap.add_argument("--eval-budget", type=int, default=None,
                    help="the validator's stage-2 budget per window (scoring.sampling; default: every candidate)")
    ap.add_argument("--project", default="150M", help="preset whose stage 2 is computed (not measured) for 256 miners")
    ap.add_argument("--device-tflops", default="40,400",
                    help="sustained TFLOP/s assumed for the projection, comma-separated (e.g. fp32, bf16)")
    args = ap.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    counts = [int(x) for x in args.miners.split(",") if x.strip()]
    hp = load_hparams(args.hparams)
    started = time.perf_counter()
    fx = fixture(hp, args.data_dir, args.corpus_chars, args.trained, args.spread)
    setup = time.perf_counter() - started
    points = []
    with ExitStack() as stack, tempfile.TemporaryDirectory(prefix="bench-validator-") as root:
        store_rw, store_ro = open_stores(stack, args.store, Path(root))
        for n in counts:
            try:
                points.append(run_point(fx, n, store_rw, store_ro, args.eval_budget))
                print(json.dumps(points[-1]), file=sys.stderr, flush=True)  # kept if a later point fails
            except StorageError as exc:
                raise SystemExit(f"bench_validator: storage failed at {n} miners: {exc}") from exc
    result = {
        "preset": hp.name, "store": args.store, "threads": torch.get_num_threads(), "torch": torch.__version__,
        "trained": args.trained, "spread": args.spread, "setup_seconds": setup, "points": points,
        "computed_not_measured": [
            projection(args.project, float(tf), 256, budget)
            for tf in args.device_tflops.split(",") if tf.strip() for budget in (None, 64)
        ],
    }
    if args.json:
        print(json.dumps(result, indent=1))
        return
    for p in points:
        stages = "  ".join(f"{k}={v:.3f}" for k, v in p["stage_seconds"].items())
        print(f"{p['miners']:4d} miners: {p['seconds_per_window']:.2f} s/window  {stages}")


if __name__ == "__main__":
    main()
