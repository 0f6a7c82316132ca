# Set-up is idempotent: the virtual environment is (re)built only when it is
# missing or requirements.txt changed. `make demo` / `make test` set up first.
#
#   make help       this list
#   make setup      build .venv from requirements.txt
#   make demo       run the demo (ARGS="--seeds 0,1,2" and others)
#   make test       the whole test suite, as CI runs it (.ci/run)
#   make test-fast  the suite without the tests marked slow (under 5 minutes)
#   make bench      the world-generation benchmark
PYTHON ?= $(shell command -v python3.11 || command -v python3)
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.requirements-installed

.PHONY: help setup demo test test-fast bench
setup: $(STAMP)

help:
	@sed -n 's/^#   //p' $(MAKEFILE_LIST)

# uv installs the stack in about 25 s where pip takes about 2 minutes (measured
# on a fresh venv); pip is the fallback where uv cannot reach the index.
$(STAMP): requirements.txt
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	( $(PY) -m pip install --quiet --disable-pip-version-check uv==0.13.9 \
	  && $(PY) -m uv pip install --quiet --python $(PY) -r requirements.txt ) \
	|| $(PY) -m pip install --quiet --disable-pip-version-check -r requirements.txt
	cp requirements.txt $(STAMP)

demo: setup
	$(PY) -m must.demo $(ARGS)

test: setup
	$(PY) -m pytest -q $(ARGS)

test-fast: setup
	$(PY) -m pytest -q -m "not slow" $(ARGS)

bench: setup
	$(PY) -m benchmarks.world_generation
