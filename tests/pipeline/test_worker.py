"""Two stage workers on loopback TCP train exactly what the in-process pipeline trains."""

import copy
import socket
import threading

import pytest
import torch

import pipeline.stage
from pipeline.replica import PipelineReplica
from pipeline.stage import Stage, split_layers
from pipeline.subspace import EMBED_NAME, SubspaceConstraint
from pipeline.transport import Hello, accept_upstream, connect_downstream
from pipeline.worker import StageWorker
from protocol.hparams import TrainingConfig

CFG = TrainingConfig(inner_steps=2, batch_size=4, seq_len=16, lr=2e-3, warmup_steps=1, total_steps=100)


def _hello(stage):
    return Hello(run_id="r", group="g", stage=stage, n_stages=2, window=0)


def _run_pair(models, batches, constraint):
    server = socket.create_server(("127.0.0.1", 0))
    port = server.getsockname()[1]
    workers = []
    for s, model in enumerate(models):
        w = StageWorker(Stage(model, split_layers(2, 2)[s]), CFG, constraint, n_micro=2, lr_schedule=lambda _: CFG.lr)
        w.begin_window(dict(model.named_parameters())[EMBED_NAME])
        workers.append(w)
    results, errors = {}, []

    def downstream():
        try:
            link = accept_upstream(server, _hello(1), timeout=10)
            results[1] = workers[1].train_window(batches, 0, up=link, down=None)
            link.close()
        except Exception as exc:  # noqa: BLE001 - the test thread hands any failure to the main thread
            errors.append(exc)

    thread = threading.Thread(target=downstream)
    thread.start()
    link = connect_downstream("127.0.0.1", port, _hello(0), timeout=10)
    results[0] = workers[0].train_window(batches, 0, up=None, down=link)
    thread.join(timeout=30)
    link.close()
    server.close()
    assert not errors, errors
    return results, workers


@pytest.mark.parametrize("compressed", [False, True])
def test_two_processes_worth_of_stages_match_the_in_process_pipeline(small_model, basis, batch, compressed):
    constraint = SubspaceConstraint(basis) if compressed else None
    batches = [batch, batch.flip(0)]
    reference = copy.deepcopy(small_model)
    replica = PipelineReplica(reference, 2, CFG, constraint=constraint, n_micro=2, lr_schedule=lambda _: CFG.lr)
    replica.begin_window(0)
    expected = replica.train_window(batches)
    results, workers = _run_pair([copy.deepcopy(small_model), copy.deepcopy(small_model)], batches, constraint)
    assert abs(sum(results[1]) / 2 - expected.loss_mean) < 1e-5
    ref = dict(reference.named_parameters())
    for worker in workers:
        for name, p in worker.stage.params.items():
            assert torch.allclose(p, ref[name], rtol=1e-5, atol=1e-7), name
    assert workers[0].sent_bytes == expected.activation_bytes
    assert workers[1].sent_bytes == expected.gradient_bytes


def test_workers_under_bf16_autocast_send_the_same_frames(small_model, batch, monkeypatch):
    """The stage trains through Stage.train_forward (bf16 autocast on CUDA; CPU's autocast stands
    in for it here): the frames stay float32 and the same size, and it trains what the fp32
    pipeline trains to bf16's precision."""
    batches = [batch, batch.flip(0)]
    start = {n: p.detach().clone() for n, p in small_model.named_parameters()}
    fp32, fp32_workers = _run_pair([copy.deepcopy(small_model), copy.deepcopy(small_model)], batches, None)
    monkeypatch.setattr(pipeline.stage, "training_autocast", lambda _d: torch.autocast("cpu", dtype=torch.bfloat16))
    bf16, bf16_workers = _run_pair([copy.deepcopy(small_model), copy.deepcopy(small_model)], batches, None)
    assert [w.sent_bytes for w in bf16_workers] == [w.sent_bytes for w in fp32_workers]
    assert bf16[1] != fp32[1]  # autocast did run
    assert bf16[1] == pytest.approx(fp32[1], rel=1e-3)
    for a, b in zip(bf16_workers, fp32_workers, strict=True):  # each stage's update, bf16 against fp32
        moved = [torch.cat([(p.detach() - start[n]).flatten() for n, p in w.stage.params.items()]) for w in (a, b)]
        assert float(torch.nn.functional.cosine_similarity(*moved, dim=0)) > 0.99
