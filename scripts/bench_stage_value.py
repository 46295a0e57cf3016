"""What a pipeline stage's update is worth to a validator, per boundary mode: its own-data gain,
its random-data gain and their difference (the "edge" that Stage 2 pays), applied alone to θ_w.

The network this stands for: full replicas train the unconstrained θ. The warm-up is W windows of
one full replica under SparseLoCo (H inner steps on its own assignment, error feedback + top-k +
2-bit, outer step; ``--warm-up direct``: its inner steps applied to θ as they are), so θ_w's
residual writers are not in span(U). Then a 2-stage group trains window W from θ_w on its own
assignment, once per mode:

    dense             float32 boundaries (the same computation as a full replica)
    exact-keep        exact subspace boundaries: weights projected into span(U) at the window's
                      start and after every step; Δ measured from the projected start P(θ_w)
                      (what a stage miner uploads with pipeline.boundary "exact")
    exact-full-delta  exact boundaries, Δ = θ_w − θ_end (includes the pull back into span(U))
    projected         projected boundaries (pipeline.boundary "projected"): weights
                      stay free, a boundary carries U Uᵀ(h − embed(tokens)) and is lossy
    adaptive          as projected, onto the window's own basis (pipeline.boundary "adaptive",
                      the network default): each boundary's top-k principal directions of
                      (h − embed) under θ_w on the window's first batch of the group's assignment

Each stage's Δ goes through the project's codec (a fresh error-feedback buffer: the stage's first
window) and is decoded as a validator sees it, then measured with the validator's own procedure
(``scoring.lossscore.measure_update`` at the outer lr) on the group's assigned batches and on
random training batches nobody was assigned. Besides the mean gains it reports the validator's
per-window unique-data statistic (``unique_t``, Welch's t: no reference update here), and at each
warm-up point the share of the boundary's ||h − embed||² that the seeded U and the window's basis
keep under θ_w (``boundary_kept``, on the window's batches after the first). Each seed
changes θ0, U, the data assignments and the random batches. Not modelled: other peers in the
window, the stage's error-feedback history, the validator's norm clip and reference update.

    nice -n 19 .venv/bin/python scripts/bench_stage_value.py --json --seeds 4 --warm 0,4,12
"""

from __future__ import annotations

import argparse
import copy
import json
import statistics
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from compression import ErrorFeedbackCompressor, aggregate, decode_message, outer_step  # noqa: E402
from neurons.corpus import DEFAULT_MAX_CHARS, ensure_embedded_data  # noqa: E402
from neurons.data import Assignments, assigned_batches, random_batches  # noqa: E402
from neurons.model import build_model, param_shapes  # noqa: E402
from neurons.shards import TokenShards  # noqa: E402
from neurons.train import InnerTrainer, lr_at  # noqa: E402
from pipeline.basis import subspace_basis  # noqa: E402
from pipeline.payload import StageCompressor  # noqa: E402
from pipeline.replica import PipelineReplica  # noqa: E402
from pipeline.stage import LayerRange, Stage  # noqa: E402
from pipeline.subspace import EMBED_NAME, SubspaceConstraint, residual_writer_names  # noqa: E402
from pipeline.window_basis import boundary_basis  # noqa: E402
from protocol.hparams import Hparams, PipelineConfig, load_hparams  # noqa: E402
from protocol.layers import split_layers  # noqa: E402
from scoring.lossscore import measure_update, sequence_losses, unique_t  # noqa: E402

MODES = ("dense", "exact-keep", "exact-full-delta", "projected", "adaptive")
FREE_WEIGHTS = ("projected", "adaptive")  # modes whose boundary is lossy and whose weights stay free
GROUP_UID, WARM_UID = 7, 50  # whose assignment the group trains on; the warm-up replica's
STAGES = 2
Params = dict[str, torch.Tensor]


@dataclass(frozen=True)
class Gains:
    """Loss drops (before − after) from one stage's decoded update applied alone to θ_w."""

    own: float
    random: float
    t: float  # the validator's unique-data statistic of the same measurement

    @property
    def edge(self) -> float:
        return self.own - self.random


