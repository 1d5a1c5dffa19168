# Two commands do all set-up: `make demo` (main job on the embedded default) and `make test`.
# The virtualenv is created on first use and reinstalled only when pyproject.toml changes.
# The newest supported interpreter (3.13, 3.12, 3.11) that runs: a pyenv shim of a version that is not
# active fails the probe and is passed over. `make PYTHON=python3.12 ...` picks one by hand.
SUPPORTED_PYTHONS := python3.13 python3.12 python3.11
ifndef PYTHON
PYTHON := $(firstword $(foreach p,$(SUPPORTED_PYTHONS),$(shell $(p) -c 'import sys' >/dev/null 2>&1 && echo $(p))))
endif
VENV := .venv
STAMP := $(VENV)/.installed-stamp
PY := $(VENV)/bin/python

.PHONY: demo test test-fast lint venv clean python

venv: $(STAMP)

$(STAMP): pyproject.toml
	@test -x $(PY) || test -n "$(PYTHON)" || { echo "make: no Python 3.11-3.13 found (tried $(SUPPORTED_PYTHONS))" >&2; exit 1; }
	@test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet -e '.[dev]'
	@touch $(STAMP)

# Lint first (ruff rules in pyproject.toml), then the suite. pytest exits 5 when it collects no test:
# a suite that runs nothing is a failure here.
test: lint
	@$(PY) -m pytest tests; rc=$$?; \
	if [ $$rc -eq 5 ]; then echo "make test: pytest collected no tests" >&2; fi; exit $$rc

lint: $(STAMP)
	$(PY) -m ruff check .

test-fast: $(STAMP)
	$(PY) -m pytest tests -m "not slow" -q

demo: $(STAMP)
	$(PY) -m sam3.demo

clean:
	rm -rf $(VENV)

# The interpreter a new virtualenv would be made with.
python:
	@echo $(PYTHON)
