# Two entry points for a fresh machine: `make demo` and `make test` (`make test-fast`: only the tests without
# Ray). Both create .venv when missing and install torch==2.13.0 first (a CPU build from a local file), so
# nothing pulls CUDA wheels.
PY      ?= python3
VENV    := .venv
BIN     := $(VENV)/bin
STAMP   := $(VENV)/.dpost-installed
# DeepSpeed JIT-builds its CPU comm op on first use; keep the build in the venv so it happens once.
export TORCH_EXTENSIONS_DIR := $(CURDIR)/$(VENV)/torch_extensions
export OMP_NUM_THREADS := 1
export TOKENIZERS_PARALLELISM := false
export RAY_DEDUP_LOGS := 0

.PHONY: setup demo test test-fast bench experiments clean

$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PY) -m venv $(VENV)
	$(BIN)/python -c "import torch" 2>/dev/null || $(BIN)/pip install -q torch==2.13.0
	$(BIN)/pip install -q -e ".[dev]"
	touch $(STAMP)

setup: $(STAMP)

demo: $(STAMP)
	$(BIN)/dpost run configs/demo.yaml

# Everything, integration on real Ray included (CI runs this).
test: $(STAMP)
	$(BIN)/python -m pytest -q -p no:cacheprovider --durations=25 tests

# Every test that starts no Ray (tests/conftest.py marks each one that does `ray`).
test-fast: $(STAMP)
	$(BIN)/python -m pytest -q -p no:cacheprovider --durations=10 -m "not ray" tests

bench: $(STAMP)
	$(BIN)/python benchmarks/sampler.py
	$(BIN)/python benchmarks/train.py

# The paper's SFT vs ST vs DPO-ST comparison, 3 iterations each (about an hour on 2 cores), then the table
# with the calculator ablation. A finished run is kept: running it again only redoes the table.
experiments: $(STAMP)
	$(BIN)/dpost run configs/experiments/st.yaml --exit-when-done
	$(BIN)/dpost run configs/experiments/dpo-st.yaml --exit-when-done
	$(BIN)/python benchmarks/compare_runs.py runs/compare-st runs/compare-dpo-st

clean:
	rm -rf runs .pytest_cache
