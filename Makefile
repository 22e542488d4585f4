# Entry points for people: `make run` (the main job), `make ui` (look at the runs), `make test`.
# Each sets up .venv first, printing one line per step; pip's own output goes to .venv/install.log.
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
ENV ?= dev
SHARED_MIRROR := $(abspath ..)/shared/datasets/mnist
# the canonical MNIST files beside the repo (CI), else whatever MNISTOPS_DATA_MIRROR says, else the public mirrors
MIRROR := $${MNISTOPS_DATA_MIRROR:-$$( [ -d $(SHARED_MIRROR) ] && echo file://$(SHARED_MIRROR) )}
PYTEST := $(PY) -m pytest -q -p no:cacheprovider --durations=30

.PHONY: run ui test test-unit setup clean

$(VENV)/.installed: pyproject.toml
	@echo "setup: creating $(VENV) with $$($(PYTHON) --version)"
	@$(PYTHON) -m venv $(VENV)
	@echo "setup: installing mnistops and its dependencies (a few minutes the first time; log: $(VENV)/install.log)"
	@{ $(PY) -m pip install --upgrade pip && $(PY) -m pip install -e ".[test]"; } > $(VENV)/install.log 2>&1 \
	  || { tail -n 30 $(VENV)/install.log; echo "setup: pip failed; the whole log is $(VENV)/install.log"; exit 1; }
	@touch $@
	@echo "setup: done ($$($(PY) -m pip list --format=freeze 2>/dev/null | wc -l) packages in $(VENV))"

setup: $(VENV)/.installed

# The main job: data -> train -> evaluate -> register in the dev env (local stores in ./.mnistops).
run: setup
	@echo "run: python -m mnistops $(ARGS)"
	@$(PY) -m mnistops $(ARGS)

# The MLflow UI on an env's store (runs, metrics, plots, the registry): make ui ENV=qa
ui: setup
	@$(PY) -m mnistops env=$(ENV) stage=ui $(ARGS)

# Everything: the unit tier and the integration tier (real MLflow stores, real MNIST through a
# file:// mirror when one is beside the repo, as in CI, small slices of training, real servers).
# Two xdist workers, each taking whole test modules (module fixtures stay shared), longest first.
TEST_WORKERS ?= 2
test: setup
	MNISTOPS_DATA_MIRROR=$(MIRROR) $(PYTEST) -n $(TEST_WORKERS) --dist loadfile --no-loadscope-reorder $(PYTEST_ARGS)

# The unit tier (under 2 minutes): nothing trains, no server starts, no CLI subprocess.
test-unit: setup
	MNISTOPS_DATA_MIRROR=$(MIRROR) $(PYTEST) -m unit $(PYTEST_ARGS)

clean:
	rm -rf $(VENV) .mnistops build *.egg-info
