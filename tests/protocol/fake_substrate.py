"""An in-memory ``bittensor.Substrate`` for ``Client(substrate=...)``: recorded-shape answers.

Each answer has the shape the SDK's RPC backend returns after SCALE decoding (plain dicts, lists,
ints, 0x-hex strings). Any call tessera makes that is not recorded here raises, so a new chain
call cannot slip in untested. Writes are applied to the recorded state, like a chain would.
"""

from __future__ import annotations

from typing import Any

import bittensor
from bittensor import ExtrinsicResult

U16_MAX = 65535
GENESIS_MS = 1_700_000_000_000
BLOCK_MS = 12_000


def block_hash_of(block: int) -> str:
    return f"0x{block:064x}"


def _graph(netuid: int, block: int, neurons: list[dict]) -> dict:
    """``SubnetInfoRuntimeApi.get_metagraph`` as decoded by the SDK (columns per uid)."""
    return {
        "netuid": netuid, "name": [116, 101, 115, 116], "symbol": [206, 177], "block": block,
        "tempo": 360, "last_step": block - 5, "blocks_since_last_step": 5,
        "owner_hotkey": neurons[0]["hotkey"], "owner_coldkey": neurons[0]["coldkey"],
        "network_registered_at": 10, "num_uids": len(neurons), "max_uids": 256,
        "hotkeys": [n["hotkey"] for n in neurons], "coldkeys": [n["coldkey"] for n in neurons],
        "active": [True] * len(neurons), "validator_permit": [n["permit"] for n in neurons],
        "last_update": [block - 1] * len(neurons), "block_at_registration": [10] * len(neurons),
        "incentives": [n["incentive_u16"] for n in neurons], "total_stake": [n["stake_rao"] for n in neurons],
        "identities": [None] * len(neurons), "axons": [None] * len(neurons),
    }


class FakeSubstrate:
    """Chain state of one subnet at a moving head; reads record the block hash they were pinned to."""

    def __init__(self, netuid: int, neurons: list[dict], head: int = 1000):
        self.netuid = netuid
        self.neurons = neurons
        self.head = head
        self.token_symbols: dict[int, str] = {}
        self.weights: dict[int, list[tuple[int, int]]] = {}
        self.commitments: dict[str, dict] = {}
        self.reads: list[tuple[str, str, Any]] = []
        self.submitted: list[tuple[Any, str]] = []
        self.commit_reveal = False

    def balance(self, rao: int, netuid: int = 0) -> bittensor.Balance:
        return bittensor.Balance(int(rao), netuid, None)

    async def connect(self) -> None:
        return None

    async def close(self) -> None:
        return None

    async def block_number(self) -> int:
        return self.head

    async def block_hash(self, block: int | None = None) -> str:
        return block_hash_of(self.head if block is None else block)

    async def block_time(self) -> float:
        return int(await self.constant("Aura", "SlotDuration")) / 1000.0

    async def constant(self, module: str, name: str) -> Any:
        if (module, name) == ("Aura", "SlotDuration"):
            return BLOCK_MS
        raise bittensor.ChainError(f"unrecorded constant {module}.{name}")

    async def query(self, module: str, name: str, params: list | None = None, block_hash: str | None = None) -> Any:
        self.reads.append((f"{module}.{name}", str(params or []), block_hash))
        params = params or []
        block = int(block_hash, 16) if block_hash else self.head
        uid_of = {n["hotkey"]: i for i, n in enumerate(self.neurons)}
        answers = {
            ("Timestamp", "Now"): lambda: GENESIS_MS + block * BLOCK_MS,
            ("SubtensorModule", "Uids"): lambda: uid_of.get(params[1]),
            ("SubtensorModule", "CommitRevealWeightsEnabled"): lambda: self.commit_reveal,
            ("SubtensorModule", "WeightsSetRateLimit"): lambda: 100,
            ("SubtensorModule", "LastUpdate"): lambda: [0] * len(self.neurons),
            ("SubtensorModule", "MinAllowedWeights"): lambda: 1,
            ("SubtensorModule", "MaxWeightsLimit"): lambda: U16_MAX,
            ("SubtensorModule", "SubnetEpochConsensus"): lambda: "Yuma",
        }
        if (module, name) not in answers:
            raise bittensor.ChainError(f"unrecorded storage {module}.{name}{params}")
        return answers[(module, name)]()

    async def query_map(self, module: str, name: str, params: list | None = None, block_hash: str | None = None) -> list:
        self.reads.append((f"{module}.{name}", str(params or []), block_hash))
        answers = {
            ("SubtensorModule", "TokenSymbol"): lambda: [(self.netuid, "0xceb1")],
            ("SubtensorModule", "Weights"): lambda: sorted(self.weights.items()),
            ("SubtensorModule", "Uids"): lambda: [(n["hotkey"], i) for i, n in enumerate(self.neurons)],
            ("Commitments", "CommitmentOf"): lambda: sorted(self.commitments.items()),
            ("Commitments", "RevealedCommitments"): lambda: [],
        }
        if (module, name) not in answers:
            raise bittensor.ChainError(f"unrecorded map {module}.{name}{params}")
        return answers[(module, name)]()

    async def runtime_call(self, api: str, method: str, params: list, block_hash: str | None = None) -> Any:
        self.reads.append((f"{api}.{method}", str(params), block_hash))
        if (api, method) == ("SubnetInfoRuntimeApi", "get_metagraph"):
            return _graph(self.netuid, int(block_hash, 16), self.neurons) if params == [self.netuid] else None
        raise bittensor.ChainError(f"unrecorded runtime call {api}.{method}")

    async def compose(self, call: Any) -> Any:
        return call  # a generated (module, function, params) Call stands in for the SCALE bytes

    async def estimate_fee(self, call: Any, keypair: Any) -> bittensor.Balance:
        return bittensor.Balance(1000)

    async def submit(self, call: Any, keypair: Any, **_: Any) -> ExtrinsicResult:
        self.submitted.append((call, keypair.ss58_address))
        module, function, params = call
        if (module, function) == ("Commitments", "set_commitment"):
            self.commitments[keypair.ss58_address] = {"deposit": 0, "block": self.head + 1, "info": _hex_fields(params["info"])}
        elif (module, function) == ("SubtensorModule", "set_mechanism_weights"):
            uid = next(i for i, n in enumerate(self.neurons) if n["hotkey"] == keypair.ss58_address)
            self.weights[uid] = list(zip(params["dests"], params["weights"], strict=True))
        else:
            return ExtrinsicResult(success=False, message=f"unrecorded call {module}.{function}")
        return ExtrinsicResult(success=True, message="Success", block_hash=block_hash_of(self.head + 1))


def _hex_fields(info: dict) -> dict:
    """What the chain's decoder gives back for submitted ``Raw`` fields: 0x-hex strings."""
    return {"fields": [{k: "0x" + bytes(v).hex() for k, v in field.items()} for field in info["fields"]]}
