"""The real chain backend, on bittensor 11's async ``Client`` (the lean SDK: no axon, no mock).

Every read is pinned to one block (``client.at(block)``), so a metagraph, its weights and the
commitments of a window's first block are one consistent state. What tessera asks the chain:

- head block (``chain_getHeader``), a block's timestamp (``Timestamp.Now`` at that block),
  block time (``Aura.SlotDuration``);
- metagraph: ``SubnetInfoRuntimeApi.get_metagraph`` + the ``SubtensorModule.Weights`` map;
- commitments: the ``Commitments.CommitmentOf`` / ``RevealedCommitments`` maps + ``Uids``;
- registration check: ``SubtensorModule.Uids``;
- the subnet's weight rules (``WeightsSetRateLimit``, ``LastUpdate``, ``MinAllowedWeights``,
  ``MaxWeightsLimit``, ``WeightsVersionKey``, ``CommitRevealWeightsEnabled``, ``SubnetworkN``);
- writes, signed by the hotkey: ``Commitments.set_commitment`` with one ``Raw`` field, and the
  SDK's ``SetWeights`` intent (conforms to the subnet's limits, picks plain or commit-reveal),
  under the hparams' version key.

Errors: every SDK failure becomes a ``ChainError`` (the node loop retries a window on it), typed
where a node acts on the kind: ``RateLimitedError``, ``WeightsRefusedError`` (version key, count,
share, permit), ``OldStateError`` (state pruned at the pinned block). The SDK's decoder raises
plain ``ValueError``/``LookupError`` when a storage item or runtime API does not exist at the
pinned block (``bittensor._transport``: ``StorageFunctionNotFound``, "Runtime API Call ... not
found"); those are chain errors too, never a node exit.

Old blocks: with ``archive_endpoint`` (``--subtensor.archive-endpoint``), a read whose state the
node has pruned is repeated on the archive node, and blocks below the first pruned one go there
directly. Without it the SDK's own archive pool applies (finney only), and a pruned read raises
``OldStateError`` naming the flag.

Registration itself (a coldkey-paid burned registration) is an operator action done with the
SDK's CLI, not by the daemons. The async client runs on a private event loop thread so the rest
of tessera stays synchronous.
"""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Callable, Coroutine
from typing import Any, TypeVar

import bittensor
from bittensor import metagraph as sdk_metagraph
from bittensor.intents.weights import SetWeights
from bittensor.reads import neurons as sdk_neurons
from bittensor.reads import weights as sdk_weights

from protocol.chain import (
    U16_MAX,
    Chain,
    ChainError,
    Metagraph,
    NeuronInfo,
    OldStateError,
    RateLimitedError,
    WeightsPolicy,
    WeightsRefusedError,
)
from protocol.signing import Signer

T = TypeVar("T")
MAX_COMMITMENT_BYTES = 128  # one Data::Raw field (see protocol.commitment)
ARCHIVE_FLAG = "--subtensor.archive-endpoint"
# What a chain call may raise, besides the SDK's own errors: time-outs and sockets, and the plain
# ValueError / LookupError of the SDK's decoder for state or APIs missing at the pinned block.
_SDK_FAILURES = (bittensor.BittensorError, TimeoutError, OSError, ValueError, LookupError)
# SDK error names (and codes) that mean the chain refused this weight vector or key for good
_WEIGHTS_REFUSALS = {"IncorrectWeightVersionKey", "WeightVecLengthIsLow", "MaxWeightExceeded", "UidVecContainInvalidOne",
                     "NeuronNoValidatorPermit", "NotEnoughStakeToSetWeights", "DuplicateUids"}
_WEIGHTS_REFUSAL_CODES = {bittensor.ErrorCode.INVALID_ARGUMENT, bittensor.ErrorCode.NOT_AUTHORIZED,
                          bittensor.ErrorCode.LIMIT_EXCEEDED}


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


