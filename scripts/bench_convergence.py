"""Does the compressed exchange train as well as the dense ones? DDP, DiLoCo and SparseLoCo compared.

R replicas in one process train the project's model (neurons.model) with the project's inner
trainer (neurons.train.InnerTrainer: AdamW, warm-up + cosine) on the project's data (replica r
gets the assignment of uid r+1 for each round, neurons.data.assigned_batches); every method sees
the same θ0, the same batches and the same number of inner steps. The loss is measured on the
fixed held-out split (neurons.data.heldout_batches) every H steps.

- ``ddp``: one AdamW step per inner step on the mean gradient of the R replicas' batches (one
  model, the R batches concatenated: the same mean loss). Bytes per round: a dense fp32 gradient
  per replica per step, H of them.
- ``diloco``: each replica runs H steps from θ; the mean pseudo-gradient Δ̄ = mean(θ − θ_r) goes
  through outer SGD with Nesterov momentum (``--diloco-lr``, ``--diloco-momentum``). Bytes per
  round: one dense fp32 pseudo-gradient per replica (4 bytes per parameter).
- ``sparseloco``: each replica's Δ_r goes through the miner's path: error feedback and the codec
  (compression.ErrorFeedbackCompressor), a signed payload (compression.encode_payload with a
  real sr25519 hotkey), decoded as a validator reads it (compression.decode_payload, signature
  checked), then compression.aggregate and compression.outer_step (the network's outer lr).
  Bytes per round: the mean length of one replica's payload, as uploaded.

SparseLoCo variants (``--variants``, scripts/bench_convergence.py --list-variants) change one
thing each, to study the early lag: error-feedback warm-up, outer lr schedule, density schedule,
and the divisor of the aggregate.

    .venv/bin/python scripts/bench_convergence.py --json                      # docs/convergence.md table
    .venv/bin/python scripts/bench_convergence.py --json --smoke              # CI: seconds
    .venv/bin/python scripts/bench_convergence.py --json --H 30 --methods sparseloco \\
        --variants base,ef_warmup,outer_lr_warmup,dense_start,replica_mean   # the early lag
Tables and plots of saved results: scripts/convergence_report.py.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from convergence_report import METHODS, markdown, plot  # noqa: E402

from compression import (  # noqa: E402
    ErrorFeedbackCompressor,
    PayloadManifest,
    SparseUpdate,
    aggregate,
    decode_payload,
    encode_payload,
    outer_step,
)
from neurons.corpus import DEFAULT_MAX_CHARS, ensure_embedded_data  # noqa: E402
from neurons.data import assigned_batches, heldout_batches  # noqa: E402
from neurons.fingerprint import model_fingerprint  # noqa: E402
from neurons.model import build_model, param_count, param_shapes  # noqa: E402
from neurons.shards import TokenShards  # noqa: E402
from neurons.train import InnerTrainer, evaluate  # noqa: E402
from protocol.hparams import Hparams, load_hparams  # noqa: E402
from protocol.signing import HotkeySigner, verify_signature  # noqa: E402

FP32 = 4

# Model and batch shapes on top of the tiny preset. "bench": odd sides (hidden 120, MLP 333), so
# the codec's padding to whole tiles is exercised, 0.85 M parameters, 4 x 64 tokens per replica
# and step (the whole docs table fits in ~20 CPU-minutes). "smoke": the tiny preset's
# ~1 M-parameter model on short sequences (a smaller model's payload is mostly framing, which
# would say nothing about the 1/200 ratio the CI check is about).
MODELS: dict[str, dict[str, dict]] = {
    "bench": {"model": {"hidden_size": 120, "intermediate_size": 333, "num_heads": 4, "num_kv_heads": 4},
              "training": {"batch_size": 4, "seq_len": 64}},
    "smoke": {"model": {"max_seq_len": 32}, "training": {"batch_size": 2, "seq_len": 32}},
}


@dataclass(frozen=True)
class Variant:
    """One SparseLoCo setting; round ``w`` counts from 0. Defaults are the network's."""

    name: str
    ef_warmup_rounds: int = 0  # β ramps linearly from 0 to ef_beta over these rounds
    outer_lr_warmup_rounds: int = 0  # outer lr goes linearly from outer_lr_start to the network's
    outer_lr_start: float = 0.25
    dense_rounds: int = 0  # these first rounds keep dense_topk per chunk instead of the network's
    dense_topk: int = 256
    replica_mean: bool = False  # divide by R everywhere, not by the peers that sent the coordinate

    def beta(self, w: int, beta: float) -> float:
        return beta * min(1.0, w / self.ef_warmup_rounds) if self.ef_warmup_rounds else beta

    def outer_lr(self, w: int, lr: float) -> float:
        if w >= self.outer_lr_warmup_rounds:
            return lr
        return lr * (self.outer_lr_start + (1 - self.outer_lr_start) * w / self.outer_lr_warmup_rounds)

    def topk(self, w: int, topk: int) -> int:
        return self.dense_topk if w < self.dense_rounds else topk


