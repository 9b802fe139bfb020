# The two commands of the quickstart: `make demo` and `make test`.
# Each installs what is missing (venv, Python packages, Kafka jars, Debian
# packages) and starts what it needs.

PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
# uv installs .venv from uv.lock. It is a PyPI package, so pip brings it: into .local, by version, so
# a new UV_VERSION bootstraps itself. --target needs no venv module and is allowed by Debian's pip.
UV_VERSION := 0.13.8
UV_DIR := .local/uv-$(UV_VERSION)
UV     := $(UV_DIR)/bin/uv
EXTRAS := --extra dev --extra trainer --extra serving --extra worker
# A new stamp, so a new install, whenever pyproject.toml, uv.lock or this file (the install options) changes.
STAMP  := $(VENV)/.installed-$(shell cat pyproject.toml uv.lock Makefile | sha1sum | cut -c1-12)

.PHONY: install lock demo test check stack down clean

install: $(STAMP)

# pip warns when run as root and about its own age: silenced with variables, which an older pip
# ignores (an option it does not know would fail it).
$(UV):
	@rm -rf $(UV_DIR)
	PIP_ROOT_USER_ACTION=ignore PIP_DISABLE_PIP_VERSION_CHECK=1 \
	  $(PYTHON) -m pip install -q --target $(UV_DIR) uv==$(UV_VERSION)

# --locked: exactly uv.lock, and an error instead of a silent new resolution when pyproject.toml
# changed without `make lock`. The project itself is installed editable (the tests import the checkout).
# --python and no downloads: the machine's Python, never one that uv would fetch. -q hides uv's
# warnings too: drop it to see them (the full output had none). --compile-bytecode: every module compiled
# once here (about 20 s on two cores), not again in each of the many Python processes the demo and the
# suite start, which compile from source wherever PYTHONDONTWRITEBYTECODE is set (import torch: 4.0 s
# against 2.1 s compiled).
$(STAMP): pyproject.toml uv.lock | $(UV)
	$(UV) sync -q --locked --no-python-downloads --python $(PYTHON) $(EXTRAS) --compile-bytecode
	@rm -f $(VENV)/.installed-*; touch $@

# Upgrades uv.lock within pyproject.toml's bounds: everything, or one package (make lock PACKAGE=torch;
# also how a dependency just added to pyproject.toml gets locked). `make install` then installs it.
lock: | $(UV)
	$(UV) lock $(if $(PACKAGE),--upgrade-package $(PACKAGE),--upgrade)

stack: install
	$(BIN)/streamrec up --with-prometheus

demo: stack
	$(BIN)/streamrec demo

# `make test` is the whole suite (tests/conftest.py says how it is spread). The fault suite runs each case
# with 3,000 events there; its 50,000-event run is `streamrec bench faults` (figures in RELIABILITY.md).
# `make test TEST_WORKERS=0` runs everything in one process.
TEST_WORKERS ?= 4
test: export STREAMREC_FAULT_EVENTS ?= 3000
# Python's bytecode caches, even where PYTHONDONTWRITEBYTECODE is set: the project's modules and pytest's
# rewritten test modules are compiled once (into ignored __pycache__ folders), not in each of the suite's
# workers and services.
test check: export PYTHONDONTWRITEBYTECODE =
test: install
	$(BIN)/pytest -q -n $(TEST_WORKERS)

# The unit, contract and property tests: no Kafka, no Redis, under 2 minutes. Use it while editing;
# `make test` before a commit.
CHECK_TESTS := tests/unit tests/fuzz/test_decoder_fuzz.py
check: install
	$(BIN)/pytest -q -n 2 $(CHECK_TESTS)

down:
	-$(BIN)/streamrec down

clean: down
	rm -rf .local
