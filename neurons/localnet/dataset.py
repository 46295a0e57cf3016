"""The local subnet's dataset: the embedded corpus, published to a ``dataset`` bucket of the
local S3 server so every node reads it through the same path as on a live network
(``neurons.dataset``: header checked against the digest, shards fetched on first use and verified).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from neurons.dataset import DataLocation, PublishReport, publish_dataset
from neurons.localnet.seaweedfs import READ_ONLY, READ_WRITE, Identity
from neurons.shards import TokenShards
from storage.s3 import S3Store

DATASET_BUCKET = "dataset"
REGION = "us-east-1"


@dataclass(frozen=True)
class DatasetKeys:
    """The publisher's write key and the read-only key that goes into the ``data_url``."""

    writer: Identity
    reader: Identity

    @classmethod
    def generate(cls) -> DatasetKeys:
        return cls(
            Identity.generate("dataset-rw", READ_WRITE, [DATASET_BUCKET]),
            Identity.generate("dataset-ro", READ_ONLY, [DATASET_BUCKET]),
        )

    @property
    def identities(self) -> list[Identity]:
        return [self.writer, self.reader]


@dataclass(frozen=True)
class LocalDataset:
    data_url: str = field(repr=False)  # holds the read-only secret
    data_digest: str
    report: PublishReport


def publish_local_dataset(endpoint_url: str, keys: DatasetKeys, shards_dir: Path) -> LocalDataset:
    """Publish ``shards_dir`` under a prefix named by its digest; return what the run's origin
    carries: the ``data_url`` (with the read-only key) and the ``data_digest``."""
    prefix = f"stdlib-{TokenShards(shards_dir).digest[:16]}"
    store = S3Store(endpoint_url, DATASET_BUCKET, keys.writer.access_key, keys.writer.secret_key, REGION)
    report = publish_dataset(shards_dir, store, DataLocation(endpoint_url, DATASET_BUCKET, prefix, REGION))
    reader = DataLocation(endpoint_url, DATASET_BUCKET, prefix, REGION, keys.reader.access_key, keys.reader.secret_key)
    return LocalDataset(reader.url(), report.data_digest, report)
