"""Measure honest updates against the network's value bounds, on the project's own model and data.

A small honest network on one process: each miner trains its assigned data for H inner steps from
the shared θ_w with the real trainer, compresses the drift with error feedback and the real
codec, and all payloads are aggregated and applied as every node would. Per window it records the
largest |value| any miner sent and the largest per-parameter ratio ||update_p|| / ||θ_p||, next
to the bounds of ``protocol.hparams.BoundsConfig`` (``protocol.acceptance.check_bounds``), so the
headroom is measured, early windows included, not assumed.

    .venv/bin/python scripts/calibrate_bounds.py --hparams tiny --windows 10 --miners 3 --json
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from compression import ErrorFeedbackCompressor, aggregate, decode_message, outer_step  # noqa: E402
from neurons.corpus import ensure_embedded_data  # noqa: E402
from neurons.data import assigned_batches  # noqa: E402
from neurons.model import build_model, param_shapes  # noqa: E402
from neurons.shards import TokenShards  # noqa: E402
from neurons.train import InnerTrainer  # noqa: E402
from protocol.acceptance import parameter_norms  # noqa: E402
from protocol.hparams import load_hparams  # noqa: E402


def measure(hparams_name: str, windows: int, miners: int, data_dir: Path) -> dict:
    hp = load_hparams(hparams_name)
    t, c = hp.training, hp.codec
    shards = TokenShards(ensure_embedded_data(data_dir, hp.model.vocab_size))
    model = build_model(hp.model, hp.seed)
    shapes = param_shapes(model)
    trainers = [InnerTrainer(build_model(hp.model, hp.seed), t, "cpu") for _ in range(miners)]
    compressors = [
        ErrorFeedbackCompressor(shapes, chunk_size=c.chunk_size, topk_per_chunk=c.topk_per_chunk, beta=c.ef_beta)
        for _ in range(miners)
    ]
    rows = []
    for w in range(windows):
        norms = parameter_norms(model)
        updates, peak, ratio, worst = [], 0.0, 0.0, ""
        for uid, (trainer, compressor) in enumerate(zip(trainers, compressors, strict=True), start=1):
            trainer.model.load_state_dict(model.state_dict())
            trainer.global_step = w * t.inner_steps
            start = {n: p.detach().clone() for n, p in trainer.model.named_parameters()}
            trainer.train_window(assigned_batches(shards, hp.seed, uid, w, t.inner_steps, t.batch_size, t.seq_len))
            update = decode_message(compressor.compress({n: start[n] - p.detach() for n, p in trainer.model.named_parameters()}))
            updates.append(update)
            for name, sparse in update.items():
                peak = max(peak, float(sparse.values.abs().max()))
                r = float(sparse.values.double().norm()) / max(norms[name], 1e-12)
                if r > ratio:
                    ratio, worst = r, name
        outer_step(model, aggregate(updates, shapes), lr=hp.outer.outer_lr)
        rows.append({"window": w, "max_abs_value": peak, "max_update_ratio": ratio, "worst_parameter": worst})
    with torch.no_grad():
        max_param = max(float(p.abs().max()) for p in model.parameters())
    return {
        "hparams": hp.name, "windows": windows, "miners": miners,
        "bounds": {"max_abs_value": hp.max_abs_value, "max_update_ratio": hp.bounds.max_update_ratio,
                   "max_abs_param": hp.bounds.max_abs_param},
        "observed": {"max_abs_value": max(r["max_abs_value"] for r in rows),
                     "max_update_ratio": max(r["max_update_ratio"] for r in rows), "max_abs_param": max_param},
        "per_window": rows,
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--hparams", default="tiny")
    parser.add_argument("--windows", type=int, default=10)
    parser.add_argument("--miners", type=int, default=3)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--data-dir", type=Path, default=None, help="embedded corpus cache (default: a temp dir)")
    parser.add_argument("--json", action="store_true", help="print one JSON object")
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    started = time.time()
    with tempfile.TemporaryDirectory() as tmp:
        result = measure(args.hparams, args.windows, args.miners, args.data_dir or Path(tmp))
    result["seconds"] = round(time.time() - started, 1)
    if args.json:
        print(json.dumps(result))
    else:
        for row in result["per_window"]:
            print(row)
        print("bounds", result["bounds"], "observed", result["observed"])
    return 0


if __name__ == "__main__":
    sys.exit(main())
