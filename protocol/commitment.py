"""The bucket commitment: what a reader needs to fetch a node's objects, compact enough for chain.

The chain limit (bittensor 11 / subtensor ``pallet_commitments``): a commitment is
``CommitmentInfo { fields: BoundedVec<Data, MaxFields> }`` with ``MaxFields = 3`` on the subtensor
runtime, and the plain-bytes variant ``Data::Raw`` holds at most **128 bytes**
(SCALE variants ``Raw0`` .. ``Raw128``). The SDK's reader (``bittensor.metagraph``) concatenates
the ``Raw*`` fields and decodes them as UTF-8. Each ``set_commitment`` also spends at least 100
bytes of the account's per-epoch ``MaxSpace`` quota. Tessera therefore commits one ``Raw`` field
of at most ``MAX_COMMITMENT_BYTES`` = 128 ASCII bytes.

Encoding (version 1)::

    "1" + ",".join([endpoint, bucket, region, access_key_id, secret_access_key])

- endpoint: an R2 endpoint ``https://<account>.r2.cloudflarestorage.com`` is stored as the
  account id alone; any other endpoint as its URL (a field containing ``://``).
- region: empty when it is ``auto`` (R2's region, the default).
- any field that is lowercase hex of even length >= 16 (R2 account ids, key ids and secrets)
  is packed: ``"." + base85(bytes.fromhex(field))``, 20 chars for 32 hex digits. Base85's
  alphabet has no ``,`` or ``.``, so packed fields never collide with the separator or marker.

A typical R2 commitment is 88 bytes + the bucket name, so R2 buckets up to 40 characters fit;
longer inputs are refused with ``CommitmentError`` rather than truncated.
"""

from __future__ import annotations

import base64
import binascii
import re
from urllib.parse import urlsplit

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

MAX_COMMITMENT_BYTES = 128
VERSION = "1"
_SEP = ","
_PACKED = "."
_HEX = re.compile(r"^(?:[0-9a-f]{2}){8,}$")
_R2 = re.compile(r"^https://([0-9a-f]{32})\.r2\.cloudflarestorage\.com/?$")
_BUCKET = re.compile(r"^[a-z0-9][a-z0-9.-]{1,61}[a-z0-9]$")
_PLAIN = re.compile(r"^[\x21-\x7e]*$")  # printable ASCII, no spaces
_REGION = re.compile(r"^[a-zA-Z0-9](?:[a-zA-Z0-9-]{0,61}[a-zA-Z0-9])?$")  # what botocore accepts


class CommitmentError(ValueError):
    """A bucket commitment is malformed, or too long for the chain; the message says which."""


def _check_field(name: str, value: str) -> str:
    if not _PLAIN.match(value) or _SEP in value or value.startswith(_PACKED):
        raise ValueError(f"{name} must be printable ASCII without spaces or ',' and not start with '.'")
    return value


class BucketCommitment(BaseModel):
    """Read-only access to one node's bucket, as published on chain."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    endpoint_url: str = Field(min_length=1)
    bucket: str
    region: str = "auto"
    access_key_id: str = Field(min_length=1)
    # read-only by design (it is public on chain), but still kept out of logs and reprs
    secret_access_key: str = Field(min_length=1, repr=False)

    @field_validator("endpoint_url")
    @classmethod
    def _endpoint(cls, value: str) -> str:
        if not value.startswith(("http://", "https://")):
            raise ValueError("endpoint_url must start with http:// or https://")
        _check_field("endpoint_url", value)
        # A URL a client cannot be built from (malformed IPv6 literal, port out of range, no
        # host, user information) is refused here; which addresses a node may reach is the
        # reader's endpoint policy (storage.endpoints), not the commitment's.
        parts = urlsplit(value)  # ValueError for a malformed IPv6 literal
        port = parts.port  # ValueError when not a number or outside 0..65535
        if not parts.hostname or "@" in parts.netloc or port == 0:
            raise ValueError("endpoint_url needs a host, a port in 1..65535 and no user information")
        return value

    @field_validator("bucket")
    @classmethod
    def _bucket(cls, value: str) -> str:
        if not _BUCKET.match(value):
            raise ValueError("bucket must be 3-63 chars of [a-z0-9.-], starting and ending alphanumeric")
        return value

    @field_validator("region")
    @classmethod
    def _region(cls, value: str) -> str:
        if not _REGION.match(value):
            raise ValueError("region must be 1-63 letters, digits or '-', not starting or ending with '-'")
        return value

    @field_validator("access_key_id", "secret_access_key")
    @classmethod
    def _plain(cls, value: str) -> str:
        return _check_field("field", value)

    @classmethod
    def for_r2(cls, account_id: str, bucket: str, access_key_id: str, secret_access_key: str) -> BucketCommitment:
        return cls(
            endpoint_url=f"https://{account_id}.r2.cloudflarestorage.com",
            bucket=bucket,
            access_key_id=access_key_id,
            secret_access_key=secret_access_key,
        )

    def encode(self) -> str:
        """The compact chain form; raises ``CommitmentError`` when it exceeds 128 bytes."""
        r2 = _R2.match(self.endpoint_url)
        endpoint = r2.group(1) if r2 else self.endpoint_url
        region = "" if self.region == "auto" else self.region
        fields = [endpoint, self.bucket, region, self.access_key_id, self.secret_access_key]
        text = VERSION + _SEP.join(_pack(f) for f in fields)
        if len(text) > MAX_COMMITMENT_BYTES:
            raise CommitmentError(
                f"bucket commitment is {len(text)} bytes, the chain holds {MAX_COMMITMENT_BYTES}; "
                "use a shorter bucket name or endpoint"
            )
        return text

    @classmethod
    def decode(cls, text: str) -> BucketCommitment:
        """Parse a chain commitment; anything malformed raises ``CommitmentError``."""
        if not text or len(text.encode("utf-8", "replace")) > MAX_COMMITMENT_BYTES:
            raise CommitmentError(f"commitment is empty or longer than {MAX_COMMITMENT_BYTES} bytes")
        if text[0] != VERSION:
            raise CommitmentError(f"unknown commitment version {text[0]!r}")
        parts = text[1:].split(_SEP)
        if len(parts) != 5:
            raise CommitmentError(f"commitment has {len(parts)} fields, expected 5")
        endpoint, bucket, region, key_id, secret = (_unpack(p) for p in parts)
        if "://" not in endpoint:
            if not re.fullmatch(r"[0-9a-f]{32}", endpoint):
                raise CommitmentError("commitment endpoint is neither a URL nor an R2 account id")
            endpoint = f"https://{endpoint}.r2.cloudflarestorage.com"
        try:
            return cls(
                endpoint_url=endpoint,
                bucket=bucket,
                region=region or "auto",
                access_key_id=key_id,
                secret_access_key=secret,
            )
        except ValidationError as exc:
            raise CommitmentError(f"commitment fields are invalid: {exc.errors()[0]['msg']}") from exc


def _pack(field: str) -> str:
    if _HEX.match(field):
        return _PACKED + base64.b85encode(bytes.fromhex(field)).decode("ascii")
    return field


def _unpack(field: str) -> str:
    if not field.startswith(_PACKED):
        return field
    try:
        return base64.b85decode(field[1:]).hex()
    except (ValueError, binascii.Error) as exc:
        raise CommitmentError(f"packed commitment field is not valid base85: {exc}") from exc
