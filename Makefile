# Two entry points for a fresh machine: `make pipeline` (install + main job) and `make test`.
PYTHON ?= python3
VENV   ?= .venv
BIN    := $(VENV)/bin
OUT    ?= runs/default

.PHONY: install pipeline test
install: $(VENV)/.installed

$(VENV)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	$(BIN)/pip install -q torch==2.13.0   # CPU build; any other torch pulls GBs of CUDA wheels
	$(BIN)/pip install -q -e ".[dev]"   # dev = train (torch, transformers, ...) + serve + client + test tools
	touch $@

pipeline: install
	$(BIN)/shelfml pipeline --out $(OUT) --force

test: install
	$(BIN)/python -m pytest -q
