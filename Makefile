# Two commands on a fresh machine: `make demo` and `make test`.
# Each installs what is missing (system packages, then a virtual environment).
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed

.PHONY: demo test lint bench system venv clean

demo: system $(STAMP)
	$(VENV)/bin/pgagent-watch demo --port $(or $(PORT),8080)

test: system $(STAMP)
	$(VENV)/bin/ruff check
	$(VENV)/bin/ruff format --check
	$(VENV)/bin/mypy
	$(PY) -m pytest $(PYTEST_ARGS)

bench: system $(STAMP)
	$(PY) -m bench $(BENCH_ARGS)

system:
	@sh scripts/install-system.sh

$(STAMP): pyproject.toml
	test -x $(PY) || python3 -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -e '.[test]'
	touch $(STAMP)

clean:
	rm -rf $(VENV) build src/*.egg-info .pytest_cache .mypy_cache .ruff_cache
