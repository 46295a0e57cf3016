"""The Prometheus endpoint: off by default, loopback by default, and the named series are there.

Scrapes go over 127.0.0.1 only. The node loops' calls are exercised through the real fetch path
(a signed payload in a LocalStore) and ``run_windows``; the rest through the module's API.
"""

from __future__ import annotations

import argparse
import urllib.request

import pytest
from prometheus_client.parser import text_string_to_metric_families

from neurons import metrics
from neurons.config import BucketConfig, NodeConfig, add_node_arguments, node_config_from_args
from neurons.fetch import fetch_payload
from neurons.node import run_windows
from neurons.peers import Peer
from protocol.acceptance import AcceptanceRule
from protocol.keys import payload_key
from protocol.signing import HotkeySigner
from storage import StorageUnavailable
from storage.local import LocalStore
from tests.neurons.test_node import fake_node

NAMED_SERIES = {
    "tessera_node_info", "tessera_window", "tessera_last_successful_window", "tessera_loss",
    "tessera_payload_bytes", "tessera_step_seconds", "tessera_peers", "tessera_weights_set",
    "tessera_windows_failed",
}


@pytest.fixture
def server():
    served = metrics.serve(0)  # any free port, on the default address
    yield served
    served.close()


def scrape(port: int) -> dict[str, dict[tuple, float]]:
    """{family name: {(sample name, sorted labels): value}} from one GET of /metrics."""
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as response:
        text = response.read().decode()
    out: dict[str, dict[tuple, float]] = {}
    for family in text_string_to_metric_families(text):
        samples = out.setdefault(family.name, {})
        for s in family.samples:
            samples[(s.name, tuple(sorted(s.labels.items())))] = s.value
    return out


def value(families, family: str, sample: str, **labels) -> float:
    return families[family].get((sample, tuple(sorted(labels.items()))), 0.0)


def test_binds_loopback_by_default(server) -> None:
    host = server.server.server_address[0]
    assert host == "127.0.0.1"


def test_the_named_series_are_served(server) -> None:
    before = scrape(server.port)
    metrics.node_info("validator", 7, "tiny-0123456789ab")
    metrics.window(12)
    metrics.window_done(11)
    metrics.loss("heldout", 6.25)
    metrics.loss("train", None)  # nothing measured: no sample invented
    metrics.payload_bytes("uploaded", 1000)
    metrics.observe("evaluate", 0.3)
    with metrics.timed("apply"):
        pass
    metrics.peers([(True, "None"), (False, "late"), (False, "late"), (False, "copy")])
    metrics.weights_set(True)
    metrics.weights_set(False)
    after = scrape(server.port)
    assert NAMED_SERIES <= set(after)
    assert value(after, "tessera_node_info", "tessera_node_info", role="validator", uid="7",
                 run_id="tiny-0123456789ab") == 1
    assert value(after, "tessera_window", "tessera_window") == 12
    assert value(after, "tessera_last_successful_window", "tessera_last_successful_window") == 11
    assert value(after, "tessera_loss", "tessera_loss", kind="heldout") == 6.25
    assert ("tessera_loss", (("kind", "train"),)) not in after["tessera_loss"]

    def grew(family, sample, **labels):
        return value(after, family, sample, **labels) - value(before, family, sample, **labels)

    assert grew("tessera_payload_bytes", "tessera_payload_bytes_total", direction="uploaded") == 1000
    assert grew("tessera_step_seconds", "tessera_step_seconds_count", step="evaluate") == 1
    assert grew("tessera_step_seconds", "tessera_step_seconds_count", step="apply") == 1
    assert grew("tessera_peers", "tessera_peers_total", verdict="accepted", reason="") == 1
    assert grew("tessera_peers", "tessera_peers_total", verdict="rejected", reason="late") == 2
    assert grew("tessera_peers", "tessera_peers_total", verdict="rejected", reason="copy") == 1
    assert grew("tessera_weights_set", "tessera_weights_set_total", outcome="set") == 1
    assert grew("tessera_weights_set", "tessera_weights_set_total", outcome="failed") == 1


