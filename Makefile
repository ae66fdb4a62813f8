# jaxrnn: every target creates or refreshes the project's own virtual environment first and
# runs the console scripts it installs (jaxrnn-train ...; scripts/*.py are the same commands).
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
BIN := $(VENV)/bin
WORKDIR ?= runs/default
PRESET ?= default
TRAIN_FLAGS ?=
PIP ?= $(PY) -m pip
# torch's CPU-only wheels: where no NVIDIA driver is present, the dev install takes torch from
# here instead of the default index's multi-GB CUDA build.
TORCH_CPU_INDEX ?= https://download.pytorch.org/whl/cpu

.PHONY: train test test-slow bench parity data venv clean

$(VENV)/.installed-runtime: pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PIP) install -q --upgrade pip
	$(PIP) install -q -e .
	touch $@

# torch: one already installed is kept; with an NVIDIA driver (nvidia-smi on PATH or
# /proc/driver/nvidia) the default index's CUDA build comes with the torch extra; without one
# the CPU build comes first from TORCH_CPU_INDEX, and from the default index if that index
# cannot be reached.
$(VENV)/.installed-dev: pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PIP) install -q --upgrade pip
	@if $(PY) -c "import torch" >/dev/null 2>&1; then \
	  echo "torch is installed already: kept"; \
	elif command -v nvidia-smi >/dev/null 2>&1 || [ -e /proc/driver/nvidia ]; then \
	  echo "an NVIDIA driver is present: torch (CUDA build) from the default index"; \
	else \
	  echo "no NVIDIA driver: torch's CPU build from $(TORCH_CPU_INDEX)"; \
	  $(PIP) install -q --retries 1 --timeout 20 torch --index-url $(TORCH_CPU_INDEX) || \
	    echo "$(TORCH_CPU_INDEX) cannot be reached: torch from the default index"; \
	fi
	$(PIP) install -q -e '.[torch,dev,bench]'
	touch $@ $(VENV)/.installed-runtime

venv: $(VENV)/.installed-runtime

data: $(VENV)/.installed-runtime
	$(BIN)/jaxrnn-prepare-data

# The main job: fetch tiny-shakespeare, train the default model (~10 CPU minutes), print a sample.
train: data
	$(BIN)/jaxrnn-train --data data/tinyshakespeare.txt --workdir $(WORKDIR) \
		--preset $(PRESET) $(TRAIN_FLAGS)

# The tests, in TEST_WORKERS processes (pytest-xdist; a test file stays in one process, so its
# module fixtures run once). TEST_WORKERS=0 runs them in this process.
TEST_WORKERS ?= 2
test: $(VENV)/.installed-dev
	$(PY) -m pytest -q -n $(TEST_WORKERS) --dist loadfile

# The slow tests too: full parity matrices, long kill/resume runs, full-corpus checks.
test-slow: $(VENV)/.installed-dev
	$(PY) -m pytest -q -n $(TEST_WORKERS) --dist loadfile -m "slow or not slow"

bench: $(VENV)/.installed-dev
	$(BIN)/jaxrnn-bench

parity: $(VENV)/.installed-dev
	$(BIN)/jaxrnn-parity

clean:
	rm -rf $(VENV) runs .pytest_cache
