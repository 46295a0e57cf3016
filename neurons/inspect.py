"""``tessera inspect payload FILE --hparams NAME``: the acceptance verdict on a payload file.

Runs the same ``protocol.acceptance.judge_payload`` every node runs on a fetched payload (size,
decode, signature, codec, identity, value bounds) and prints the verdict as one JSON object:
``{"accepted": bool, "reason": str, "detail": str}`` plus what the manifest claims. Exit status 0
either way; a miner can check its own payload before anyone else sees it.

What a file alone cannot show: the upload slot (that is the storage server's LastModified) and
the hotkey registered on chain. The signature is checked against ``--hotkey`` when given, else
against the hotkey the manifest names (a self-consistency check). The update-norm bound is
measured against θ0 of the hparams, the only model every reader can rebuild without the network.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from compression import PayloadError, PayloadManifest
from compression.wire import read_manifest
from neurons.gather import acceptance_rule_for
from neurons.model import build_model, param_shapes
from protocol.acceptance import RejectReason, judge_payload, parameter_norms
from protocol.hparams import HparamsError, load_hparams

# How much of a file is read at most beyond the network's payload cap: enough to say "oversized".
_READ_SLACK = 1


def configure(parser: argparse.ArgumentParser) -> None:
    sub = parser.add_subparsers(dest="inspect_command", metavar="WHAT", required=True)
    payload = sub.add_parser("payload", help="run the full acceptance path on a payload file, print the verdict as JSON")
    payload.add_argument("file", type=Path, help="the payload file (as uploaded to a bucket)")
    payload.add_argument("--hparams", required=True, help="network preset name or hparams JSON path")
    payload.add_argument("--uid", type=int, default=None, help="the uid it must name (default: as the manifest says)")
    payload.add_argument("--window", type=int, default=None, help="the window it must name (default: as the manifest says)")
    payload.add_argument("--hotkey", default=None, help="ss58 hotkey that must have signed it (default: the manifest's)")
    payload.set_defaults(func=cmd_payload)


def cmd_payload(args: argparse.Namespace) -> int:
    try:
        hparams = load_hparams(args.hparams)
    except HparamsError as exc:
        print(f"tessera inspect: {exc}", file=sys.stderr)
        return 2
    try:
        with args.file.open("rb") as fh:
            data = fh.read(hparams.codec.max_payload_bytes + _READ_SLACK)
    except OSError as exc:
        print(f"tessera inspect: cannot read {args.file}: {exc.strerror or exc}", file=sys.stderr)
        return 2
    print(json.dumps(inspect_payload(data, hparams, args.uid, args.window, args.hotkey), sort_keys=True))
    return 0


def inspect_payload(data: bytes, hparams, uid: int | None = None, window: int | None = None, hotkey: str | None = None) -> dict:
    """The verdict on ``data`` as a JSON-ready dict (see the module docstring)."""
    model = build_model(hparams.model, hparams.seed)
    shapes = param_shapes(model)
    claimed = _claimed_manifest(data, len(shapes))
    uid = uid if uid is not None else (claimed.uid if claimed else 0)
    window = window if window is not None else (claimed.window if claimed else 0)
    hotkey = hotkey if hotkey is not None else (claimed.hotkey if claimed else "")
    rule = acceptance_rule_for(hparams, window, slot_start=0.0, param_norms=parameter_norms(model))
    if len(data) > rule.max_bytes:
        verdict = {"accepted": False, "reason": str(RejectReason.OVERSIZED),
                   "detail": f"more than the cap of {rule.max_bytes} bytes"}
    else:
        result = judge_payload(data, uid, hotkey, rule, shapes).result
        verdict = {"accepted": result.passed, "reason": str(result.reason or ""), "detail": result.detail}
    verdict.update({"uid": uid, "window": window, "hotkey": hotkey, "bytes": len(data)})
    return verdict


def _claimed_manifest(data: bytes, n_params: int) -> PayloadManifest | None:
    """What the payload says about itself, from its header alone (None if unreadable; the
    verdict then says why, through the same guarded path every node runs)."""
    try:
        return read_manifest(data, n_params)
    except PayloadError:
        return None
