"""Several workspaces in one code location: each served under its own names, and none reaching another.

The catalog declares two customers, acme and globex, each with its own local lake, its own
master key (a keystore, or a KMS key on the moto server) and the demo's datasets. The code
location is the production one (`pipelines.definitions`, imported anew with the catalog in
FIELDCRYPT_CATALOG); runs are real Dagster runs of its jobs, on a shared instance. To show
that a run of acme never reaches globex, globex's key is made unusable while acme runs (its
keystore replaced by garbage, or its KMS endpoint a closed loopback port): any use of it
would fail the run. Nothing here is mocked.
"""

from __future__ import annotations

import hashlib
import os
import socket
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from datetime import timedelta
from pathlib import Path
from typing import Any

import dagster as dg
import pytest
from dagster import DagsterInstance, DagsterRunStatus
from dagster._core.storage.dagster_run import RunsFilter
from dagster._core.test_utils import instance_for_test
from dagster_graphql.client.query import LAUNCH_PARTITION_BACKFILL_MUTATION, LAUNCH_PIPELINE_EXECUTION_MUTATION
from dagster_graphql.test.utils import define_out_of_process_context, execute_dagster_graphql
from dagster_support import (
    enable,
    fresh_code_location_import,
    land,
    past_day,
    run_backfill_to_the_end,
    write_workspace_file,
)

from fieldcrypt import ConfigError
from fieldcrypt.keys.keystore import Keystore
from resources import FieldcryptResource
from tests.catalogs import write_workspaces_catalog

LOCATION = "fieldcrypt_workspaces_test"
DAYS = [past_day(3), past_day(2)]
PARTITIONS = [day.isoformat() for day in DAYS]
WORKSPACE_TAG = "fieldcrypt/workspace"
FUTURE = timedelta(days=30)  # every landed row is ingested after enablement: every cell gets encrypted
ATTRIBUTES = (("users.email", "email"), ("events.properties.email", "email"))


# -- two customers ----------------------------------------------------------------------------------


@dataclass
class Tenant:
    """One workspace of the test's catalog: its folder (lake, keys), its catalog entry, and a resource on it."""

    name: str
    root: Path
    entry: dict[str, Any]
    catalog: Path

    @property
    def lake(self) -> Path:
        return self.root / "lake"

    @property
    def fieldcrypt(self) -> FieldcryptResource:
        return FieldcryptResource(catalog_path=str(self.catalog), workspace_name=self.name)

    def audit_events(self) -> list[dict[str, Any]]:
        return list(self.fieldcrypt.workspace("test").audit.events())


def local_key(root: Path, name: str) -> dict[str, str]:
    keystore = root / "keys" / "keystore.json"
    Keystore.create(keystore, name)
    return {"provider": "local", "keystore": str(keystore)}


def moto_key(moto: str, arn: str) -> dict[str, Any]:
    return {"provider": "aws-kms", "kms_key": arn, "endpoint_url": moto, "region": "us-east-1", "max_attempts": 2}


def closed_port() -> int:
    """A loopback port nothing listens on (bound, then released): a connection to it is refused."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def tenants_catalog(tmp_path: Path, keys: dict[str, dict[str, Any]], **extra: dict[str, Any]) -> dict[str, Tenant]:
    """acme and globex in `tmp_path/fieldcrypt.yaml`, each landed with DAYS of users and events and two
    attributes enabled; globex's first day is protected already (its lake has ciphertext, a bound key,
    a policy and an audit log before any Dagster run)."""
    catalog = tmp_path / "fieldcrypt.yaml"
    tenants = {
        name: Tenant(
            name,
            tmp_path / name,
            {
                "lake": str(tmp_path / name / "lake"),
                "key": key,
                "partitions_start": PARTITIONS[0],
                **extra.get(name, {}),
            },
            catalog,
        )
        for name, key in keys.items()
    }
    write_workspaces_catalog(catalog, {tenant.name: tenant.entry for tenant in tenants.values()})
    for tenant in tenants.values():
        for day in DAYS:
            land(tenant.fieldcrypt, day, FUTURE, users=60, events=80)
        enable(tenant.fieldcrypt, *ATTRIBUTES)
    globex = tenants["globex"].fieldcrypt.workspace("test")
    for dataset in ("users", "events"):
        assert globex.protect(dataset, PARTITIONS[0]).newly_encrypted > 0
    return tenants


def rewrite_catalog(tenants: dict[str, Tenant], default: str | None = None, **entries: dict[str, Any]) -> None:
    """Change some workspaces' catalog entries (the others as they were), and the default workspace."""
    for name, changes in entries.items():
        tenants[name].entry = {**tenants[name].entry, **changes}
    catalog = next(iter(tenants.values())).catalog
    write_workspaces_catalog(catalog, {tenant.name: tenant.entry for tenant in tenants.values()}, default)


