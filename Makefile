# Set up, run the demo, test. Everything installs into .venv on first use.
#
#   make demo    install, run the default toy-world DAG on CPU, render reports/report.html
#   make test    install and run the test suite (all but the longest end-to-end runs)
#   make test-e2e   the end-to-end runs of the DAG, also through a local Slurm cluster
#   make lint    ruff, snakefmt and snakemake --lint
#   make slurm-profile   let `snakemake --profile slurm` find profiles/slurm (see README)
#   make test-transformers-floor   the engine tests on the oldest transformers allowed
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

.PHONY: install demo report test test-e2e lint clean slurm-profile

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

# The suite but its longest end-to-end runs (minutes each: the toy DAG's runs, the Slurm
# cluster), which `make test-e2e` runs; the rehearsal of the paper run is in both.
test: install
	$(BIN)/python -m pytest -ra -m "not slow and not slurm"

test-e2e: install
	$(BIN)/python -m pytest -ra -m "slow or slurm"

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

# The engine, truncation, LogitLens and patching tests on the oldest transformers
# pyproject.toml allows, installed beside the venv's own (not over it) and put first on
# PYTHONPATH. It needs an older huggingface_hub
# (< 2: the one that talks httpx), tokenizers (<= 0.23.0) and kernels (0.12: newer ones refuse
# 5.5's hub-kernel table at import) than the latest transformers;
# they are installed with it, --no-deps keeps torch, numpy and the rest the venv's.
# `make test-transformers-floor TRANSFORMERS_FLOOR=5.4.0` passes too, except for OLMoE,
# whose 5.4.0 config the huggingface_hub 1.x of today rejects (see pyproject.toml).
TRANSFORMERS_FLOOR ?= 5.5.0
FLOOR := $(VENV)/transformers-$(TRANSFORMERS_FLOOR)
FLOOR_PACKAGES := "transformers==$(TRANSFORMERS_FLOOR)" "huggingface_hub>=1.5,<2" "kernels>=0.12,<0.13" \
	"tokenizers>=0.22,<=0.23.0" "httpx<1" "httpcore<2"
FLOOR_TESTS := tests/test_engine.py tests/test_rolling.py tests/test_power.py \
	tests/test_model_families.py tests/test_truncation.py tests/test_logit_lens.py \
	tests/test_patching.py

.PHONY: test-transformers-floor
test-transformers-floor: install
	@if [ ! -f "$(FLOOR)/.installed" ]; then \
	  $(BIN)/python -m pip install --quiet --no-deps --target "$(FLOOR)" $(FLOOR_PACKAGES) && \
	  touch "$(FLOOR)/.installed"; fi
	PYTHONPATH="$(FLOOR)" $(BIN)/python -c "import sys, transformers as t; v = t.__version__; \
	  sys.exit(0 if v == '$(TRANSFORMERS_FLOOR)' else f'found transformers {v}, not $(TRANSFORMERS_FLOOR)')"
	PYTHONPATH="$(FLOOR)" $(BIN)/python -m pytest -q $(FLOOR_TESTS)
