"""``tessera localnet --kill-stage G/S@W``: SIGKILL a pipeline stage in the middle of a window and
start it again at once, as an operator's supervisor would.

"Mid-window" is read from the stage's own log: it has logged that it trains window w (its links
to its partners are up, so they are in that window with it) and has not yet logged the window's
outcome. A stage trains a window in about 1.5 s on the tiny preset, so the stage's log is watched
from a thread of its own every 20 ms: the launcher's watch loop sleeps a second between rounds
and can block for seconds on a chain read, and a kill that came from there could land after the
window's boundary exchange was over (one CI run killed the stage after stage 0 had uploaded).
W counts from the first window in which every miner uploaded; that window is known only about
when the stage starts training the next one, so the killer takes the first window at or after
the planned one that it catches mid-training, and reports which one that was.
"""

from __future__ import annotations

import re
import subprocess
import threading
from collections.abc import Callable
from pathlib import Path

POLL_SECONDS = 0.02
TRAINING = re.compile(rb"window (\d+): training ")  # neurons.stage_miner, once the window's links are up


def training_now(log_text: bytes, earliest: int) -> int | None:
    """The window (>= ``earliest``) the stage has started training and not yet ended, else None.

    A window has ended once the stage logged that it trained it, that its group lost it, that it
    skipped it, or its window record ("window w: loss …")."""
    started = [int(m) for m in TRAINING.findall(log_text)]
    if not started or max(started) < earliest:
        return None
    w = max(started)
    ended = (b"for window %d with group" % w, b"lost window %d;" % w, b"skips window %d:" % w, b"window %d: loss" % w)
    return None if any(mark in log_text for mark in ended) else w


class StageKiller:
    """Watches one stage's log from a thread; :meth:`arm` names the earliest window to kill in.

    ``kill`` stops the process and waits for it; ``restart`` starts it again. Both run under
    :attr:`lock`, which the launcher also holds while it checks for nodes that exited early, so a
    stage between its kill and its restart is never taken for a crashed node."""

    def __init__(self, name: str, log: Path, kill: Callable[[], None], restart: Callable[[], None]) -> None:
        self.name, self.log, self._kill, self._restart = name, log, kill, restart
        self.lock = threading.Lock()
        self.window: int | None = None  # the window it was killed in, once done
        self.error: str | None = None  # why the kill or the restart failed, if it did
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    @property
    def armed(self) -> bool:
        return self._thread is not None

    def arm(self, earliest: int) -> None:
        self._thread = threading.Thread(target=self._watch, args=(earliest,), name="stage-killer", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join()

    def report(self) -> dict:
        out = {"stage": self.name, "window": self.window, "done": self.window is not None}
        return out | ({"error": self.error} if self.error else {})

    def _training_now(self, earliest: int) -> int | None:
        return training_now(self.log.read_bytes() if self.log.is_file() else b"", earliest)

    def _watch(self, earliest: int) -> None:
        while not self._stop.wait(POLL_SECONDS):
            if self._training_now(earliest) is None:
                continue
            with self.lock:
                w = self._training_now(earliest)  # again, just before the kill: the window may have ended
                if w is None:
                    continue
                try:
                    self._kill()
                    with self.log.open("ab") as f:
                        f.write(f"--- tessera localnet: SIGKILL during window {w}; restarting ---\n".encode())
                    self._restart()
                except (OSError, subprocess.SubprocessError) as exc:
                    self.error = f"kill or restart of {self.name} in window {w} failed: {exc}"
                    return
            self.window = w
            return