@pytest.fixture
def serve(monkeypatch: pytest.MonkeyPatch) -> Callable[[Path], None]:
    """Point the code location at a catalog, with no environment override, steps in one process."""

    def serve(catalog: Path) -> None:
        for name in [n for n in os.environ if n.startswith("FIELDCRYPT_")]:
            monkeypatch.delenv(name)
        monkeypatch.setenv("FIELDCRYPT_CATALOG", str(catalog))
        monkeypatch.setenv("FIELDCRYPT_DAGSTER_EXECUTOR", "in_process")

    return serve


@pytest.fixture
def tenants(tmp_path: Path, serve: Callable[[Path], None]) -> dict[str, Tenant]:
    """acme and globex on local keystores, served by the code location."""
    tenants = tenants_catalog(tmp_path, {name: local_key(tmp_path / name, name) for name in ("acme", "globex")})
    serve(tenants["acme"].catalog)
    return tenants


@pytest.fixture
def code_location() -> Iterator[dg.Definitions]:
    """The code location's definitions, imported as a new process would import them."""
    with fresh_code_location_import():
        from pipelines.definitions import defs

        yield defs


def files_state(root: Path) -> dict[str, tuple[str, int, int]]:
    """Every file under `root`: (sha-256 of its bytes, modification time in ns, mode)."""
    state = {}
    for path in sorted(root.rglob("*")):
        if path.is_file():
            info = path.stat()
            state[str(path.relative_to(root))] = (
                hashlib.sha256(path.read_bytes()).hexdigest(),
                info.st_mtime_ns,
                info.st_mode,
            )
    return state


def run_job(
    defs: dg.Definitions, name: str, instance: DagsterInstance, partition_key: str | None = None, **kwargs: Any
) -> dg.ExecuteInProcessResult:
    """A run of one of the code location's jobs, bound to the code location's resources as Dagster binds them."""
    return defs.resolve_job_def(name).execute_in_process(
        partition_key=partition_key, instance=instance, raise_on_error=False, **kwargs
    )


def initialized_resources(instance: DagsterInstance, run_id: str) -> set[str]:
    """The resources the run built, from its own RESOURCE_INIT_SUCCESS events."""
    keys: set[str] = set()
    for record in instance.get_records_for_run(run_id).records:
        event = record.event_log_entry.dagster_event
        if event is not None and event.event_type == dg.DagsterEventType.RESOURCE_INIT_SUCCESS:
            keys.update(key for key in event.event_specific_data.metadata if ":" not in key)  # type: ignore[union-attr]
    return keys


def failure_messages(result: dg.ExecuteInProcessResult) -> str:
    return "\n".join(
        event.step_failure_data.error.message
        for event in result.all_events
        if event.is_step_failure and event.step_failure_data.error is not None
    )


def campaign_id(tenant: Tenant) -> str:
    binding = tenant.fieldcrypt.workspace("test").bindings.load()
    assert binding is not None and binding.campaigns
    return binding.campaigns[-1].campaign_id


# -- the definitions ---------------------------------------------------------------------------------


