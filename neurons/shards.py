"""Pre-tokenised token shards: the on-disk format, a streaming writer and a memory-mapped reader.

A shards directory holds ``index.json`` (the header, see docs/data.md) and per shard two raw
little-endian files: ``<name>.bin`` (the token stream, uint16 or uint32) and ``<name>.idx``
(uint64 offsets where each document starts, plus a final entry equal to the token count).
Documents are stored back to back, each followed by the end-of-text token. Raw arrays and JSON
only: nothing here ever unpickles.
"""

from __future__ import annotations

import hashlib
import json
import threading
from collections.abc import Sequence
from pathlib import Path
from typing import BinaryIO, Literal

import numpy as np
from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

FORMAT_NAME = "tessera-shards"
FORMAT_VERSION = 1
INDEX_FILE = "index.json"
DEFAULT_SHARD_TOKENS = 1 << 27  # 128 Mi tokens: 256 MiB per uint16 shard, easy to move around
# Bounds on a header read from anywhere (a published index is fetched from a bucket): 65 536
# shards of 2^27 tokens is 8 Ti tokens, far past any run; a header that large is ~10 MiB.
MAX_SHARDS = 1 << 16
MAX_SHARD_TOKENS = 1 << 40
MAX_INDEX_BYTES = 16 << 20

TokenDtype = Literal["uint16", "uint32"]


class ShardError(ValueError):
    """A shards directory is missing, malformed, or does not match what the caller needs."""


class ShardEntry(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True, strict=True)

    # no leading dot and no slash: a name becomes a file name in a cache and an object key
    name: str = Field(pattern=r"^[A-Za-z0-9_-][A-Za-z0-9_.-]{0,63}$")
    n_tokens: int = Field(ge=0, le=MAX_SHARD_TOKENS)
    n_docs: int = Field(ge=0, le=MAX_SHARD_TOKENS)
    sha256: str = Field(pattern=r"^[0-9a-f]{64}$", description="hash of the .bin file's bytes")

    def nbytes(self, dtype: str) -> int:
        """Size of the ``.bin`` file: what a download is checked against before it starts."""
        return self.n_tokens * np.dtype(dtype).itemsize


class ShardIndex(BaseModel):
    """The header in ``index.json``; its canonical hash is the data digest nodes compare."""

    model_config = ConfigDict(extra="forbid", frozen=True, strict=True)

    format: Literal["tessera-shards"] = FORMAT_NAME
    version: Literal[1] = FORMAT_VERSION
    dtype: TokenDtype
    vocab_size: int = Field(gt=0, le=1 << 32)
    eos_id: int = Field(ge=0)
    tokenizer_sha256: str = Field(pattern=r"^[0-9a-f]{64}$")
    tokenizer: str = Field(
        default="", max_length=200, description="the tokenizer's public name, e.g. mistralai/Mistral-7B-v0.3"
    )
    source: str = Field(default="", max_length=2000, description="free text: where the text came from")
    shards: list[ShardEntry] = Field(min_length=1, max_length=MAX_SHARDS)

    @model_validator(mode="after")
    def _consistent(self) -> ShardIndex:
        if self.eos_id >= self.vocab_size:
            raise ValueError(f"eos_id {self.eos_id} outside vocabulary of size {self.vocab_size}")
        if self.vocab_size > 1 << 16 and self.dtype == "uint16":
            raise ValueError(f"dtype uint16 cannot hold a vocabulary of {self.vocab_size}")
        if len({entry.name for entry in self.shards}) != len(self.shards):
            raise ValueError("shard names repeat")
        return self

    def canonical_bytes(self) -> bytes:
        """The header as sorted, compact JSON: the bytes published, and what the digest hashes."""
        return json.dumps(self.model_dump(mode="json"), sort_keys=True, separators=(",", ":")).encode()

    @property
    def digest(self) -> str:
        """The run's data digest: SHA-256 of ``canonical_bytes()`` (it holds every shard's hash)."""
        return hashlib.sha256(self.canonical_bytes()).hexdigest()

    @classmethod
    def parse(cls, raw: bytes | str, where: str) -> ShardIndex:
        """A header from untrusted bytes: size-capped, strict, or ``ShardError`` naming ``where``."""
        if len(raw) > MAX_INDEX_BYTES:
            raise ShardError(f"{where}: header of {len(raw)} bytes exceeds the {MAX_INDEX_BYTES}-byte cap")
        try:
            return cls.model_validate_json(raw)
        except ValidationError as exc:
            raise ShardError(f"{where} is not a valid shards header: {exc}") from exc


