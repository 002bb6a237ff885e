"""Every Arrow type: untouched columns come back identical, protected attributes of every
supported shape (text types, nested struct fields, map values by key) round-trip, primary
keys of every supported kind bind cells, and protected rows with missing parts are refused."""

from __future__ import annotations

import decimal
import json
import struct
from collections.abc import Callable
from datetime import UTC, date, datetime, time, timedelta
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
import pytest

from demo.sample_data import snapshot_path
from fieldcrypt import InputError, IntegrityError, Workspace
from fieldcrypt.errors import PolicyError
from fieldcrypt.format.attribute_path import AttributePath
from fieldcrypt.format.columns import identical, row_key_bytes
from fieldcrypt.policy.policy import AttributePolicy, DatasetSpec, Policy
from fieldcrypt.policy.select import RowSelection, select_rows
from tests.ledger_support import as_written_before_the_ledger

DAY = date(2026, 11, 1)
PARTITION = DAY.isoformat()
NOON = datetime(2026, 11, 1, 12, tzinfo=UTC)
THINGS = DatasetSpec("things", "ingested_at", "id")
Enable = Callable[..., Any]


def ingested(n: int, historical: int = 0) -> pa.Array:
    """`historical` rows before noon, the rest after."""
    return pa.array(
        [NOON - timedelta(hours=1) if i < historical else NOON + timedelta(minutes=i) for i in range(n)],
        pa.timestamp("us", tz="UTC"),
    )


def land(workspace: Workspace, table: pa.Table, dataset: str = "things", **options: Any) -> Path:
    rel = snapshot_path(dataset, PARTITION)
    path = Path(workspace.store.full_path(rel))
    path.parent.mkdir(parents=True, exist_ok=True)
    pq.write_table(table, path, **options)
    return path


def protected_round_trip(
    workspace: Workspace, enable_at: Enable, attribute: str, mask: str = "full", spec: DatasetSpec = THINGS
) -> pa.Table:
    """Enable, protect, verify, rotate, verify; returns the file as read back."""
    enable_at(workspace, attribute, mask, NOON, spec)
    workspace.protect(spec.name, PARTITION)
    workspace.verify(spec.name, PARTITION)
    workspace.start_rotation()
    workspace.rotate(spec.name, PARTITION)
    workspace.verify(spec.name, PARTITION)
    return pq.read_table(workspace.store.full_path(snapshot_path(spec.name, PARTITION)))


def revealed(workspace: Workspace, attribute: str, dataset: str = "things") -> list[Any]:
    batches = list(workspace.reveal(dataset, PARTITION, [attribute]))
    return [value for batch in batches for value in batch.column(f"{dataset}.{attribute}").to_pylist()]


def same_column(a: pa.ChunkedArray, b: pa.ChunkedArray) -> bool:
    return identical(a.combine_chunks(), b.combine_chunks())


# -- NaN and floats in untouched columns ------------------------------------------------------------


SPECIAL_FLOATS = [float("nan"), -0.0, float("inf"), float("-inf"), 0.0, None]


def floats_table() -> pa.Table:
    n = len(SPECIAL_FLOATS)
    return pa.table(
        {
            "id": pa.array(range(n), pa.int64()),
            "email": pa.array([f"u{i}@example.com" for i in range(n)]),
            "score": pa.array(SPECIAL_FLOATS, pa.float64()),
            "ratio": pa.array(SPECIAL_FLOATS, pa.float32()),
            "scores": pa.array([[v] for v in SPECIAL_FLOATS], pa.list_(pa.float64())),
            "ingested_at": ingested(n),
        }
    )


def test_nan_negative_zero_and_infinity_in_untouched_columns_protect_verify_and_rotate(
    make_local_workspace: Callable[..., Workspace], enable_at: Enable
) -> None:
    workspace = make_local_workspace()
    original = floats_table()
    land(workspace, original)
    after = protected_round_trip(workspace, enable_at, "things.email")
    for column in ("score", "ratio", "scores"):
        assert same_column(after.column(column), original.column(column)), column


