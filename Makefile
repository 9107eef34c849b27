# Two commands for a fresh machine with Python 3.11+: `make demo` and `make test`.
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
# Colab's package versions (requirements-colab.txt) on Colab's Python, 3.13 since 2026-08 (pyenv's if there is one;
# else 3.12, else this machine's Python).
COLAB_PYTHON ?= $(or $(lastword $(wildcard $(HOME)/.pyenv/versions/3.13*/bin/python)),$(shell python3.13 -c 'import sys; print(sys.executable)' 2>/dev/null),$(lastword $(wildcard $(HOME)/.pyenv/versions/3.12*/bin/python)),$(PYTHON))
COLAB_VENV := .venv-colab

.PHONY: demo test test-colab lab kernel render cells clean

# uv installs the pins, downloading in parallel: 8 s on an empty cache where pip took about 50. It does not compile
# the bytecode of all 13,000 modules (20 s more here): Python compiles each module at its first import and keeps
# the result, as it does by default, so the environment's PYTHONDONTWRITEBYTECODE is not passed on (without it every
# notebook would compile TensorFlow again). To use pip alone: make INSTALL="$(PY) -m pip install".
UV := uv==0.13.9
INSTALL ?= $(PY) -m uv pip install --python $(PY)
unexport PYTHONDONTWRITEBYTECODE

$(VENV)/.installed: requirements.txt pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q $(UV)
	$(INSTALL) -q -r requirements.txt
	$(INSTALL) -q --no-deps -e .
	touch $@

# A stand-in for a Colab runtime: only what Colab ships (the list above the "added by the install cell"
# line), so the notebooks' first cell installs the rest as on Colab, from a local wheelhouse of those pins.
$(COLAB_VENV)/.installed: requirements-colab.txt
	rm -rf $(COLAB_VENV)
	$(COLAB_PYTHON) -m venv $(COLAB_VENV)
	sed '/^# --- added by the install cell/,$$d' requirements-colab.txt > $(COLAB_VENV)/colab-ships.txt
	sed -n '/^# --- added by the install cell/,$$p' requirements-colab.txt > $(COLAB_VENV)/cell-adds.txt
	$(COLAB_VENV)/bin/python -m pip install -q -r $(COLAB_VENV)/colab-ships.txt
	$(COLAB_VENV)/bin/python -m pip download -q --no-deps -d $(COLAB_VENV)/wheelhouse -r $(COLAB_VENV)/cell-adds.txt \
		$$(grep -i '^setuptools==' requirements-colab.txt)
	$(COLAB_VENV)/bin/python --version > $@

demo: $(VENV)/.installed  ## run the notebook series on the built-in demo data into runs/demo/
	$(PY) -m seglab run --config configs/demo.yaml

test: $(VENV)/.installed  ## unit tests and the series on a tiny config, then the same on Colab's versions
	$(PY) -m pytest -n 2 --dist loadfile  # two processes, each test file whole in one (its fixtures run once)
	$(MAKE) test-colab

test-colab: $(VENV)/.installed $(COLAB_VENV)/.installed  ## notebooks 00-06 each in its own simulated Colab runtime
	SEGLAB_COLAB_VENV=$(abspath $(COLAB_VENV)) $(PY) -m pytest -q --basetemp=$(abspath .pytest-colab) tests/test_colab_runtime.py

kernel:  ## register this venv as the Jupyter kernel "seglab" (for a system-wide Jupyter)
	$(PY) -m ipykernel install --user --name seglab --display-name "Python (seglab)"

lab: $(VENV)/.installed kernel  ## JupyterLab on notebooks/, the venv's Python as the notebooks' python3 kernel
	$(PY) -m ipykernel install --sys-prefix
	JUPYTER_PREFER_ENV_PATH=1 $(VENV)/bin/jupyter lab notebooks/

clean:
	rm -rf runs data/generated

render: $(VENV)/.installed  ## rerun the demo; commit-ready notebooks with outputs, README results
	$(PY) -m seglab render

cells: $(VENV)/.installed  ## stamp the set-up cell, parameters and Colab badges into notebooks/ and README, no run
	$(PY) -m seglab render --cells-only
