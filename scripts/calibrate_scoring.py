"""Measure the payment rule on the project's own model, data, trainer and codec.

A small network in one process, per seed: honest miners train their assigned data for H inner
steps from the shared θ_w (real trainer, error feedback, real codec); free-riders upload
something else; the honest aggregate is applied every window, as the network would. A validator
measures every upload with the real stage 2 (``scoring.lossscore.measure_update`` on per-sequence
losses; random pool from its secret, leaving out every miner's assignment) and folds the result
into a real score book (``scoring.gauntlet.score_window``). Per window: each miner's statistic t,
its combined Z and whether it was paid. Free-rider kinds:

- ``wrong_data``: honest training, on data it was not assigned;
- ``prev_aggregate``: re-uploads the last applied aggregate (nothing in window 0);
- ``late_mean_copy``: uploads the mean of this window's honest uploads;
- ``turncoat``: honest for the first half of the windows, then ``prev_aggregate``;
- ``stage_rider`` (``--stage-riders N``, with ``--groups``): claims stage 1 of a group (its data
  and layers) and uploads the last aggregate's stage-1 part. The group's stage 1 is then crowded:
  stage 0 is measured alone, each stage-1 claimant next to stage 0.

``--groups N`` adds N honest 2-stage pipeline groups (uids ``stage0``, ``stage1``): each trains
its stage 0 uid's assignment with ``pipeline.replica.PipelineReplica`` (the preset's pipeline
boundary, adaptive by default; dense without a pipeline section), and each stage uploads the Δ
of its own parameters through its own error feedback, as ``neurons.stage_miner`` does. Both enter
the honest aggregate; the validator measures each on the group's data (stage 0's assignment),
next to its partner stage's update and on ``scoring.stage_eval_factor`` times the eval batches,
as ``Validator.stage2`` does (``--stage-alone`` and ``--stage-eval-factor 1``: the earlier rule).
Every upload is measured scaled down to the window's typical norm over its parameters
(``scoring.outliers``), as ``Validator.stage2`` measures it.

``sweep`` replays the measured t and LossScores under other thresholds and decays (the same
gates, no new forward pass), which is how ``evidence_threshold`` and ``evidence_decay`` were
chosen (docs/scoring.md).

    .venv/bin/python scripts/calibrate_scoring.py --json                 # default: 4 seeds x 6 windows
    .venv/bin/python scripts/calibrate_scoring.py --json --seeds 8 --windows 10
    .venv/bin/python scripts/calibrate_scoring.py --json --hparams tiny-pipeline --groups 2
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from compression import (  # noqa: E402
    ErrorFeedbackCompressor,
    SparseUpdate,
    StageClaim,
    aggregate,
    decode_message,
    outer_step,
)
from neurons.corpus import DEFAULT_MAX_CHARS, ensure_embedded_data  # noqa: E402
from neurons.data import Assignments, assigned_batches, random_batches  # noqa: E402
from neurons.distributed import World  # noqa: E402
from neurons.model import build_model, param_shapes  # noqa: E402
from neurons.parallel_eval import measure_candidates  # noqa: E402
from neurons.shards import TokenShards  # noqa: E402
from neurons.stage_groups import partner_update, stage_contexts  # noqa: E402
from neurons.train import InnerTrainer, lr_at  # noqa: E402
from pipeline.basis import subspace_basis  # noqa: E402
from pipeline.payload import StageCompressor  # noqa: E402
from pipeline.replica import PipelineReplica  # noqa: E402
from pipeline.subspace import SubspaceConstraint  # noqa: E402
from protocol.acceptance import Stage1Result  # noqa: E402
from protocol.hparams import Hparams, load_hparams  # noqa: E402
from protocol.layers import split_layers  # noqa: E402
from scoring.gauntlet import WindowEvidence, fold_t, score_window  # noqa: E402
from scoring.lossscore import sequence_losses  # noqa: E402
from scoring.outliers import scaled_to, typical_norms, update_norm  # noqa: E402
from scoring.state import MinerRecord, ScoreBook  # noqa: E402
from scoring.weights import GatePolicy, payment_gate  # noqa: E402

FREE_RIDERS = ("wrong_data", "prev_aggregate", "late_mean_copy", "turncoat")
STAGE_KINDS = ("stage0", "stage1")  # a pipeline group's two uids; stage 1's is stage 0's + 1
HONEST_KINDS = ("honest", *STAGE_KINDS)  # whose uploads make the aggregate
MICRO_BATCHES = 2  # as neurons.stage_miner cuts a batch
WRONG_DATA_UID = 200  # trains the assignment of a uid nobody holds: real data, not its own
SWEEP_THRESHOLDS = (1.645, 2.0, 2.33, 2.58, 3.0)
SWEEP_DECAYS = (0.5, 0.7, 0.8, 0.9)


class StageGroup:
    """An honest 2-stage pipeline group, as two ``neurons.stage_miner`` nodes train: one replica
    (each stage's AdamW persists across windows) and one error-feedback compressor per stage."""

    def __init__(self, hp: Hparams) -> None:
        t, p, constraint = hp.training, hp.pipeline, None
        if p is not None:
            basis = subspace_basis(hp.seed, hp.model.hidden_size, p.subspace_dim, p.basis_seed_tag)
            constraint = SubspaceConstraint(basis, project_weights=p.boundary == "exact")
        self.adaptive = p is not None and p.boundary == "adaptive"
        self.replica = PipelineReplica(build_model(hp.model, hp.seed), len(STAGE_KINDS), t, constraint,
                                       n_micro=MICRO_BATCHES, lr_schedule=lambda step: lr_at(step, t))
        self.compressors = [StageCompressor(stage, hp.codec) for stage in self.replica.stages]

    def train(self, theta_w: dict[str, torch.Tensor], global_step: int, batches: list[torch.Tensor]) -> list[SparseUpdate]:
        """The group's window from θ_w on ``batches``; each stage's Δ of its own parameters, decoded."""
        model = self.replica.model
        model.load_state_dict(theta_w)  # in place: the stages' optimizers keep their parameters
        self.replica.begin_window(global_step, probe=batches[0] if self.adaptive else None)
        start = {n: p.detach().clone() for n, p in model.named_parameters()}
        self.replica.train_window(batches)
        return [decode_message(c.compress(start).message) for c in self.compressors]


@dataclass
class Network:
    """One seed's model, miners and validator state."""

    hp: Hparams
    shards: TokenShards
    seed: int
    kinds: dict[int, str]  # uid -> kind
    model: torch.nn.Module = field(init=False)
    trainers: dict[int, InnerTrainer] = field(init=False)
    compressors: dict[int, ErrorFeedbackCompressor] = field(init=False)
    last_aggregate: dict[str, torch.Tensor] | None = None
    use_reference: bool = True  # the validator's reference update: the previous window's aggregate
    stage_context: bool = True  # measure a stage with its partner stage's update applied first
    stage_eval_factor: int = 2  # a stage is measured on this many times the eval batches

    def __post_init__(self) -> None:
        hp = self.hp
        self.model = build_model(hp.model, hp.seed + self.seed)
        self.shapes = param_shapes(self.model)
        trains = [u for u, k in self.kinds.items() if k in ("honest", "wrong_data", "turncoat")]
        self.trainers = {u: InnerTrainer(build_model(hp.model, hp.seed), hp.training, "cpu") for u in trains}
        self.compressors = {u: self.compressor() for u in trains}
        self.groups = {u: StageGroup(hp) for u, k in self.kinds.items() if k == "stage0"}
        riders = [u for u, k in self.kinds.items() if k == "stage_rider"]
        leads = sorted(self.groups)
        self.rider_leads = {u: leads[i % len(leads)] for i, u in enumerate(riders)}
        self.secret = f"calibrate-scoring-secret-{self.seed}".encode()

    @property
    def data_seed(self) -> int:
        return self.hp.seed + 1000 * self.seed

    def compressor(self) -> ErrorFeedbackCompressor:
        c = self.hp.codec
        return ErrorFeedbackCompressor(self.shapes, chunk_size=c.chunk_size, topk_per_chunk=c.topk_per_chunk, beta=c.ef_beta)

    def claim(self, uid: int) -> StageClaim | None:
        """The pipeline-stage claim ``uid``'s payload makes (as ``neurons.stage_miner`` signs it),
        None for a whole-model one."""
        kind = self.kinds[uid]
        if kind == "stage0":
            lead, index = uid, 0
        elif kind == "stage1":
            lead, index = uid - 1, 1
        elif kind == "stage_rider":
            lead, index = self.rider_leads[uid], 1
        else:
            return None
        span = split_layers(self.hp.model.num_layers, len(STAGE_KINDS))[index]
        return StageClaim(group=f"g{lead}", index=index, n_stages=len(STAGE_KINDS), layer_start=span.start,
                          layer_stop=span.stop, data_uid=lead)

    def data_uid(self, uid: int) -> int:
        """Whose assignment ``uid`` trains (or claims to): a stage its group's stage 0's, anyone else its own."""
        claim = self.claim(uid)
        return uid if claim is None else claim.data_uid

    def batches(self, uid: int, w: int, n: int) -> list[torch.Tensor]:
        t = self.hp.training
        return assigned_batches(self.shards, self.data_seed, uid, w, n, t.batch_size, t.seq_len)

    def train(self, uid: int, w: int, data_uid: int) -> SparseUpdate:
        """The honest miner's window: H inner steps from θ_w, error feedback, the real codec."""
        trainer, t = self.trainers[uid], self.hp.training
        trainer.model.load_state_dict(self.model.state_dict())
        trainer.global_step = w * t.inner_steps
        start = {n: p.detach().clone() for n, p in trainer.model.named_parameters()}
        trainer.train_window(self.batches(data_uid, w, t.inner_steps))
        drift = {n: start[n] - p.detach() for n, p in trainer.model.named_parameters()}
        return decode_message(self.compressors[uid].compress(drift))

    def as_payload(self, dense: dict[str, torch.Tensor]) -> SparseUpdate:
        """A dense update sent through the codec, as a free-rider would have to send it."""
        c = self.hp.codec
        codec = ErrorFeedbackCompressor({n: self.shapes[n] for n in dense}, chunk_size=c.chunk_size,
                                        topk_per_chunk=c.topk_per_chunk, beta=c.ef_beta)
        return decode_message(codec.compress(dense))

    def uploads(self, w: int, switch: int) -> tuple[dict[int, SparseUpdate], list[SparseUpdate]]:
        """Every miner's upload of window ``w`` and the honest ones (what gets aggregated)."""
        out: dict[int, SparseUpdate] = {}
        for uid, kind in self.kinds.items():
            if kind == "honest" or (kind == "turncoat" and w < switch):
                out[uid] = self.train(uid, w, uid)
            elif kind == "wrong_data":
                out[uid] = self.train(uid, w, WRONG_DATA_UID)
            elif kind == "stage0":
                t = self.hp.training
                out[uid], out[uid + 1] = self.groups[uid].train(self.model.state_dict(), w * t.inner_steps,
                                                                self.batches(uid, w, t.inner_steps))
        honest = [out[u] for u, k in self.kinds.items() if k in HONEST_KINDS]
        for uid, kind in self.kinds.items():
            if kind == "late_mean_copy":
                out[uid] = self.as_payload(aggregate(honest, self.shapes))
            elif kind in ("prev_aggregate", "turncoat") and uid not in out and self.last_aggregate is not None:
                out[uid] = self.as_payload(self.last_aggregate)
            elif kind == "stage_rider" and self.last_aggregate is not None:
                names = set(out[self.rider_leads[uid] + 1])  # stage 1's parameters
                out[uid] = self.as_payload({n: d for n, d in self.last_aggregate.items() if n in names})
        return out, honest

    def measure(self, w: int, uploads: dict[int, SparseUpdate]) -> tuple[dict, dict[int, float | None]]:
        """The validator's stage 2, exactly as ``Validator.stage2`` runs it: each upload at most at
        the window's typical norm over its parameters, on its data uid's assignment. Also per uid
        its norm / that typical norm (above 2 stage 1 would reject it as ``out_of_bounds``)."""
        hp, t = self.hp, self.hp.training
        given = Assignments(self.data_seed, tuple(self.kinds), t.inner_steps * t.batch_size)
        n = hp.scoring.eval_batches
        stage_n = n * self.stage_eval_factor  # a stage's data: more sequences for its smaller signal
        rand = random_batches(self.shards, self.secret, w, n, t.batch_size, t.seq_len, exclude=given)
        rand_stage = rand if stage_n == n else random_batches(self.shards, self.secret, w, stage_n, t.batch_size,
                                                               t.seq_len, exclude=given)
        before = sequence_losses(self.model, rand)
        before_stage = before if stage_n == n else sequence_losses(self.model, rand_stage)
        stages = {u for u in uploads if self.claim(u) is not None}
        own = {uid: self.batches(self.data_uid(uid), w, stage_n if uid in stages else n) for uid in sorted(uploads)}
        norms, typical = {u: update_norm(up) for u, up in uploads.items()}, typical_norms(uploads)
        ratios = {u: norms[u] / typical[u] if typical.get(u) else None for u in uploads}
        scaled = {uid: scaled_to(up, norms[uid], typical.get(uid)) for uid, up in uploads.items()}
        # partners as the validator picks them (a crowded index is nobody's partner)
        partners = stage_contexts({u: self.claim(u) for u in uploads}) if self.stage_context else {}
        contexts = {u: partner_update(scaled, p) for u, p in partners.items()}
        reference = self.last_aggregate if self.use_reference else None
        lr, out = hp.outer.outer_lr, {}
        # the validator's own stage-2 code (neurons.parallel_eval), one process
        for group, r, b in ((set(uploads) - stages, rand, before), (stages, rand_stage, before_stage)):
            out |= measure_candidates(World(), self.model, {u: scaled[u] for u in group}, lr,
                                      {u: own[u] for u in group}, r, b, reference, contexts)
        return out, ratios

    def step(self, honest: list[SparseUpdate]) -> None:
        self.last_aggregate = aggregate(honest, self.shapes)
        outer_step(self.model, self.last_aggregate, lr=self.hp.outer.outer_lr)


def run_seed(hp: Hparams, shards: TokenShards, seed: int, windows: int, kinds: dict[int, str],
             use_reference: bool = True, stage_context: bool = True, stage_eval_factor: int = 2) -> list[dict]:
    net = Network(hp, shards, seed, kinds, use_reference=use_reference, stage_context=stage_context,
                  stage_eval_factor=stage_eval_factor)
    book, rows = ScoreBook(), []
    for w in range(windows):
        uploads, honest = net.uploads(w, switch=windows // 2)
        measured, ratios = net.measure(w, uploads)
        hotkeys = {u: f"hk{u}" for u in kinds}
        evidence = WindowEvidence(w, hotkeys, [Stage1Result.accept(u) for u in measured], measured,
                                  dict.fromkeys(measured, 1.0))
        result = score_window(book, evidence, hp.scoring, hp.outer, burn_uid=None, seed=f"calibrate:{seed}")
        net.step(honest)
        miners = {
            str(u): {"kind": kinds[u], "t": round(result.t_stats[u], 3), "z": round(book.records[u].evidence_z, 3),
                     "loss_score": round(result.loss_scores[u], 6), "paid": result.scores.get(u, 0.0) > 0,
                     "norm_ratio": None if ratios[u] is None else round(ratios[u], 3)}
            for u in sorted(measured)
        }
        rows.append({"seed": seed, "window": w, "miners": miners})
    return rows


def kind_at(row: dict, miner: dict, windows: int) -> str:
    """A turncoat counts as honest before its switch and as a free-rider after it."""
    if miner["kind"] == "turncoat":
        return "honest" if row["window"] < windows // 2 else "turncoat"
    return miner["kind"]


def pct(flags: list[bool]) -> float | None:
    return round(100.0 * sum(flags) / len(flags), 2) if flags else None


def summarize(rows: list[dict], windows: int) -> dict:
    """The headline numbers: honest unpaid %, free-rider paid % per kind, windows to first pay."""
    paid: dict[str, list[bool]] = {}
    first: dict[tuple[int, str], int | None] = {}
    for row in rows:
        for uid, m in row["miners"].items():
            kind = kind_at(row, m, windows)
            paid.setdefault(kind, []).append(m["paid"])
            if m["kind"] == "honest":
                key = (row["seed"], uid)
                if first.get(key) is None:
                    first[key] = row["window"] + 1 if m["paid"] else None
    firsts = [v for v in first.values() if v is not None]
    honest = paid.pop("honest", [])
    stages = {k: paid.pop(k) for k in STAGE_KINDS if k in paid}
    return {
        "honest_unpaid_pct": pct([not p for p in honest]),
        "honest_miner_windows": len(honest),
        "stage_unpaid_pct": {k: pct([not p for p in v]) for k, v in stages.items()},
        "stage_miner_windows": {k: len(v) for k, v in stages.items()},
        "free_rider_paid_pct": {k: pct(v) for k, v in sorted(paid.items())},
        "free_rider_miner_windows": {k: len(v) for k, v in sorted(paid.items())},
        "windows_to_first_pay": {"mean": round(statistics.mean(firsts), 2) if firsts else None,
                                 "max": max(firsts, default=None), "never_paid": len(first) - len(firsts)},
        "turncoat_paid_windows_after_switch": turncoat_tail(rows, windows),
        "t_by_kind": t_by_kind(rows, windows),
        "loss_score_positive_pct": loss_score_positive(rows, windows),
    }


def t_by_kind(rows: list[dict], windows: int) -> dict[str, dict[str, float]]:
    """Mean and spread of the per-window t per kind; honest kinds' window 0 apart (its edge is largest)."""
    ts: dict[str, list[float]] = {}
    for row in rows:
        for m in row["miners"].values():
            kind = kind_at(row, m, windows)
            key = f"{kind}_window0" if kind in HONEST_KINDS and row["window"] == 0 else kind
            ts.setdefault(key, []).append(m["t"])
    return {k: {"mean": round(statistics.mean(v), 2), "sd": round(statistics.stdev(v), 2) if len(v) > 1 else None,
                "n": len(v)} for k, v in sorted(ts.items())}


def loss_score_positive(rows: list[dict], windows: int) -> dict[str, float | None]:
    """Per kind, the % of miner-windows whose LossScore (random-data gain) was above 0."""
    signs: dict[str, list[bool]] = {}
    for row in rows:
        for m in row["miners"].values():
            signs.setdefault(kind_at(row, m, windows), []).append(m["loss_score"] > 0)
    return {k: pct(v) for k, v in sorted(signs.items())}


def turncoat_tail(rows: list[dict], windows: int) -> float | None:
    """Mean number of windows a miner that turned free-rider kept being paid."""
    per_seed: dict[int, int] = {}
    for row in rows:
        for m in row["miners"].values():
            if m["kind"] == "turncoat" and row["window"] >= windows // 2:
                per_seed[row["seed"]] = per_seed.get(row["seed"], 0) + int(m["paid"])
    return round(statistics.mean(per_seed.values()), 2) if per_seed else None


def replay(rows: list[dict], windows: int, threshold: float, decay: float, alpha: float) -> dict:
    """Payment decisions from the measured t and LossScores under another threshold / decay."""
    records: dict[tuple[int, str], MinerRecord] = {}
    flags: dict[str, list[bool]] = {}
    gate = GatePolicy(evidence_threshold=threshold)
    for row in rows:
        for uid, m in row["miners"].items():
            rec = records.setdefault((row["seed"], uid), MinerRecord(uid=int(uid), hotkey="h", first_window=0, sync=1.0))
            rec.loss_ema = (1 - alpha) * rec.loss_ema + alpha * m["loss_score"]
            fold_t(rec, row["window"], m["t"], decay)
            rec.last_evaluated_window = row["window"]
            flags.setdefault(kind_at(row, m, windows), []).append(payment_gate(rec, row["window"], gate) is None)
    honest = flags.pop("honest", [])
    stages = {k: flags.pop(k) for k in STAGE_KINDS if k in flags}
    return {"threshold": threshold, "decay": decay, "honest_unpaid_pct": pct([not p for p in honest]),
            "stage_unpaid_pct": {k: pct([not p for p in v]) for k, v in stages.items()},
            "free_rider_paid_pct": {k: pct(v) for k, v in sorted(flags.items())}}


def calibrate(hp: Hparams, shards: TokenShards, seeds: int, windows: int, kinds: dict[int, str],
              use_reference: bool = True, stage_context: bool = True, stage_eval_factor: int = 2) -> dict:
    rows = [row for s in range(seeds)
            for row in run_seed(hp, shards, s, windows, kinds, use_reference, stage_context, stage_eval_factor)]
    alpha = hp.scoring.loss_ema_alpha
    out = {"hparams": hp.name, "seeds": seeds, "windows": windows, "kinds": {str(u): k for u, k in kinds.items()},
           "evidence_threshold": hp.scoring.evidence_threshold, "evidence_decay": hp.scoring.evidence_decay,
           "reference": "previous_aggregate" if use_reference else "none", "stage_context": stage_context,
           "stage_eval_factor": stage_eval_factor}
    out.update(summarize(rows, windows))
    out["sweep"] = [replay(rows, windows, th, d, alpha) for d in SWEEP_DECAYS for th in SWEEP_THRESHOLDS]
    out["per_window"] = rows
    return out


def parse_kinds(honest: int, riders: str, groups: int = 0, stage_riders: int = 0) -> dict[int, str]:
    """uid -> kind: honest miners from uid 1, then the free-riders, then each group's stage 0, stage 1,
    then the stage riders (each claims stage 1 of a group, in turn)."""
    if stage_riders and not groups:
        raise SystemExit("--stage-riders needs --groups: a stage rider claims stage 1 of a group")
    names = [k for k in riders.split(",") if k]
    unknown = set(names) - set(FREE_RIDERS)
    if unknown:
        raise SystemExit(f"unknown free-rider kind(s): {sorted(unknown)}; known: {', '.join(FREE_RIDERS)}")
    names += [kind for _ in range(groups) for kind in STAGE_KINDS] + ["stage_rider"] * stage_riders
    return {u: "honest" for u in range(1, honest + 1)} | {honest + 1 + i: k for i, k in enumerate(names)}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--hparams", default="tiny")
    parser.add_argument("--seeds", type=int, default=4)
    parser.add_argument("--windows", type=int, default=6)
    parser.add_argument("--honest", type=int, default=3)
    parser.add_argument("--free-riders", default=",".join(FREE_RIDERS), help="comma-separated kinds")
    parser.add_argument("--groups", type=int, default=0, help="honest 2-stage pipeline groups (two uids each)")
    parser.add_argument("--no-reference", action="store_true",
                        help="plain Welch t, without the previous aggregate as the reference update")
    parser.add_argument("--stage-riders", type=int, default=0,
                        help="free-riders that each claim stage 1 of a group and upload the last aggregate's"
                        " stage-1 part (the honest stage 1 is then not the only claimant)")
    parser.add_argument("--stage-alone", action="store_true",
                        help="measure each stage alone on θ_w (the rule before 2026-11-30), not next to its partner")
    parser.add_argument("--stage-eval-factor", type=int, default=None,
                        help="measure a stage on this many times eval_batches (default: the preset's scoring.stage_eval_factor)")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--data-dir", type=Path, default=Path(".tessera/data-cache"), help="embedded corpus cache")
    parser.add_argument("--corpus-chars", type=int, default=DEFAULT_MAX_CHARS, help="embedded corpus size (tests)")
    parser.add_argument("--json", action="store_true", help="print one JSON object")
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    started = time.time()
    hp = load_hparams(args.hparams)
    shards = TokenShards(ensure_embedded_data(args.data_dir, hp.model.vocab_size, args.corpus_chars))
    result = calibrate(hp, shards, args.seeds, args.windows, parse_kinds(args.honest, args.free_riders, args.groups, args.stage_riders),
                       use_reference=not args.no_reference, stage_context=not args.stage_alone,
                       stage_eval_factor=args.stage_eval_factor or hp.scoring.stage_eval_factor)
    result["seconds"] = round(time.time() - started, 1)
    if args.json:
        print(json.dumps(result))
        return 0
    for row in result.pop("per_window"):
        print(row["seed"], row["window"], {u: (m["kind"][:6], m["t"], m["z"], m["paid"]) for u, m in row["miners"].items()})
    for line in result.pop("sweep"):
        print(line)
    print(json.dumps(result))
    return 0


if __name__ == "__main__":
    sys.exit(main())