def test_nan_payload_and_negative_zero_come_back_bit_identical(
    make_local_workspace: Callable[..., Workspace], enable_at: Enable
) -> None:
    workspace = make_local_workspace()
    payload_nan = struct.unpack("<d", struct.pack("<Q", 0x7FF8_0000_0000_BEEF))[0]
    table = floats_table().set_column(2, "score", pa.array([payload_nan, -0.0, 1.0, 2.0, 3.0, None], pa.float64()))
    land(workspace, table)
    after = protected_round_trip(workspace, enable_at, "things.email")
    bits = after.column("score").combine_chunks().view(pa.uint64()).to_pylist()
    assert bits[:2] == [0x7FF8_0000_0000_BEEF, 0x8000_0000_0000_0000]


def test_identical_tells_negative_zero_from_zero() -> None:
    assert not identical(pa.array([-0.0]), pa.array([0.0]))


def test_identical_treats_the_same_nan_as_equal() -> None:
    assert identical(pa.array([float("nan"), None]), pa.array([float("nan"), None]))


# -- every Arrow type in untouched columns -------------------------------------------------------------


def wide_table(n: int = 6) -> pa.Table:
    """One column of each type Parquet stores, with nulls, next to a protected `email`."""
    rows = range(n)
    struct_type = pa.struct([("a", pa.int32()), ("inner", pa.struct([("b", pa.string()), ("f", pa.float64())]))])
    columns: dict[str, pa.Array] = {
        "id": pa.array(rows, pa.int64()),
        "email": pa.array([f"user{i}@example.com" for i in rows]),
        "i8": pa.array([i - 3 for i in rows], pa.int8()),
        "u64": pa.array([2**64 - 1 - i for i in rows], pa.uint64()),
        "f16": pa.array([1.5, None, -0.0, 2.0, 3.0, 4.0], pa.float16()),
        "f64": pa.array([float("nan"), -0.0, float("inf"), None, 1e308, 5e-324]),
        "flag": pa.array([True, False, None, True, False, True]),
        "d128": pa.array(
            [decimal.Decimal("1.23"), None] + [decimal.Decimal(f"-{i}.01") for i in range(4)], pa.decimal128(10, 2)
        ),
        "d256": pa.array([decimal.Decimal(f"{i}" * 40) for i in rows], pa.decimal256(50, 0)),
        "date32": pa.array([date(1970, 1, 1) + timedelta(days=i * 1000) for i in rows], pa.date32()),
        "date64": pa.array([date(2000, 1, 1) + timedelta(days=i) for i in rows], pa.date64()),
        "t32s": pa.array([time(1, 2, 3)] * n, pa.time32("s")),
        "t32ms": pa.array([time(1, 2, 3, 4000)] * n, pa.time32("ms")),
        "t64us": pa.array([time(1, 2, 3, 4)] * n, pa.time64("us")),
        "t64ns": pa.array([1_000_000_001 * i for i in rows], pa.time64("ns")),
        "dur_s": pa.array(rows, pa.duration("s")),
        "dur_ns": pa.array([-i for i in rows], pa.duration("ns")),
        "bin": pa.array([bytes([i]) * i for i in rows], pa.binary()),
        "lbin": pa.array([b"\x00\xff" * i for i in rows], pa.large_binary()),
        "fbin": pa.array([bytes([i]) * 4 for i in rows], pa.binary(4)),
        "lst": pa.array([[i, None] for i in rows], pa.list_(pa.int64())),
        "llst": pa.array([["x"] * i for i in rows], pa.large_list(pa.string())),
        "fsl": pa.array([[float(i), float("nan")] for i in rows], pa.list_(pa.float64(), 2)),
        "mp": pa.array([[("k", float(i)), ("nan", float("nan"))] for i in rows], pa.map_(pa.string(), pa.float64())),
        "nested": pa.array(
            [{"a": i, "inner": {"b": "é" * i, "f": -0.0}} if i % 2 else None for i in rows], struct_type
        ),
        "dict": pa.array(["a", "b", None, "a", "c", "b"]).dictionary_encode(),
        "nothing": pa.nulls(n),
        "sv": pa.array(["v", None, "", "ü", "x" * 20, "y"], pa.string_view()),
        "bv": pa.array([b"v", None, b"", b"\x00", b"x" * 20, b"y"], pa.binary_view()),
        "ingested_at": ingested(n),
    }
    for unit in ("s", "ms", "us", "ns"):
        for tz in (None, "UTC", "Europe/Paris"):
            columns[f"ts_{unit}_{tz}"] = pa.array([i * 86_400_000 for i in rows], pa.timestamp(unit, tz=tz))
    return pa.table(columns)


