"""Campaigns over every partition: master-key rotation, blind-index re-index, erasure requests."""
