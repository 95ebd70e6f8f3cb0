# Two commands on a fresh machine: `make demo` and `make test`. Both create .venv and install.
PY ?= python3.11
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: install test demo stress bench lint clean

$(BIN)/python:
	$(PY) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip uv

# Reinstall when the project's dependency list changes.
$(STAMP): pyproject.toml | $(BIN)/python
	$(BIN)/uv pip install --python $(BIN)/python -e '.[ray,test]'
	touch $(STAMP)

install: $(STAMP)

test: lint
	$(BIN)/python -m pytest -q -p no:cacheprovider tests

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
	$(BIN)/python -c "import sys, trainresults_dagster; heavy = {'ray', 'torch', 'dagster', 'boto3', 'pandas'} & set(sys.modules); assert not heavy, heavy"

clean:
	rm -rf $(VENV)
