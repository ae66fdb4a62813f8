# jaxrnn: every target creates or refreshes the project's own virtual environment first and
# runs the console scripts it installs (jaxrnn-train ...; scripts/*.py are the same commands).
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
BIN := $(VENV)/bin
WORKDIR ?= runs/default
PRESET ?= default
TRAIN_FLAGS ?=

.PHONY: train test test-slow bench parity data venv clean

$(VENV)/.installed-runtime: pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -e .
	touch $@

$(VENV)/.installed-dev: pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -e '.[torch,dev,bench]'
	touch $@ $(VENV)/.installed-runtime

venv: $(VENV)/.installed-runtime

data: $(VENV)/.installed-runtime
	$(BIN)/jaxrnn-prepare-data

# The main job: fetch tiny-shakespeare, train the default model (~10 CPU minutes), print a sample.
train: data
	$(BIN)/jaxrnn-train --data data/tinyshakespeare.txt --workdir $(WORKDIR) \
		--preset $(PRESET) $(TRAIN_FLAGS)

# The tests (about 6 minutes on 2 quiet CPU cores).
test: $(VENV)/.installed-dev
	$(PY) -m pytest -q

# The slow tests too: full parity matrices, long kill/resume runs, full-corpus checks.
test-slow: $(VENV)/.installed-dev
	$(PY) -m pytest -q -m "slow or not slow"

bench: $(VENV)/.installed-dev
	$(BIN)/jaxrnn-bench

parity: $(VENV)/.installed-dev
	$(BIN)/jaxrnn-parity

clean:
	rm -rf $(VENV) runs .pytest_cache
