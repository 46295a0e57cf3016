"""The shared node loop: how many windows run, and what ends it; the start-up payload check."""

from __future__ import annotations

import threading
from types import SimpleNamespace

import pytest

from neurons.node import assemble_node, run_windows
from protocol.hparams import HparamsError, load_hparams


def fake_node(max_windows: int | None) -> SimpleNamespace:
    # run_windows reads only the stop event, max_windows and the window (for neurons.metrics)
    # when given its own ``ready``
    return SimpleNamespace(stop=threading.Event(), window=0, config=SimpleNamespace(max_windows=max_windows))


def test_stops_after_max_windows():
    node, ran = fake_node(3), []
    assert run_windows(node, lambda: ran.append(len(ran)), ready=lambda: True) == 3
    assert ran == [0, 1, 2]


def test_a_not_ready_node_stops_before_the_window():
    node, ran, checks = fake_node(None), [], []

    def ready() -> bool:
        checks.append(1)
        return len(checks) <= 2

    assert run_windows(node, lambda: ran.append(1), ready) == 2
    assert len(checks) == 3


def test_a_stop_during_a_window_ends_the_loop_after_it():
    node = fake_node(None)
    assert run_windows(node, node.stop.set, ready=lambda: True) == 1


def test_a_model_whose_payloads_can_exceed_the_cap_does_not_start():
    # compression.budget bounds the payload from the shapes; the check runs before the chain,
    # storage or signer are touched (all None here).
    hp = load_hparams("tiny")
    hp = hp.model_copy(update={"codec": hp.codec.model_copy(update={"max_payload_bytes": 10_000})})
    with pytest.raises(HparamsError, match=r"^hparams 'tiny': .* can reach \d+ bytes, over codec.max_payload_bytes 10000;"):
        config = SimpleNamespace(device="cpu", role="miner", micro_batches=None, memory_check=True, pipeline=None,
                                 activation_checkpointing=False)
        assemble_node(config, hp, None, None, 0, None, threading.Event())
