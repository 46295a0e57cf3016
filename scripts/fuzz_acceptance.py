#!/usr/bin/env python
"""Hostile-input campaign: push N crafted inputs through the readers a node runs on peer bytes.

    python scripts/fuzz_acceptance.py --n 20000 --json [--seed S] [--classes payload,commitment,...]
    python scripts/fuzz_acceptance.py --seed S --index I [--dump FILE]   # replay one input

Classes and the function each input goes through (the same one a node calls):

* ``payload``: ``protocol.acceptance.judge_payload`` under the ``tiny`` network's rule
  (``neurons.gather.acceptance_rule_for``): a real SparseLoCo payload signed with ``//Fuzz``,
  then byte flips / insertions / deletions / truncations, safetensors header mutations, manifest
  fields and bodies changed *and re-signed* with the right key (so they get past the signature),
  value tables scaled up to 3.4e38 or set to NaN/inf bit patterns, oversized inputs.
* ``commitment``: ``protocol.commitment.BucketCommitment.decode``, then, when it decodes, the
  endpoint policy (``storage.endpoints.check_endpoint``) and the read-only store a node opens
  (``storage.s3.S3Store`` as ``neurons.peers.read_only_store`` builds it), both resolving names
  through ``fake_resolve`` (no network); the store is built at most ``--store-builds`` times per
  mutator and cached per (endpoint, region), because a boto3 client costs ~0.1 s.
* ``fingerprint``: ``protocol.fingerprint_record.FingerprintRecord.parse``.
* ``checkpoint``: ``neurons.checkpoint.load_checkpoint`` into a small Llama built by
  ``neurons.model.build_model``; NaN / huge-valued tensors are re-fingerprinted, so only the value
  check stands between them and the model.

Every input ends as ``accepted`` or ``rejected:<typed reason or error class>``. Anything else is a
crash: an exception of another class escaping the reader, or (payloads) one that reached the
boundary guard ``protocol.acceptance.contained`` (a reader bug the node survives). Accepted inputs
are also checked for poison: an accepted payload must decode to finite values inside the bound,
a loaded checkpoint must leave finite parameters inside ``max_abs_param``, and a refused one must
leave the model untouched.

Input ``i`` is generated from ``random.Random(f"{seed}:{i}")`` alone, so a run is deterministic
for its seed (sr25519 signatures are randomised, so in-place byte mutations never land inside the
payload's signature hex; the signature has deterministic mutators of its own) and any single input
can be replayed with ``--index``. The first ``--controls`` inputs of each class are unmutated.
"""

from __future__ import annotations

import argparse
import inspect
import json
import math
import random
import resource
import socket
import struct
import sys
import time
import tracemalloc
import zlib
from collections import Counter, defaultdict
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import torch  # noqa: E402

CLASSES = ("payload", "commitment", "fingerprint", "checkpoint")
UID, WINDOW = 3, 5
SHAPES = {"embed.weight": (128, 32), "layer.weight": (64, 64), "layer.bias": (64,), "norm.weight": (32,)}
MAX_EXAMPLES = 5
HOSTILE_VALUES: tuple[object, ...] = (
    None, True, False, 0, -1, 1.5, -0.0, 2**31, 2**63, 2**64, -(2**63) - 1, 10**30, 1e308, "", "16", "\ud800",
    "x" * 300, [], [1], [[1]], [-1, 2], [1.5], ["a"], {}, {"a": 1},
)

Mutator = Callable[[random.Random], object]


# --- generic byte mutations (in place ones avoid ``protected``: the random signature) -----------------


def _free_index(rng: random.Random, n: int, protected: range) -> int:
    """A position in ``range(n)`` outside the contiguous ``protected`` span (so a mutation is never a no-op)."""
    k = rng.randrange(n - len(protected))
    return k if k < protected.start else k + len(protected)


def flip(rng: random.Random, data: bytes, protected: range = range(0)) -> bytes:
    out = bytearray(data)
    for _ in range(rng.choice((1, 1, 2, 4, 16))):
        out[_free_index(rng, len(out), protected)] ^= rng.randrange(1, 256)
    return bytes(out)


def overwrite(rng: random.Random, data: bytes, protected: range = range(0)) -> bytes:
    out = bytearray(data)
    start = _free_index(rng, len(out), protected)
    for i in range(start, min(len(out), start + rng.choice((1, 4, 8, 64)))):
        if i not in protected:
            out[i] = rng.choice((0, 0xFF, 0x22, 0x5C, 0x7B, 0x5B, 0x80, rng.randrange(256)))
    return bytes(out)


def insert(rng: random.Random, data: bytes, protected: range = range(0)) -> bytes:
    i = rng.randrange(len(data) + 1)
    return data[:i] + rng.randbytes(rng.choice((1, 1, 3, 8, 100))) + data[i:]


def delete(rng: random.Random, data: bytes, protected: range = range(0)) -> bytes:
    i = rng.randrange(len(data))
    return data[:i] + data[i + rng.choice((1, 1, 2, 8, 64)) :]


def truncate(rng: random.Random, data: bytes, protected: range = range(0)) -> bytes:
    return data[: rng.choice((0, 1, 7, 8, 9, rng.randrange(len(data))))]


def splice(rng: random.Random, data: bytes, protected: range = range(0)) -> bytes:
    i, j = sorted((rng.randrange(len(data)), rng.randrange(len(data))))
    return data + data[i:j] if rng.random() < 0.5 else data[:i] + data + data[j:]


def random_bytes(rng: random.Random, data: bytes, protected: range = range(0)) -> bytes:
    return rng.randbytes(rng.choice((0, 1, 8, 16, 200, len(data))))


BYTE_MUTATORS = {f.__name__: f for f in (flip, overwrite, insert, delete, truncate, splice, random_bytes)}


def on_bytes(mutate: Callable[..., bytes], data: bytes, protected: range = range(0)) -> Mutator:
    """``mutate`` bound to one input: a mutator of the campaign."""
    return lambda rng: mutate(rng, data, protected)


