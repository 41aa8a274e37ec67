# Set up, run the demo, test. Everything installs into .venv on first use.
#
#   make demo    install, run the default toy-world DAG on CPU, render reports/report.html
#   make test    install and run the test suite
#   make lint    ruff, snakefmt and snakemake --lint
#
# PyTorch: the pinned version below is a CPU build on the project's CI machines. For a CUDA
# build, install torch into .venv first (see README, "GPU"), then run make as usual.

VENV ?= .venv
PYTHON ?= python3
TORCH ?= torch==2.13.0
CORES ?= 2
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: install demo report test lint clean

install: $(STAMP)

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -c "import torch" 2>/dev/null || $(BIN)/python -m pip install --quiet "$(TORCH)"
	$(BIN)/python -m pip install --quiet -e ".[dev]"
	touch $(STAMP)

demo: install
	$(BIN)/snakemake --cores $(CORES)
	$(MAKE) report

report: install
	$(BIN)/snakemake --report reports/report.html
	@echo "report: reports/report.html"

test: install
	$(BIN)/python -m pytest -ra

lint: install
	$(BIN)/ruff check src tests workflow benchmarks
	$(BIN)/ruff format --check src tests workflow benchmarks
	$(BIN)/snakefmt --check Snakefile rules
	$(BIN)/snakemake --lint

clean:
	rm -rf results logs .snakemake reports/report.html data/*.parquet
