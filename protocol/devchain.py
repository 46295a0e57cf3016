"""The embedded development chain: one SQLite file shared by every process on a machine.

Blocks come from the wall clock: ``block = floor((now - genesis) / block_time)`` and
``timestamp(b) = genesis + b * block_time``, so every process agrees on the block without a
block producer. State is kept as history rows tagged with the block they take effect at
(registrations, stakes, commitments, weights), so ``metagraph(b)`` is the state *as of* block
b. Like a real chain, a write submitted during block n is included in block n + 1 and the writer
waits for that block, so the state of any block that has already begun never changes.

Concurrency: the database is in WAL mode (readers never block the writer), every connection
waits on a busy lock instead of failing, and writes run in ``BEGIN IMMEDIATE`` transactions so
two writers can never both read-then-write the same rows (e.g. hand out the same uid).

Writes that act for a hotkey carry a signature by that hotkey over a canonical request, checked
here like a chain checks an extrinsic's signature. Stake is set by whoever owns the file (it is a
test network; ``set_stake`` is the faucet).
"""

from __future__ import annotations

import contextlib
import json
import math
import sqlite3
import threading
import time
from collections.abc import Iterator
from pathlib import Path

from protocol.chain import (
    U16_MAX,
    Chain,
    ChainError,
    Metagraph,
    NeuronInfo,
    NotRegisteredError,
    WeightsPolicy,
    WeightsRefusedError,
)
from protocol.consensus import normalize_weights, stake_weighted_incentive
from protocol.devchain_clock import SlotSchedule
from protocol.devchain_rules import DevChainRules, check_rate, check_row, check_version_key
from protocol.signing import Signer, verify_signature

_SCHEMA = """
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS neurons (
    uid INTEGER PRIMARY KEY, hotkey TEXT NOT NULL UNIQUE, coldkey TEXT NOT NULL,
    block INTEGER NOT NULL);
CREATE TABLE IF NOT EXISTS stakes (
    seq INTEGER PRIMARY KEY AUTOINCREMENT, uid INTEGER NOT NULL, block INTEGER NOT NULL,
    amount REAL NOT NULL);
CREATE TABLE IF NOT EXISTS commitments (
    seq INTEGER PRIMARY KEY AUTOINCREMENT, uid INTEGER NOT NULL, block INTEGER NOT NULL,
    data TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS weights (
    seq INTEGER PRIMARY KEY AUTOINCREMENT, uid INTEGER NOT NULL, block INTEGER NOT NULL,
    row TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS weight_sets (
    seq INTEGER PRIMARY KEY AUTOINCREMENT, uid INTEGER NOT NULL, block INTEGER NOT NULL);
CREATE INDEX IF NOT EXISTS stakes_uid ON stakes (uid, block);
CREATE INDEX IF NOT EXISTS commitments_uid ON commitments (uid, block);
CREATE INDEX IF NOT EXISTS weights_uid ON weights (uid, block);
"""
# The newest row per uid that took effect at or before a block.
_AS_OF = "SELECT uid, {col} FROM {table} t WHERE seq = (SELECT MAX(seq) FROM {table} WHERE uid = t.uid AND block <= ?)"
_BUSY_TIMEOUT_S = 30.0
MAX_COMMITMENT_CHARS = 128  # the real chain's Raw field limit (see protocol.commitment)


def signed_request(netuid: int, op: str, hotkey: str, args: dict) -> bytes:
    """The canonical bytes a hotkey signs for a devchain write."""
    body = {"chain": "tessera-devchain", "netuid": netuid, "op": op, "hotkey": hotkey, "args": args}
    return json.dumps(body, sort_keys=True, separators=(",", ":")).encode()