# --- safetensors layout: u64 little-endian header length | JSON header | body -----------------------------


def st_split(data: bytes) -> tuple[dict, bytes]:
    (n,) = struct.unpack("<Q", data[:8])
    return json.loads(data[8 : 8 + n]), data[8 + n :]


def st_join(header: dict | str | bytes, body: bytes, prefix: int | None = None) -> bytes:
    raw = header if isinstance(header, bytes) else (header if isinstance(header, str) else json.dumps(header)).encode(
        "utf-8", "surrogatepass"
    )
    raw += b" " * (-len(raw) % 8)
    return struct.pack("<Q", len(raw) if prefix is None else prefix) + raw + body


def _tensor_names(header: dict) -> list[str]:
    return sorted(k for k in header if k != "__metadata__")


def _dump(value: object) -> str:
    return json.dumps(value, separators=(",", ":"))


def _replace(text: str, old: str, new: str) -> str:
    """``text`` with the first ``old`` replaced; a mutation that finds nothing to change is a bug here."""
    if old not in text:
        raise AssertionError(f"mutation target {old[:40]!r} not in the header")
    return text.replace(old, new, 1)


HEADER_KINDS = ("swap_type", "huge_number", "bad_offsets", "overlap", "deep_nesting", "duplicate_key", "lone_surrogate",
                "extra_tensor", "nondict_metadata", "json_constant", "not_object", "length_prefix", "encoding", "dtype",
                "drop_key", "extra_key", "empty")


def header_mutators(header: dict, body: bytes) -> dict[str, Mutator]:
    """One mutator per kind of header mutation, so each kind gets as many inputs as a byte mutation."""
    return {f"header.{kind}": (lambda k: lambda rng: header_mutation(rng, header, body, k)[1])(kind)
            for kind in HEADER_KINDS}


def header_mutation(rng: random.Random, header: dict, body: bytes, kind: str | None = None) -> tuple[str, bytes]:
    """One structural mutation of a safetensors header (generic: payloads and checkpoints)."""
    header = json.loads(_dump(header))
    names = _tensor_names(header)
    name = rng.choice(names)
    kind = kind or rng.choice(HEADER_KINDS)
    if kind == "swap_type":
        header[name][rng.choice(("dtype", "shape", "data_offsets"))] = rng.choice(HOSTILE_VALUES)
    elif kind == "huge_number":
        key = rng.choice(("shape", "data_offsets"))
        big = rng.choice(("18446744073709551616", "9223372036854775807", "1" + "0" * rng.choice((40, 5000)),
                          "1e400", "-9223372036854775809", "1.0e2"))
        return kind, st_join(_replace(_dump(header), _dump(header[name][key]), f"[{big},{big}]"), body)
    elif kind == "bad_offsets":
        begin, end = header[name]["data_offsets"]
        header[name]["data_offsets"] = rng.choice(
            ([-begin - 1, end], [end, begin], [begin, end + 1], [begin + 1, end + 1], [begin, end, end], [begin],
             [0, len(body) * 4], [2**63 - 1, 2**63])
        )
    elif kind == "overlap":
        other = dict(header[name])
        header["zz.overlap"] = other
    elif kind == "deep_nesting":
        depth = rng.choice((4, 5, 64, 1000, 200_000))
        value = "[" * depth + "]" * depth if rng.random() < 0.5 else '{"a":' * depth + "1" + "}" * depth
        where = rng.choice(("top", "entry", "metadata"))
        if where == "top":
            text = _dump(header)[:-1] + f',"deep":{value}}}'
        elif where == "entry":
            text = _replace(_dump(header), '"shape":', f'"shape":{value},"x":')
        else:
            text = _replace(_dump(header), '"__metadata__":{', f'"__metadata__":{{"deep":{value},')
        return kind, st_join(text, body)
    elif kind == "duplicate_key":
        dup = rng.choice((name, "__metadata__"))
        text = _dump(header)[:-1] + f",{_dump(dup)}:{_dump(header[dup])}}}"
        return kind, st_join(text, body)
    elif kind == "lone_surrogate":
        bad = rng.choice(("\ud800", "\udfff", "a\udc80b", "\ud83d"))
        where = rng.choice(("rename", "metadata_key", "metadata_value", "dtype"))
        if where == "rename":
            header[bad] = header.pop(name)
        elif where == "dtype":
            header[name]["dtype"] = bad
        else:
            meta = header.setdefault("__metadata__", {})
            if where == "metadata_key":
                meta[bad] = "x"
            elif meta:
                meta[rng.choice(sorted(meta))] = bad
            else:
                meta["k"] = bad
    elif kind == "extra_tensor":
        extra = rng.randbytes(rng.choice((0, 1, 4, 64)))
        header[rng.choice(("extra", "\u00e9t\u00e9", "a" * 500, ""))] = {
            "dtype": "U8", "shape": [len(extra)], "data_offsets": [len(body), len(body) + len(extra)]}
        body += extra
    elif kind == "nondict_metadata":
        header["__metadata__"] = rng.choice(
            ([], "manifest", 7, None, {"manifest": 5}, {"k": None}, {"k": ["v"]}, {"k": {"a": "b"}}))
    elif kind == "json_constant":
        const = rng.choice(("NaN", "Infinity", "-Infinity"))
        text = _replace(_dump(header), _dump(header[name]["shape"]), f"[{const}]")
        return kind, st_join(text, body)
    elif kind == "not_object":
        return kind, st_join(rng.choice(("[]", "1", '"x"', "null", "true", "[" + _dump(header) + "]")), body)
    elif kind == "length_prefix":
        raw = _dump(header).encode()
        raw += b" " * (-len(raw) % 8)
        return kind, st_join(raw, body, rng.choice((0, 1, len(raw) - 1, len(raw) + 1, len(raw) + len(body),
                                                    len(raw) + len(body) + 1, 2**32, 2**63, 2**64 - 1)))
    elif kind == "encoding":
        text = json.dumps(header, ensure_ascii=False)
        return kind, st_join(rng.choice((text.encode("utf-16"), text.encode("utf-32"), b"\xef\xbb\xbf" + text.encode(),
                                         text.encode()[:-2] + b"\xff\xfe", text.encode() + b"\x00")), body)
    elif kind == "dtype":
        header[name]["dtype"] = rng.choice(("F32", "F16", "BF16", "F64", "I64", "U8", "BOOL", "F128", "f32", "", "U4"))
    elif kind == "drop_key":
        header[name].pop(rng.choice(("dtype", "shape", "data_offsets")))
    elif kind == "extra_key":
        header[name][rng.choice(("extra", "dtype2", ""))] = 1
    else:
        header = {}
    return kind, st_join(header, body)


