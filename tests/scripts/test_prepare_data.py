from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import pytest

from neurons.shards import TokenShards
from neurons.tokenizer import train_bpe

SCRIPT = Path(__file__).resolve().parents[2] / "scripts" / "prepare_data.py"


@pytest.fixture(scope="module")
def prepare_data():
    spec = importlib.util.spec_from_file_location("prepare_data_under_test", SCRIPT)
    assert spec and spec.loader
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="module")
def tokenizer_json(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("tok") / "tokenizer.json"
    train_bpe(["hello world, this is some text.\n", "def f(x):\n    return x\n"] * 30, 300).tokenizer.save(str(path))
    return path


def _inputs(root: Path) -> Path:
    (root / "sub").mkdir(parents=True)
    (root / "a.txt").write_text("hello world\n")
    (root / "sub" / "b.md").write_text("def f(x): return x\n")
    (root / "skip.bin").write_bytes(b"\x00\x01")
    (root / "c.jsonl").write_text(json.dumps({"text": "first record"}) + "\n\n" + json.dumps({"text": "second"}) + "\n")
    return root


def test_text_files_to_shards(prepare_data, tokenizer_json: Path, tmp_path: Path, capsys) -> None:
    out = tmp_path / "shards"
    code = prepare_data.main(["--tokenizer", str(tokenizer_json), "--out", str(out), "--json", str(_inputs(tmp_path / "in"))])
    assert code == 0
    summary = json.loads(capsys.readouterr().out)
    shards = TokenShards(out)
    shards.verify()
    assert summary["n_docs"] == shards.n_docs == 4  # a.txt, c.jsonl x2, sub/b.md
    assert summary["digest"] == shards.digest and summary["vocab_size"] == shards.vocab_size
    from tokenizers import Tokenizer

    tokenizer = Tokenizer.from_file(str(out / "tokenizer.json"))
    assert [tokenizer.decode(shards.document(0, i).tolist()) for i in range(4)] == [
        "hello world\n", "first record", "second", "def f(x): return x\n"]


def test_same_inputs_same_digest(prepare_data, tokenizer_json: Path, tmp_path: Path) -> None:
    inputs = _inputs(tmp_path / "in")
    for name in ("x", "y"):
        assert prepare_data.main(["--tokenizer", str(tokenizer_json), "--out", str(tmp_path / name), str(inputs)]) == 0
    assert TokenShards(tmp_path / "x").digest == TokenShards(tmp_path / "y").digest


def test_errors_exit_2(prepare_data, tokenizer_json: Path, tmp_path: Path, capsys) -> None:
    assert prepare_data.main(["--tokenizer", str(tmp_path / "nope.json"), "--out", str(tmp_path / "o"), str(tmp_path)]) == 2
    assert "tokenizer not found" in capsys.readouterr().err
    (tmp_path / "bad.jsonl").write_text('{"body": "x"}\n')
    assert prepare_data.main(["--tokenizer", str(tokenizer_json), "--out", str(tmp_path / "o"), str(tmp_path / "bad.jsonl")]) == 2
    assert "no string field 'text'" in capsys.readouterr().err
    assert prepare_data.main(["--out", str(tmp_path / "o")]) == 2


def test_publish_to_a_real_bucket_then_a_node_reads_it(
    prepare_data, tokenizer_json: Path, tmp_path: Path, capsys, seaweed, seaweed_bucket
) -> None:
    from neurons.dataset import open_dataset
    from storage.endpoints import EndpointPolicy

    writer, reader = seaweed.identity("writer"), seaweed.identity("reader")
    url = f"{seaweed.endpoint_url}/{seaweed_bucket}/published-{tmp_path.name}?region=us-east-1"
    argv = ["--tokenizer", str(tokenizer_json), "--tokenizer-name", "test-bpe-300", "--out", str(tmp_path / "out"),
            "--publish", url, "--json", str(_inputs(tmp_path / "in"))]
    assert prepare_data.main(argv, env={}) == 2  # no write key: a one-line error naming the variables
    assert "TESSERA_BUCKET_WRITE_KEY_ID" in capsys.readouterr().err
    env = {"TESSERA_BUCKET_WRITE_KEY_ID": writer.access_key, "TESSERA_BUCKET_WRITE_SECRET": writer.secret_key}
    assert prepare_data.main(["--out", str(tmp_path / "out"), "--publish", url, "--json"], env=env) == 0
    out = capsys.readouterr().out
    assert writer.secret_key not in out
    summary = json.loads(out)
    assert summary["tokenizer"] == "test-bpe-300" and "index.json" in summary["uploaded"]
    read_url = url.replace("://", f"://{reader.access_key}:{reader.secret_key}@")
    remote = open_dataset(read_url, summary["data_digest"], tmp_path / "cache", policy=EndpointPolicy(allow_loopback=True))
    remote.verify()
    assert remote.digest == summary["digest"] == TokenShards(tmp_path / "out").digest
