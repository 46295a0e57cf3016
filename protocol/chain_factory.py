"""Open the chain a node was configured for: the real network or the embedded devchain."""

from __future__ import annotations

from pathlib import Path

from protocol.chain import Chain, ChainError
from protocol.chain_bittensor import BittensorChain
from protocol.devchain import DevChain


def open_chain(
    network: str | None, devchain: str | Path | None, netuid: int, archive_endpoint: str | None = None
) -> Chain:
    """``network`` (finney | test | local | ws://...) or ``devchain`` (a SQLite path), not both.

    ``local`` keeps bittensor's meaning: a subtensor node on this machine. ``archive_endpoint``
    (``--subtensor.archive-endpoint``) serves reads of blocks the network's node has pruned.
    """
    if (network is None) == (devchain is None):
        raise ChainError("give exactly one of --subtensor.network or --devchain")
    if devchain is not None:
        if archive_endpoint is not None:
            raise ChainError("--subtensor.archive-endpoint is for --subtensor.network; a devchain keeps every block")
        return DevChain(devchain, netuid)
    return BittensorChain(network, netuid, archive_endpoint=archive_endpoint)
