from __future__ import annotations

import json
from pathlib import Path

import pytest
from tokenizers import Tokenizer, models

from neurons.tokenizer import EOS_TOKEN, TokenizerError, load_local_tokenizer, train_bpe

TEXTS = ["def add(a, b):\n    return a + b\n", "The quick brown fox jumps over the lazy dog.\n"] * 40


@pytest.fixture(scope="module")
def small_bpe():
    return train_bpe(TEXTS, vocab_size=320)


def test_train_bpe_round_trips(small_bpe) -> None:
    assert small_bpe.eos_id == 0
    assert 257 < small_bpe.vocab_size <= 320
    text = "def add(a, b): return 'ünïcode'"
    ids = small_bpe.encode(text)
    assert ids and small_bpe.tokenizer.decode(ids) == text
    assert small_bpe.sha256 == train_bpe(TEXTS, vocab_size=320).sha256


def test_train_bpe_rejects_tiny_vocab() -> None:
    with pytest.raises(TokenizerError, match="vocab_size"):
        train_bpe(TEXTS, vocab_size=200)


def test_load_tokenizer_json_file(small_bpe, tmp_path: Path) -> None:
    path = tmp_path / "tokenizer.json"
    small_bpe.tokenizer.save(str(path))
    loaded = load_local_tokenizer(path)
    assert loaded.sha256 == small_bpe.sha256
    assert loaded.eos_id == small_bpe.eos_id
    assert load_local_tokenizer(tmp_path).sha256 == small_bpe.sha256  # a directory holding tokenizer.json


def test_load_hf_directory_is_not_empty(small_bpe, tmp_path: Path) -> None:
    """transformers 5 trap: only vocab=/merges= build a real GPT-2 tokenizer; check it is not empty."""
    from transformers import GPT2TokenizerFast

    small_bpe.tokenizer.model.save(str(tmp_path))
    vocab = json.loads((tmp_path / "vocab.json").read_text())
    merge_lines = (tmp_path / "merges.txt").read_text().splitlines()
    merges = [tuple(line.split()) for line in merge_lines if line and not line.startswith("#")]
    hf = GPT2TokenizerFast(vocab=vocab, merges=merges, eos_token=EOS_TOKEN)
    assert len(hf) == small_bpe.vocab_size
    hf_dir = tmp_path / "hf"
    hf.save_pretrained(str(hf_dir))
    loaded = load_local_tokenizer(hf_dir)
    text = "return a + b"
    assert loaded.vocab_size == small_bpe.vocab_size
    assert loaded.encode(text) == small_bpe.encode(text)
    assert loaded.eos_id == small_bpe.eos_id


def test_refusals(tmp_path: Path) -> None:
    with pytest.raises(TokenizerError, match="not found"):
        load_local_tokenizer(tmp_path / "missing.json")
    (tmp_path / "bad.json").write_text("{not json")
    with pytest.raises(TokenizerError, match="not JSON"):
        load_local_tokenizer(tmp_path / "bad.json")
    (tmp_path / "other.json").write_text('{"a": 1}')
    with pytest.raises(TokenizerError, match="no 'model'"):
        load_local_tokenizer(tmp_path / "other.json")
    empty = tmp_path / "empty.json"
    Tokenizer(models.BPE()).save(str(empty))
    with pytest.raises(TokenizerError, match="empty vocabulary"):
        load_local_tokenizer(empty)


def test_missing_eos_is_an_error(small_bpe, tmp_path: Path) -> None:
    path = tmp_path / "tokenizer.json"
    small_bpe.tokenizer.save(str(path))
    with pytest.raises(TokenizerError, match="end-of-text"):
        load_local_tokenizer(path, eos_token="<nope>")
