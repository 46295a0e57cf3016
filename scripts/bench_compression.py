"""Benchmark tessera's codec against the reference SparseLoCo wire format, side by side.

    python scripts/bench_compression.py --json           # full run (a few minutes on 2 cores)
    python scripts/bench_compression.py --json --small   # quick run (seconds), same JSON shape

Per case and format: bits_per_index, bits_per_value (all wire bytes incl. safetensors header,
manifest and tables x 8 / kept values), ratio_vs_fp32/bf16, encode_elems_per_s (error feedback
+ top-k + quantize + serialize; median over peers), decode_elems_per_s (one payload with all its
checks, no signature; median over peers), decode_aggregate_elems_per_s (decode N peers' payloads and
aggregate them), rel_error (||decoded - selected|| / ||selected||), plus the entropy floor of
the index sets and a comparison of 2-bit quantizers on the same kept values.
"""

from __future__ import annotations

import argparse
import json
import math
import statistics
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench_cases import Case, realistic_case, synthetic_case  # noqa: E402
from reference_format import (  # noqa: E402
    decode_reference_payload,
    encode_reference_payload,
    encode_reference_tensor,
    quantize_reference,
)

from compression import (  # noqa: E402
    ErrorFeedbackCompressor,
    PayloadManifest,
    aggregate,
    decode_payload,
    encode_payload,
)
from compression.codec import HEADER_BYTES, encode_tensor  # noqa: E402
from compression.quantize import dequantize, lloyd_threshold, optimal_threshold, quantize  # noqa: E402


class ReferenceCompressor:
    """Error feedback around the reference format, so both formats do the same work per peer."""

    def __init__(self, tess: ErrorFeedbackCompressor) -> None:
        self.layouts, self.beta = tess.layouts, tess.beta
        self.error = {n: torch.zeros_like(e) for n, e in tess.error.items()}

    def compress(self, deltas, manifest_json: str) -> bytes:
        blobs = {}
        for name in sorted(self.layouts):
            e = self.error[name]
            e.mul_(self.beta).add_(deltas[name])
            blob, flat, decoded = encode_reference_tensor(e, self.layouts[name])
            e.view(-1).index_add_(0, flat, decoded, alpha=-1.0)
            blobs[name] = blob
        return encode_reference_payload(blobs, manifest_json)


def floor_bits(layouts) -> float:
    """Entropy floor log2 C(chunk, k) / k, averaged over all kept indices."""
    bits = sum(
        lay.n_chunks * (math.lgamma(lay.chunk_elems + 1) - math.lgamma(lay.k + 1) - math.lgamma(lay.chunk_elems - lay.k + 1))
        for lay in layouts.values()
    )
    return bits / math.log(2) / sum(lay.n_kept for lay in layouts.values())


def rel_error(update, x) -> float:
    err = sel = 0.0
    for name, st in update.items():
        chosen = x[name].reshape(-1)[st.indices].double()
        err += float((st.values.double() - chosen).square().sum())
        sel += float(chosen.square().sum())
    return math.sqrt(err / sel)


def quantizer_study(x, layouts) -> dict:
    """rel_error and sign-flip rate of candidate 2-bit quantizers on the same kept values."""
    kept = []
    for name, lay in layouts.items():
        flat = encode_tensor(x[name].float(), lay).flat_indices
        kept.append(x[name].reshape(-1)[flat].float())
    candidates = {"reference_4bins_6sigma": lambda v: quantize_reference(v)}
    for iters in (0, 1, 4, 8):
        candidates[f"sign_magnitude_lloyd{iters}"] = lambda v, i=iters: quantize(v, lambda m: lloyd_threshold(m, i))
    candidates["sign_magnitude_optimal_split"] = lambda v: quantize(v, optimal_threshold)
    out = {}
    for label, fn in candidates.items():
        err = sel = flips = 0.0
        for v in kept:
            codes, table = fn(v)
            d = dequantize(codes, table)
            err += float((d - v).double().square().sum())
            sel += float(v.double().square().sum())
            flips += float(((d > 0) != (v > 0)).sum())
        out[label] = {"rel_error": math.sqrt(err / sel), "sign_flip_rate": flips / sum(v.numel() for v in kept)}
    return out


def stats(payloads: list[bytes], n_kept: int, numel: int, index_bytes: int) -> dict:
    wire_bits = 8 * len(payloads[0])
    return {
        "bits_per_index": 8 * index_bytes / n_kept,
        "bits_per_value": wire_bits / n_kept,
        "ratio_vs_fp32": 32 * numel / wire_bits,
        "ratio_vs_bf16": 16 * numel / wire_bits,
        "payload_bytes": len(payloads[0]),
    }


