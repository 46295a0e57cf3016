from __future__ import annotations

import json

import pytest

from protocol.hparams import HparamsError, ModelConfig, load_hparams


def llama_params(m: ModelConfig) -> int:
    head_dim = m.hidden_size // m.num_heads
    attention = 2 * m.hidden_size * m.hidden_size + 2 * m.hidden_size * m.num_kv_heads * head_dim
    layer = attention + 3 * m.hidden_size * m.intermediate_size + 2 * m.hidden_size
    embeddings = m.vocab_size * m.hidden_size * (1 if m.tie_embeddings else 2)
    return embeddings + m.num_layers * layer + m.hidden_size


@pytest.mark.parametrize(
    ("name", "low", "high"),
    [("tiny", 1e5, 1.1e6), ("150M", 1.3e8, 1.7e8), ("1B", 1.0e9, 1.4e9), ("8B", 7.5e9, 8.5e9), ("70B", 6.8e10, 7.2e10)],
)
def test_presets_load_with_the_size_their_name_says(name, low, high):
    hp = load_hparams(name)
    assert hp.name == name
    assert low <= llama_params(hp.model) <= high
    assert hp.run_id.startswith(f"{name}-")


def test_run_ids_differ_between_presets_and_follow_the_settings(tmp_path):
    ids = {load_hparams(n).run_id for n in ("tiny", "150M", "1B", "8B", "70B")}
    assert len(ids) == 5
    raw = json.loads((load_hparams.__globals__["PRESET_DIR"] / "tiny.json").read_text())
    raw["training"]["lr"] *= 2
    changed = tmp_path / "tiny.json"
    changed.write_text(json.dumps(raw))
    assert load_hparams(changed).run_id != load_hparams("tiny").run_id


def test_unknown_keys_are_errors(tmp_path):
    raw = json.loads((load_hparams.__globals__["PRESET_DIR"] / "tiny.json").read_text())
    raw["model"]["surprise"] = 1
    path = tmp_path / "bad.json"
    path.write_text(json.dumps(raw))
    with pytest.raises(HparamsError, match="surprise"):
        load_hparams(path)


def test_pipeline_section_is_optional_checked_and_part_of_the_run_id(tmp_path):
    raw = json.loads((load_hparams.__globals__["PRESET_DIR"] / "tiny.json").read_text())
    plain = load_hparams("tiny")
    assert plain.pipeline is None
    # no section: the digest is that of the settings alone (run ids of existing runs unchanged)
    dumped = {k: v for k, v in plain.model_dump(mode="json").items() if k != "pipeline"}
    canonical = json.dumps(dumped, sort_keys=True, separators=(",", ":"))
    assert plain.digest == __import__("hashlib").sha256(canonical.encode()).hexdigest()
    raw["pipeline"] = {"subspace_dim": 4}
    with_pipeline = tmp_path / "tiny.json"
    with_pipeline.write_text(json.dumps(raw))
    hp = load_hparams(with_pipeline)
    assert hp.pipeline.subspace_dim == 4 and hp.run_id != plain.run_id
    raw["pipeline"] = {"subspace_dim": raw["model"]["hidden_size"]}
    with_pipeline.write_text(json.dumps(raw))
    with pytest.raises(HparamsError, match="subspace_dim"):
        load_hparams(with_pipeline)
