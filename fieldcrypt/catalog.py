"""The catalog: one YAML file declaring each workspace's lake, master key and datasets.

The CLI and the Dagster code location read the same file, validated here with one
schema (pydantic models, unknown keys refused) into the core's `WorkspaceConfig`.
Errors name the key and the problem: `fieldcrypt.yaml: workspaces.acme.datasets.customers.
ingested_at: field required`. Environment variables override the selected workspace's
settings (see `ENV_OVERRIDES`); an error in an overridden value names the variable.
Loading reads one local file and the environment: no network call.

Shape (docs/CATALOG.md has every field)::

    default_workspace: demo
    workspaces:
      demo:
        lake: demo-workspace/lake                # relative to this file, or s3://bucket/prefix
        key: {provider: local, keystore: demo-workspace/keys/keystore.json}
        datasets:
          customers:
            path: raw/customers
            partitioning: {granularity: daily, key: date, start: 2026-01-01}
            ingested_at: ingested_at
            primary_key: user_id                 # or a list for a composite key
            attributes: {email: email, phone: last4}
          orders:                                # a Delta Lake table: partitions from its log
            kind: delta
            path: warehouse/orders               # its root under the lake (or a file:// / s3:// URI inside it)
            ingested_at: ingested_at
          events:                                # an Apache Iceberg table, through a pyiceberg catalog
            kind: iceberg
            table: analytics.events
            iceberg_catalog: {type: sql, uri: sqlite:///demo-workspace/iceberg.db, warehouse: demo-workspace/lake}
            ingested_at: ingested_at
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from datetime import UTC, date, datetime
from pathlib import Path
from typing import Annotated, Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from fieldcrypt.access.workspace_config import KeyConfig, WorkspaceConfig
from fieldcrypt.errors import ConfigError, FieldcryptError
from fieldcrypt.keys.cache import MAX_TTL_SECONDS
from fieldcrypt.lake.tables.base import DELTA_KIND, HIVE_KIND, ICEBERG_KIND, TableSource
from fieldcrypt.policy.layout import DEFAULT_LEVEL_FORMATS, HIDDEN_KEY_REASON, DatasetLayout, HiveLevel, Partitioning
from fieldcrypt.policy.policy import DatasetSpec

CATALOG_ENV = "FIELDCRYPT_CATALOG"
WORKSPACE_ENV = "FIELDCRYPT_WORKSPACE"
DEFAULT_CATALOG = "fieldcrypt.yaml"
DEFAULT_KEY_NAMES = {"daily": "date", "hourly": "dt", "monthly": "month"}

# Environment variable -> where it lands in the selected workspace's entry.
ENV_OVERRIDES: dict[str, tuple[str, ...]] = {
    "FIELDCRYPT_LAKE": ("lake",),
    "FIELDCRYPT_S3_ENDPOINT_URL": ("s3_endpoint_url",),
    "FIELDCRYPT_REGION": ("region",),
    "FIELDCRYPT_KEY_PROVIDER": ("key", "provider"),
    "FIELDCRYPT_KEYSTORE": ("key", "keystore"),
    "FIELDCRYPT_KMS_KEY": ("key", "kms_key"),
    "FIELDCRYPT_KMS_ENDPOINT_URL": ("key", "endpoint_url"),
    "FIELDCRYPT_KMS_RETRY_MODE": ("key", "retry_mode"),
    "FIELDCRYPT_KMS_MAX_ATTEMPTS": ("key", "max_attempts"),
    "FIELDCRYPT_DATA_KEY_TTL_SECONDS": ("data_key_ttl_seconds",),
    "FIELDCRYPT_KMS_CALLS_PER_SECOND": ("kms_calls_per_second",),
    "FIELDCRYPT_PARTITIONS_START": ("partitions_start",),
    "FIELDCRYPT_PARTITIONS_END": ("partitions_end",),
}

_NAME = r"^[A-Za-z_][A-Za-z0-9_-]*$"


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class LocalKeyEntry(_Strict):
    provider: Literal["local"]
    keystore: str = Field(min_length=1, description="keystore file, relative to the catalog file")


class Pkcs11KeyEntry(_Strict):
    """A master key inside an HSM. The PIN is named (a variable or a file), never written here."""

    provider: Literal["pkcs11"]
    module: str = Field(min_length=1, description="the token's PKCS#11 module (.so), absolute path")
    token: str = Field(min_length=1, description="the token label")
    key_label: str = Field(min_length=1, description="label of the AES-256 secret key object")
    pin_env: str | None = Field(default=None, pattern=r"^[A-Za-z_][A-Za-z0-9_]*$", description="variable with the PIN")
    pin_file: str | None = Field(default=None, min_length=1, description="file with the PIN, relative to the catalog")
    keystore: str | None = Field(default=None, description="the old local keystore, while rotating from local")

    @model_validator(mode="after")
    def _one_pin_source(self) -> Pkcs11KeyEntry:
        if (self.pin_env is None) == (self.pin_file is None):
            raise ValueError("give exactly one of pin_env (a variable name) or pin_file; never the PIN itself")
        return self


class AwsKmsKeyEntry(_Strict):
    provider: Literal["aws-kms"]
    kms_key: str = Field(min_length=1, description="the key's full ARN")
    region: str | None = None
    endpoint_url: str | None = None
    retry_mode: Literal["standard", "adaptive"] = "standard"
    max_attempts: int = Field(default=5, ge=1, le=20)


def _visible_key(value: str | None) -> str | None:
    """A partition key starting with `_` names directories engines skip: refused when the catalog loads."""
    if value is not None and value.startswith("_"):
        raise ValueError(f"partition key {value!r} starts with '_': {HIDDEN_KEY_REASON}")
    return value


class LevelEntry(_Strict):
    key: str = Field(pattern=r"^[A-Za-z_][A-Za-z0-9_]*$")
    format: str

    _key_visible = field_validator("key")(_visible_key)


class PartitioningEntry(_Strict):
    granularity: Literal["daily", "hourly", "monthly", "none"] = "daily"
    key: str | None = Field(default=None, description="shorthand for one level with the granularity's format")
    levels: list[LevelEntry] | None = None
    start: date | datetime | None = None
    end: date | datetime | None = None

    _key_visible = field_validator("key")(_visible_key)

    @model_validator(mode="after")
    def _one_way_to_name_levels(self) -> PartitioningEntry:
        if self.key is not None and self.levels is not None:
            raise ValueError("give either key or levels, not both")
        if self.granularity == "none" and (self.key or self.levels):
            raise ValueError("an unpartitioned dataset (granularity none) has no key or levels")
        return self

    def partitioning(self) -> Partitioning:
        if self.granularity == "none":
            return Partitioning("none", ())
        if self.levels is not None:
            levels = tuple(HiveLevel(level.key, level.format) for level in self.levels)
        else:
            key = self.key or DEFAULT_KEY_NAMES[self.granularity]
            levels = (HiveLevel(key, DEFAULT_LEVEL_FORMATS[self.granularity]),)
        return Partitioning(self.granularity, levels)


# Catalog properties that would hold a credential: they come from the environment, never the catalog file.
_CREDENTIAL_WORDS = ("secret", "password", "token", "credential", "access-key", "access_key", "session")


class IcebergCatalogEntry(BaseModel):
    """A pyiceberg catalog: `type` sql (SQLite for tests and the demo), rest or glue, and its properties."""

    model_config = ConfigDict(extra="allow", frozen=True)
    type: Literal["sql", "rest", "glue"]
    uri: str | None = None
    warehouse: str | None = None

    @model_validator(mode="after")
    def _no_credentials(self) -> IcebergCatalogEntry:
        for name in self.model_extra or {}:
            if any(word in name.lower() for word in _CREDENTIAL_WORDS):
                raise ValueError(
                    f"{name}: credentials are read from the environment (AWS_*, PYICEBERG_CATALOG__*), "
                    "never from the catalog file"
                )
        if self.type in ("sql", "rest") and not self.uri:
            raise ValueError(f"a {self.type} catalog needs a uri")
        return self


class DatasetEntry(_Strict):
    kind: Literal["hive", "delta", "iceberg"] = Field(
        default="hive", description="hive: a folder of Parquet files; delta / iceberg: a table, through its own log"
    )
    path: str | None = Field(default=None, description="folder under the lake; default: the dataset's name")
    table: str | None = Field(default=None, description="kind: iceberg: the table's identifier, namespace.name")
    iceberg_catalog: IcebergCatalogEntry | None = None
    partitioning: PartitioningEntry | Literal["daily", "hourly", "monthly", "none"] = "daily"
    ingested_at: str = Field(min_length=1)
    primary_key: str | list[str] | None = None
    attributes: dict[str, Literal["full", "email", "last4"]] = Field(default_factory=dict)

    @field_validator("path")
    @classmethod
    def _relative_path(cls, value: str | None) -> str | None:
        if value is not None and value.startswith(("file://", "s3://")):
            return value  # a full URI (kind: delta), made relative to the lake when the workspace is read
        if value is not None and (not value.strip("/") or value.startswith("/") or ".." in value.split("/")):
            raise ValueError("must be a folder relative to the lake root, without '..'")
        return value.strip("/") if value else value

    @field_validator("primary_key")
    @classmethod
    def _key_columns(cls, value: str | list[str] | None) -> str | list[str] | None:
        if isinstance(value, list) and (not value or len(set(value)) != len(value)):
            raise ValueError("a composite primary key lists distinct columns")
        return value

    @model_validator(mode="after")
    def _kind_fields(self) -> DatasetEntry:
        given = self.model_fields_set
        if self.kind != HIVE_KIND and "partitioning" in given:
            raise ValueError(
                f"partitioning: a {self.kind} table's partitions come from its own partition columns; remove it"
            )
        if self.kind != ICEBERG_KIND:
            extra = [name for name in ("table", "iceberg_catalog") if name in given]
            if extra:
                raise ValueError(f"{', '.join(extra)}: only for kind: iceberg (this dataset is kind: {self.kind})")
        else:
            if not self.table or len(self.table.split(".")) < 2 or not all(self.table.split(".")):
                raise ValueError("kind: iceberg needs table: <namespace>.<name>")
            if self.iceberg_catalog is None:
                raise ValueError("kind: iceberg needs iceberg_catalog: {type: sql|rest|glue, uri: ..., ...}")
        if self.kind != DELTA_KIND and self.path is not None and "://" in self.path:
            raise ValueError("a full URI as path is only for kind: delta")
        return self

    def partitioning_entry(self) -> PartitioningEntry:
        if isinstance(self.partitioning, str):
            return PartitioningEntry(granularity=self.partitioning)
        return self.partitioning


class WorkspaceEntry(_Strict):
    lake: str = Field(min_length=1, description="local folder (relative to the catalog file) or s3://bucket/prefix")
    s3_endpoint_url: str | None = None
    region: str | None = None
    key: Annotated[LocalKeyEntry | AwsKmsKeyEntry | Pkcs11KeyEntry, Field(discriminator="provider")]
    data_key_ttl_seconds: float = Field(default=MAX_TTL_SECONDS, gt=0, le=MAX_TTL_SECONDS)
    file_workers: int = Field(default=2, ge=1, le=64, description="files of one partition processed at once")
    kms_calls_per_second: float | None = Field(
        default=None, gt=0, le=100_000, description="client-side budget of this workspace's KMS calls, per process"
    )
    partitions_start: date | datetime | None = None
    partitions_end: date | datetime | None = None
    datasets: dict[str, DatasetEntry] = Field(default_factory=dict)

    @field_validator("datasets")
    @classmethod
    def _dataset_names(cls, value: dict[str, DatasetEntry]) -> dict[str, DatasetEntry]:
        import re

        for name in value:
            if not re.fullmatch(r"[A-Za-z_][A-Za-z0-9_]*", name):
                raise ValueError(f"dataset name {name!r} must be letters, digits and underscores")
        return value


class CatalogFile(_Strict):
    """The file's top level; each workspace's entry is validated on its own (`Catalog.load`)."""

    default_workspace: str | None = None
    workspaces: dict[str, dict[str, Any]] = Field(min_length=1)

    @field_validator("workspaces")
    @classmethod
    def _workspace_names(cls, value: dict[str, dict[str, Any]]) -> dict[str, dict[str, Any]]:
        import re

        for name in value:
            if not re.fullmatch(_NAME, name):
                raise ValueError(
                    f"workspace name {name!r} must be letters, digits, '_' and '-', not starting with a digit"
                )
        idents: dict[str, str] = {}
        for name in value:
            other = idents.setdefault(workspace_ident(name), name)
            if other != name:
                raise ValueError(f"workspace names {other!r} and {name!r} differ only in '-' versus '_'")
        return value


def workspace_ident(name: str) -> str:
    """The workspace's name as Dagster names take it (letters, digits, underscores): `-` becomes `_`."""
    return name.replace("-", "_")


