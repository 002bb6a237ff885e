"""PII discovery: which text columns of one partition hold emails, phone numbers, card numbers, IBANs or IPs.

Enablement protects the attributes an operator names; discovery shows where else personal
data sits (an undeclared column, a free-text note, a map key nobody knew) and how much of an
enabled attribute is still historical plaintext, before anyone decides what to enable or to
encrypt in history.

What is sampled, per *column* (an attribute path, docs/FORMAT.md section 1, extended for
what enablement cannot name): every text leaf of the partition's files, i.e. a text column,
a struct field at any depth (`context.device.email`), a list's elements (`tags[]`,
`items[].email`), a map's values per key (`attrs['phone']`), a map's keys themselves
(`attrs{keys}`: a map keyed by email addresses) and the values of maps with more keys than
are named (`attrs[*]`). The `__fc_*` columns (ciphertext, wrapped keys, blind indexes) are
never read as text. The files are streamed row group by row group with only the text
columns projected, until every column has `sample` non-null values or `sample *
ROWS_PER_SAMPLE` rows were read, so memory and time stay bounded whatever the partition size.

The detectors (fieldcrypt.detectors) run on the plaintext values only: a protected row of
an enabled attribute holds a mask, counted as protected, never matched. The historical
plaintext of an enabled attribute is counted over the whole partition, the way protection
selects rows (fieldcrypt.policy.select, through fieldcrypt.engine.protect.scan_file).

Nothing here keeps or returns a value: findings are names and counts. A map key is named in
a column only if it is a valid attribute-path key and no detector matches it; other keys are
counted under `[*]`, so a map keyed by emails does not put an email in a report.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field

import pyarrow as pa
import pyarrow.compute as pc

from fieldcrypt.detectors import DEFAULT_PHONE_REGIONS, Detector, detectors
from fieldcrypt.engine.protect import scan_file
from fieldcrypt.errors import InputError, PolicyError
from fieldcrypt.format.attribute_path import AttributePath
from fieldcrypt.format.columns import as_text, check_attribute_type, is_text_type, read_path
from fieldcrypt.lake.parquet_io import open_parquet, row_groups
from fieldcrypt.lake.store import LakeStore
from fieldcrypt.policy.policy import AttributePolicy, DatasetSpec
from fieldcrypt.policy.select import declared_attributes, existing_ciphertext

DEFAULT_SAMPLE = 10_000  # non-null values per column
ROWS_PER_SAMPLE = 20  # at most sample * this many rows are read (a mostly-null column stops the read here)
DEFAULT_MIN_SHARE = 0.005  # an undeclared column is PII when at least this share of its sample matches
MAX_TEXT_CHARS = 4_096  # of each value, searched (a JSON blob's first 4 KiB)
MAX_NAMED_MAP_KEYS = 50  # per map column; the values of further keys are counted under `[*]`
PROTECTION_MARK = "__fc_"  # in the names of the columns fieldcrypt writes


@dataclass
class ColumnFinding:
    """What discovery found in one column of a partition; names and counts only."""

    column: str
    value_type: str
    enabled: bool = False
    protected: bool = False  # the attribute's cells are protected in some file (metadata or ciphertext)
    sampled: int = 0  # non-null values sampled
    protected_sampled: int = 0  # of those, protected (masks: not matched)
    matches: dict[str, int] = field(default_factory=dict)  # detector -> sampled plaintext values matching
    historical_plaintext: int | None = None  # enabled attributes: over the whole partition
    pending: int | None = None  # enabled attributes: plaintext rows at or after enablement, not protected yet

    @property
    def detector(self) -> str | None:
        """The detector matching most values; None when none matched."""
        found = [(count, name) for name, count in self.matches.items() if count]
        return max(found, key=lambda pair: pair[0])[1] if found else None

    @property
    def matched(self) -> int:
        return self.matches.get(self.detector, 0) if self.detector else 0

    @property
    def share(self) -> float:
        """Share of the sampled non-null values that the top detector matched."""
        return self.matched / self.sampled if self.sampled else 0.0


@dataclass
class DiscoveryReport:
    """Discovery of one partition: per column, findings; `undeclared_pii` are those not enabled."""

    dataset: str
    partition: str | None
    path: str
    sample: int
    min_share: float
    files: int = 0
    rows_read: int = 0
    columns: list[ColumnFinding] = field(default_factory=list)

    @property
    def undeclared_pii(self) -> list[ColumnFinding]:
        """Columns holding PII (a share at least `min_share`) that are not enabled."""
        return [c for c in self.columns if not c.enabled and c.matched and c.share >= self.min_share]


def discover_files(
    store: LakeStore,
    files: Sequence[str],
    dataset: DatasetSpec,
    attributes: Sequence[AttributePolicy],
    *,
    partition: str | None,
    where: str,
    sample: int = DEFAULT_SAMPLE,
    phone_regions: Sequence[str] = DEFAULT_PHONE_REGIONS,
    min_share: float = DEFAULT_MIN_SHARE,
) -> DiscoveryReport:
    """Sample the text columns of `files` (one partition) and run the detectors; read only."""
    if sample < 1:
        raise InputError(f"discovery sample size must be at least 1 value per column, got {sample}")
    if not 0 <= min_share <= 1:
        raise InputError(f"discovery minimum share must be between 0 and 1, got {min_share}")
    report = DiscoveryReport(dataset.name, partition, where, sample, min_share, files=len(files))
    sampler = _Sampler(sample, detectors(phone_regions), {a.path: a for a in attributes})
    for rel in files:
        if sampler.full() or report.rows_read >= sample * ROWS_PER_SAMPLE:
            break
        _sample_file(store, rel, dataset, sampler, report)
    for attribute in attributes:  # exact counts, the way a protection run selects rows
        finding = sampler.finding(attribute.path, "string")
        finding.historical_plaintext, finding.pending = 0, 0
    for rel in files if attributes else ():
        scanned = scan_file(store, rel, dataset, attributes)
        for attribute in attributes:
            counts = scanned.attributes[attribute.name]
            finding = sampler.findings[attribute.path]
            finding.historical_plaintext = (finding.historical_plaintext or 0) + counts.historical_plaintext
            finding.pending = (finding.pending or 0) + counts.pending
            finding.protected = finding.protected or counts.already_protected > 0
    report.columns = [sampler.findings[name] for name in sorted(sampler.findings)]
    return report


def _sample_file(store: LakeStore, rel: str, dataset: DatasetSpec, sampler: _Sampler, report: DiscoveryReport) -> None:
    at = store.display(rel)
    with open_parquet(store, rel) as parquet:
        schema = parquet.schema_arrow
        declared = {name.partition(".")[2] for name in declared_attributes(schema, at)}
        for path in declared:  # a file that says an attribute is protected: its column holds masks
            sampler.mark_protected(path)
        enabled = [a for a in sampler.enabled.values() if a.column in schema.names]
        for attribute in enabled:  # a named error for a missing field or a wrong type, before any row is read
            check_attribute_type(schema, attribute.path, attribute.name, at)
        scanned = [
            name for name in schema.names if PROTECTION_MARK not in name and _holds_text(schema.field(name).type)
        ]
        wanted = set(scanned) | {a.ciphertext_column for a in enabled}
        projection = [name for name in schema.names if name in wanted]
        if not scanned:
            return
        for index, batch in enumerate(row_groups(parquet, at, columns=projection)):
            report.rows_read += batch.num_rows
            batch_at = f"{at} row group {index}"
            for attribute in enabled:
                values = read_path(batch, attribute.path, batch_at)
                protected = pc.is_valid(existing_ciphertext(batch, attribute))
                sampler.add_enabled(attribute.path, values, protected)
            for name in scanned:
                for path, values in _text_leaves(batch.column(name), name, sampler.named_keys):
                    if path in sampler.enabled:
                        continue  # read above, row by row with its protection state
                    if path in declared:
                        sampler.add_protected(path, values)
                    else:
                        sampler.add(path, values)
            if sampler.full() or report.rows_read >= report.sample * ROWS_PER_SAMPLE:
                return


class _Sampler:
    """Per column: how many values were sampled, and how many each detector matched."""

    def __init__(self, sample: int, chosen: Sequence[Detector], enabled: dict[str, AttributePolicy]) -> None:
        self.sample = sample
        self.detectors = chosen
        self.enabled = enabled
        self.findings: dict[str, ColumnFinding] = {}
        self.named_keys: dict[str, set[str]] = {}  # per map column, the keys given a column of their own

    def finding(self, column: str, value_type: str) -> ColumnFinding:
        if column not in self.findings:
            self.findings[column] = ColumnFinding(
                column, value_type, enabled=column in self.enabled, matches={d.name: 0 for d in self.detectors}
            )
        return self.findings[column]

    def full(self) -> bool:
        return bool(self.findings) and all(f.sampled >= self.sample for f in self.findings.values())

    def mark_protected(self, column: str) -> None:
        if column in self.findings:
            self.findings[column].protected = True
        else:
            self.finding(column, "string").protected = True

    def add(self, column: str, values: pa.Array) -> None:
        finding = self.finding(column, str(values.type))
        plaintext = self._quota(finding, values.drop_null())
        finding.sampled += len(plaintext)
        self._match(finding, plaintext)

    def add_protected(self, column: str, values: pa.Array) -> None:
        finding = self.finding(column, str(values.type))
        masks = self._quota(finding, values.drop_null())
        finding.sampled += len(masks)
        finding.protected_sampled += len(masks)

    def add_enabled(self, column: str, values: pa.Array, protected: pa.Array) -> None:
        """Values of an enabled attribute, one per row; a protected row's value is its mask, not matched."""
        finding = self.finding(column, str(values.type))
        present = pc.is_valid(values)
        kept = self._quota(finding, pc.indices_nonzero(present))
        finding.sampled += len(kept)
        is_protected = pc.take(protected, kept)
        finding.protected_sampled += is_protected.true_count
        finding.protected = finding.protected or is_protected.true_count > 0
        self._match(finding, pc.take(values, pc.filter(kept, pc.invert(is_protected))))

    def _quota(self, finding: ColumnFinding, values: pa.Array) -> pa.Array:
        return values.slice(0, max(0, self.sample - finding.sampled))

    def _match(self, finding: ColumnFinding, values: pa.Array) -> None:
        if not len(values):
            return
        values = pc.utf8_slice_codeunits(values, 0, MAX_TEXT_CHARS)  # time per value stays bounded too
        for detector in self.detectors:
            candidates = values.filter(pc.match_substring_regex(values, detector.prefilter))
            finding.matches[detector.name] += sum(1 for text in candidates.to_pylist() if detector.matches(text))


