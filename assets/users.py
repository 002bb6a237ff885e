"""Users: the landed daily snapshot of user records, and its protection (e.g. `email`, `phone`)."""

from assets.protection import landed_snapshot, protected_snapshot

DATASET = "users"

users = landed_snapshot(
    DATASET,
    "Daily snapshot of user records (primary key user_id, ingestion time ingested_at), landed by the "
    "upstream ingestion job. PII in top-level string columns such as email and phone.",
)

protected_users = protected_snapshot(
    DATASET,
    "The users snapshot with every enabled attribute encrypted for rows ingested at or after its "
    "enablement: ciphertext and wrapped data-key columns added, a mask in the original column. "
    "Rewritten in place, verified before an atomic replace; a re-run with nothing pending is a no-op.",
)
