#!/usr/bin/env bash
# Every GPU measurement of benchmarks/README.md in one call, for a lent GPU machine with a short lease.
#
#   bash benchmarks/gpu_session.sh [OUTDIR]        # OUTDIR defaults to benchmarks/gpu_results
#
# Runs from the repository root without installing the project (PYTHONPATH), on whatever torch and
# Lightning the machine has (versions are written to OUTDIR/env.txt). Each step has its own time limit
# and writes its own files, so one step failing still leaves the others' results:
#   env.txt                  card, driver, versions
#   scoring_resnet50.json    one PX round of torchvision resnet50, 10 x 64 at 224: API vs published structure
#   threshold_resnet50.json  the global threshold on resnet50's 25.5M scores
#   gpu_callback.json        ForesightPruningCallback fit: scoring on the GPU, masked/dense step time
#   precision_resnet50.json  PX scores and masks with TF32, without, and in float64 (10 rounds)
#   log.txt                  everything printed, with the tests that need a CUDA device (skipped on a CPU)
set -u
cd "$(dirname "$0")/.."
out="${1:-benchmarks/gpu_results}"
mkdir -p "$out"
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}" PYTHONUNBUFFERED=1
py="${PYTHON:-python3}"

step() {  # step NAME SECONDS COMMAND...
  local name=$1 limit=$2
  shift 2
  echo "=== $name (limit ${limit}s): $*"
  local start=$SECONDS
  timeout "$limit" "$@"
  echo "=== $name: exit $? after $((SECONDS - start))s"
}

{
  nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader
  "$py" -c "import torch, torchvision, lightning; print('torch', torch.__version__, 'cuda', torch.version.cuda,
'torchvision', torchvision.__version__, 'lightning', lightning.__version__)"
} >"$out/env.txt" 2>&1
cat "$out/env.txt"

{
  step scoring 120 "$py" benchmarks/scoring.py --model resnet50 --device cuda --repeats 5 \
    --json "$out/scoring_resnet50.json"
  step threshold 60 "$py" benchmarks/scoring.py --model resnet50 --threshold --device cuda --repeats 5 \
    --no-memory --json "$out/threshold_resnet50.json"
  step callback 240 "$py" benchmarks/gpu_callback.py --out "$out/gpu_callback.json"
  step precision 120 "$py" benchmarks/gpu_precision.py --rounds 10 --repeats 3 \
    --json "$out/precision_resnet50.json"
  step contracts 60 "$py" -m pytest -q -p no:cacheprovider tests/test_design_contracts.py \
    -k moved_to_the_models_device
} 2>&1 | tee "$out/log.txt"
