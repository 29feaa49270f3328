# pirl: everything installs from scratch into ./.venv (Python 3.11).
PYTHON ?= python3.11
VENV := .venv
PY := $(VENV)/bin/python
PIP := $(PY) -m pip
STAMP := $(VENV)/.installed

.PHONY: install test lint demo bench experiments experiments-quick clean-venv gpu-check

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

gpu-check: install  # one GPU, ~8 min: CUDA tests, step times, torchrun/NCCL, a BraTS case; benchmarks/results/gpu.json
	$(PY) -m benchmarks.gpu_check

experiments: install
	$(PY) -m experiments.run

experiments-quick: install
	$(PY) -m experiments.run --quick

clean-venv:
	rm -rf $(VENV)
