"""What the CLI prints: aligned tables with a summary line for people, JSON lines for machines.

Only ids and counts reach here (reports, campaigns); plaintext is written by `fieldcrypt reveal`
alone, to its own output. A progress bar (tqdm, on stderr) shows multi-partition work when
stdout is a terminal.
"""

from __future__ import annotations

import json
import sys
from collections.abc import Iterable, Iterator, Sequence
from typing import Any, TypeVar

from tqdm import tqdm

from fieldcrypt.lake.tables.base import History

Item = TypeVar("Item")


class Output:
    """Rows of one command: printed as an aligned table (default) or as JSON lines (`--json`)."""

    def __init__(self, as_json: bool, columns: Sequence[str] = ()) -> None:
        self.as_json = as_json
        self.columns = list(columns)
        self._rows: list[dict[str, Any]] = []

    def row(self, values: dict[str, Any]) -> None:
        if self.as_json:
            print(json.dumps(values, sort_keys=False, default=str), flush=True)
        else:
            self._rows.append(values)

    def finish(self, summary: str, totals: dict[str, Any] | None = None) -> None:
        """The table (people) or a last `{"summary": ...}` line (machines)."""
        if self.as_json:
            print(json.dumps({"summary": {"text": summary, **(totals or {})}}, default=str), flush=True)
            return
        if self._rows:
            print(table(self._rows, self.columns or list(self._rows[0])))
        print(summary)

    def progress(self, items: Sequence[Item], what: str) -> Iterator[Item]:
        """`items`, with a progress bar on stderr when there are several and stdout is a terminal."""
        shown = len(items) > 1 and sys.stdout.isatty() and not self.as_json
        yield from tqdm(items, desc=what, unit="partition", disable=not shown, file=sys.stderr, leave=False)


def table(rows: Iterable[dict[str, Any]], columns: Sequence[str]) -> str:
    rows = list(rows)
    cells = [[_cell(row.get(column)) for column in columns] for row in rows]
    widths = [max([len(column), *(len(r[i]) for r in cells)]) for i, column in enumerate(columns)]
    numeric = [all(_is_number(row.get(column)) for row in rows) for column in columns]

    def line(values: Sequence[str]) -> str:
        return "  ".join(
            value.rjust(width) if right else value.ljust(width)
            for value, width, right in zip(values, widths, numeric, strict=True)
        ).rstrip()

    return "\n".join([line(columns), line(["-" * w for w in widths]), *(line(r) for r in cells)])


def count(value: int) -> str:
    return f"{value:,}"


def _cell(value: Any) -> str:
    if value is None:
        return "-"
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, int):
        return f"{value:,}"
    return str(value)


def _is_number(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) or value is None


def history_line(dataset: str, kind: str, history: History) -> str:
    """`status`'s line for a table whose older versions still hold plaintext (counts and names, no value)."""
    return (
        f"{dataset}: {history.versions} older versions of the {kind} table still hold plaintext of "
        f"{', '.join(history.attributes)} ({history.files} unreferenced data files, and the log's statistics)"
        + (", and the rows of erasure requests erased since," if history.erased else "")
        + f" until vacuumed: fieldcrypt purge-history {dataset} --older-than <retention>"
    )
