"""The validator's memory of every miner: ratings, evidence EMAs, sync, counts.

Keyed by (uid, hotkey): when a uid is deregistered and taken by a new hotkey, the newcomer starts
from a fresh record instead of inheriting someone else's reputation. Saved as JSON through
``storage.atomic`` (temp file + fsync + ``os.replace``), so a SIGKILL at any moment leaves either
the old or the new file, never a torn one.

The file is read as untrusted (a disk, a copy or a hand edit can damage it): it is parsed and
validated in one step by pydantic (types strict, numbers finite and in range, no unknown fields,
bounded sizes), and *any* problem -- not UTF-8, truncated or deeply nested JSON, NaN, a huge int,
a wrong type -- is a ``ScoreBookError`` naming the file and the field. A non-finite number never
enters the book at all: ``MinerRecord`` refuses one at assignment (keeping the previous value and
logging it), so one NaN loss cannot make every later ``save`` fail.

Version 1 books (the sign indicator + Wilson bound era) still load: their records keep ratings,
loss EMA, sync and counts, and start the unique-data evidence fresh, since a count of ±1 signs
cannot be turned into a sum of t statistics.
"""

from __future__ import annotations

import json
import logging
import math
from collections.abc import Mapping
from dataclasses import MISSING, asdict, dataclass
from pathlib import Path
from typing import Annotated, Any

from pydantic import BaseModel, ConfigDict, Field, TypeAdapter, ValidationError, with_config

from scoring.ratings import DEFAULT_MU, DEFAULT_SIGMA, Rating
from storage.atomic import atomic_write

log = logging.getLogger(__name__)

FORMAT_VERSION = 2
MAX_MINERS = 1 << 16
Finite = Annotated[float, Field(allow_inf_nan=False)]
Window = Annotated[int, Field(ge=0, lt=10**10)]  # windows fit the ten digits of object keys
Count = Annotated[int, Field(ge=0, lt=1 << 63)]
Uid = Annotated[int, Field(ge=0, lt=10**5)]


class ScoreBookError(ValueError):
    """A saved score book cannot be read: the message names the file and the problem."""


# strict: in the file, "3" is not a uid and true is not a count
@with_config(ConfigDict(extra="forbid", strict=True))
@dataclass
class MinerRecord:
    uid: Uid
    hotkey: Annotated[str, Field(max_length=256)]
    first_window: Window
    mu: Finite = DEFAULT_MU
    sigma: Annotated[float, Field(gt=0, allow_inf_nan=False)] = DEFAULT_SIGMA
    loss_ema: Finite = 0.0  # EMA of LossScore (relative improvement on random data)
    # unique-data evidence (scoring.gauntlet): Z = evidence_sum / sqrt(evidence_weight), where
    # evidence_sum = Σ d^a t_a and evidence_weight = Σ d^(2a), ages a counted at evidence_window
    evidence_sum: Finite = 0.0
    evidence_weight: Annotated[float, Field(ge=0, allow_inf_nan=False)] = 0.0
    evidence_window: Window | None = None
    last_t: Finite | None = None  # the latest window's statistic, for logs and the live view
    sync: Finite = 0.0  # latest sync score
    last_loss_score: Finite | None = None
    last_seen_window: Window | None = None  # last window with any payload at all
    last_evaluated_window: Window | None = None  # last window that passed stage 1 and was measured
    windows_evaluated: Count = 0
    windows_rejected: Count = 0
    last_reason: Annotated[str, Field(max_length=4096)] | None = None

    def __setattr__(self, name: str, value: object) -> None:
        if name in _FLOAT_FIELDS and not (value is None and name in _OPTIONAL_FLOATS):
            value = _finite_or_kept(self, name, value)
        object.__setattr__(self, name, value)

    @property
    def rating(self) -> Rating:
        return Rating(self.mu, self.sigma)

    def set_rating(self, rating: Rating) -> None:
        self.mu, self.sigma = rating.mu, rating.sigma

    @property
    def evidence_z(self) -> float:
        """The combined unique-data statistic Z (0 without evidence)."""
        if self.evidence_weight <= 0:
            return 0.0
        return self.evidence_sum / math.sqrt(self.evidence_weight)


_FLOAT_FIELDS = {"mu", "sigma", "loss_ema", "evidence_sum", "evidence_weight", "sync", "last_loss_score", "last_t"}
_OPTIONAL_FLOATS = {"last_loss_score", "last_t"}


