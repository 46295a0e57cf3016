"""Per-window records a node appends to ``<state_dir>/events.jsonl``.

The local subnet launcher tails these files for its live table and its JSON summary; an operator
can read them too. One JSON object per line, written whole and flushed, so a reader never sees
half a record even if the node is killed.

``WindowRecord`` is a plain dataclass for the writer (building one in the node loop never fails)
and a strict pydantic schema for the reader: every line is validated as a record -- types, no
unknown keys, bounded length -- and a line that is not one (torn by a kill, damaged, hand-edited,
not UTF-8, nested, ...) is skipped and reported, never an exception.
"""

from __future__ import annotations

import json
import logging
from dataclasses import asdict, dataclass, field
from pathlib import Path

from pydantic import ConfigDict, TypeAdapter, ValidationError, with_config

from protocol.validation import describe

log = logging.getLogger(__name__)

MAX_LINE_BYTES = 4 << 20  # a validator's record for thousands of uids is far below this
MAX_DETAIL_CHARS = 200  # one rejection detail or verdict line in a record


def one_line(text: str, limit: int = MAX_DETAIL_CHARS) -> str:
    """``text`` as one printable line of at most ``limit`` characters. Rejection details carry
    text from peers' servers: flattened, they cannot forge extra log lines or bloat a record."""
    flat = " ".join("".join(ch if ch.isprintable() else " " for ch in text).split())
    return flat if len(flat) <= limit else flat[: limit - 1] + "…"


# strict at read time: "7" is not a window; NaN losses stay representable (a diverged run is news)
@with_config(ConfigDict(extra="forbid", strict=True))
@dataclass
class WindowRecord:
    node: str
    role: str
    uid: int
    window: int
    fingerprint: str
    gathered: list[int]
    loss: float | None = None  # miners: last inner-step loss; validators: held-out loss after update
    heldout_loss: float | None = None
    payload_bytes: dict[int, int] = field(default_factory=dict)
    scores: dict[int, float] = field(default_factory=dict)
    weights: dict[int, float] = field(default_factory=dict)
    rejected: dict[int, str] = field(default_factory=dict)  # validators: uid -> RejectReason word
    # validators: uid -> what the rejection named (one bounded line; neurons.verdicts), and each
    # miner's verdict line for the window ("uid 3: paid 0.250 ...", "uid 5: 0 — ...")
    rejected_detail: dict[int, str] = field(default_factory=dict)
    verdicts: dict[int, str] = field(default_factory=dict)
    stage_seconds: dict[str, float] = field(default_factory=dict)
    uploaded_bytes: int = 0
    weights_block: int | None = None  # block at which this window's weights were set on chain
    weights_note: str = ""  # what happened to weights this window (neurons.weights_schedule), "" if none due
    replayed: bool = False


class EventLog:
    def __init__(self, path: Path) -> None:
        self.path = path
        path.parent.mkdir(parents=True, exist_ok=True)
        self._end_torn_line()

    def _end_torn_line(self) -> None:
        """A writer killed mid-line leaves a tail without a newline; end it, so the next record
        starts on its own line instead of being glued onto (and lost with) the torn one."""
        if not self.path.exists() or self.path.stat().st_size == 0:
            return
        with self.path.open("rb") as fh:
            fh.seek(-1, 2)
            torn = fh.read(1) != b"\n"
        if torn:
            with self.path.open("a", encoding="utf-8") as fh:
                fh.write("\n")

    def append(self, record: WindowRecord) -> None:
        line = json.dumps(asdict(record), sort_keys=True)
        try:
            _record_json(line.encode())
        except ValueError as exc:  # written anyway: the log must not stop a node, but say it will be skipped
            log.warning("%s: event record for window %s will not read back: %s", self.path, record.window, exc)
        with self.path.open("a", encoding="utf-8") as fh:
            fh.write(line + "\n")
            fh.flush()


_RECORD = TypeAdapter(WindowRecord)


@dataclass(frozen=True)
class SkippedLine:
    line: int  # 1-based
    problem: str


@dataclass(frozen=True)
class EventLogContents:
    records: list[dict]  # each a WindowRecord's JSON form (int dict keys as strings, defaults filled)
    skipped: list[SkippedLine]


def read_event_log(path: Path) -> EventLogContents:
    """Every line of ``path`` that is a valid record, and which lines were not (with why)."""
    if not path.exists():
        return EventLogContents([], [])
    records, skipped = [], []
    for number, line in enumerate(path.read_bytes().splitlines(), start=1):
        if not line.strip():
            continue
        try:
            records.append(_record_json(line))
        except ValueError as exc:  # ValidationError and the too-long refusal
            skipped.append(SkippedLine(number, str(exc).splitlines()[0][:200]))
    return EventLogContents(records, skipped)


def read_records(path: Path) -> list[dict]:
    """All valid records in ``path``; malformed lines (a torn last line from a killed writer, or
    anything else) are skipped and logged."""
    contents = read_event_log(path)
    if contents.skipped:
        first = contents.skipped[0]
        log.warning("%s: skipped %d malformed line(s), first line %d: %s",
                    path, len(contents.skipped), first.line, first.problem)
    return contents.records


def _record_json(line: bytes) -> dict:
    if len(line) > MAX_LINE_BYTES:
        raise ValueError(f"line of {len(line)} bytes exceeds {MAX_LINE_BYTES}")
    try:
        # pydantic's parser: no recursion limit to hit, invalid UTF-8 and lone surrogates refused
        record = _RECORD.validate_json(line)
    except ValidationError as exc:
        raise ValueError(describe(exc)) from exc
    return json.loads(json.dumps(asdict(record)))
