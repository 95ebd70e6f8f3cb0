# Two commands on a fresh machine: `make demo` and `make test`. Both create .venv and install.
PY ?= python3.11
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
# Azurite (Azure Storage's emulator, npm) for the abfs:// tests, kept inside the venv.
AZURITE := $(VENV)/node/node_modules/.bin/azurite-blob

.PHONY: install browser system-deps test demo stress bench lint clean

$(BIN)/python:
	$(PY) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip uv

# Reinstall when the project's dependency list changes.
$(STAMP): pyproject.toml | $(BIN)/python
	$(BIN)/uv pip install --python $(BIN)/python -e '.[ray,gcs,azure,jobs,test]'
	touch $(STAMP)

$(AZURITE): | $(BIN)/python
	@command -v npm >/dev/null 2>&1 || { \
	  if [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then \
	    apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends nodejs npm >/dev/null; \
	  else echo "npm is missing: install nodejs and npm for the Azure tests (azurite)" >&2; exit 1; fi; }
	mkdir -p $(VENV)/node
	npm install --prefix $(VENV)/node --no-audit --no-fund --silent azurite@3.35.0
	touch $(AZURITE)

# The browser test drives Debian's chromium (playwright cannot download browsers here).
# Installed when missing and we are root; otherwise that one test skips and says why.
browser:
	@command -v chromium >/dev/null 2>&1 || { \
	  if [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then \
	    apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium >/dev/null; \
	  else echo "chromium is missing and this is not root: tests/test_browser.py will skip"; fi; }

# Debian packages the tests use: postgresql (the daemon end-to-end test runs on a Postgres
# instance too; the test starts its own server with initdb/pg_ctl on a free port).
system-deps:
	@if ls /usr/lib/postgresql/*/bin/pg_ctl >/dev/null 2>&1 || command -v pg_ctl >/dev/null 2>&1; then :; \
	elif [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then \
		apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends postgresql; \
	else echo "install Debian's postgresql (pg_ctl, initdb) for the Postgres tests: apt-get install postgresql" >&2; exit 1; fi

install: system-deps $(STAMP) $(AZURITE) browser

# Two pytest sessions side by side (tests/lanes.py): Ray-driving tests in one, the rest in
# the other. `$(BIN)/python -m pytest tests` runs everything in one session.
test: lint
	$(BIN)/python tests/lanes.py tests

demo: install
	$(BIN)/python -m trainresults_dagster.examples.demo

# Long soak, fuzz and race runs; the property tests run with many more generated examples.
stress: install
	$(BIN)/python -m pytest -q -p no:cacheprovider -m stress tests
	TRAINRESULTS_HYPOTHESIS_EXAMPLES=2000 $(BIN)/python -m pytest -q -p no:cacheprovider \
		tests/test_production_inputs.py -k "uri or snapshot"

bench: install
	$(BIN)/python -m benchmarks.run

# ruff keeps the layering (no dagster outside dagster/, no module-level ray/torch/boto3);
# basedpyright keeps the types and reports import cycles as errors.
lint: install
	$(BIN)/ruff check trainresults_dagster tests benchmarks examples
	$(BIN)/basedpyright
	$(BIN)/python -c "import sys, trainresults_dagster; heavy = {'ray', 'torch', 'dagster', 'boto3', 'pandas', 'google.cloud', 'google.cloud.storage', 'azure', 'azure.storage'} & set(sys.modules); assert not heavy, heavy"

clean:
	rm -rf $(VENV)
