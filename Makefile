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
	$(PY) -m dm_lightning.demo

test: install
	$(PY) -m pytest -q

lint: install
	$(VENV)/bin/ruff check dm_lightning tools tests