def test_every_arrow_type_in_untouched_columns_comes_back_identical(
    make_local_workspace: Callable[..., Workspace], enable_at: Enable
) -> None:
    workspace = make_local_workspace()
    path = land(workspace, wide_table())
    original = pq.read_table(path)  # as every reader of the lake sees it
    after = protected_round_trip(workspace, enable_at, "things.email")
    for name in original.schema.names:
        if name == "email":
            continue
        assert after.schema.field(name).type == original.schema.field(name).type, name
        assert same_column(after.column(name), original.column(name)), name


def test_empty_row_groups_are_kept(make_local_workspace: Callable[..., Workspace], enable_at: Enable) -> None:
    workspace = make_local_workspace()
    table = wide_table()
    path = Path(workspace.store.full_path(snapshot_path("things", PARTITION)))
    path.parent.mkdir(parents=True)
    with pq.ParquetWriter(path, table.schema) as writer:
        writer.write_table(table.slice(0, 3), row_group_size=3)
        writer.write_table(table.slice(0, 0), row_group_size=1)
        writer.write_table(table.slice(3), row_group_size=3)
    before = pq.ParquetFile(path)
    sizes = [before.metadata.row_group(i).num_rows for i in range(before.num_row_groups)]
    protected_round_trip(workspace, enable_at, "things.email")
    after = pq.ParquetFile(path)
    assert [after.metadata.row_group(i).num_rows for i in range(after.num_row_groups)] == sizes


def test_zero_row_file_is_protected_with_its_schema_kept(
    make_local_workspace: Callable[..., Workspace], enable_at: Enable
) -> None:
    workspace = make_local_workspace()
    path = land(workspace, wide_table().slice(0, 0))
    original = pq.read_schema(path)
    after = protected_round_trip(workspace, enable_at, "things.email")
    assert after.num_rows == 0
    assert pa.schema([after.schema.field(name) for name in original.names]).equals(original)
    assert "email__fc_ct" in after.schema.names


# -- protected attribute types ---------------------------------------------------------------------------

TEXT_STORAGE = {
    "string": pa.string(),
    "large_string": pa.large_string(),
    "string_view": pa.string_view(),
    "dictionary_int8": pa.dictionary(pa.int8(), pa.string()),
    "dictionary_int32_large": pa.dictionary(pa.int32(), pa.large_string()),
}
EMAILS = ["old@example.com", "ann@example.com", None, "bob@Example.ORG", "not an email", ""]


def text_table(value_type: pa.DataType) -> pa.Table:
    n = len(EMAILS)
    return pa.table(
        {
            "id": pa.array(range(n), pa.int64()),
            "email": pa.array(EMAILS, pa.string()).cast(value_type),
            "ingested_at": ingested(n, historical=1),
        }
    )


@pytest.mark.parametrize("storage", TEXT_STORAGE)
def test_text_attribute_of_any_text_type_keeps_its_type_and_holds_masks(
    make_local_workspace: Callable[..., Workspace], enable_at: Enable, storage: str
) -> None:
    workspace = make_local_workspace()
    path = land(workspace, text_table(TEXT_STORAGE[storage]))
    stored_type = pq.read_schema(path).field("email").type
    after = protected_round_trip(workspace, enable_at, "things.email", mask="email")
    assert after.schema.field("email").type == stored_type
    assert after.column("email").to_pylist() == [
        "old@example.com",
        "****@example.com",
        None,
        "****@example.org",
        "****",
        "****",
    ]


@pytest.mark.parametrize("storage", TEXT_STORAGE)
def test_text_attribute_of_any_text_type_reveals_its_originals(
    make_local_workspace: Callable[..., Workspace], enable_at: Enable, storage: str
) -> None:
    workspace = make_local_workspace()
    land(workspace, text_table(TEXT_STORAGE[storage]))
    protected_round_trip(workspace, enable_at, "things.email", mask="email")
    assert revealed(workspace, "email") == EMAILS


def deep_table() -> pa.Table:
    device = pa.struct([("email", pa.string()), ("model", pa.string())])
    context = pa.struct([("device", device), ("ip", pa.string())])
    values = [
        {"device": {"email": "a@example.com", "model": "x"}, "ip": "1"},
        None,
        {"device": None, "ip": "2"},
        {"device": {"email": None, "model": "y"}, "ip": "3"},
        {"device": {"email": "b@example.com", "model": "z"}, "ip": "4"},
    ]
    return pa.table(
        {"id": pa.array(range(5), pa.int64()), "context": pa.array(values, context), "ingested_at": ingested(5)}
    )


