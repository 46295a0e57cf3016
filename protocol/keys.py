"""The one place that names objects in buckets.

Layout (every key starts with the run id, so a new run is a new namespace)::

    <run_id>/payloads/<window:010d>/<uid:05d>.safetensors      a miner's compressed update
    <run_id>/fingerprints/<window:010d>/<uid:05d>.json         a node's model fingerprint
    <run_id>/checkpoints/<window:010d>.safetensors             a validator's checkpoint

Windows are zero-padded so lexical order (what S3 listing returns) is numeric order, and the
newest checkpoint is simply the last key under the checkpoint prefix.
"""

from __future__ import annotations

import re

_WINDOW_DIGITS = 10
_UID_DIGITS = 5
_RUN_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,127}$")
_WINDOW_IN_KEY = re.compile(rf"/(payloads|fingerprints|checkpoints)/(\d{{{_WINDOW_DIGITS}}})(?:/|\.)")


class ObjectKeyError(ValueError):
    """A key component is out of range or a key does not follow the layout."""


def _run(run_id: str) -> str:
    if not _RUN_ID.match(run_id):
        raise ObjectKeyError(f"run id {run_id!r} must be 1-128 chars of [A-Za-z0-9._-]")
    return run_id


def _window(window: int) -> str:
    if not 0 <= window < 10**_WINDOW_DIGITS:
        raise ObjectKeyError(f"window {window} out of range")
    return f"{window:0{_WINDOW_DIGITS}d}"


def _uid(uid: int) -> str:
    if not 0 <= uid < 10**_UID_DIGITS:
        raise ObjectKeyError(f"uid {uid} out of range")
    return f"{uid:0{_UID_DIGITS}d}"


def payload_prefix(run_id: str, window: int | None = None) -> str:
    """All payloads of a run, or of one window when ``window`` is given."""
    base = f"{_run(run_id)}/payloads/"
    return base if window is None else f"{base}{_window(window)}/"


def payload_key(run_id: str, window: int, uid: int) -> str:
    return f"{payload_prefix(run_id, window)}{_uid(uid)}.safetensors"


def fingerprint_prefix(run_id: str, window: int | None = None) -> str:
    base = f"{_run(run_id)}/fingerprints/"
    return base if window is None else f"{base}{_window(window)}/"


def fingerprint_key(run_id: str, window: int, uid: int) -> str:
    return f"{fingerprint_prefix(run_id, window)}{_uid(uid)}.json"


def checkpoint_prefix(run_id: str) -> str:
    return f"{_run(run_id)}/checkpoints/"


def checkpoint_key(run_id: str, window: int) -> str:
    return f"{checkpoint_prefix(run_id)}{_window(window)}.safetensors"


def window_of_key(key: str) -> int:
    """The window a payload, fingerprint or checkpoint key belongs to (for retention)."""
    match = _WINDOW_IN_KEY.search(key)
    if match is None:
        raise ObjectKeyError(f"not a tessera object key: {key!r}")
    return int(match.group(2))
