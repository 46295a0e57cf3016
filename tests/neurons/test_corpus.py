from __future__ import annotations

from pathlib import Path

from tokenizers import Tokenizer

from neurons.corpus import ensure_embedded_data, stdlib_documents
from neurons.shards import TokenShards
from neurons.tokenizer import EOS_TOKEN


def test_stdlib_documents_capped_and_deterministic() -> None:
    docs = stdlib_documents(max_chars=200_000)
    assert docs == stdlib_documents(max_chars=200_000)
    total = sum(len(d) for d in docs)
    assert 200_000 <= total < 200_000 + 200_001  # stops at the first document past the cap
    assert any("def " in d for d in docs)


def test_embedded_shards_are_valid(corpus: TokenShards, hparams) -> None:
    corpus.verify()
    assert 0 < corpus.vocab_size <= hparams.model.vocab_size
    assert corpus.n_tokens > 200_000
    assert corpus.n_docs > 10
    assert corpus.index.source.startswith("python ")


def test_embedded_tokenizer_non_empty_and_round_trips(corpus_dir: Path, corpus: TokenShards) -> None:
    tokenizer = Tokenizer.from_file(str(corpus_dir / "tokenizer.json"))
    assert tokenizer.get_vocab_size() == corpus.vocab_size
    assert tokenizer.token_to_id(EOS_TOKEN) == corpus.eos_id
    text = 'def greet(name):\n    """Say hello."""\n    return f"Hello, {name}!"\n'
    ids = tokenizer.encode(text).ids
    assert 0 < len(ids) < len(text) / 2  # BPE actually compresses code
    assert tokenizer.decode(ids) == text
    assert tokenizer.decode(corpus.document(0, 0).tolist())  # stored tokens decode to text


def test_ensure_is_cached(corpus_dir: Path, corpus_args: dict[str, int]) -> None:
    before = (corpus_dir / "index.json").stat().st_mtime_ns
    assert ensure_embedded_data(corpus_dir.parent, **corpus_args) == corpus_dir
    assert (corpus_dir / "index.json").stat().st_mtime_ns == before  # not rebuilt
    assert [p.name for p in corpus_dir.parent.iterdir()] == [corpus_dir.name]  # no staging left behind


def test_build_is_deterministic(tmp_path: Path) -> None:
    a = ensure_embedded_data(tmp_path / "a", vocab_size=400, max_chars=150_000)
    b = ensure_embedded_data(tmp_path / "b", vocab_size=400, max_chars=150_000)
    assert TokenShards(a).digest == TokenShards(b).digest
    assert (a / "tokenizer.json").read_bytes() == (b / "tokenizer.json").read_bytes()
    assert not [p for p in (tmp_path / "a").iterdir() if p.name.startswith(".building-")]
