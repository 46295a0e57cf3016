"""The validator's private secret: created private, kept across restarts, never a short one."""

from __future__ import annotations

import stat

from neurons.validator import SECRET_BYTES, _validator_secret


def test_the_secret_is_private_and_kept(tmp_path):
    path = tmp_path / "validator.secret"
    first = _validator_secret(path)
    assert len(first) == SECRET_BYTES
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert _validator_secret(path) == first


def test_a_secret_of_the_wrong_length_is_moved_aside_and_replaced(tmp_path):
    path = tmp_path / "validator.secret"
    path.write_bytes(b"")
    secret = _validator_secret(path)
    assert len(secret) == SECRET_BYTES and path.read_bytes() == secret
    assert (tmp_path / "validator.secret.corrupt").read_bytes() == b""


def test_a_damaged_score_book_is_moved_aside_and_the_validator_starts_empty(tmp_path, caplog):
    from neurons.validator import _load_book

    path = tmp_path / "scores.json"
    path.write_text('{"format_version": 2, "records": [{"uid": "not a number"')
    with caplog.at_level("ERROR"):
        book = _load_book(path)
    assert book.records == {} and "damaged" in caplog.text
    assert (tmp_path / "scores.json.corrupt").exists() and not path.exists()
    assert _load_book(path).records == {}  # no file: a fresh book, as on a first start
