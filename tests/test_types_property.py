"""Property: for random schemas and values (NaN, nulls at every level, nested structs,
lists, maps, multibyte and empty strings), a random text type for a protected column,
and a random enablement split of the rows,
protect + verify leaves every other column exactly as it was and every protected cell
decrypts to its original."""

from __future__ import annotations

import itertools
from collections.abc import Callable
from datetime import UTC, date, datetime, timedelta
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from demo.sample_data import snapshot_path
from fieldcrypt import Workspace
from fieldcrypt.format.columns import identical, read_path
from fieldcrypt.policy.policy import DatasetSpec

NOON = datetime(2026, 11, 1, 12, tzinfo=UTC)
SPEC = DatasetSpec("things", "ingested_at", "id")
ATTRIBUTES = {"email": "email", "ctx.inner.email": "full", "props['email']": "last4"}
days = itertools.count()

text = st.text(max_size=12) | st.sampled_from(["", "é", "日本語", "😀@x.io", "a@b.co", "+33 6 12 34 56 78"])
floats = st.none() | st.floats(allow_nan=True, allow_infinity=True) | st.sampled_from([-0.0, float("nan")])

UNTOUCHED: dict[str, tuple[pa.DataType, st.SearchStrategy[Any]]] = {
    "f64": (pa.float64(), floats),
    "f32": (pa.float32(), st.none() | st.floats(width=32, allow_nan=True)),
    "i32": (pa.int32(), st.none() | st.integers(-(2**31), 2**31 - 1)),
    "txt": (pa.string(), st.none() | text),
    "bin": (pa.binary(), st.none() | st.binary(max_size=8)),
    "floats": (pa.list_(pa.float64()), st.none() | st.lists(floats, max_size=3)),
    "words": (pa.large_list(pa.string()), st.none() | st.lists(st.none() | text, max_size=3)),
    "nested": (
        pa.struct([("x", pa.float64()), ("inner", pa.struct([("tags", pa.list_(pa.string()))]))]),
        st.none()
        | st.fixed_dictionaries(
            {"x": floats, "inner": st.none() | st.fixed_dictionaries({"tags": st.none() | st.lists(text, max_size=2)})}
        ),
    ),
    "scores": (
        pa.map_(pa.string(), pa.float64()),
        st.none() | st.dictionaries(text, floats, max_size=3).map(lambda d: list(d.items())),
    ),
}
CTX = pa.struct([("inner", pa.struct([("email", pa.string()), ("other", pa.string())]))])
PROPS = pa.map_(pa.string(), pa.string())
props = st.none() | st.tuples(st.dictionaries(text, st.none() | text, max_size=3), st.none() | text, st.booleans()).map(
    lambda t: list({**t[0], **({"email": t[1]} if t[2] else {})}.items())
)
ctx = st.none() | st.fixed_dictionaries(
    {"inner": st.none() | st.fixed_dictionaries({"email": st.none() | text, "other": st.none() | text})}
)
row = st.fixed_dictionaries(
    {
        "after": st.booleans(),
        "email": st.none() | text,
        "ctx": ctx,
        "props": props,
        **{name: strategy for name, (_, strategy) in UNTOUCHED.items()},
    }
)
EMAIL_STORAGE = [
    pa.string(),
    pa.large_string(),
    pa.string_view(),
    pa.dictionary(pa.int16(), pa.string()),
    pa.dictionary(pa.int32(), pa.large_string()),
]
examples = st.tuples(
    st.lists(row, max_size=12), st.sets(st.sampled_from(sorted(UNTOUCHED))), st.sampled_from(EMAIL_STORAGE)
)


def build(rows: list[dict[str, Any]], extra: set[str], email_type: pa.DataType) -> pa.Table:
    n = len(rows)
    columns: dict[str, pa.Array] = {
        "id": pa.array(range(n), pa.int64()),
        "email": pa.array([r["email"] for r in rows], pa.string()).cast(email_type),
        "ctx": pa.array([r["ctx"] for r in rows], CTX),
        "props": pa.array([r["props"] for r in rows], PROPS),
        "ingested_at": pa.array(
            [NOON + timedelta(seconds=i) if r["after"] else NOON - timedelta(seconds=1) for i, r in enumerate(rows)],
            pa.timestamp("us", tz="UTC"),
        ),
    }
    for name in sorted(extra):
        value_type, _ = UNTOUCHED[name]
        columns[name] = pa.array([r[name] for r in rows], value_type)
    return pa.table(columns)


@pytest.fixture
def workspace(make_local_workspace: Callable[..., Workspace], enable_at: Callable[..., Any]) -> Workspace:
    workspace = make_local_workspace()
    for path, mask in ATTRIBUTES.items():
        enable_at(workspace, f"things.{path}", mask, NOON, SPEC)
    return workspace


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(example=examples)
def test_random_tables_round_trip_exactly_through_protect(
    workspace: Workspace, example: tuple[list[dict[str, Any]], set[str], pa.DataType]
) -> None:
    rows, extra, email_type = example
    day = date(2031, 1, 1) + timedelta(days=next(days))
    path = Path(workspace.store.full_path(snapshot_path("things", day.isoformat())))
    path.parent.mkdir(parents=True)
    pq.write_table(build(rows, extra, email_type), path, row_group_size=5)
    original = pq.read_table(path)

    workspace.protect("things", day.isoformat())
    workspace.verify("things", day.isoformat())

    after = pq.read_table(path)
    assert after.schema.field("email").type == original.schema.field("email").type
    for name in ["id", "ingested_at", *sorted(extra)]:
        assert identical(after.column(name).combine_chunks(), original.column(name).combine_chunks()), name
    batches = list(workspace.reveal("things", day.isoformat(), list(ATTRIBUTES)))
    source = original.combine_chunks().to_batches()
    for attribute in ATTRIBUTES:
        plain = [v for b in batches for v in b.column(f"things.{attribute}").to_pylist()]
        expected = [v for b in source for v in read_path(b, attribute).to_pylist()]
        assert plain == expected, attribute