def test_code_location_defines_each_workspace_under_its_own_names_pool_resource_and_tag(
    tenants: dict[str, Tenant], code_location: dg.Definitions
) -> None:
    defs = code_location
    assert set(defs.resources or {}) == {"fieldcrypt_acme", "fieldcrypt_globex"}
    for name in ("acme", "globex"):
        resource = (defs.resources or {})[f"fieldcrypt_{name}"]
        assert (resource.workspace_name, resource.catalog_path) == (name, str(tenants[name].catalog))
        for asset in ("protected_users", "protected_events", "rotated_users_keys", "rotated_events_keys"):
            definition = defs.resolve_assets_def(dg.AssetKey([name, asset]))
            assert definition.op.pool == f"kms_{name}", asset
            assert {k for k in definition.required_resource_keys if k.startswith("fieldcrypt")} == {
                f"fieldcrypt_{name}"
            }, asset
        rotated = defs.resolve_assets_def(dg.AssetKey([name, "rotated_users_keys"])).partitions_def
        assert isinstance(rotated, dg.MultiPartitionsDefinition)
        assert rotated.get_partitions_def_for_dimension("campaign") == dg.DynamicPartitionsDefinition(
            name=f"{name}__rotation_campaign"
        )
        for job in ("protect_snapshots", "enable_attribute", "start_key_rotation", "rotate_keys"):
            assert defs.resolve_job_def(f"{name}__{job}").tags[WORKSPACE_TAG] == name, job
        assert defs.resolve_job_def(f"{name}__complete_key_rotation").tags[WORKSPACE_TAG] == name
        for schedule in ("protect_newest_partition", "scheduled_key_rotation"):
            definition = defs.resolve_schedule_def(f"{name}__{schedule}")
            assert definition.job_name.startswith(f"{name}__")
            assert definition.required_resource_keys <= {f"fieldcrypt_{name}"}  # the newest-partition one needs none
        assert defs.resolve_schedule_def(f"{name}__scheduled_key_rotation").required_resource_keys == {
            f"fieldcrypt_{name}"
        }
        driver = defs.resolve_sensor_def(f"{name}__key_rotation_driver")
        assert driver.required_resource_keys == {f"fieldcrypt_{name}"}
        assert {job.name for job in driver.jobs} == {f"{name}__rotate_keys", f"{name}__complete_key_rotation"}
    # every asset of the code location is under one of the two workspaces, and none is under both
    keys = {spec.key for spec in defs.resolve_all_asset_specs()}
    assert {key.path[0] for key in keys} == {"acme", "globex"}
    assert {key.path[1] for key in keys if key.path[0] == "acme"} == {
        key.path[1] for key in keys if key.path[0] == "globex"
    }
    assert not [s.name for s in defs.sensors or [] if s.name.endswith("__catalog_error")]


# -- a run of acme never reaches globex ---------------------------------------------------------------


@pytest.fixture(params=["garbage-keystore", "kms-endpoint-closed"])
def globex_unusable(
    request: pytest.FixtureRequest, tmp_path: Path, serve: Callable[[Path], None]
) -> tuple[dict[str, Tenant], str]:
    """acme on its keystore; globex set up on its own key (a keystore, or a KMS key on moto), then its
    catalog entry pointed at a key no run can use. Returns the tenants and what globex's use would fail on."""
    if request.param == "garbage-keystore":
        tenants = tenants_catalog(
            tmp_path, {"acme": local_key(tmp_path / "acme", "acme"), "globex": local_key(tmp_path / "globex", "globex")}
        )
        garbage = tmp_path / "globex" / "keys" / "replaced.json"
        garbage.write_text("not a keystore\n")
        garbage.chmod(0o600)
        rewrite_catalog(tenants, globex={"key": {"provider": "local", "keystore": str(garbage)}})
        problem = f"keystore {garbage} is not a valid fieldcrypt keystore"
    else:
        moto: str = request.getfixturevalue("moto")
        arn = request.getfixturevalue("make_kms_key")()
        tenants = tenants_catalog(
            tmp_path, {"acme": local_key(tmp_path / "acme", "acme"), "globex": moto_key(moto, arn)}
        )
        unreachable = f"http://127.0.0.1:{closed_port()}"
        rewrite_catalog(tenants, globex={"key": {**moto_key(unreachable, arn), "max_attempts": 1}})
        problem = f"with key {arn}: EndpointConnectionError"
    serve(tenants["acme"].catalog)
    return tenants, problem


