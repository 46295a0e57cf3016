"""Pipeline replicas next to full replicas under SparseLoCo, with and without subspace-compressed
boundaries: held-out loss at equal steps, and the bytes each setting sends.

M replicas train one shared model on the project's own data (the embedded stdlib corpus, each
replica on its assigned batches), window by window: H inner steps from θ_w, a SparseLoCo payload
per stage (error feedback + top-k + 2-bit + index coding, the real codec), deterministic
aggregation, outer step. G of the M replicas are pipeline groups (in-process GPipe, every
boundary frame encoded and decoded as bytes; ``--stages`` sets how many stages a group has). Settings:

    full           all M replicas full (no boundaries)
    pipe-dense     G pipeline groups with float32 boundaries, the rest full
    all-sub-k{k}   all M replicas are pipeline groups with subspace boundaries of dimension k
    het-sub-k{k}   only the G pipeline groups use subspace boundaries, the rest full (heterogeneous)
    het-sub-k{k}-keep  as het-sub at the smallest k, but compressed stages measure Δ from their
                   projected start, leaving the full replicas' off-subspace updates alone
    all-sub-k{k}-projagg  as all-sub at the smallest k, and every node projects the aggregate's
                   o_proj/down_proj updates onto span(U) before the outer step
    het-proj-k{k}  as het-sub at the smallest k, with *projected* boundaries (pipeline.boundary
                   "projected"): weights stay free, only what crosses a boundary is projected
    all-proj-k{k}  as all-sub at the smallest k, with projected boundaries
    het-adapt-k{k} as het-proj at the smallest k, with *adaptive* boundaries (pipeline.boundary
                   "adaptive", the network default): each window every boundary projects onto
                   the window's top-k principal directions of (h − embed) under θ_w, computed
                   from the replica's first batch of the window (k x hidden float32 per boundary
                   per window, counted as ``window_basis`` bytes)
    all-adapt-k{k} as all-proj at the smallest k, with adaptive boundaries

``--only`` runs some of them (e.g. ``--only het-adapt-k4,all-adapt-k4``).

    .venv/bin/python scripts/bench_pipeline.py --json --data-dir /tmp/data-cache
"""

from __future__ import annotations

import argparse
import copy
import json
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from compression import aggregate, decode_message, outer_step  # noqa: E402
from neurons.corpus import DEFAULT_MAX_CHARS, ensure_embedded_data  # noqa: E402
from neurons.data import assigned_batches, heldout_batches  # noqa: E402
from neurons.model import build_model, param_shapes  # noqa: E402
from neurons.shards import TokenShards  # noqa: E402
from neurons.train import evaluate, lr_at  # noqa: E402
from pipeline.basis import subspace_basis  # noqa: E402
from pipeline.payload import StageCompressor, payload_bytes  # noqa: E402
from pipeline.replica import PipelineReplica  # noqa: E402
from pipeline.subspace import SubspaceConstraint, residual_writer_names  # noqa: E402
from pipeline.window_basis import basis_bytes  # noqa: E402
from protocol.hparams import Hparams, load_hparams  # noqa: E402


@dataclass(frozen=True)
class Setting:
    name: str
    k: int | None  # None: no subspace anywhere
    compressed_groups: int  # how many replicas are compressed pipeline groups
    dense_groups: int  # how many are pipeline groups with float32 boundaries
    # ablation: a compressed stage measures Δ from its projected start P(θ_w) instead of θ_w, so
    # it does not pull back what full replicas put outside the subspace
    delta_from_projected: bool = False
    # ablation: every node projects the aggregate's residual-writer updates onto span(U) before the
    # outer step, so θ stays in the subspace despite top-k (U is fixed: the same op on every node)
    project_aggregate: bool = False
    # projected boundary: compressed stages keep their weights free (no projection of θ_w or after
    # steps); the boundary carries U Uᵀ (h − embed) and is therefore lossy
    projected_boundary: bool = False
    # adaptive boundary: projected, onto each window's principal basis instead of the seeded U
    adaptive_boundary: bool = False


