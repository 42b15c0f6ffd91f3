# The two commands of the README. Both create .venv and install the pinned project first.
PY ?= python3.11
VENV := .venv
BIN := $(VENV)/bin

.PHONY: build test install

$(BIN)/python:
	$(PY) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip

install: $(BIN)/python
	$(BIN)/pip install --quiet -e '.[test]'

# Builds every device class in params.yaml: models, metrics, reports (dvc repro).
# machine.json first: timings depend on the machine, so a different one remeasures.
build: install
	$(BIN)/python -m stages.measure.machine --out machine.json
	PATH="$(CURDIR)/$(BIN):$$PATH" $(BIN)/dvc repro

# Lint and the whole test suite.
test: install
	$(BIN)/ruff check stages tests
	PATH="$(CURDIR)/$(BIN):$$PATH" $(BIN)/pytest -q
