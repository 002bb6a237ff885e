"""PII discovery (`Workspace.discover`, `fieldcrypt discover`, the Dagster check no_undeclared_pii).

The test lake's `customers` partition plants PII where nobody declared it: an email column, free-text
notes holding emails and phone numbers, a map key `phone`, a map keyed by emails, an IP in a nested
struct, card numbers (half of them Luhn-valid) and IBANs; beside them negatives (UUIDs, timestamps as
text, numbers that fail Luhn, random tokens, tags, a dictionary-encoded country). `email` is the one
attribute the tests enable; its first 200 rows were ingested before enablement.
"""

from __future__ import annotations

import json
import random
import string
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import dagster as dg
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from dagster._serdes import serialize_value
from dagster_support import (
    catalog_fieldcrypt,
    checks,
    make_keystore,
    materialize_partition,
    metadata,
    node,
    past_day,
)

from fieldcrypt import InputError
from fieldcrypt.cli import run
from fieldcrypt.detectors import detectors
from fieldcrypt.discovery import DiscoveryReport
from resources import FieldcryptResource
from tests import discovery_corpus as corpus

ROWS = 400
BEFORE_ENABLEMENT = 200  # rows 0..199 are ingested before the enablement made in the tests
PARTITION = past_day(3).isoformat()
CUSTOMERS = {
    "customers": {
        "path": "customers",
        "partitioning": {"granularity": "daily", "key": "date", "start": "2026-01-01"},
        "ingested_at": "ingested_at",
        "primary_key": "customer_id",
    }
}
UNDECLARED = {
    "contact_email": "email",
    "notes": "email",
    "attrs['phone']": "phone",
    "contacts{keys}": "email",
    "profile.address.ip": "ip_address",
    "card": "card_number",
    "iban": "iban",
}
NEGATIVES = (
    "session_id",
    "created_text",
    "order_ref",
    "token",
    "tags[]",
    "country",
    "attrs['plan']",
    "contacts[*]",
    "profile.nickname",
)


def customers_table(now: datetime) -> pa.Table:
    rng = random.Random(21)
    ids = range(ROWS)
    notes = []
    for i in ids:  # rows i % 5 in (0, 1): an email in the note; i % 5 == 2: a phone number
        planted = corpus.email(rng) if i % 5 < 2 else corpus.phone(rng) if i % 5 == 2 else ""
        notes.append(f"{corpus.sentence(rng, 4)} {planted} {corpus.sentence(rng, 2)}")
    return pa.table(
        {
            "customer_id": pa.array(ids, pa.int64()),
            "email": [None if i % 10 == 0 else corpus.email(rng) for i in ids],
            "contact_email": [corpus.email(rng) for _ in ids],
            "notes": notes,
            "attrs": pa.array(
                [
                    [("plan", rng.choice(("free", "pro"))), *([("phone", corpus.phone(rng))] if i % 2 == 0 else [])]
                    for i in ids
                ],
                pa.map_(pa.string(), pa.string()),
            ),
            "contacts": pa.array([[(corpus.email(rng), "primary")] for _ in ids], pa.map_(pa.string(), pa.string())),
            "profile": pa.array(
                [{"nickname": rng.choice(corpus._WORDS), "address": {"ip": corpus.ip_address(rng)}} for _ in ids],
                pa.struct([("nickname", pa.string()), ("address", pa.struct([("ip", pa.string())]))]),
            ),
            "card": [corpus.card_number(rng, valid=i % 2 == 0) for i in ids],
            "iban": pa.array([corpus.iban(rng) for _ in ids], pa.large_string()),
            "session_id": [str(pa.scalar(rng.randbytes(16), pa.binary(16)).as_py().hex()) for _ in ids],
            "created_text": [(now - timedelta(seconds=rng.randrange(10**7))).isoformat() for _ in ids],
            "order_ref": [corpus.card_number(rng, valid=False) for _ in ids],
            "token": ["".join(rng.choice(string.ascii_letters) for _ in range(20)) for _ in ids],
            "tags": [[rng.choice(corpus._WORDS), rng.choice(corpus._WORDS)] for _ in ids],
            "country": pa.array([rng.choice(("FR", "DE", "US")) for _ in ids]).dictionary_encode(),
            "amount": [rng.random() * 100 for _ in ids],
            "ingested_at": pa.array(
                [now - timedelta(hours=2) if i < BEFORE_ENABLEMENT else now + timedelta(hours=2) for i in ids],
                pa.timestamp("us", tz="UTC"),
            ),
        }
    )