def _holds_text(value_type: pa.DataType) -> bool:
    """Whether a column type has a text leaf anywhere (struct fields, list elements, map keys or values)."""
    if is_text_type(value_type):
        return True
    if pa.types.is_struct(value_type):
        return any(_holds_text(value_type.field(i).type) for i in range(value_type.num_fields))
    if pa.types.is_map(value_type):
        return _holds_text(value_type.key_type) or _holds_text(value_type.item_type)
    if _is_list(value_type):
        return _holds_text(value_type.value_type)
    return False


def _is_list(value_type: pa.DataType) -> bool:
    return bool(
        pa.types.is_list(value_type)
        or pa.types.is_large_list(value_type)
        or pa.types.is_fixed_size_list(value_type)
        or pa.types.is_list_view(value_type)
        or pa.types.is_large_list_view(value_type)
    )


def _text_leaves(array: pa.Array, path: str, named_keys: dict[str, set[str]]) -> Iterator[tuple[str, pa.Array]]:
    """(column, text values) of every text leaf under `array`; a null parent gives no value.
    `named_keys` holds, per map column, the keys named so far (updated here)."""
    value_type = array.type
    if is_text_type(value_type):
        yield path, as_text(array)
    elif pa.types.is_struct(value_type):
        for i in range(value_type.num_fields):
            child = value_type.field(i)
            if _holds_text(child.type):
                yield from _text_leaves(pc.struct_field(array, [i]), f"{path}.{child.name}", named_keys)
    elif _is_list(value_type):
        if _holds_text(value_type.value_type):
            yield from _text_leaves(array.flatten(), f"{path}[]", named_keys)
    elif pa.types.is_map(value_type):
        yield from _map_leaves(array, path, named_keys)


