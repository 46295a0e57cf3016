"""Which reference update makes the unique-data statistic most informative? (offline study)

Same networks as ``scripts/calibrate_scoring.py`` (the project's tiny model, corpus, trainer and
codec; 3 honest miners, ``wrong_data``, ``prev_aggregate``, ``late_mean_copy``). Per window and
miner it computes the own-vs-random statistic several ways on the same per-sequence losses:

- ``welch``: Welch's t of own vs random relative gains (no reference);
- ``ols_REF``: t of the own-data indicator in  gain = a + b·gain_REF + c·[own]  (``reference_t``);
- ``did_REF``: Welch's t of (gain − gain_REF) own vs random (slope fixed at 1);

with REF = ``prev`` (the previous window's aggregate), ``allmean`` (the mean of all this window's
uploads), ``loo`` (the mean of the others' uploads), ``partner`` (one other miner's upload). It
prints mean, spread and count below 2.33 of each statistic per kind (windows after the first,
t clipped to ±4) — the numbers behind docs/scoring.md's choice of the previous aggregate.

    .venv/bin/python scripts/compare_scoring_references.py --json --seeds 3 --windows 6
"""

from __future__ import annotations

import argparse
import json
import random
import statistics
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
sys.path.insert(0, str(Path(__file__).resolve().parent))

import calibrate_scoring as cs  # noqa: E402

from compression import aggregate  # noqa: E402
from neurons.corpus import DEFAULT_MAX_CHARS, ensure_embedded_data  # noqa: E402
from neurons.data import Assignments, random_batches  # noqa: E402
from neurons.shards import TokenShards  # noqa: E402
from protocol.hparams import load_hparams  # noqa: E402
from scoring.lossscore import (  # noqa: E402
    T_CLIP,
    apply_dense_temporarily,
    apply_sparse_temporarily,
    per_sequence_gains,
    reference_t,
    sequence_losses,
    welch_t,
)

KINDS = "wrong_data,prev_aggregate,late_mean_copy"


def gains_with(model, apply, batches, before) -> list[float]:
    with apply:
        return per_sequence_gains(before.tolist(), sequence_losses(model, batches).tolist())


def statistics_of(y_own, y_rand, x_own, x_rand) -> tuple[float, float]:
    ols = reference_t(y_own, y_rand, x_own, x_rand)
    did = welch_t([a - b for a, b in zip(y_own, x_own, strict=True)], [a - b for a, b in zip(y_rand, x_rand, strict=True)])
    return (ols if ols is not None else float("nan")), did


def one_window(net: cs.Network, w: int, kinds: dict[int, str], seed: int) -> list[dict]:
    hp, shards = net.hp, net.shards
    t, n, lr = hp.training, hp.scoring.eval_batches, hp.outer.outer_lr
    ups, honest = net.uploads(w, switch=10**6)
    given = Assignments(net.data_seed, tuple(kinds), t.inner_steps * t.batch_size)
    rand = random_batches(shards, net.secret, w, n, t.batch_size, t.seq_len, exclude=given)
    m = net.model
    rb = sequence_losses(m, rand)
    uids = sorted(ups)
    rng = random.Random(seed * 1000 + w)
    rows = []
    for u in uids:
        own = net.batches(u, w, n)
        ob = sequence_losses(m, own)
        y_own = gains_with(m, apply_sparse_temporarily(m, ups[u], lr), own, ob)
        y_rand = gains_with(m, apply_sparse_temporarily(m, ups[u], lr), rand, rb)
        row = {"seed": seed, "window": w, "uid": u, "kind": kinds[u], "welch": welch_t(y_own, y_rand)}
        refs = {"allmean": aggregate(list(ups.values()), net.shapes),
                "loo": aggregate([ups[v] for v in uids if v != u], net.shapes)}
        if net.last_aggregate is not None:
            refs["prev"] = net.last_aggregate
        for name, dense in refs.items():
            x_own = gains_with(m, apply_dense_temporarily(m, dense, lr), own, ob)
            x_rand = gains_with(m, apply_dense_temporarily(m, dense, lr), rand, rb)
            row[f"ols_{name}"], row[f"did_{name}"] = statistics_of(y_own, y_rand, x_own, x_rand)
        partner = ups[rng.choice([v for v in uids if v != u])]
        x_own = gains_with(m, apply_sparse_temporarily(m, partner, lr), own, ob)
        x_rand = gains_with(m, apply_sparse_temporarily(m, partner, lr), rand, rb)
        row["ols_partner"], row["did_partner"] = statistics_of(y_own, y_rand, x_own, x_rand)
        rows.append(row)
    net.step(honest)
    return rows


def summarize(rows: list[dict]) -> dict:
    keys = sorted({k for r in rows for k in r if k.startswith(("welch", "ols_", "did_"))})
    out: dict = {}
    for kind in sorted({r["kind"] for r in rows}):
        for key in keys:
            v = [max(-T_CLIP, min(T_CLIP, r[key])) for r in rows if r["kind"] == kind and r["window"] > 0 and key in r]
            if len(v) > 1:
                out.setdefault(kind, {})[key] = {"mean": round(statistics.mean(v), 2), "sd": round(statistics.stdev(v), 2),
                                                  "n": len(v), "below_2.33": sum(x < 2.33 for x in v)}
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", type=int, default=3)
    parser.add_argument("--windows", type=int, default=6)
    parser.add_argument("--hparams", default="tiny")
    parser.add_argument("--data-dir", type=Path, default=Path(".tessera/data-cache"))
    parser.add_argument("--corpus-chars", type=int, default=DEFAULT_MAX_CHARS)
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args(argv)
    torch.set_num_threads(1)
    started = time.time()
    hp = load_hparams(args.hparams)
    shards = TokenShards(ensure_embedded_data(args.data_dir, hp.model.vocab_size, args.corpus_chars))
    kinds = cs.parse_kinds(3, KINDS)
    rows = []
    for seed in range(args.seeds):
        net = cs.Network(hp, shards, seed, kinds)
        for w in range(args.windows):
            rows += one_window(net, w, kinds, seed)
    result = {"seeds": args.seeds, "windows": args.windows, "by_kind": summarize(rows),
              "seconds": round(time.time() - started, 1)}
    print(json.dumps(result, indent=None if args.json else 1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