class DevChain(Chain):
    """A ``Chain`` on a SQLite file; open an existing one, or make one with ``DevChain.create``."""

    def __init__(self, path: str | Path, netuid: int | None = None):
        self.path = Path(path)
        if not self.path.is_file():
            raise ChainError(f"no devchain at {self.path}; create one with `tessera chain create --path {self.path}`")
        with self._read() as db:
            meta = dict(db.execute("SELECT key, value FROM meta").fetchall())
        try:
            self.netuid = int(meta["netuid"])
            self.genesis = float(meta["genesis"])
            self._block_time = float(meta["block_time"])
            self.max_uids = int(meta["max_uids"])
            self.max_validators = int(meta["max_validators"])
        except KeyError as exc:
            raise ChainError(f"{self.path} is not a tessera devchain (missing {exc})") from exc
        self.rules = DevChainRules.from_meta(meta)
        self.slots = _slot_schedule(meta, self.genesis, self._block_time)
        if netuid is not None and netuid != self.netuid:
            raise ChainError(f"devchain {self.path} serves netuid {self.netuid}, not {netuid}")
        self.wait_for_inclusion = True

    @classmethod
    def create(
        cls,
        path: str | Path,
        netuid: int = 1,
        block_time: float = 1.0,
        *,
        max_uids: int = 256,
        max_validators: int = 64,
        genesis: float | None = None,
        rules: DevChainRules | None = None,
        start_block: int = 0,
        missed_slots: float = 0.0,
        jitter: float = 0.0,
        seed: int = 0,
    ) -> DevChain:
        """Make a new network file (refuses to overwrite one); ``rules``: ``protocol.devchain_rules``."""
        path = Path(path)
        if path.exists():
            raise ChainError(f"{path} already exists; remove it to start a new devchain")
        if block_time <= 0 or max_uids <= 0 or max_validators <= 0 or netuid < 0:
            raise ChainError("block_time, max_uids and max_validators must be positive, netuid >= 0")
        path.parent.mkdir(parents=True, exist_ok=True)
        meta = {
            "netuid": netuid, "block_time": block_time, "max_uids": max_uids,
            "max_validators": max_validators, "genesis": time.time() if genesis is None else genesis,
            **(rules or DevChainRules()).to_meta(),
            "start_block": start_block, "missed_slots": missed_slots, "jitter": jitter, "slot_seed": seed,
        }
        try:  # refuse a schedule no process could open, before the file exists
            SlotSchedule(0.0, block_time, start_block, missed_slots, jitter, seed)
        except ValueError as exc:
            raise ChainError(f"devchain block schedule: {exc}") from exc
        db = sqlite3.connect(path, isolation_level=None)
        try:
            db.execute("PRAGMA journal_mode=WAL")  # persistent: every later connection uses WAL
            db.executescript(_SCHEMA)
            db.executemany("INSERT INTO meta VALUES (?, ?)", [(k, repr(v)) for k, v in meta.items()])
        finally:
            db.close()
        return cls(path, netuid)

    # --- connections -------------------------------------------------------------------------

    def _connect(self) -> sqlite3.Connection:
        # A fresh connection per call: safe across threads and processes, and cheap for SQLite.
        db = sqlite3.connect(self.path, timeout=_BUSY_TIMEOUT_S, isolation_level=None)
        db.execute(f"PRAGMA busy_timeout = {int(_BUSY_TIMEOUT_S * 1000)}")
        return db

    @contextlib.contextmanager
    def _read(self) -> Iterator[sqlite3.Connection]:
        db = self._connect()
        try:
            db.execute("BEGIN")  # one snapshot for every SELECT of this read
            yield db
            db.execute("COMMIT")
        except sqlite3.Error as exc:
            raise ChainError(f"devchain read failed: {exc}") from exc
        finally:
            db.close()

    @contextlib.contextmanager
    def _write(self) -> Iterator[sqlite3.Connection]:
        db = self._connect()
        try:
            db.execute("BEGIN IMMEDIATE")  # take the write lock before reading what we change
            yield db  # an exception here skips COMMIT; closing the connection rolls back
            db.execute("COMMIT")
        except sqlite3.Error as exc:
            raise ChainError(f"devchain write failed: {exc}") from exc
        finally:
            db.close()

    # --- clock ---------------------------------------------------------------------------------

    def block(self) -> int:
        return self.slots.block_at(time.time())

    def block_timestamp(self, block: int) -> float:
        """A produced block's own timestamp; a future block's expected time (``devchain_clock``)."""
        return self.slots.timestamp(block, time.time())

    def block_time(self) -> float:
        return self._block_time

    def _included(self, block: int) -> None:
        """Wait until the block a write was included in has begun (as a real client would)."""
        # A missed slot makes the block later than expected: wait until it really exists.
        while self.wait_for_inclusion and self.block() < block:
            delay = self.block_timestamp(block) - time.time()
            threading.Event().wait(max(delay, self._block_time / 20))

    # --- reads ---------------------------------------------------------------------------------

    def metagraph(self, block: int | None = None) -> Metagraph:
        block = self.block() if block is None else self._existing(block)
        with self._read() as db:
            neurons = db.execute(
                "SELECT uid, hotkey, coldkey FROM neurons WHERE block <= ? ORDER BY uid", (block,)
            ).fetchall()
            stakes = dict(db.execute(_AS_OF.format(col="amount", table="stakes"), (block,)).fetchall())
            rows = db.execute(_AS_OF.format(col="row", table="weights"), (block,)).fetchall()
        weights = {uid: {int(k): v for k, v in json.loads(row).items()} for uid, row in rows}
        permits = self._permits(stakes)
        voting = {uid: stakes.get(uid, 0.0) for uid in permits}
        incentive = stake_weighted_incentive(voting, {v: weights[v] for v in permits if v in weights})
        return Metagraph(
            netuid=self.netuid,
            block=block,
            neurons=tuple(
                NeuronInfo(
                    uid=uid, hotkey=hotkey, coldkey=coldkey, stake=stakes.get(uid, 0.0),
                    validator_permit=uid in permits, incentive=incentive.get(uid, 0.0),
                    weights=weights.get(uid, {}),
                )
                for uid, hotkey, coldkey in neurons
            ),
        )

    def _permits(self, stakes: dict[int, float]) -> set[int]:
        """Validator permits: the ``max_validators`` largest stakes (ties to the lower uid)."""
        staked = sorted((uid for uid, s in stakes.items() if s > 0), key=lambda uid: (-stakes[uid], uid))
        return set(staked[: self.max_validators])

    def commitments(self, block: int | None = None) -> dict[int, str]:
        block = self.block() if block is None else self._existing(block)
        with self._read() as db:
            rows = db.execute(_AS_OF.format(col="data", table="commitments"), (block,)).fetchall()
        return dict(rows)

    def _existing(self, block: int) -> int:
        """``block`` if the subnet existed then (it is registered at the start block), as the SDK
        refuses to read a subnet's state from before it existed."""
        if block < self.slots.start_block:
            raise ChainError(
                f"netuid {self.netuid} does not exist at block {block} (registered at block {self.slots.start_block})"
            )
        return block

    def is_registered(self, hotkey: str) -> bool:
        return self.uid_of(hotkey) is not None

    def uid_of(self, hotkey: str) -> int | None:
        block = self.block()
        with self._read() as db:
            row = db.execute("SELECT uid FROM neurons WHERE hotkey = ? AND block <= ?", (hotkey, block)).fetchone()
        return None if row is None else int(row[0])

    # --- writes --------------------------------------------------------------------------------

    def _authenticate(self, signer: Signer, op: str, args: dict) -> str:
        hotkey = signer.hotkey
        message = signed_request(self.netuid, op, hotkey, args)
        if not verify_signature(hotkey, message, signer.sign(message)):
            raise ChainError(f"{op}: signature by {hotkey} does not verify")
        return hotkey

    def _uid_for_write(self, db: sqlite3.Connection, hotkey: str, op: str) -> int:
        row = db.execute("SELECT uid FROM neurons WHERE hotkey = ?", (hotkey,)).fetchone()
        if row is None:
            raise NotRegisteredError(f"{op}: hotkey {hotkey} is not registered on netuid {self.netuid}")
        return int(row[0])

    def register(self, signer: Signer, coldkey: str, stake: float = 0.0) -> int:
        """Give the signer's hotkey a uid (idempotent for the same coldkey); returns the uid."""
        if not math.isfinite(stake) or stake < 0:
            raise ChainError(f"register: stake must be finite and >= 0, got {stake}")
        hotkey = self._authenticate(signer, "register", {"coldkey": coldkey, "stake": stake})
        included = self.block() + 1
        with self._write() as db:
            row = db.execute("SELECT uid, coldkey FROM neurons WHERE hotkey = ?", (hotkey,)).fetchone()
            if row is not None:
                if row[1] != coldkey:
                    raise ChainError(f"register: hotkey {hotkey} is already owned by coldkey {row[1]}")
                return int(row[0])
            uid = db.execute("SELECT COUNT(*) FROM neurons").fetchone()[0]
            if uid >= self.max_uids:
                raise ChainError(f"register: subnet {self.netuid} is full ({self.max_uids} uids)")
            db.execute("INSERT INTO neurons VALUES (?, ?, ?, ?)", (uid, hotkey, coldkey, included))
            db.execute("INSERT INTO stakes (uid, block, amount) VALUES (?, ?, ?)", (uid, included, stake))
        self._included(included)
        return uid

    def set_stake(self, hotkey: str, amount: float) -> None:
        """Faucet: set a registered hotkey's stake (the devchain has no balances or staking)."""
        if not math.isfinite(amount) or amount < 0:
            raise ChainError(f"set_stake: amount must be finite and >= 0, got {amount}")
        included = self.block() + 1
        with self._write() as db:
            uid = self._uid_for_write(db, hotkey, "set_stake")
            db.execute("INSERT INTO stakes (uid, block, amount) VALUES (?, ?, ?)", (uid, included, amount))
        self._included(included)

    def commit(self, signer: Signer, data: str) -> None:
        if len(data.encode()) > MAX_COMMITMENT_CHARS:
            raise ChainError(f"commit: {len(data.encode())} bytes exceeds the {MAX_COMMITMENT_CHARS}-byte limit")
        hotkey = self._authenticate(signer, "commit", {"data": data})
        included = self.block() + 1
        with self._write() as db:
            uid = self._uid_for_write(db, hotkey, "commit")
            last = db.execute("SELECT MAX(block) FROM commitments WHERE uid = ?", (uid,)).fetchone()[0]
            check_rate("commit", self.rules.commit_rate_limit, last, included - 1)
            db.execute("INSERT INTO commitments (uid, block, data) VALUES (?, ?, ?)", (uid, included, data))
        self._included(included)

    def set_weights(self, signer: Signer, weights: dict[int, float], version_key: int = 0) -> None:
        """Refused like subtensor refuses it (``protocol.devchain_rules``); with commit-reveal on,
        the row is committed now and takes effect ``commit_reveal_blocks`` later, and the rate
        limit counts from the commit."""
        if any(not math.isfinite(w) or w < 0 for w in weights.values()):
            raise WeightsRefusedError("set_weights: weights must be finite and non-negative")
        row = normalize_weights(weights)
        if not row:
            raise WeightsRefusedError("set_weights: all weights are zero")
        args = {"weights": {str(k): v for k, v in row.items()}, "version_key": version_key}
        hotkey = self._authenticate(signer, "set_weights", args)
        included = self.block() + 1
        check_version_key(self.rules, version_key)
        with self._write() as db:
            uid = self._uid_for_write(db, hotkey, "set_weights")
            known = {r[0] for r in db.execute("SELECT uid FROM neurons WHERE block <= ?", (included,))}
            unknown = sorted(set(row) - known)
            if unknown:
                raise WeightsRefusedError(f"set_weights: unknown uids {unknown}")
            stakes = dict(db.execute(_AS_OF.format(col="amount", table="stakes"), (included,)).fetchall())
            if uid not in self._permits(stakes):
                raise WeightsRefusedError(f"set_weights: uid {uid} has no validator permit (stake {stakes.get(uid, 0.0)})")
            check_rate("set_weights", self.rules.weights_rate_limit, _last_weights(db, uid, included), included - 1)
            check_row(self.rules, uid, row, len(known))
            effective = included + self.rules.commit_reveal_blocks
            db.execute("INSERT INTO weights (uid, block, row) VALUES (?, ?, ?)", (uid, effective, json.dumps(row)))
            db.execute("INSERT INTO weight_sets (uid, block) VALUES (?, ?)", (uid, included))
        self._included(included)

    def weights_policy(self, uid: int) -> WeightsPolicy:
        block = self.block()
        with self._read() as db:
            last = _last_weights(db, uid, block)
            size = db.execute("SELECT COUNT(*) FROM neurons WHERE block <= ?", (block,)).fetchone()[0]
        r = self.rules
        return WeightsPolicy(
            block=block, rate_limit=r.weights_rate_limit, last_update=last, min_allowed_weights=r.min_allowed_weights,
            max_weight_share=r.max_weights_limit / U16_MAX, version_key=r.version_key,
            commit_reveal=r.commit_reveal_blocks > 0, subnet_size=int(size),
        )


def _last_weights(db: sqlite3.Connection, uid: int, block: int) -> int | None:
    """The block of ``uid``'s newest weight set (or commit) included at or before ``block``."""
    return db.execute("SELECT MAX(block) FROM weight_sets WHERE uid = ? AND block <= ?", (uid, block)).fetchone()[0]


def _slot_schedule(meta: dict[str, str], genesis: float, block_time: float) -> SlotSchedule:
    """The file's block production; a file made before these options runs from block 0, no misses."""
    try:
        return SlotSchedule(
            genesis, block_time, start_block=int(meta.get("start_block", 0)),
            missed_slots=float(meta.get("missed_slots", 0.0)), jitter=float(meta.get("jitter", 0.0)),
            seed=int(meta.get("slot_seed", 0)),
        )
    except ValueError as exc:
        raise ChainError(f"devchain block schedule is invalid: {exc}") from exc
