# `make demo` and `make test` set everything up on a fresh machine (venv, pip packages, Debian data).
SHELL := /bin/bash
PYTHON ?= $(shell command -v python3.11 || command -v python3)
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed
FMNIST := /usr/share/datasets/fashion-mnist/train-images-idx3-ubyte.gz

.PHONY: setup data demo demo-quick demo-hiera test test-all test-compat bench clean

setup: $(STAMP)

# Python writes the bytecode of what a process imports beside its source, once. Some machines (this one) set
# PYTHONDONTWRITEBYTECODE=1, with which every process of a run compiles MindSpore, torch and the rest again.
unexport PYTHONDONTWRITEBYTECODE

# torch first, pinned: it takes the local CPU wheel; anything unpinned would pull the CUDA build.
# --no-compile: pip would byte-compile every module of every package (half the install time); instead the
# packages' modules are compiled as they are first imported, those a run needs first by the import at the end.
PIP_INSTALL := $(PY) -m pip install -q --no-compile
$(STAMP): requirements.txt
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PIP_INSTALL) torch==2.13.0
	$(PIP_INSTALL) -r requirements.txt
	# timm 0.3.2, the reference of the fidelity tests (the version DeiT pins), outside site-packages and
	# without its torchvision dependency (tests/timm_reference.py loads its modules)
	$(PIP_INSTALL) --no-deps --upgrade --target $(VENV)/ref/timm032 timm==0.3.2
	$(PY) -c "import mindspore, mindspore.dataset, mindcv, torch, transformers, sklearn, ray"
	touch $(STAMP)

data: $(FMNIST)

$(FMNIST):
	@command -v apt-get >/dev/null || { echo "need apt-get to install dataset-fashion-mnist"; exit 1; }
	$(if $(filter 0,$(shell id -u)),,sudo) apt-get update -qq
	$(if $(filter 0,$(shell id -u)),,sudo) apt-get install -y -qq dataset-fashion-mnist

demo: setup data
	scripts/demo.sh

demo-quick: setup data
	scripts/demo.sh --quick --seeds 3

# the quick demo on Hiera-T instead of the ResNet (~8 minutes here)
demo-hiera: setup data
	scripts/demo.sh --quick --hiera

# fast tests (the CI default; the 30 slowest are listed at the end, where to look to make it faster); `make test-all` adds the
# ones marked slow. Three processes on the 2 cores: the tests spend much of their time waiting on the processes
# they start (msrun, Ray, data workers), and a third worker fills that time. --dist loadfile: a test file stays on
# one worker, except the long tests tests/conftest.py names in SPREAD, which spread over the workers and go first
# (the msrun and Ray tests take free ports and their own temporary folders)
TEST_JOBS ?= 3
test: setup
	$(PY) -m pytest -q -n $(TEST_JOBS) --dist loadfile -m "not slow" --durations=30 tests

test-all: setup
	$(PY) -m pytest -q tests

# the Python x MindSpore matrix: each combination in its own venv under .compat/ (pyenv Pythons, wheels from
# PyPI), a smoke of the installed command lines; results in ms_gpt4image/tested_matrix.json and
# docs/compatibility.md. One combination: make test-compat COMPAT_ARGS="--only 3.11:2.7.2"
test-compat: setup
	$(PY) scripts/test_compat.py $(COMPAT_ARGS)

bench: setup
	$(PY) scripts/bench_train_step.py

clean:
	rm -rf runs .pytest_cache