class Catalog:
    """A validated catalog file, with the environment's overrides applied to the selected workspace.

    Each workspace's entry is validated on its own: an error in one customer's entry is raised
    when that workspace is asked for (`workspace_config`), not when another is, so one tenant's
    typo does not stop the others' runs. An error in the selected workspace (the one the
    environment's overrides apply to, `FIELDCRYPT_WORKSPACE` or `default_workspace`) is raised
    by `load`, naming the variable when the value came from one.
    """

    def __init__(
        self,
        path: Path,
        doc: CatalogFile,
        selected: str | None,
        entries: dict[str, WorkspaceEntry],
        errors: dict[str, str],
        overridden: dict[tuple[str, ...], str] | None = None,
    ) -> None:
        self.path = path
        self.doc = doc
        self.selected = selected
        self._entries = entries
        self.errors = errors  # workspace -> why its entry is invalid
        self.overridden = overridden or {}  # loc -> the environment variable it came from

    def __repr__(self) -> str:
        return f"Catalog({str(self.path)!r}, selected={self.selected!r})"

    @classmethod
    def load(
        cls,
        path: str | Path | None = None,
        environ: Mapping[str, str] | None = None,
        *,
        fail_on_selected: bool = True,
    ) -> Catalog:
        """Read and validate the catalog (`path`, else $FIELDCRYPT_CATALOG, else ./fieldcrypt.yaml).

        An error in the selected workspace's entry fails the load (the CLI works on that workspace).
        With `fail_on_selected=False` (the code location, which serves each workspace alone) it fails
        the load only when the environment overrides some of that entry; otherwise it is kept for
        `workspace_config` like any other workspace's, so a typo in the default workspace's entry does
        not stop the others."""
        env = os.environ if environ is None else environ
        chosen = Path(path or env.get(CATALOG_ENV) or DEFAULT_CATALOG)
        try:
            text = chosen.read_text()
        except FileNotFoundError:
            raise ConfigError(
                f"no catalog at {chosen.absolute()}: create it (see fieldcrypt.yaml in the project), "
                f"pass its path with --catalog or set {CATALOG_ENV}"
            ) from None
        except OSError as exc:
            raise ConfigError(f"catalog {chosen} cannot be read ({exc.strerror})") from None
        try:
            raw = yaml.safe_load(text)
        except yaml.YAMLError as exc:
            mark = getattr(exc, "problem_mark", None)
            at = f" at line {mark.line + 1}" if mark is not None else ""
            raise ConfigError(f"{chosen}: not valid YAML{at}") from None
        if not isinstance(raw, dict):
            raise ConfigError(f"{chosen}: expected a mapping with `workspaces:`")
        selected = _selected_workspace(raw, env, chosen)
        overridden = _apply_overrides(raw, selected, env) if selected else {}
        try:
            doc = CatalogFile.model_validate(raw)
        except ValidationError as exc:
            raise ConfigError(_describe(chosen, exc, overridden)) from None
        entries: dict[str, WorkspaceEntry] = {}
        errors: dict[str, str] = {}
        for name, entry in doc.workspaces.items():
            try:
                entries[name] = WorkspaceEntry.model_validate(entry)
            except ValidationError as exc:
                errors[name] = _describe(chosen, exc, overridden, prefix=("workspaces", name))
        catalog = cls(chosen.resolve(), doc, selected, entries, errors, overridden)
        if selected in errors and (fail_on_selected or catalog.from_environment(selected)):
            raise ConfigError(errors[selected])
        return catalog

    @property
    def workspace_names(self) -> list[str]:
        return sorted(self.doc.workspaces)

    def from_environment(self, name: str) -> bool:
        """Whether the environment overrides some of `name`'s settings."""
        return any(loc[1] == name for loc in self.overridden)

    def workspace_config(self, name: str | None = None) -> WorkspaceConfig:
        """The core's configuration of one workspace (the selected one by default)."""
        if name is None:
            if self.selected is None:
                raise ConfigError(
                    f"{self.path}: several workspaces are declared; set default_workspace or {WORKSPACE_ENV}"
                )
            name = self.selected
        if name in self.errors:
            raise ConfigError(self.errors[name])
        entry = self._entries.get(name)
        if entry is None:
            raise ConfigError(
                f"{self.path}: workspace {name!r} is not declared (declared: {', '.join(self.workspace_names)})"
            )
        where = f"{self.path}: workspaces.{name}"
        lake = entry.lake if entry.lake.startswith("s3://") else self._local_path(entry.lake)
        try:
            key = (
                KeyConfig(provider="local", keystore_path=self._local_path(entry.key.keystore))
                if isinstance(entry.key, LocalKeyEntry)
                else self._pkcs11_key(entry.key)
                if isinstance(entry.key, Pkcs11KeyEntry)
                else KeyConfig(
                    provider="aws-kms",
                    kms_key=entry.key.kms_key,
                    kms_region=entry.key.region or entry.region,
                    kms_endpoint_url=entry.key.endpoint_url,
                    kms_retry_mode=entry.key.retry_mode,
                    kms_max_attempts=entry.key.max_attempts,
                )
            )
            datasets = {
                dataset: self._layout(dataset, spec, entry, lake) for dataset, spec in sorted(entry.datasets.items())
            }
        except FieldcryptError as exc:
            raise ConfigError(f"{where}: {exc}") from None
        return WorkspaceConfig(
            name,
            lake,
            key,
            s3_endpoint_url=entry.s3_endpoint_url,
            s3_region=entry.region,
            data_key_ttl_seconds=entry.data_key_ttl_seconds,
            datasets=datasets,
            file_workers=entry.file_workers,
            kms_calls_per_second=entry.kms_calls_per_second,
            catalog_path=str(self.path),
        )

    def _pkcs11_key(self, key: Pkcs11KeyEntry) -> KeyConfig:
        return KeyConfig(
            provider="pkcs11",
            keystore_path=self._local_path(key.keystore) if key.keystore else None,
            pkcs11_module=key.module,
            pkcs11_token=key.token,
            pkcs11_key_label=key.key_label,
            pkcs11_pin_env=key.pin_env,
            pkcs11_pin_file=self._local_path(key.pin_file) if key.pin_file else None,
        )

    @staticmethod
    def _inside_lake(name: str, path: str, lake: str) -> str:
        """A delta table's root relative to the lake: a relative path as given, a full URI inside the lake made
        relative (fieldcrypt reads and writes a table's files through the lake's store)."""
        if "://" not in path:
            return path
        root = _strip_scheme(lake)
        target = _strip_scheme(path)
        if path.startswith("file://"):
            target = str(Path(target).resolve())
            root = str(Path(root).resolve()) if not lake.startswith("s3://") else root
        if not target.startswith(root + "/"):
            raise ConfigError(f"datasets.{name}.path: {path} is not inside the lake {lake}")
        return target[len(root) + 1 :]

    def _iceberg_catalog(self, entry: IcebergCatalogEntry) -> dict[str, str]:
        """The pyiceberg catalog properties: a relative SQLite database or warehouse folder resolved against this
        file; credentials are not here (the environment)."""
        properties = {k: str(v) for k, v in (entry.model_extra or {}).items()}
        properties["type"] = entry.type
        if entry.uri is not None:
            prefix = "sqlite:///"
            uri = entry.uri
            if uri.startswith(prefix) and not uri[len(prefix) :].startswith("/"):
                uri = prefix + self._local_path(uri[len(prefix) :])
            properties["uri"] = uri
        if entry.warehouse is not None:
            warehouse = entry.warehouse
            if "://" not in warehouse or warehouse.startswith("file://"):
                warehouse = "file://" + self._local_path(warehouse)
            properties["warehouse"] = warehouse
        return properties

    def _local_path(self, value: str) -> str:
        path = Path(value.removeprefix("file://")).expanduser()
        return str(path if path.is_absolute() else (self.path.parent / path).resolve())

    def _layout(self, name: str, entry: DatasetEntry, workspace: WorkspaceEntry, lake: str) -> DatasetLayout:
        partitioning = entry.partitioning_entry()
        try:
            layout_partitioning = partitioning.partitioning()
        except FieldcryptError as exc:
            raise ConfigError(f"datasets.{name}.partitioning: {exc}") from None
        path = entry.path or name
        source = None
        if entry.kind == DELTA_KIND:
            path = self._inside_lake(name, path, lake)
            source = TableSource(DELTA_KIND, location=path)
        elif entry.kind == ICEBERG_KIND and entry.iceberg_catalog is not None and entry.table is not None:
            source = TableSource(
                ICEBERG_KIND,
                location=path,
                identifier=entry.table,
                catalog=self._iceberg_catalog(entry.iceberg_catalog),
            )
        if source is not None:
            layout_partitioning = Partitioning("none", ())  # the table's own partitions (fieldcrypt.lake.tables)
        return DatasetLayout(
            spec=DatasetSpec(name, entry.ingested_at, entry.primary_key),
            path=path,
            source=source,
            partitioning=layout_partitioning,
            attributes=dict(entry.attributes),
            partitions_start=_utc(workspace.partitions_start or partitioning.start),
            partitions_end=_utc(workspace.partitions_end or partitioning.end),
        )