def test_field_three_structs_deep_is_masked_in_place(
    make_local_workspace: Callable[..., Workspace], enable_at: Enable
) -> None:
    workspace = make_local_workspace()
    original = deep_table()
    land(workspace, original)
    after = protected_round_trip(workspace, enable_at, "things.context.device.email")
    emails = pc.struct_field(after.column("context").combine_chunks(), ["device", "email"]).to_pylist()
    assert emails == ["****", None, None, None, "****"]
    assert after.column("context").combine_chunks().is_null().to_pylist() == [False, True, False, False, False]
    assert "context__device__email__fc_ct" in after.schema.names


def test_field_three_structs_deep_reveals_its_originals(
    make_local_workspace: Callable[..., Workspace], enable_at: Enable
) -> None:
    workspace = make_local_workspace()
    land(workspace, deep_table())
    protected_round_trip(workspace, enable_at, "things.context.device.email")
    assert revealed(workspace, "context.device.email") == ["a@example.com", None, None, None, "b@example.com"]


PROPERTIES = [
    [("email", "a@example.com"), ("plan", "pro")],
    [("plan", "free")],
    None,
    [("email", None), ("plan", "pro")],
    [("plan", "x"), ("email", "c@example.com")],
    [],
]


def map_table(map_type: pa.DataType = pa.map_(pa.string(), pa.string())) -> pa.Table:
    n = len(PROPERTIES)
    return pa.table(
        {"id": pa.array(range(n), pa.int64()), "properties": pa.array(PROPERTIES, map_type), "ingested_at": ingested(n)}
    )


def test_map_value_by_key_is_masked_inside_the_map(
    make_local_workspace: Callable[..., Workspace], enable_at: Enable
) -> None:
    workspace = make_local_workspace()
    land(workspace, map_table())
    after = protected_round_trip(workspace, enable_at, "things.properties['email']", mask="email")
    assert after.column("properties").to_pylist() == [
        [("email", "****@example.com"), ("plan", "pro")],
        [("plan", "free")],
        None,
        [("email", None), ("plan", "pro")],
        [("plan", "x"), ("email", "****@example.com")],
        [],
    ]
    assert after.schema.field("properties").type == pa.map_(pa.string(), pa.string())


def test_map_value_by_key_has_its_own_protection_columns(
    make_local_workspace: Callable[..., Workspace], enable_at: Enable
) -> None:
    workspace = make_local_workspace()
    land(workspace, map_table())
    after = protected_round_trip(workspace, enable_at, "things.properties['email']")
    protected = after.column("properties[email]__fc_ct").is_valid().to_pylist()
    assert protected == [True, False, False, False, True, False]


def test_map_value_by_key_reveals_its_originals_and_null_where_the_key_is_absent(
    make_local_workspace: Callable[..., Workspace], enable_at: Enable
) -> None:
    workspace = make_local_workspace()
    land(workspace, map_table())
    protected_round_trip(workspace, enable_at, "things.properties['email']")
    assert revealed(workspace, "properties['email']") == ["a@example.com", None, None, None, "c@example.com", None]


def test_map_row_holding_the_key_twice_is_refused(
    make_local_workspace: Callable[..., Workspace], enable_at: Enable
) -> None:
    workspace = make_local_workspace()
    table = map_table()
    twice = pa.array(
        [[("email", "a@example.com"), ("email", "b@example.com")]] * len(PROPERTIES), pa.map_(pa.string(), pa.string())
    )
    land(workspace, table.set_column(1, "properties", twice))
    enable_at(workspace, "things.properties['email']", "full", NOON, THINGS)
    with pytest.raises(InputError, match=r"row 0 holds the map key twice"):
        workspace.protect("things", PARTITION)


