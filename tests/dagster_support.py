"""Helpers for the Dagster tests: local resources on a temp lake, sample days, run results.

Partition keys are days just before today, so they exist in the code location's daily
partitions whatever its start date (Dagster has no partition key after now).
"""

from __future__ import annotations

import contextlib
import logging
import sys
import time
from collections.abc import Iterator
from datetime import UTC, date, datetime, timedelta
from pathlib import Path
from typing import Any

import dagster as dg
import pyarrow as pa
from dagster._core.definitions.reconstruct import ReconstructableJob
from dagster._core.execution.backfill import BulkActionStatus
from dagster._daemon.backfill import execute_backfill_iteration

from demo.sample_data import land_sample_lake
from fieldcrypt.format.wrapped_key import WrappedKey
from fieldcrypt.keys.keystore import Keystore
from resources import FieldcryptResource
from tests.catalogs import write_catalog

WORKSPACE = "acme"
CODE_LOCATION_PACKAGES = ("assets", "resources", "pipelines")
SHIPPED = Path(__file__).resolve().parents[1] / "fieldcrypt.yaml"
RANGE_START, RANGE_END = "dagster/asset_partition_range_start", "dagster/asset_partition_range_end"


def past_day(days_ago: int) -> date:
    return datetime.now(UTC).date() - timedelta(days=days_ago)


def shift_to_straddle_now(day: date) -> timedelta:
    """An ingestion-time shift that puts now in the middle of `day`'s rows: enabling now splits them."""
    return datetime.now(UTC) - datetime(day.year, day.month, day.day, 12, tzinfo=UTC)


def make_keystore(tmp_path: Path) -> Path:
    path = tmp_path / "keys" / "keystore.json"
    Keystore.create(path, WORKSPACE)
    return path


def catalog_fieldcrypt(
    directory: Path, lake: str, key: dict[str, Any], datasets: dict[str, Any] | None = None, **settings: Any
) -> FieldcryptResource:
    """Workspace `acme`, declared (by default with the demo's datasets) in `directory/fieldcrypt.yaml`."""
    catalog = write_catalog(directory / "fieldcrypt.yaml", WORKSPACE, lake, key, datasets, **settings)
    return FieldcryptResource(catalog_path=str(catalog), workspace_name=WORKSPACE)


def local_fieldcrypt(lake: Path, keystore: Path, **settings: Any) -> FieldcryptResource:
    """A local-key workspace whose catalog file sits beside its keystore."""
    return catalog_fieldcrypt(keystore.parent, str(lake), {"provider": "local", "keystore": str(keystore)}, **settings)


def kms_fieldcrypt(directory: Path, lake: str, key_arn: str, moto: str) -> FieldcryptResource:
    """An aws-kms workspace on moto (lake local or `s3://` on moto too)."""
    key = {"provider": "aws-kms", "kms_key": key_arn, "endpoint_url": moto, "region": "us-east-1", "max_attempts": 2}
    s3 = {"s3_endpoint_url": moto, "region": "us-east-1"} if lake.startswith("s3://") else {}
    return catalog_fieldcrypt(directory, lake, key, **s3)


def land(fieldcrypt: FieldcryptResource, day: date, shift: timedelta, users: int = 200, events: int = 400) -> None:
    land_sample_lake(fieldcrypt.workspace("test").store, day, 1, users=users, events=events, ingested_shift=shift)


def enable(fieldcrypt: FieldcryptResource, *attributes: tuple[str, str]) -> None:
    workspace = fieldcrypt.workspace("test")
    for attribute, mask in attributes:
        workspace.enable(attribute, mask, acknowledge_irreversible=True)


def materialize_partition(
    fieldcrypt: FieldcryptResource, partition: str, *, instance: dg.DagsterInstance | None = None, **kwargs: Any
) -> dg.ExecuteInProcessResult:
    from assets import build_assets

    return dg.materialize(
        list(build_assets(fieldcrypt.config()).protected.values()),
        partition_key=partition,
        resources=fieldcrypt.as_resources(),
        instance=instance or dg.DagsterInstance.ephemeral(),
        **kwargs,
    )


def asset_key(asset: str, workspace: str = WORKSPACE) -> dg.AssetKey:
    """The asset key of `asset` (e.g. `protected_users`) of a workspace: `acme/protected_users`."""
    return dg.AssetKey([workspace.replace("-", "_"), asset])


