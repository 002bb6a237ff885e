"""The keys file of `fieldcrypt erase`: which primary keys to forget, read strictly.

Two forms (docs/OPERATIONS.md, "Erasure"):
- one key per line, for a dataset whose primary key is one column (a file not ending in `.csv`):
  surrounding spaces are removed; an empty line is refused (one empty line at the very end, a
  final newline, is not a line);
- CSV with a header row naming the primary-key columns (any order), for a composite key, and
  for any file ending in `.csv`: every row has one non-empty field per column.

Every key must be a value of its column's type (`abc` is no int64 user id). A bad line is an
InputError naming the file, the line and the column, never the value (a key names a person);
nothing is skipped. Repeated keys count once.
"""

from __future__ import annotations

import csv
import io
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import pyarrow as pa

from fieldcrypt.errors import InputError
from fieldcrypt.format.columns import is_text_type, row_key_bytes


@dataclass(frozen=True)
class KeysFile:
    """The keys of a keys file, typed like the dataset's key columns; `lines`: keys read (repeats included)."""

    canonical: pa.Array  # canonical row keys (docs/FORMAT.md section 3), one per distinct key
    components: dict[str, pa.Array]  # per key column, the distinct keys' values, typed like the column
    lines: int

    def __repr__(self) -> str:
        return f"KeysFile({len(self.canonical)} keys)"


def read_keys_file(path: Path, primary_key: Sequence[str], key_types: dict[str, pa.DataType]) -> KeysFile:
    """The keys in `path` for a dataset keyed by `primary_key` (`key_types`: each column's Arrow type)."""
    if not primary_key:
        raise InputError("the dataset declares no primary key: its rows cannot be named for erasure")
    try:
        text = path.read_bytes().decode("utf-8")
    except FileNotFoundError:
        raise InputError(f"keys file {path} does not exist") from None
    except UnicodeDecodeError as exc:
        raise InputError(f"keys file {path} is not UTF-8 text (byte {exc.start})") from None
    if text.startswith("\ufeff"):
        text = text[1:]
    if path.suffix.lower() == ".csv" or len(primary_key) > 1:
        rows = _csv_rows(text, path, primary_key)
    else:
        rows = _lines(text, path)
    if not rows:
        raise InputError(f"keys file {path} holds no key")
    columns: dict[str, list[str]] = {column: [] for column in primary_key}
    numbers: list[int] = []
    for number, values in rows:
        numbers.append(number)
        for column, value in zip(primary_key, values, strict=True):
            columns[column].append(value)
    typed = {column: _typed(values, numbers, column, key_types[column], path) for column, values in columns.items()}
    batch = pa.RecordBatch.from_pydict(typed)
    canonical = row_key_bytes(batch, list(primary_key), str(path)).cast(pa.binary())
    # Distinct keys, first occurrence kept (a repeat is the same person twice, not an error).
    seen: dict[bytes, int] = {}
    for index, key in enumerate(canonical.to_pylist()):
        seen.setdefault(key, index)
    take = pa.array(sorted(seen.values()), pa.int64())
    return KeysFile(canonical.take(take), {c: typed[c].take(take) for c in primary_key}, len(rows))


def _lines(text: str, path: Path) -> list[tuple[int, tuple[str, ...]]]:
    lines = text.split("\n")
    if lines and lines[-1] == "":
        lines.pop()  # the final newline
    rows: list[tuple[int, tuple[str, ...]]] = []
    for number, line in enumerate(lines, start=1):
        key = line.strip()
        if not key:
            raise InputError(f"keys file {path} line {number} is empty (one key per line, no blank lines)")
        rows.append((number, (key,)))
    return rows


def _csv_rows(text: str, path: Path, primary_key: Sequence[str]) -> list[tuple[int, tuple[str, ...]]]:
    reader = csv.reader(io.StringIO(text, newline=""))
    try:
        header = next(reader)
    except StopIteration:
        raise InputError(
            f"keys file {path} is empty; a CSV keys file starts with a header naming {', '.join(primary_key)}"
        ) from None
    header = [name.strip() for name in header]
    missing = [c for c in primary_key if c not in header]
    unknown = [c for c in header if c not in primary_key]
    repeated = sorted({c for c in header if header.count(c) > 1})
    if missing or unknown or repeated:
        problems = [
            *([f"lacks {', '.join(missing)}"] if missing else []),
            *([f"names {', '.join(unknown)}, not a primary-key column"] if unknown else []),
            *([f"repeats {', '.join(repeated)}"] if repeated else []),
        ]
        raise InputError(
            f"keys file {path}: its header (line 1) {'; '.join(problems)}; it must name the primary key "
            f"({', '.join(primary_key)}) once each"
        )
    order = [header.index(c) for c in primary_key]
    rows: list[tuple[int, tuple[str, ...]]] = []
    try:
        for fields in reader:
            number = reader.line_num
            if len(fields) != len(header):
                raise InputError(
                    f"keys file {path} line {number} has {len(fields)} fields; the header names {len(header)}"
                )
            values = tuple(fields[i].strip() for i in order)
            empty = [c for c, v in zip(primary_key, values, strict=True) if not v]
            if empty:
                raise InputError(f"keys file {path} line {number}: {', '.join(empty)} is empty")
            rows.append((number, values))
    except csv.Error as exc:
        raise InputError(f"keys file {path} line {reader.line_num} is not valid CSV ({exc})") from None
    return rows


def _typed(values: list[str], numbers: list[int], column: str, key_type: pa.DataType, path: Path) -> pa.Array:
    """The text values as the key column's type; a named error (file, line, column) for one that is not."""
    if is_text_type(key_type) or (pa.types.is_dictionary(key_type) and is_text_type(key_type.value_type)):
        return pa.array(values, pa.string())
    if not pa.types.is_integer(key_type):
        raise InputError(f"primary-key column {column} is {key_type}; keys of it cannot be read from a file")
    text = pa.array(values, pa.string())
    try:
        return text.cast(key_type)
    except (pa.ArrowInvalid, pa.ArrowNotImplementedError):
        pass
    for number, value in zip(numbers, values, strict=True):
        try:
            pa.array([value], pa.string()).cast(key_type)
        except (pa.ArrowInvalid, pa.ArrowNotImplementedError):
            raise InputError(
                f"keys file {path} line {number}: the {column} given is not of type {key_type} (the type of the "
                f"primary-key column {column})"
            ) from None
    raise AssertionError("unreachable")