def snapshot(model: torch.nn.Module) -> Params:
    return {n: p.detach().clone() for n, p in model.named_parameters()}


def constraint_for(mode: str, basis: torch.Tensor) -> SubspaceConstraint | None:
    if mode == "dense":
        return None
    return SubspaceConstraint(basis, project_weights=mode not in FREE_WEIGHTS)


class WarmUp:
    """One full replica's windows on ``model`` (optimizer and error feedback persist): SparseLoCo
    outer steps, or with ``direct`` its inner steps left in θ (the throwaway this script replaced)."""

    def __init__(self, model: torch.nn.Module, hp: Hparams, direct: bool = False) -> None:
        self.model, self.hp, self.done, self.direct = model, hp, 0, direct
        c = hp.codec
        self.trainer = InnerTrainer(model, hp.training, "cpu")
        self.compressor = ErrorFeedbackCompressor(param_shapes(model), chunk_size=c.chunk_size,
                                                  topk_per_chunk=c.topk_per_chunk, beta=c.ef_beta)

    def until(self, window: int, shards: TokenShards) -> None:
        t, model = self.hp.training, self.model
        for w in range(self.done, window):
            start = snapshot(model)
            self.trainer.global_step = w * t.inner_steps
            self.trainer.train_window(assigned_batches(shards, self.hp.seed, WARM_UID, w, t.inner_steps,
                                                       t.batch_size, t.seq_len))
            if self.direct:
                continue
            with torch.no_grad():
                delta = {n: start[n] - p for n, p in model.named_parameters()}
                for n, p in model.named_parameters():
                    p.copy_(start[n])
            update = decode_message(self.compressor.compress(delta))
            outer_step(model, aggregate([update], param_shapes(model)), lr=self.hp.outer.outer_lr)
        self.done = max(self.done, window)


def off_subspace(model: torch.nn.Module, basis: torch.Tensor) -> float:
    """‖W − UUᵀW‖ / ‖W‖ over the residual writers: how far θ_w is from what exact boundaries need."""
    cons, params = SubspaceConstraint(basis), dict(model.named_parameters())
    off = total = 0.0
    with torch.no_grad():
        for name in residual_writer_names(params):
            w = params[name].double()
            off += float((w - cons.project_columns(w)).pow(2).sum())
            total += float(w.pow(2).sum())
    return (off / total) ** 0.5


def boundary_kept(model: torch.nn.Module, basis: torch.Tensor, train: list[torch.Tensor]) -> dict[str, float]:
    """Share of ||h − embed||² at the group's boundary that a basis keeps under θ_w: the seeded U
    (projected) and the window's basis from ``train[0]`` (adaptive), both measured on the other
    batches of the window, the ones the window's basis was not fitted on."""
    stop = split_layers(int(model.config.num_hidden_layers), STAGES)[0].stop
    embedding = dict(model.named_parameters())[EMBED_NAME].detach()
    window = boundary_basis(model, stop, train[0], embedding, basis.shape[1])
    prefix = Stage(model, LayerRange(0, stop, int(model.config.num_hidden_layers)))
    with torch.no_grad():
        rest = torch.cat([(prefix.forward(None, b) - embedding[b]).reshape(-1, basis.shape[0]) for b in train[1:]])
    rest = rest.double()
    total = float(rest.pow(2).sum())
    return {name: float((rest @ u.double()).pow(2).sum()) / total for name, u in (("seeded", basis), ("window", window))}


