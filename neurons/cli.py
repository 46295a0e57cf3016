"""The ``tessera`` console entry: one argparse subcommand per node program.

Adding a subcommand is one line in ``COMMANDS``: its name, the module that implements it, and a
one-line help. The module provides ``configure(parser: argparse.ArgumentParser) -> None``, which
adds its flags and sets ``func`` (``func(args) -> int`` is the exit status) with
``parser.set_defaults(func=...)``. Only the chosen command's module is imported, so
``tessera chain show`` does not pay for importing torch.
"""

from __future__ import annotations

import argparse
import importlib
import logging
import sys
from collections.abc import Sequence

# name -> (module, help)
COMMANDS: dict[str, tuple[str, str]] = {
    "chain": ("neurons.chain_cli", "create and inspect a local devchain; register wallets"),
    "miner": ("neurons.miner", "train, compress and publish pseudo-gradients; follow the network"),
    "validator": ("neurons.validator", "score every miner (Gauntlet) and set weights"),
    "inspect": ("neurons.inspect", "judge a payload file as every node would; print the verdict as JSON"),
    "localnet": ("neurons.localnet.launcher", "run a whole subnet on this machine, every node its own process"),
}


def register_command(name: str, module: str, help_text: str) -> None:
    """Add a subcommand at run time (the static table above is the usual place)."""
    COMMANDS[name] = (module, help_text)


# top-level options that take a value; the value must not be mistaken for the command name
_VALUE_OPTIONS = {"--log-level"}


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
    parser.add_argument("--log-level", default="INFO", help="DEBUG, INFO, WARNING, ERROR (default INFO)")
    subparsers = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    chosen = _chosen(argv)
    for name, (module, help_text) in COMMANDS.items():
        sub = subparsers.add_parser(name, help=help_text, description=help_text)
        if name == chosen:
            importlib.import_module(module).configure(sub)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
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
    return int(func(args))


if __name__ == "__main__":
    sys.exit(main())
