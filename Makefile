# The two set-up commands of the README: `make demo` and `make test`.
# Both create the virtual environment (.venv) and install what they need on first use
# (scripts/make-venv.sh also installs Python's venv module where Debian ships it apart).

PYTHON ?= python3
VENV   ?= .venv
BIN     = $(VENV)/bin

# Virtual envs of peers the tests drive, kept apart from .venv (their pins differ): TRL with
# torch's CPU build, and the MCP SDK's 2.x major. Made here rather than in the tests, so that
# their install never counts against a test's time limit.
PEERS = .venv-trl/.installed-trl-test .venv-mcp2/.installed-mcp2

.PHONY: demo test bench system-deps clean

demo: $(VENV)/.installed
	$(BIN)/kernelenv demo

test: system-deps $(VENV)/.installed-test $(PEERS)
	$(BIN)/python -m pytest $(PYTEST_ARGS)

bench: $(VENV)/.installed-test
	$(BIN)/kernelenv bench

system-deps:
	@bash scripts/install-system-deps.sh

$(VENV)/.installed: pyproject.toml
	@bash scripts/make-venv.sh $(PYTHON) $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet -e .
	touch $@

$(VENV)/.installed-test: pyproject.toml $(VENV)/.installed
	$(BIN)/pip install --quiet -e '.[test]'
	touch $@

.venv-trl/.installed-trl-test: pyproject.toml
	@bash scripts/make-venv.sh $(PYTHON) .venv-trl
	.venv-trl/bin/pip install --quiet --disable-pip-version-check -e '.[trl-test]'
	touch $@

.venv-mcp2/.installed-mcp2: pyproject.toml
	@bash scripts/make-venv.sh $(PYTHON) .venv-mcp2
	.venv-mcp2/bin/pip install --quiet --disable-pip-version-check -e . 'mcp>=2,<3' \
		pytest pytest-timeout psutil matplotlib
	touch $@

clean:
	rm -rf $(VENV) .venv-* .pytest_cache test-artifacts
