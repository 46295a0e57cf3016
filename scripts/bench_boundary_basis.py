"""How much of what crosses a pipeline boundary a k-dim basis keeps: seeded random vs the window's own.

A compressed boundary on an unconstrained θ sends U Uᵀ (h − embed(tokens)); the rest is lost.
For each warm-up point (windows of ordinary training from θ0 on the project's model and data)
this measures, at every boundary of an N-stage split, the share of ||h − embed||² kept by

- ``seeded``: the run's fixed random basis (``pipeline.basis``, what ``projected`` uses), and
- ``window``: the top-k principal directions of the window's *first* batch (``pipeline.window_basis``,
  what ``adaptive`` uses), measured on the window's *other* batches, as a group applies it.

    .venv/bin/python scripts/bench_boundary_basis.py --json --warm 0,2,4,8,12 --k 4,8,16
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import torch

from neurons.corpus import ensure_embedded_data
from neurons.data import assigned_batches
from neurons.model import build_model
from neurons.shards import TokenShards
from neurons.train import InnerTrainer
from pipeline.basis import subspace_basis
from pipeline.stage import split_layers
from pipeline.window_basis import boundary_rest, principal_basis
from protocol.hparams import load_hparams

TRAIN_UID, PROBE_UID = 50, 7  # whose assignment warms the model up, and whose window is measured


def kept(rest: torch.Tensor, basis: torch.Tensor) -> float:
    """Share of sum ||rest_i||² inside span(basis)."""
    x = rest.reshape(-1, rest.shape[-1]).double()
    return float((x @ basis.double()).pow(2).sum() / x.pow(2).sum())


def boundary_rests(model, stops: list[int], batches: list[torch.Tensor]) -> dict[int, list[torch.Tensor]]:
    """Per boundary (after layer ``stop``): hidden − embedding for each batch."""
    embedding = model.model.embed_tokens.weight.detach()
    return {stop: [boundary_rest(model, stop, ids, embedding) for ids in batches] for stop in stops}


def measure(hparams: str, stages: int, warm: list[int], ks: list[int], data_dir: Path) -> list[dict]:
    hp = load_hparams(hparams)
    t = hp.training
    shards = TokenShards(ensure_embedded_data(data_dir, hp.model.vocab_size))
    model = build_model(hp.model, hp.seed)
    stops = [r.stop for r in split_layers(hp.model.num_layers, stages)[:-1]]
    rows = []
    for w in range(max(warm) + 1):
        if w in warm:
            batches = assigned_batches(shards, hp.seed, PROBE_UID, w, t.inner_steps, t.batch_size, t.seq_len)
            for stop, rests in boundary_rests(model, stops, batches).items():
                for k in ks:
                    window = principal_basis(rests[0], k)
                    seeded = subspace_basis(hp.seed, hp.model.hidden_size, k)
                    held_out = torch.cat([r.reshape(-1, r.shape[-1]) for r in rests[1:]])
                    rows.append({"warm_windows": w, "boundary_after_layer": stop, "k": k,
                                 "seeded": round(kept(held_out, seeded), 4), "window": round(kept(held_out, window), 4)})
        trainer = InnerTrainer(model, t, "cpu")
        trainer.global_step = w * t.inner_steps
        trainer.train_window(assigned_batches(shards, hp.seed, TRAIN_UID, w, t.inner_steps, t.batch_size, t.seq_len))
    return rows


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--hparams", default="tiny-pipeline")
    parser.add_argument("--stages", type=int, default=2)
    parser.add_argument("--warm", default="0,2,4,8,12", help="windows of ordinary training before measuring")
    parser.add_argument("--k", default="4,8,16", help="subspace dimensions")
    parser.add_argument("--data-dir", type=Path, default=Path("/tmp/data-cache"))
    parser.add_argument("--json", action="store_true", help="print the rows as JSON")
    args = parser.parse_args(argv)
    torch.manual_seed(0)
    rows = measure(args.hparams, args.stages, [int(x) for x in args.warm.split(",")],
                   [int(x) for x in args.k.split(",")], args.data_dir)
    if args.json:
        print(json.dumps({"hparams": args.hparams, "stages": args.stages, "rows": rows}, indent=1))
    else:
        for r in rows:
            print(f"warm {r['warm_windows']:3d}  boundary {r['boundary_after_layer']}  k {r['k']:3d}  "
                  f"seeded {r['seeded']:.3f}  window {r['window']:.3f}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
