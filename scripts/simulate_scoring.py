"""Simulate Gauntlet scoring over a few windows with a tiny real model and print the outcome.

Miners train a small linear regression model (the "global model") for a few SGD steps on data
assigned to them for each window, upload a top-k sparse pseudo-gradient, and a validator runs the
scoring package end to end on it: stage-1 copy check, stage-2 LossScore / unique-data statistic
by applying each update alone (and restoring), grouped OpenSkill ratings, the score book, payment
gates and weights; the gather set for the next window comes from those weights.

A plumbing check of the whole package on a toy model, not a calibration: the payment thresholds
are measured on the project's own model by ``scripts/calibrate_scoring.py``. It also measures
the OpenSkill group size (``sigma_by_group_size``).

Miner kinds: honest (x3), weaker (honest but one short step), free-rider (trains on data of its
own choosing, not its assignment), copier (re-uploads honest uid 1's update plus small noise,
later), attacker (uploads a sign-flipped update) and newcomer (honest, joins at window 4).

    python scripts/simulate_scoring.py --json            # JSON summary on stdout
    python scripts/simulate_scoring.py --windows 10      # a readable table
"""

from __future__ import annotations

import argparse
import json
import sys
from dataclasses import dataclass
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from compression.sparse import SparseTensor, SparseUpdate  # noqa: E402
from protocol.acceptance import RejectReason, Stage1Result  # noqa: E402
from protocol.chain import Metagraph, NeuronInfo  # noqa: E402
from protocol.gather_set import select_gather_set  # noqa: E402
from protocol.hparams import OuterConfig, ScoringConfig  # noqa: E402
from scoring.copycheck import CopyMemory, CopyPolicy, Upload, find_copies, sketch_update  # noqa: E402
from scoring.gauntlet import WindowEvidence, score_window  # noqa: E402
from scoring.lossscore import measure_update  # noqa: E402
from scoring.ratings import make_model, rate_window  # noqa: E402
from scoring.state import ScoreBook  # noqa: E402

D_IN, D_OUT, OWN_SAMPLES, LR, STEPS, KEEP = 48, 16, 12, 0.05, 6, 1 / 8
KINDS = {1: "honest", 2: "honest", 3: "honest", 4: "weaker", 5: "free-rider", 6: "copier", 7: "attacker"}
NEWCOMER, NEWCOMER_JOINS, VALIDATOR, BURN_UID = 8, 4, 0, 0


@dataclass
class World:
    true_w: torch.Tensor
    model: torch.nn.Linear
    seed: int

    def batch(self, *key: int) -> tuple[torch.Tensor, torch.Tensor]:
        gen = torch.Generator().manual_seed(hash_key(self.seed, *key))
        x = torch.randn(OWN_SAMPLES, D_IN, generator=gen)
        y = x @ self.true_w.T + 0.1 * torch.randn(OWN_SAMPLES, D_OUT, generator=gen)
        return x, y


def hash_key(*parts: int) -> int:
    h = 1469598103934665603
    for p in parts:
        h = ((h ^ (p & 0xFFFFFFFF)) * 1099511628211) % (1 << 61)
    return h


def mse(model: torch.nn.Module, batches: list[tuple[torch.Tensor, torch.Tensor]]) -> torch.Tensor:
    """Per-sample squared error, in batch order (stage 2 keeps losses per sequence)."""
    with torch.no_grad():
        return torch.cat([((model(x) - y) ** 2).mean(dim=1) for x, y in batches])


def train_update(world: World, batch: tuple[torch.Tensor, torch.Tensor], steps: int) -> SparseUpdate:
    """A few SGD steps from the global model, then top-k of the drift Δ = θ_before − θ_after."""
    local = torch.nn.Linear(D_IN, D_OUT)
    local.load_state_dict(world.model.state_dict())
    opt = torch.optim.SGD(local.parameters(), lr=LR)
    for _ in range(steps):
        opt.zero_grad()
        ((local(batch[0]) - batch[1]) ** 2).mean().backward()
        opt.step()
    update: SparseUpdate = {}
    for (name, before), after in zip(world.model.named_parameters(), local.parameters(), strict=True):
        delta = (before - after).detach().reshape(-1)
        k = max(1, int(delta.numel() * KEEP))
        idx = delta.abs().topk(k).indices.sort().values
        update[name] = SparseTensor(tuple(before.shape), idx, delta[idx].float())
    return update


def make_upload(world: World, uid: int, kind: str, window: int, honest1: SparseUpdate) -> SparseUpdate:
    if kind == "free-rider":
        return train_update(world, world.batch(999, uid, window), STEPS)  # not its assignment
    if kind == "copier":
        gen = torch.Generator().manual_seed(hash_key(world.seed, 7, window))
        return {
            n: SparseTensor(
                st.shape,
                st.indices,
                st.values + 0.05 * st.values.std() * torch.randn(st.values.shape, generator=gen),
            )
            for n, st in honest1.items()
        }
    steps = 1 if kind == "weaker" else STEPS
    update = train_update(world, world.batch(uid, window), steps)
    if kind == "attacker":
        return {n: SparseTensor(st.shape, st.indices, -st.values) for n, st in update.items()}
    return update


def kinds_at(window: int) -> dict[int, str]:
    kinds = dict(KINDS)
    if window >= NEWCOMER_JOINS:
        kinds[NEWCOMER] = "newcomer"
    return kinds


def metagraph(window: int, weights: dict[int, float]) -> Metagraph:
    neurons = [NeuronInfo(VALIDATOR, "hk-v", "ck", 1000.0, True, weights=dict(weights))]
    neurons += [NeuronInfo(u, f"hk-{u}", "ck", 0.0, False) for u in kinds_at(window)]
    return Metagraph(netuid=1, block=window * 10, neurons=tuple(neurons))


