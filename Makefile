# Two commands do all set-up: `make demo` (main job on the embedded default) and `make test`.
# The virtualenv is created on first use and reinstalled only when pyproject.toml changes.
PYTHON ?= python3.11
VENV := .venv
STAMP := $(VENV)/.installed-stamp
PY := $(VENV)/bin/python

.PHONY: demo test test-fast lint venv clean

venv: $(STAMP)

$(STAMP): pyproject.toml
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
