# Quick start: `make demo` then `make test`. Both create .venv and install the project into it.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
# The CPU wheel of torch; set TORCH_SPEC= (empty) to keep a torch you installed yourself.
TORCH_SPEC ?= torch==2.13.0
DEMO_DIR := runs/demo

.PHONY: install demo test bench clean

$(BIN)/sparsecut: pyproject.toml
	test -d $(VENV) || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	$(if $(TORCH_SPEC),$(BIN)/python -m pip install -q "$(TORCH_SPEC)")
	$(BIN)/python -m pip install -q -e ".[dev]"
	touch $(BIN)/sparsecut

install: $(BIN)/sparsecut

# The embedded default: the tiny preset on a synthetic image, on CPU, in under a minute.
demo: install
	$(BIN)/sparsecut info --preset tiny
	$(BIN)/sparsecut build --preset tiny --out $(DEMO_DIR)/model
	$(BIN)/sparsecut shapes $(DEMO_DIR)/shapes.png --seed 0
	$(BIN)/sparsecut chat $(DEMO_DIR)/shapes.png --model $(DEMO_DIR)/model \
		--prompt "What shape is in the image?" --max-new-tokens 12
	@echo "demo: built the untrained tiny model in $(DEMO_DIR)/model and answered one question about $(DEMO_DIR)/shapes.png (random weights: the words are noise until training lands)"

test: install
	$(BIN)/python -m pytest

bench: install
	$(BIN)/python benchmarks/prefill.py

clean:
	rm -rf $(VENV) runs .pytest_cache