def stage_gains(model: torch.nn.Module, hp: Hparams, mode: str, basis: torch.Tensor, window: int,
                train: list[torch.Tensor], own: list[torch.Tensor], rand: list[torch.Tensor],
                before_rand: torch.Tensor) -> list[Gains]:
    """The group trains window ``window`` from θ_w (``model``, left unchanged) in ``mode``; each
    stage's compressed Δ is then measured on θ_w as a validator would. ``adaptive`` probes the
    window's basis with ``train[0]``, the batch a stage miner computes it from."""
    t = hp.training
    theta_w = snapshot(model)
    group = copy.deepcopy(model)
    replica = PipelineReplica(group, STAGES, t, constraint_for(mode, basis), n_micro=2,
                              lr_schedule=lambda step: lr_at(step, t))
    replica.begin_window(window * t.inner_steps, probe=train[0] if mode == "adaptive" else None)
    origin = snapshot(group) if mode == "exact-keep" else theta_w
    replica.train_window(train)
    out = []
    for stage in replica.stages:
        update = decode_message(StageCompressor(stage, hp.codec).compress(origin).message)
        m = measure_update(model, update, hp.outer.outer_lr, own, rand, sequence_losses, before_rand)
        out.append(Gains(m.before_own - m.after_own, m.before_rand - m.after_rand, unique_t(m)))
    return out


def run_seed(hp: Hparams, k: int, tag: str, warm: list[int], shards: TokenShards, eval_batches: int,
             direct: bool) -> dict:
    """All modes at every warm-up point for one seed: {(warm, mode): [Gains per stage]}, plus θ_w's
    distance from span(U), its loss on the random batches and the boundary's kept shares."""
    t = hp.training
    basis = subspace_basis(hp.seed, hp.model.hidden_size, k, tag)
    model = build_model(hp.model, hp.seed)
    warm_up = WarmUp(model, hp, direct)
    gains: dict[tuple[int, str], list[Gains]] = {}
    off: dict[int, float] = {}
    loss: dict[int, float] = {}
    kept: dict[int, dict[str, float]] = {}
    secret = f"bench-stage-value-{hp.seed}".encode()
    for w in warm:
        warm_up.until(w, shards)
        off[w] = off_subspace(model, basis)
        train = assigned_batches(shards, hp.seed, GROUP_UID, w, t.inner_steps, t.batch_size, t.seq_len)
        own = assigned_batches(shards, hp.seed, GROUP_UID, w, eval_batches, t.batch_size, t.seq_len)
        given = Assignments(hp.seed, (GROUP_UID, WARM_UID), t.inner_steps * t.batch_size)
        rand = random_batches(shards, secret, w, eval_batches, t.batch_size, t.seq_len, exclude=given)
        before_rand = sequence_losses(model, rand)
        loss[w] = float(before_rand.mean())
        kept[w] = boundary_kept(model, basis, train)
        for mode in MODES:
            gains[(w, mode)] = stage_gains(model, hp, mode, basis, w, train, own, rand, before_rand)
    return {"gains": gains, "off_subspace": off, "loss": loss, "kept": kept}


def mean_sd(values: list[float]) -> dict:
    """Mean and sample sd over seeds (sd null with one seed: nothing to estimate it from)."""
    return {"mean": statistics.fmean(values), "sd": statistics.stdev(values) if len(values) > 1 else None}


def summarize(per_seed: list[dict], warm: list[int], labels: list[str]) -> list[dict]:
    rows = []
    for w in warm:
        for mode in MODES:
            for s, label in enumerate(labels):
                g = [seed["gains"][(w, mode)][s] for seed in per_seed]
                rows.append({"warm": w, "mode": mode, "stage": s, "layers": label,
                             "own_gain": mean_sd([x.own for x in g]), "random_gain": mean_sd([x.random for x in g]),
                             "edge": mean_sd([x.edge for x in g]), "unique_t": mean_sd([x.t for x in g]),
                             "per_seed_edge": [x.edge for x in g]})
    return rows


def fmt(stat: dict, digits: int = 4) -> str:
    return f"{stat['mean']:+.{digits}f}" + ("" if stat["sd"] is None else f" ± {stat['sd']:.{digits}f}")


