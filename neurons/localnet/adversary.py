"""The byte-level hostile miners of the local subnet: registered like any miner, never train.

``tessera miner --behaviour huge_values|malformed|slow_endpoint`` (devchain only; what
``tessera localnet --adversaries`` starts) runs this instead of the miner's window, as does
``python -m neurons.localnet.adversary --kind KIND <node flags>``. It commits a bucket, then
serves one hostile object for every window, on the honest miner's schedule (upload when w+1
begins, inside the slot, from the same ``WindowClock``), so only the acceptance path can keep it
out:

- ``huge_values`` (formerly ``values``): a correctly signed payload of the model's exact shapes
  whose value tables reach 1e4 … 3.4e38, claiming the network's current θ digest (read from
  honest buckets) so that it is "in sync" too;
- ``malformed`` (formerly ``garbage``): an undecodable or unacceptable payload, one class per
  window (``hostile_payloads.GARBAGE_CLASSES``);
- ``slow_endpoint`` (formerly ``server``): commits the endpoint of its own hostile HTTP server on
  127.0.0.1 (``hostile_server``) instead of a real bucket; every request to it is answered badly.

What it served is appended to ``<state dir>/served.jsonl``, one line per window. It writes no
``events.jsonl`` and publishes no fingerprint: the launcher counts only honest nodes.
"""

from __future__ import annotations

import argparse
import json
import logging
import math
import signal
import sys
import threading
import time
from collections import Counter

from neurons.behaviours.kinds import BYTE_LEVEL_KINDS
from neurons.config import ConfigError, NodeConfig, add_node_arguments, node_config_from_args
from neurons.localnet.hostile_payloads import Identity, garbage, garbage_class, huge_values, random_message
from neurons.localnet.hostile_server import HostileS3Server
from neurons.node import Node, build_node
from neurons.peers import read_only_store
from protocol.commitment import BucketCommitment, CommitmentError
from protocol.keys import fingerprint_key, payload_key
from storage import ObjectExists, ObjectStore, StorageError
from storage.endpoints import EndpointPolicy

log = logging.getLogger("adversary")

KINDS = BYTE_LEVEL_KINDS
LEGACY_NAMES = {"values": "huge_values", "garbage": "malformed", "server": "slow_endpoint"}
_FINGERPRINT_BYTES = 64 << 10
# Build the window's object this long before the slot opens, so that building (a compression,
# reading honest fingerprints) never eats into the slot on a loaded machine.
PREPARE_SECONDS = 2.0
# Every bucket of the local subnet is on loopback; the adversary reads only those.
LOCALNET_POLICY = EndpointPolicy(allow_loopback=True)


