"""The fingerprint record every node publishes after each window, and the one way to read it.

A node writes ``{window, fingerprint, gathered, uid}`` to its own bucket after applying window
``window``: ``fingerprint`` is the hash of θ_{window+1} and ``gathered`` the uids it aggregated.
Joiners count validators' records to confirm a checkpoint, so a record is peer-controlled bytes:
``parse`` returns a valid record or raises ``FingerprintRecordError`` for *any* input (too long,
not UTF-8, not JSON, nested, wrong types, extra keys), never another exception.
"""

from __future__ import annotations

from typing import Annotated

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from protocol.validation import describe

MAX_RECORD_BYTES = 1 << 16
MAX_FINGERPRINT_CHARS = 128
MAX_GATHERED = 4096
# object keys hold windows in ten digits and uids in five (protocol.keys)
MAX_WINDOW = 10**10 - 1
MAX_UID = 10**5 - 1

Uid = Annotated[int, Field(ge=0, le=MAX_UID)]


class FingerprintRecordError(ValueError):
    """A published fingerprint record is malformed; the message names the problem."""


class FingerprintRecord(BaseModel):
    """θ_{window+1}'s fingerprint as node ``uid`` computed it, and the uids it aggregated."""

    # strict: "7" is not a window and 1.0 not a uid; what a peer wrote is taken literally
    model_config = ConfigDict(extra="forbid", frozen=True, strict=True)

    window: int = Field(ge=0, le=MAX_WINDOW)
    fingerprint: str = Field(pattern=r"^[0-9a-f]+$", min_length=1, max_length=MAX_FINGERPRINT_CHARS)
    gathered: list[Uid] = Field(max_length=MAX_GATHERED)
    uid: Uid

    def to_bytes(self) -> bytes:
        return self.model_dump_json().encode()

    @classmethod
    def parse(cls, data: bytes, max_bytes: int = MAX_RECORD_BYTES) -> FingerprintRecord:
        """The record in ``data``; FingerprintRecordError for anything else."""
        if len(data) > max_bytes:
            raise FingerprintRecordError(f"fingerprint record of {len(data)} bytes exceeds the cap of {max_bytes}")
        try:
            # pydantic's JSON parser refuses deep nesting, lone surrogates and bad UTF-8 itself
            return cls.model_validate_json(data)
        except ValidationError as err:
            raise FingerprintRecordError(f"fingerprint record is invalid: {describe(err)}") from err