def dtype_for_vocab(vocab_size: int) -> TokenDtype:
    """The narrowest token dtype that holds every id of a vocabulary."""
    if vocab_size <= 1 << 16:
        return "uint16"
    if vocab_size <= 1 << 32:
        return "uint32"
    raise ShardError(f"vocab_size {vocab_size} does not fit in uint32 token ids")


class ShardWriter:
    """Streams documents into shards of about ``shard_tokens`` tokens each (a document never splits)."""

    def __init__(self, out_dir: Path, vocab_size: int, eos_id: int, shard_tokens: int = DEFAULT_SHARD_TOKENS):
        if not 0 <= eos_id < vocab_size:
            raise ShardError(f"eos_id {eos_id} outside vocabulary of size {vocab_size}")
        self.out_dir = Path(out_dir)
        self.out_dir.mkdir(parents=True, exist_ok=True)
        if (self.out_dir / INDEX_FILE).exists():
            raise ShardError(f"{self.out_dir} already holds shards; write into an empty directory")
        self.vocab_size = vocab_size
        self.eos_id = eos_id
        self.dtype: TokenDtype = dtype_for_vocab(vocab_size)
        self.shard_tokens = shard_tokens
        self._entries: list[ShardEntry] = []
        self._file: BinaryIO | None = None
        self._hash = hashlib.sha256()
        self._offsets: list[int] = []
        self._n_tokens = 0

    def add_document(self, ids: Sequence[int] | np.ndarray) -> None:
        """Append one document's token ids; the end-of-text token is added after it."""
        arr = np.asarray(ids, dtype=np.int64)
        if arr.size and (arr.min() < 0 or arr.max() >= self.vocab_size):
            raise ShardError(f"token id outside [0, {self.vocab_size}) in document")
        if self._file is None:
            self._open_next()
        assert self._file is not None
        data = np.append(arr, self.eos_id).astype(np.dtype(self.dtype).newbyteorder("<")).tobytes()
        self._file.write(data)
        self._hash.update(data)
        self._offsets.append(self._n_tokens)
        self._n_tokens += arr.size + 1
        if self._n_tokens >= self.shard_tokens:
            self._close_current()

    def finish(self, tokenizer_sha256: str, source: str = "", tokenizer: str = "") -> ShardIndex:
        """Close the last shard and write ``index.json``; returns the header."""
        self._close_current()
        if not self._entries:
            raise ShardError("no documents were written")
        index = ShardIndex(
            dtype=self.dtype,
            vocab_size=self.vocab_size,
            eos_id=self.eos_id,
            tokenizer_sha256=tokenizer_sha256,
            tokenizer=tokenizer,
            source=source,
            shards=self._entries,
        )
        (self.out_dir / INDEX_FILE).write_text(index.model_dump_json(indent=2) + "\n")
        return index

    def _open_next(self) -> None:
        name = f"shard-{len(self._entries):05d}"
        self._file = open(self.out_dir / f"{name}.bin", "wb")  # closed in _close_current
        self._hash = hashlib.sha256()
        self._offsets = []
        self._n_tokens = 0

    def _close_current(self) -> None:
        if self._file is None:
            return
        self._file.close()
        self._file = None
        name = f"shard-{len(self._entries):05d}"
        offsets = np.array([*self._offsets, self._n_tokens], dtype="<u8")
        offsets.tofile(self.out_dir / f"{name}.idx")
        self._entries.append(
            ShardEntry(name=name, n_tokens=self._n_tokens, n_docs=len(self._offsets), sha256=self._hash.hexdigest())
        )


