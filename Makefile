# pirl: everything installs from scratch into ./.venv (Python 3.11).
PYTHON ?= python3.11
VENV := .venv
PY := $(VENV)/bin/python
PIP := $(PY) -m pip
STAMP := $(VENV)/.installed

.PHONY: install test lint demo bench experiments experiments-quick clean-venv

install: $(STAMP)

$(STAMP): setup.py constraints.txt
	$(PYTHON) -m venv $(VENV)
	$(PIP) install --upgrade pip
	$(PIP) install torch==2.13.0
	$(PIP) install -c constraints.txt -e ".[test]"
	touch $(STAMP)

lint: install
	$(VENV)/bin/ruff check .

test: install lint
	$(VENV)/bin/pytest -q tests

demo: install
	$(VENV)/bin/pirl_demo

bench: install
	$(PY) -m benchmarks.run_all

experiments: install
	$(PY) -m experiments.run

experiments-quick: install
	$(PY) -m experiments.run --quick

clean-venv:
	rm -rf $(VENV)