def markdown(result: dict) -> str:
    """The docs' table (also from a saved result: --table-from)."""
    off = {int(w): v for w, v in result["off_subspace"].items()}
    loss = {int(w): v for w, v in result["theta_w_random_loss"].items()}
    lines = ["| warm-up windows | θ_w: random loss, off-subspace | mode | stage | own gain | random gain | edge "
             "| unique t |", "|" + "---|" * 8]
    for r in result["rows"]:
        w = r["warm"]
        lines.append(f"| {w} | {loss[w]['mean']:.3f}, {off[w]['mean']:.3f} | {r['mode']} | {r['stage']} ({r['layers']}) "
                     f"| {fmt(r['own_gain'])} | {fmt(r['random_gain'])} | {fmt(r['edge'])} "
                     f"| {fmt(r['unique_t'], 2)} |")
    if "boundary_kept" in result:  # results saved before adaptive was measured lack it
        lines += ["", "| warm-up windows | boundary kept: seeded U | boundary kept: window basis |", "|---|---|---|"]
        for w, kept in result["boundary_kept"].items():
            lines.append(f"| {w} | {fmt(kept['seeded'], 3).lstrip('+')} | {fmt(kept['window'], 3).lstrip('+')} |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--hparams", default="tiny-pipeline", help="preset name or JSON path (>= 2 layers)")
    parser.add_argument("--k", type=int, default=0, help="subspace dimension (default: the preset's pipeline.subspace_dim)")
    parser.add_argument("--seeds", type=int, default=4, help="runs with seeds preset+0, +1, ...")
    parser.add_argument("--warm", default="0,4,12", help="warm-up windows before the measured one (comma-separated)")
    parser.add_argument("--warm-up", choices=("sparseloco", "direct"), default="sparseloco",
                        help="how the full replica moves θ before the measured window")
    parser.add_argument("--eval-batches", type=int, default=0, help="own and random batches (default: the preset's)")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--data-dir", type=Path, default=Path("/tmp/data-cache"), help="embedded corpus cache")
    parser.add_argument("--corpus-chars", type=int, default=DEFAULT_MAX_CHARS, help="embedded corpus size (tests)")
    parser.add_argument("--json", action="store_true", help="print one JSON object")
    parser.add_argument("--table-from", type=Path, default=None, help="print the markdown table of a saved --json result")
    args = parser.parse_args(argv)
    if args.table_from is not None:
        print(markdown(json.loads(args.table_from.read_text())))
        return 0
    hp = load_hparams(args.hparams)
    pipe = hp.pipeline or (PipelineConfig(subspace_dim=args.k) if args.k else None)
    if pipe is None:
        parser.error(f"{hp.name} has no pipeline section: give --k")
    k = args.k or pipe.subspace_dim
    warm = sorted({int(w) for w in args.warm.split(",") if w})
    torch.set_num_threads(args.threads)
    started = time.time()
    shards = TokenShards(ensure_embedded_data(args.data_dir, hp.model.vocab_size, args.corpus_chars))
    n_eval = args.eval_batches or hp.scoring.eval_batches
    per_seed = [run_seed(hp.model_copy(update={"seed": hp.seed + s}), k, pipe.basis_seed_tag, warm, shards, n_eval,
                         args.warm_up == "direct") for s in range(args.seeds)]
    labels = [span.label for span in split_layers(hp.model.num_layers, STAGES)]
    result = {
        "hparams": hp.name, "k": k, "hidden_size": hp.model.hidden_size, "num_layers": hp.model.num_layers,
        "stages": STAGES, "inner_steps": hp.training.inner_steps, "eval_batches": n_eval,
        "batch_size": hp.training.batch_size, "seeds": args.seeds, "warm": warm, "warm_up": args.warm_up,
        "modes": list(MODES),
        "off_subspace": {w: mean_sd([seed["off_subspace"][w] for seed in per_seed]) for w in warm},
        "theta_w_random_loss": {w: mean_sd([seed["loss"][w] for seed in per_seed]) for w in warm},
        "boundary_kept": {w: {b: mean_sd([seed["kept"][w][b] for seed in per_seed]) for b in ("seeded", "window")}
                          for w in warm},
        "rows": summarize(per_seed, warm, labels), "seconds": round(time.time() - started, 1),
    }
    print(json.dumps(result) if args.json else markdown(result))
    return 0


if __name__ == "__main__":
    sys.exit(main())