def _typed(what: str, where: str, exc: bittensor.ChainError) -> ChainError:
    """The tessera error for an SDK ``ChainError``, by its name and code."""
    message = f"{what} on {where} failed: {exc}"
    if "state discarded" in str(exc).lower():
        return OldStateError(f"{message}; the node has pruned that state: pass {ARCHIVE_FLAG} ws(s)://<archive node>")
    if exc.code == bittensor.ErrorCode.RATE_LIMITED:
        return RateLimitedError(message)
    if what == "set_weights" and (exc.name in _WEIGHTS_REFUSALS or exc.code in _WEIGHTS_REFUSAL_CODES):
        return WeightsRefusedError(message)
    return ChainError(message)


class BittensorChain(Chain):
    def __init__(
        self,
        network: str,
        netuid: int,
        *,
        archive_endpoint: str | None = None,
        substrate: bittensor.Substrate | None = None,
        archive_substrate: bittensor.Substrate | None = None,
        timeout: float = 120.0,
    ):
        self.netuid = netuid
        self.network = network
        # with our own archive, the primary client does not retry pruned reads elsewhere itself
        self._client = bittensor.Client(network, substrate=substrate, archive_endpoints=[] if archive_endpoint else None)
        self.archive_endpoint = archive_endpoint
        self._archive: bittensor.Client | None = None
        if archive_endpoint is not None:
            self._archive = bittensor.Client(archive_endpoint, substrate=archive_substrate, archive_endpoints=[])
        self._pruned_below = 0  # reads below this block go straight to the archive
        self._timeout = timeout
        self._loop = _LoopThread()
        self._connected: set[int] = set()
        self._block_time: float | None = None

    def _run(self, what: str, coro: Coroutine[Any, Any, T], client: bittensor.Client | None = None) -> T:
        client = client or self._client
        where = f"{client.endpoint if client is self._archive else self.network} netuid {self.netuid}"
        try:
            self._connect(client)
        except ChainError:
            coro.close()  # never scheduled; avoids a never-awaited warning
            raise
        try:
            return self._loop.run(coro, self._timeout)
        except bittensor.ChainError as exc:
            raise _typed(what, where, exc) from exc
        except _SDK_FAILURES as exc:
            raise ChainError(f"{what} on {where} failed: {type(exc).__name__}: {exc}") from exc

    def _connect(self, client: bittensor.Client) -> None:
        if id(client) in self._connected:
            return
        try:
            self._loop.run(client.connect(), self._timeout)
        except _SDK_FAILURES as exc:
            raise ChainError(f"cannot connect to {client.endpoint}: {exc}") from exc
        self._connected.add(id(client))

    def _read_at(self, what: str, block: int | None, read: Callable[[bittensor.Client], Coroutine[Any, Any, T]]) -> T:
        """A read pinned to ``block``: on the node, or on the archive once the node has pruned it."""
        if block is not None and self._archive is not None and block < self._pruned_below:
            return self._from_archive(what, block, read)
        try:
            return self._run(what, read(self._client))
        except OldStateError:
            if block is None or self._archive is None:
                raise
            self._pruned_below = max(self._pruned_below, block + 1)
            return self._from_archive(what, block, read)

    def _from_archive(self, what: str, block: int, read: Callable[[bittensor.Client], Coroutine[Any, Any, T]]) -> T:
        assert self._archive is not None
        try:
            return self._run(f"{what} at block {block}", read(self._archive), self._archive)
        except ChainError as exc:
            raise OldStateError(
                f"{exc} (the archive node {self.archive_endpoint} given by {ARCHIVE_FLAG} could not serve block "
                f"{block}: point {ARCHIVE_FLAG} at an archive node of {self.network})"
            ) from exc

    def close(self) -> None:
        for client in (self._client, self._archive):
            if client is not None and id(client) in self._connected:
                self._loop.run(client.close(), self._timeout)
        self._connected.clear()
        self._loop.stop()

    # --- clock ---------------------------------------------------------------------------------

    def block(self) -> int:
        return int(self._run("block", self._client.block()))

    def block_time(self) -> float:
        if self._block_time is None:
            self._block_time = float(self._run("block_time", self._client.block_time()))
        return self._block_time

    def block_timestamp(self, block: int) -> float:
        """A produced block's own ``Timestamp.Now``. A block above the head has no hash yet (the SDK
        would raise ``BlockNotFound``), so it is never read: its expected time is returned, as the
        ``Chain`` interface says, for sleeping only (``protocol.clock``). A block the node cannot
        resolve (a negative number, or a node that has not imported the head just read) raises
        ``ChainError``."""
        if block < 0:
            raise ChainError(f"timestamp: block {block} does not exist (block numbers start at 0)")
        head = self.block()
        if block > head:
            return self._timestamp(head) + (block - head) * self.block_time()
        return self._timestamp(block)

    def _timestamp(self, block: int) -> float:
        stamp = self._read_at("timestamp", block, lambda client: client.timestamp(block=block))
        return stamp.timestamp()

    # --- reads ---------------------------------------------------------------------------------

    def metagraph(self, block: int | None = None) -> Metagraph:
        return self._read_at("metagraph", block, lambda client: self._metagraph(client, block))

    async def _metagraph(self, client: bittensor.Client, block: int | None) -> Metagraph:
        view = await client.at(block)
        graph = await sdk_metagraph.fetch(view, self.netuid, commitments=False)
        if graph is None:
            raise ChainError(f"subnet {self.netuid} does not exist on {self.network} at block {view.block}")
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
        return self._read_at("commitments", block, lambda client: self._commitments(client, block))

    async def _commitments(self, client: bittensor.Client, block: int | None) -> dict[int, str]:
        view = await client.at(block)
        records = await sdk_metagraph.fetch_commitments(view, self.netuid)
        return {c.uid: c.value for c in records.values() if c.uid is not None and c.value}

    def is_registered(self, hotkey: str) -> bool:
        return self.uid_of(hotkey) is not None

    def uid_of(self, hotkey: str) -> int | None:
        return self._run("uid lookup", sdk_neurons.uid(self._client, hotkey, self.netuid))

    def weights_policy(self, uid: int) -> WeightsPolicy:
        return self._run("weights_policy", self._weights_policy(uid))

    async def _weights_policy(self, uid: int) -> WeightsPolicy:
        view = await self._client.at(None)
        st = bittensor.storage.SubtensorModule
        items = (st.WeightsSetRateLimit, st.LastUpdate, st.MinAllowedWeights, st.MaxWeightsLimit,
                 st.WeightsVersionKey, st.CommitRevealWeightsEnabled, st.SubnetworkN)
        # LastUpdate is keyed by the mechanism's storage index, which is the netuid for mechanism 0
        rate, last, min_w, max_w, version, reveal, size = await asyncio.gather(
            *(view.query(item, [self.netuid]) for item in items)
        )
        last_update = int(last[uid]) if isinstance(last, list | tuple) and 0 <= uid < len(last) else 0
        return WeightsPolicy(
            block=view.block, rate_limit=int(rate or 0), last_update=last_update or None,
            min_allowed_weights=int(min_w or 0), max_weight_share=(U16_MAX if max_w is None else int(max_w)) / U16_MAX,
            version_key=int(version or 0), commit_reveal=bool(reveal), subnet_size=int(size or 0),
        )

    # --- writes --------------------------------------------------------------------------------

    def commit(self, signer: Signer, data: str) -> None:
        raw = data.encode()
        if len(raw) > MAX_COMMITMENT_BYTES:
            raise ChainError(f"commit: {len(raw)} bytes exceeds the chain's {MAX_COMMITMENT_BYTES}-byte Raw field")
        info = {"fields": [{f"Raw{len(raw)}": raw}]}
        call = bittensor.calls.Commitments.set_commitment(netuid=self.netuid, info=info)
        result = self._run("commit", self._client.submit_call(call, _keypair(signer), signer="hotkey"))
        self._check(result, "commit")

    def set_weights(self, signer: Signer, weights: dict[int, float], version_key: int = 0) -> None:
        intent = SetWeights(netuid=self.netuid, weights=dict(weights), version_key=version_key)
        result = self._run("set_weights", self._client.execute(intent, _keypair(signer)))
        self._check(result, "set_weights")

    def _check(self, result: bittensor.ExtrinsicResult, what: str) -> None:
        if result.success:
            return
        error = result.error or bittensor.ChainError(result.message or "extrinsic failed")
        raise _typed(what, f"{self.network} netuid {self.netuid}", error)
