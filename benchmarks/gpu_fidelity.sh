#!/usr/bin/env bash
# On a machine with one CUDA GPU: profile it with the runtime's own code, plan a one-GPU run
# of a real model, estimate it (analytic, and on the profile), train it for real (bf16, fp32
# master weights), calibrate, and run the GPU tests. Every file lands in $OUT (default out/gpu).
#
#   OUT=out/gpu CHIP=h200 bash benchmarks/gpu_fidelity.sh
#
# Figures recorded in benchmarks/RESULTS-gpu.md. Needs torch with CUDA, pydantic, PyYAML,
# rich, numpy (PYTHONPATH=src is enough: no install of polychip).
set -uo pipefail
OUT=${OUT:-out/gpu}
CHIP=${CHIP:-h200}
CLUSTER=${CLUSTER:-examples/clusters/h200-1.yaml}
MODEL=${MODEL:-examples/models/tinyllama-1.1b}
BATCH=${BATCH:-8}
SEQ=${SEQ:-2048}
STEPS=${STEPS:-12}
DEVICE=${DEVICE:-cuda}
PRECISION=${PRECISION:-bf16}
MICRO=${MICRO:-1,2,4,8}
mkdir -p "$OUT"
export PYTHONPATH="$PWD/src${PYTHONPATH:+:$PYTHONPATH}" PYTHONUNBUFFERED=1
pc() { echo "+ polychip $*"; python3 -m polychip "$@"; }
nvidia-smi --query-gpu=name,memory.total,clocks.max.sm,driver_version --format=csv 2>&1 | tee "$OUT/gpu.txt"
python3 -c "import torch, sys; print('python', sys.version.split()[0], 'torch', torch.__version__)" | tee -a "$OUT/gpu.txt"
pc profile --device "$DEVICE" --chip "$CHIP" --model "$MODEL" --precision "$PRECISION" --tp 1 \
   --micro-batches "$MICRO" --seq-lens "$SEQ" --collective-ranks 0 --out "$OUT/profile.json"
pc plan "$CLUSTER" --model "$MODEL" --global-batch "$BATCH" --seq-len "$SEQ" \
   --precision "$PRECISION" --out "$OUT/plan.json"
pc estimate "$OUT/plan.json" --json "$OUT/estimate-analytic.json"
pc estimate "$OUT/plan.json" --profile "$OUT/profile.json" --json "$OUT/estimate-profiled.json"
pc train "$OUT/plan.json" --check
pc train "$OUT/plan.json" --steps "$STEPS" --metrics "$OUT/metrics.jsonl" 2>&1 | tee "$OUT/train.txt"
pc calibrate "$OUT/metrics.jsonl" "$OUT/plan.json" --profile "$OUT/profile.json" \
   --out "$OUT/profile-calibrated.json" --json "$OUT/calibrate.json"
[ "$DEVICE" = cuda ] && python3 -m pytest -q -p no:cacheprovider tests/runtime/test_gpu.py tests/runtime/test_gpu_pipeline.py 2>&1 | tail -5 | tee "$OUT/gpu-tests.txt"
