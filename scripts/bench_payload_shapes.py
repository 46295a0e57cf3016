"""Payload size and density of the codec on odd parameter shapes (prime sides, a 1 x n row, a
prime-length bias), one shape per case plus all of them as one model.

    python scripts/bench_payload_shapes.py --json
    python scripts/bench_payload_shapes.py --json --presets   # also each preset's bound vs its cap

Per case: numel, kept values, density relative to the configured topk_per_chunk / chunk_size**2
(1.0 = exactly the configured ratio), the bytes of one signed-format payload (safetensors
header and manifest included) encoding Gaussian pseudo-gradients after one error-feedback step,
and the bound ``compression.budget.max_payload_bytes`` predicts from the shapes alone (what
nodes check against ``codec.max_payload_bytes`` at start-up) with its ratio to the real size,
for the whole payload and for the encoded blobs alone.
"""

from __future__ import annotations

import argparse
import json
import math
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from compression import CodecParams, ErrorFeedbackCompressor, PayloadManifest, encode_payload  # noqa: E402
from compression.budget import max_payload_bytes  # noqa: E402

CASES: dict[str, dict[str, tuple[int, ...]]] = {
    "199x199": {"w": (199, 199)},
    "2048x199": {"w": (2048, 199)},
    "1x7": {"w": (1, 7)},
    "bias_4099": {"b": (4099,)},
    "odd_model": {"a": (199, 199), "b": (2048, 199), "c": (1, 7), "d": (4099,)},
}


def measure(shapes: dict[str, tuple[int, ...]], params: CodecParams, seed: int = 0) -> dict:
    g = torch.Generator().manual_seed(seed)
    ef = ErrorFeedbackCompressor(shapes, params.chunk_size, params.topk_per_chunk)
    msg = ef.compress({n: torch.randn(s, generator=g) for n, s in shapes.items()})
    manifest = PayloadManifest.for_message(msg, run_id="bench", window=0, uid=0, hotkey="5" + "x" * 47, global_step=0)
    numel = sum(math.prod(s) for s in shapes.values())
    target = params.topk_per_chunk / params.chunk_size**2
    size = len(encode_payload(msg, manifest))
    bound = max_payload_bytes(shapes, params)
    blob_bytes = sum(b.numel() for b in msg.blobs.values())
    return {
        "shapes": {n: "x".join(map(str, s)) for n, s in shapes.items()},
        "numel": numel,
        "kept": msg.n_kept,
        "density_vs_configured": msg.n_kept / numel / target,
        "payload_bytes": size,
        "predicted_max_bytes": bound.total,
        "predicted_over_real": bound.total / size,
        # the blobs alone: the framing bound assumes the longest manifest fields (~0.7 kB more)
        "blob_bytes": blob_bytes,
        "predicted_blob_over_real": bound.blob_bytes / blob_bytes,
    }


def preset_bounds() -> dict[str, dict]:
    """Each preset's payload bound (its model built on the meta device: shapes only) and cap."""
    from neurons.model import build_model, param_shapes
    from protocol.hparams import PRESET_DIR, load_hparams

    out = {}
    for path in sorted(PRESET_DIR.glob("*.json")):
        hp = load_hparams(path)
        with torch.device("meta"):
            shapes = param_shapes(build_model(hp.model, hp.seed))
        params = CodecParams(chunk_size=hp.codec.chunk_size, topk_per_chunk=hp.codec.topk_per_chunk)
        bound = max_payload_bytes(shapes, params)
        cap = hp.codec.max_payload_bytes
        out[hp.name] = {"kept": bound.kept_values, "predicted_max_bytes": bound.total, "cap": cap,
                        "fraction_of_cap": bound.total / cap}
    return out


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--json", action="store_true", help="print one JSON object instead of a table")
    ap.add_argument("--chunk-size", type=int, default=64)
    ap.add_argument("--topk-per-chunk", type=int, default=64)
    ap.add_argument("--presets", action="store_true", help="also each preset's predicted bound against its cap")
    args = ap.parse_args(argv)
    params = CodecParams(chunk_size=args.chunk_size, topk_per_chunk=args.topk_per_chunk)
    result = {"codec": params.model_dump(), "cases": {name: measure(shapes, params) for name, shapes in CASES.items()}}
    if args.presets:
        result["presets"] = preset_bounds()
    if args.json:
        print(json.dumps(result, indent=1))
        return
    for name, case in (*result["cases"].items(), *result.get("presets", {}).items()):
        row = "  ".join(f"{k}={v:.4g}" for k, v in case.items() if isinstance(v, int | float))
        print(f"{name:10s} {row}")


if __name__ == "__main__":
    main()
