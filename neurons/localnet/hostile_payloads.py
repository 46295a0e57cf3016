"""Hostile payloads for the local subnet's adversary: what a peer can put in its own bucket.

Every builder starts from a *real* payload (a random pseudo-gradient through the real error
feedback compressor and the real wire codec, ``neurons.behaviours.messages``, signed by the
adversary's own registered hotkey),
so each hostile object differs from an honest one in exactly the way it names:

- ``huge_values``: the per-tensor value tables scaled to large finite magnitudes (1e4 up to
  3.4e38, just under float32's max); signs, indices and signature are all valid.
- ``garbage``: one of ``GARBAGE_CLASSES``, each a way to be undecodable or unacceptable.

The same bytes are what ``tessera inspect payload`` and the hostile-input tests can be pointed
at; nothing here touches the network.
"""

from __future__ import annotations

import json
import struct
from collections.abc import Callable
from dataclasses import dataclass

import torch

from compression import CompressedMessage, PayloadManifest, encode_payload
from neurons.behaviours.messages import random_message, value_table, with_value_table

__all__ = ["GARBAGE_CLASSES", "Identity", "garbage", "garbage_class", "huge_values", "random_message", "signed_payload"]

Sign = Callable[[bytes], bytes]

# Magnitudes a ``values`` payload cycles through: from "big but plausible" to float32's limit.
VALUE_MAGNITUDES = (1e4, 1e8, 1e16, 1e24, 1e32, 3.4e38)
GARBAGE_CLASSES = ("truncated", "surrogate_name", "deep_json", "wrong_signature", "wrong_window", "oversized")

# Deep enough to exhaust any recursive JSON parser (CPython's default limit is 1000), small
# enough (2 bytes a level) to stay under a payload header's size cap.
_DEEP_JSON_LEVELS = 20_000


@dataclass(frozen=True)
class Identity:
    """Who the payload claims to be, and the key it is signed with."""

    run_id: str
    uid: int
    hotkey: str
    sign: Sign


def signed_payload(
    msg: CompressedMessage, who: Identity, window: int, base_fingerprint: str = "", sign: Sign | None = None
) -> bytes:
    manifest = PayloadManifest.for_message(
        msg, run_id=who.run_id, window=window, uid=who.uid, hotkey=who.hotkey, global_step=0,
        base_fingerprint=base_fingerprint,
    )
    return encode_payload(msg, manifest, sign=sign or who.sign)


def with_huge_values(msg: CompressedMessage, magnitude: float) -> CompressedMessage:
    """``msg`` with every value table rescaled so its largest |value| is ``magnitude``.

    Signs (+, +, -, -) and the order of the centroids are kept, so only a bound on values can
    tell this payload from an honest one.
    """
    blobs = {name: _scaled_blob(blob, magnitude) for name, blob in msg.blobs.items()}
    return CompressedMessage(params=msg.params, shapes=dict(msg.shapes), blobs=blobs)


def _scaled_blob(blob: torch.Tensor, magnitude: float) -> torch.Tensor:
    table = value_table(blob)
    peak = max(abs(v) for v in table)
    if peak == 0.0:
        return with_value_table(blob, (magnitude, magnitude, -magnitude, -magnitude))
    return with_value_table(blob, [v * (magnitude / peak) for v in table])


def huge_values(msg: CompressedMessage, who: Identity, window: int, base_fingerprint: str) -> bytes:
    """A correctly signed, on-shape payload whose values reach the window's magnitude."""
    magnitude = VALUE_MAGNITUDES[window % len(VALUE_MAGNITUDES)]
    return signed_payload(with_huge_values(msg, magnitude), who, window, base_fingerprint)


def garbage_class(window: int, uid: int) -> str:
    """The class served for ``window``: cycles, offset by uid so two garbage peers differ."""
    return GARBAGE_CLASSES[(window + uid) % len(GARBAGE_CLASSES)]


def garbage(kind: str, msg: CompressedMessage, who: Identity, window: int, max_bytes: int) -> bytes:
    """A payload of class ``kind`` (one of ``GARBAGE_CLASSES``) claiming to be ``who``'s for ``window``."""
    good = signed_payload(msg, who, window)
    if kind == "truncated":
        return good[: len(good) // 2]
    if kind == "surrogate_name":
        return _rename_tensor(good, "\ud800")  # json.dumps writes it as the escape "\ud800"
    if kind == "deep_json":
        nested = "[" * _DEEP_JSON_LEVELS + "]" * _DEEP_JSON_LEVELS
        return _with_header(('{"__metadata__":' + nested + "}").encode(), b"")
    if kind == "wrong_signature":
        # a genuine signature by the right hotkey, over bytes other than the content hash
        return signed_payload(msg, who, window, sign=lambda digest: who.sign(digest[::-1]))
    if kind == "wrong_window":
        return signed_payload(msg, who, window + 1)
    if kind == "oversized":
        return good + bytes(max_bytes + 65536 - len(good))
    raise ValueError(f"unknown garbage class {kind!r}; one of {', '.join(GARBAGE_CLASSES)}")


def _split(payload: bytes) -> tuple[dict, bytes]:
    (n,) = struct.unpack("<Q", payload[:8])
    return json.loads(payload[8 : 8 + n]), payload[8 + n :]


def _with_header(header: bytes, body: bytes) -> bytes:
    header += b" " * (-len(header) % 8)
    return struct.pack("<Q", len(header)) + header + body


def _rename_tensor(payload: bytes, name: str) -> bytes:
    """The payload with its (one) tensor renamed; the header is rewritten, the body kept."""
    header, body = _split(payload)
    renamed = {(name if key != "__metadata__" else key): value for key, value in header.items()}
    return _with_header(json.dumps(renamed, separators=(",", ":")).encode("ascii"), body)
