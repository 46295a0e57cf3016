"""A stage that dies mid-window makes its group skip that window cleanly; the next one trains."""

import copy
import socket
import threading

import torch

from pipeline.group import run_window
from pipeline.stage import Stage, split_layers
from pipeline.subspace import EMBED_NAME
from pipeline.transport import Hello, accept_upstream, connect_downstream
from pipeline.worker import StageWorker
from protocol.hparams import TrainingConfig

CFG = TrainingConfig(inner_steps=3, batch_size=4, seq_len=16, lr=2e-3, warmup_steps=1, total_steps=100)


def _worker(model, s):
    w = StageWorker(Stage(model, split_layers(2, 2)[s]), CFG, None, n_micro=2, lr_schedule=lambda _: CFG.lr)
    w.begin_window(dict(model.named_parameters())[EMBED_NAME])
    return w


class _DiesAfterOneStep(StageWorker):
    """Stage 1 whose process is killed after its first inner step: its socket just closes."""

    link = None

    def _step(self, batch, up, down):
        super()._step(batch, up, down)
        self.link.sock.close()
        raise SystemExit("killed")


def _window(worker0, worker1, batches, window):
    server = socket.create_server(("127.0.0.1", 0))
    hello = dict(run_id="r", group="g", n_stages=2, window=window)
    box = {}

    def downstream():
        link = accept_upstream(server, Hello(stage=1, **hello), timeout=10)
        worker1.link = link
        try:
            box[1] = run_window(worker1, window, batches, 0, up=link, down=None)
        except SystemExit:
            box[1] = "killed"

    thread = threading.Thread(target=downstream)
    thread.start()
    link = connect_downstream("127.0.0.1", server.getsockname()[1], Hello(stage=0, **hello), timeout=10)
    box[0] = run_window(worker0, window, batches, 0, up=None, down=link)
    thread.join(timeout=30)
    link.close()
    server.close()
    return box


def test_a_killed_stage_makes_its_partner_skip_the_window_and_the_group_resumes(small_model, batch):
    batches = [batch, batch.flip(0), batch]
    worker0 = _worker(copy.deepcopy(small_model), 0)
    before = {n: p.detach().clone() for n, p in worker0.stage.params.items()}
    dying = _DiesAfterOneStep(Stage(copy.deepcopy(small_model), split_layers(2, 2)[1]), CFG, None, 2, lambda _: CFG.lr)
    dying.begin_window(dict(small_model.named_parameters())[EMBED_NAME])
    box = _window(worker0, dying, batches, window=5)
    assert box[1] == "killed"
    outcome = box[0]
    # depending on where stage 0 was (sending or receiving), the loss shows as one or the other
    assert not outcome.trained
    assert "closed the connection" in outcome.reason or "Broken pipe" in outcome.reason or "reset" in outcome.reason
    for name, p in worker0.stage.params.items():  # θ_w exactly, as if the window never started
        assert torch.equal(p, before[name]), name
    assert not worker0.optimizer.state
    # the stage restarts (a fresh process from θ_w) and the next window trains on both ends
    restarted = _worker(copy.deepcopy(small_model), 1)
    box = _window(worker0, restarted, batches, window=6)
    assert box[0].trained and box[1].trained and len(box[1].losses) == 3
    assert not torch.equal(worker0.stage.params["model.embed_tokens.weight"], before["model.embed_tokens.weight"])


def test_a_neighbour_sending_a_malformed_frame_costs_the_window_not_the_process(small_model, batch):
    worker0 = _worker(copy.deepcopy(small_model), 0)
    before = {n: p.detach().clone() for n, p in worker0.stage.params.items()}
    server = socket.create_server(("127.0.0.1", 0))
    hello = dict(run_id="r", group="g", n_stages=2, window=0)

    def hostile_downstream():
        link = accept_upstream(server, Hello(stage=1, **hello), timeout=10)
        for _ in range(2):  # the two micro-batches' activations
            link.recv_frame(max_bytes=1 << 20)
        link.send_frame(b"TSB1 not a gradient frame")
        link.sock.recv(1 << 16)  # wait for stage 0's bye / close
        link.close()

    thread = threading.Thread(target=hostile_downstream)
    thread.start()
    link = connect_downstream("127.0.0.1", server.getsockname()[1], Hello(stage=0, **hello), timeout=10)
    outcome = run_window(worker0, 0, [batch], 0, up=None, down=link)
    link.close()
    thread.join(timeout=10)
    server.close()
    assert not outcome.trained and "frame" in outcome.reason
    for name, p in worker0.stage.params.items():
        assert torch.equal(p, before[name]), name
