"""`Workspace.verify` (`fieldcrypt verify`): every protected cell decrypts and holds its mask."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
import pytest

from demo.sample_data import snapshot_path
from fieldcrypt import VerificationError, Workspace
from tests.conftest import SAMPLE_DAY

PARTITION = SAMPLE_DAY.isoformat()


@pytest.fixture
def protected(local_workspace: Workspace, enable_at: Callable[..., Any]) -> Workspace:
    enable_at(local_workspace, "users.email", "email")
    assert local_workspace.protect("users", PARTITION).newly_encrypted > 0
    return local_workspace


def test_verify_counts_every_protected_cell(protected: Workspace) -> None:
    table = pq.read_table(protected.store.full_path(snapshot_path("users", PARTITION)))
    assert protected.verify("users", PARTITION) == {"users.email": table.column("email__fc_ct").drop_null().length()}


def test_verify_refuses_a_protected_row_whose_mask_was_replaced(protected: Workspace) -> None:
    path = Path(protected.store.full_path(snapshot_path("users", PARTITION)))
    table = pq.read_table(path)
    row = pc.index(pc.is_valid(table.column("email__fc_ct")), True).as_py()
    emails = table.column("email").to_pylist()
    emails[row] = "****@someone-else.example"
    pq.write_table(table.set_column(1, "email", pa.array(emails, pa.string())), path)
    with pytest.raises(VerificationError, match="users.email value does not hold the mask"):
        protected.verify("users", PARTITION)
