"""The daily partitions of the lake: one partition per snapshot date (`date=YYYY-MM-DD`).

FIELDCRYPT_PARTITIONS_START is the first snapshot date of the lake (default 2026-01-01,
before any demo week); FIELDCRYPT_PARTITIONS_END, optional, is the first date *not* in the
set (`make demo` writes both for its week so the UI shows exactly the demo's partitions).
With no end, the newest partition is yesterday (UTC): a day's snapshot is complete once
the day is over, and Dagster has no partition keys after now.
"""

from __future__ import annotations

import os

import dagster as dg

DEFAULT_START = "2026-01-01"

snapshot_partitions = dg.DailyPartitionsDefinition(
    start_date=os.environ.get("FIELDCRYPT_PARTITIONS_START") or DEFAULT_START,
    end_date=os.environ.get("FIELDCRYPT_PARTITIONS_END") or None,
    timezone="UTC",
)
