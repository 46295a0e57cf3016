"""Per-window records a node appends to ``<state_dir>/events.jsonl``.

The local subnet launcher tails these files for its live table and its JSON summary; an operator
can read them too. One JSON object per line, written whole and flushed, so a reader never sees
half a record even if the node is killed.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from pathlib import Path


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
    rejected: dict[int, str] = field(default_factory=dict)
    stage_seconds: dict[str, float] = field(default_factory=dict)
    uploaded_bytes: int = 0
    weights_block: int | None = None  # block at which this window's weights were set on chain
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
        with self.path.open("a", encoding="utf-8") as fh:
            fh.write(line + "\n")
            fh.flush()


def read_records(path: Path) -> list[dict]:
    """All complete records in ``path`` (a torn last line from a killed writer is skipped)."""
    if not path.exists():
        return []
    records = []
    for line in path.read_text(encoding="utf-8").splitlines():
        try:
            records.append(json.loads(line))
        except json.JSONDecodeError:
            continue
    return records
