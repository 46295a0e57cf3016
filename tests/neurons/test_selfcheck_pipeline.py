"""The start-up self-check of a pipeline stage: its slice must exist and its port be free,
before anything is committed on chain (``neurons.selfcheck.pipeline_checks``)."""

from __future__ import annotations

import socket

from neurons.config import PipelineStageConfig
from neurons.selfcheck import pipeline_checks
from protocol.hparams import load_hparams


class _Config:
    def __init__(self, pipeline: PipelineStageConfig | None) -> None:
        self.pipeline = pipeline


def _stage(stage: str, **kw) -> _Config:
    return _Config(PipelineStageConfig(group="g0", stage=stage, **kw))


def test_a_whole_model_miner_has_no_pipeline_checks():
    assert pipeline_checks(_Config(None), load_hparams("tiny")) == []


def test_a_stage_that_fits_the_model_and_a_free_port_passes():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    checks = pipeline_checks(_stage("1/2", listen=f"127.0.0.1:{port}"), load_hparams("tiny-pipeline"))
    assert [(c.name, c.ok) for c in checks] == [("pipeline stage", True), ("pipeline port", True)]
    assert "layers[1:2]+head" in checks[0].detail


def test_more_stages_than_layers_fails_before_any_chain_write():
    checks = pipeline_checks(_stage("0/3", next="127.0.0.1:9"), load_hparams("tiny-pipeline"))  # 2 layers
    assert len(checks) == 1 and not checks[0].ok and "cannot split 2 layers into 3 stages" in checks[0].detail


def test_a_preset_with_tied_embeddings_cannot_be_split():
    checks = pipeline_checks(_stage("0/2", next="127.0.0.1:9"), load_hparams("1B"))
    assert not checks[0].ok and "ties its embeddings" in checks[0].detail


def test_a_port_in_use_fails_naming_the_flag():
    with socket.create_server(("127.0.0.1", 0)) as taken:
        port = taken.getsockname()[1]
        checks = pipeline_checks(_stage("1/2", listen=f"127.0.0.1:{port}"), load_hparams("tiny-pipeline"))
    assert [c.ok for c in checks] == [True, False]
    assert "cannot listen on" in checks[1].detail and "--pipeline.listen" in checks[1].fix
