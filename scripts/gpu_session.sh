#!/usr/bin/env bash
# One device call, several parts, each under its own time limit; logs and CSVs under $OUT.
#   TSA_BENCH_GIT_SHA=$(git rev-parse HEAD) bash scripts/gpu_session.sh latency tests prefill
set -uo pipefail
: "${OUT:?set OUT}"
export PYTHONPATH=. PYTHONUNBUFFERED=1 HF_HUB_OFFLINE=1 TOKENIZERS_PARALLELISM=false TRITON_INTERPRET=0
nvidia-smi --query-gpu=name,clocks.sm,memory.total --format=csv,noheader
for part in "$@"; do
  case "$part" in
    latency)  timeout 200 python3 -m tsa_bench latency --seq-lens 32k,128k --tau 0.005 --keep-ratio 0.675 \
                --dense sdpa-cudnn,sdpa-flash --warmup 2 --budget 0.4 --out-dir "$OUT" 2>&1 | tail -14 ;;
    batch4)   timeout 60 python3 -m tsa_bench latency --batch 4 --seq-lens 32k --keep-ratio 0.675 \
                --dense sdpa-cudnn --warmup 2 --budget 0.4 --out-dir "$OUT" 2>&1 | tail -4 ;;
    tests)    timeout 120 python3 -m pytest -q -m gpu tests/test_gpu_kernels.py -k "not flex" 2>&1 | tail -3 ;;
    prefill)  timeout 330 python3 scripts/gpu_prefill.py --out "$OUT" --backends sdpa-cudnn --no-profile \
                --budget-s 300 2>&1 | tail -25 ;;
    sparse)   timeout 300 python3 scripts/gpu_sparse.py --out "$OUT" 2>&1 | tail -25 ;;
    *) echo "unknown part $part" ;;
  esac
done