VARIANTS = {v.name: v for v in (
    Variant("base"),
    Variant("ef_warmup", ef_warmup_rounds=4),
    Variant("outer_lr_warmup", outer_lr_warmup_rounds=4),  # 0.25 -> 1
    Variant("outer_lr_boost", outer_lr_warmup_rounds=4, outer_lr_start=2.0),  # 2 -> 1
    Variant("dense_start", dense_rounds=3),
    Variant("replica_mean", replica_mean=True),
)}


@dataclass
class Setup:
    """What every method of one (H, seed) shares: hparams, θ0's seed, data, held-out batches."""

    hp: Hparams
    shards: TokenShards
    heldout: list[torch.Tensor]
    replicas: int
    seed: int
    steps: int
    diloco_lr: float
    diloco_momentum: float

    @property
    def H(self) -> int:  # noqa: N802 -- the papers' name
        return self.hp.training.inner_steps

    @property
    def rounds(self) -> int:
        return self.steps // self.H

    def model(self) -> torch.nn.Module:
        return build_model(self.hp.model, self.hp.seed + self.seed)

    def batches(self, replica: int, w: int) -> list[torch.Tensor]:
        t = self.hp.training
        return assigned_batches(self.shards, self.hp.seed + 1000 * self.seed, replica + 1, w, self.H,
                                t.batch_size, t.seq_len)

    def trainers(self) -> list[InnerTrainer]:
        return [InnerTrainer(self.model(), self.hp.training, "cpu") for _ in range(self.replicas)]


@dataclass
class Recorder:
    """Held-out loss and cumulative bytes per replica after every round."""

    setup: Setup
    model: torch.nn.Module
    curve: list[list[float]] = field(default_factory=list)
    bytes_curve: list[list[int]] = field(default_factory=list)
    round_bytes: list[int] = field(default_factory=list)
    started: float = field(default_factory=time.time)

    def __post_init__(self) -> None:
        self.point(0)

    def point(self, step: int) -> None:
        self.curve.append([step, round(evaluate(self.model, self.setup.heldout), 5)])
        self.bytes_curve.append([step, sum(self.round_bytes)])

    def end_round(self, w: int, nbytes: int) -> None:
        self.round_bytes.append(nbytes)
        self.point((w + 1) * self.setup.H)

    def result(self, method: str, variant: str | None = None) -> dict:
        s = self.setup
        return {
            "method": method, "variant": variant, "H": s.H, "seed": s.seed, "replicas": s.replicas,
            "steps": s.rounds * s.H, "final_loss": self.curve[-1][1],
            "bytes_per_round": round(sum(self.round_bytes) / len(self.round_bytes)),
            "curve": self.curve, "bytes_curve": self.bytes_curve, "seconds": round(time.time() - self.started, 1),
        }


def run_ddp(s: Setup) -> dict:
    trainer = InnerTrainer(s.model(), s.hp.training, "cpu")
    rec = Recorder(s, trainer.model)
    per_step = FP32 * param_count(trainer.model)
    for w in range(s.rounds):
        per_replica = [s.batches(r, w) for r in range(s.replicas)]
        trainer.train_window([torch.cat(step) for step in zip(*per_replica, strict=True)])
        rec.end_round(w, per_step * s.H)
    return rec.result("ddp")


def local_round(s: Setup, model: torch.nn.Module, trainers: list[InnerTrainer], w: int) -> list[dict]:
    """Every replica's pseudo-gradient θ − θ_r after H inner steps from θ (AdamW state kept)."""
    theta = {n: p.detach().clone() for n, p in model.named_parameters()}
    deltas = []
    for r, trainer in enumerate(trainers):
        trainer.model.load_state_dict(model.state_dict())
        trainer.global_step = w * s.H
        trainer.train_window(s.batches(r, w))
        deltas.append({n: theta[n] - p.detach() for n, p in trainer.model.named_parameters()})
    return deltas


def run_diloco(s: Setup) -> dict:
    model, trainers = s.model(), s.trainers()
    rec = Recorder(s, model)
    momentum = {n: torch.zeros_like(p) for n, p in model.named_parameters()}
    per_round = FP32 * param_count(model)
    for w in range(s.rounds):
        deltas = local_round(s, model, trainers, w)
        with torch.no_grad():
            for n, p in model.named_parameters():  # torch.optim.SGD(nesterov=True) on Δ̄ as the gradient
                mean = torch.stack([d[n] for d in deltas]).mean(0)
                momentum[n].mul_(s.diloco_momentum).add_(mean)
                p.sub_(mean.add(momentum[n], alpha=s.diloco_momentum), alpha=s.diloco_lr)
        rec.end_round(w, per_round)
    return rec.result("diloco")