def _map_leaves(array: pa.MapArray, path: str, named_keys: dict[str, set[str]]) -> Iterator[tuple[str, pa.Array]]:
    """A map's keys (`path{keys}`), and its values: per named key (`path['key']`) when they are text, else `path[*]`."""
    offsets = array.offsets
    start, end = offsets[0].as_py(), offsets[-1].as_py()
    keys = array.keys.slice(start, end - start)  # the child arrays are not sliced with the map
    items = array.items.slice(start, end - start)
    if _holds_text(keys.type):
        yield from _text_leaves(keys, f"{path}{{keys}}", named_keys)
    if not _holds_text(items.type):
        return
    if not is_text_type(items.type) or not is_text_type(keys.type):
        yield from _text_leaves(items, f"{path}[*]", named_keys)
        return
    keys, items = as_text(keys), as_text(items)
    known = named_keys.setdefault(path, set())
    named: list[str] = []
    for key in pc.unique(keys).drop_null().to_pylist():
        if key in known:
            named.append(key)
        elif len(known) < MAX_NAMED_MAP_KEYS and _nameable(key):
            known.add(key)
            named.append(key)
    is_named = pc.is_in(keys, value_set=pa.array(named, keys.type)) if named else None
    for key in named:
        yield f"{path}['{key}']", items.filter(pc.fill_null(pc.equal(keys, pa.scalar(key, keys.type)), False))
    rest = items if is_named is None else items.filter(pc.invert(pc.fill_null(is_named, False)))
    if len(rest):
        yield f"{path}[*]", rest


_KEY_DETECTORS = detectors(())  # international phone forms only: a key name is never a national number


def _nameable(key: str) -> bool:
    """A key printed as a column name: a valid attribute-path key with few digits that no detector matches
    (a key with six digits or more is more likely an id or a phone number than a property name)."""
    if len(key) > 64 or sum(char.isdigit() for char in key) >= 6:
        return False
    try:
        AttributePath.parse(f"m['{key}']")
    except PolicyError:
        return False
    return not any(detector.matches(key) for detector in _KEY_DETECTORS)
