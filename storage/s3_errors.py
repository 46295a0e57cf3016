"""Which botocore failures are transient, and which typed StorageError each one becomes.

S3-compatible servers disagree on error codes (HEAD has no body, so only the status survives;
SeaweedFS, R2, MinIO and AWS each spell a few codes differently), so the mapping looks at the
code first and falls back to the HTTP status.
"""

from __future__ import annotations

from botocore.exceptions import (
    BotoCoreError,
    ClientError,
    HTTPClientError,
    IncompleteReadError,
)
from botocore.exceptions import ConnectionError as BotoConnectionError

from storage.errors import (
    AccessDenied,
    BadResponse,
    BucketNotFound,
    ObjectExists,
    ObjectNotFound,
    StorageError,
    StorageUnavailable,
)

_NOT_FOUND_CODES = frozenset({"NoSuchKey", "NotFound", "404"})
_EXISTS_CODES = frozenset({"PreconditionFailed", "412"})
_DENIED_CODES = frozenset(
    {
        "AccessDenied",
        "SignatureDoesNotMatch",
        "InvalidAccessKeyId",
        "InvalidToken",
        "ExpiredToken",
        "AllAccessDisabled",
        "Unauthorized",
        "401",
        "403",
    }
)
# Throttling and server-side hiccups; AWS answers 409 ConditionalRequestConflict while another
# conditional write to the same key is in flight: retrying turns it into a clean 412 or success.
_TRANSIENT_CODES = frozenset(
    {
        "SlowDown",
        "RequestTimeout",
        "InternalError",
        "ServiceUnavailable",
        "Throttling",
        "ThrottlingException",
        "RequestLimitExceeded",
        "TooManyRequests",
        "ConditionalRequestConflict",
        "OperationAborted",
    }
)


def _code_and_status(exc: ClientError) -> tuple[str, int]:
    code = str(exc.response.get("Error", {}).get("Code", ""))
    status = int(exc.response.get("ResponseMetadata", {}).get("HTTPStatusCode", 0) or 0)
    return code, status


def is_transient(exc: Exception) -> bool:
    """True for failures worth retrying: network trouble, timeouts, throttling, 5xx."""
    if isinstance(exc, BotoConnectionError | HTTPClientError | IncompleteReadError):
        return True
    if isinstance(exc, ClientError):
        code, status = _code_and_status(exc)
        return code in _TRANSIENT_CODES or status >= 500 or status == 429
    return False


def map_error(exc: BotoCoreError | ClientError, where: str) -> StorageError:
    """The typed error for a botocore failure; ``where`` names the operation, bucket and key."""
    if not isinstance(exc, ClientError):
        if is_transient(exc):
            return StorageUnavailable(
                f"{where}: server unreachable after retries ({type(exc).__name__}: {exc})"
            )
        return StorageError(f"{where}: {type(exc).__name__}: {exc}")
    code, status = _code_and_status(exc)
    message = exc.response.get("Error", {}).get("Message", "")
    detail = f"{where}: {code or status} {message}".rstrip()
    if code == "NoSuchBucket":
        return BucketNotFound(detail)
    if code in _NOT_FOUND_CODES or status == 404:
        return ObjectNotFound(detail)
    if code in _EXISTS_CODES or status == 412:
        return ObjectExists(detail)
    if code in _DENIED_CODES or status in (401, 403):
        return AccessDenied(detail)
    if is_transient(exc):
        return StorageUnavailable(f"{detail} (after retries)")
    if 300 <= status < 400:  # no redirect is followed: a server that sends one is misconfigured
        return BadResponse(f"{detail} (redirect)")
    return StorageError(detail)
