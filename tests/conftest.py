"""Shared fixtures. ``seaweed``: one real S3 server (SeaweedFS on loopback) per test session,
started by the tests themselves, with a read-write and a read-only identity on one bucket."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from neurons.localnet.seaweedfs import READ_ONLY, READ_WRITE, Identity, SeaweedServer

SEAWEED_BUCKET = "tessera-test"


@pytest.fixture(scope="session")
def seaweed(tmp_path_factory: pytest.TempPathFactory) -> Iterator[SeaweedServer]:
    """Identities: ``writer`` (Read/Write/List on SEAWEED_BUCKET) and ``reader`` (Read/List)."""
    writer = Identity.generate("writer", READ_WRITE, [SEAWEED_BUCKET])
    reader = Identity.generate("reader", READ_ONLY, [SEAWEED_BUCKET])
    with SeaweedServer(tmp_path_factory.mktemp("seaweed"), [writer, reader]) as server:
        yield server


@pytest.fixture(scope="session")
def seaweed_bucket(seaweed: SeaweedServer) -> str:
    """The bucket both ``seaweed`` identities are scoped to."""
    return SEAWEED_BUCKET
