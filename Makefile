# fedgmi: `make run` trains FedGMI on MNIST, `make test` runs the test suite, `make docs` builds
# the documentation site. Each creates the virtual environment and installs the package on first use.

PYTHON   ?= python3
VENV     ?= .venv
BIN      := $(VENV)/bin
STAMP    := $(VENV)/.installed-stamp
DOCS_STAMP := $(VENV)/.docs-installed-stamp
CONFIG   ?= configs/pm_mnist.yaml
# Where the datasets are: FEDGMI_DATA_DIR if set; else ../shared/data when it exists (the
# offline MNIST test split next to the checkout, as on our CI machines); else ./data, where
# torchvision downloads the full MNIST on first use.
FEDGMI_DATA_DIR ?= $(if $(wildcard ../shared/data),../shared/data,data)
export FEDGMI_DATA_DIR
export WANDB_MODE ?= offline

.PHONY: setup run run-digits test test-slow lint docs clean

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e ".[dev]"
	touch $(STAMP)

setup: $(STAMP)

run: $(STAMP)
	$(BIN)/fedgmi fit --config $(CONFIG)

run-digits: $(STAMP)
	$(BIN)/fedgmi fit --config configs/pm_digits.yaml

test: $(STAMP)
	$(BIN)/python -m pytest

test-slow: $(STAMP)
	$(BIN)/python -m pytest -m slow

lint: $(STAMP)
	$(BIN)/ruff check fedgmi tests

$(DOCS_STAMP): $(STAMP)
	$(BIN)/python -m pip install --quiet -e ".[docs]"
	touch $(DOCS_STAMP)

# The documentation site (mkdocs.yml) into site/; strict: any warning fails the build.
# NO_MKDOCS_2_WARNING silences mkdocs-material's banner about MkDocs 2 (not a build warning).
docs: $(DOCS_STAMP)
	NO_MKDOCS_2_WARNING=1 $(BIN)/mkdocs build --strict

clean:
	rm -rf runs site .pytest_cache
