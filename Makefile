# Development targets. `bash infra/test.sh` (what CI runs) sets up .venv and runs `make check`.
PY ?= .venv/bin/python
PYTEST_ARGS ?=
SOURCES = i2score tasks flows tests

.PHONY: setup lint typecheck test-fast test check demo

setup:  ## create .venv with the dev extras (infra/setup.sh)
	bash infra/setup.sh

lint:  ## ruff: errors, style, imports, bugbear, pyupgrade, simplify (config in pyproject.toml)
	$(PY) -m ruff check $(SOURCES)

typecheck:  ## mypy on the library, tasks, flows and tests (config in pyproject.toml)
	$(PY) -m mypy

test-fast:  ## unit tests only: no object store, Prefect, Dask or demo-model quality runs
	$(PY) -m pytest -q tests/unit $(PYTEST_ARGS)

test:  ## everything: unit and integration tests
	$(PY) -m pytest -q tests $(PYTEST_ARGS)

check: lint typecheck test  ## what CI runs after setting up

demo:  ## the main job on the bundled demo model (infra/demo.sh)
	bash infra/demo.sh
