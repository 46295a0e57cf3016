"""``tessera chain ...``: make a local devchain, create wallets offline, register, inspect.

Flags follow bittensor's conventions (``--wallet.name``, ``--wallet.hotkey``, ``--wallet.path``,
``--netuid``). Every failure is one line on stderr and exit status 1.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import bittensor

from protocol.chain import ChainError, Metagraph
from protocol.commitment import BucketCommitment, CommitmentError
from protocol.devchain import DevChain
from protocol.devchain_rules import REAL_CHAIN, DevChainRules
from protocol.signing import HotkeySigner, SigningError, create_wallet

DEFAULT_WALLET_PATH = "~/.bittensor/wallets"


def _wallet_flags(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--wallet.name", dest="wallet_name", default="default", help="wallet (coldkey) name")
    parser.add_argument("--wallet.hotkey", dest="wallet_hotkey", default="default", help="hotkey name")
    parser.add_argument("--wallet.path", dest="wallet_path", default=DEFAULT_WALLET_PATH, help="wallets directory")


def configure(parser: argparse.ArgumentParser) -> None:
    sub = parser.add_subparsers(dest="chain_command", metavar="ACTION", required=True)

    create = sub.add_parser("create", help="create a new devchain file")
    create.add_argument("--path", required=True, help="SQLite file to create")
    create.add_argument("--netuid", type=int, default=1, help="subnet uid it serves (default 1)")
    create.add_argument("--block-time", type=float, default=1.0, help="seconds per block (default 1.0)")
    create.add_argument("--max-uids", type=int, default=256, help="registration cap (default 256)")
    create.add_argument("--max-validators", type=int, default=64, help="validator permits (default 64)")
    create.add_argument("--start-block", type=int, default=0,
                        help="block number at creation; the subnet is registered there (e.g. 5000000, as on finney)")
    create.add_argument("--missed-slots", type=float, default=0.0,
                        help="fraction of block slots with no block, seeded (default 0; e.g. 0.2)")
    create.add_argument("--block-jitter", type=float, default=0.0,
                        help="seconds after its slot a block's timestamp may lie, seeded (default 0; < block time)")
    create.add_argument("--slot-seed", type=int, default=0, help="seed of missed slots and jitter (default 0)")
    _rule_flags(create)
    create.set_defaults(func=cmd_create)

    wallet = sub.add_parser("wallet-create", help="create an unencrypted coldkey + hotkey offline")
    _wallet_flags(wallet)
    wallet.set_defaults(func=cmd_wallet_create)

    register = sub.add_parser("register", help="register a wallet's hotkey on a devchain")
    register.add_argument("--path", required=True, help="devchain file")
    _wallet_flags(register)
    register.add_argument("--stake", type=float, default=0.0, help="initial stake (validators need > 0)")
    register.add_argument("--create-wallet", action="store_true", help="create the wallet first if missing")
    register.set_defaults(func=cmd_register)

    stake = sub.add_parser("stake", help="set a registered hotkey's stake (devchain faucet)")
    stake.add_argument("--path", required=True, help="devchain file")
    _wallet_flags(stake)
    stake.add_argument("--amount", type=float, required=True, help="new stake")
    stake.set_defaults(func=cmd_stake)

    show = sub.add_parser("show", help="print the metagraph")
    show.add_argument("--path", required=True, help="devchain file")
    show.add_argument("--block", type=int, default=None, help="state as of this block (default: now)")
    show.add_argument("--json", action="store_true", help="machine-readable output")
    show.set_defaults(func=cmd_show)


def _rule_flags(create: argparse.ArgumentParser) -> None:
    """The subnet rules the devchain enforces (protocol.devchain_rules); defaults are the real chain's."""
    real = REAL_CHAIN
    create.add_argument("--weights-rate-limit", type=int, default=real.weights_rate_limit,
                        help=f"blocks between two weight sets of a uid (default {real.weights_rate_limit}, as subtensor)")
    create.add_argument("--min-allowed-weights", type=int, default=real.min_allowed_weights,
                        help="fewest weights a row may have (default 0)")
    create.add_argument("--max-weights-limit", type=int, default=real.max_weights_limit,
                        help=f"largest weight's share of a row, in 1/{real.max_weights_limit} (default: no cap)")
    create.add_argument("--version-key", type=int, default=real.version_key,
                        help="WeightsVersionKey: set_weights under an older key is refused (default 0)")
    create.add_argument("--commit-reveal", type=int, default=real.commit_reveal_blocks, metavar="BLOCKS",
                        help="weights take effect BLOCKS after they are committed (default 0: off)")
    create.add_argument("--commit-rate-limit", type=int, default=real.commit_rate_limit,
                        help="blocks between two commitments of a uid (default 0)")


