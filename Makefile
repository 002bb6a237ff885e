# fieldcrypt: `make demo` and `make test` work from a fresh clone (they create .venv).
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed-stamp
DEMO_DIR := demo-workspace

.PHONY: venv demo test lint typecheck pytest bench ui clean

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -e '.[dev]'
	touch $(STAMP)

venv: $(STAMP)

demo: $(STAMP)
	$(PY) -m pipelines.demo --dir $(DEMO_DIR)

lint: $(STAMP)
	$(VENV)/bin/ruff check .

typecheck: $(STAMP)
	$(VENV)/bin/mypy fieldcrypt

pytest: $(STAMP)
	$(VENV)/bin/pytest -q

test: lint typecheck pytest

bench: $(STAMP)
	$(PY) bench/encrypt.py
	$(PY) bench/rotate.py

ui: $(STAMP)
	mkdir -p $(DEMO_DIR)/dagster_home
	cp dagster.yaml $(DEMO_DIR)/dagster_home/dagster.yaml
	DAGSTER_HOME=$(CURDIR)/$(DEMO_DIR)/dagster_home $(VENV)/bin/dagster dev -w workspace.yaml -h 127.0.0.1 -p 3000

clean:
	rm -rf $(DEMO_DIR)
