"""The real chain backend, on bittensor 11's async ``Client`` (the lean SDK: no axon, no mock).

Every read is pinned to one block (``client.at(block)``), so a metagraph, its weights and the
commitments of a window's first block are one consistent state. What tessera asks the chain:

- head block (``chain_getHeader``), a block's timestamp (``Timestamp.Now`` at that block),
  block time (``Aura.SlotDuration``);
- metagraph: ``SubnetInfoRuntimeApi.get_metagraph`` + the ``SubtensorModule.Weights`` map;
- commitments: the ``Commitments.CommitmentOf`` / ``RevealedCommitments`` maps + ``Uids``;
- registration check: ``SubtensorModule.Uids``;
- writes, signed by the hotkey: ``Commitments.set_commitment`` with one ``Raw`` field, and the
  SDK's ``SetWeights`` intent (conforms to the subnet's limits, picks plain or commit-reveal).

Registration itself (a coldkey-paid burned registration) is an operator action done with the
SDK's CLI, not by the daemons. The async client runs on a private event loop thread so the rest
of tessera stays synchronous.
"""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Coroutine
from typing import Any, TypeVar

import bittensor
from bittensor import metagraph as sdk_metagraph
from bittensor.intents.weights import SetWeights
from bittensor.reads import neurons as sdk_neurons
from bittensor.reads import weights as sdk_weights

from protocol.chain import Chain, ChainError, Metagraph, NeuronInfo
from protocol.signing import Signer

T = TypeVar("T")
MAX_COMMITMENT_BYTES = 128  # one Data::Raw field (see protocol.commitment)


class _LoopThread:
    """An asyncio loop on a daemon thread; ``run`` blocks the caller until a coroutine is done."""

    def __init__(self) -> None:
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, name="bittensor-client", daemon=True)
        self._thread.start()

    def run(self, coro: Coroutine[Any, Any, T], timeout: float) -> T:
        future = asyncio.run_coroutine_threadsafe(coro, self._loop)
        try:
            return future.result(timeout)
        except TimeoutError:
            future.cancel()
            raise

    def stop(self) -> None:
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(timeout=5)


def _keypair(signer: Signer) -> Any:
    """The SDK-shaped key behind a tessera signer (``HotkeySigner.keypair``)."""
    keypair = getattr(signer, "keypair", None)
    if keypair is None:
        raise ChainError(f"{signer!r} carries no keypair; the bittensor backend needs a HotkeySigner")
    return keypair


class BittensorChain(Chain):
    def __init__(
        self,
        network: str,
        netuid: int,
        *,
        substrate: bittensor.Substrate | None = None,
        timeout: float = 120.0,
    ):
        self.netuid = netuid
        self.network = network
        self._client = bittensor.Client(network, substrate=substrate)
        self._timeout = timeout
        self._loop = _LoopThread()
        self._connected = False
        self._block_time: float | None = None

    def _run(self, what: str, coro: Coroutine[Any, Any, T]) -> T:
        try:
            self._connect()
        except ChainError:
            coro.close()  # never scheduled; avoids a never-awaited warning
            raise
        try:
            return self._loop.run(coro, self._timeout)
        except (bittensor.BittensorError, TimeoutError, OSError) as exc:
            raise ChainError(f"{what} on {self.network} netuid {self.netuid} failed: {exc}") from exc

    def _connect(self) -> None:
        if self._connected:
            return
        try:
            self._loop.run(self._client.connect(), self._timeout)
        except (bittensor.BittensorError, TimeoutError, OSError) as exc:
            raise ChainError(f"cannot connect to {self.network}: {exc}") from exc
        self._connected = True

    def close(self) -> None:
        if self._connected:
            self._loop.run(self._client.close(), self._timeout)
            self._connected = False
        self._loop.stop()

    # --- clock ---------------------------------------------------------------------------------

    def block(self) -> int:
        return int(self._run("block", self._client.block()))

    def block_time(self) -> float:
        if self._block_time is None:
            self._block_time = float(self._run("block_time", self._client.block_time()))
        return self._block_time

    def block_timestamp(self, block: int) -> float:
        head = self.block()
        if block > head:
            return self.block_timestamp(head) + (block - head) * self.block_time()
        stamp = self._run("timestamp", self._client.timestamp(block=block))
        return stamp.timestamp()

    # --- reads ---------------------------------------------------------------------------------

    def metagraph(self, block: int | None = None) -> Metagraph:
        return self._run("metagraph", self._metagraph(block))

    async def _metagraph(self, block: int | None) -> Metagraph:
        view = await self._client.at(block)
        graph = await sdk_metagraph.fetch(view, self.netuid, commitments=False)
        if graph is None:
            raise ChainError(f"subnet {self.netuid} does not exist on {self.network}")
        rows = await sdk_weights.weights(view, self.netuid)
        neurons = tuple(
            NeuronInfo(
                uid=n.uid,
                hotkey=n.hotkey,
                coldkey=n.coldkey,
                stake=n.total_stake.rao / 1e9,  # the subnet's stake weight, in alpha units
                validator_permit=n.validator_permit,
                incentive=n.incentive,
                weights=rows.get(n.uid, {}),
            )
            for n in graph.neurons
        )
        return Metagraph(netuid=self.netuid, block=view.block, neurons=neurons)

    def commitments(self, block: int | None = None) -> dict[int, str]:
        return self._run("commitments", self._commitments(block))

    async def _commitments(self, block: int | None) -> dict[int, str]:
        view = await self._client.at(block)
        records = await sdk_metagraph.fetch_commitments(view, self.netuid)
        return {c.uid: c.value for c in records.values() if c.uid is not None and c.value}

    def is_registered(self, hotkey: str) -> bool:
        return self.uid_of(hotkey) is not None

    def uid_of(self, hotkey: str) -> int | None:
        return self._run("uid lookup", sdk_neurons.uid(self._client, hotkey, self.netuid))

    # --- writes --------------------------------------------------------------------------------

    def commit(self, signer: Signer, data: str) -> None:
        raw = data.encode()
        if len(raw) > MAX_COMMITMENT_BYTES:
            raise ChainError(f"commit: {len(raw)} bytes exceeds the chain's {MAX_COMMITMENT_BYTES}-byte Raw field")
        info = {"fields": [{f"Raw{len(raw)}": raw}]}
        call = bittensor.calls.Commitments.set_commitment(netuid=self.netuid, info=info)
        result = self._run("commit", self._client.submit_call(call, _keypair(signer), signer="hotkey"))
        self._check(result, "commit")

    def set_weights(self, signer: Signer, weights: dict[int, float]) -> None:
        intent = SetWeights(netuid=self.netuid, weights=dict(weights))
        result = self._run("set_weights", self._client.execute(intent, _keypair(signer)))
        self._check(result, "set_weights")

    def _check(self, result: bittensor.ExtrinsicResult, what: str) -> None:
        if not result.success:
            raise ChainError(f"{what} was rejected by {self.network}: {result.message}")
