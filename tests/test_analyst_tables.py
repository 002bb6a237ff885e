"""The analyst's view (`fieldcrypt.analyst.scan_dataset`) of a Delta and an Iceberg table.

A table's folder also holds what its older versions removed (here: every file fieldcrypt replaced
when it protected a partition, each still holding the plaintext it replaced, and the file an append
was protected over) and its own log (Delta JSON, Iceberg Avro manifests). The view reads the table's
current version only, as its own library does: the same rows, the same masks, no `__fc_*` column.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import polars as pl
import pytest

from fieldcrypt import InputError
from fieldcrypt.analyst import scan_dataset
from tests.policy_support import backdate_policy
from tests.table_lakes import DAYS, ENABLED_AT, LATE, USERS, Lake, delta_lake, emails, iceberg_lake, users

APPENDED = [USERS + 1, USERS + 2, USERS + 3]  # ingested like the first rows: odd ids after the enablement


@pytest.fixture(params=["delta", "iceberg"])
def protected(request: pytest.FixtureRequest, tmp_path: Path, keystore_path: Path) -> Lake:
    """Email enabled (odd ids ingested after it, even ids historical), every partition protected, then an append
    to a protected partition and a new one, protected again: each partition's first files are removed from the
    table, still on disk."""
    made: Callable[[Path, Path], Lake] = delta_lake if request.param == "delta" else iceberg_lake
    lake = made(tmp_path, keystore_path)
    workspace = lake.workspace
    workspace.enable(f"{lake.dataset}.email", "email", acknowledge_irreversible=True)
    backdate_policy(workspace, ENABLED_AT)
    for day in DAYS:
        workspace.protect(lake.dataset, lake.partition(day))
    lake.append(users(APPENDED, [DAYS[0], LATE]))
    for day in (DAYS[0], LATE):
        workspace.protect(lake.dataset, lake.partition(day))
    return lake


def view(lake: Lake, tmp_path: Path) -> pl.DataFrame:
    return scan_dataset(lake.dataset, catalog=tmp_path / "fieldcrypt.yaml").collect().sort("user_id")


def test_the_view_of_a_table_is_its_current_version_masked(protected: Lake, tmp_path: Path) -> None:
    table = protected.read()  # by the table's own library
    assert table.num_rows == USERS + len(APPENDED)
    workspace, dataset = protected.workspace, protected.dataset
    live = sum(len(workspace.files(dataset, p)) for p in workspace.partitions(dataset))
    assert len(list(protected.location.rglob("*.parquet"))) > live  # the removed files are still on disk

    seen = view(protected, tmp_path)

    assert seen.height == table.num_rows
    assert seen["user_id"].to_list() == table.column("user_id").to_pylist()  # no row twice, none missing
    assert not [name for name in seen.columns if "__fc_" in name]
    protected_rows = table.column("email__fc_ct").is_valid()
    assert seen["email_is_protected"].to_list() == protected_rows.to_pylist()
    assert 0 < sum(seen["email_is_protected"]) < seen.height
    masked = seen.filter(pl.col("email_is_protected"))
    assert set(masked["email"]) == {"****@example.com"}
    historical = seen.filter(~pl.col("email_is_protected"))
    assert historical["email"].to_list() == emails(historical["user_id"].to_list())[: historical.height]
    # Not one plaintext of a protected row: the replaced files that still hold them are not read.
    assert not set(seen["email"]) & set(emails(masked["user_id"].to_list()))
    untouched = [name for name in ("user_id", "plan", "ingested_at") if name in seen.columns]
    assert seen.select(untouched).to_arrow().cast(table.select(untouched).schema).equals(table.select(untouched))


def test_a_delta_table_given_by_path_is_read_from_its_log(protected: Lake, tmp_path: Path) -> None:
    relative = str(protected.location.relative_to(tmp_path / "lake"))
    if protected.dataset == "users_ice":
        with pytest.raises(InputError, match=r"is an Iceberg table: declare it `kind: iceberg`"):
            scan_dataset(protected.dataset, lake=tmp_path / "lake", path=relative)
        return

    seen = scan_dataset(protected.dataset, lake=tmp_path / "lake", path=relative).collect().sort("user_id")

    assert seen.height == USERS + len(APPENDED)
    assert seen.equals(view(protected, tmp_path))
