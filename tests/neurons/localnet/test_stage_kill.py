"""--kill-stage's killer: it kills only inside a window the stage is training, from the planned
window on, and never while the window's outcome is already logged (a kill after the boundary
exchange would not cost the group the window)."""

from __future__ import annotations

import time
from pathlib import Path

import pytest

from neurons.localnet.stage_kill import StageKiller, training_now

TRAINING = "miner-5 window {w}: training layers[1:2]+head with group 'g0'\n"
TRAINED = "miner-5 trained layers[1:2]+head for window {w} with group 'g0' (data of uid 4, 131360 boundary bytes sent)\n"
RECORD = "miner-5 window {w}: loss 6.5, uploaded 9822 B, gathered [3, 5, 2, 4] -> 1066\n"


def _log(*lines: str) -> bytes:
    return "".join(lines).encode()


def test_a_window_being_trained_is_killable_from_the_planned_window_on():
    text = _log(TRAINING.format(w=6), TRAINED.format(w=6), RECORD.format(w=6), TRAINING.format(w=7))
    assert training_now(text, earliest=7) == 7
    assert training_now(text, earliest=6) == 7  # 6 is over: the next one caught counts
    assert training_now(text, earliest=8) is None


@pytest.mark.parametrize("end", [
    TRAINED,
    "miner-5: group 'g0' lost window {w}; nothing uploaded (closed)\n",
    "miner-5 skips window {w}: no partner\n",
    RECORD,
])
def test_a_window_whose_outcome_is_logged_is_not_killable(end):
    assert training_now(_log(TRAINING.format(w=7), end.format(w=7)), earliest=7) is None


def test_window_numbers_are_matched_whole():
    # window 1's outcome does not end window 10, nor window 10's mark start window 1
    text = _log(TRAINING.format(w=1), TRAINED.format(w=1), TRAINING.format(w=10))
    assert training_now(text, earliest=1) == 10
    assert training_now(_log(TRAINING.format(w=10), TRAINED.format(w=1)), earliest=10) == 10


def test_the_killer_kills_and_restarts_once_mid_window_and_reports_it(tmp_path: Path):
    log = tmp_path / "stage.log"
    log.write_bytes(_log(TRAINING.format(w=5), TRAINED.format(w=5)))
    calls: list[str] = []
    killer = StageKiller("stage-g0-s1", log, lambda: calls.append("kill"), lambda: calls.append("restart"))
    killer.arm(5)
    time.sleep(0.2)
    assert calls == []  # window 5 was over before it was armed
    with log.open("ab") as f:
        f.write(_log(TRAINING.format(w=6)))
    deadline = time.monotonic() + 5
    while killer.window is None and time.monotonic() < deadline:
        time.sleep(0.02)
    killer.stop()
    assert calls == ["kill", "restart"]
    assert killer.report() == {"stage": "stage-g0-s1", "window": 6, "done": True}
    assert b"SIGKILL during window 6" in log.read_bytes()


def test_a_killer_that_never_caught_its_stage_reports_not_done(tmp_path: Path):
    killer = StageKiller("stage-g0-s1", tmp_path / "absent.log", lambda: None, lambda: None)
    killer.arm(3)
    time.sleep(0.1)
    killer.stop()
    assert killer.report() == {"stage": "stage-g0-s1", "window": None, "done": False}


def test_a_failed_restart_is_reported_with_its_reason(tmp_path: Path):
    log = tmp_path / "stage.log"
    log.write_bytes(_log(TRAINING.format(w=4)))

    def restart() -> None:
        raise OSError("no such file: tessera")

    killer = StageKiller("stage-g0-s1", log, lambda: None, restart)
    killer.arm(4)
    deadline = time.monotonic() + 5
    while killer.error is None and time.monotonic() < deadline:
        time.sleep(0.02)
    killer.stop()
    report = killer.report()
    assert report["done"] is False and "window 4" in report["error"] and "no such file" in report["error"]
