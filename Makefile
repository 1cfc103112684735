# ProjectX Pipeline — the two commands: `make dev` runs the platform, `make test` passes the tests.
SHELL := /bin/bash
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed

.PHONY: dev test test-quick bench install postgres-binaries clean

# Editable install with the dev extra; redone when setup.py changes.
$(STAMP): setup.py
	@test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -e '.[dev]'
	@touch $(STAMP)

install: $(STAMP) postgres-binaries

# PostgreSQL server binaries for the local/ephemeral database (skipped when DATABASE_URL or
# PROJECTX_TEST_DATABASE_URL points at a server). As root on Debian/Ubuntu, install them.
postgres-binaries:
	@if [ -n "$$DATABASE_URL$$PROJECTX_TEST_DATABASE_URL" ] || command -v initdb >/dev/null 2>&1 \
	    || ls /usr/lib/postgresql/*/bin/initdb >/dev/null 2>&1; then exit 0; fi; \
	if [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then \
	    echo "installing PostgreSQL server binaries (apt-get install postgresql)"; \
	    apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq postgresql >/dev/null; \
	else \
	    echo "no PostgreSQL server binaries: install them (apt-get install postgresql) or set DATABASE_URL"; exit 2; \
	fi

# Starts an ephemeral database (or uses PROJECTX_TEST_DATABASE_URL), runs every test, stops it.
test: install
	$(PY) -m pytest projectx_pipeline_tests

# The same minus the scenarios marked slow (a developer's quick loop; CI runs `make test`).
test-quick: install
	$(PY) -m pytest projectx_pipeline_tests -m "not slow"

# Everything: local database (unless DATABASE_URL), migrations, simulator (unless credentials),
# ingestion daemon, Dagster webserver (127.0.0.1:3000) and daemon. Ctrl-C stops it all.
dev: install
	$(VENV)/bin/projectx dev

# Benchmarks (never part of the tests). QUICK=1 for the short version.
bench: install
	$(PY) -m bench $(if $(QUICK),--quick,)

clean:
	-$(VENV)/bin/projectx db stop
	rm -rf $(VENV) .projectx .pytest_cache .hypothesis bench/results