@dataclass
class Miner:
    """One replica's codec side: error feedback, hotkey, and the payloads it signs."""

    compressor: ErrorFeedbackCompressor
    signer: HotkeySigner

    def retune(self, topk: int, beta: float) -> None:
        """Another density (same error buffer) and error-feedback decay for this round."""
        c = self.compressor
        if topk != c.params.topk_per_chunk:
            fresh = ErrorFeedbackCompressor(c.shapes, c.params.chunk_size, topk, beta)
            fresh.load_state_dict(c.state_dict())
            self.compressor = fresh
        self.compressor.beta = beta

    def payload(self, s: Setup, w: int, r: int, delta: dict, theta: torch.nn.Module) -> bytes:
        msg = self.compressor.compress(delta)
        manifest = PayloadManifest.for_message(
            msg, run_id=s.hp.run_id, window=w, uid=r + 1, hotkey=self.signer.hotkey,
            global_step=(w + 1) * s.H, base_fingerprint=model_fingerprint(theta))
        return encode_payload(msg, manifest, sign=self.signer.sign)


def read(payload: bytes, miner: Miner, shapes: Mapping[str, tuple[int, ...]], cap: int) -> SparseUpdate:
    """The validator's read: size cap, codec, shapes and the sender's signature checked."""
    hotkey = miner.signer.hotkey
    verify: Callable[[bytes, bytes], bool] = lambda digest, sig: verify_signature(hotkey, digest, sig)  # noqa: E731
    return decode_payload(payload, shapes, cap, verify, codec=miner.compressor.params).update


def replica_mean(dense: dict[str, torch.Tensor], updates: list[SparseUpdate], replicas: int) -> None:
    """Turn the scatter-mean (÷ peers that sent a coordinate) into a mean over all R replicas."""
    for name, t in dense.items():
        counts = torch.zeros(t.numel())
        for u in updates:
            counts.index_add_(0, u[name].indices, torch.ones(u[name].indices.numel()))
        t.view(-1).mul_(counts / replicas)


def flat(tensors: Mapping[str, torch.Tensor]) -> torch.Tensor:
    return torch.cat([tensors[n].reshape(-1) for n in sorted(tensors)])


def carried(dense: dict[str, torch.Tensor], deltas: list[dict], miners: list[Miner]) -> list[float]:
    """What the applied aggregate carries of the mean pseudo-gradient Δ̄ (DiLoCo's direction before
    momentum): cosine and norm ratio; and the backlog, |error buffer| / |Δ_r| averaged over replicas."""
    mean = torch.stack([flat(d) for d in deltas]).mean(0)
    applied = flat(dense)
    cos = float(applied @ mean / (applied.norm() * mean.norm()).clamp(min=1e-30))
    backlog = [float(flat(m.compressor.error).norm() / flat(d).norm()) for m, d in zip(miners, deltas, strict=True)]
    return [round(cos, 4), round(float(applied.norm() / mean.norm()), 4), round(sum(backlog) / len(backlog), 3)]


