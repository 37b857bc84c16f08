# Two entry points for a fresh machine: `make demo` (set up + run the embedded default search)
# and `make test` (set up + run the test suite). Both create .venv; torch is pinned to the CPU
# build that lies on local disk so pip never resolves a multi-GB CUDA wheel.
VENV ?= .venv
PY := $(VENV)/bin/python
PIP := $(VENV)/bin/pip
TORCH ?= torch==2.13.0

.PHONY: setup demo test bench clean

$(VENV)/.installed: pyproject.toml
	python3 -m venv $(VENV)
	$(PIP) install -q --upgrade pip
	$(PIP) install -q $(TORCH)
	$(PIP) install -q -e '.[test]'
	touch $@

setup: $(VENV)/.installed

demo: setup
	$(VENV)/bin/dnas search --out runs/demo --force

test: setup
	$(VENV)/bin/pytest -q -p no:cacheprovider

bench: setup
	$(PY) benchmarks/supernet_step.py
	$(PY) benchmarks/selection_cost.py

clean:
	rm -rf $(VENV) runs build *.egg-info