@pytest.fixture
def fieldcrypt(tmp_path: Path) -> FieldcryptResource:
    lake = tmp_path / "lake"
    return catalog_fieldcrypt(
        tmp_path, str(lake), {"provider": "local", "keystore": str(make_keystore(tmp_path))}, CUSTOMERS
    )


def land(fieldcrypt: FieldcryptResource, partition: str, table: pa.Table, row_group_size: int) -> None:
    target = Path(fieldcrypt.config().lake_uri) / "customers" / f"date={partition}" / "part-0.parquet"
    target.parent.mkdir(parents=True)
    pq.write_table(table, target, row_group_size=row_group_size)


@pytest.fixture
def planted(fieldcrypt: FieldcryptResource) -> pa.Table:
    """The customers partition, landed in row groups of 100 rows; returns what it holds."""
    table = customers_table(datetime.now(UTC))
    land(fieldcrypt, PARTITION, table, row_group_size=100)
    return table


@pytest.fixture
def enabled_and_protected(fieldcrypt: FieldcryptResource, planted: pa.Table) -> pa.Table:
    workspace = fieldcrypt.workspace("test")
    workspace.enable("customers.email", "email", acknowledge_irreversible=True)
    workspace.protect("customers", PARTITION)
    return planted


def discover(fieldcrypt: FieldcryptResource, **options: Any) -> DiscoveryReport:
    return fieldcrypt.workspace("test").discover("customers", PARTITION, **options)


def by_column(report: DiscoveryReport) -> dict[str, Any]:
    return {finding.column: finding for finding in report.columns}


def planted_values(table: pa.Table) -> set[str]:
    """Every planted value (and every other text value of six characters or more) of the partition."""
    values: set[str] = set()
    for name in ("email", "contact_email", "notes", "card", "iban", "session_id", "order_ref", "token"):
        values |= {v for v in table[name].to_pylist() if v}
    values |= {v for row in table["attrs"].to_pylist() for _, v in row}
    values |= {k for row in table["contacts"].to_pylist() for k, _ in row}
    values |= {row["address"]["ip"] for row in table["profile"].to_pylist()}
    return {v for v in values if len(v) >= 6}


# -- what discovery finds ------------------------------------------------------------------


def test_undeclared_email_column_is_reported_with_its_share(fieldcrypt: FieldcryptResource, planted: pa.Table) -> None:
    found = by_column(discover(fieldcrypt))["contact_email"]

    assert (found.detector, found.sampled, found.matched, found.share) == ("email", ROWS, ROWS, 1.0)
    assert (found.enabled, found.protected) == (False, False)


def test_map_key_nobody_declared_is_reported_by_its_key(fieldcrypt: FieldcryptResource, planted: pa.Table) -> None:
    report = discover(fieldcrypt)
    columns = by_column(report)

    assert columns["attrs['phone']"].detector == "phone"
    assert columns["attrs['phone']"].sampled == ROWS // 2
    assert columns["attrs['phone']"].share >= 0.95
    assert "attrs['phone']" in {c.column for c in report.undeclared_pii}
    assert columns["attrs['plan']"].detector is None


def test_every_undeclared_pii_column_is_found_with_its_detector(
    fieldcrypt: FieldcryptResource, planted: pa.Table
) -> None:
    report = discover(fieldcrypt)

    assert {c.column: c.detector for c in report.undeclared_pii} == UNDECLARED | {"email": "email"}


def test_free_text_notes_count_the_values_holding_an_email_or_a_phone(
    fieldcrypt: FieldcryptResource, planted: pa.Table
) -> None:
    notes = by_column(discover(fieldcrypt))["notes"]

    assert notes.matches["email"] == ROWS * 2 // 5
    assert notes.matches["phone"] >= ROWS // 5 * 0.95
    assert (notes.detector, notes.share) == ("email", 0.4)


def test_struct_field_at_any_depth_is_sampled(fieldcrypt: FieldcryptResource, planted: pa.Table) -> None:
    ip = by_column(discover(fieldcrypt))["profile.address.ip"]

    assert (ip.detector, ip.matched, ip.value_type) == ("ip_address", ROWS, "string")


