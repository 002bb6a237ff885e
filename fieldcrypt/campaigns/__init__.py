"""Campaigns over every partition: master-key rotation and blind-index re-index."""
