#!/usr/bin/env bash
# One device call, several parts, each under its own time limit; logs and CSVs under $OUT.
#   TSA_BENCH_GIT_SHA=$(git rev-parse HEAD) bash scripts/gpu_session.sh latency tests prefill
# parts: latency batch4 tests tests-all tests-rest prefill prefill-flash sparse latency-sparse ruler ruler-overhead
set -uo pipefail
: "${OUT:?set OUT}"
# The device returns at most 8 files, 2 folders deep: parts write into a scratch folder, and at
# the end everything but caches goes back as one tarball, next to the whole log.
FINAL="$OUT"; OUT=$(mktemp -d); export OUT
exec > >(tee "$FINAL/session.log") 2>&1
trap 'tar czf "$FINAL/session.tgz" --exclude=cache -C "$OUT" . ; ls -la "$FINAL"' EXIT
export PYTHONPATH=. PYTHONUNBUFFERED=1 HF_HUB_OFFLINE=1 TOKENIZERS_PARALLELISM=false TRITON_INTERPRET=0
nvidia-smi --query-gpu=name,clocks.sm,memory.total --format=csv,noheader
for part in "$@"; do
  echo "== $part (t=${SECONDS}s)"
  case "$part" in
    latency)  timeout 200 python3 -m tsa_bench latency --seq-lens 32k,128k --tau 0.005 --keep-ratio 0.675 \
                --dense sdpa-cudnn,sdpa-flash --warmup 2 --budget 0.4 --out-dir "$OUT" 2>&1 | tee "$OUT/$part.log" | tail -14 ;;
    batch4)   timeout 60 python3 -m tsa_bench latency --batch 4 --seq-lens 32k --keep-ratio 0.675 \
                --dense sdpa-cudnn --warmup 2 --budget 0.4 --out-dir "$OUT" 2>&1 | tee "$OUT/$part.log" | tail -4 ;;
    tests)    timeout 120 python3 -m pytest -q -m gpu tests/test_gpu_kernels.py -k "not flex" 2>&1 | tee "$OUT/$part.log" | tail -3 ;;
    prefill)  timeout 330 python3 scripts/gpu_prefill.py --out "$OUT" --backends sdpa-cudnn --no-profile \
                --budget-s 300 2>&1 | tee "$OUT/$part.log" | tail -25 ;;
    sparse)   timeout 300 python3 scripts/gpu_sparse.py --out "$OUT" 2>&1 | tee "$OUT/$part.log" | tail -25 ;;
    prefill-flash)  # the paper's kernel class (FA2): 1 warm-up + 5 runs of dense and TSA at 8k and 128k
              timeout 400 python3 scripts/gpu_prefill.py --out "$OUT" --backends sdpa-flash --no-profile \
                --budget-s 380 2>&1 | tee "$OUT/$part.log" | tail -25 ;;
    latency-sparse) timeout 300 python3 -m tsa_bench latency --method flexprefill,flexprefill+tsa,xattention,xattention+tsa \
                --seq-lens 32k,128k --tau 0.005 --dense sdpa-flash --warmup 2 --budget 0.4 --out-dir "$OUT" 2>&1 | tee "$OUT/$part.log" | tail -14 ;;
    tests-all) timeout 200 python3 -m pytest -q -m gpu tests 2>&1 | tee "$OUT/$part.log" | tail -8 ;;
    tests-rest) timeout 150 python3 -m pytest -q -m gpu tests/test_sparse_block_kernel.py tests/test_sparse_methods.py \
                2>&1 | tee "$OUT/$part.log" | tail -8 ;;   # the GPU tests outside test_gpu_kernels / test_hf_attention
    ruler)    timeout 330 bash scripts/gpu_ruler.sh pipeline 2>&1 | tee "$OUT/$part.log" | tail -15 ;;
    ruler-overhead) timeout 330 bash scripts/gpu_ruler.sh overhead 2>&1 | tee "$OUT/$part.log" | tail -15 ;;
    *) echo "unknown part $part" ;;
  esac
done
echo "== end (t=${SECONDS}s)"
