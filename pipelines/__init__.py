"""Jobs, schedules and the assembled `Definitions` of the fieldcrypt code location, and `make demo`."""
