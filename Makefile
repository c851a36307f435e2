# Two commands do all the set-up on a fresh machine: `make test` and `make demo`.
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
PIP := $(PY) -m pip
# torch and torchvision are pinned as a pair that imports together on this machine (taken from local disk).
TORCH_PIN := torch==2.14.1 torchvision==0.29.1

.PHONY: test demo setup lint clean

$(VENV)/.torch-installed:
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PIP) install --quiet --upgrade pip
	$(PIP) install --quiet $(TORCH_PIN)
	touch $@

$(VENV)/.efldet-installed: $(VENV)/.torch-installed pyproject.toml
	$(PIP) install --quiet -e ".[test,tensorboard,export]" $(TORCH_PIN)
	touch $@

# The optional Ultralytics extra (AGPL-3.0, never vendored) for the integration tests only; `make demo` skips it.
$(VENV)/.ultralytics-installed: $(VENV)/.efldet-installed
	$(PIP) install --quiet -e ".[ultralytics]" $(TORCH_PIN)
	touch $@

setup: $(VENV)/.efldet-installed

test: setup $(VENV)/.ultralytics-installed
	$(PY) -m ruff check efldet tests benchmarks
	$(PY) -m pytest -q -p no:cacheprovider tests

demo: setup
	$(VENV)/bin/efldet demo

lint: setup
	$(PY) -m ruff check efldet tests benchmarks

clean:
	rm -rf $(VENV) runs build *.egg-info
