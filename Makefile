# Quickstart: `make demo` runs the embedded default, `make test` runs the test suite.
# Both create the virtual environment and fetch Fashion-MNIST themselves.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.diffsmooth-installed
PYTEST_ARGS ?=

.PHONY: demo test gpu-check install data clean

demo: install data
	$(BIN)/diffsmooth demo $(DEMO_ARGS)

test: install data
	bash scripts/run_tests.sh $(PYTEST_ARGS)

# On a machine with CUDA (scripts/gpu_check.sh --dry-run rehearses it on the CPU).
gpu-check:
	bash scripts/gpu_check.sh

install: $(STAMP)

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q -e '.[test]'
	touch $@

data:
	bash scripts/fetch_fashion_mnist.sh

clean:
	rm -rf $(VENV) demo-output gpu-check-output .pytest_cache
