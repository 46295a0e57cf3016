# Two commands are all a fresh machine needs:
#   make demo   - set up (first time) and run a whole local subnet
#   make test   - set up (first time) and run lint + the test suite
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed

.PHONY: demo test lint bench setup clean

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -e '.[dev]'
	touch $(STAMP)

setup: $(STAMP)

demo: $(STAMP)
	$(VENV)/bin/tessera localnet --miners 3 --validators 1 --windows 6 --json-out localnet-summary.json

test: $(STAMP)
	$(PY) -m ruff check .
	$(PY) -m pytest -q

bench: $(STAMP)
	$(PY) scripts/bench_compression.py --json

clean:
	rm -rf $(VENV) .pytest_cache .ruff_cache
