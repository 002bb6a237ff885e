"""Making a test lake look as a fieldcrypt before the protection ledger left it (docs/FORMAT.md section 6d)."""

from __future__ import annotations

import json
from pathlib import Path

import pyarrow.parquet as pq

from fieldcrypt.policy.ledger import shard_path
from fieldcrypt.policy.select import FILE_METADATA_KEY


def as_written_before_the_ledger(lake: Path, data_file: Path, dataset: str, partition: str | None) -> None:
    """Rewrite `data_file` (values as they are) without its `ledgered` mark and delete its partition's ledger
    shard: a file such a lake holds reads as before, and the next rewrite records it."""
    table = pq.read_table(data_file)
    metadata = dict(table.schema.metadata or {})
    described = json.loads(metadata[FILE_METADATA_KEY])
    described.pop("ledgered", None)
    metadata[FILE_METADATA_KEY] = json.dumps(described, sort_keys=True).encode()
    pq.write_table(table.replace_schema_metadata(metadata), data_file)
    (lake / shard_path(dataset, partition)).unlink()
