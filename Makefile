# fieldcrypt: `make demo` and `make test` work from a fresh clone (they create .venv).
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed-stamp
DEMO_DIR := demo-workspace
UI_PORT ?= 3000
# Concurrent KMS-calling steps of the demo workspace (its `kms_demo` pool; see dagster_home/dagster.yaml).
KMS_POOL_LIMIT ?= 4

DIST_STAMP := $(VENV)/.installed-distributed-stamp
BROWSER_STAMP := $(VENV)/.installed-browser-stamp

.PHONY: venv demo test lint typecheck pytest pytest-python-kernel pytest-spark pytest-distributed pytest-browser sanitize bench bench-scale bench-erase bench-tables ui clean

# setup.py builds the native cell kernel (fieldcrypt/_native.c) when gcc and the OpenSSL headers exist.
$(STAMP): pyproject.toml setup.py fieldcrypt/_native.c
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -e '.[dev]'
	touch $(STAMP)

venv: $(STAMP)

demo: $(STAMP)
	$(PY) -m demo.run --dir $(DEMO_DIR)

lint: $(STAMP)
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check fieldcrypt assets pipelines resources demo tests bench

# The core, the Dagster layer generated from the catalog, and the demo: all strict.
typecheck: $(STAMP)
	$(VENV)/bin/mypy fieldcrypt assets pipelines resources demo

pytest: $(STAMP)
	$(VENV)/bin/pytest -q

# The reference kernel on the end-to-end paths (the differential tests run both kernels in every run).
pytest-python-kernel: $(STAMP)
	FIELDCRYPT_KERNEL=python $(VENV)/bin/pytest -q -p no:cacheprovider \
		tests/test_protect.py tests/test_reveal.py tests/test_tamper.py tests/test_verify_partition.py

# Real Spark (pyspark from the dev extra, Java 17 on the machine) writes, reads back and compacts a protected
# lake (tests/test_spark_lake.py, marked `spark`; about a minute on 2 cores, one local[2] session).
pytest-spark: $(STAMP)
	$(VENV)/bin/pytest -q -p no:cacheprovider -m spark tests/test_spark_lake.py

# Multi-worker tests (tests/test_distributed.py): PostgreSQL + Redis + two Celery workers, started by the
# tests' fixtures on loopback; needs the `distributed` extra and Debian's postgresql and redis-server (.ci/run).
$(DIST_STAMP): $(STAMP)
	$(PY) -m pip install --quiet -e '.[dev,distributed]'
	touch $(DIST_STAMP)

pytest-distributed: $(DIST_STAMP)
	$(VENV)/bin/pytest -q -p no:cacheprovider -m distributed tests/test_distributed.py tests/test_deploy.py

# The runbook's click paths in a real browser (tests/test_ui_*.py, marked `browser`): `dagster dev` on loopback,
# Debian's chromium (apt-get install chromium; /usr/bin/chromium) driven by Playwright from the `browser` extra.
# `playwright install` (its own browser download) is never run. About 80 s on 2 cores.
$(BROWSER_STAMP): $(STAMP)
	$(PY) -m pip install --quiet -e '.[dev,browser]'
	touch $(BROWSER_STAMP)

pytest-browser: $(BROWSER_STAMP)
	$(VENV)/bin/pytest -q -p no:cacheprovider -m browser tests/test_ui_rotation_backfill.py

# The native kernel's tests with the extension built under AddressSanitizer + UBSan (see .ci/sanitize).
sanitize: $(STAMP)
	PY=$(PY) .ci/sanitize

test: lint typecheck pytest

bench: $(STAMP)
	PYTHONPATH=$(CURDIR) $(PY) bench/encrypt.py
	PYTHONPATH=$(CURDIR) $(PY) bench/rotate.py
	PYTHONPATH=$(CURDIR) $(PY) bench/layout.py
	PYTHONPATH=$(CURDIR) $(PY) bench/dispatch.py

# Erasure (issue 21): 1,000 keys from 1,000 small users partitions; set-up ~45 s, erasure ~25 s (bench/erase.py).
bench-erase: $(STAMP)
	PYTHONPATH=$(CURDIR) $(PY) bench/erase.py
	PYTHONPATH=$(CURDIR) $(PY) bench/erase.py --requests-on-file 0,100,2000

# Tables (issue 19): the same 200k users rows as a Hive folder, a Delta and an Iceberg table; protect, verify, rotate
# and purge-history of each, the table/hive ratios and the cost of the table commits (bench/tables.py; ~1 minute).
bench-tables: $(STAMP)
	PYTHONPATH=$(CURDIR) $(PY) bench/tables.py

# Completion scan and rotation driver over 1,000 and 10,000 small partitions (local and moto S3), the
# runs a 1,000-partition rotation backfill launches, and a whole rotation by the driver sensor over 1,000
# (end to end, runs in process) and 10,000 partitions (tick and core rotation) (bench/scale.py; several minutes).
bench-scale: $(STAMP)
	PYTHONPATH=$(CURDIR) $(PY) bench/scale.py --partitions 1000 10000 --s3-partitions 1000 --backfill 1000 --driver 1000 10000

# dagster dev on loopback with a persistent instance under the project (scripts/dagster_ui.py: Ctrl-C or SIGTERM
# stops it and every process it started); after `make demo` it opens the
# demo's lake, key and runs (demo-workspace/dagster.env), otherwise the catalog's (fieldcrypt.yaml) defaults.
ui: $(STAMP)
	mkdir -p $(DEMO_DIR)/dagster_home
	cp dagster_home/dagster.yaml $(DEMO_DIR)/dagster_home/dagster.yaml
	set -a; if [ -f $(DEMO_DIR)/dagster.env ]; then . ./$(DEMO_DIR)/dagster.env; fi; set +a; \
	export DAGSTER_HOME=$(CURDIR)/$(DEMO_DIR)/dagster_home; \
	$(VENV)/bin/dagster instance concurrency set kms_demo $(KMS_POOL_LIMIT) && \
	exec $(PY) scripts/dagster_ui.py -w workspace.yaml -h 127.0.0.1 -p $(UI_PORT)

clean:
	rm -rf $(DEMO_DIR)