@pytest.mark.parametrize(
    ("column", "value_type", "attribute"),
    [
        ("age", pa.int64(), "age"),
        ("tags", pa.list_(pa.string()), "tags"),
        ("blob", pa.binary(), "blob"),
        ("counts", pa.map_(pa.string(), pa.int64()), "counts['email']"),
        ("ctx", pa.struct([("n", pa.float64())]), "ctx.n"),
        ("ctx", pa.struct([("n", pa.float64())]), "ctx"),
    ],
)
def test_unsupported_attribute_type_is_refused_at_enablement_naming_it(
    make_local_workspace: Callable[..., Workspace], column: str, value_type: pa.DataType, attribute: str
) -> None:
    workspace = make_local_workspace()
    table = pa.table({"id": pa.array([1], pa.int64()), column: pa.nulls(1, value_type), "ingested_at": ingested(1)})
    land(workspace, table)
    with pytest.raises(InputError, match=r"things\." + attribute.replace("[", r"\[") + " is "):
        workspace.enable(f"things.{attribute}", "full", acknowledge_irreversible=True)
    assert workspace.policy().attributes == {}


def test_map_key_lookup_on_a_struct_is_refused_at_enablement(make_local_workspace: Callable[..., Workspace]) -> None:
    workspace = make_local_workspace()
    table = pa.table({"id": [1], "ctx": pa.array([{"email": "a"}]), "ingested_at": ingested(1)})
    land(workspace, table)
    with pytest.raises(InputError, match=r"ctx is struct<email: string>, not a map"):
        workspace.enable("things.ctx['email']", "full", acknowledge_irreversible=True)


# -- attribute paths -------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("path", "stem"),
    [
        ("email", "email"),
        ("context.device.email", "context__device__email"),
        ("properties['email']", "properties[email]"),
        ("ctx.props['e-mail']", "ctx__props[e-mail]"),
        ("properties['e mail.x/é']", "properties[e%20mail%2Ex%2F%C3%A9]"),
    ],
)
def test_attribute_path_has_a_documented_column_stem(path: str, stem: str) -> None:
    assert AttributePath.parse(path).stem == stem


def test_map_key_stem_cannot_equal_a_struct_field_stem() -> None:
    assert AttributePath.parse("properties['email']").stem != AttributePath.parse("properties.email").stem


def test_map_keys_differing_only_in_escaped_characters_get_different_stems() -> None:
    assert AttributePath.parse("p['a b']").stem != AttributePath.parse("p['a%20b']").stem


@pytest.mark.parametrize("path", ["p['']", "p['a'b']", "p[email]", "p['a']['b']", "p['a'].x", "p['a\nb']", "1p"])
def test_malformed_attribute_path_is_refused(path: str) -> None:
    with pytest.raises(PolicyError, match="attribute path"):
        AttributePath.parse(path)


def test_map_attribute_survives_the_policy_file() -> None:
    policy = Policy("acme").with_dataset(THINGS).with_enabled("things.properties['a.b']", "full", "t", now=NOON)
    loaded = Policy.from_json(policy.to_json(), "policy.json")
    assert loaded.attributes["things.properties['a.b']"].path == "properties['a.b']"


# -- primary keys ------------------------------------------------------------------------------------------


def test_single_primary_key_string_is_normalised_to_a_tuple() -> None:
    assert DatasetSpec("d", "t", "id").primary_key == ("id",)


def test_no_primary_key_is_the_empty_tuple() -> None:
    assert DatasetSpec("d", "t", None).primary_key == ()


def test_policy_writes_a_single_primary_key_as_a_plain_string() -> None:
    doc = json.loads(Policy("acme").with_dataset(THINGS).to_json())
    assert doc["datasets"]["things"]["primary_key"] == "id"


def test_policy_writes_a_composite_primary_key_as_a_list_and_reads_it_back() -> None:
    policy = Policy("acme").with_dataset(DatasetSpec("things", "ingested_at", ("tenant", "id")))
    assert json.loads(policy.to_json())["datasets"]["things"]["primary_key"] == ["tenant", "id"]
    assert Policy.from_json(policy.to_json(), "p").datasets["things"].primary_key == ("tenant", "id")


def test_policy_file_written_before_composite_keys_still_loads() -> None:
    text = json.dumps(
        {
            "format": "fieldcrypt-policy-v1",
            "workspace": "acme",
            "datasets": {
                "users": {"name": "users", "ingested_at": "ingested_at", "primary_key": "user_id"},
                "logs": {"name": "logs", "ingested_at": "at", "primary_key": None},
            },
            "attributes": {},
        }
    )
    loaded = Policy.from_json(text, "p")
    assert loaded.datasets["users"].primary_key == ("user_id",) and loaded.datasets["logs"].primary_key == ()