def test_acme_protection_and_rotation_campaign_never_touch_globex_nor_build_its_resource(
    globex_unusable: tuple[dict[str, Tenant], str], code_location: dg.Definitions
) -> None:
    tenants, problem = globex_unusable
    acme, globex = tenants["acme"], tenants["globex"]
    from assets.rotation import rotation_partition_key

    globex_before = files_state(globex.root)
    # what must stay as it is: globex's ciphertext, policy, key binding and audit log (and its keys)
    control = {name for name in globex_before if name.startswith("lake/_fieldcrypt/")}
    assert {"lake/_fieldcrypt/policy.json", "lake/_fieldcrypt/master_key.json"} <= control
    assert [name for name in control if name.startswith("lake/_fieldcrypt/audit/")]
    instance = DagsterInstance.ephemeral()

    protected = [run_job(code_location, "acme__protect_snapshots", instance, p) for p in PARTITIONS]
    started = run_job(code_location, "acme__start_key_rotation", instance)
    campaign = campaign_id(acme)
    rotated = [
        run_job(code_location, "acme__rotate_keys", instance, rotation_partition_key(campaign, p)) for p in PARTITIONS
    ]
    completed = run_job(code_location, "acme__complete_key_rotation", instance)
    runs = [*protected, started, *rotated, completed]

    assert [failure_messages(run) for run in runs if not run.success] == []
    for run in runs:  # every run built acme's resource and no other, and carries acme's tag
        assert {key for key in initialized_resources(instance, run.run_id) if key.startswith("fieldcrypt")} == {
            "fieldcrypt_acme"
        }, run.dagster_run.job_name
        assert run.dagster_run.tags[WORKSPACE_TAG] == "acme"
    acme_workspace = acme.fieldcrypt.workspace("test")
    binding = acme_workspace.bindings.load()
    assert binding is not None and binding.campaigns[-1].status == "complete"
    assert acme_workspace.rotation_status().complete
    assert all(sum(acme_workspace.verify(d, p).values()) > 0 for d in ("users", "events") for p in PARTITIONS)
    # globex: every file of its lake and keys (data, policy, key binding, audit log) byte-identical, same mtime
    assert files_state(globex.root) == globex_before
    # ...and globex's key really is unusable: its own run fails, naming why
    refused = run_job(code_location, "globex__protect_snapshots", instance, PARTITIONS[1])
    assert not refused.success
    assert problem in failure_messages(refused)


def test_each_job_requires_only_its_own_workspaces_resource(
    tenants: dict[str, Tenant], code_location: dg.Definitions
) -> None:
    for job in code_location.resolve_all_job_defs():
        if job.name.startswith("__"):
            continue  # Dagster's implicit asset job spans every workspace; a backfill runs a subset of it
        workspace = job.name.partition("__")[0]
        required = {key for node in job.nodes_in_topological_order for key in node.definition.required_resource_keys}
        assert {key for key in required if key.startswith("fieldcrypt")} == {f"fieldcrypt_{workspace}"}, job.name


# -- audit events -----------------------------------------------------------------------------------------


def test_audit_events_land_in_each_workspaces_own_log(
    tenants: dict[str, Tenant], code_location: dg.Definitions
) -> None:
    acme, globex = tenants["acme"], tenants["globex"]
    instance = DagsterInstance.ephemeral()

    acme_run = run_job(code_location, "acme__protect_snapshots", instance, PARTITIONS[1])
    globex_run = run_job(code_location, "globex__protect_snapshots", instance, PARTITIONS[1])

    assert acme_run.success and globex_run.success
    logs = {"acme": acme.audit_events(), "globex": globex.audit_events()}
    actors = {"acme": f"dagster:{acme_run.run_id}", "globex": f"dagster:{globex_run.run_id}"}
    for name, events in logs.items():
        mine = [event for event in events if event["actor"] == actors[name]]
        # the run's key uses: new data keys for the partition, and the checks' unwraps
        assert {"generate_data_key", "unwrap"} <= {event["operation"] for event in mine}, name
        assert {event["workspace"] for event in events} == {name}
        other = next(actor for workspace, actor in actors.items() if workspace != name)
        assert not [event for event in events if event["actor"] == other], name


