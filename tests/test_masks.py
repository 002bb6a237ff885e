"""Analyst masks (fieldcrypt.format.mask): full, email, last4; nulls stay null; no mask reveals length."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from fieldcrypt import Workspace
from fieldcrypt.format.mask import mask_values


def masked(values: list[str | None], style: str, type_: pa.DataType = pa.string()) -> list[str | None]:
    result: list[str | None] = mask_values(pa.array(values, type_), style).to_pylist()
    return result


def test_full_mask_hides_everything() -> None:
    assert masked(["alice", "", "a much longer value"], "full") == ["****", "****", "****"]


def test_email_mask_keeps_only_the_lowercased_domain() -> None:
    assert masked(["Alice.Smith@Example.COM", "b@mail.test"], "email") == ["****@example.com", "****@mail.test"]


def test_email_mask_lowercases_with_unicode_simple_case_mapping_not_python_lower() -> None:
    """docs/FORMAT.md section 7: U+0130 (İ) maps to a plain i, as Arrow's utf8_lower does; Python's
    str.lower() would give i + U+0307 (full case mapping)."""
    assert masked(["a@İSTANBUL.EXAMPLE"], "email") == ["****@istanbul.example"]
    assert "İSTANBUL".lower() != "istanbul"  # the mapping the format does not use


@pytest.mark.parametrize(
    "value",
    ["not an email", "", "alice@localhost", "@example.com", "alice@", "a@b@example.com", "a b@example.com", "alice"],
)
def test_email_mask_of_a_value_that_is_not_an_email_is_hidden(value: str) -> None:
    assert masked([value], "email") == ["****"]


def test_last4_mask_keeps_the_last_four_digits() -> None:
    assert masked(["+33 6 12 34 56 78", "4111-1111-1111-1234", "12345"], "last4") == [
        "****5678",
        "****1234",
        "****2345",
    ]


@pytest.mark.parametrize("value", ["1234", "12-34", "", "no digits", "+1 (2) 3"])
def test_last4_mask_of_fewer_than_five_digits_is_hidden(value: str) -> None:
    assert masked([value], "last4") == ["****"]


@pytest.mark.parametrize("style", ["full", "email", "last4"])
def test_nulls_stay_null(style: str) -> None:
    assert masked([None, "x@y.com", None], style)[0::2] == [None, None]


@pytest.mark.parametrize("style", ["full", "email", "last4"])
def test_mask_keeps_the_column_type(style: str) -> None:
    result = mask_values(pa.array(["a@b.com", None], pa.large_string()), style)
    assert result.type == pa.large_string()


def test_unknown_mask_style_is_refused() -> None:
    with pytest.raises(ValueError, match="unknown mask style 'first3'"):
        mask_values(pa.array(["x"]), "first3")


local_parts = st.text(st.characters(categories=["L", "N"]) | st.sampled_from("._+-"), min_size=1, max_size=40)
digits = st.text(st.sampled_from("0123456789"), min_size=0, max_size=30)


@settings(max_examples=40, deadline=None)
@given(short=local_parts, long=local_parts)
def test_email_mask_does_not_reveal_the_local_part_length(short: str, long: str) -> None:
    assert masked([f"{short}@Example.com", f"{long}@example.COM"], "email") == ["****@example.com"] * 2


@settings(max_examples=40, deadline=None)
@given(head=digits, other_head=digits, tail=st.text(st.sampled_from("0123456789"), min_size=4, max_size=4))
def test_last4_mask_does_not_reveal_how_many_digits_precede_the_last_four(
    head: str, other_head: str, tail: str
) -> None:
    first, second = masked([f"+{head}1{tail}", f"{other_head}9 {tail}"], "last4")
    assert first == second == f"****{tail}"


@settings(max_examples=40, deadline=None)
@given(values=st.lists(st.text(max_size=60), min_size=1, max_size=10))
def test_full_mask_is_the_same_for_every_value(values: list[str]) -> None:
    assert set(masked(values, "full")) == {"****"}


def test_protected_file_holds_masks_in_the_original_column_and_type(
    local_workspace: Workspace, enable_at: Callable[..., object]
) -> None:
    enable_at(local_workspace, "users.email", "email")
    enable_at(local_workspace, "users.phone", "last4")
    enable_at(local_workspace, "users.name", "full")
    path = Path(local_workspace.store.full_path("users/date=2026-11-01/part-0.parquet"))
    original = pq.read_table(path)
    local_workspace.protect("users", "2026-11-01")
    protected = pq.read_table(path)
    assert protected.schema.field("email").type == original.schema.field("email").type == pa.string()
    encrypted = protected.column("email__fc_ct").is_valid()
    for column, style in (("email", "email"), ("phone", "last4"), ("name", "full")):
        was = original.column(column).filter(protected.column(f"{column}__fc_ct").is_valid())
        now = protected.column(column).filter(protected.column(f"{column}__fc_ct").is_valid())
        assert len(now) > 0
        assert now.to_pylist() == mask_values(was.combine_chunks(), style).to_pylist()
    assert all(v.startswith("****@") for v in protected.column("email").filter(encrypted).to_pylist())


def _last4_by_regex(values: pa.Array) -> pa.Array:
    """The definition of the last4 mask, written with Arrow's regex kernels (the reference)."""
    hidden, empty = pa.scalar("****", values.type), pa.scalar("", values.type)
    digits = pc.replace_substring_regex(values, r"[^0-9]", "")
    last4 = pc.binary_join_element_wise(hidden, pc.utf8_slice_codeunits(digits, start=-4), empty)
    masked = pc.if_else(pc.greater_equal(pc.utf8_length(digits), 5), last4, hidden)
    result: pa.Array = pc.if_else(pc.is_valid(values), masked, pa.scalar(None, values.type))
    return result


@settings(max_examples=300, deadline=None)
@given(
    values=st.lists(st.one_of(st.none(), st.text(), st.text("0123456789 +-.é٣😀"))),
    head=st.integers(0, 3),
    type_=st.sampled_from([pa.string(), pa.large_string()]),
)
def test_last4_mask_is_the_regex_definition_for_any_text(
    values: list[str | None], head: int, type_: pa.DataType
) -> None:
    array = pa.array(["12345"] * head + values, type_).slice(head)  # a slice: offsets not starting at zero
    result = mask_values(array, "last4")
    result.validate(full=True)
    assert result.equals(_last4_by_regex(array))