class TokenShards:
    """Read-only, memory-mapped view of a shards directory.

    Shards are mapped on first use (``tokens``); a local directory maps and size-checks every
    file on open, so a damaged directory fails at start. A subclass that is given its header
    (``neurons.dataset.RemoteShards``) overrides ``_load_tokens`` to fetch a shard only when a
    sample from it is first asked for.
    """

    def __init__(self, directory: Path | str, index: ShardIndex | None = None):
        self.directory = Path(directory)
        self.index = index if index is not None else _read_index(self.directory)
        self._tokens: list[np.ndarray | None] = [None] * len(self.index.shards)
        self._offsets: list[np.ndarray | None] = [None] * len(self.index.shards)
        self._lock = threading.Lock()  # one load per shard even when threads ask at once
        if index is None:
            for i in range(len(self)):
                self.tokens(i)
                self._doc_offsets(i)

    @property
    def vocab_size(self) -> int:
        return self.index.vocab_size

    @property
    def eos_id(self) -> int:
        return self.index.eos_id

    @property
    def digest(self) -> str:
        """Hash of the header (which holds each shard's content hash): equal data ⇔ equal digest."""
        return self.index.digest

    @property
    def n_tokens(self) -> int:
        return sum(entry.n_tokens for entry in self.index.shards)

    @property
    def n_docs(self) -> int:
        return sum(entry.n_docs for entry in self.index.shards)

    def __len__(self) -> int:
        return len(self.index.shards)

    def tokens(self, shard: int) -> np.ndarray:
        """The token stream of one shard (a read-only memory map; slice it, don't copy it whole)."""
        mapped = self._tokens[shard]
        if mapped is None:
            with self._lock:
                mapped = self._tokens[shard]
                if mapped is None:
                    mapped = self._tokens[shard] = self._load_tokens(shard)
        return mapped

    def loaded(self) -> list[str]:
        """Names of the shards mapped so far (for a lazy reader: the ones fetched)."""
        return [entry.name for entry, mapped in zip(self.index.shards, self._tokens, strict=True) if mapped is not None]

    def document(self, shard: int, doc: int) -> np.ndarray:
        """One document's token ids, without its trailing end-of-text token."""
        offsets = self._doc_offsets(shard)
        start, end = int(offsets[doc]), int(offsets[doc + 1])
        return np.asarray(self.tokens(shard)[start : end - 1])

    def _load_tokens(self, shard: int) -> np.ndarray:
        entry = self.index.shards[shard]
        return self._map(entry, ".bin", self.index.dtype, entry.n_tokens)

    def _doc_offsets(self, shard: int) -> np.ndarray:
        offsets = self._offsets[shard]
        if offsets is None:
            entry = self.index.shards[shard]
            offsets = self._offsets[shard] = self._map(entry, ".idx", "uint64", entry.n_docs + 1)
        return offsets

    def require_vocab(self, model_vocab_size: int) -> None:
        """Refuse shards whose token ids could fall outside the model's embedding table."""
        if self.vocab_size > model_vocab_size:
            raise ShardError(
                f"shards use a vocabulary of {self.vocab_size} ids but the model has only {model_vocab_size}"
            )

    def verify(self) -> None:
        """Re-hash every shard file against the header (reads all data; for audits and tests)."""
        for i, entry in enumerate(self.index.shards):
            if hashlib.sha256(self.tokens(i).tobytes()).hexdigest() != entry.sha256:
                raise ShardError(f"shard {entry.name} content does not match its hash in {INDEX_FILE}")
            starts = self._doc_offsets(i).astype(np.int64)
            if int(starts[0]) != 0 or int(starts[-1]) != entry.n_tokens or np.any(np.diff(starts) <= 0):
                raise ShardError(f"shard {entry.name} document offsets do not rise from 0 to n_tokens")

    def _map(self, entry: ShardEntry, suffix: str, dtype: str, count: int) -> np.ndarray:
        path = self.directory / f"{entry.name}{suffix}"
        np_dtype = np.dtype(dtype).newbyteorder("<")
        try:
            size = path.stat().st_size
        except FileNotFoundError as exc:
            raise ShardError(f"shard file missing: {path}") from exc
        if size != count * np_dtype.itemsize:
            raise ShardError(f"{path} has {size} bytes, header says {count} x {np_dtype.itemsize}")
        if count == 0:
            return np.zeros(0, dtype=np_dtype)
        return np.memmap(path, dtype=np_dtype, mode="r", shape=(count,))


def _read_index(directory: Path) -> ShardIndex:
    path = directory / INDEX_FILE
    try:
        with path.open("rb") as handle:
            raw = handle.read(MAX_INDEX_BYTES + 1)
    except FileNotFoundError as exc:
        raise ShardError(f"no shards at {directory}: {INDEX_FILE} not found") from exc
    return ShardIndex.parse(raw, str(path))
