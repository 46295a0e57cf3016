import pytest
from botocore.exceptions import ClientError, EndpointConnectionError, ParamValidationError, ReadTimeoutError

from storage.errors import (
    AccessDenied,
    BucketNotFound,
    ObjectExists,
    ObjectNotFound,
    StorageError,
    StorageUnavailable,
)
from storage.s3_errors import is_transient, map_error


def _client_error(code: str, status: int) -> ClientError:
    return ClientError(
        {"Error": {"Code": code, "Message": "m"}, "ResponseMetadata": {"HTTPStatusCode": status}}, "Op"
    )


@pytest.mark.parametrize(
    ("code", "status", "expected"),
    [
        ("NoSuchKey", 404, ObjectNotFound),
        ("404", 404, ObjectNotFound),  # HEAD has no body: only the status survives
        ("NoSuchBucket", 404, BucketNotFound),
        ("PreconditionFailed", 412, ObjectExists),
        ("AccessDenied", 403, AccessDenied),
        ("403", 403, AccessDenied),
        ("SignatureDoesNotMatch", 403, AccessDenied),
        ("InvalidAccessKeyId", 403, AccessDenied),
        ("SlowDown", 503, StorageUnavailable),
        ("InternalError", 500, StorageUnavailable),
        ("InvalidBucketName", 400, StorageError),
    ],
)
def test_client_error_mapping(code: str, status: int, expected: type) -> None:
    mapped = map_error(_client_error(code, status), "get s3://b/k")
    assert type(mapped) is expected
    assert "s3://b/k" in str(mapped)


def test_transient_classification() -> None:
    assert is_transient(_client_error("SlowDown", 503))
    assert is_transient(_client_error("Anything", 502))
    assert is_transient(_client_error("TooManyRequests", 429))
    assert is_transient(_client_error("ConditionalRequestConflict", 409))
    assert is_transient(EndpointConnectionError(endpoint_url="http://x"))
    assert is_transient(ReadTimeoutError(endpoint_url="http://x"))
    assert not is_transient(_client_error("AccessDenied", 403))
    assert not is_transient(_client_error("PreconditionFailed", 412))
    assert not is_transient(ParamValidationError(report="bad"))


def test_network_errors_become_unavailable() -> None:
    assert isinstance(map_error(EndpointConnectionError(endpoint_url="http://x"), "get"), StorageUnavailable)
    assert type(map_error(ParamValidationError(report="bad"), "get")) is StorageError
