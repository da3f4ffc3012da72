# Two commands that work on a fresh machine with only Python and pip:
#   make demo   create .venv, install, run the pipeline end to end on embedded phantom data
#   make test   create .venv, install, run the test suite
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
export PREFECT_SERVER_ANALYTICS_ENABLED ?= false

.PHONY: install demo test lock bench bench-acdc bench-real real-store clean

install: $(VENV)/.installed

# the project alone (what the demo needs); the test tools on top only for `make test`
$(VENV)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e .
	touch $@

$(VENV)/.installed-dev: $(VENV)/.installed
	$(BIN)/python -m pip install --quiet -e '.[dev]'
	touch $@

demo: install
	$(BIN)/mvg demo

# two pytest workers: most of the suite's time is servers starting and processes waiting on each
# other, which a second worker overlaps; whole files go to one worker so a module's Ray cluster or
# trained model is set up once; each worker's torch gets its share of the cores (tests/conftest.py).
# The 20 slowest tests are listed at the end, to see where the time goes
TEST_WORKERS ?= 2
test: $(VENV)/.installed-dev
	$(BIN)/python -m pytest -q -n $(TEST_WORKERS) --dist loadfile --durations=20

# requirements.lock: every dependency pinned for the worker image (infra/docker/Dockerfile), resolved
# from pyproject.toml for its Python (Ubuntu 24.04's 3.12) on x86-64 Linux
lock: $(VENV)/.installed
	$(BIN)/python -m pip install --quiet uv
	$(BIN)/uv pip compile pyproject.toml --python-version 3.12 --python-platform x86_64-manylinux_2_28 --quiet -o requirements.lock

bench: $(VENV)/.installed-dev
	$(BIN)/python -m benchmarks.ingest
	$(BIN)/python -m benchmarks.model
	$(BIN)/python -m benchmarks.train
	$(BIN)/python -m benchmarks.evaluate
	$(BIN)/python -m benchmarks.store
# 30 minutes of training on the shared ACDC data (not part of `make bench`)
bench-acdc: install
	$(BIN)/python -m benchmarks.acdc

# Every public release found in DATA (default: the data folder beside the clone), ingested by its
# recipe into $(MVG_HOME)/real-store at SIZE px; a second run only checks checksums
DATA ?= ../shared/data
SIZE ?= 128
MVG_HOME ?= mvg-home
real-store: install
	@if [ -d "$(DATA)" ]; then \
		$(BIN)/mvg --home "$(MVG_HOME)" real-store --data "$(DATA)" --size $(SIZE); \
	else \
		echo "make real-store: skipped: no data folder at $(DATA) (give its path: make real-store DATA=DIR)"; \
	fi

# 30 minutes of unified training on every release in DATA, then every test split beside its
# baseline: benchmarks/results/real.json (not part of `make bench`)
bench-real: install
	@if [ -d "$(DATA)" ]; then \
		$(BIN)/python -m benchmarks.real --data "$(DATA)"; \
	else \
		echo "make bench-real: skipped: no data folder at $(DATA) (give its path: make bench-real DATA=DIR)"; \
	fi

clean:
	rm -rf $(VENV) mvg-home .pytest_cache