def test_card_numbers_are_counted_only_when_their_luhn_digit_is_valid(
    fieldcrypt: FieldcryptResource, planted: pa.Table
) -> None:
    columns = by_column(discover(fieldcrypt))

    assert (columns["card"].detector, columns["card"].matched) == ("card_number", ROWS // 2)
    assert columns["order_ref"].matches["card_number"] == 0


def test_ibans_in_a_large_string_column_are_detected_by_their_check_digits(
    fieldcrypt: FieldcryptResource, planted: pa.Table
) -> None:
    iban = by_column(discover(fieldcrypt))["iban"]

    assert (iban.detector, iban.matched, iban.value_type) == ("iban", ROWS, "large_string")


def test_negatives_match_no_detector(fieldcrypt: FieldcryptResource, planted: pa.Table) -> None:
    columns = by_column(discover(fieldcrypt))

    assert {name: columns[name].detector for name in NEGATIVES} == dict.fromkeys(NEGATIVES)
    assert all(columns[name].sampled == ROWS or name == "tags[]" for name in NEGATIVES)
    assert columns["tags[]"].sampled == 2 * ROWS


def test_map_keyed_by_emails_is_counted_without_naming_a_key(fieldcrypt: FieldcryptResource, planted: pa.Table) -> None:
    report = discover(fieldcrypt)

    assert by_column(report)["contacts{keys}"].matched == ROWS
    assert [c.column for c in report.columns if "@" in c.column] == []
    assert by_column(report)["contacts[*]"].sampled == ROWS  # the values of keys that are not named


def test_enabled_attribute_is_reported_protected_with_its_historical_plaintext(
    fieldcrypt: FieldcryptResource, enabled_and_protected: pa.Table
) -> None:
    report = discover(fieldcrypt)
    email = by_column(report)["email"]

    before = enabled_and_protected["email"].to_pylist()[:BEFORE_ENABLEMENT]
    historical = sum(v is not None for v in before)
    assert (email.enabled, email.protected) == (True, True)
    assert email.historical_plaintext == historical
    assert email.pending == 0
    assert email.protected_sampled == email.sampled - historical
    assert email.matches["email"] == historical  # the masks of protected rows are not matched
    assert "email" not in {c.column for c in report.undeclared_pii}


def test_protection_columns_are_never_scanned(fieldcrypt: FieldcryptResource, enabled_and_protected: pa.Table) -> None:
    report = discover(fieldcrypt)

    assert [c.column for c in report.columns if "__fc_" in c.column] == []


def test_sample_bounds_the_values_per_column_and_the_rows_read(
    fieldcrypt: FieldcryptResource, planted: pa.Table
) -> None:
    report = discover(fieldcrypt, sample_rows=50)

    assert report.rows_read == 100  # one row group of 100 rows filled every column's sample
    assert max(c.sampled for c in report.columns) == 50


def test_a_mostly_null_column_stops_the_read_at_twenty_times_the_sample(fieldcrypt: FieldcryptResource) -> None:
    table = pa.table({"customer_id": range(1_000), "remark": pa.nulls(1_000, pa.string())})
    land(fieldcrypt, PARTITION, table, row_group_size=10)

    report = discover(fieldcrypt, sample_rows=2)

    assert (report.rows_read, by_column(report)["remark"].sampled) == (40, 0)


def test_map_keys_beyond_fifty_are_counted_under_star(fieldcrypt: FieldcryptResource) -> None:
    keys = [f"key_{letter}{other}" for letter in "abc" for other in string.ascii_lowercase[:20]]  # 60 keys
    table = pa.table({"props": pa.array([[(key, "x")] for key in keys], pa.map_(pa.string(), pa.string()))})
    land(fieldcrypt, PARTITION, table, row_group_size=7)

    columns = by_column(discover(fieldcrypt))

    assert len([name for name in columns if name.startswith("props['")]) == 50
    assert columns["props[*]"].sampled == 10


def test_an_enabled_attribute_missing_from_a_file_is_refused_by_name(
    fieldcrypt: FieldcryptResource, planted: pa.Table
) -> None:
    fieldcrypt.workspace("test").enable("customers.profile.nickname", "full", acknowledge_irreversible=True)
    later = past_day(2).isoformat()
    land(fieldcrypt, later, planted.drop_columns(["profile"]), row_group_size=100)

    with pytest.raises(InputError, match="column 'profile' not found"):
        fieldcrypt.workspace("test").discover("customers", later)


def test_named_partition_without_data_is_an_error(fieldcrypt: FieldcryptResource, planted: pa.Table) -> None:
    with pytest.raises(InputError, match="has no data files"):
        fieldcrypt.workspace("test").discover("customers", past_day(4).isoformat())


# -- the command line ------------------------------------------------------------------------


def cli(fieldcrypt: FieldcryptResource, *args: str) -> int:
    return run(["--catalog", fieldcrypt.catalog_path or "", "--workspace", "acme", *args])


def test_cli_discover_reports_the_latest_partition_naming_the_undeclared_columns(
    fieldcrypt: FieldcryptResource, planted: pa.Table, capsys: pytest.CaptureFixture[str]
) -> None:
    assert cli(fieldcrypt, "discover", "customers") == 0

    printed = capsys.readouterr().out
    rows = {line.split()[1]: line for line in printed.splitlines() if line.startswith(PARTITION)}
    assert "PII, not enabled" in rows["contact_email"]
    assert "PII, not enabled" in rows["attrs['phone']"]
    assert "contact_email (email)" in printed.splitlines()[-1]


def test_cli_json_gives_every_detectors_count_per_column(
    fieldcrypt: FieldcryptResource, enabled_and_protected: pa.Table, capsys: pytest.CaptureFixture[str]
) -> None:
    assert cli(fieldcrypt, "discover", "customers", "--partition", PARTITION, "--json") == 0

    lines = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    rows = {row["column"]: row for row in lines[:-1]}
    assert rows["notes"]["matches"]["email"] == ROWS * 2 // 5
    assert (rows["email"]["enabled"], rows["email"]["protected"], rows["email"]["finding"]) == (
        True,
        True,
        "protected; historical plaintext",
    )
    assert lines[-1]["summary"]["undeclared_pii"] == len(UNDECLARED)


def test_cli_named_partition_without_data_fails(
    fieldcrypt: FieldcryptResource, planted: pa.Table, capsys: pytest.CaptureFixture[str]
) -> None:
    from fieldcrypt.cli import main

    empty = past_day(4).isoformat()
    with pytest.raises(SystemExit) as exit_info:
        main(["--catalog", fieldcrypt.catalog_path or "", "discover", "customers", "--partition", empty])

    assert exit_info.value.code == 2
    assert "has no data files" in capsys.readouterr().err


# -- Dagster ---------------------------------------------------------------------------------


def test_dagster_check_warns_on_undeclared_pii_without_failing_the_partition(
    fieldcrypt: FieldcryptResource, planted: pa.Table
) -> None:
    fieldcrypt.workspace("test").enable("customers.email", "email", acknowledge_irreversible=True)

    result = materialize_partition(fieldcrypt, PARTITION)

    assert result.success
    assert len(result.asset_materializations_for_node(node("protected_customers"))) == 1
    check = checks(result, "protected_customers")["no_undeclared_pii"]
    assert (check.passed, check.severity) == (False, dg.AssetCheckSeverity.WARN)
    listed = {u["column"]: u["detector"] for u in check.metadata["undeclared_pii"].value}
    assert listed == UNDECLARED
    assert check.metadata["historical_plaintext"].value == {"email": BEFORE_ENABLEMENT - BEFORE_ENABLEMENT // 10}
    assert all(e.passed for e in result.get_asset_check_evaluations() if e.check_name != "no_undeclared_pii")
    materialized = metadata(result, "protected_customers")  # the partition's own findings, in a run of many too
    assert materialized["no_undeclared_pii.undeclared_pii_columns"] == len(UNDECLARED)


# -- no value anywhere -------------------------------------------------------------------------


def test_nothing_printed_or_recorded_holds_a_value(
    fieldcrypt: FieldcryptResource, planted: pa.Table, capsys: pytest.CaptureFixture[str]
) -> None:
    fieldcrypt.workspace("test").enable("customers.email", "email", acknowledge_irreversible=True)
    instance = dg.DagsterInstance.ephemeral()

    assert cli(fieldcrypt, "discover", "customers") == 0
    assert cli(fieldcrypt, "--json", "discover", "customers") == 0
    result = materialize_partition(fieldcrypt, PARTITION, instance=instance)

    printed = capsys.readouterr()
    recorded = "\n".join(serialize_value(entry) for entry in instance.all_logs(result.run_id))
    assert "contact_email" in printed.out and "no_undeclared_pii" in recorded
    values = planted_values(planted)
    assert len(values) > 3_000
    for text in (printed.out, printed.err, recorded):
        assert [v for v in values if v in text] == []


# -- the detectors ---------------------------------------------------------------------------


def test_detectors_precision_and_recall_on_a_generated_corpus_are_at_least_095() -> None:
    items = corpus.corpus(seed=99, per_kind=1_000, negatives=8_000)
    measured = {}
    for detector in detectors():
        hits = [(label, detector.matches(text)) for text, label in items]
        true_positives = sum(label == detector.name and hit for label, hit in hits)
        precision = true_positives / max(1, sum(hit for _, hit in hits))
        recall = true_positives / sum(label == detector.name for label, _ in hits)
        measured[detector.name] = (round(precision, 4), round(recall, 4))
    print(f"detector (precision, recall) on {len(items)} values: {measured}")

    assert all(precision >= 0.95 and recall >= 0.95 for precision, recall in measured.values()), measured


def test_an_unknown_phone_region_is_refused_by_name() -> None:
    with pytest.raises(InputError, match="XX"):
        detectors(("FR", "XX"))
