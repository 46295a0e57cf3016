"""Which windows the local subnet reports: only those after every on-time miner was up."""

from __future__ import annotations

from neurons.localnet.view import NodeLog, first_window_all_up, scored_windows, validator_windows


def _rec(window: int, uploaded: int = 0, replayed: bool = False) -> dict:
    return {"window": window, "uploaded_bytes": uploaded, "replayed": replayed}


def _logs() -> list[NodeLog]:
    return [
        NodeLog("validator-0", "validator", 1, [_rec(3, replayed=True), _rec(4), _rec(5), _rec(6), _rec(7)]),
        NodeLog("miner-0", "miner", 2, [_rec(4, 900), _rec(5, 900), _rec(6, 900)]),
        # came up late in window 4: sat it out, first upload in window 5
        NodeLog("miner-1", "miner", 3, [_rec(4, 0), _rec(5, 880), _rec(6, 870)]),
    ]


def test_validator_windows_are_live_windows_only() -> None:
    assert validator_windows(_logs()) == [4, 5, 6, 7]


def test_network_is_up_from_the_window_the_last_miner_first_uploaded() -> None:
    logs = _logs()
    assert first_window_all_up(logs, {"miner-0", "miner-1"}) == 5
    assert scored_windows(logs, {"miner-0", "miner-1"}) == [5, 6, 7]
    # a late joiner left out of the set does not hold the report back
    assert first_window_all_up(logs, {"miner-0"}) == 4


def test_nothing_is_reported_while_a_miner_has_never_uploaded() -> None:
    logs = _logs()
    logs[2].records = [_rec(4, 0), _rec(5, 0, replayed=True)]
    assert first_window_all_up(logs, {"miner-0", "miner-1"}) is None
    assert scored_windows(logs, {"miner-0", "miner-1"}) == []