def test_a_taken_port_is_one_error_naming_the_flag(server) -> None:
    with pytest.raises(metrics.MetricsError, match="--metrics.port"):
        metrics.serve(server.port)


def test_fetching_a_payload_records_bytes_and_step_times(server, tmp_path, make_payload, tiny_shapes, stamp) -> None:
    signer = HotkeySigner.from_uri("//MetricsTest")
    run, window, slot_start = "tiny-aaaaaaaaaaaa", 3, 1_700_000_000.0
    store = LocalStore(tmp_path / "bucket")
    data = make_payload(signer, uid=4, window=window, run_id=run)
    key = payload_key(run, window, 4)
    store.put(key, data)
    stamp(store, key, slot_start + 1.0)
    before = scrape(server.port)
    rule = AcceptanceRule(run_id=run, window=window, slot_start=slot_start, slot_seconds=3.0, max_bytes=1 << 20)
    fetched = fetch_payload(Peer(4, signer.hotkey, store), rule, tiny_shapes)
    assert fetched.ok, fetched.result
    after = scrape(server.port)
    grown = (value(after, "tessera_payload_bytes", "tessera_payload_bytes_total", direction="downloaded")
             - value(before, "tessera_payload_bytes", "tessera_payload_bytes_total", direction="downloaded"))
    assert grown == len(data)
    for step in ("fetch", "decode"):
        count = "tessera_step_seconds_count"
        assert value(after, "tessera_step_seconds", count, step=step) == value(
            before, "tessera_step_seconds", count, step=step) + 1


def test_the_window_loop_reports_progress_and_failures(server) -> None:
    """``run_windows`` sets the window gauge, the last finished window and counts failed windows."""
    node = fake_node(3)  # the shared loop's own test double, so both follow what run_windows reads
    node.window, node.name = 40, "miner-1"
    calls = {"n": 0}

    def one_window() -> None:
        calls["n"] += 1
        if calls["n"] == 2:
            raise StorageUnavailable("bucket down")  # abandoned, retried after a pause
        node.window += 1

    import neurons.node as node_module

    failed_before = value(scrape(server.port), "tessera_windows_failed", "tessera_windows_failed_total")
    pause, node_module.WINDOW_RETRY_SECONDS = node_module.WINDOW_RETRY_SECONDS, 0.0
    try:
        assert run_windows(node, one_window, ready=lambda: True) == 3
    finally:
        node_module.WINDOW_RETRY_SECONDS = pause
    after = scrape(server.port)
    assert value(after, "tessera_window", "tessera_window") == 42
    assert value(after, "tessera_last_successful_window", "tessera_last_successful_window") == 42
    assert value(after, "tessera_windows_failed", "tessera_windows_failed_total") == failed_before + 1


def test_metrics_are_off_by_default_and_flags_reach_the_config() -> None:
    parser = argparse.ArgumentParser()
    add_node_arguments(parser)
    env = {"TESSERA_BUCKET_WRITE_KEY_ID": "w", "TESSERA_BUCKET_WRITE_SECRET": "ws", "TESSERA_BUCKET_READ_SECRET": "rs"}
    base = ["--netuid", "1", "--devchain", "/tmp/x.db", "--bucket.endpoint", "http://127.0.0.1:9",
            "--bucket.name", "abc", "--bucket.read-key-id", "r"]
    config = node_config_from_args("miner", parser.parse_args(base), env)
    assert config.metrics_port is None and config.metrics_address == "127.0.0.1"
    config = node_config_from_args("miner", parser.parse_args([*base, "--metrics.port", "9100"]), env)
    assert config.metrics_port == 9100
    assert isinstance(config, NodeConfig) and isinstance(config.bucket, BucketConfig)


def test_a_bad_address_is_one_error_naming_the_flag() -> None:
    # TEST-NET-1 (RFC 5737) is never assigned to this host: binding fails without any traffic
    with pytest.raises(metrics.MetricsError, match="--metrics.address"):
        metrics.serve(0, "192.0.2.1")

