"""Measure the published-dataset path: publish, first fetch, cached re-verify, and how many shards
a miner's first window needs.

    python scripts/bench_dataset.py --json
    python scripts/bench_dataset.py --shards 4 --shard-mib 64 --preset 150M --corpus-tokens 10e9 --json

Part 1 writes ``--shards`` shards of ``--shard-mib`` MiB of random uint16 tokens, publishes them to
a SeaweedFS server on loopback (neurons.localnet.seaweedfs), then opens them as a node does:
first fetch (download + sha256 + atomic write) and a second open on the same cache (sha256 of the
cached files only). Part 2 needs no data: for a corpus of ``--corpus-tokens`` in shards of
``--shard-tokens``, it counts the distinct shards (and bytes) miner uid 1 touches in window 0 of
``--preset`` (inner_steps x batch_size samples of seq_len), i.e. what it downloads before its
first inner step.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))  # runnable from a plain checkout

import numpy as np  # noqa: E402

from neurons.data import SampleSpace, assigned_indices  # noqa: E402
from neurons.dataset import DataLocation, open_dataset, publish_dataset  # noqa: E402
from neurons.localnet.seaweedfs import READ_ONLY, READ_WRITE, Identity, SeaweedServer  # noqa: E402
from neurons.shards import ShardEntry, ShardIndex, ShardWriter, TokenShards  # noqa: E402
from protocol.hparams import load_hparams  # noqa: E402
from storage.endpoints import EndpointPolicy  # noqa: E402


def synthetic_shards(out: Path, shards: int, shard_mib: int) -> TokenShards:
    tokens = shard_mib * (1 << 20) // 2
    writer = ShardWriter(out, vocab_size=32768, eos_id=0, shard_tokens=tokens)
    rng = np.random.default_rng(0)
    for _ in range(shards):
        writer.add_document(rng.integers(1, 32768, size=tokens - 1))
    writer.finish(tokenizer_sha256="0" * 64, source="bench_dataset")
    return TokenShards(out)


def measure_s3(shards: int, shard_mib: int) -> dict:
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        local = synthetic_shards(root / "shards", shards, shard_mib)
        writer = Identity.generate("w", READ_WRITE, ["bench"])
        reader = Identity.generate("r", READ_ONLY, ["bench"])
        with SeaweedServer(root / "s3", [writer, reader]) as server:
            location = DataLocation(server.endpoint_url, "bench", "run", "us-east-1")
            started = time.perf_counter()
            report = publish_dataset(local.directory, server.store(writer, "bench"), location)
            publish_s = time.perf_counter() - started
            read = DataLocation(server.endpoint_url, "bench", "run", "us-east-1", reader.access_key, reader.secret_key)
            timings = []
            for _ in range(2):  # first: download + verify; second: cached files re-hashed
                started = time.perf_counter()
                remote = open_dataset(read.url(), report.data_digest, root / "cache", policy=EndpointPolicy(allow_loopback=True))
                remote.verify()
                timings.append((time.perf_counter() - started, len(remote.fetched)))
    mib = shards * shard_mib
    return {
        "shards": shards, "shard_mib": shard_mib,
        "publish_seconds": round(publish_s, 3), "publish_mib_s": round(mib / publish_s, 1),
        "first_open_seconds": round(timings[0][0], 3), "first_open_mib_s": round(mib / timings[0][0], 1),
        "first_open_fetched": timings[0][1],
        "cached_open_seconds": round(timings[1][0], 3), "cached_open_mib_s": round(mib / timings[1][0], 1),
        "cached_open_fetched": timings[1][1],
    }


def first_window_need(preset: str, corpus_tokens: int, shard_tokens: int) -> dict:
    hp = load_hparams(preset)
    count = -(-corpus_tokens // shard_tokens)
    sizes = [shard_tokens] * (count - 1) + [corpus_tokens - shard_tokens * (count - 1)]
    index = ShardIndex(
        dtype="uint16" if hp.model.vocab_size <= 1 << 16 else "uint32", vocab_size=hp.model.vocab_size, eos_id=0,
        tokenizer_sha256="0" * 64,
        shards=[ShardEntry(name=f"s{i}", n_tokens=n, n_docs=1, sha256="0" * 64) for i, n in enumerate(sizes)],
    )
    space = SampleSpace.build(TokenShards("/nonexistent", index=index), hp.training.seq_len, "train")
    samples = hp.training.inner_steps * hp.training.batch_size
    touched = {int(np.searchsorted(space.cumulative, i, side="right")) - 1 for i in assigned_indices(space, hp.seed, 1, 0, samples)}
    itemsize = 2 if index.dtype == "uint16" else 4
    return {
        "preset": preset, "corpus_tokens": corpus_tokens, "shard_tokens": shard_tokens, "shards": count,
        "samples_per_window": samples, "shards_touched": len(touched),
        "bytes_needed": sum(sizes[i] for i in touched) * itemsize, "corpus_bytes": corpus_tokens * itemsize,
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--shards", type=int, default=4)
    parser.add_argument("--shard-mib", type=int, default=32)
    parser.add_argument("--preset", default="150M")
    parser.add_argument("--corpus-tokens", type=float, default=10e9, help="e.g. 10e9: FineWeb-Edu's sample-10BT")
    parser.add_argument("--shard-tokens", type=int, action="append", help="repeatable; default 2^27 and 2^22")
    parser.add_argument("--skip-s3", action="store_true")
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args(argv)
    result: dict = {}
    if not args.skip_s3:
        result["s3"] = measure_s3(args.shards, args.shard_mib)
    result["first_window"] = [
        first_window_need(args.preset, int(args.corpus_tokens), n) for n in (args.shard_tokens or [1 << 27, 1 << 22])
    ]
    print(json.dumps(result, indent=2) if args.json else result)
    return 0


if __name__ == "__main__":
    sys.exit(main())