def test_single_integer_and_string_keys_keep_their_canonical_bytes() -> None:
    batch = pa.record_batch({"n": pa.array([-42, 7], pa.int32()), "s": pa.array(["é", ""], pa.large_string())})
    assert row_key_bytes(batch, ("n",), "t").to_pylist() == [b"-42", b"7"]
    assert row_key_bytes(batch, ("s",), "t").to_pylist() == ["é".encode(), b""]


def test_composite_key_is_length_prefixed_per_component() -> None:
    batch = pa.record_batch({"tenant": pa.array(["ab"]), "id": pa.array([12], pa.int64())})
    assert row_key_bytes(batch, ("tenant", "id"), "t").to_pylist() == [b"\x00\x00\x00\x02ab\x00\x00\x00\x0212"]


def test_composite_keys_that_concatenate_alike_differ() -> None:
    batch = pa.record_batch({"a": pa.array(["x", "xy"]), "b": pa.array(["yz", "z"])})
    first, second = row_key_bytes(batch, ("a", "b"), "t").to_pylist()
    assert first != second


def composite_table(tenants: list[str | None], ids: list[int]) -> pa.Table:
    n = len(ids)
    return pa.table(
        {
            "tenant": pa.array(tenants, pa.string()),
            "id": pa.array(ids, pa.int32()),
            "email": pa.array([f"u{i}@example.com" for i in range(n)]),
            "ingested_at": ingested(n),
        }
    )


COMPOSITE = DatasetSpec("things", "ingested_at", ("tenant", "id"))


def test_composite_primary_key_round_trips(make_local_workspace: Callable[..., Workspace], enable_at: Enable) -> None:
    workspace = make_local_workspace()
    land(workspace, composite_table(["a", "a", "b"], [1, 2, 1]))
    protected_round_trip(workspace, enable_at, "things.email", spec=COMPOSITE)
    assert revealed(workspace, "email") == ["u0@example.com", "u1@example.com", "u2@example.com"]


def test_cell_moved_to_a_row_with_another_composite_key_is_detected(
    make_local_workspace: Callable[..., Workspace], enable_at: Enable
) -> None:
    workspace = make_local_workspace()
    path = land(workspace, composite_table(["a", "a", "b"], [1, 2, 1]))
    protected_round_trip(workspace, enable_at, "things.email", spec=COMPOSITE)
    table = pq.read_table(path)
    swapped = table.set_column(0, "tenant", pa.array(["b", "a", "a"]))  # rows 0 and 2 swap tenants
    pq.write_table(swapped, path)
    with pytest.raises(IntegrityError, match="row 0"):
        workspace.verify("things", PARTITION)


def test_duplicate_primary_key_among_rows_to_encrypt_is_refused_and_the_file_left_unchanged(
    make_local_workspace: Callable[..., Workspace], enable_at: Enable
) -> None:
    workspace = make_local_workspace()
    path = land(workspace, composite_table(["a", "b", "a"], [1, 1, 1]), row_group_size=2)
    content = path.read_bytes()
    enable_at(workspace, "things.email", "full", NOON, COMPOSITE)
    with pytest.raises(InputError, match=r"repeats on row group 0 row 0 and row group 1 row 0") as refused:
        workspace.protect("things", PARTITION)
    assert path.read_bytes() == content
    assert "u0@example.com" not in str(refused.value) and "'a'" not in str(refused.value)


def test_null_component_of_a_composite_key_is_refused(
    make_local_workspace: Callable[..., Workspace], enable_at: Enable
) -> None:
    workspace = make_local_workspace()
    land(workspace, composite_table(["a", None], [1, 2]))
    enable_at(workspace, "things.email", "full", NOON, COMPOSITE)
    with pytest.raises(InputError, match=r"row group 0 row 1: primary key \(tenant, id\) of things is null"):
        workspace.protect("things", PARTITION)


def test_duplicate_key_on_historical_rows_only_is_accepted(
    make_local_workspace: Callable[..., Workspace], enable_at: Enable
) -> None:
    workspace = make_local_workspace()
    table = composite_table(["a", "a", "b"], [1, 1, 2]).set_column(3, "ingested_at", ingested(3, historical=2))
    land(workspace, table)
    enable_at(workspace, "things.email", "full", NOON, COMPOSITE)
    assert workspace.protect("things", PARTITION).newly_encrypted == 1