def run_sparseloco(s: Setup, v: Variant) -> dict:
    model, trainers = s.model(), s.trainers()
    rec, shapes, codec = Recorder(s, model), param_shapes(model), s.hp.codec
    cap = codec.max_payload_bytes * max(1, v.dense_topk // codec.topk_per_chunk)
    miners = [Miner(ErrorFeedbackCompressor(shapes, codec.chunk_size, codec.topk_per_chunk, codec.ef_beta),
                    HotkeySigner.from_uri(f"//bench-convergence-{r}")) for r in range(s.replicas)]
    diagnostics: list[list[float]] = []  # per round: [round, cosine, norm ratio, backlog]
    for w in range(s.rounds):
        deltas = local_round(s, model, trainers, w)
        payloads = []
        for r, (m, d) in enumerate(zip(miners, deltas, strict=True)):
            m.retune(v.topk(w, codec.topk_per_chunk), v.beta(w, codec.ef_beta))
            payloads.append(m.payload(s, w, r, d, model))
        updates = [read(p, m, shapes, cap) for p, m in zip(payloads, miners, strict=True)]
        dense = aggregate(updates, shapes)
        if v.replica_mean:
            replica_mean(dense, updates, s.replicas)
        lr = v.outer_lr(w, s.hp.outer.outer_lr)
        outer_step(model, dense, lr=lr)
        diagnostics.append([w, *carried({n: t * lr for n, t in dense.items()}, deltas, miners)])
        rec.end_round(w, round(sum(map(len, payloads)) / len(payloads)))
    return rec.result("sparseloco", v.name) | {"diagnostics": diagnostics}


def bench_hparams(preset: str, model: str, H: int, steps: int) -> Hparams:
    """The preset with the model/batch overrides of ``model`` and a cosine over ``steps`` inner steps."""
    data = load_hparams(preset).model_dump(mode="json")
    for section, values in MODELS[model].items():
        data[section].update(values)
    data["training"].update(inner_steps=H, total_steps=steps)
    return Hparams.model_validate(data)


def run_all(args: argparse.Namespace, shards: TokenShards) -> list[dict]:
    runs = []
    for H in args.H:
        hp = bench_hparams(args.hparams, args.model, H, args.schedule_steps or args.steps)
        t = hp.training
        heldout = heldout_batches(shards, args.eval_batches, t.batch_size, t.seq_len)
        for seed in args.seeds:
            s = Setup(hp, shards, heldout, args.replicas, seed, args.steps, args.diloco_lr, args.diloco_momentum)
            jobs = [(m, None) for m in args.methods if m != "sparseloco"]
            jobs += [("sparseloco", VARIANTS[v]) for v in args.variants if "sparseloco" in args.methods]
            for method, variant in jobs:
                run = run_sparseloco(s, variant) if variant else run_ddp(s) if method == "ddp" else run_diloco(s)
                runs.append(run)
                print(f"done: {method} {run['variant']} H={H} seed={seed} loss={run['final_loss']} "
                      f"({run['seconds']} s)", file=sys.stderr, flush=True)
    return runs


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ints = lambda s: [int(x) for x in s.split(",")]  # noqa: E731
    names = lambda s: [x for x in s.split(",") if x]  # noqa: E731
    p.add_argument("--json", action="store_true", help="print one JSON object on stdout")
    p.add_argument("--smoke", action="store_true", help="CI size: tiny model on short sequences, 2 rounds")
    p.add_argument("--hparams", default="tiny", help="preset the model/training/codec come from")
    p.add_argument("--model", choices=sorted(MODELS), default="bench")
    p.add_argument("--methods", type=names, default=list(METHODS))
    p.add_argument("--variants", type=names, default=["base"], help=f"SparseLoCo variants: {', '.join(VARIANTS)}")
    p.add_argument("--H", type=ints, default=[15, 30], help="inner steps per round, comma-separated")
    p.add_argument("--seeds", type=ints, default=[0, 1])
    p.add_argument("--steps", type=int, default=600, help="inner steps per replica (whole rounds)")
    p.add_argument("--schedule-steps", type=int, help="cosine length if not --steps (a prefix of a longer run)")
    p.add_argument("--replicas", type=int, default=4)
    p.add_argument("--diloco-lr", type=float, default=0.7)
    p.add_argument("--diloco-momentum", type=float, default=0.9)
    p.add_argument("--eval-batches", type=int, default=16)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--data-dir", type=Path, default=Path(".tessera/data-cache"), help="embedded corpus cache")
    p.add_argument("--corpus-chars", type=int, default=DEFAULT_MAX_CHARS)
    p.add_argument("--plot-dir", type=Path, help="also write the plots there (scripts/convergence_report.py)")
    p.add_argument("--list-variants", action="store_true")
    p.add_argument("--table", action="store_true", help="print the markdown tables on stderr")
    args = p.parse_args(argv)
    bad = set(args.methods) - set(METHODS) or set(args.variants) - set(VARIANTS)
    if bad:
        p.error(f"unknown method/variant {sorted(bad)}: methods {METHODS}, variants {tuple(VARIANTS)}")
    if args.smoke:
        args.model, args.H, args.seeds, args.steps, args.replicas, args.eval_batches = "smoke", [2], [0], 4, 2, 2
        args.corpus_chars = min(args.corpus_chars, 300_000)
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if args.list_variants:
        print(json.dumps({name: vars(v) for name, v in VARIANTS.items()}, indent=1))
        return 0
    torch.set_num_threads(args.threads)
    started = time.time()
    hp = bench_hparams(args.hparams, args.model, args.H[0], args.steps)
    shards = TokenShards(ensure_embedded_data(args.data_dir, hp.model.vocab_size, args.corpus_chars))
    result = {"model": args.model, "params": param_count(build_model(hp.model, 0)), "replicas": args.replicas,
              "steps": args.steps, "schedule_steps": args.schedule_steps or args.steps, "seeds": args.seeds,
              "diloco": {"lr": args.diloco_lr, "momentum": args.diloco_momentum, "bytes": "fp32"},
              "outer_lr": hp.outer.outer_lr, "runs": run_all(args, shards)}
    result["seconds"] = round(time.time() - started, 1)
    if args.plot_dir:
        for path in plot(result["runs"], args.plot_dir):
            print(f"wrote {path}", file=sys.stderr)
    if args.table:
        print(markdown(result["runs"]), file=sys.stderr)
    if args.json:
        print(json.dumps(result))
    return 0


if __name__ == "__main__":
    sys.exit(main())
