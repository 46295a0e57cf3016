"""Retention: a node deletes its own objects that are more than N windows old.

The key naming belongs to ``protocol.keys``; this module takes the parser as a parameter
(``window_of_key``) so storage does not depend on protocol. Keys the parser does not recognise
(it returns None or raises ValueError) are kept: retention must never delete what it cannot date.
Joiners replay from retained payloads, so the operator should keep at least
2 x the checkpoint interval.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass, field

from storage.errors import StorageError
from storage.store import ObjectInfo, ObjectStore

WindowOfKey = Callable[[str], int | None]


@dataclass
class RetentionReport:
    deleted: list[str] = field(default_factory=list)
    kept: int = 0
    undated: int = 0  # keys the parser could not date; always kept
    failed: dict[str, StorageError] = field(default_factory=dict)


def _window(key: str, window_of_key: WindowOfKey) -> int | None:
    try:
        return window_of_key(key)
    except ValueError:
        return None


def expired_keys(
    infos: Iterable[ObjectInfo],
    current_window: int,
    max_age_windows: int,
    window_of_key: WindowOfKey,
) -> tuple[list[str], int, int]:
    """Split keys into (expired keys, kept count, undated count).

    A key of window w is expired when ``current_window - w > max_age_windows``; windows in the
    future (clock skew, a restarted node) are kept.
    """
    if max_age_windows < 0:
        raise ValueError(f"max_age_windows must be >= 0, got {max_age_windows}")
    expired: list[str] = []
    kept = undated = 0
    for info in infos:
        window = _window(info.key, window_of_key)
        if window is None:
            undated += 1
        elif current_window - window > max_age_windows:
            expired.append(info.key)
        else:
            kept += 1
    return expired, kept, undated


def prune_old_windows(
    store: ObjectStore,
    prefix: str,
    current_window: int,
    max_age_windows: int,
    window_of_key: WindowOfKey,
) -> RetentionReport:
    """Delete this node's objects under ``prefix`` older than ``max_age_windows`` windows.

    Failures are per key (reported, not raised) so one stubborn object does not stop the rest;
    listing failures do raise, since then nothing can be judged.
    """
    expired, kept, undated = expired_keys(store.list(prefix), current_window, max_age_windows, window_of_key)
    report = RetentionReport(kept=kept, undated=undated)
    for key, error in store.delete_many(expired).items():
        if error is None:
            report.deleted.append(key)
        else:
            report.failed[key] = error
    return report