def node(name: str, workspace: str = WORKSPACE) -> str:
    """The op, asset node, job, schedule or sensor name of `name` in a workspace: `acme__protected_users`."""
    return f"{workspace.replace('-', '_')}__{name}"


def metadata(result: dg.ExecuteInProcessResult, asset: str) -> dict[str, Any]:
    (materialization,) = result.asset_materializations_for_node(node(asset))
    return {key: value.value for key, value in materialization.metadata.items()}


def checks(result: dg.ExecuteInProcessResult, asset: str) -> dict[str, Any]:
    """Check name -> evaluation, for the checks of `asset` (of workspace acme) in this run."""
    return {e.check_name: e for e in result.get_asset_check_evaluations() if e.asset_key == asset_key(asset)}


def blocking_checks_passed(result: dg.ExecuteInProcessResult) -> bool:
    """Every check of the run passed, but for warnings (no_undeclared_pii: PII in a column not enabled)."""
    return all(e.passed or e.severity == dg.AssetCheckSeverity.WARN for e in result.get_asset_check_evaluations())


@contextlib.contextmanager
def fresh_code_location_import() -> Iterator[None]:
    """Inside: the code location's modules are imported anew, reading the environment as a new process would.

    Runs launched in memory load the code location in this process; without this they would
    reuse modules imported earlier under another environment. The old modules come back after.
    Dagster also keeps the last job definition it reconstructed (lru_cache on ReconstructableJob):
    it is forgotten too, or a second test with the same job would get the first one's resources.
    """

    def ours() -> dict[str, Any]:
        return {n: m for n, m in sys.modules.items() if n.split(".")[0] in CODE_LOCATION_PACKAGES}

    def forget_reconstructed_jobs() -> None:
        for cached in (ReconstructableJob.get_repository_definition, ReconstructableJob.get_definition):
            cached.cache_clear()  # type: ignore[attr-defined]

    saved = ours()
    for name in saved:
        del sys.modules[name]
    forget_reconstructed_jobs()
    try:
        yield
    finally:
        forget_reconstructed_jobs()
        for name in ours():
            del sys.modules[name]
        sys.modules.update(saved)


def run_backfill_to_the_end(context: Any, instance: dg.DagsterInstance, backfill_id: str) -> None:
    """Drive the backfill daemon's iteration (runs launch synchronously) until the backfill succeeds."""
    logger = logging.getLogger("fieldcrypt_tests")
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        list(execute_backfill_iteration(context.process_context, logger))
        backfill = instance.get_backfill(backfill_id)
        assert backfill is not None
        if backfill.status == BulkActionStatus.COMPLETED_SUCCESS:
            return
        assert backfill.status == BulkActionStatus.REQUESTED, backfill.status
    raise AssertionError(f"backfill {backfill_id} did not complete in time")


def write_workspace_file(path: Path, location: str) -> Path:
    """A Dagster workspace file loading this project's code location (as workspace.yaml does) under `location`."""
    root = Path(__file__).resolve().parents[1]
    path.write_text(
        "load_from:\n"
        "  - python_module:\n"
        "      module_name: pipelines.definitions\n"
        "      attribute: defs\n"
        f"      working_directory: {root}\n"
        f"      location_name: {location}\n"
    )
    return path


def apply_partition_requests(result: Any, instance: dg.DagsterInstance) -> None:
    """What the sensor daemon does with a tick's dynamic partitions requests."""
    for request in getattr(result, "dynamic_partitions_requests", None) or []:
        if isinstance(request, dg.AddDynamicPartitionsRequest):
            instance.add_dynamic_partitions(request.partitions_def_name, list(request.partition_keys))
        else:
            for key in request.partition_keys:
                instance.delete_dynamic_partition(request.partitions_def_name, key)


def driver_tick(defs: dg.Definitions, fieldcrypt: FieldcryptResource, instance: dg.DagsterInstance) -> Any:
    """One tick of the rotation driver as the sensor daemon evaluates it: outside any partition loading context."""
    sensor = defs.resolve_sensor_def(node("key_rotation_driver"))
    with dg.build_sensor_context(instance=instance, resources=fieldcrypt.as_resources(), definitions=defs) as context:
        return sensor.evaluate_tick(context)


def wrapping_keys(table: pa.Table) -> set[str]:
    """The master key of every wrapped data key stored in the table, as its own library reads it."""
    return {WrappedKey.from_bytes(v).master_key_ref for v in table.column("email__fc_dek").to_pylist() if v}
