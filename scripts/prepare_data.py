"""Turn text files into tessera token shards with a tokenizer the operator already has locally.

    python scripts/prepare_data.py --tokenizer path/to/tokenizer.json --out data/shards corpus/ extra.txt
    python scripts/prepare_data.py --tokenizer path/to/hf-tokenizer-dir --out data/shards --json corpus/
    python scripts/prepare_data.py --embedded --out data/cache --json   # the built-in stdlib corpus
    python scripts/prepare_data.py --out data/shards --publish https://HOST/BUCKET/PREFIX --json  # publish

``--publish URL`` uploads the shards (new or already in --out) and their header to an S3 location,
path style ``https://host/bucket/prefix[?region=R]``, with the write key from the environment
(TESSERA_BUCKET_WRITE_KEY_ID, TESSERA_BUCKET_WRITE_SECRET; never printed). The summary then
holds ``data_url`` and ``data_digest``: the two values the run's origin record carries.

Inputs are files or directories (searched recursively, sorted, for --glob patterns). A ``.jsonl``
file yields one document per line (the --text-field of each JSON object); any other file is one
document. Files are read in sorted order, so equal inputs give equal shards. Format: docs/data.md.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from collections.abc import Iterator
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))  # runnable from a plain checkout

from neurons.corpus import ensure_embedded_data  # noqa: E402
from neurons.dataset import DataLocation, PublishReport, publish_dataset  # noqa: E402
from neurons.shards import DEFAULT_SHARD_TOKENS, INDEX_FILE, ShardError, ShardWriter, TokenShards  # noqa: E402
from neurons.tokenizer import LocalTokenizer, TokenizerError, load_local_tokenizer  # noqa: E402
from storage import StorageError  # noqa: E402
from storage.s3 import S3Store  # noqa: E402

WRITE_KEY_ENV = ("TESSERA_BUCKET_WRITE_KEY_ID", "TESSERA_BUCKET_WRITE_SECRET")

_ENCODE_BATCH = 256  # documents per encode_batch call: parallel in Rust, bounded memory


class InputError(ValueError):
    """An input path is missing or a JSON line lacks the text field."""


def input_files(paths: list[Path], patterns: list[str]) -> list[Path]:
    files: list[Path] = []
    for path in paths:
        if path.is_file():
            files.append(path)
        elif path.is_dir():
            files.extend(sorted({f for pattern in patterns for f in path.rglob(pattern) if f.is_file()}))
        else:
            raise InputError(f"input not found: {path}")
    return files


def documents(files: list[Path], text_field: str) -> Iterator[str]:
    for path in files:
        if path.suffix == ".jsonl":
            yield from _jsonl_documents(path, text_field)
        else:
            text = path.read_text(encoding="utf-8", errors="replace")
            if text.strip():
                yield text


def _jsonl_documents(path: Path, text_field: str) -> Iterator[str]:
    with path.open(encoding="utf-8", errors="replace") as handle:
        for line_no, line in enumerate(handle, 1):
            if not line.strip():
                continue
            try:
                record = json.loads(line)
            except json.JSONDecodeError as exc:
                raise InputError(f"{path}:{line_no}: not JSON: {exc}") from exc
            text = record.get(text_field) if isinstance(record, dict) else None
            if not isinstance(text, str):
                raise InputError(f"{path}:{line_no}: no string field '{text_field}'")
            if text.strip():
                yield text


def write_shards(
    docs: Iterator[str], tokenizer: LocalTokenizer, out: Path, shard_tokens: int, source: str, tokenizer_name: str = ""
) -> Path:
    writer = ShardWriter(out, vocab_size=tokenizer.vocab_size, eos_id=tokenizer.eos_id, shard_tokens=shard_tokens)
    pending: list[str] = []
    for doc in docs:
        pending.append(doc)
        if len(pending) == _ENCODE_BATCH:
            _flush(writer, tokenizer, pending)
    _flush(writer, tokenizer, pending)
    writer.finish(tokenizer_sha256=tokenizer.sha256, source=source, tokenizer=tokenizer_name)
    tokenizer.tokenizer.save(str(out / "tokenizer.json"))
    return out


def _flush(writer: ShardWriter, tokenizer: LocalTokenizer, pending: list[str]) -> None:
    for ids in tokenizer.encode_batch(pending):
        writer.add_document(ids)
    pending.clear()


def publish(shards_dir: Path, url: str, env: dict[str, str]) -> PublishReport:
    """Upload ``shards_dir`` to ``url`` with the write key from ``env`` (never printed)."""
    missing = [name for name in WRITE_KEY_ENV if not env.get(name)]
    if missing:
        raise InputError(f"--publish needs the bucket's write key in the environment: set {' and '.join(missing)}")
    location = DataLocation.parse(url)
    if location.key_id:
        raise InputError("--publish takes the write key from the environment, not from the URL")
    store = S3Store(location.endpoint_url, location.bucket, env[WRITE_KEY_ENV[0]], env[WRITE_KEY_ENV[1]], location.region)
    return publish_dataset(shards_dir, store, location)


def summary(shards_dir: Path, seconds: float) -> dict:
    shards = TokenShards(shards_dir)
    return {
        "out": str(shards_dir),
        "shards": len(shards),
        "n_tokens": shards.n_tokens,
        "n_docs": shards.n_docs,
        "vocab_size": shards.vocab_size,
        "eos_id": shards.eos_id,
        "dtype": shards.index.dtype,
        "tokenizer_sha256": shards.index.tokenizer_sha256,
        "tokenizer": shards.index.tokenizer,
        "digest": shards.digest,
        "seconds": round(seconds, 3),
    }


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("inputs", nargs="*", type=Path, help="text files or directories")
    parser.add_argument("--out", type=Path, required=True, help="shards directory to create (or cache dir with --embedded)")
    parser.add_argument("--tokenizer", type=Path, help="tokenizer.json file or local Hugging Face tokenizer directory")
    parser.add_argument("--eos-token", help="end-of-text token (default: the tokenizer's, or a common spelling)")
    parser.add_argument("--glob", action="append", default=None, help="file pattern inside directories (repeatable; default *.txt, *.md, *.jsonl)")
    parser.add_argument("--text-field", default="text", help="field holding the text in .jsonl records")
    parser.add_argument("--shard-tokens", type=int, default=DEFAULT_SHARD_TOKENS, help="start a new shard after this many tokens")
    parser.add_argument("--embedded", action="store_true", help="build the embedded stdlib corpus instead")
    parser.add_argument("--vocab-size", type=int, default=2048, help="BPE vocabulary for --embedded")
    parser.add_argument("--tokenizer-name", default="", help="the tokenizer's public name, recorded in the header (e.g. mistralai/Mistral-7B-v0.3)")
    parser.add_argument("--publish", metavar="URL", help="upload shards + header to https://host/bucket/prefix[?region=R] (write key from TESSERA_BUCKET_WRITE_KEY_ID/_SECRET)")
    parser.add_argument("--json", action="store_true", help="print a JSON summary on stdout")
    return parser.parse_args(argv)


def build(args: argparse.Namespace) -> Path:
    """The shards directory: the embedded corpus, new shards from the inputs, or (publishing
    without inputs) the shards already in --out."""
    if args.embedded:
        return ensure_embedded_data(args.out, vocab_size=args.vocab_size)
    if args.publish and not args.inputs and (args.out / INDEX_FILE).is_file():
        return args.out
    if args.tokenizer is None or not args.inputs:
        raise InputError("give --tokenizer and at least one input (or --embedded, or --publish an existing --out)")
    tokenizer = load_local_tokenizer(args.tokenizer, args.eos_token)
    files = input_files(args.inputs, args.glob or ["*.txt", "*.md", "*.jsonl"])
    if not files:
        raise InputError("no input files matched")
    return write_shards(documents(files, args.text_field), tokenizer, args.out, args.shard_tokens,
                        source=f"prepare_data: {len(files)} files, tokenizer {args.tokenizer.name}",
                        tokenizer_name=args.tokenizer_name)


def main(argv: list[str] | None = None, env: dict[str, str] | None = None) -> int:
    args = parse_args(argv)
    started = time.perf_counter()
    try:
        out = build(args)
        report = publish(out, args.publish, dict(os.environ) if env is None else env) if args.publish else None
    except (InputError, TokenizerError, ShardError, StorageError, OSError) as exc:
        print(f"prepare_data: error: {exc}", file=sys.stderr)
        return 2
    result = summary(out, time.perf_counter() - started)
    if report is not None:
        result |= {"data_url": report.data_url, "data_digest": report.data_digest,
                   "uploaded": report.uploaded, "already_there": report.already_there,
                   "bytes_uploaded": report.bytes_uploaded}
    if args.json:
        print(json.dumps(result, indent=2))
    else:
        print(f"wrote {result['n_tokens']} tokens in {result['n_docs']} documents, {result['shards']} shard(s) to {out}")
        if report is not None:
            print(f"published to {report.data_url}: data_digest {report.data_digest}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
