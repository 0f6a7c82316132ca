# Set-up is idempotent: the virtual environment is (re)built only when it is
# missing or requirements.lock changed. `make demo` / `make test` set up first.
#
#   make help       this list
#   make setup      build .venv from requirements.lock (every package pinned, hashed)
#   make demo       run the demo (ARGS="--seeds 0,1,2" and others)
#   make test       the whole test suite, as CI runs it (.ci/run)
#   make test-fast  the suite without the tests marked slow (under 5 minutes)
#   make bench      the world-generation benchmark
#   make lock       re-resolve requirements.lock after editing requirements.txt
PYTHON ?= $(shell command -v python3.11 || command -v python3)
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.requirements-installed

.PHONY: help setup demo test test-fast bench lock
setup: $(STAMP)

help:
	@sed -n 's/^#   //p' $(MAKEFILE_LIST)

# uv installs the locked set into a fresh venv in under 10 s from a warm cache
# (measured); pip, much slower, is the fallback where uv cannot be had. Both
# check the lock's hashes.
$(STAMP): requirements.lock
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	( $(PY) -m pip install --quiet --disable-pip-version-check uv==0.13.9 \
	  && $(PY) -m uv pip install --quiet --python $(PY) -r requirements.lock ) \
	|| $(PY) -m pip install --quiet --disable-pip-version-check -r requirements.lock
	cp requirements.lock $(STAMP)

# The lock: every package of requirements.txt's resolution, for any platform, hashed.
lock: setup
	$(PY) -m uv pip compile --quiet requirements.txt --universal --python-version 3.11 \
	  --generate-hashes -o requirements.lock

demo: setup
	$(PY) -m must.demo $(ARGS)

test: setup
	$(PY) -m pytest -q $(ARGS)

test-fast: setup
	$(PY) -m pytest -q -m "not slow" $(ARGS)

bench: setup
	$(PY) -m benchmarks.world_generation
