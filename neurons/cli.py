"""The ``tessera`` console entry: one argparse subcommand per node program.

Adding a subcommand is one line in ``COMMANDS``: its name, the module that implements it, and a
one-line help. The module provides ``configure(parser: argparse.ArgumentParser) -> None``, which
adds its flags and sets ``func`` (``func(args) -> int`` is the exit status) with
``parser.set_defaults(func=...)``. Only the chosen command's module is imported, so
``tessera chain show`` does not pay for importing torch.

``main`` is the process boundary for start-up failures: a typed error (a setting, the hparams,
the wallet, the chain, the bucket, the self-check) becomes one line on stderr that says what to
fix, and exit status 2; the traceback is logged only with ``--log-level DEBUG``. Any other
exception is a bug and keeps its traceback.
"""

from __future__ import annotations

import argparse
import importlib
import logging
import sys
from collections.abc import Sequence

from neurons.config import ConfigError
from protocol.chain import ChainError, NotRegisteredError
from protocol.hparams import HparamsError
from protocol.signing import SigningError
from storage.errors import AccessDenied, BucketNotFound, StorageError, StorageUnavailable

# name -> (module, help)
COMMANDS: dict[str, tuple[str, str]] = {
    "chain": ("neurons.chain_cli", "create and inspect a local devchain; register wallets"),
    "miner": ("neurons.miner", "train, compress and publish pseudo-gradients; follow the network"),
    "validator": ("neurons.validator", "score every miner (Gauntlet) and set weights"),
    "doctor": ("neurons.selfcheck", "run a node's start-up self-check (wallet, chain, role, bucket keys) and exit"),
    "inspect": ("neurons.inspect", "judge a payload file as every node would; print the verdict as JSON"),
    "localnet": ("neurons.localnet.launcher", "run a whole subnet on this machine, every node its own process"),
    "status": ("neurons.status", "the network from chain and buckets: windows, payloads, weights, fingerprints"),
    "memory": ("neurons.memory", "computed memory per device for a preset, role and torchrun world size"),
    "stage": ("neurons.stage", "one stage of a pipeline group: a slice of layers, TCP to its neighbour stages"),
}


def register_command(name: str, module: str, help_text: str) -> None:
    """Add a subcommand at run time (the static table above is the usual place)."""
    COMMANDS[name] = (module, help_text)


# top-level options that take a value; the value must not be mistaken for the command name
_VALUE_OPTIONS = {"--log-level"}
LOG_LEVEL_HELP = "DEBUG, INFO, WARNING, ERROR (default INFO); DEBUG also prints tracebacks of start-up errors"


def hoist_log_level(argv: Sequence[str]) -> list[str]:
    """``--log-level X`` moved to the front wherever it was given, so that it works after any
    (sub)command too, nested ones (``tessera chain show ... --log-level DEBUG``) included."""
    front: list[str] = []
    rest: list[str] = []
    args = iter(argv)
    for arg in args:
        if arg == "--log-level":
            front += [arg, next(args, "")]
        elif arg.startswith("--log-level="):
            front.append(arg)
        else:
            rest.append(arg)
    return front + rest


def _chosen(argv: Sequence[str]) -> str | None:
    """The subcommand named on the command line, without importing anything."""
    args = iter(argv)
    for arg in args:
        if arg in _VALUE_OPTIONS:
            next(args, None)
        elif not arg.startswith("-"):
            return arg if arg in COMMANDS else None
    return None


def build_parser(argv: Sequence[str] = ()) -> argparse.ArgumentParser:
    """The full parser; only the subcommand named in ``argv`` is configured (imported)."""
    parser = argparse.ArgumentParser(prog="tessera", description="Permissionless LLM pre-training subnet daemons")
    parser.add_argument("--log-level", default="INFO", help=LOG_LEVEL_HELP)
    subparsers = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    chosen = _chosen(argv)
    for name, (module, help_text) in COMMANDS.items():
        sub = subparsers.add_parser(name, help=help_text, description=help_text)
        # also after the command; SUPPRESS keeps the top-level value when it is not given here
        sub.add_argument("--log-level", default=argparse.SUPPRESS, help=LOG_LEVEL_HELP)
        if name == chosen:
            importlib.import_module(module).configure(sub)
    return parser


log = logging.getLogger("tessera")

# What ends a start as one line (each class's message names the problem; ``fix_for`` adds where
# to fix it when the message does not already say).
_STARTUP_ERRORS = (ConfigError, HparamsError, SigningError, ChainError, StorageError)


# Where to fix a typed start-up error, most specific class first (NotRegisteredError is a ChainError,
# BucketNotFound and AccessDenied are StorageErrors). ConfigError (self-check failures included)
# is absent: its messages already name the flag or variable.
_FIXES: tuple[tuple[type[BaseException], str], ...] = (
    (HparamsError, "--hparams (TESSERA_HPARAMS): a preset name or the path of a valid hparams JSON"),
    (SigningError, "--wallet.name / --wallet.hotkey / --wallet.path; create one with `btcli wallet create`"),
    (NotRegisteredError,
     "register the hotkey on the subnet (`btcli subnets register`, or `tessera chain register` on a devchain)"),
    (ChainError, "--subtensor.network / --devchain / --netuid; `tessera doctor` checks them"),
    (StorageUnavailable, "--bucket.endpoint (TESSERA_BUCKET_ENDPOINT)"),
    (BucketNotFound, "--bucket.name (TESSERA_BUCKET_NAME)"),
    (AccessDenied, "TESSERA_BUCKET_WRITE_KEY_ID / TESSERA_BUCKET_WRITE_SECRET; `tessera doctor` tells which"),
)


def fix_for(exc: BaseException) -> str | None:
    """The flag or variable behind a typed start-up error whose message does not name it."""
    if isinstance(exc, ConfigError):
        return None
    return next((fix for kind, fix in _FIXES if isinstance(exc, kind)), "`tessera doctor` checks the bucket settings")


def one_line_errors(exc: BaseException) -> list[str]:
    """What to print for ``exc``: one line per failed self-check, else one line with its fix."""
    failed = getattr(exc, "failed", None)  # neurons.selfcheck.SelfCheckFailed, not imported for --help's sake
    if isinstance(exc, ConfigError) and failed:
        return [f"self-check {c.name}: {c.detail} -- fix: {c.fix}" for c in failed]
    text = " ".join(str(exc).split())  # one line, whatever the message held
    fix = fix_for(exc)
    return [f"{text} -- fix: {fix}" if fix else text]


def main(argv: Sequence[str] | None = None) -> int:
    argv = hoist_log_level(sys.argv[1:] if argv is None else argv)
    args = build_parser(argv).parse_args(argv)
    level = getattr(logging, str(args.log_level).upper(), None)
    if not isinstance(level, int):
        print(f"tessera: error: --log-level {args.log_level!r} is not a logging level", file=sys.stderr)
        return 2
    logging.basicConfig(level=level, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    func = getattr(args, "func", None)
    if func is None:  # a command group given without its own subcommand
        build_parser(argv).parse_args([*argv, "--help"])
        return 2
    try:
        return int(func(args))
    except _STARTUP_ERRORS as exc:
        log.debug("start-up failure", exc_info=exc)
        for line in one_line_errors(exc):
            print(f"tessera {args.command}: error: {line}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
