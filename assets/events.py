"""Events: the landed daily snapshot of user events, and its protection (PII inside the `properties` struct)."""

from assets.protection import landed_snapshot, protected_snapshot

DATASET = "events"

events = landed_snapshot(
    DATASET,
    "Daily snapshot of user events (primary key event_id, ingestion time ingested_at), landed by the "
    "upstream ingestion job. PII sits inside the struct column properties (properties.email, properties.phone).",
)

protected_events = protected_snapshot(
    DATASET,
    "The events snapshot with every enabled attribute (struct fields such as properties.email) encrypted "
    "for rows ingested at or after its enablement; the mask replaces the field inside the struct. "
    "Rewritten in place, verified before an atomic replace; a re-run with nothing pending is a no-op.",
)
