# The two commands of the quickstart: `make demo` and `make test`.
# Each installs what is missing (venv, Python packages, Kafka jars, Debian
# packages) and starts what it needs.

PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed-$(shell sha1sum pyproject.toml | cut -c1-12)

.PHONY: install demo test test-unit stack down clean

install: $(STAMP)

$(STAMP): pyproject.toml
	@test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	$(BIN)/pip install -q -e '.[dev,trainer,serving,worker]'
	@rm -f $(VENV)/.installed-*; touch $@

stack: install
	$(BIN)/streamrec up --with-prometheus

demo: stack
	$(BIN)/streamrec demo

# The fault suite runs every case in `make test` with 3,000 events each (about 7.5 min); its
# 50,000-event run is `streamrec bench faults` (about 25 min, figures in RELIABILITY.md).
# Two pytest-xdist workers: the tests that share one local stack on one, the unit tests and
# those with stacks of their own on the other (tests/conftest.py). `make test TEST_WORKERS=0`
# runs everything in one process.
TEST_WORKERS ?= 2
test: export STREAMREC_FAULT_EVENTS ?= 3000
test: install
	$(BIN)/pytest -q -n $(TEST_WORKERS)

test-unit: install
	$(BIN)/pytest -q tests/unit

down:
	-$(BIN)/streamrec down

clean: down
	rm -rf .local