# -- caches and rate limits ---------------------------------------------------------------------------------


def test_data_key_caches_and_kms_call_budgets_are_per_workspace(tmp_path: Path, serve: Callable[[Path], None]) -> None:
    tenants = tenants_catalog(
        tmp_path,
        {name: local_key(tmp_path / name, name) for name in ("acme", "globex")},
        acme={"kms_calls_per_second": 50},
        globex={"kms_calls_per_second": 7},
    )
    serve(tenants["acme"].catalog)
    with fresh_code_location_import():
        from pipelines.definitions import defs

        resources: dict[str, FieldcryptResource] = dict(defs.resources or {})  # type: ignore[arg-type]
        caches = {
            (name, n): resources[f"fieldcrypt_{name}"].workspace(f"run-{n}").key_cache()
            for n in (1, 2)  # runs of the two workspaces interleaved, as in one process of a busy deployment
            for name in ("acme", "globex")
        }

    for name, per_second in (("acme", 50), ("globex", 7)):
        first, second = caches[name, 1], caches[name, 2]
        # one budget per workspace in the process, whichever run builds it; one data-key cache per run
        assert first.rate_limit is second.rate_limit is not None
        assert first.rate_limit.per_second == per_second
        assert first is not second
        assert first.workspace == name and first.context("users", "email").workspace == name
    assert caches["acme", 1].rate_limit is not caches["globex", 1].rate_limit
    # each cache wraps under its own workspace's master key
    assert caches["acme", 1].master_key.key_id != caches["globex", 1].master_key.key_id
    for name in ("acme", "globex"):
        keystore = Keystore.load(Path(tenants[name].entry["key"]["keystore"]))
        assert caches[name, 1].master_key.key_id == keystore.key_id


# -- a misconfigured workspace fails alone ------------------------------------------------------------------


@pytest.mark.parametrize("fault", ["keystore-missing", "kms-endpoint-closed"])
def test_a_workspace_whose_key_is_unreachable_fails_its_runs_alone(tenants: dict[str, Tenant], fault: str) -> None:
    if fault == "keystore-missing":
        missing = tenants["globex"].root / "keys" / "moved-away.json"
        rewrite_catalog(tenants, globex={"key": {"provider": "local", "keystore": str(missing)}})
        problem = f"keystore {missing} does not exist"
    else:
        arn = "arn:aws:kms:us-east-1:111122223333:key/00000000-0000-0000-0000-000000000000"
        rewrite_catalog(
            tenants, globex={"key": {**moto_key(f"http://127.0.0.1:{closed_port()}", arn), "max_attempts": 1}}
        )
        problem = f"with key {arn}: EndpointConnectionError"
    instance = DagsterInstance.ephemeral()

    with fresh_code_location_import():
        from pipelines.definitions import defs

        globex_run = run_job(defs, "globex__protect_snapshots", instance, PARTITIONS[1])
        acme_runs = [run_job(defs, "acme__protect_snapshots", instance, p) for p in PARTITIONS]

    assert not globex_run.success
    message = failure_messages(globex_run)
    assert problem in message and f"partition {PARTITIONS[1]} failed" in message
    assert [run.success for run in acme_runs] == [True, True]
    statuses = {run.run_id: run.status for run in instance.get_runs()}
    assert statuses[globex_run.run_id] == DagsterRunStatus.FAILURE
    assert {statuses[run.run_id] for run in acme_runs} == {DagsterRunStatus.SUCCESS}
    acme = tenants["acme"].fieldcrypt.workspace("test")
    assert all(c.pending == 0 for p in PARTITIONS for c in acme.status("users", p).attributes.values())