def stage1(
    window: int, uploads: dict[int, SparseUpdate], memory: CopyMemory, cfg: ScoringConfig
) -> list[Stage1Result]:
    # the copier uploads a few seconds after everyone else
    ups = [
        Upload(u, 1.0 + (5.0 if KINDS.get(u) == "copier" else 0.0), sketch_update(up))
        for u, up in uploads.items()
    ]
    copies = find_copies(window, ups, memory, CopyPolicy(overlap=cfg.copy_overlap_threshold))
    memory.remember(window, {u.uid: u.sketch for u in ups if u.uid not in copies})
    return [
        Stage1Result.reject(u, RejectReason.COPY, copies[u].detail) if u in copies else Stage1Result.accept(u)
        for u in sorted(uploads)
    ]


def run(windows: int = 10, seed: int = 0) -> dict[str, object]:
    torch.manual_seed(seed)
    scoring, outer = ScoringConfig(), OuterConfig(gather_peers=4, reserve_peers=2)
    world = World(torch.randn(D_OUT, D_IN), torch.nn.Linear(D_IN, D_OUT), seed)
    book, memory, weights = ScoreBook(), CopyMemory(scoring.copy_memory_windows), {}
    rows = []
    for w in range(windows):
        kinds = kinds_at(w)
        honest1 = train_update(world, world.batch(1, w), STEPS)
        uploads = {u: (honest1 if u == 1 else make_upload(world, u, k, w, honest1)) for u, k in kinds.items()}
        results = stage1(w, uploads, memory, scoring)
        rand = [world.batch(10_000, w, i) for i in range(scoring.eval_batches)]
        before_rand = mse(world.model, rand)
        meas = {
            r.uid: measure_update(
                world.model, uploads[r.uid], outer.outer_lr, [world.batch(r.uid, w)], rand, mse, before_rand
            )
            for r in results
            if r.passed
        }
        hotkeys = {u: f"hk-{u}" for u in kinds}
        evidence = WindowEvidence(w, hotkeys, results, meas, dict.fromkeys(kinds, 1.0))
        res = score_window(book, evidence, scoring, outer, BURN_UID, "sim")
        gather = select_gather_set(
            metagraph(w, weights),
            outer.gather_peers,
            outer.reserve_peers,
            [r.uid for r in results if r.passed],
        )
        apply_aggregate(world, [uploads[u] for u in gather.gather], outer.outer_lr)
        weights = res.weights
        rows.append(
            {
                "window": w,
                "random_loss": round(float(mse(world.model, rand).mean()), 4),
                "gather": gather.gather,
                "weights": {str(u): round(weights.get(u, 0.0), 4) for u in sorted(kinds)},
                "rejected": {str(r.uid): str(r.reason) for r in results if not r.passed},
            }
        )
    return {
        "kinds": {str(u): k for u, k in kinds_at(windows).items()},
        "burn_uid": BURN_UID,
        "windows": rows,
        "summary": summarize(rows),
    }


def apply_aggregate(world: World, updates: list[SparseUpdate], lr: float) -> None:
    if not updates:
        return
    with torch.no_grad():
        for name, p in world.model.named_parameters():
            dense = sum(u[name].to_dense() for u in updates) / len(updates)
            p -= lr * dense


def summarize(rows: list[dict]) -> dict[str, object]:
    kinds = {str(u): k for u, k in kinds_at(len(rows)).items()}
    total = {u: round(sum(r["weights"].get(u, 0.0) for r in rows), 4) for u in kinds}
    paid = [r["window"] for r in rows if r["weights"].get(str(NEWCOMER), 0.0) > 0]
    return {
        "total_weight": total,
        "newcomer_joined": NEWCOMER_JOINS,
        "newcomer_first_paid": paid[0] if paid else None,
        "loss_first_last": [rows[0]["random_loss"], rows[-1]["random_loss"]],
    }


def sigma_by_group_size(players: int = 64, windows: int = 10, seed: int = 0) -> dict[str, dict[str, float]]:
    """The DESIGN trap, measured: mean sigma and rank quality after ``windows`` rounds."""
    gen = torch.Generator().manual_seed(seed)
    skill = torch.linspace(0, 1, players)
    out = {}
    for size in (players, 16, 8, 4):
        ratings: dict = {}
        for w in range(windows):
            noisy = skill + 0.2 * torch.randn(players, generator=gen)
            ratings = rate_window(
                ratings, dict(enumerate(noisy.tolist())), make_model(7.0, 0.1), size, f"s:{w}"
            )
        sig = sum(r.sigma for r in ratings.values()) / players
        ords = torch.tensor([ratings[u].ordinal for u in range(players)])
        rank_corr = torch.corrcoef(
            torch.stack([ords.argsort().argsort().float(), torch.arange(players).float()])
        )[0, 1]
        out[str(size)] = {"mean_sigma": round(sig, 3), "rank_corr": round(float(rank_corr), 3)}
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--windows", type=int, default=10)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--json", action="store_true", help="print the JSON summary")
    args = ap.parse_args()
    result = run(args.windows, args.seed)
    result["sigma_by_group_size"] = sigma_by_group_size()
    if args.json:
        print(json.dumps(result, indent=1))
        return
    kinds = result["kinds"]
    print("window  loss   " + " ".join(f"{u}:{k[:8]:>8}" for u, k in kinds.items()))
    for r in result["windows"]:
        print(
            f"{r['window']:>6} {r['random_loss']:6.3f} "
            + " ".join(f"{r['weights'].get(u, 0):>10.3f}" for u in kinds)
        )
    print(json.dumps(result["summary"]))
    print(json.dumps(result["sigma_by_group_size"]))


if __name__ == "__main__":
    main()