def settings(replicas: int, groups: int, ks: list[int]) -> list[Setting]:
    out = [Setting("full", None, 0, 0), Setting("pipe-dense", None, 0, groups)]
    for k in ks:
        out.append(Setting(f"all-sub-k{k}", k, replicas, 0))
        out.append(Setting(f"het-sub-k{k}", k, groups, 0))
    out.append(Setting(f"het-sub-k{min(ks)}-keep", min(ks), groups, 0, delta_from_projected=True))
    out.append(Setting(f"all-sub-k{min(ks)}-projagg", min(ks), replicas, 0, project_aggregate=True))
    out.append(Setting(f"het-proj-k{min(ks)}", min(ks), groups, 0, projected_boundary=True))
    out.append(Setting(f"all-proj-k{min(ks)}", min(ks), replicas, 0, projected_boundary=True))
    out.append(Setting(f"het-adapt-k{min(ks)}", min(ks), groups, 0, projected_boundary=True, adaptive_boundary=True))
    out.append(Setting(f"all-adapt-k{min(ks)}", min(ks), replicas, 0, projected_boundary=True, adaptive_boundary=True))
    return out


def _shrink(hp: Hparams, args: argparse.Namespace) -> Hparams:
    model = hp.model.model_copy(update={"num_layers": args.layers})
    training = hp.training.model_copy(update={"inner_steps": args.inner_steps or hp.training.inner_steps})
    if args.small:  # smoke-test size: seconds, not minutes
        model = model.model_copy(update={"vocab_size": 512, "hidden_size": 64, "intermediate_size": 128,
                                         "max_seq_len": 32, "num_heads": 4, "num_kv_heads": 4})
        training = training.model_copy(update={"batch_size": 4, "seq_len": 32})
    return hp.model_copy(update={"model": model, "training": training})


class Network:
    """One run of one setting: the global θ, the replicas, the byte counters."""

    def __init__(self, hp: Hparams, setting: Setting, replicas: int, n_micro: int, stages: int) -> None:
        self.hp = hp
        self.setting = setting
        self.model = build_model(hp.model, hp.seed)
        self.shapes = param_shapes(self.model)
        constraint = self.constraint = None
        if setting.k is not None:
            basis = subspace_basis(hp.seed, hp.model.hidden_size, setting.k)
            constraint = self.constraint = SubspaceConstraint(basis, project_weights=not setting.projected_boundary)
            # Exact boundaries start from θ0 with its residual writers in span(U) (a no-op when projected).
            constraint.project_(dict(self.model.named_parameters()), anchor_embedding=None)
        self.replicas = []
        for r in range(replicas):
            compressed = r < setting.compressed_groups
            piped = compressed or r < setting.dense_groups
            self.replicas.append(PipelineReplica(
                build_model(hp.model, hp.seed), n_stages=stages if piped else 1, cfg=hp.training,
                constraint=constraint if compressed else None, n_micro=n_micro,
                lr_schedule=lambda step: lr_at(step, hp.training),
            ))
        c = hp.codec
        self.compressors = [[StageCompressor(st, c) for st in rep.stages] for rep in self.replicas]
        self.bytes = {"pseudo_gradient": 0, "activations": 0, "activation_gradients": 0, "window_basis": 0}
        self.boundary_bytes_per_micro_batch: dict[str, int] = {}

    def window(self, shards: TokenShards, w: int) -> float:
        t = self.hp.training
        start = {n: p.detach().clone() for n, p in self.model.named_parameters()}
        updates, losses = [], []
        for uid, (rep, comps) in enumerate(zip(self.replicas, self.compressors, strict=True), start=1):
            rep.model.load_state_dict(self.model.state_dict())
            batches = assigned_batches(shards, self.hp.seed, uid, w, t.inner_steps, t.batch_size, t.seq_len)
            adaptive = self.setting.adaptive_boundary and rep.constraint is not None
            rep.begin_window(w * t.inner_steps, probe=batches[0] if adaptive else None)
            if adaptive:  # the upstream stage sends each boundary's basis once per window
                self.bytes["window_basis"] += (len(rep.stages) - 1) * basis_bytes(self.hp.model.hidden_size, rep.constraint.k)
            origin = start
            if self.setting.delta_from_projected and rep.constraint is not None:
                origin = {n: p.detach().clone() for n, p in rep.model.named_parameters()}
            stats = rep.train_window(batches)
            losses.append(stats.loss_mean)
            self.bytes["activations"] += stats.activation_bytes
            self.bytes["activation_gradients"] += stats.gradient_bytes
            if len(rep.stages) > 1:
                kind = "subspace" if rep.constraint is not None else "dense"
                # one boundary, both directions, one micro-batch (every boundary carries the same)
                per_micro = stats.per_boundary_bytes[0] // (stats.steps * rep.n_micro)
                self.boundary_bytes_per_micro_batch[kind] = per_micro
            for comp in comps:
                payload = comp.compress(origin)
                self.bytes["pseudo_gradient"] += payload_bytes(payload.message)
                updates.append(decode_message(payload.message))
        dense = aggregate(updates, self.shapes)
        if self.setting.project_aggregate and self.constraint is not None:
            for name in residual_writer_names(dense):
                dense[name] = self.constraint.project_columns(dense[name])
        outer_step(self.model, dense, lr=self.hp.outer.outer_lr)
        return sum(losses) / len(losses)


