# Two entry points for a fresh machine: `make demo` and `make test` (`make test-fast`: only the tests without
# Ray). Both create .venv when missing and install torch==2.13.0 first (a CPU build from a local file), so
# nothing pulls CUDA wheels.
PY      ?= python3
VENV    := .venv
BIN     := $(VENV)/bin
STAMP   := $(VENV)/.dpost-installed
KERNEL  := $(VENV)/.dpost-kernel-built
# DeepSpeed JIT-builds its CPU comm op on first use, and dpost its CPU decode-attention kernel (in setup), into
# the venv's own torch_extensions folder (trainers/jit.py), so `make` and a plain `.venv/bin/dpost` share them.
export OMP_NUM_THREADS := 1
export TOKENIZERS_PARALLELISM := false
export RAY_DEDUP_LOGS := 0

.PHONY: setup demo test test-fast bench experiments clean

$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PY) -m venv $(VENV)
	$(BIN)/python -c "import torch" 2>/dev/null || $(BIN)/pip install -q torch==2.13.0
	$(BIN)/pip install -q -e ".[dev]"
	touch $(STAMP)

# Rebuilt here when its source changes, so a stale build is not redone inside a run's first decode.
$(KERNEL): $(STAMP) trainers/engine/csrc/decode_attention.cpp
	$(BIN)/python -m trainers.engine.decode_attention
	touch $(KERNEL)

setup: $(KERNEL)

demo: $(KERNEL)
	$(BIN)/dpost run configs/demo.yaml

# Everything, integration on real Ray included (CI runs this).
test: $(KERNEL)
	$(BIN)/python -m pytest -q -p no:cacheprovider --durations=25 tests

# Every test that starts no Ray (tests/conftest.py marks each one that does `ray`).
test-fast: $(KERNEL)
	$(BIN)/python -m pytest -q -p no:cacheprovider --durations=10 -m "not ray" tests

bench: $(KERNEL)
	$(BIN)/python benchmarks/sampler.py
	$(BIN)/python benchmarks/train.py

# The paper's comparison: SFT vs ST vs DPO-ST, 3 seeds x 3 iterations, paired on a shared warm-up per seed, with
# 95% intervals (cluster/experiment.py). Finished cells are kept: running it again only redoes the aggregate.
experiments: $(KERNEL)
	$(BIN)/dpost experiment configs/matrix/paper.yaml

clean:
	rm -rf runs .pytest_cache