@pytest.mark.parametrize("key_type", [pa.float64(), pa.binary(), pa.timestamp("us"), pa.list_(pa.int64())])
def test_primary_key_of_another_type_is_refused_at_enablement(
    make_local_workspace: Callable[..., Workspace], key_type: pa.DataType
) -> None:
    workspace = make_local_workspace()
    table = pa.table({"id": pa.nulls(1, key_type), "email": ["a@example.com"], "ingested_at": ingested(1)})
    land(workspace, table)
    with pytest.raises(InputError, match=r"primary-key column 'id' of things is "):
        workspace.enable("things.email", "full", acknowledge_irreversible=True)


# -- protected rows with missing parts (issue 8) ---------------------------------------------------------


@pytest.fixture
def protected_file(make_local_workspace: Callable[..., Workspace], enable_at: Enable) -> tuple[Workspace, Path]:
    workspace = make_local_workspace()
    path = land(workspace, text_table(pa.string()))
    enable_at(workspace, "things.email", "email", NOON, THINGS)
    workspace.protect("things", PARTITION)
    return workspace, path


def rewrite(path: Path, change: Callable[[pa.Table], pa.Table]) -> None:
    table = pq.read_table(path)
    pq.write_table(change(table).replace_schema_metadata(table.schema.metadata), path)


def null_at(table: pa.Table, column: str, row: int) -> pa.Table:
    index = table.schema.get_field_index(column)
    values = table.column(index).combine_chunks()
    keep = pa.array([i != row for i in range(len(values))])
    return table.set_column(index, table.schema.field(index), pc.if_else(keep, values, pa.scalar(None, values.type)))


def assert_refused_everywhere(workspace: Workspace, path: Path, match: str) -> None:
    content = path.read_bytes()
    for action in (
        lambda: workspace.protect("things", PARTITION),
        lambda: workspace.verify("things", PARTITION),
        lambda: list(workspace.reveal("things", PARTITION, ["email"])),
    ):
        with pytest.raises(IntegrityError, match=match) as refused:
            action()
        assert "ann@example.com" not in str(refused.value)
    assert path.read_bytes() == content


def test_nulled_ciphertext_with_the_mask_kept_is_an_integrity_error_never_reencrypted(
    protected_file: tuple[Workspace, Path],
) -> None:
    workspace, path = protected_file
    rewrite(path, lambda t: null_at(null_at(t, "email__fc_ct", 1), "email__fc_dek", 1))
    content = path.read_bytes()
    with pytest.raises(IntegrityError, match=r"part-0.parquet row group 0 row 1: things.email holds a mask"):
        workspace.protect("things", PARTITION)
    assert path.read_bytes() == content


def test_ciphertext_without_its_wrapped_key_is_an_integrity_error(protected_file: tuple[Workspace, Path]) -> None:
    workspace, path = protected_file
    rewrite(path, lambda t: null_at(t, "email__fc_dek", 1))
    assert_refused_everywhere(workspace, path, r"row 1: protected things.email has no wrapped key")


def test_wrapped_key_without_its_ciphertext_is_an_integrity_error(protected_file: tuple[Workspace, Path]) -> None:
    workspace, path = protected_file
    rewrite(path, lambda t: null_at(t, "email__fc_ct", 1))
    assert_refused_everywhere(workspace, path, r"row 1: protected things.email has no ciphertext")


def test_dropped_wrapped_key_column_is_an_integrity_error(protected_file: tuple[Workspace, Path]) -> None:
    workspace, path = protected_file
    rewrite(path, lambda t: t.drop_columns(["email__fc_dek"]))
    assert_refused_everywhere(workspace, path, r"says things.email is protected, but its column email__fc_dek")


def test_dropped_wrapped_key_column_without_file_metadata_is_an_integrity_error(
    protected_file: tuple[Workspace, Path],
) -> None:
    workspace, path = protected_file
    table = pq.read_table(path).drop_columns(["email__fc_dek"])
    pq.write_table(table.replace_schema_metadata({}), path)
    assert_refused_everywhere(workspace, path, r"things.email has ciphertexts but no wrapped-key column")


def test_dropped_protection_columns_of_a_declared_attribute_are_an_integrity_error(
    protected_file: tuple[Workspace, Path],
) -> None:
    workspace, path = protected_file
    rewrite(path, lambda t: t.drop_columns(["email__fc_ct", "email__fc_dek"]))
    assert_refused_everywhere(workspace, path, r"says things.email is protected, but its column email__fc_ct and")


# -- plaintext never in a repr (issue 8) ---------------------------------------------------------------