def _strip_scheme(uri: str) -> str:
    return uri.removeprefix("file://").rstrip("/")


def _utc(value: date | datetime | None) -> datetime | None:
    if value is None:
        return None
    if not isinstance(value, datetime):
        value = datetime(value.year, value.month, value.day)
    return value.replace(tzinfo=UTC) if value.tzinfo is None else value.astimezone(UTC)


def _selected_workspace(raw: dict[str, Any], env: Mapping[str, str], path: Path) -> str | None:
    """The workspace the environment's overrides apply to; None when several are declared and none is chosen."""
    workspaces = raw.get("workspaces")
    names = sorted(workspaces) if isinstance(workspaces, dict) else []
    chosen = env.get(WORKSPACE_ENV) or raw.get("default_workspace") or (names[0] if len(names) == 1 else None)
    if chosen is None:
        return None
    if chosen not in names:
        origin = WORKSPACE_ENV if env.get(WORKSPACE_ENV) else "default_workspace"
        raise ConfigError(
            f"{path}: workspace {chosen!r} ({origin}) is not declared (declared: {', '.join(names) or 'none'})"
        )
    return str(chosen)


def _apply_overrides(raw: dict[str, Any], workspace: str, env: Mapping[str, str]) -> dict[tuple[str, ...], str]:
    """Set the environment's values into the selected workspace's entry; returns loc -> variable."""
    entry = raw["workspaces"][workspace]
    if not isinstance(entry, dict):
        return {}
    provider = env.get("FIELDCRYPT_KEY_PROVIDER")
    key = entry.get("key")
    if provider and (not isinstance(key, dict) or key.get("provider") != provider):
        entry["key"] = {"provider": provider}  # another provider's settings do not carry over
    overridden: dict[tuple[str, ...], str] = {}
    for variable, path in ENV_OVERRIDES.items():
        value = env.get(variable)
        if not value:
            continue
        target = entry
        for part in path[:-1]:
            target = target.setdefault(part, {})
        target[path[-1]] = value
        overridden[("workspaces", workspace, *path)] = variable
    return overridden