class Adversary:
    def __init__(self, node: Node, kind: str, server: HostileS3Server | None = None) -> None:
        self.node, self.kind, self.server = node, kind, server
        self.who = Identity(node.hparams.run_id, node.uid, node.signer.hotkey, node.signer.sign)
        self.served_log = node.config.state_dir / "served.jsonl"
        self._served_before: Counter[str] = Counter()
        self._stores: dict[str, ObjectStore] = {}  # read-only stores of honest buckets, by commitment

    def run(self) -> None:
        node = self.node
        w = node.clock.current_window()
        while not node.stop.is_set():
            slot_start, slot_end = node.clock.upload_slot(w)
            if not node.sleep_until(slot_start - PREPARE_SECONDS):
                return
            payload, served = self.prepare(w)
            # Same moment as an honest miner: the first whole second inside the slot, so the
            # server's whole-second LastModified cannot fall before the slot opens.
            if not node.sleep_until(math.ceil(slot_start) + 0.05):
                return
            if payload is not None:
                key = payload_key(node.hparams.run_id, w, node.uid)
                served.update(bytes=len(payload), uploaded=self._put_in_slot(key, payload, slot_end))
            else:
                served.update(self._server_requests())
            self._record(w, served)
            w += 1

    def prepare(self, w: int) -> tuple[bytes | None, dict]:
        """Window w's hostile payload (None for ``slow_endpoint``: its endpoint is the attack) and its class."""
        if self.kind == "slow_endpoint":
            return None, {"class": "hostile_server"}
        hp = self.node.hparams
        msg = random_message(self.node.shapes, hp.codec.chunk_size, hp.codec.topk_per_chunk, seed=w)
        if self.kind == "huge_values":
            return huge_values(msg, self.who, w, self._network_digest(w)), {"class": "huge_values"}
        cls = garbage_class(w, self.node.uid)
        return garbage(cls, msg, self.who, w, hp.codec.max_payload_bytes), {"class": cls}

    def _put_in_slot(self, key: str, payload: bytes, slot_end: float) -> bool:
        while time.time() < slot_end and not self.node.stop.is_set():
            try:
                self.node.store.put(key, payload)
                return True
            except ObjectExists:
                return False  # served before a restart
            except StorageError as exc:
                log.warning("upload of %s failed, retrying: %s", key, exc)
                self.node.stop.wait(0.25)
        return False

    def _network_digest(self, w: int) -> str:
        """θ_w's digest as honest nodes published it (their fingerprint records for w − 1).

        Read only from buckets on our own S3 endpoint: the other adversaries' endpoints are
        hostile, and this process is not the one under test.
        """
        votes: Counter[str] = Counter()
        for uid, text, commitment in self._same_server_commitments():
            key = fingerprint_key(self.node.hparams.run_id, w - 1, uid)
            try:
                if text not in self._stores:
                    self._stores[text] = read_only_store(commitment, LOCALNET_POLICY)
                record = json.loads(self._stores[text].get(key, _FINGERPRINT_BYTES))
            except (StorageError, ValueError):
                continue  # not published (yet), or not JSON: that peer has no vote
            if isinstance(record, dict) and isinstance(record.get("fingerprint"), str):
                votes[record["fingerprint"]] += 1
        return votes.most_common(1)[0][0] if votes else ""

    def _same_server_commitments(self) -> list[tuple[int, str, BucketCommitment]]:
        own = self.node.config.bucket.endpoint_url
        found = []
        for uid, text in self.node.chain.commitments().items():
            try:
                commitment = BucketCommitment.decode(text)
            except CommitmentError:
                continue
            if uid != self.node.uid and commitment.endpoint_url == own:
                found.append((uid, text, commitment))
        return found

    def _server_requests(self) -> dict:
        """What the hostile server answered since the last window, by behaviour."""
        now = Counter(self.server.served if self.server is not None else {})
        delta = now - self._served_before
        self._served_before = now
        return {"class": "hostile_server", "requests": dict(delta)}

    def _record(self, w: int, served: dict) -> None:
        line = json.dumps({"window": w, "kind": self.kind, "uid": self.node.uid, **served}, sort_keys=True)
        with self.served_log.open("a", encoding="utf-8") as fh:
            fh.write(line + "\n")
        log.info("adversary %s uid %d window %d: %s", self.kind, self.node.uid, w, served)


def _with_endpoint(config: NodeConfig, endpoint_url: str) -> NodeConfig:
    return config.model_copy(update={"bucket": config.bucket.model_copy(update={"endpoint_url": endpoint_url})})


def serve(config: NodeConfig, kind: str, stall_seconds: float = 60.0) -> int:
    """Run adversary ``kind`` (a name of ``KINDS`` or its legacy alias) until SIGINT/SIGTERM."""
    kind = LEGACY_NAMES.get(kind, kind)
    if config.devchain is None:
        print(f"adversary: {kind} is for a local network (--devchain) only", file=sys.stderr)
        return 2
    stop = threading.Event()
    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, lambda *_: stop.set())
    server = HostileS3Server(stall_seconds=stall_seconds).start() if kind == "slow_endpoint" else None
    try:
        if server is not None:
            config = _with_endpoint(config, server.endpoint_url)  # the commitment names our server
        Adversary(build_node(config, stop), kind, server).run()
    finally:
        if server is not None:
            server.close()
    return 0


def run(args: argparse.Namespace) -> int:
    try:
        config = node_config_from_args("miner", args)
    except ConfigError as exc:
        print(f"adversary: {exc}", file=sys.stderr)
        return 2
    return serve(config, args.kind, args.stall_seconds)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m neurons.localnet.adversary", description=__doc__.split("\n")[0])
    parser.add_argument("--kind", choices=[*KINDS, *LEGACY_NAMES], required=True)
    parser.add_argument("--stall-seconds", type=float, default=60.0, help="slow_endpoint: longest drip or hang")
    add_node_arguments(parser)
    return parser


def main(argv: list[str] | None = None) -> int:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    return run(build_parser().parse_args(argv))


if __name__ == "__main__":
    sys.exit(main())

