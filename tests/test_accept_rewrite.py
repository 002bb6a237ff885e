"""An engine's rewrite of a protected partition (a compaction) is refused by the ledger until accepted, audited.

A compaction reads a partition and writes its rows into new files (Spark, DuckDB, a pandas job):
the files fieldcrypt wrote are gone, so the protection ledger names them as deleted. `fieldcrypt
accept-rewrite` checks every protected cell, refuses a rewrite that lost ciphertext, and records
the new files (real Spark: tests/test_spark_lake.py).
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from demo.sample_data import snapshot_path
from fieldcrypt import IntegrityError, Workspace
from fieldcrypt.policy.ledger import LedgerError, shard_path

PARTITION = "2026-11-01"
FILE = snapshot_path("users", PARTITION)


@pytest.fixture
def lake(local_workspace: Workspace, enable_at: Callable[..., Any]) -> Workspace:
    enable_at(local_workspace, "users.email", "email")
    local_workspace.protect("users", PARTITION)
    return local_workspace


def compact(workspace: Workspace, change: Callable[[pa.Table], pa.Table] = lambda table: table) -> Path:
    """Rewrite the partition's file as an engine's compaction would: a new file, the old one removed."""
    old = Path(workspace.store.full_path(FILE))
    new = old.with_name("part-00000-compacted.parquet")
    pq.write_table(change(pq.read_table(old)), new, compression="zstd")
    old.unlink()
    return new


def test_a_compacted_partition_is_refused_naming_the_file_fieldcrypt_wrote(lake: Workspace) -> None:
    compact(lake)
    with pytest.raises(LedgerError, match=f"{FILE} is in the protection ledger .* but not in the lake"):
        lake.verify("users", PARTITION)


def test_an_accepted_rewrite_verifies_every_cell_and_is_audited(lake: Workspace) -> None:
    cells = lake.verify("users", PARTITION)["users.email"]
    compact(lake)
    assert lake.accept_rewrite("users", PARTITION, "JOB-7 compaction") == 1
    assert lake.verify("users", PARTITION)["users.email"] == cells
    accepted = [e for e in lake.audit.events() if e["operation"] == "rewrite_accepted"]
    assert [(e["reason"], e["cells"], e["partition"]) for e in accepted] == [("JOB-7 compaction", cells, PARTITION)]


def test_a_rewrite_that_lost_ciphertext_is_refused_and_nothing_is_recorded(lake: Workspace) -> None:
    def strip_first(table: pa.Table) -> pa.Table:
        index = table.schema.get_field_index("email__fc_ct")
        column = table.column(index).to_pylist()
        first = next(i for i, value in enumerate(column) if value is not None)
        column[first] = None
        return table.set_column(index, table.schema.field(index), pa.array(column, pa.binary()))

    shard = Path(lake.store.full_path(shard_path("users", PARTITION)))
    before = shard.read_bytes()
    compact(lake, strip_first)
    with pytest.raises(LedgerError, match="users.email had .* protected cells, the files now hold .*lost ciphertext"):
        lake.accept_rewrite("users", PARTITION, "JOB-8")
    assert shard.read_bytes() == before
    with pytest.raises(IntegrityError):
        lake.verify("users", PARTITION)
