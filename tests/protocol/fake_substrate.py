"""An in-memory ``bittensor.Substrate`` for ``Client(substrate=...)``: recorded-shape answers.

Each answer has the shape the SDK's RPC backend returns after SCALE decoding (plain dicts, lists,
ints, 0x-hex strings). Any call tessera makes that is not recorded here raises, so a new chain
call cannot slip in untested.

It plays by the chain's rules where they change what a node must do:

- state is history: every write takes effect at the block that includes it (head + 1, and the
  head moves there, as a client waiting for inclusion sees), and a read pinned to block b sees
  the state as of b;
- extrinsics fail like subtensor's do (``ExtrinsicResult(success=False)`` carrying the SDK's
  ``ChainError`` with the runtime's error name): weights set too fast, under an old version key,
  too few, one too large; a commitment too soon after the last one;
- commit-reveal: with ``commit_reveal`` on, the SDK sends a timelocked commit; the commit bumps
  ``LastUpdate`` and the weights stay as they were (only a drand round would reveal them);
- an RPC node's limits: state below ``pruned_below`` is discarded ("State discarded", as the
  SDK reports it), and a storage item or runtime API listed in ``missing`` raises the plain
  ``ValueError`` the SDK's decoder raises for one that does not exist at that block;
- blocks that do not exist: a block above the head has no hash (the SDK's transport raises
  ``BlockNotFound``, which reaches callers as the SDK's ``ChainError``);
- a late subnet: with ``registered_at`` the subnet exists from that block on (a head far from
  genesis, as on finney); before it ``get_metagraph`` answers None and the subnet's maps are empty;
- real block timestamps: ``Timestamp.Now`` of block b is ``genesis_ms`` plus one slot per block,
  plus every slot ``missed`` at or before b, plus b's ``jitter_ms`` (the author's clock).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import bittensor
from bittensor import ExtrinsicResult
from bittensor._transport.errors import BlockNotFound
from bittensor.result import chain_error_from_substrate_request

U16_MAX = 65535
GENESIS_MS = 1_700_000_000_000
BLOCK_MS = 12_000


def block_hash_of(block: int) -> str:
    return f"0x{block:064x}"


def _graph(netuid: int, block: int, neurons: list[dict], last_update: list[int], registered_at: int = 10) -> dict:
    """``SubnetInfoRuntimeApi.get_metagraph`` as decoded by the SDK (columns per uid)."""
    return {
        "netuid": netuid, "name": [116, 101, 115, 116], "symbol": [206, 177], "block": block,
        "tempo": 360, "last_step": block - 5, "blocks_since_last_step": 5,
        "owner_hotkey": neurons[0]["hotkey"], "owner_coldkey": neurons[0]["coldkey"],
        "network_registered_at": registered_at, "num_uids": len(neurons), "max_uids": 256,
        "hotkeys": [n["hotkey"] for n in neurons], "coldkeys": [n["coldkey"] for n in neurons],
        "active": [True] * len(neurons), "validator_permit": [n["permit"] for n in neurons],
        "last_update": last_update, "block_at_registration": [registered_at] * len(neurons),
        "incentives": [n["incentive_u16"] for n in neurons], "total_stake": [n["stake_rao"] for n in neurons],
        "identities": [None] * len(neurons), "axons": [None] * len(neurons),
    }


@dataclass
class Rules:
    """The subnet hyperparameters the fake enforces (subtensor's names)."""

    weights_rate_limit: int = 100  # the chain's default WeightsSetRateLimit
    min_allowed_weights: int = 1
    max_weights_limit: int = U16_MAX
    weights_version_key: int = 0
    commitment_rate_limit: int = 0


@dataclass
class History:
    """Rows ``(block, key, value)``; ``as_of(b)`` is the newest value per key at or before b."""

    rows: list[tuple[int, Any, Any]] = field(default_factory=list)

    def add(self, block: int, key: Any, value: Any) -> None:
        self.rows.append((block, key, value))

    def as_of(self, block: int, base: dict | None = None) -> dict:
        state = dict(base or {})
        for at, key, value in self.rows:
            if at <= block:
                state[key] = value
        return state


class FakeSubstrate:
    """Chain state of one subnet at a moving head; reads record the block hash they were pinned to."""

    def __init__(self, netuid: int, neurons: list[dict], head: int = 1000, registered_at: int | None = None):
        self.netuid = netuid
        self.neurons = neurons
        self.head = head
        self.registered_at = registered_at  # None: the subnet has existed since block 10
        self.genesis_ms = GENESIS_MS  # Timestamp.Now of block 0
        self.missed: dict[int, int] = {}  # block -> slots missed just before it (it and later blocks come later)
        self.jitter_ms: dict[int, int] = {}  # block -> how late its author stamped it within its slot
        self.rules = Rules()
        self.commit_reveal = False
        self.token_symbols: dict[int, str] = {}
        self.weights: dict[int, list[tuple[int, int]]] = {}  # state before any write (genesis)
        self.commitments: dict[str, dict] = {}
        self.weights_history = History()
        self.commitment_history = History()
        self.last_update = History()  # uid -> block of its last weight set or commit
        self.timelocked_commits: list[tuple[int, int, int]] = []  # (block, uid, reveal_round)
        self.reads: list[tuple[str, str, Any]] = []
        self.submitted: list[tuple[Any, str]] = []
        self.pruned_below: int | None = None
        self.missing: set[str] = set()  # "Module.Item" or "Api.method" absent from the runtime

    def advance(self, blocks: int) -> None:
        self.head += blocks

    def balance(self, rao: int, netuid: int = 0) -> bittensor.Balance:
        return bittensor.Balance(int(rao), netuid, None)

    async def connect(self) -> None:
        return None

    async def close(self) -> None:
        return None

    async def block_number(self) -> int:
        return self.head

    async def block_hash(self, block: int | None = None) -> str:
        if block is not None and not 0 <= block <= self.head:
            # chain_getBlockHash answers null: the SDK's transport raises BlockNotFound and its
            # substrate wrapper hands callers the SDK's ChainError made from it (_public_request_error)
            raise chain_error_from_substrate_request(BlockNotFound(f"no block at height {block}"))
        return block_hash_of(self.head if block is None else block)

    def timestamp_ms(self, block: int) -> int:
        """``Timestamp.Now`` at ``block``: its slot's start (missed slots included) plus its jitter."""
        missed = sum(n for at, n in self.missed.items() if at <= block)
        return self.genesis_ms + (block + missed) * BLOCK_MS + self.jitter_ms.get(block, 0)

    def subnet_exists(self, block: int) -> bool:
        return self.registered_at is None or block >= self.registered_at

    async def block_time(self) -> float:
        return int(await self.constant("Aura", "SlotDuration")) / 1000.0

    async def constant(self, module: str, name: str) -> Any:
        if (module, name) == ("Aura", "SlotDuration"):
            return BLOCK_MS
        raise bittensor.ChainError(f"unrecorded constant {module}.{name}")

    # --- reads ---------------------------------------------------------------------------------

    def _pinned(self, what: str, params: Any, block_hash: str | None) -> int:
        """The block a read is pinned to, after the node's limits for it."""
        self.reads.append((what, str(params or []), block_hash))
        block = int(block_hash, 16) if block_hash else self.head
        if self.pruned_below is not None and block < self.pruned_below:
            raise bittensor.ChainError(
                f"State discarded for {block_hash_of(block)}. This indicates the block is too old, and you "
                "should instead make this request using an archive node."
            )
        if what in self.missing:
            raise ValueError(f"Storage function {what} not found at {block_hash_of(block)}")
        return block

    def _last_update(self, block: int) -> list[int]:
        last = self.last_update.as_of(block)
        return [int(last.get(uid, 0)) for uid in range(len(self.neurons))]

    async def query(self, module: str, name: str, params: list | None = None, block_hash: str | None = None) -> Any:
        block = self._pinned(f"{module}.{name}", params, block_hash)
        params = params or []
        uid_of = {n["hotkey"]: i for i, n in enumerate(self.neurons)}
        r = self.rules
        answers = {
            ("Timestamp", "Now"): lambda: self.timestamp_ms(block),
            ("SubtensorModule", "Uids"): lambda: uid_of.get(params[1]) if self.subnet_exists(block) else None,
            ("SubtensorModule", "CommitRevealWeightsEnabled"): lambda: self.commit_reveal,
            ("SubtensorModule", "WeightsSetRateLimit"): lambda: r.weights_rate_limit,
            ("SubtensorModule", "LastUpdate"): lambda: self._last_update(block),
            ("SubtensorModule", "MinAllowedWeights"): lambda: r.min_allowed_weights,
            ("SubtensorModule", "MaxWeightsLimit"): lambda: r.max_weights_limit,
            ("SubtensorModule", "WeightsVersionKey"): lambda: r.weights_version_key,
            ("SubtensorModule", "SubnetworkN"): lambda: len(self.neurons),
            ("SubtensorModule", "SubnetEpochConsensus"): lambda: "Yuma",
            # the epoch schedule the SDK reads to compute a timelocked commit's reveal round
            ("SubtensorModule", "Tempo"): lambda: 360,
            ("SubtensorModule", "RevealPeriodEpochs"): lambda: 1,
            ("SubtensorModule", "LastEpochBlock"): lambda: block - block % 360,
            ("SubtensorModule", "PendingEpochAt"): lambda: 0,
            ("SubtensorModule", "SubnetEpochIndex"): lambda: block // 360,
            ("SubtensorModule", "BlocksSinceLastStep"): lambda: block % 360,
        }
        if (module, name) not in answers:
            raise bittensor.ChainError(f"unrecorded storage {module}.{name}{params}")
        return answers[(module, name)]()

    async def query_map(self, module: str, name: str, params: list | None = None, block_hash: str | None = None) -> list:
        block = self._pinned(f"{module}.{name}", params, block_hash)
        if module in ("SubtensorModule", "Commitments") and name != "TokenSymbol" and not self.subnet_exists(block):
            return []  # the subnet's maps before it was registered
        answers = {
            ("SubtensorModule", "TokenSymbol"): lambda: [(self.netuid, "0xceb1")],
            ("SubtensorModule", "Weights"): lambda: sorted(self.weights_history.as_of(block, self.weights).items()),
            ("SubtensorModule", "Uids"): lambda: [(n["hotkey"], i) for i, n in enumerate(self.neurons)],
            ("Commitments", "CommitmentOf"): lambda: sorted(self.commitment_history.as_of(block, self.commitments).items()),
            ("Commitments", "RevealedCommitments"): lambda: [],
        }
        if (module, name) not in answers:
            raise bittensor.ChainError(f"unrecorded map {module}.{name}{params}")
        return answers[(module, name)]()

    async def runtime_call(self, api: str, method: str, params: list, block_hash: str | None = None) -> Any:
        block = self._pinned(f"{api}.{method}", params, block_hash)
        if (api, method) == ("SubnetInfoRuntimeApi", "get_metagraph"):
            if params != [self.netuid] or not self.subnet_exists(block):
                return None  # the runtime's answer for a subnet that does not exist (at that block)
            registered = 10 if self.registered_at is None else self.registered_at
            return _graph(self.netuid, block, self.neurons, self._last_update(block), registered)
        raise bittensor.ChainError(f"unrecorded runtime call {api}.{method}")

    # --- writes --------------------------------------------------------------------------------

    async def compose(self, call: Any) -> Any:
        return call  # a generated (module, function, params) Call stands in for the SCALE bytes

    async def estimate_fee(self, call: Any, keypair: Any) -> bittensor.Balance:
        return bittensor.Balance(1000)

    async def submit(self, call: Any, keypair: Any, **_: Any) -> ExtrinsicResult:
        """Include the call in the next block (the head moves there); refused like the runtime."""
        self.submitted.append((call, keypair.ss58_address))
        self.head += 1
        module, function, params = call
        handlers = {
            ("Commitments", "set_commitment"): self._set_commitment,
            ("SubtensorModule", "set_mechanism_weights"): self._set_weights,
            ("SubtensorModule", "commit_timelocked_mechanism_weights"): self._commit_weights,
        }
        handler = handlers.get((module, function))
        if handler is None:
            return ExtrinsicResult(success=False, message=f"unrecorded call {module}.{function}")
        error = handler(keypair.ss58_address, params)
        if error is not None:
            name, message = error
            return ExtrinsicResult(success=False, message=message, error=bittensor.ChainError(message, name))
        return ExtrinsicResult(success=True, message="Success", block_hash=block_hash_of(self.head))

    def _uid(self, hotkey: str) -> int:
        return next(i for i, n in enumerate(self.neurons) if n["hotkey"] == hotkey)

    def _too_soon(self, limit: int, last: int | None) -> bool:
        return bool(limit) and last is not None and last > 0 and self.head - last < limit

    def _set_commitment(self, hotkey: str, params: dict) -> tuple[str, str] | None:
        last = max((at for at, key, _ in self.commitment_history.rows if key == hotkey), default=None)
        if self._too_soon(self.rules.commitment_rate_limit, last):
            return "CommitmentSetRateLimitExceeded", "Commitments: CommitmentSetRateLimitExceeded"
        self.commitment_history.add(self.head, hotkey, {"deposit": 0, "block": self.head, "info": _hex_fields(params["info"])})
        return None

    def _weights_refusal(self, uid: int, dests: list[int], values: list[int], version_key: int) -> tuple[str, str] | None:
        r = self.rules
        if r.weights_version_key and version_key < r.weights_version_key:
            return "IncorrectWeightVersionKey", "SubtensorModule: IncorrectWeightVersionKey"
        if self._too_soon(r.weights_rate_limit, self.last_update.as_of(self.head - 1).get(uid)):
            return "SettingWeightsTooFast", "SubtensorModule: SettingWeightsTooFast"
        if dests != [uid] and len(dests) < min(r.min_allowed_weights, len(self.neurons)):
            return "WeightVecLengthIsLow", "SubtensorModule: WeightVecLengthIsLow"
        if dests != [uid] and values and max(values) * U16_MAX > r.max_weights_limit * sum(values):
            return "MaxWeightExceeded", "SubtensorModule: MaxWeightExceeded"
        return None

    def _set_weights(self, hotkey: str, params: dict) -> tuple[str, str] | None:
        uid = self._uid(hotkey)
        refusal = self._weights_refusal(uid, list(params["dests"]), list(params["weights"]), params["version_key"])
        if refusal is not None:
            return refusal
        self.weights_history.add(self.head, uid, list(zip(params["dests"], params["weights"], strict=True)))
        self.last_update.add(self.head, uid, self.head)
        return None

    def _commit_weights(self, hotkey: str, params: dict) -> tuple[str, str] | None:
        uid = self._uid(hotkey)
        if self._too_soon(self.rules.weights_rate_limit, self.last_update.as_of(self.head - 1).get(uid)):
            return "CommittingWeightsTooFast", "SubtensorModule: CommittingWeightsTooFast"
        self.timelocked_commits.append((self.head, uid, int(params["reveal_round"])))
        self.last_update.add(self.head, uid, self.head)
        return None


def _hex_fields(info: dict) -> dict:
    """What the chain's decoder gives back for submitted ``Raw`` fields: 0x-hex strings."""
    return {"fields": [{k: "0x" + bytes(v).hex() for k, v in field.items()} for field in info["fields"]]}
