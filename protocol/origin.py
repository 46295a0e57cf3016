"""A run's origin: where it starts on chain and what it trains, published once by the subnet owner.

Windows count from ``start_block`` (``protocol.clock``), ``global_step`` from the windows since,
and no node reads chain state from before it. The record also pins what every node must agree on
before the first window: the hyperparameters (``hparams_digest``), the data (``data_digest``,
and where the shards are, ``data_url``) and the tokenizer.

Where it lives. The record is a small JSON object at ``origin_key(run_id)`` in the subnet owner's
bucket, and the owner's uid (``scoring.burn_uid``) commits that bucket's read-only access on chain
like every node does (``protocol.commitment``). Only the owner's hotkey can set that commitment, so
the chain says whose record counts; the record itself may be larger than the chain's 128-byte
commitment limit (a data URL alone can be longer). The key carries the run id, so a node started
with other hparams finds no record instead of someone else's. The owner writes it with a
conditional put: once published it is not overwritten.

The owner is trusted to start the run (it also chose the hparams), but its bucket is read like any
peer's: the reader checks the size before parsing, takes the JSON strictly (no extra keys, no
coercion), and refuses anything else with ``OriginError`` naming the problem.
"""

from __future__ import annotations

import json
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from protocol.hparams import Hparams
from protocol.keys import ObjectKeyError, payload_prefix
from protocol.validation import describe

MAX_ORIGIN_BYTES = 4096
VERSION = 1
# Largest block number a record may name: Substrate block numbers are u32.
MAX_BLOCK = 2**32 - 1
_PRINTABLE = r"^[\x21-\x7e]*$"  # printable ASCII without spaces


class OriginError(ValueError):
    """The run's origin is missing, malformed or not this run's; the message names the fix."""


class RunOrigin(BaseModel):
    """What the subnet owner publishes once per run (strict: a peer's bytes are hostile)."""

    model_config = ConfigDict(extra="forbid", frozen=True, strict=True)

    version: Literal[1] = VERSION
    start_block: int = Field(ge=0, le=MAX_BLOCK, description="the first block of window 0")
    hparams_digest: str = Field(pattern=r"^[0-9a-f]{64}$", description="hparams_digest(hparams)")
    data_digest: str = Field(max_length=128, pattern=_PRINTABLE, description="the dataset's digest")
    data_url: str | None = Field(default=None, max_length=512, pattern=_PRINTABLE, description="where shards are")
    tokenizer: str = Field(min_length=1, max_length=128, pattern=_PRINTABLE, description="tokenizer name")

    def to_bytes(self) -> bytes:
        """Canonical JSON (sorted keys, no spaces): equal records are equal bytes."""
        return json.dumps(self.model_dump(mode="json"), sort_keys=True, separators=(",", ":")).encode()

    @classmethod
    def parse(cls, data: bytes) -> RunOrigin:
        """The record in ``data``, or ``OriginError``; the size is checked before anything else."""
        if len(data) > MAX_ORIGIN_BYTES:
            raise OriginError(f"origin record is {len(data)} bytes, more than the {MAX_ORIGIN_BYTES} allowed")
        try:
            return cls.model_validate_json(data)
        except ValidationError as exc:
            raise OriginError(f"origin record is invalid at {describe(exc)}") from exc
        except (ValueError, UnicodeDecodeError) as exc:  # pydantic wraps most; be explicit anyway
            raise OriginError(f"origin record is not JSON: {exc}") from exc


def hparams_digest(hparams: Hparams) -> str:
    """The digest an origin pins the hyperparameters by (the run id is its first 12 digits)."""
    return hparams.digest


def origin_key(run_id: str) -> str:
    """Where the origin record of ``run_id`` lives in the owner's bucket."""
    try:
        payload_prefix(run_id)  # protocol.keys is the one place that checks run ids
    except ObjectKeyError as exc:
        raise OriginError(str(exc)) from exc
    return f"{run_id}/origin.json"


def check_origin(origin: RunOrigin, hparams: Hparams) -> RunOrigin:
    """``origin`` if it belongs to a run with ``hparams``; else ``OriginError`` naming the mismatch."""
    mine = hparams_digest(hparams)
    if origin.hparams_digest != mine:
        raise OriginError(
            f"the published origin pins hparams {origin.hparams_digest[:12]}, this node loaded {mine[:12]} "
            f"({hparams.name}): start the node with the network's hparams file"
        )
    return origin
