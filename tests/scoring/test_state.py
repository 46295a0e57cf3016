import json
import os
import signal
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from scoring.state import MinerRecord, ScoreBook, ScoreBookError


def sample_book() -> ScoreBook:
    book = ScoreBook(last_window=7)
    rec = book.record(3, "hk3", window=2)
    rec.mu, rec.sigma, rec.loss_ema, rec.unique_ema = 27.5, 6.1, 0.02, 0.4
    rec.unique_pos, rec.unique_n, rec.sync, rec.last_reason = 2.5, 3.1, 1.0, "copy"
    rec.last_evaluated_window, rec.windows_evaluated = 6, 4
    book.record(1, "hk1", window=7)
    return book


def test_json_round_trip(tmp_path: Path):
    book = sample_book()
    again = ScoreBook.from_json(json.loads(json.dumps(book.to_json())))
    assert again.records == book.records and again.last_window == 7
    path = tmp_path / "sub" / "book.json"
    book.save(path)
    loaded = ScoreBook.load(path)
    assert loaded.records == book.records and loaded.last_window == 7
    assert [p.name for p in path.parent.iterdir()] == ["book.json"]  # no temp files left


def test_missing_file_is_empty_and_bad_files_are_named(tmp_path: Path):
    assert ScoreBook.load(tmp_path / "none.json").records == {}
    bad = tmp_path / "bad.json"
    bad.write_text("{not json")
    with pytest.raises(ScoreBookError, match="bad.json"):
        ScoreBook.load(bad)
    bad.write_text(json.dumps({"version": 99}))
    with pytest.raises(ScoreBookError, match="version"):
        ScoreBook.load(bad)
    bad.write_text(
        json.dumps({"version": 1, "miners": [{"uid": 1, "hotkey": "h", "first_window": 0, "x": 1}]})
    )
    with pytest.raises(ScoreBookError, match="unknown"):
        ScoreBook.load(bad)


def test_new_hotkey_on_uid_starts_fresh_and_reconcile_drops_stale():
    book = sample_book()
    assert book.record(3, "hk3", 9).mu == 27.5
    fresh = book.record(3, "other", 9)
    assert fresh == MinerRecord(uid=3, hotkey="other", first_window=9)
    book = sample_book()
    assert book.reconcile({3: "new", 5: "hk5"}) == [1, 3]
    assert book.records == {}


def test_survives_sigkill_during_saves(tmp_path: Path):
    path = tmp_path / "book.json"
    script = textwrap.dedent(
        f"""
        import sys
        from scoring.state import ScoreBook
        book = ScoreBook()
        for i in range(1_000_000):
            rec = book.record(i % 50, "hk", i)
            rec.windows_evaluated = i
            book.last_window = i
            book.save({str(path)!r})
            if i == 5:
                print("ready", flush=True)
        """
    )
    root = Path(__file__).resolve().parents[2]
    proc = subprocess.Popen([sys.executable, "-c", script], cwd=root, stdout=subprocess.PIPE, text=True)
    try:
        assert proc.stdout.readline().strip() == "ready"
        os.kill(proc.pid, signal.SIGKILL)
    finally:
        proc.wait(timeout=30)
    book = ScoreBook.load(path)  # never torn: the old or the new file
    assert book.last_window >= 5
    assert len(book.records) == min(50, book.last_window + 1)
