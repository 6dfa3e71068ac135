PY ?= python3
VENV ?= .venv
BIN := $(VENV)/bin

.PHONY: install demo test lint typecheck bench ci clean

$(BIN)/python:
	$(PY) -m venv $(VENV)

install: $(BIN)/python
	$(BIN)/pip install -q --upgrade pip
	$(BIN)/pip install -q -e '.[dev]'

demo: install
	$(BIN)/python examples/demo.py

test: install
	$(BIN)/python -m pytest

lint: install
	$(BIN)/ruff check resumable tests examples benchmarks
	$(BIN)/ruff format --check resumable

typecheck: install
	$(BIN)/mypy resumable

bench: install
	$(BIN)/python -m benchmarks

clean:
	rm -rf $(VENV) .resumable .pytest_cache .mypy_cache build dist
