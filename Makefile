# Two commands do everything on a fresh machine:  make demo  and  make test.
# Each creates .venv, installs torch first (the CPU build; a bare `pip install torch` would
# fetch a multi-GB CUDA build), then lmforge with its dev extra, then runs.

PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
TORCH_VERSION ?= 2.13.0
STAMP := $(VENV)/.installed

.PHONY: install test demo clean

install: $(STAMP)

$(STAMP): pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -c "import torch" 2>/dev/null || $(PY) -m pip install -q torch==$(TORCH_VERSION)
	$(PY) -m pip install -q -e '.[dev]'
	touch $(STAMP)

test: install
	$(PY) -m pytest -q $(PYTEST_ARGS)

demo: install
	$(PY) -m lmforge.demo $(DEMO_ARGS)

clean:
	rm -rf $(VENV) runs build *.egg-info src/*.egg-info
