"""The embedded default corpus: text already on every machine, tokenised into shards once.

The text is the Python standard library's own: the pydoc topic pages (English reference prose)
and a capped, pseudo-shuffled selection of its ``.py`` sources (code, comments, docstrings).
Nothing is downloaded and nothing is copied into the repository. The same Python build gives the
same bytes, so every node on one machine builds identical shards; two Python builds can ship
slightly different sources, so nodes on different machines read the run's *published* copy
(``neurons.dataset``; the local subnet publishes this corpus to its own bucket), pinned by digest.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import sys
import sysconfig
import tempfile
from pathlib import Path

from neurons.progress import progress
from neurons.shards import INDEX_FILE, ShardWriter, TokenShards
from neurons.tokenizer import train_bpe

CORPUS_VERSION = 2  # 2: the header names its tokenizer (embedded_tokenizer_name)
DEFAULT_MAX_CHARS = 4_000_000  # ~1.3 M tokens at vocab 2048; builds in a few seconds on 2 cores
MAX_FILE_CHARS = 200_000  # skip generated tables and giant modules; they teach little
# Directories that are tests, vendored packages or mostly machine-generated tables.
_SKIP_DIRS = frozenset({"site-packages", "dist-packages", "test", "tests", "idle_test", "__pycache__",
                        "encodings", "pydoc_data", "lib2to3", "ensurepip", "config-3"})


def embedded_tokenizer_name(vocab_size: int) -> str:
    """The name the embedded corpus's header gives its tokenizer (hparams ``model.tokenizer``)."""
    return f"tessera-stdlib-bpe-{vocab_size}"


def stdlib_documents(max_chars: int = DEFAULT_MAX_CHARS) -> list[str]:
    """Pydoc topics, then stdlib sources in a fixed pseudo-random order, until ``max_chars``."""
    docs, total = [], 0
    for text in _pydoc_topics():
        if total >= max_chars:
            break
        docs.append(text)
        total += len(text)
    for path in _stdlib_sources():
        if total >= max_chars:
            break
        text = path.read_text(encoding="utf-8", errors="replace")
        if 0 < len(text) <= MAX_FILE_CHARS:
            docs.append(text)
            total += len(text)
    return docs


def ensure_embedded_data(cache_dir: Path | str, vocab_size: int = 2048, max_chars: int = DEFAULT_MAX_CHARS) -> Path:
    """Build (once) the stdlib shards and their tokenizer under ``cache_dir``; return the shards dir.

    Safe when several processes start at once: each builds into a private temporary directory
    and renames it into place; a loser of the race discards its copy and uses the winner's,
    which holds the same bytes.
    """
    cache_dir = Path(cache_dir)
    version = ".".join(str(v) for v in sys.version_info[:3])
    target = cache_dir / f"stdlib-v{CORPUS_VERSION}-py{version}-vocab{vocab_size}-chars{max_chars}"
    if (target / INDEX_FILE).is_file():
        TokenShards(target)  # validates the header and file sizes
        return target
    cache_dir.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=".building-", dir=cache_dir))
    try:
        with progress("preparing the embedded corpus (tokenizer + shards)"):  # a spinner, on a terminal only
            _build(staging, vocab_size, max_chars, source=f"python {version} stdlib, corpus v{CORPUS_VERSION}")
        try:
            os.rename(staging, target)
        except OSError:
            if not (target / INDEX_FILE).is_file():
                raise
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return target


def _build(out_dir: Path, vocab_size: int, max_chars: int, source: str) -> None:
    docs = stdlib_documents(max_chars)
    tokenizer = train_bpe(docs, vocab_size)
    writer = ShardWriter(out_dir, vocab_size=tokenizer.vocab_size, eos_id=tokenizer.eos_id)
    for ids in tokenizer.encode_batch(docs):
        writer.add_document(ids)
    writer.finish(tokenizer_sha256=tokenizer.sha256, source=source, tokenizer=embedded_tokenizer_name(vocab_size))
    tokenizer.tokenizer.save(str(out_dir / "tokenizer.json"))


def _pydoc_topics() -> list[str]:
    try:
        from pydoc_data.topics import topics
    except ImportError:  # some distributions split pydoc_data into a separate package
        return []
    return [topics[name] for name in sorted(topics)]


def _stdlib_sources() -> list[Path]:
    root = Path(sysconfig.get_paths()["stdlib"])
    found = []
    for dirpath, dirnames, filenames in os.walk(root):
        dirnames[:] = sorted(d for d in dirnames if d not in _SKIP_DIRS and not d.startswith("config-"))
        found.extend(Path(dirpath) / f for f in filenames if f.endswith(".py"))
    # Order by a hash of the relative path: a mix of modules under the cap, same order everywhere.
    return sorted(found, key=lambda p: hashlib.blake2b(p.relative_to(root).as_posix().encode()).digest())
