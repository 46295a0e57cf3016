from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from neurons.shards import INDEX_FILE, ShardError, ShardWriter, TokenShards, dtype_for_vocab

TOKHASH = "ab" * 32


def _write(out: Path, docs: list[list[int]], vocab_size: int = 1000, shard_tokens: int = 1 << 20) -> TokenShards:
    writer = ShardWriter(out, vocab_size=vocab_size, eos_id=0, shard_tokens=shard_tokens)
    for doc in docs:
        writer.add_document(doc)
    writer.finish(tokenizer_sha256=TOKHASH, source="test")
    return TokenShards(out)


def test_round_trip_documents_and_header(tmp_path: Path) -> None:
    docs = [[5, 6, 7], [999], [], [1, 2, 3, 4, 5]]
    shards = _write(tmp_path, docs)
    assert len(shards) == 1
    assert shards.n_docs == 4
    assert shards.n_tokens == sum(len(d) + 1 for d in docs)
    assert [shards.document(0, i).tolist() for i in range(4)] == docs
    assert shards.tokens(0).tolist() == [5, 6, 7, 0, 999, 0, 0, 1, 2, 3, 4, 5, 0]
    assert shards.index.dtype == "uint16" and shards.vocab_size == 1000 and shards.eos_id == 0
    assert shards.index.tokenizer_sha256 == TOKHASH
    shards.verify()


def test_documents_never_split_across_shards(tmp_path: Path) -> None:
    docs = [list(range(1, 8))] * 5  # 8 tokens each with eos
    shards = _write(tmp_path, docs, shard_tokens=12)
    assert len(shards) == 3  # 16 | 16 | 8 tokens
    assert [e.n_tokens for e in shards.index.shards] == [16, 16, 8]
    assert shards.document(2, 0).tolist() == docs[0]
    shards.verify()


def test_large_vocab_uses_uint32(tmp_path: Path) -> None:
    assert dtype_for_vocab(65536) == "uint16"
    assert dtype_for_vocab(65537) == "uint32"
    shards = _write(tmp_path, [[70000, 1]], vocab_size=100_000)
    assert shards.index.dtype == "uint32"
    assert shards.document(0, 0).tolist() == [70000, 1]


def test_digest_tracks_content(tmp_path: Path) -> None:
    a = _write(tmp_path / "a", [[1, 2, 3]])
    b = _write(tmp_path / "b", [[1, 2, 3]])
    c = _write(tmp_path / "c", [[1, 2, 4]])
    assert a.digest == b.digest != c.digest


def test_refuses_out_of_vocab_ids(tmp_path: Path) -> None:
    writer = ShardWriter(tmp_path, vocab_size=10, eos_id=0)
    with pytest.raises(ShardError, match="outside"):
        writer.add_document([3, 10])
    with pytest.raises(ShardError, match="eos_id"):
        ShardWriter(tmp_path / "x", vocab_size=10, eos_id=10)


def test_refuses_empty_and_existing(tmp_path: Path) -> None:
    with pytest.raises(ShardError, match="no documents"):
        ShardWriter(tmp_path / "empty", vocab_size=10, eos_id=0).finish(TOKHASH)
    _write(tmp_path / "full", [[1]])
    with pytest.raises(ShardError, match="already holds"):
        ShardWriter(tmp_path / "full", vocab_size=10, eos_id=0)


def test_reader_refusals(tmp_path: Path) -> None:
    with pytest.raises(ShardError, match="not found"):
        TokenShards(tmp_path / "nothing")
    _write(tmp_path, [[1, 2, 3]])
    with (tmp_path / "shard-00000.bin").open("ab") as handle:
        handle.write(b"\x00\x00")
    with pytest.raises(ShardError, match="bytes"):
        TokenShards(tmp_path)
    header = json.loads((tmp_path / INDEX_FILE).read_text())
    header["surprise"] = 1
    (tmp_path / INDEX_FILE).write_text(json.dumps(header))
    with pytest.raises(ShardError, match="not a valid shards header"):
        TokenShards(tmp_path)


def test_verify_detects_changed_tokens(tmp_path: Path) -> None:
    _write(tmp_path, [[1, 2, 3]])
    path = tmp_path / "shard-00000.bin"
    data = np.fromfile(path, dtype="<u2")
    data[1] = 9
    data.tofile(path)
    with pytest.raises(ShardError, match="does not match its hash"):
        TokenShards(tmp_path).verify()


def test_require_vocab(tmp_path: Path) -> None:
    shards = _write(tmp_path, [[1]], vocab_size=3000)
    shards.require_vocab(3000)
    with pytest.raises(ShardError, match="vocabulary"):
        shards.require_vocab(2048)
