"""`enable` refuses a typo before it is locked in for good (issue 17 item 6): a map key no row of the
newest partition has (unless --allow-absent-key), and an attribute the catalog does not declare."""

from __future__ import annotations

from datetime import UTC, date, datetime
from pathlib import Path
from typing import Any

import dagster as dg
import pyarrow as pa
import pytest

from demo.sample_data import land_sample_lake, write_snapshot
from fieldcrypt.cli import ACK_FLAG, main, run
from fieldcrypt.lake.store import LakeStore
from tests.catalogs import demo_datasets_yaml, write_catalog

DAY = date(2030, 1, 1)
ORDERS = {
    "path": "orders",
    "partitioning": {"granularity": "daily", "key": "date", "start": "2030-01-01"},
    "ingested_at": "ingested_at",
    "primary_key": "order_id",
}


def orders_table() -> pa.Table:
    attrs = [[("phone", "+4912345")], [("plan", "pro")], None, []]
    return pa.table(
        {
            "order_id": pa.array(range(len(attrs)), pa.int64()),
            "attrs": pa.array(attrs, pa.map_(pa.string(), pa.string())),
            "ingested_at": pa.array([datetime(2030, 1, 1, tzinfo=UTC)] * len(attrs), pa.timestamp("us", tz="UTC")),
        }
    )


@pytest.fixture
def catalog(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    datasets = {**demo_datasets_yaml(with_attributes=True), "orders": ORDERS}
    path = write_catalog(
        tmp_path / "fieldcrypt.yaml", "acme", "lake", {"provider": "local", "keystore": "ks.json"}, datasets
    )
    monkeypatch.setenv("FIELDCRYPT_CATALOG", str(path))
    return path


@pytest.fixture
def cli(tmp_path: Path, catalog: Path) -> list[str]:
    assert run(["key", "init"]) == 0
    store = LakeStore.from_uri(str(tmp_path / "lake"))
    land_sample_lake(store, DAY, 1, 20, 20)
    write_snapshot(store, "orders", DAY, orders_table())
    return []


def refused(argv: list[str], capsys: pytest.CaptureFixture[str]) -> str:
    capsys.readouterr()
    with pytest.raises(SystemExit) as exited:
        main(argv)
    err = capsys.readouterr().err
    assert exited.value.code == 2 and "Traceback" not in err, err
    return err


def enabled(capsys: pytest.CaptureFixture[str]) -> str:
    capsys.readouterr()
    assert run(["datasets"]) == 0
    return capsys.readouterr().out


def test_map_key_no_row_has_is_refused_and_nothing_is_recorded(
    cli: list[str], capsys: pytest.CaptureFixture[str]
) -> None:
    err = refused(["enable", "orders.attrs['email']", "--mask", "email", ACK_FLAG], capsys)
    assert "no row of the newest partition (2030-01-01) of orders has the map key 'email' in attrs" in err
    assert "--allow-absent-key" in err
    assert "attrs['email']" not in enabled(capsys)


def test_map_key_no_row_has_is_recorded_with_allow_absent_key(
    cli: list[str], capsys: pytest.CaptureFixture[str]
) -> None:
    assert run(["enable", "orders.attrs['email']", "--mask", "email", "--allow-absent-key", ACK_FLAG]) == 0
    assert "attrs['email']" in enabled(capsys)


def test_map_key_some_row_has_is_recorded(cli: list[str], capsys: pytest.CaptureFixture[str]) -> None:
    assert run(["enable", "orders.attrs['phone']", "--mask", "last4", ACK_FLAG]) == 0
    assert "attrs['phone']" in enabled(capsys)


def test_attribute_the_catalog_does_not_declare_is_refused_naming_it_and_the_catalog(
    cli: list[str], catalog: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    err = refused(["enable", "users.name", "--mask", "full", ACK_FLAG], capsys)
    assert f"users.name is not declared in the catalog ({catalog})" in err
    assert "lists attributes email, phone" in err
    assert "users.name" not in enabled(capsys)
    assert run(["protect", "users"]) == 0  # the dataset's protection is not broken by the refused attribute


def test_dagster_enable_job_refuses_an_absent_map_key_unless_allowed(tmp_path: Path) -> None:
    from dagster_support import catalog_fieldcrypt, make_keystore, node

    from assets import build_assets
    from pipelines.jobs import enable_attribute_job

    datasets = {**demo_datasets_yaml(), "orders": ORDERS}
    keystore = make_keystore(tmp_path)
    fieldcrypt = catalog_fieldcrypt(
        keystore.parent, str(tmp_path / "lake"), {"provider": "local", "keystore": str(keystore)}, datasets
    )
    write_snapshot(fieldcrypt.workspace("test").store, "orders", DAY, orders_table())
    job = enable_attribute_job(build_assets(fieldcrypt.config()))
    config: dict[str, Any] = {
        "dataset": "orders",
        "attribute": "attrs['email']",
        "mask": "email",
        "acknowledge_irreversible": True,
    }

    def launch(**extra: Any) -> dg.ExecuteInProcessResult:
        run_config = {"ops": {node("record_enablement"): {"config": {**config, **extra}}}}
        return job.execute_in_process(run_config=run_config, resources=fieldcrypt.as_resources(), raise_on_error=False)

    refused_run = launch()
    assert not refused_run.success
    failure = refused_run.failure_data_for_node(node("record_enablement"))
    assert failure is not None and "has the map key 'email'" in failure.error.message  # type: ignore[union-attr]
    assert "orders.attrs['email']" not in fieldcrypt.workspace("test").policy().attributes
    assert launch(allow_absent_key=True).success
    assert "orders.attrs['email']" in fieldcrypt.workspace("test").policy().attributes
