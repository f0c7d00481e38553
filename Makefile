# The two set-up commands of the README: `make demo` and `make test`.
# Both create the virtual environment (.venv) and install what they need on first use
# (scripts/make-venv.sh also installs Python's venv module where Debian ships it apart).

PYTHON ?= python3
VENV   ?= .venv
BIN     = $(VENV)/bin

.PHONY: demo test bench system-deps clean

demo: $(VENV)/.installed
	$(BIN)/kernelenv demo

test: system-deps $(VENV)/.installed-test
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

clean:
	rm -rf $(VENV) .venv-* .pytest_cache test-artifacts