def off_subspace_fraction(net: Network) -> float | None:
    """||W - U U^T W|| / ||W|| over the global model's residual writers: how far θ is from span(U)."""
    if net.constraint is None:
        return None
    params = dict(net.model.named_parameters())
    off = total = 0.0
    with torch.no_grad():
        for name in residual_writer_names(params):
            w = params[name].double()
            off += float((w - net.constraint.project_columns(w)).pow(2).sum())
            total += float(w.pow(2).sum())
    return round((off / total) ** 0.5, 4)


def projected_copy(net: Network) -> torch.nn.Module:
    """θ with its residual writers projected onto span(U), also for projected boundaries (whose
    stages start from θ itself), so the P(θ) column means the same in every row."""
    model = copy.deepcopy(net.model)
    SubspaceConstraint(net.constraint.basis).project_(dict(model.named_parameters()), anchor_embedding=None)
    return model


def run_setting(hp: Hparams, setting: Setting, args: argparse.Namespace, shards: TokenShards, heldout) -> dict:
    started = time.time()
    net = Network(hp, setting, args.replicas, args.micro_batches, args.stages)
    curve = []
    for w in range(args.windows):
        train_loss = net.window(shards, w)
        if (w + 1) % args.eval_every == 0 or w == args.windows - 1:
            point = {"window": w, "train_loss": round(train_loss, 4), "heldout_loss": round(evaluate(net.model, heldout), 4)}
            if net.constraint is not None:  # the model compressed stages run: residual writers projected
                point["heldout_loss_projected"] = round(evaluate(projected_copy(net), heldout), 4)
            curve.append(point)
    return {
        "setting": setting.name, "k": setting.k, "delta_from_projected": setting.delta_from_projected,
        "project_aggregate": setting.project_aggregate, "projected_boundary": setting.projected_boundary,
        "adaptive_boundary": setting.adaptive_boundary,
        "compressed_groups": setting.compressed_groups, "dense_groups": setting.dense_groups,
        "final_heldout_loss": curve[-1]["heldout_loss"],
        "final_heldout_loss_projected": curve[-1].get("heldout_loss_projected"), "curve": curve,
        "off_subspace_fraction": off_subspace_fraction(net),
        "bytes": net.bytes, "boundary_bytes_per_micro_batch_both_directions": net.boundary_bytes_per_micro_batch,
        "seconds": round(time.time() - started, 1),
    }