def tessera_index_bytes(msg) -> int:
    total = 0
    for name, blob in msg.blobs.items():
        lay = msg.params.layout(msg.shapes[name])
        total += blob.numel() - HEADER_BYTES - (lay.n_kept + 3) // 4
    return total


def timed(fn):
    t0 = time.perf_counter()
    out = fn()
    return out, time.perf_counter() - t0


def run_case(case: Case, peers: int) -> dict:
    shapes = case.shapes
    tess = ErrorFeedbackCompressor(shapes)
    ref = ReferenceCompressor(tess)
    layouts = tess.layouts
    numel = sum(lay.numel for lay in layouts.values())
    n_kept = sum(lay.n_kept for lay in layouts.values())
    probe = tess.compress({n: torch.zeros(s) for n, s in shapes.items()})
    manifest = PayloadManifest.for_message(probe, run_id="bench", window=0, uid=0, hotkey="5" + "x" * 47, global_step=0)
    tess = ErrorFeedbackCompressor(shapes)  # the probe must not leave state behind
    t_times, r_times, t_pay, r_pay, idx_bytes = [], [], [], [], 0
    for p in range(peers):
        x = case.peer(p)
        for e in (*tess.error.values(), *ref.error.values()):
            e.zero_()
        order = ("t", "r") if p % 2 == 0 else ("r", "t")  # alternate to share machine noise fairly
        for which in order:
            if which == "t":
                (msg, data), dt = timed(lambda x=x: (m := tess.compress(x), encode_payload(m, manifest)))
                t_times.append(dt)
                t_pay.append(data)
                idx_bytes = idx_bytes or tessera_index_bytes(msg)
            else:
                data, dt = timed(lambda x=x: ref.compress(x, manifest.canonical_json()))
                r_times.append(dt)
                r_pay.append(data)
        if p == 0:
            x0 = x
    big = 1 << 40
    # Warm both decoders first: the per-run setup (tessera's decode plan, cached per layout set)
    # is paid once per run, not per window, so it belongs in neither format's window throughput.
    decode_payload(t_pay[0], shapes, big)
    decode_reference_payload(r_pay[0], layouts)
    t_ups, t_dec = timed(lambda: aggregate([decode_payload(d, shapes, big).update for d in t_pay], shapes))
    r_ups, r_dec = timed(lambda: aggregate([decode_reference_payload(d, layouts) for d in r_pay], shapes))
    t_one = [timed(lambda d=d: decode_payload(d, shapes, big))[1] for d in t_pay]
    r_one = [timed(lambda d=d: decode_reference_payload(d, layouts))[1] for d in r_pay]
    tess_stats = stats(t_pay, n_kept, numel, idx_bytes)
    ref_stats = stats(r_pay, n_kept, numel, n_kept * 12 // 8)
    for s, times, dec, one, pay, decode in (
        (tess_stats, t_times, t_dec, t_one, t_pay, lambda d: decode_payload(d, shapes, big).update),
        (ref_stats, r_times, r_dec, r_one, r_pay, lambda d: decode_reference_payload(d, layouts)),
    ):
        # Median over peers: this machine is shared, and one descheduled op can cost milliseconds.
        s["encode_elems_per_s"] = numel / statistics.median(times)
        s["decode_elems_per_s"] = numel / statistics.median(one)
        s["decode_aggregate_elems_per_s"] = numel * peers / dec
        s["rel_error"] = rel_error(decode(pay[0]), x0)
    del t_ups, r_ups
    return {
        "description": case.description,
        "numel": numel,
        "kept_values": n_kept,
        "peers": peers,
        "tessera": tess_stats,
        "reference": ref_stats,
        "floor_bits_per_index": floor_bits(layouts),
        "quantizers": quantizer_study(x0, layouts),
    }


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--json", action="store_true", help="print one JSON object instead of a table")
    ap.add_argument("--small", action="store_true", help="tiny inputs for a quick smoke run")
    ap.add_argument("--peers", type=int, default=None, help="peers to decode and aggregate (default 20, 4 with --small)")
    args = ap.parse_args(argv)
    peers = args.peers or (4 if args.small else 20)
    result = {"torch": torch.__version__, "threads": torch.get_num_threads(), "cases": {}}
    for name, make in (("llama_drift", realistic_case), ("student_t_synthetic", synthetic_case)):
        result["cases"][name] = run_case(make(args.small), peers)
    if args.json:
        print(json.dumps(result, indent=1))
        return
    for name, case in result["cases"].items():
        print(f"{name}: {case['description']}  (floor {case['floor_bits_per_index']:.3f} bits/index)")
        for fmt in ("tessera", "reference"):
            row = "  ".join(f"{k}={v:.4g}" for k, v in case[fmt].items())
            print(f"  {fmt:9s} {row}")


if __name__ == "__main__":
    main()
