"""The largest payload a model can send, from its parameter shapes and the codec settings alone.

A blob's length (compression.codec) is fixed by its layout except for the Golomb streams, and
those are bounded by the gaps: a chunk keeping k of E slots has in-chunk gaps summing to at most
E - k. The encoder picks the Golomb parameter M from the mean gap, so for each M it can pick,
the worst case is the largest gap sum that still picks it. For a gap sum S and a given M, a
field costs ``c - 1`` fixed bits, one more bit when its remainder is ``>= u`` (a "long" field,
which takes ``u`` of the sum) and one unary bit per ``M`` of quotient; spending the sum on long
fields first, then on quotients, gives the most bits. Maximised over M that is a bound, within a
few percent of what Gaussian-like pseudo-gradients produce (tests/compression/test_budget.py,
``scripts/bench_payload_shapes.py``).

The framing (length prefix, safetensors header, manifest) is bounded by writing the header of a
manifest whose free-form fields are as long as the manifest allows.

Nodes check the bound against ``codec.max_payload_bytes`` at start-up, so a model whose
payloads would be refused by every reader fails before its first window, not during it.
"""

from __future__ import annotations

import functools
import math
from collections.abc import Mapping
from dataclasses import dataclass

from compression.chunking import ChunkLayout
from compression.codec import HEADER_BYTES, CodecParams
from compression.golomb import golomb_parameter_for_mean, golomb_split
from compression.wire import PayloadManifest, framing_bytes, names_digest

# A run never counts windows, uids or steps past this; their digits bound the manifest's.
_MAX_COUNTER = 2**63 - 1
_SIGNATURE_BYTES = 64  # sr25519


class PayloadCapError(ValueError):
    """The model's payloads can exceed the network's cap; the message names the numbers and the fix."""


@dataclass(frozen=True)
class PayloadBound:
    """Upper bounds, in bytes, on one payload of a model."""

    blob_bytes: int  # all parameters' encoded blobs
    framing_bytes: int  # length prefix + safetensors header + manifest + signature
    kept_values: int

    @property
    def total(self) -> int:
        return self.blob_bytes + self.framing_bytes


def _gap_bits(n: int, m: int, gap_sum: int) -> int:
    """Most bits of the low and unary streams for ``n`` gaps summing to ``gap_sum`` under ``m``."""
    _, u = golomb_split(m)
    if m == 1:
        return n + gap_sum  # no remainder bits; every unit of gap is a unary zero
    longs = n if u == 0 else min(n, gap_sum // u)
    quotients = max(gap_sum - longs * u, 0) // m
    return longs + n + quotients  # low bits + terminators + unary zeros


def _blob_bytes(n: int, m: int, gap_sum: int) -> int:
    high_bits, _ = golomb_split(m)
    # The low and unary streams are rounded up to bytes separately: at most 14 bits together.
    streams = (_gap_bits(n, m, gap_sum) + 14) // 8
    return HEADER_BYTES + (n * high_bits + 7) // 8 + (n + 3) // 4 + streams


def _parameter_for(n: int, gap_sum: int) -> int:
    return golomb_parameter_for_mean(gap_sum / n)  # what the encoder picks (compression.encoder)


@functools.lru_cache(maxsize=256)
def max_blob_bytes(layout: ChunkLayout) -> int:
    """The most bytes the encoder can write for one parameter of this layout."""
    n = layout.n_kept
    gap_sum = layout.n_chunks * layout.chunk_elems - n  # sum over chunks of (chunk_elems - k_c)
    best = 0
    while True:
        m = _parameter_for(n, gap_sum)
        best = max(best, _blob_bytes(n, m, gap_sum))
        if gap_sum == 0 or m == _parameter_for(n, 0):
            return best
        # The largest gap sum for which the encoder picks a smaller M (M grows with the mean gap).
        lo, hi = 0, gap_sum
        while hi - lo > 1:
            mid = (lo + hi) // 2
            lo, hi = (mid, hi) if _parameter_for(n, mid) < m else (lo, mid)
        gap_sum = lo


def max_payload_bytes(shapes: Mapping[str, tuple[int, ...]], params: CodecParams) -> PayloadBound:
    """An upper bound on the bytes of any payload ``encode_payload`` writes for these shapes."""
    names = sorted(shapes)
    layouts = [params.layout(tuple(shapes[n])) for n in names]
    sizes = [max_blob_bytes(lay) for lay in layouts]
    longest = PayloadManifest(
        run_id="x" * _field_limit("run_id"), window=_MAX_COUNTER, uid=_MAX_COUNTER,
        hotkey="x" * _field_limit("hotkey"), global_step=_MAX_COUNTER, codec=params,
        names_digest=names_digest(names), shapes=[list(shapes[n]) for n in names], blob_sizes=sizes,
        data_digest="x" * _field_limit("data_digest"), base_fingerprint="x" * _field_limit("base_fingerprint"),
    )
    return PayloadBound(sum(sizes), framing_bytes(longest, _SIGNATURE_BYTES), sum(lay.n_kept for lay in layouts))


def _field_limit(name: str) -> int:
    """The manifest's max_length for a string field."""
    for meta in PayloadManifest.model_fields[name].metadata:
        if getattr(meta, "max_length", None) is not None:
            return int(meta.max_length)
    raise LookupError(f"PayloadManifest.{name} has no max_length")


def check_payload_cap(shapes: Mapping[str, tuple[int, ...]], params: CodecParams, cap: int, preset: str) -> PayloadBound:
    """The bound, or PayloadCapError when it exceeds ``cap`` (the network's max_payload_bytes)."""
    bound = max_payload_bytes(shapes, params)
    if bound.total > cap:
        numel = sum(math.prod(s) for s in shapes.values())
        raise PayloadCapError(
            f"hparams {preset!r}: a payload of this model ({len(shapes)} parameters, {numel} values, "
            f"{bound.kept_values} kept at topk_per_chunk {params.topk_per_chunk} per {params.chunk_size}x"
            f"{params.chunk_size}) can reach {bound.total} bytes, over codec.max_payload_bytes {cap}; "
            f"raise max_payload_bytes to at least {bound.total} or lower topk_per_chunk"
        )
    return bound
