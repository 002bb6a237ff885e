"""The lake: its store and compare-and-swap, what is under a dataset, Hadoop checksums, summary files,
Parquet reading and writing, and the audit log.
"""