def _finite_or_kept(rec: MinerRecord, name: str, value: object) -> float | None:
    """``value`` as a plain float if finite; else the field's current (or default) value, logged.

    Refusing here rather than at save time keeps one bad measurement from poisoning the EMA and
    from making every later save fail (JSON has no NaN)."""
    try:
        number = float(value)  # also turns numpy/torch scalars into what JSON can hold
    except (TypeError, ValueError, OverflowError):  # OverflowError: an int beyond float range
        number = math.nan
    if math.isfinite(number) and not (name == "sigma" and number <= 0):
        return number
    default = MinerRecord.__dataclass_fields__[name].default
    kept = getattr(rec, name, None if default is MISSING else default)
    log.warning("uid %s: refused %s=%r (not a finite number); keeping %r", getattr(rec, "uid", "?"), name, value, kept)
    return kept


class _BookFile(BaseModel):
    """The file's shape, validated in one pass from the raw bytes."""

    model_config = ConfigDict(extra="forbid", strict=True)

    version: int  # strict: true is not 1 (a Literal would take it)
    last_window: Window | None = None
    miners: list[MinerRecord] = Field(default_factory=list, max_length=MAX_MINERS)


_BOOK_FILE = TypeAdapter(_BookFile)


@dataclass
class _RecordV1(MinerRecord):
    """A version-1 record: today's fields plus the sign-indicator evidence it carried."""

    unique_ema: Finite = 0.0
    unique_pos: Finite = 0.0
    unique_n: Finite = 0.0

    def migrated(self) -> MinerRecord:
        """Rating, loss EMA, sync and counts kept; unique-data evidence starts fresh."""
        kept = {f: getattr(self, f) for f in MinerRecord.__dataclass_fields__ if f not in _EVIDENCE_FIELDS}
        return MinerRecord(**kept)


# what the t statistic adds to a record; a version-1 file has no business carrying it
_EVIDENCE_FIELDS = {"evidence_sum", "evidence_weight", "evidence_window", "last_t"}


class _BookFileV1(_BookFile):
    miners: list[_RecordV1] = Field(default_factory=list, max_length=MAX_MINERS)


class _VersionOnly(BaseModel):
    model_config = ConfigDict(extra="ignore", strict=True)

    version: int


_READERS = {1: TypeAdapter(_BookFileV1), FORMAT_VERSION: _BOOK_FILE}


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
        try:
            text = json.dumps(data, allow_nan=False)
        except (TypeError, ValueError, RecursionError) as exc:
            raise ScoreBookError(f"score book data is not plain JSON: {type(exc).__name__}: {exc}") from exc
        return cls._parse(text.encode(), "data")

    @classmethod
    def _parse(cls, raw: bytes, where: str) -> ScoreBook:
        try:
            version = _VersionOnly.model_validate_json(raw).version
            reader = _READERS.get(version)
            if reader is None:
                raise ScoreBookError(f"score book {where}: version {version}, expected {FORMAT_VERSION}")
            book = reader.validate_json(raw)
        except ValidationError as exc:
            raise ScoreBookError(f"score book {where}: {_problem(exc)}") from exc
        if version != FORMAT_VERSION:
            log.info("score book %s: version %d migrated; unique-data evidence starts fresh", where, version)
        records = {rec.uid: (rec.migrated() if isinstance(rec, _RecordV1) else rec) for rec in book.miners}
        if len(records) != len(book.miners):
            raise ScoreBookError(f"score book {where}: a uid appears twice")
        return cls(records, book.last_window)

    def save(self, path: str | Path) -> None:
        """Write atomically: a crash leaves the previous file or this one, never a mix."""
        text = json.dumps(self.to_json(), indent=1, sort_keys=True, allow_nan=False)
        atomic_write(path, text.encode())

    @classmethod
    def load(cls, path: str | Path) -> ScoreBook:
        """Read a saved book; a missing file is an empty book (first start)."""
        path = Path(path)
        try:
            raw = path.read_bytes()
        except FileNotFoundError:
            return cls()
        except OSError as exc:
            raise ScoreBookError(f"score book {path} cannot be read: {exc}") from exc
        return cls._parse(raw, str(path))


def _problem(exc: ValidationError) -> str:
    """The first problem, by location and message (never the offending value: it may be huge)."""
    first = exc.errors()[0]
    where = ".".join(map(str, first["loc"])) or "file"
    kind = "unknown field" if first["type"] == "unexpected_keyword_argument" else first["msg"]
    return f"{where}: {kind}"[:300]