@pytest.mark.parametrize("default", [None, "globex"], ids=["no-default", "broken-default"])
def test_a_workspace_whose_catalog_entry_is_invalid_is_not_served_and_its_sensor_names_the_problem(
    tenants: dict[str, Tenant], default: str | None
) -> None:
    # the broken entry may be the catalog's default workspace: still the file's problem, not the environment's
    rewrite_catalog(tenants, default, globex={"data_key_ttl_seconds": "abc"})
    instance = DagsterInstance.ephemeral()

    with fresh_code_location_import():
        from pipelines.definitions import defs

        workspaces = {spec.key.path[0] for spec in defs.resolve_all_asset_specs()}
        jobs = {job.name for job in defs.resolve_all_job_defs()}
        sensors = {sensor.name for sensor in defs.sensors or []}
        catalog_error = defs.resolve_sensor_def("globex__catalog_error")
        with dg.build_sensor_context(instance=instance) as context, pytest.raises(Exception) as raised:
            catalog_error.evaluate_tick(context)
        acme_run = run_job(defs, "acme__protect_snapshots", instance, PARTITIONS[1])

    assert workspaces == {"acme"}
    assert "acme__protect_snapshots" in jobs and not [job for job in jobs if job.startswith("globex")]
    assert set(defs.resources or {}) == {"fieldcrypt_acme"}
    assert {name for name in sensors if name.startswith("globex")} == {"globex__catalog_error"}
    assert catalog_error.default_status == dg.DefaultSensorStatus.RUNNING
    assert "workspaces.globex.data_key_ttl_seconds" in str(raised.value)
    assert "workspace globex is not served" in str(raised.value)
    assert acme_run.success