# --- outcomes -----------------------------------------------------------------------------------------


class Poison(Exception):
    """An input was accepted (or refused) but left values a node must never hold."""


@dataclass
class Campaign:
    """Counters for one run."""

    counts: dict[str, Counter] = field(default_factory=lambda: defaultdict(Counter))
    by_mutator: dict[str, dict[str, Counter]] = field(default_factory=lambda: defaultdict(lambda: defaultdict(Counter)))
    crashes: list[dict] = field(default_factory=list)
    n_crashes: int = 0
    poisoned: list[dict] = field(default_factory=list)
    n_poisoned: int = 0
    slowest: list[dict] = field(default_factory=list)
    slowest_per_class: dict[str, dict] = field(default_factory=dict)


def _example(cls: str, mutator: str, index: int, data: object, error: str) -> dict:
    raw = data.encode("utf-8", "surrogatepass") if isinstance(data, str) else bytes(data)
    return {"class": cls, "mutator": mutator, "index": index, "error": error[:300], "len": len(raw),
            "head_hex": raw[:96].hex(), "repr": repr(data[:120])}


# --- payloads -------------------------------------------------------------------------------------------


class PayloadTarget:
    name = "payload"

    def __init__(self) -> None:
        from compression import ErrorFeedbackCompressor, PayloadManifest
        from compression.wire import content_hash
        from neurons.gather import acceptance_rule_for
        from protocol.acceptance import judge_payload
        from protocol.hparams import load_hparams
        from protocol.signing import HotkeySigner

        self.hparams = load_hparams("tiny")
        self.signer = HotkeySigner.from_uri("//Fuzz")
        self.other = HotkeySigner.from_uri("//FuzzOther")
        codec = self.hparams.codec
        compressor = ErrorFeedbackCompressor(SHAPES, chunk_size=codec.chunk_size, topk_per_chunk=codec.topk_per_chunk,
                                             beta=codec.ef_beta)
        gen = torch.Generator().manual_seed(0)
        message = compressor.compress({n: torch.randn(s, generator=gen) * 0.01 for n, s in SHAPES.items()})
        self.blob_sizes = [int(message.blobs[n].numel()) for n in sorted(SHAPES)]
        self.body = b"".join(message.blobs[n].numpy().tobytes() for n in sorted(SHAPES))
        manifest = PayloadManifest.for_message(message, run_id=self.hparams.run_id, window=WINDOW, uid=UID,
                                               hotkey=self.signer.hotkey, global_step=0)
        # as the wire holds it: canonical, so without the absent pipeline_stage key
        self.manifest = json.loads(manifest.model_copy(update={"blob_sizes": self.blob_sizes}).canonical_json())
        self._content_hash = content_hash
        norms = {n: float(torch.randn(s, generator=gen).double().norm()) for n, s in SHAPES.items()}
        self.rule = acceptance_rule_for(self.hparams, WINDOW, 0.0, norms)
        self._judge = judge_payload
        self.control = self.signed(self.manifest, self.body)
        header, _ = st_split(self.control)
        at = self.control.index(b'"sig":"') + len(b'"sig":"')
        self.sig_span = range(at, at + 128)
        self.header = header
        self.mutators: dict[str, Mutator] = {
            **{f"bytes.{k}": on_bytes(f, self.control, self.sig_span) for k, f in BYTE_MUTATORS.items()},
            **header_mutators(self.header, self.body),
            "manifest_resigned": self.manifest_field,
            "body_resigned": self.body_random,
            "body_flip_resigned": lambda rng: self.signed(self.manifest, flip(rng, self.body)),
            "value_table_scaled": self.value_table_scaled,
            "value_table_nonfinite": self.value_table_nonfinite,
            "value_table_signs": self.value_table_signs,
            "golomb_m": self.golomb_m,
            "signature": self.signature,
            "oversized": self.oversized,
        }

    def signed(self, manifest: dict, body: bytes, canonical: bool = True, signer=None) -> bytes:
        text = (json.dumps(manifest, sort_keys=True, separators=(",", ":")) if canonical
                else json.dumps(manifest, separators=(", ", ": ")))
        digest = self._content_hash(text, {"update": body})
        sig = (signer or self.signer).sign(digest).hex()
        header = {"__metadata__": {"manifest": text, "sig": sig},
                  "update": {"dtype": "U8", "shape": [len(body)], "data_offsets": [0, len(body)]}}
        return st_join(json.dumps(header, sort_keys=True, separators=(",", ":")), body)

    def manifest_field(self, rng: random.Random) -> bytes:
        m = json.loads(json.dumps(self.manifest))
        key = rng.choice(sorted(m) + ["codec.chunk_size", "codec.topk_per_chunk", "codec.value_bits",
                                      "codec.index_code", "extra", "drop"])
        good = {"window": [WINDOW - 1, WINDOW + 1, 0, 10**12], "uid": [UID + 1, 0, 65535],
                "run_id": ["tiny-000000000000", self.hparams.run_id + "x", ""],
                "hotkey": [self.other.hotkey], "global_step": [10**9, 1],
                "shapes": [[list(s)[::-1] for s in (SHAPES[n] for n in sorted(SHAPES))], [[1]] * len(SHAPES), []],
                "blob_sizes": [self.blob_sizes[::-1], [0] * len(SHAPES), [sum(self.blob_sizes)] + [0] * 3,
                               [-1] + self.blob_sizes[1:]],
                "format_version": [1, 3], "names_digest": ["0" * 16],
                "codec.chunk_size": [8, 32, 256, 1], "codec.topk_per_chunk": [1, 16, 128, 4096, 10**9]}
        value = rng.choice(good.get(key, []) + list(HOSTILE_VALUES))
        if key == "drop":
            m.pop(rng.choice(sorted(m)))
        elif key.startswith("codec."):
            m["codec"][key.split(".", 1)[1]] = value
        else:
            m[key] = value
        return self.signed(m, self.body, canonical=rng.random() < 0.9)

    def body_random(self, rng: random.Random) -> bytes:
        m = dict(self.manifest)
        if rng.random() < 0.5:
            return self.signed(m, rng.randbytes(len(self.body)))
        body = rng.randbytes(rng.choice((0, 18, 100, len(self.body) // 2, len(self.body) * 2)))
        cuts = sorted(rng.randrange(len(body) + 1) for _ in range(len(SHAPES) - 1))
        m["blob_sizes"] = [b - a for a, b in zip([0, *cuts], [*cuts, len(body)], strict=True)]
        return self.signed(m, body)

    def _blob_starts(self) -> list[int]:
        starts, at = [], 0
        for size in self.blob_sizes:
            starts.append(at)
            at += size
        return starts

    def _with_tables(self, rng: random.Random, table: Callable[[tuple[float, ...]], bytes]) -> bytes:
        body = bytearray(self.body)
        starts = self._blob_starts()
        for start in rng.sample(starts, rng.choice((1, len(starts)))):
            old = struct.unpack("<4f", body[start + 2 : start + 18])
            body[start + 2 : start + 18] = table(old)
        return self.signed(self.manifest, bytes(body))

    def value_table_scaled(self, rng: random.Random) -> bytes:
        scale = rng.choice((10 ** rng.uniform(4, 38.5), rng.uniform(0.5, 100), 3.4e38))
        peak = self.rule.bounds.max_abs_value

        def table(old: tuple[float, ...]) -> bytes:
            big = [max(min(abs(v) * scale, 3.4e38), 1e4 if scale >= 1e4 else 0.0) for v in old]
            if rng.random() < 0.2:  # just inside / just outside the bound
                big = [peak * rng.choice((0.999, 1.0, 1.001))] * 4
            return struct.pack("<4f", big[0], big[1], -big[2], -big[3])

        return self._with_tables(rng, table)

    def value_table_nonfinite(self, rng: random.Random) -> bytes:
        bits = (0x7FC00000, 0x7F800000, 0xFF800000, 0x7F800001, 0xFFFFFFFF, 0x7FFFFFFF, 0xFFC00000)

        def table(old: tuple[float, ...]) -> bytes:
            raw = bytearray(struct.pack("<4f", *old))
            for k in rng.sample(range(4), rng.choice((1, 4))):
                raw[4 * k : 4 * k + 4] = struct.pack("<I", rng.choice(bits))
            return bytes(raw)

        return self._with_tables(rng, table)

    def value_table_signs(self, rng: random.Random) -> bytes:
        def table(old: tuple[float, ...]) -> bytes:
            signs = [rng.choice((1, -1)) for _ in old]
            return struct.pack("<4f", *(s * abs(v) for s, v in zip(signs, old, strict=True)))

        return self._with_tables(rng, table)

    def golomb_m(self, rng: random.Random) -> bytes:
        body = bytearray(self.body)
        for start in rng.sample(self._blob_starts(), rng.choice((1, len(self.blob_sizes)))):
            body[start : start + 2] = struct.pack("<H", rng.choice((0, 1, 2, 3, 255, 256, 4096, 65535, rng.randrange(65536))))
        return self.signed(self.manifest, bytes(body))

    def signature(self, rng: random.Random) -> bytes:
        kind = rng.choice(("other_key", "empty", "not_hex", "short", "long", "zeros", "changed_char", "unsigned"))
        if kind == "other_key":
            return self.signed(self.manifest, self.body, signer=self.other)
        header, body = st_split(self.control)
        sig = header["__metadata__"]["sig"]
        header["__metadata__"]["sig"] = {
            "empty": "", "unsigned": "", "not_hex": "zz" * 64, "short": sig[:126], "long": sig + "00", "zeros": "0" * 128,
            "changed_char": sig[:10] + ("1" if sig[10] == "0" else "0") + sig[11:],
        }[kind]
        return st_join(json.dumps(header, sort_keys=True, separators=(",", ":")), body)

    def oversized(self, rng: random.Random) -> bytes:
        cap = self.rule.max_bytes
        if rng.random() < 0.5:
            return self.control + bytes(cap + 1 - len(self.control) + rng.randrange(4096))
        body = self.body + bytes(cap - len(self.body))  # a signed payload exactly at the cap
        m = dict(self.manifest, blob_sizes=[self.blob_sizes[0] + cap - len(self.body), *self.blob_sizes[1:]])
        return self.signed(m, body)

    def judge(self, data: bytes) -> str:
        verdict = self._judge(data, UID, self.signer.hotkey, self.rule, SHAPES)
        result = verdict.result
        if result.passed:
            self._check_update(verdict.decoded)
            return "accepted"
        if result.detail.startswith("unexpected "):
            raise ContainedCrash(result.detail)
        return f"rejected:{result.reason.value}"

    def _check_update(self, decoded) -> None:
        bound = self.rule.bounds.max_abs_value
        for name, sparse in decoded.update.items():
            values = sparse.values
            if values.numel() and not (bool(torch.isfinite(values).all()) and float(values.abs().max()) <= bound):
                raise Poison(f"{name}: accepted values outside ±{bound:.3g} or non-finite")


class ContainedCrash(Exception):
    """A reader raised an untyped exception that only the boundary guard caught."""


# --- commitments ------------------------------------------------------------------------------------------


ENDPOINTS = (
    "http://[::1", "http://[fe80::1%eth0]:x", "http://[fe80::1%25eth0]:9000", "http://[::1]:99999", "http://[::1]:0",
    "http://[::ffff:127.0.0.1]", "http://[64:ff9b::7f00:1]", "http://[2002:7f00:1::]", "http://[::]", "http://[]",
    "http://[2001:db8::1]", "http://[2606:2800:220:1::]:443", "http://169.254.169.254", "http://[fd00:ec2::254]",
    "http://127.0.0.1:9000", "http://0x7f000001", "http://2130706433", "http://0177.0.0.1", "http://10.0.0.1",
    "http://localhost", "http://user:pw@example.com", "http://example.com:-1", "http://example.com:65536",
    "http://example.com:port", "http://example.com?x=1", "http://example.com#f", "https://", "http://:80",
    "http://a..b", "http://-a.com", "http://" + "a" * 64 + ".com", "http://" + "a." * 130 + "com",
    "https://xn--bcher-kva.example", "https://xn--.example", "http://example.invalid", "https://example.com/",
    "https://example.com/path/..", "http://93.184.216.34:9000", "https://s3.example.com:8333", "http://[::1]]",
    "http://[[::1]]", "http://[v1.x]", "http://[1:2:3:4:5:6:7:8:9]", "http://\\example.com", "http://example.com\\@x",
)
REGIONS = ("us east", "a" * 70, "../x", "ap-south-9", "-", "\u00e9", "\x00", "US-EAST-1", "x" * 300, "auto",
           "us-east-1", "eu-central-1", ";", "a/b", "%00", "us-east-1.", "..", "1")


class CommitmentTarget:
    name = "commitment"

    def __init__(self, store_builds: int) -> None:
        """``store_builds``: the most read-only clients built per mutator (distinct endpoint and region)."""
        from protocol.commitment import BucketCommitment, CommitmentError

        self._decode, self._errors = BucketCommitment.decode, (CommitmentError,)
        self.valid = [
            BucketCommitment.for_r2("0123456789abcdef0123456789abcdef", "tessera-bucket", "a1" * 16, "b2" * 32).encode(),
            BucketCommitment(endpoint_url="https://s3.example.com", bucket="payloads", region="us-east-1",
                             access_key_id="KEYID", secret_access_key="secret").encode(),
            BucketCommitment(endpoint_url="http://[2606:2800:220:1::]:9000", bucket="abc", access_key_id="k",
                             secret_access_key="s").encode(),
        ]
        self.control = self.valid[0]
        from storage.errors import StorageError

        self._errors += (StorageError,)
        self._check_endpoint = self._policy = None
        try:  # the endpoint policy a node applies before connecting (storage.endpoints), when present
            from storage.endpoints import EndpointPolicy, check_endpoint

            self._check_endpoint, self._policy = check_endpoint, EndpointPolicy()
        except ImportError:
            pass
        self._store_cache: dict[tuple[str, str], Exception | None] = {}
        self._store_budget, self._store_used = store_builds, Counter()
        self.mutator = "control"  # set by the campaign before each judge: the store budget is per mutator
        self.mutators: dict[str, Mutator] = {
            "random_ascii": lambda rng: ("1" if rng.random() < 0.5 else "") + "".join(
                chr(rng.randrange(32, 127)) for _ in range(rng.choice((0, 5, 40, 127, 200)))),
            "random_unicode": lambda rng: "1" + "".join(self._char(rng) for _ in range(rng.choice((1, 10, 60, 130)))),
            "bytes_as_text": lambda rng: rng.randbytes(rng.choice((1, 20, 128, 300))).decode(
                rng.choice(("utf-8", "latin-1")), rng.choice(("surrogateescape", "replace", "ignore"))),
            "field": self.field,
            "endpoint": lambda rng: self.field(rng, 0),
            "region": lambda rng: self.field(rng, 2),
            "field_count": self.field_count,
            "version": lambda rng: rng.choice(("0", "2", "\u0661", "", " ", "11")) + rng.choice(self.valid)[1:],
            "long": lambda rng: rng.choice(self.valid) + rng.choice(("a", "\u00e9", "\U0001f600", ",")) * rng.choice(
                (1, 40, 200, 10_000)),
            **{f"bytes.{k}": self._bytes(f) for k, f in BYTE_MUTATORS.items() if k != "splice"},
        }

    @staticmethod
    def _char(rng: random.Random) -> str:
        return chr(rng.choice((rng.randrange(32, 127), rng.randrange(0xD800, 0xE000), rng.randrange(0x80, 0x800),
                               rng.randrange(0x10000, 0x110000), 0, ord(","), ord("."), 0x202E)))

    def _bytes(self, mutate: Callable[..., bytes]) -> Mutator:
        return lambda rng: mutate(rng, rng.choice(self.valid).encode()).decode("utf-8", "surrogateescape")

    def field(self, rng: random.Random, i: int | None = None) -> str:
        parts = rng.choice(self.valid)[1:].split(",")
        i = rng.randrange(5) if i is None else i
        pool = {0: ENDPOINTS, 2: REGIONS}.get(i, ())
        hostile = ("", ".", ".~~~~~", ".!!!!!", ".00000", "." + "0" * 25, "a b", "\u00e9", "\ud800", "x" * 120,
                   "Bucket", "ab", "a" * 64, "-ab", "ab-", "a..b", "0" * 32, "0" * 31, "g" * 32)
        parts[i] = rng.choice(pool) if pool and rng.random() < 0.8 else rng.choice(hostile + pool)
        return "1" + ",".join(parts)

    def field_count(self, rng: random.Random) -> str:
        parts = rng.choice(self.valid)[1:].split(",")
        k = rng.choice((0, 1, 4, 6, 7, 50))
        return "1" + ",".join((parts * 10)[:k])

    def judge(self, text: str) -> str:
        try:
            commitment = self._decode(text)
            if self._check_endpoint is not None:
                self._check_endpoint(commitment.endpoint_url, self._policy, resolve=fake_resolve)
            self._build_store(commitment)
        except self._errors as exc:
            return f"rejected:{type(exc).__name__}"
        return "accepted"

    def _build_store(self, commitment) -> None:
        """Build the client a node builds; the outcome is cached per (endpoint, region), what boto3 checks."""
        key = (commitment.endpoint_url, commitment.region)
        if key not in self._store_cache:
            if self._store_used[self.mutator] >= self._store_budget:
                return
            self._store_used[self.mutator] += 1
            try:
                open_store(commitment, self._policy)
                self._store_cache[key] = None
            except Exception as exc:  # noqa: BLE001 - remembered, re-raised below: judged like any other
                self._store_cache[key] = exc
        if self._store_cache[key] is not None:
            raise self._store_cache[key]

    @property
    def store_builds(self) -> int:
        return sum(self._store_used.values())


def open_store(commitment, policy) -> object:
    """The read-only store ``neurons.peers.read_only_store`` opens, resolving through ``fake_resolve``."""
    from storage.s3 import S3Store

    options = {"policy": policy, "resolve": fake_resolve}
    accepted = inspect.signature(S3Store).parameters
    if "resolve" not in accepted:  # a store that would resolve for real: leave the policy to check_endpoint
        options = {}
    return S3Store(endpoint_url=commitment.endpoint_url, bucket=commitment.bucket, access_key_id=commitment.access_key_id,
                   secret_access_key=commitment.secret_access_key, region=commitment.region, **options)


_PUBLIC_SUFFIXES = (".r2.cloudflarestorage.com", "s3.example.com")  # the controls' hosts: a public address
_FAKE_ADDRESSES = ("93.184.216.34", "127.0.0.1", "169.254.169.254", "10.0.0.7", "2606:2800:220:1::", "::1",
                   "100.100.100.200", "192.168.1.1", "8.8.8.8", "fd00:ec2::254")


def fake_resolve(host: str, port: int, type: int = 0, **_: object) -> list[tuple]:  # noqa: A002 - getaddrinfo's name
    """``socket.getaddrinfo`` without a network: literals resolve to themselves, names by hash."""
    import ipaddress

    try:
        ip = ipaddress.ip_address(host.split("%", 1)[0])
        return [(socket.AF_INET6 if ip.version == 6 else socket.AF_INET, type, 6, "", (host, port))]
    except ValueError:
        pass
    host.encode("idna")  # UnicodeError for a label the IDNA codec refuses, as getaddrinfo does
    if host.endswith(".invalid"):
        raise socket.gaierror(socket.EAI_NONAME, "Name or service not known")
    if host.endswith(_PUBLIC_SUFFIXES):
        return [(socket.AF_INET, type, 6, "", (_FAKE_ADDRESSES[0], port))]
    h = zlib.crc32(host.encode())
    return [(socket.AF_INET, type, 6, "", (_FAKE_ADDRESSES[(h + k) % len(_FAKE_ADDRESSES)], port)) for k in range(1 + h % 2)]


# --- fingerprint records -------------------------------------------------------------------------------


class FingerprintTarget:
    name = "fingerprint"

    def __init__(self) -> None:
        from protocol.fingerprint_record import FingerprintRecord, FingerprintRecordError

        self._parse, self._errors = FingerprintRecord.parse, (FingerprintRecordError,)
        self.record = {"window": 41, "fingerprint": "0123456789abcdef" * 2, "gathered": [1, 2, 7], "uid": 0}
        self.control = FingerprintRecord(**self.record).to_bytes()
        self.mutators: dict[str, Mutator] = {
            **{f"bytes.{k}": on_bytes(f, self.control) for k, f in BYTE_MUTATORS.items()},
            "field": self.field,
            "raw": self.raw,
        }

    def field(self, rng: random.Random) -> bytes:
        r = dict(self.record)
        key = rng.choice(sorted(r) + ["extra", "drop"])
        value = rng.choice(HOSTILE_VALUES + ([0] * 5000, list(range(4097)), [10**5], "ABCDEF", "0x12", "\u0661"))
        if key == "drop":
            r.pop(rng.choice(sorted(r)))
        else:
            r[key] = value
        return json.dumps(r).encode("utf-8", "surrogatepass")

    def raw(self, rng: random.Random) -> bytes:
        text = json.dumps(self.record)
        depth = rng.choice((3, 64, 1000, 100_000))
        return rng.choice((
            text[:-1] + ', "window": 1}',
            text.replace("41", "1" + "0" * rng.choice((20, 4300, 5000)), 1),
            text.replace("41", rng.choice(("NaN", "Infinity", "1e400", "-0", "4.1e1")), 1),
            text.replace("[1, 2, 7]", "[" * depth + "]" * depth, 1),
            '{"a":' * depth + "1" + "}" * depth,
            text.replace('"uid"', '"\\ud800"', 1),
            text.replace('"0123', '"\\udfff0123', 1),
            "\ufeff" + text, text + "\x00", "[" + text + "]", "", "null", " " * 70_000,
        )).encode("utf-8", "surrogatepass") if rng.random() < 0.9 else text.encode("utf-16")

    def judge(self, data: bytes) -> str:
        try:
            self._parse(data)
        except self._errors as exc:
            return f"rejected:{type(exc).__name__}"
        return "accepted"


# --- checkpoints -------------------------------------------------------------------------------------------


class CheckpointTarget:
    name = "checkpoint"

    def __init__(self) -> None:
        from neurons import checkpoint as ck
        from neurons.fingerprint import model_fingerprint
        from neurons.model import build_model
        from protocol.hparams import ModelConfig, load_hparams

        hparams = load_hparams("tiny")
        self.run_id, self.max_abs = hparams.run_id, hparams.bounds.max_abs_param
        cfg = ModelConfig(vocab_size=64, hidden_size=16, intermediate_size=32, num_layers=1, num_heads=2,
                          num_kv_heads=2, max_seq_len=16)
        self.model = build_model(cfg, seed=0)
        self._fingerprint, self._ck = model_fingerprint, ck
        self.tensors = {n: p.detach().clone() for n, p in self.model.named_parameters()}
        self.manifest = {"format_version": 1, "run_id": self.run_id, "window": 7, "global_step": 56,
                         "fingerprint": model_fingerprint(self.tensors)}
        self.control = self.serialize(self.tensors, self.manifest)
        self.cap = 4 * sum(t.numel() for t in self.tensors.values()) + (1 << 20)
        self._before = model_fingerprint(self.model)
        kwargs = {"max_abs_param": self.max_abs, "expected_run_id": self.run_id}
        accepted = inspect.signature(ck.load_checkpoint).parameters
        self._kwargs = {k: v for k, v in kwargs.items() if k in accepted}
        header, body = st_split(self.control)
        self.mutators: dict[str, Mutator] = {
            **{f"bytes.{k}": on_bytes(f, self.control) for k, f in BYTE_MUTATORS.items()},
            **header_mutators(header, body),
            "values_refingerprinted": self.values,
            "layout_refingerprinted": self.layout,
            "manifest": self.manifest_field,
            "oversized": lambda rng: self.control + bytes(self.cap + 1 - len(self.control) + rng.randrange(1000)),
        }

    def serialize(self, tensors: dict[str, torch.Tensor], manifest: dict | str, key: str = "tessera.checkpoint") -> bytes:
        from safetensors.torch import save

        text = manifest if isinstance(manifest, str) else json.dumps(manifest)
        return save({n: t.contiguous() for n, t in tensors.items()}, metadata={key: text})

    def values(self, rng: random.Random) -> bytes:
        tensors = {n: t.clone() for n, t in self.tensors.items()}
        name = rng.choice(sorted(tensors))
        flat = tensors[name].view(-1)
        value = rng.choice((math.nan, math.inf, -math.inf, 10 ** rng.uniform(4, 38.5), -3.4e38, self.max_abs,
                            self.max_abs * 1.001, rng.uniform(-1, 1), 1e-45))
        idx = rng.sample(range(flat.numel()), rng.choice((1, 3, flat.numel())))
        flat[idx] = value
        return self.serialize(tensors, dict(self.manifest, fingerprint=self._fingerprint(tensors)))

    def layout(self, rng: random.Random) -> bytes:
        tensors = {n: t.clone() for n, t in self.tensors.items()}
        name = rng.choice(sorted(tensors))
        kind = rng.choice(("dtype", "shape", "missing", "extra", "renamed", "empty"))
        if kind == "dtype":
            tensors[name] = tensors[name].to(rng.choice((torch.float16, torch.bfloat16, torch.float64, torch.int32)))
        elif kind == "shape":
            tensors[name] = tensors[name].reshape(-1) if tensors[name].ndim > 1 else tensors[name].reshape(1, -1)
        elif kind == "missing":
            tensors.pop(name)
        elif kind == "extra":
            tensors["zz.extra"] = torch.zeros(rng.choice((0, 1, 10)))
        elif kind == "renamed":
            tensors[name + rng.choice((".x", "\u00e9", " "))] = tensors.pop(name)
        else:
            tensors[name] = torch.zeros((0,))
        return self.serialize(tensors, dict(self.manifest, fingerprint=self._fingerprint(tensors)))

    def manifest_field(self, rng: random.Random) -> bytes:
        m = dict(self.manifest)
        key = rng.choice(sorted(m) + ["extra", "drop", "raw", "metadata_key"])
        if key == "raw":
            depth = rng.choice((5, 1000, 100_000))
            text = rng.choice(("[" * depth + "]" * depth, "not json", "", json.dumps(m).replace('"run_id"', '"\\ud800"'),
                               json.dumps(m)[:-1] + ', "window": 8}', json.dumps(m).replace("56", "1" + "0" * 5000)))
            return self.serialize(self.tensors, text)
        if key == "metadata_key":
            return self.serialize(self.tensors, json.dumps(m), key=rng.choice(("tessera.checkpoint2", "", "manifest")))
        if key == "drop":
            m.pop(rng.choice(sorted(m)))
        else:
            m[key] = rng.choice(HOSTILE_VALUES + ("tiny-000000000000", "f" * 32, "F" * 32, 2, -1))
        return self.serialize(self.tensors, m)

    def judge(self, data: bytes) -> str:
        try:
            self._ck.load_checkpoint(data, self.model, self.cap, **self._kwargs)
        except self._ck.CheckpointError as exc:
            if self._restore():
                raise Poison(f"refused ({type(exc).__name__}) but the model changed") from exc
            return f"rejected:{type(exc).__name__}"
        bad = [n for n, p in self.model.named_parameters()
               if not (bool(torch.isfinite(p.detach()).all()) and float(p.detach().abs().max()) <= self.max_abs)]
        self._restore()  # a valid checkpoint of other values: every input starts from the same model
        if bad:
            raise Poison(f"loaded {bad[0]} with non-finite or out-of-bound values")
        return "accepted"

    def _restore(self) -> bool:
        """Put the original parameters back; whether they had changed."""
        if self._fingerprint(self.model) == self._before:
            return False
        with torch.no_grad():
            for name, p in self.model.named_parameters():
                p.copy_(self.tensors[name])
        return True


# --- the campaign -------------------------------------------------------------------------------------------


def build_targets(classes: list[str], store_builds: int) -> tuple[dict[str, object], dict[str, str]]:
    targets: dict[str, object] = {}
    skipped: dict[str, str] = {}
    makers = {"payload": PayloadTarget, "commitment": lambda: CommitmentTarget(store_builds),
              "fingerprint": FingerprintTarget, "checkpoint": CheckpointTarget}
    for cls in classes:
        try:
            targets[cls] = makers[cls]()
        except ImportError as exc:  # a reader that does not exist (yet) in this checkout
            skipped[cls] = f"{type(exc).__name__}: {exc}"
    return targets, skipped


def generate(target, seed: int, index: int, per_class_index: int, controls: int) -> tuple[str, object]:
    rng = random.Random(f"{seed}:{index}")
    if per_class_index < controls:
        return "control", target.control
    name = rng.choice(sorted(target.mutators))
    return name, target.mutators[name](rng)


def run_one(campaign: Campaign, target, cls: str, mutator: str, index: int, data: object) -> None:
    target.mutator = mutator
    started = time.perf_counter()
    try:
        outcome = target.judge(data)
    except Poison as exc:
        outcome = "poisoned"
        campaign.n_poisoned += 1
        if len(campaign.poisoned) < MAX_EXAMPLES:
            campaign.poisoned.append(_example(cls, mutator, index, data, str(exc)))
    except ContainedCrash as exc:
        outcome = "crash"
        campaign.n_crashes += 1
        if len(campaign.crashes) < MAX_EXAMPLES:
            campaign.crashes.append(_example(cls, mutator, index, data, f"contained by the boundary guard: {exc}"))
    except Exception as exc:  # noqa: BLE001 - the harness's catch-all: anything untyped is a crash, counted
        outcome = "crash"
        campaign.n_crashes += 1
        if len(campaign.crashes) < MAX_EXAMPLES:
            campaign.crashes.append(_example(cls, mutator, index, data, f"{type(exc).__name__}: {exc}"))
    seconds = time.perf_counter() - started
    campaign.counts[cls][outcome] += 1
    campaign.by_mutator[cls][mutator]["accepted" if outcome == "accepted" else
                                      outcome if outcome in ("crash", "poisoned") else "rejected"] += 1
    entry = {"class": cls, "mutator": mutator, "index": index, "seconds": round(seconds, 4)}
    if seconds > campaign.slowest_per_class.get(cls, {"seconds": -1})["seconds"]:
        campaign.slowest_per_class[cls] = entry
    campaign.slowest = sorted([*campaign.slowest, entry], key=lambda e: -e["seconds"])[:3]


def campaign_plan(n: int, classes: list[str]) -> list[tuple[int, str, int]]:
    """(index, class, index within the class): classes in turn, so each gets about n / len(classes)."""
    return [(i, classes[i % len(classes)], i // len(classes)) for i in range(n)]


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--n", type=int, default=2000, help="number of inputs, split evenly across classes")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--classes", default=",".join(CLASSES), help=f"comma-separated subset of {','.join(CLASSES)}")
    parser.add_argument("--controls", type=int, default=3, help="unmutated inputs per class (must be accepted)")
    parser.add_argument("--store-builds", type=int, default=10,
                        help="most read-only S3 clients built per commitment mutator (about 0.1 s each)")
    parser.add_argument("--index", type=int, help="replay only input INDEX and raise what it raises")
    parser.add_argument("--dump", type=Path, help="with --index: write the input's bytes here")
    parser.add_argument("--no-tracemalloc", action="store_true", help="skip the (slower) Python heap peak")
    parser.add_argument("--json", action="store_true", help="print the result as one JSON object")
    args = parser.parse_args(argv)
    classes = [c for c in args.classes.split(",") if c]
    unknown = sorted(set(classes) - set(CLASSES))
    if unknown:
        parser.error(f"unknown classes {unknown}; choose from {list(CLASSES)}")
    torch.set_num_threads(1)
    plan = campaign_plan(args.n if args.index is None else args.index + 1, classes)
    targets, skipped = build_targets(classes, args.store_builds)
    if args.index is not None:
        return replay(targets, plan[args.index], args)
    if not args.no_tracemalloc:
        tracemalloc.start()
    campaign = Campaign()
    started = time.perf_counter()
    for index, cls, k in plan:
        if cls in targets:
            mutator, data = generate(targets[cls], args.seed, index, k, args.controls)
            run_one(campaign, targets[cls], cls, mutator, index, data)
    total = time.perf_counter() - started
    peak_heap = tracemalloc.get_traced_memory()[1] if tracemalloc.is_tracing() else None
    tracemalloc.stop()
    result = {
        "n": sum(sum(c.values()) for c in campaign.counts.values()), "seed": args.seed, "classes": classes,
        "skipped": skipped, "controls_per_class": args.controls,
        "counts": {c: dict(sorted(campaign.counts[c].items())) for c in classes if c in targets},
        "by_mutator": {c: {m: dict(v) for m, v in sorted(campaign.by_mutator[c].items())} for c in classes if c in targets},
        "crashes": campaign.n_crashes, "crash_examples": campaign.crashes,
        "poisoned": campaign.n_poisoned, "poison_examples": campaign.poisoned,
        "slowest": campaign.slowest[0] if campaign.slowest else None, "slowest_top3": campaign.slowest,
        "slowest_per_class": campaign.slowest_per_class,
        "seconds_total": round(total, 2), "inputs_per_second": round(args.n / total, 1) if total else None,
        "peak_memory": {"ru_maxrss_mib": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1),
                        "tracemalloc_peak_mib": None if peak_heap is None else round(peak_heap / 2**20, 2)},
        "store_clients_built": getattr(targets.get("commitment"), "store_builds", 0),
        "replay": f"python scripts/fuzz_acceptance.py --seed {args.seed} --classes {','.join(classes)} --index INDEX",
    }
    print(json.dumps(result, indent=None if args.json else 2))
    return result


def replay(targets: dict[str, object], planned: tuple[int, str, int], args: argparse.Namespace) -> dict:
    """Generate input ``--index`` again and judge it without the catch-all, so a crash shows its traceback."""
    index, cls, k = planned
    if cls not in targets:
        raise SystemExit(f"class {cls} is skipped in this checkout")
    mutator, data = generate(targets[cls], args.seed, index, k, args.controls)
    targets[cls].mutator = mutator
    if args.dump:
        args.dump.write_bytes(data.encode("utf-8", "surrogatepass") if isinstance(data, str) else data)
    outcome = targets[cls].judge(data)
    result = {"index": index, "class": cls, "mutator": mutator, "outcome": outcome, "input": _example(cls, mutator, index, data, "")}
    print(json.dumps(result))
    return result


if __name__ == "__main__":
    main()
