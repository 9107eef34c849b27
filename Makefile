# Two commands for a fresh machine with Python 3.11+: `make demo` and `make test`.
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python

.PHONY: demo test render clean

$(VENV)/.installed: requirements.txt pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -r requirements.txt
	$(PY) -m pip install -q --no-deps -e .
	touch $@

demo: $(VENV)/.installed  ## run the notebook series on the built-in demo data into runs/demo/
	$(PY) -m seglab run --config configs/demo.yaml

test: $(VENV)/.installed  ## unit tests, then the whole series on a tiny config
	$(PY) -m pytest

clean:
	rm -rf runs data/generated

render: $(VENV)/.installed  ## rerun the demo; commit-ready notebooks with outputs, README results
	$(PY) -m seglab render
