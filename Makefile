# One entry point for the toolchain; .ci/run calls `make test`.
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
SUDO := $(shell [ "$$(id -u)" = 0 ] || echo sudo)
APT_PACKAGES := redis-server dovecot-imapd isync prometheus openssl

.PHONY: help system-deps venv install dev lint test test-fast test-other-pythons demo bench bench-producer bench-worker clean

help:
	@echo "make demo   - set up everything and run producer + 2 workers on a local sample mailbox"
	@echo "make test   - run the whole test suite (real redis-server and Dovecot)"
	@echo "make lint | bench | clean"

system-deps:
	@missing=""; for p in $(APT_PACKAGES); do dpkg -s $$p >/dev/null 2>&1 || missing="$$missing $$p"; done; \
	if [ -n "$$missing" ]; then \
	  echo "installing:$$missing"; \
	  $(SUDO) env DEBIAN_FRONTEND=noninteractive apt-get update -qq && \
	  $(SUDO) env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends $$missing >/dev/null; \
	fi
	@# The packaged daemons may start on their usual ports; tests, demo and benchmarks run
	@# their own servers on free loopback ports and leave the system's services alone.

# Production: the pinned runtime requirements and the package itself (not editable), no
# development tools. This is what a server gets (docs/operations.md).
$(VENV)/.installed-prod: requirements.txt pyproject.toml setup.py
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -r requirements.txt
	$(PY) -m pip install -q --no-deps .
	touch $@

# Development: test and lint tools, the package editable (src/ changes take effect at once).
$(VENV)/.installed: requirements.txt requirements-dev.txt pyproject.toml setup.py
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -r requirements-dev.txt
	$(PY) -m pip install -q --no-deps -e .
	touch $@

install: $(VENV)/.installed-prod

venv dev: $(VENV)/.installed

lint: dev
	$(VENV)/bin/ruff check src tests scripts producer.py worker.py
	$(VENV)/bin/mypy

# Other interpreters the machine has (pyenv shims on the CI image), each with its own venv;
# they run the suite without the long fault runs (those run once, on the default interpreter).
OTHER_PYTHONS ?= python3.12 python3.13

test: system-deps dev lint
	$(PY) -m pytest -q
	make --no-print-directory test-other-pythons

test-other-pythons:
	@for name in $(OTHER_PYTHONS); do \
	  py=$$(ls $${PYENV_ROOT:-$$HOME/.pyenv}/versions/*/bin/$$name 2>/dev/null | tail -1); py=$${py:-$$name}; \
	  if ! $$py -c "import sys; assert sys.version_info >= (3, 11)" >/dev/null 2>&1; then echo "$$name: not installed, skipped"; continue; fi; \
	  echo "== tests on $$($$py --version)"; \
	  make --no-print-directory VENV=.venv-$$name PYTHON=$$py dev && \
	  .venv-$$name/bin/python -m pytest -q -m "not slow" || exit 1; \
	done

test-fast: dev
	$(PY) -m pytest -q -m "not slow"

demo: system-deps dev
	$(PY) scripts/demo.py

bench: bench-producer bench-worker

bench-producer: system-deps dev
	$(PY) scripts/bench_producer.py

bench-worker: system-deps dev
	$(PY) scripts/bench_worker.py

clean:
	rm -rf $(VENV) .venv-python3.* .pytest_cache .ruff_cache .mypy_cache .demo
