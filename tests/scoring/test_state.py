import json
import math
import os
import signal
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from scoring.state import MinerRecord, ScoreBook, ScoreBookError


def sample_book() -> ScoreBook:
    book = ScoreBook(last_window=7)
    rec = book.record(3, "hk3", window=2)
    rec.mu, rec.sigma, rec.loss_ema, rec.evidence_sum = 27.5, 6.1, 0.02, 4.2
    rec.evidence_weight, rec.evidence_window, rec.last_t = 1.49, 6, 3.0
    rec.sync, rec.last_reason = 1.0, "copy"
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


# A version-1 book as validators wrote it before the t statistic (sign indicator + Wilson bound).
OLD_BOOK = {
    "last_window": 7,
    "miners": [
        {"first_window": 2, "hotkey": "5EkTjg", "last_evaluated_window": 7, "last_loss_score": 0.0153,
         "last_reason": None, "last_seen_window": 7, "loss_ema": 0.016, "mu": 20.001, "sigma": 7.49,
         "sync": 1.0, "uid": 2, "unique_ema": 0.88, "unique_n": 4.68, "unique_pos": 4.68,
         "windows_evaluated": 6, "windows_rejected": 0},
        {"first_window": 3, "hotkey": "5FRoE9", "uid": 3, "unique_ema": -0.2, "unique_n": 2.0, "unique_pos": 0.5},
    ],
    "version": 1,
}


def test_old_format_book_loads_with_fresh_evidence(tmp_path: Path):
    path = tmp_path / "scores.json"
    path.write_text(json.dumps(OLD_BOOK, indent=1))
    book = ScoreBook.load(path)
    assert book.last_window == 7 and sorted(book.records) == [2, 3]
    rec = book.records[2]
    assert (rec.mu, rec.sigma, rec.loss_ema, rec.sync) == (20.001, 7.49, 0.016, 1.0)  # kept
    assert (rec.windows_evaluated, rec.last_evaluated_window, rec.hotkey) == (6, 7, "5EkTjg")
    assert (rec.evidence_sum, rec.evidence_weight, rec.evidence_window, rec.evidence_z) == (0.0, 0.0, None, 0.0)
    assert type(rec) is MinerRecord and book.records[3] == MinerRecord(uid=3, hotkey="5FRoE9", first_window=3)
    book.save(path)  # written back in today's format
    assert json.loads(path.read_text())["version"] == 2 and ScoreBook.load(path).records == book.records
    damaged = {**OLD_BOOK, "miners": [{**OLD_BOOK["miners"][1], "unique_n": "NaN"}]}
    path.write_text(json.dumps(damaged))
    with pytest.raises(ScoreBookError, match="unique_n"):
        ScoreBook.load(path)


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


# --- a damaged file is a ScoreBookError, whatever the damage --------------------------------------


def _book_text(**changes) -> str:
    data = sample_book().to_json()
    miner = data["miners"][0]
    for key, value in changes.items():
        if key in ("version", "last_window", "miners"):
            data[key] = value
        else:
            miner[key] = value
    return json.dumps(data)


@pytest.mark.parametrize(
    "content",
    [
        b"",
        b"\xff\xfe{}",  # not UTF-8
        b"[" * 100_000,  # deep nesting
        b'{"version": 1, "miners": [' + b"{" * 5000,
        _book_text()[:-7].encode(),  # truncated
        b"[]",
        b"null",
        _book_text(mu="NaN").replace('"NaN"', "NaN").encode(),
        _book_text(sigma="Infinity").replace('"Infinity"', "Infinity").encode(),
        _book_text().replace('"loss_ema": 0.02', '"loss_ema": 1e400').encode(),  # parses as inf
        _book_text(windows_evaluated=10**40).encode(),
        _book_text().replace('"windows_evaluated": 4', '"windows_evaluated": 1' + "0" * 5000).encode(),
        _book_text(uid="3").encode(),
        _book_text(uid=-1).encode(),
        _book_text(uid=True).encode(),
        _book_text(first_window=2.0).encode(),
        _book_text(hotkey=["hk3"]).encode(),
        _book_text(hotkey=None).encode(),
        _book_text(sigma=0.0).encode(),
        _book_text(last_reason={"a": 1}).encode(),
        _book_text(last_seen_window=10**12).encode(),
        _book_text(last_window="7").encode(),
        _book_text(miners={"3": {}}).encode(),
        _book_text(miners=[1, 2]).encode(),
        _book_text(version=True).encode(),
        _book_text(hotkey="\ud800").encode(),  # json.dumps writes the lone surrogate as an escape
        json.dumps({"version": 1, "miners": [{"uid": 1, "hotkey": "a", "first_window": 0}] * 2}).encode(),
    ],
)
def test_every_damaged_file_is_a_score_book_error_naming_it(tmp_path: Path, content: bytes):
    path = tmp_path / "scores.json"
    path.write_bytes(content)
    with pytest.raises(ScoreBookError, match="scores.json"):
        ScoreBook.load(path)


