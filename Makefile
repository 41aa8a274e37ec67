# Set up, run the demo, test. Everything installs into .venv on first use.
#
#   make demo    install, run the default toy-world DAG on CPU, render reports/report.html
#   make test    install and run the test suite
#   make lint    ruff, snakefmt and snakemake --lint
#   make slurm-profile   let `snakemake --profile slurm` find profiles/slurm (see README)
#
# PyTorch: the pinned version below is a CPU build on the project's CI machines. For a CUDA
# build, install torch into .venv first (see README, "GPU"), then run make as usual.

VENV ?= .venv
PYTHON ?= python3
TORCH ?= torch==2.13.0
CORES ?= 2
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

# Where Snakemake looks up a profile given by name (`--profile slurm`).
PROFILE_HOME ?= $(or $(XDG_CONFIG_HOME),$(HOME)/.config)/snakemake

.PHONY: install demo report test lint clean slurm-profile

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

# `snakemake --profile slurm` looks for a profile *named* slurm in Snakemake's config
# folders, not in profiles/. Link it there, to this project's copy, so edits stay in one
# place; a different profile of that name is left alone.
slurm-profile:
	@mkdir -p "$(PROFILE_HOME)"
	@if [ -e "$(PROFILE_HOME)/slurm" ] && \
	    [ "$$(readlink -f "$(PROFILE_HOME)/slurm")" != "$$(readlink -f profiles/slurm)" ]; then \
	  echo "$(PROFILE_HOME)/slurm exists and is not this project's profile;" \
	    "move it away or use --profile profiles/slurm" >&2; exit 1; fi
	@ln -sfn "$(CURDIR)/profiles/slurm" "$(PROFILE_HOME)/slurm"
	@echo "snakemake --profile slurm now uses $(CURDIR)/profiles/slurm"

clean:
	rm -rf results logs .snakemake reports/report.html data/*.parquet
