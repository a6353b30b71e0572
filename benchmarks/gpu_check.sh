#!/usr/bin/env bash
# The GPU check: the demo's stages with `use_gpu: true` (NCCL, bf16, DeepSpeed ZeRO-2) and the sampler
# benchmark on the GPU, in one script that fits in 10 minutes on a machine with one NVIDIA GPU and >= 8 cores.
#
#     bash benchmarks/gpu_check.sh [OUT_DIR]        # default OUT_DIR: benchmarks/results/gpu_check
#
# NOT RUN YET: the machines this project is developed and tested on have no GPU, so this script has never run
# end to end. It is prepared for the first task that is lent one; read its output as a first contact, and
# fix what breaks there.
#
# What it needs: Python 3.11 and network access to PyPI (a CUDA build of torch, several GB), or a `.venv`
# whose torch already sees the GPU. What it does, each step timed and logged under OUT_DIR:
#   1. environment: nvidia-smi, torch's CUDA and NCCL versions, bf16 support;
#   2. `dpost run configs/gpu-demo.yaml`: the demo (data, warm-up SFT, one DPO-ST iteration, evaluation,
#      report) with training on the GPU through Ray Train (one worker, NCCL, bf16, ZeRO-2); sampling and
#      serving stay on CPU replicas (services/sampler.py loads replicas on the CPU);
#   3. `benchmarks/sampler.py --device cuda`: the continuous-batching engine in bf16 on the GPU on the run's
#      sft-1, batch 1 / 8 / 32 / 128, calculator on and off (decoding section only);
#   4. a summary: the stage times from the run's manifest and the decode table.
# Budget: step 2 about 5 minutes (the CPU demo takes 10 on 2 cores; here training leaves the CPU and 6 rollout
# replicas sample), step 3 about 2; each step has its own timeout so one hang cannot eat the rest.
set -uo pipefail

cd "$(dirname "$0")/.."
OUT="${1:-benchmarks/results/gpu_check}"
mkdir -p "$OUT"
START=$(date +%s)
log() { echo "[gpu_check $(( $(date +%s) - START ))s] $*" | tee -a "$OUT/summary.txt"; }

# --- 0. a python whose torch sees the GPU -------------------------------------------------------------------
PY=.venv/bin/python
if ! "$PY" -c "import torch, sys; sys.exit(0 if torch.cuda.is_available() else 1)" 2>/dev/null; then
  log "no CUDA torch in .venv: building .venv-gpu (pip install -e . with PyPI's CUDA torch)"
  python3 -m venv .venv-gpu && .venv-gpu/bin/pip install -q -e . >"$OUT/pip.log" 2>&1 \
    || { log "pip install failed, see $OUT/pip.log"; exit 1; }
  PY=.venv-gpu/bin/python
fi
export PATH="$(dirname "$PY"):$PATH"

# --- 1. environment -----------------------------------------------------------------------------------------
nvidia-smi >"$OUT/nvidia-smi.txt" 2>&1 || log "nvidia-smi failed"
"$PY" - <<'EOF' 2>&1 | tee "$OUT/env.txt"
import torch
print("torch", torch.__version__, "cuda", torch.version.cuda, "gpus", torch.cuda.device_count())
print("device", torch.cuda.get_device_name(0), "bf16", torch.cuda.is_bf16_supported())
print("nccl", torch.cuda.nccl.version())
EOF

# --- 2. the demo's stages with use_gpu: true ----------------------------------------------------------------
RUN_DIR=runs/gpu-demo
rm -rf "$RUN_DIR"
log "dpost run configs/gpu-demo.yaml"
T0=$(date +%s)
timeout 420 "$(dirname "$PY")/dpost" run configs/gpu-demo.yaml --exit-when-done >"$OUT/run.log" 2>&1
RC=$?
log "dpost run: exit $RC after $(( $(date +%s) - T0 )) s (log: $OUT/run.log)"
cp "$RUN_DIR/manifest.json" "$OUT/manifest.json" 2>/dev/null || log "no manifest written"
"$PY" - "$OUT/manifest.json" <<'EOF' 2>&1 | tee -a "$OUT/summary.txt"
import json, sys
try:
    stages = json.load(open(sys.argv[1]))["stages"]
except (OSError, KeyError, ValueError) as exc:
    sys.exit(f"no stage times: {exc}")
for name, stage in stages.items():
    print(f"  {name:<24} {stage.get('status', '?'):<8} {stage.get('seconds', '-')} s")
EOF
grep -hiE "nccl|bf16|zero|cuda|error" "$OUT/run.log" | head -40 >"$OUT/run-highlights.txt"

# --- 3. the sampler benchmark on the GPU --------------------------------------------------------------------
CKPT="$RUN_DIR/checkpoints/sft-1"
[ -d "$CKPT" ] || CKPT=""
log "sampler benchmark on cuda (${CKPT:-a small model trained in-process})"
T0=$(date +%s)
timeout 240 "$PY" benchmarks/sampler.py ${CKPT:+--checkpoint "$CKPT"} --device cuda --skip-http \
  --batch-sizes 1,8,32,128 --repeats 2 --min-cell-s 2 --out "$OUT/sampler-cuda.json" >"$OUT/sampler.log" 2>&1
log "sampler: exit $? after $(( $(date +%s) - T0 )) s"
sed -n '/### decoding/,/calculator overhead/p' "$OUT/sampler.log" | tee -a "$OUT/summary.txt"

log "done in $(( $(date +%s) - START )) s; results in $OUT"
