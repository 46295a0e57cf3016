"""Progress bars appear on a terminal only: never in logs, JSON output or captured streams."""

from __future__ import annotations

import io

import pytest

from neurons.progress import progress, progress_enabled


class Terminal(io.StringIO):
    def isatty(self) -> bool:
        return True


def run_steps(stream, total=3, **kw) -> None:
    with progress("replaying windows", total=total, stream=stream, **kw) as advance:
        for _ in range(total):
            advance()


def test_a_terminal_gets_a_bar(monkeypatch) -> None:
    monkeypatch.delenv("TESSERA_NO_PROGRESS", raising=False)
    screen = Terminal()
    run_steps(screen)
    assert "replaying windows" in screen.getvalue()


def test_a_pipe_or_file_gets_nothing(monkeypatch) -> None:
    monkeypatch.delenv("TESSERA_NO_PROGRESS", raising=False)
    captured = io.StringIO()  # what a log file, a pipe or a test's capture looks like
    run_steps(captured)
    assert captured.getvalue() == "" and not progress_enabled(captured)


@pytest.mark.parametrize(("env", "kw"), [("1", {}), (None, {"min_total": 5})])
def test_switched_off_or_too_short_gets_nothing(monkeypatch, env, kw) -> None:
    if env is None:
        monkeypatch.delenv("TESSERA_NO_PROGRESS", raising=False)
    else:
        monkeypatch.setenv("TESSERA_NO_PROGRESS", env)
    screen = Terminal()
    run_steps(screen, **kw)
    assert screen.getvalue() == ""


def test_a_spinner_without_a_total(monkeypatch) -> None:
    monkeypatch.delenv("TESSERA_NO_PROGRESS", raising=False)
    screen = Terminal()
    with progress("downloading checkpoint 7", stream=screen) as advance:
        advance()
    assert "downloading checkpoint 7" in screen.getvalue()