def test_row_selection_repr_shows_no_value() -> None:
    batch = text_table(pa.string()).to_batches()[0]
    entry = AttributePolicy("things", "email", "full", NOON, "t")
    rows = select_rows(batch, THINGS, entry, "batch")
    assert isinstance(rows, RowSelection)
    assert "ann@example.com" not in repr(rows)


def test_rotation_of_a_file_rewritten_by_another_writer_compares_nan_by_bits(
    make_local_workspace: Callable[..., Workspace], enable_at: Enable
) -> None:
    workspace = make_local_workspace()
    path = land(workspace, floats_table())
    enable_at(workspace, "things.email", "full", NOON, THINGS)
    workspace.protect("things", PARTITION)
    table = pq.read_table(path)
    pq.write_table(table, path, use_dictionary=False, compression="gzip")  # other page bytes: decoded comparison
    # Written by a fieldcrypt before the ledger (a rewrite from outside is refused by it, tests/test_ledger.py).
    as_written_before_the_ledger(Path(workspace.store.full_path("")), Path(path), "things", PARTITION)
    workspace.start_rotation()
    assert workspace.rotate("things", PARTITION).rewritten
    assert same_column(pq.read_table(path).column("score"), floats_table().column("score"))


def test_standalone_decryptor_of_format_md_reads_a_map_value_under_a_composite_key(
    make_local_workspace: Callable[..., Workspace], enable_at: Enable, keystore_path: Path
) -> None:
    from fieldcrypt.keys.keystore import Keystore
    from tests.conftest import WORKSPACE
    from tests.test_format_doc import standalone_decryptor

    workspace = make_local_workspace()
    table = map_table().append_column("tenant", pa.array(["a", "b", "a", "b", "a", "b"]))
    path = land(workspace, table)
    spec = DatasetSpec("things", "ingested_at", ("tenant", "id"))
    enable_at(workspace, "things.properties['email']", "email", NOON, spec)
    workspace.protect("things", PARTITION)
    keystore = Keystore.load(keystore_path)
    decrypted = standalone_decryptor()["decrypt_column"](
        str(path),
        WORKSPACE,
        "things",
        "properties['email']",
        primary_key=["tenant", "id"],
        local_master_keys={v: keystore.key_for(v) for v in keystore.versions},
    )
    assert decrypted == {0: "a@example.com", 4: "c@example.com"}


def test_two_keys_of_one_map_are_protected_side_by_side(
    make_local_workspace: Callable[..., Workspace], enable_at: Enable
) -> None:
    workspace = make_local_workspace()
    land(workspace, map_table())
    enable_at(workspace, "things.properties['plan']", "full", NOON, THINGS)
    protected_round_trip(workspace, enable_at, "things.properties['email']")
    after = pq.read_table(workspace.store.full_path(snapshot_path("things", PARTITION)))
    assert after.column("properties").to_pylist()[:2] == [[("email", "****"), ("plan", "****")], [("plan", "****")]]
    assert revealed(workspace, "properties['plan']") == ["pro", "free", None, "pro", "x", None]


def test_duplicate_integer_primary_key_in_another_row_group_is_refused(
    make_local_workspace: Callable[..., Workspace], enable_at: Enable
) -> None:
    workspace = make_local_workspace()
    path = land(workspace, text_table(pa.string()).set_column(0, "id", pa.array([0, 1, 2, 3, 4, 1])), row_group_size=3)
    content = path.read_bytes()
    enable_at(workspace, "things.email", "full", NOON, THINGS)
    with pytest.raises(InputError, match=r"repeats on row group 0 row 1 and row group 1 row 2"):
        workspace.protect("things", PARTITION)
    assert path.read_bytes() == content


def test_hash_collisions_between_distinct_keys_do_not_refuse_the_file(
    make_local_workspace: Callable[..., Workspace], enable_at: Enable, monkeypatch: pytest.MonkeyPatch
) -> None:
    import numpy as np

    from fieldcrypt.policy import select

    monkeypatch.setattr(select, "_keyed_hashes", lambda keys, seed: np.zeros(len(keys), np.uint64))
    workspace = make_local_workspace()
    land(workspace, composite_table(["a", "b", "a"], [1, 1, 2]), row_group_size=2)
    enable_at(workspace, "things.email", "full", NOON, COMPOSITE)
    assert workspace.protect("things", PARTITION).newly_encrypted == 3
