# Two commands: `make demo` and `make test`. Each creates the virtual environment on first use.
VENV ?= .venv
PY := $(VENV)/bin/python
# torch first, pinned: this pair installs from local files on the reference machines and has a
# matching torchvision (needed by timm); an unpinned torch would pull a multi-GB download.
TORCH ?= torch==2.14.1 torchvision==0.29.1

.PHONY: install demo test lint

$(VENV)/.installed: pyproject.toml
	python3 -m venv $(VENV)
	$(PY) -m pip install $(TORCH)
	$(PY) -m pip install -e '.[dev]'
	touch $@

install: $(VENV)/.installed

demo: install
	$(PY) -m dm_lightning.recipes.demo

# Two workers with one thread each fill 2 cores (each file runs whole on one worker, so module
# fixtures are built once); then the two-"node" torchrun tests alone, since their gloo ranks
# share the cores and a third busy process made a resumed two-node fit miss its timeout.
# `$(PY) -m pytest -q` runs the same suite in one process.
TEST_WORKERS ?= 2
SERIAL_TESTS := tests/test_multinode.py
test: install
	OMP_NUM_THREADS=$${OMP_NUM_THREADS:-1} $(PY) -m pytest -q -n $(TEST_WORKERS) --dist loadfile \
		$(addprefix --ignore=,$(SERIAL_TESTS))
	OMP_NUM_THREADS=$${OMP_NUM_THREADS:-1} $(PY) -m pytest -q $(SERIAL_TESTS)

lint: install
	$(VENV)/bin/ruff check dm_lightning tools tests