def test_a_directory_in_place_of_the_file_is_a_score_book_error(tmp_path: Path):
    (tmp_path / "scores.json").mkdir()
    with pytest.raises(ScoreBookError, match="cannot be read"):
        ScoreBook.load(tmp_path / "scores.json")


JSONISH = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats() | st.text(st.characters(exclude_categories=()), max_size=6),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=12), inner, max_size=4),
    max_leaves=20,
)
FIELDS = ["uid", "hotkey", "first_window", "mu", "sigma", "loss_ema", "sync", "last_reason", "windows_evaluated"]


@settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(
    miner=st.dictionaries(st.sampled_from(FIELDS) | st.text(max_size=5), JSONISH, max_size=6),
    top=st.dictionaries(st.sampled_from(["version", "last_window"]), JSONISH, max_size=2),
)
def test_arbitrary_json_loads_finite_or_is_a_score_book_error(tmp_path: Path, miner, top):
    path = tmp_path / "fuzz.json"
    path.write_text(json.dumps({"version": 1, "miners": [miner], **top}))
    try:
        book = ScoreBook.load(path)
    except ScoreBookError:
        return
    for rec in book.records.values():
        assert all(math.isfinite(v) for v in (rec.mu, rec.sigma, rec.loss_ema, rec.sync))
    book.save(path)  # whatever loads also saves


@settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(data=st.binary(max_size=300))
def test_arbitrary_bytes_load_or_are_a_score_book_error(tmp_path: Path, data: bytes):
    path = tmp_path / "bytes.json"
    path.write_bytes(data)
    try:
        ScoreBook.load(path)
    except ScoreBookError:
        pass


# --- a NaN never enters the book -------------------------------------------------------------------


@pytest.mark.parametrize("bad", [float("nan"), float("inf"), -float("inf"), "x", None, 10**400])
def test_a_non_finite_value_is_refused_at_assignment_and_saves_keep_working(tmp_path: Path, bad, caplog):
    book = sample_book()
    rec = book.records[3]
    with caplog.at_level("WARNING"):
        rec.loss_ema = bad
        rec.sigma = bad
    assert rec.loss_ema == 0.02 and rec.sigma == 6.1  # the previous values are kept
    if bad is not None:
        assert "refused" in caplog.text
    rec.last_loss_score = float("nan")
    assert rec.last_loss_score is None
    fresh = MinerRecord(uid=9, hotkey="h", first_window=0, mu=float("nan"))
    assert fresh.mu == 25.0  # the default, not NaN
    book.records[9] = fresh

    path = tmp_path / "book.json"
    book.save(path)
    book.save(path)
    assert ScoreBook.load(path).records == book.records


def test_numpy_like_scalars_are_stored_as_plain_floats(tmp_path: Path):
    import torch

    rec = MinerRecord(uid=1, hotkey="h", first_window=0)
    rec.loss_ema = torch.tensor(0.25)
    rec.sigma = 0.0  # a collapsed sigma is refused too: the rating needs sigma > 0
    assert type(rec.loss_ema) is float and rec.loss_ema == 0.25 and rec.sigma > 0
    book = ScoreBook({1: rec})
    book.save(tmp_path / "b.json")
    assert ScoreBook.load(tmp_path / "b.json").records[1].loss_ema == 0.25


def test_the_file_is_private(tmp_path: Path):
    import stat

    path = tmp_path / "book.json"
    sample_book().save(path)
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
