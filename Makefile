# Fresh Debian 12, as root: `make demo` starts a whole cluster on 127.0.0.1 and deploys
# examples/hello; `make test` runs every test, whole-system ones included.

VENV    := .venv
BIN     := $(VENV)/bin
STAMP   := $(VENV)/.installed
APT     := DEBIAN_FRONTEND=noninteractive apt-get

.PHONY: setup system-packages demo stop test test-fast lint bench

setup: system-packages $(STAMP)

# apt only when something is missing, so `make test` stays offline on a ready machine.
system-packages:
	@missing=""; \
	[ -x /usr/sbin/nginx ] || command -v nginx >/dev/null 2>&1 || missing="$$missing nginx-light"; \
	[ -x /usr/sbin/haproxy ] || command -v haproxy >/dev/null 2>&1 || missing="$$missing haproxy"; \
	dpkg -s python3-venv >/dev/null 2>&1 || missing="$$missing python3-venv"; \
	command -v packer >/dev/null 2>&1 || missing="$$missing packer"; \
	command -v debootstrap >/dev/null 2>&1 || [ -x /usr/sbin/debootstrap ] || missing="$$missing debootstrap"; \
	command -v ip >/dev/null 2>&1 || [ -x /usr/sbin/ip ] || missing="$$missing iproute2"; \
	command -v pebble >/dev/null 2>&1 || missing="$$missing pebble"; \
	ls /usr/lib/postgresql/*/bin/initdb >/dev/null 2>&1 || missing="$$missing postgresql"; \
	command -v chromium >/dev/null 2>&1 || missing="$$missing chromium"; \
	if [ -n "$$missing" ]; then \
		echo "installing:$$missing"; \
		$(APT) update && $(APT) install -y $$missing; \
	fi

$(BIN)/python:
	python3 -m venv $(VENV)

# Reinstall only when pyproject.toml changed since the last install. uv (a dependency anyway:
# the agent builds app venvs with it) installs in a third of pip's time; bytecode compiled
# up front, or every process the tests start would compile the libraries it imports.
$(STAMP): pyproject.toml | $(BIN)/python
	$(BIN)/pip install --quiet --disable-pip-version-check uv
	$(BIN)/uv pip install --quiet --python $(BIN)/python --compile-bytecode -e '.[dev]'
	touch $(STAMP)

demo: setup
	$(BIN)/paas local up

stop:
	@if [ -x $(BIN)/paas ]; then $(BIN)/paas local down; else echo "nothing to stop"; fi

# Tests run in parallel workers (pytest-xdist); most wait on processes, so more workers than
# cores pay. Tests that must not run beside each other share an xdist_group (--dist loadgroup);
# the longest start first (tests/conftest.py START_ORDER, hence --no-loadscope-reorder).
# Bytecode is written even where PYTHONDONTWRITEBYTECODE is set: each test run starts a few
# hundred registries, agents and CLIs, and every one would compile the project again.
TEST_WORKERS ?= 4
PYTEST_ENV   := env PYTHONDONTWRITEBYTECODE=
PYTEST_PAR   := $(PYTEST_ENV) $(BIN)/pytest -q -n $(TEST_WORKERS) --dist loadgroup --no-loadscope-reorder
# Tests that time the registry's answers under attack (marker `timed`, all in
# tests/integration) run afterwards, away from that load, in six groups of their own
# (tests/conftest.py TIMED).
PYTEST_TIMED := $(PYTEST_ENV) $(BIN)/pytest -q -n 6 --dist loadgroup -m timed tests/integration

# Every tier: unit, integration, e2e, system (tests/*; markers of the same names).
test: setup
	$(PYTEST_PAR) -m "not timed"
	$(PYTEST_TIMED)

# The unit and integration tiers only, for the edit-test loop.
test-fast: setup
	$(PYTEST_PAR) -m "not timed" tests/unit tests/integration
	$(PYTEST_TIMED)

# Style, types ([tool.mypy]) and the layer rules ([tool.importlinter]) in pyproject.toml.
lint: setup
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/mypy
	$(BIN)/lint-imports

bench: setup
	@command -v wrk >/dev/null 2>&1 || { $(APT) update && $(APT) install -y wrk; }
	$(BIN)/python bench/deploy.py
	$(BIN)/python bench/reload_under_load.py
	$(BIN)/python bench/hostile.py
