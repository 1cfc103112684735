# ProjectX Pipeline — the two commands: `make dev` runs the platform, `make test` passes the tests.
SHELL := /bin/bash
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed

.PHONY: dev dev-roll test test-quick lint format bench install lock postgres-binaries clean

# Editable install with the dev extra, every package at the version in constraints.txt; redone
# when setup.py or the constraints change.
$(STAMP): setup.py pyproject.toml constraints.txt
	@test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -c constraints.txt -e '.[dev]'
	@touch $(STAMP)

# Re-resolve setup.py's requirements in a scratch venv and pin the result in constraints.txt.
lock:
	rm -rf .lock-venv && $(PYTHON) -m venv .lock-venv
	.lock-venv/bin/pip install --quiet --upgrade pip
	.lock-venv/bin/pip install --quiet '.[dev]'
	{ echo "# Every package of a working install, exact versions: make, the Dockerfile and CI install with"; \
	  echo "# \`pip install -c constraints.txt\`. Refresh after changing setup.py's requirements: \`make lock\`."; \
	  .lock-venv/bin/pip freeze --exclude-editable | grep -v '^projectx'; } > constraints.txt
	rm -rf .lock-venv build *.egg-info

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

# The same with the simulator playing the settings' symbols through their latest quarterly roll
# before now (a past one: the daemon refuses trades stamped more than a day ahead of the
# machine's clock), its clock starting 100 minutes before the roll at 60× (`projectx dev
# --play-roll --speed N` for another speed). The bars are months old, so Dagster's freshness check
# reports them stale.
dev-roll: install
	$(VENV)/bin/projectx dev --play-roll

# Lint and format check (ruff) and the type check (mypy); settings in pyproject.toml. CI runs it.
lint: $(STAMP)
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .
	$(VENV)/bin/mypy

# Rewrite the code in ruff's format and apply its safe fixes.
format: $(STAMP)
	$(VENV)/bin/ruff format .
	$(VENV)/bin/ruff check --fix .

# Benchmarks (never part of the tests). QUICK=1 for the short version.
bench: install
	$(PY) -m bench $(if $(QUICK),--quick,)

clean:
	-$(VENV)/bin/projectx db stop
	rm -rf $(VENV) .projectx .pytest_cache .hypothesis bench/results
