"""Assets of the fieldcrypt code location: one module per dataset; partitions and checks in their own modules."""

import dagster as dg

from assets.events import events, protected_events
from assets.users import protected_users, users

PROTECTED_ASSETS = [protected_users, protected_events]

defs = dg.Definitions(assets=[users, events, *PROTECTED_ASSETS])

__all__ = ["PROTECTED_ASSETS", "defs", "events", "protected_events", "protected_users", "users"]
