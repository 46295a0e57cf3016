"""The validator's memory of every miner: ratings, evidence EMAs, sync, counts.

Keyed by (uid, hotkey): when a uid is deregistered and taken by a new hotkey, the newcomer starts
from a fresh record instead of inheriting someone else's reputation. Saved as JSON with an atomic
replace (temp file + fsync + ``os.replace``), so a SIGKILL at any moment leaves either the old or
the new file, never a torn one.
"""

from __future__ import annotations

import json
import os
import tempfile
from collections.abc import Mapping
from dataclasses import asdict, dataclass, fields
from pathlib import Path
from typing import Any

from scoring.ratings import DEFAULT_MU, DEFAULT_SIGMA, Rating

FORMAT_VERSION = 1


class ScoreBookError(ValueError):
    """A saved score book cannot be read: the message names the file and the problem."""


@dataclass
class MinerRecord:
    uid: int
    hotkey: str
    first_window: int
    mu: float = DEFAULT_MU
    sigma: float = DEFAULT_SIGMA
    loss_ema: float = 0.0  # EMA of LossScore (relative improvement on random data)
    unique_ema: float = 0.0  # EMA of the ±1 unique-data indicator
    unique_pos: float = 0.0  # decayed count of +1 indicators (evidence test)
    unique_n: float = 0.0  # decayed count of all indicators (evidence test)
    sync: float = 0.0  # latest sync score
    last_loss_score: float | None = None
    last_seen_window: int | None = None  # last window with any payload at all
    last_evaluated_window: int | None = None  # last window that passed stage 1 and was measured
    windows_evaluated: int = 0
    windows_rejected: int = 0
    last_reason: str | None = None

    @property
    def rating(self) -> Rating:
        return Rating(self.mu, self.sigma)

    def set_rating(self, rating: Rating) -> None:
        self.mu, self.sigma = rating.mu, rating.sigma


class ScoreBook:
    """All miners' records, plus the last window scored."""

    def __init__(self, records: Mapping[int, MinerRecord] | None = None, last_window: int | None = None):
        self.records: dict[int, MinerRecord] = dict(records or {})
        self.last_window = last_window

    def record(self, uid: int, hotkey: str, window: int) -> MinerRecord:
        """The record for ``uid``, fresh if the uid is new or now belongs to another hotkey."""
        rec = self.records.get(uid)
        if rec is None or rec.hotkey != hotkey:
            rec = MinerRecord(uid=uid, hotkey=hotkey, first_window=window)
            self.records[uid] = rec
        return rec

    def reconcile(self, registered: Mapping[int, str]) -> list[int]:
        """Drop records of uids no longer registered or now held by another hotkey; return them."""
        stale = [u for u, r in self.records.items() if registered.get(u) != r.hotkey]
        for uid in stale:
            del self.records[uid]
        return sorted(stale)

    def to_json(self) -> dict[str, Any]:
        return {
            "version": FORMAT_VERSION,
            "last_window": self.last_window,
            "miners": [asdict(self.records[u]) for u in sorted(self.records)],
        }

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> ScoreBook:
        if data.get("version") != FORMAT_VERSION:
            raise ScoreBookError(f"score book version {data.get('version')!r}, expected {FORMAT_VERSION}")
        known = {f.name for f in fields(MinerRecord)}
        records: dict[int, MinerRecord] = {}
        for raw in data.get("miners", []):
            extra = set(raw) - known
            if extra:
                raise ScoreBookError(f"unknown miner record fields {sorted(extra)}")
            try:
                rec = MinerRecord(**raw)
            except TypeError as exc:
                raise ScoreBookError(f"bad miner record {raw!r}: {exc}") from exc
            records[rec.uid] = rec
        last = data.get("last_window")
        return cls(records, None if last is None else int(last))

    def save(self, path: str | Path) -> None:
        """Write atomically: a crash leaves the previous file or this one, never a mix."""
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        text = json.dumps(self.to_json(), indent=1, sort_keys=True, allow_nan=False)
        fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
        try:
            with os.fdopen(fd, "w") as fh:
                fh.write(text)
                fh.flush()
                os.fsync(fh.fileno())
            os.replace(tmp, path)
        except BaseException:
            Path(tmp).unlink(missing_ok=True)
            raise
        _fsync_dir(path.parent)

    @classmethod
    def load(cls, path: str | Path) -> ScoreBook:
        """Read a saved book; a missing file is an empty book (first start)."""
        path = Path(path)
        try:
            text = path.read_text()
        except FileNotFoundError:
            return cls()
        try:
            data = json.loads(text)
        except json.JSONDecodeError as exc:
            raise ScoreBookError(f"score book {path} is not valid JSON: {exc}") from exc
        if not isinstance(data, dict):
            raise ScoreBookError(f"score book {path} does not hold a JSON object")
        return cls.from_json(data)


def _fsync_dir(directory: Path) -> None:
    # make the rename itself durable; not every platform lets a directory be opened
    try:
        fd = os.open(directory, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)
