"""Table formats (Delta Lake, Apache Iceberg) whose own log says which files make a dataset."""
