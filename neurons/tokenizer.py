"""Tokenizers for shard preparation: train the embedded byte-level BPE, or load an operator's own.

Everything ends up as a ``tokenizers.Tokenizer`` (the Rust one), so encoding, hashing and saving
work the same whatever the source. Loading an operator's directory goes through transformers
only to find the files; the result is checked to be non-empty, because a misnamed argument in
transformers 5 silently yields a tokenizer without a vocabulary.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

EOS_TOKEN = "<|endoftext|>"
# End-of-text spellings of common tokenizer families, tried in order when none is named.
EOS_CANDIDATES = ("<|endoftext|>", "</s>", "<|end_of_text|>", "<eos>", "<|eos|>", "<|im_end|>")
_BYTE_ALPHABET = 256


class TokenizerError(ValueError):
    """A tokenizer could not be loaded or trained, is empty, or lacks an end-of-text token."""


@dataclass(frozen=True)
class LocalTokenizer:
    tokenizer: Tokenizer
    eos_id: int

    @property
    def vocab_size(self) -> int:
        return self.tokenizer.get_vocab_size(with_added_tokens=True)

    @property
    def sha256(self) -> str:
        return tokenizer_sha256(self.tokenizer)

    def encode(self, text: str) -> list[int]:
        """Raw ids of ``text``: no BOS/EOS from a post-processor (shards add EOS themselves)."""
        return self.tokenizer.encode(text, add_special_tokens=False).ids

    def encode_batch(self, texts: list[str]) -> list[list[int]]:
        return [e.ids for e in self.tokenizer.encode_batch(texts, add_special_tokens=False)]


def tokenizer_sha256(tokenizer: Tokenizer) -> str:
    """Hash of the tokenizer's full JSON definition (vocabulary, merges, normalisation)."""
    return hashlib.sha256(tokenizer.to_str().encode()).hexdigest()


def train_bpe(texts: Iterable[str], vocab_size: int) -> LocalTokenizer:
    """Byte-level BPE with one special token (end of text, id 0); deterministic for equal input."""
    if vocab_size <= _BYTE_ALPHABET + 1:
        raise TokenizerError(f"vocab_size must exceed {_BYTE_ALPHABET + 1} (bytes + end of text), got {vocab_size}")
    if vocab_size > 1 << 16:
        raise TokenizerError(f"embedded BPE vocab_size must fit uint16, got {vocab_size}")
    tokenizer = Tokenizer(models.BPE())
    tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tokenizer.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=[EOS_TOKEN],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tokenizer.train_from_iterator(texts, trainer=trainer)
    return _checked(tokenizer, EOS_TOKEN, source="trained BPE")


def load_local_tokenizer(path: Path | str, eos_token: str | None = None) -> LocalTokenizer:
    """Load a ``tokenizer.json`` file, or a local Hugging Face tokenizer directory (never downloads)."""
    path = Path(path)
    if path.is_file():
        return _checked(_tokenizer_from_json(path), eos_token, source=str(path))
    if (path / "tokenizer.json").is_file():
        return load_local_tokenizer(path / "tokenizer.json", eos_token)
    if path.is_dir():
        return _load_hf_directory(path, eos_token)
    raise TokenizerError(f"tokenizer not found: {path} (give a tokenizer.json or a local tokenizer directory)")


def _tokenizer_from_json(path: Path) -> Tokenizer:
    # The Rust binding raises a bare Exception on malformed input, so the shape is checked here
    # first and a file that passes this but is still broken surfaces the binding's own message.
    text = path.read_text(encoding="utf-8")
    try:
        spec = json.loads(text)
    except json.JSONDecodeError as exc:
        raise TokenizerError(f"{path} is not JSON: {exc}") from exc
    if not isinstance(spec, dict) or not isinstance(spec.get("model"), dict):
        raise TokenizerError(f"{path} is not a tokenizers definition (no 'model' object)")
    return Tokenizer.from_str(text)


def _load_hf_directory(path: Path, eos_token: str | None) -> LocalTokenizer:
    from transformers import AutoTokenizer  # heavy import, only for this path

    try:
        hf = AutoTokenizer.from_pretrained(str(path), local_files_only=True)
    except (OSError, ValueError, KeyError) as exc:
        raise TokenizerError(f"{path} is not a loadable local tokenizer directory: {exc}") from exc
    backend = getattr(hf, "backend_tokenizer", None)
    if not isinstance(backend, Tokenizer):
        raise TokenizerError(f"{path} has no fast (tokenizers-backed) tokenizer; export a tokenizer.json")
    return _checked(backend, eos_token or getattr(hf, "eos_token", None), source=str(path))


def _checked(tokenizer: Tokenizer, eos_token: str | None, source: str) -> LocalTokenizer:
    if tokenizer.get_vocab_size(with_added_tokens=True) == 0:
        raise TokenizerError(f"{source}: tokenizer has an empty vocabulary")
    if not tokenizer.encode("def f(x): return x", add_special_tokens=False).ids:
        raise TokenizerError(f"{source}: tokenizer encodes text to nothing")
    candidates = (eos_token,) if eos_token else EOS_CANDIDATES
    for name in candidates:
        eos_id = tokenizer.token_to_id(name) if name else None
        if eos_id is not None:
            return LocalTokenizer(tokenizer, eos_id)
    raise TokenizerError(f"{source}: no end-of-text token among {list(candidates)}; name one explicitly")