def plot(result: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 4))
    for i, row in enumerate(result["runs"]):  # past the 10 default colours, dashed lines tell rows apart
        xs = [p["window"] + 1 for p in row["curve"]]
        ax.plot(xs, [p["heldout_loss"] for p in row["curve"]], label=row["setting"], marker=".",
                linestyle=("-", "--", ":")[i // 10 % 3])
    ax.set_xlabel("window (H inner steps each)")
    ax.set_ylabel("held-out loss of the global model")
    ax.legend(fontsize="small", ncol=2)
    ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=110)


def markdown(result: dict) -> str:
    """The docs' table from a result (also from a saved one: --table-from)."""
    head = ("| setting | pipeline groups (compressed) | k | held-out loss θ | held-out loss P(θ) | off-subspace |"
            " pseudo-gradient B | activation B | activation-gradient B | boundary B / micro-batch |")
    lines = [head, "|" + "---|" * 10]
    for r in result["runs"]:
        groups = r["compressed_groups"] or r["dense_groups"]
        proj = r.get("final_heldout_loss_projected")
        boundary = next(iter(r["boundary_bytes_per_micro_batch_both_directions"].values()), 0)
        basis = r["bytes"].get("window_basis", 0)  # adaptive boundaries' bases, sent with the frames
        activations = f"{r['bytes']['activations']:,}" + (f" + {basis:,} basis" if basis else "")
        lines.append(
            f"| {r['setting']} | {groups} ({r['compressed_groups']}) | {r['k'] or '-'} | {r['final_heldout_loss']:.4f} "
            f"| {'-' if proj is None else f'{proj:.4f}'} | {'-' if r['off_subspace_fraction'] is None else r['off_subspace_fraction']} "
            f"| {r['bytes']['pseudo_gradient']:,} | {activations} | {r['bytes']['activation_gradients']:,} "
            f"| {boundary:,} |"
        )
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--hparams", default="tiny")
    parser.add_argument("--layers", type=int, default=4, help="model depth (the pipeline splits it in two)")
    parser.add_argument("--replicas", type=int, default=4, help="M")
    parser.add_argument("--groups", type=int, default=2, help="G of the M replicas are pipeline groups")
    parser.add_argument("--stages", type=int, default=2, help="stages per pipeline group (<= --layers)")
    parser.add_argument("--ks", default="4,16", help="subspace dimensions to compare (comma-separated)")
    parser.add_argument("--windows", type=int, default=12)
    parser.add_argument("--inner-steps", type=int, default=0, help="H (default: the preset's)")
    parser.add_argument("--micro-batches", type=int, default=2)
    parser.add_argument("--eval-batches", type=int, default=4)
    parser.add_argument("--eval-every", type=int, default=3)
    parser.add_argument("--only", default="", help="comma-separated setting names to run (default: all)")
    parser.add_argument("--small", action="store_true", help="smoke-test size (tiny model and corpus)")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--data-dir", type=Path, default=None, help="embedded corpus cache (default: a temp dir)")
    parser.add_argument("--plot", type=Path, default=None, help="write a PNG of held-out loss per window")
    parser.add_argument("--json", action="store_true", help="print one JSON object")
    parser.add_argument("--table-from", type=Path, default=None, help="print the markdown table of a saved --json result")
    args = parser.parse_args(argv)
    if args.table_from is not None:
        result = json.loads(args.table_from.read_text())
        print(markdown(result))
        if args.plot:
            plot(result, args.plot)
        return 0
    torch.set_num_threads(args.threads)
    hp = _shrink(load_hparams(args.hparams), args)
    ks = [int(k) for k in args.ks.split(",") if k]
    available = settings(args.replicas, args.groups, ks)
    wanted = [name for name in args.only.split(",") if name]
    unknown = sorted(set(wanted) - {s.name for s in available})
    if unknown:
        parser.error(f"--only: no setting {unknown}; the settings are {[s.name for s in available]}")
    chosen = [s for s in available if not wanted or s.name in wanted]
    started = time.time()
    with tempfile.TemporaryDirectory() as tmp:
        chars = 150_000 if args.small else DEFAULT_MAX_CHARS
        shards = TokenShards(ensure_embedded_data(args.data_dir or Path(tmp), hp.model.vocab_size, chars))
        t = hp.training
        heldout = heldout_batches(shards, args.eval_batches, t.batch_size, t.seq_len)
        runs = [run_setting(hp, s, args, shards, heldout) for s in chosen]
    result = {
        "hparams": hp.name, "model": hp.model.model_dump(), "inner_steps": hp.training.inner_steps,
        "batch_size": hp.training.batch_size, "seq_len": hp.training.seq_len, "replicas": args.replicas,
        "pipeline_groups": args.groups, "stages": args.stages, "micro_batches": args.micro_batches, "windows": args.windows,
        "runs": runs, "seconds": round(time.time() - started, 1),
    }
    if args.plot:
        plot(result, args.plot)
    if args.json:
        print(json.dumps(result))
    else:
        for row in runs:
            print(f"{row['setting']:>14}  held-out {row['final_heldout_loss']:.4f}  bytes {row['bytes']}  "
                  f"{row['seconds']} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
