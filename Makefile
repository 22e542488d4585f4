# Two entry points for people: `make run` (the main job) and `make test`. Both set up .venv first.
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
SHARED_MIRROR := $(abspath ..)/shared/datasets/mnist

.PHONY: run test test-fast setup clean

$(VENV)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -e ".[test]"
	touch $@

setup: $(VENV)/.installed

# The main job: data -> train -> evaluate -> register in the dev env (local stores in ./.mnistops).
run: setup
	$(PY) -m mnistops $(ARGS)

# The test suite: real MLflow stores, real MNIST files (through a file:// mirror when one is beside
# the repo, as in CI), small slices of training.
test: setup
	MNISTOPS_DATA_MIRROR=$${MNISTOPS_DATA_MIRROR:-$$( [ -d $(SHARED_MIRROR) ] && echo file://$(SHARED_MIRROR) )} \
	  $(PY) -m pytest -q -p no:cacheprovider $(PYTEST_ARGS)

test-fast: setup
	$(MAKE) test PYTEST_ARGS="-m 'not slow'"

clean:
	rm -rf $(VENV) .mnistops build *.egg-info