def _describe(
    path: Path, exc: ValidationError, overridden: dict[tuple[str, ...], str], prefix: tuple[str, ...] = ()
) -> str:
    lines = []
    for error in exc.errors(include_url=False, include_input=False):
        loc = (*prefix, *_readable_loc(error["loc"]))
        if error["type"] in ("union_tag_invalid", "union_tag_not_found"):  # the tag is the `provider` key
            loc = (*loc, "provider")
        variable = overridden.get(loc)
        origin = f" (from {variable})" if variable else ""
        lines.append(f"{'.'.join(loc) or '(top level)'}{origin}: {error['msg']}")
    return f"{path}: " + "; ".join(dict.fromkeys(lines))


# Parts of a pydantic error location that name a union member, not a key of the file.
_UNION_MEMBERS = {"str", "list[str]", "date", "datetime", "PartitioningEntry", "LocalKeyEntry", "AwsKmsKeyEntry"}
_UNION_MEMBERS.add("Pkcs11KeyEntry")


def _readable_loc(loc: tuple[int | str, ...]) -> tuple[str, ...]:
    """The error's location as keys of the file: `workspaces.demo.key.keystore`."""
    parts: list[str] = []
    for raw in loc:
        part = str(raw)
        if parts and parts[-1] == "key" and part in ("local", "aws-kms", "pkcs11"):  # the discriminated union's tag
            continue
        if part in _UNION_MEMBERS or part.startswith(("literal[", "function-")):
            continue
        parts.append(part)
    return tuple(parts)