def test_serve_workspaces_limits_the_code_location_and_refuses_an_undeclared_name(
    tenants: dict[str, Tenant], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("FIELDCRYPT_SERVE_WORKSPACES", "acme")
    with fresh_code_location_import():
        from pipelines.definitions import defs

        workspaces = {spec.key.path[0] for spec in defs.resolve_all_asset_specs()}
        resources = set(defs.resources or {})
    assert (workspaces, resources) == ({"acme"}, {"fieldcrypt_acme"})

    monkeypatch.setenv("FIELDCRYPT_SERVE_WORKSPACES", "acme,initech")
    with (
        pytest.raises(ConfigError, match=r"FIELDCRYPT_SERVE_WORKSPACES names 'initech', not declared"),
        fresh_code_location_import(),
    ):
        import pipelines.definitions  # noqa: F401


# -- launched as the UI and the daemon launch them: GraphQL, backfills, the rotation driver ---------------


@pytest.fixture
def graphql(tenants: dict[str, Tenant], tmp_path: Path) -> Iterator[tuple[Any, DagsterInstance]]:
    """The code location loaded out of process (a gRPC server, as the webserver loads it); runs launch
    synchronously in this process."""
    workspace_file = write_workspace_file(tmp_path / "workspace.yaml", LOCATION)
    with (
        fresh_code_location_import(),
        instance_for_test(synchronous_run_coordinator=True, synchronous_run_launcher=True) as instance,
        define_out_of_process_context(str(workspace_file), None, instance) as context,
    ):
        assert context.get_code_location_entries()[LOCATION].load_error is None
        yield context, instance


def test_graphql_backfill_of_acme_protects_acme_alone_and_its_runs_carry_the_backfills_tags(
    tenants: dict[str, Tenant], graphql: tuple[Any, DagsterInstance]
) -> None:
    context, instance = graphql
    globex_before = files_state(tenants["globex"].root)

    launched = execute_dagster_graphql(
        context,
        LAUNCH_PARTITION_BACKFILL_MUTATION,
        variables={
            "backfillParams": {
                "assetSelection": [{"path": ["acme", f"protected_{d}"]} for d in ("users", "events")],
                "partitionNames": PARTITIONS,
                # Dagster 1.13 gives asset-backfill runs the backfill's tags only (deploy/README.md): the operator
                # adds the workspace tag so the run queue limits the backfill per workspace.
                "tags": [{"key": WORKSPACE_TAG, "value": "acme"}],
            }
        },
    )
    assert launched.data["launchPartitionBackfill"]["__typename"] == "LaunchBackfillSuccess", launched.data
    backfill_id = launched.data["launchPartitionBackfill"]["backfillId"]
    run_backfill_to_the_end(context, instance, backfill_id)
    runs = instance.get_runs(filters=RunsFilter.for_backfill(backfill_id))

    assert runs and {run.status for run in runs} == {DagsterRunStatus.SUCCESS}
    for run in runs:
        assert run.tags[WORKSPACE_TAG] == "acme" and run.tags["dagster/backfill"] == backfill_id
        assert {key for key in initialized_resources(instance, run.run_id) if key.startswith("fieldcrypt")} == {
            "fieldcrypt_acme"
        }
        assert {key.path[0] for key in run.asset_selection or ()} == {"acme"}
    acme = tenants["acme"].fieldcrypt.workspace("test")
    assert all(
        c.pending == 0 for d in ("users", "events") for p in PARTITIONS for c in acme.status(d, p).attributes.values()
    )
    assert files_state(tenants["globex"].root) == globex_before


def test_graphql_job_launch_carries_the_workspace_tag_without_being_asked(
    tenants: dict[str, Tenant], graphql: tuple[Any, DagsterInstance]
) -> None:
    context, instance = graphql
    globex_before = files_state(tenants["globex"].root)

    launched = execute_dagster_graphql(
        context,
        LAUNCH_PIPELINE_EXECUTION_MUTATION,
        variables={
            "executionParams": {
                "selector": {
                    "repositoryLocationName": LOCATION,
                    "repositoryName": "__repository__",
                    "pipelineName": "acme__protect_snapshots",
                },
                "executionMetadata": {"tags": [{"key": "dagster/partition", "value": PARTITIONS[1]}]},
            }
        },
    )

    assert launched.data["launchPipelineExecution"]["__typename"] == "LaunchRunSuccess", launched.data
    run = instance.get_run_by_id(launched.data["launchPipelineExecution"]["run"]["runId"])
    assert run is not None and run.status == DagsterRunStatus.SUCCESS
    assert (run.tags[WORKSPACE_TAG], run.tags["fieldcrypt/operation"]) == ("acme", "protect")
    assert files_state(tenants["globex"].root) == globex_before


def test_rotation_driver_requests_runs_of_its_own_workspace_tagged_with_it(
    tenants: dict[str, Tenant], code_location: dg.Definitions
) -> None:
    acme, globex = tenants["acme"], tenants["globex"]
    for dataset in ("users", "events"):
        for partition in PARTITIONS:
            acme.fieldcrypt.workspace("test").protect(dataset, partition)
    instance = DagsterInstance.ephemeral()
    assert run_job(code_location, "acme__start_key_rotation", instance).success
    globex_before = files_state(globex.root)

    def tick(name: str) -> Any:
        sensor = code_location.resolve_sensor_def(f"{name}__key_rotation_driver")
        with (
            dg.partition_loading_context(dynamic_partitions_store=instance),
            dg.build_sensor_context(
                instance=instance, resources=dict(code_location.resources or {}), definitions=code_location
            ) as context,
        ):
            return sensor.evaluate_tick(context)

    acme_tick, globex_tick = tick("acme"), tick("globex")

    (request,) = acme_tick.run_requests or []  # one run over the range of acme's partitions (ranged driver)
    campaign = campaign_id(acme)
    assert request.job_name == "acme__rotate_keys"
    assert (request.tags["dagster/asset_partition_range_start"], request.tags["dagster/asset_partition_range_end"]) == (
        f"{campaign}|{PARTITIONS[0]}",
        f"{campaign}|{PARTITIONS[-1]}",
    )
    assert request.tags[WORKSPACE_TAG] == "acme"
    assert {key.path[0] for key in request.asset_selection or ()} == {"acme"}
    assert not globex_tick.run_requests and "no rotation campaign in progress" in (globex_tick.skip_message or "")
    assert files_state(globex.root) == globex_before