def _rules(args: argparse.Namespace) -> DevChainRules:
    return DevChainRules(
        weights_rate_limit=args.weights_rate_limit, min_allowed_weights=args.min_allowed_weights,
        max_weights_limit=args.max_weights_limit, version_key=args.version_key,
        commit_reveal_blocks=args.commit_reveal, commit_rate_limit=args.commit_rate_limit,
    )


def _fail(message: str) -> int:
    print(f"tessera chain: error: {message}", file=sys.stderr)
    return 1


def cmd_create(args: argparse.Namespace) -> int:
    try:
        chain = DevChain.create(
            args.path, args.netuid, args.block_time, max_uids=args.max_uids, max_validators=args.max_validators,
            start_block=args.start_block, missed_slots=args.missed_slots, jitter=args.block_jitter, seed=args.slot_seed,
            rules=_rules(args),
        )
    except ChainError as exc:
        return _fail(str(exc))
    print(f"created devchain {chain.path} (netuid {chain.netuid}, block time {chain.block_time()} s, "
          f"head {chain.block()}, missed slots {args.missed_slots:g})")
    return 0


def cmd_wallet_create(args: argparse.Namespace) -> int:
    wallet = create_wallet(args.wallet_name, args.wallet_hotkey, args.wallet_path)
    print(f"wallet {wallet.name}/{wallet.hotkey_str}: coldkey {wallet.coldkeypub.ss58_address} "
          f"hotkey {wallet.hotkey.ss58_address}")
    return 0


def _wallet(args: argparse.Namespace) -> tuple[HotkeySigner, str]:
    path = str(Path(args.wallet_path).expanduser())
    if getattr(args, "create_wallet", False):
        wallet = create_wallet(args.wallet_name, args.wallet_hotkey, path)
    else:
        wallet = bittensor.Wallet(name=args.wallet_name, hotkey=args.wallet_hotkey, path=path)
    signer = HotkeySigner(wallet)
    try:
        coldkey = wallet.coldkeypub.ss58_address
    except (bittensor.BittensorError, OSError, ValueError) as exc:
        raise SigningError(f"cannot read the coldkey of {wallet!r}: {exc}") from exc
    return signer, coldkey


def cmd_register(args: argparse.Namespace) -> int:
    try:
        signer, coldkey = _wallet(args)
        chain = DevChain(args.path)
        uid = chain.register(signer, coldkey, stake=args.stake)
    except (ChainError, SigningError) as exc:
        return _fail(f"{exc} (create the wallet with --create-wallet or `tessera chain wallet-create`)"
                     if isinstance(exc, SigningError) else str(exc))
    print(f"registered {signer.hotkey} as uid {uid} on netuid {chain.netuid} (stake {args.stake})")
    return 0


def cmd_stake(args: argparse.Namespace) -> int:
    try:
        signer, _ = _wallet(args)
        DevChain(args.path).set_stake(signer.hotkey, args.amount)
    except (ChainError, SigningError) as exc:
        return _fail(str(exc))
    print(f"stake of {signer.hotkey} set to {args.amount}")
    return 0


def _bucket(text: str | None) -> str:
    if not text:
        return "-"
    try:
        commitment = BucketCommitment.decode(text)
    except CommitmentError:
        return "(malformed)"
    return f"{commitment.bucket}@{commitment.endpoint_url}"


def metagraph_rows(metagraph: Metagraph, commitments: dict[int, str]) -> list[dict]:
    return [
        {
            "uid": n.uid, "hotkey": n.hotkey, "coldkey": n.coldkey, "stake": n.stake,
            "validator_permit": n.validator_permit, "incentive": round(n.incentive, 6),
            "weights": {str(k): round(v, 6) for k, v in n.weights.items()},
            "bucket": _bucket(commitments.get(n.uid)),
        }
        for n in metagraph.neurons
    ]


def cmd_show(args: argparse.Namespace) -> int:
    try:
        chain = DevChain(args.path)
        block = chain.block() if args.block is None else args.block
        rows = metagraph_rows(chain.metagraph(block), chain.commitments(block))
    except ChainError as exc:
        return _fail(str(exc))
    if args.json:
        print(json.dumps({"netuid": chain.netuid, "block": block, "neurons": rows}, indent=2))
        return 0
    print(f"netuid {chain.netuid}  block {block}  neurons {len(rows)}")
    print(f"{'uid':>4} {'hotkey':<12} {'stake':>10} {'vp':>2} {'incentive':>9} {'weights':>7}  bucket")
    for r in rows:
        print(f"{r['uid']:>4} {r['hotkey'][:10] + '..':<12} {r['stake']:>10.2f} {'V' if r['validator_permit'] else '-':>2} "
              f"{r['incentive']:>9.4f} {len(r['weights']):>7}  {r['bucket']}")
    return 0
