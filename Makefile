# The two commands of the README. Both create .venv and install the pinned project first.
PY ?= python3.11
VENV := .venv
BIN := $(VENV)/bin

.PHONY: build test install emulators js

$(BIN)/python:
	$(PY) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip

install: $(BIN)/python
	$(BIN)/pip install --quiet -e ./runtime -e '.[test]'

# QEMU user-mode emulators and an arm64 Python with onnxruntime, cached in .emu/: the verify
# stage and the profile tests run models on CPUs this machine is not (stages/profiles/).
emulators:
	bash stages/profiles/emulators.sh "$(CURDIR)"

# The JavaScript reference client's packages (clients/js), as package-lock.json pins them;
# --ignore-scripts: onnxruntime-node's postinstall would fetch GPU files from outside npm.
# Reinstalled only when the lock file is newer than node_modules.
js: clients/js/node_modules

clients/js/node_modules: clients/js/package-lock.json
	cd clients/js && npm ci --ignore-scripts --no-audit --no-fund
	touch $@

# Builds every device class in params.yaml: models, metrics, reports (dvc repro).
# machine.json first: timings depend on the machine, so a different one remeasures.
build: install emulators js
	$(BIN)/python -m stages.measure.machine --out machine.json
	PATH="$(CURDIR)/$(BIN):$$PATH" $(BIN)/dvc repro

# Lint and the whole test suite, one pytest worker per logical CPU (tests/conftest.py says
# how files are handed out).
test: install emulators js
	$(BIN)/ruff check stages tests
	PATH="$(CURDIR)/$(BIN):$$PATH" $(BIN)/pytest -q -n logical --dist loadfile
