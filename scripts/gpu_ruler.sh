#!/usr/bin/env bash
# RULER pipeline on the GPU, offline: generate -> evaluate -> score -> CSV, at 4K and 32K, with a
# tiny random-weight model (preset tiny-llama) and the project's own tokenizer and corpora (no hub,
# no datasets, no lm-eval needed). Then the runner-overhead timing at 32K.
#
#   OUT=/some/dir bash scripts/gpu_ruler.sh pipeline   # ~5 min: ruler dense+tsa, resume check, niah sweep
#   OUT=/some/dir bash scripts/gpu_ruler.sh overhead   # ~5 min: runner vs bare generate, Llama-3.1-8B shape
#   OUT=/some/dir bash scripts/gpu_ruler.sh genbench   # ~3 min: generator speed, 13 x 6 x 32 samples
# Everything is written under $OUT (CSVs, prediction JSONLs, logs).
set -euo pipefail
: "${OUT:?set OUT to an output directory}"
PY=${PYTHON:-python3}
export PYTHONPATH=. HF_HUB_OFFLINE=1 HF_DATASETS_OFFLINE=1 TOKENIZERS_PARALLELISM=false
export TSA_BENCH_CACHE="$OUT/cache"
mkdir -p "$OUT"
DEVICE=${DEVICE:-cuda} LENS=${LENS:-4k,32k} N=${N:-4}      # overridable for a CPU rehearsal
COMMON=(--model tiny-llama --weights random --tokenizer toy --data generated --words builtin
        --device "$DEVICE" --dtype bf16 --no-progress)
EXPECT=$(( 13 * $(tr ',' '\n' <<< "$LENS" | wc -l) * N ))

pipeline() {
  for m in dense tsa; do
    $PY -m tsa_bench ruler "${COMMON[@]}" --method "$m" --tau 0.005 --seq-lens "$LENS" -n "$N" \
        --out-dir "$OUT/ruler" 2>&1 | tee "$OUT/ruler_$m.log"
  done
  # resume: the same command again must find every sample already scored and run none
  $PY -m tsa_bench ruler "${COMMON[@]}" --method tsa --tau 0.005 --seq-lens "$LENS" -n "$N" \
      --out-dir "$OUT/ruler" 2>&1 | tee "$OUT/ruler_tsa_resume.log"
  if grep -q "($EXPECT already scored)" "$OUT/ruler_tsa_resume.log"; then echo "resume check: OK ($EXPECT scored, nothing re-run)"; else echo "resume check: FAILED"; exit 1; fi
  $PY -m tsa_bench niah "${COMMON[@]}" --method tsa --tau 0.005 --seq-lens "$LENS" --depths 5 \
      --out-dir "$OUT/niah" 2>&1 | tee "$OUT/niah_tsa.log"
}

overhead() {
  $PY scripts/ruler_overhead.py --out "$OUT/overhead" --model llama-3.1-8b --weights random \
      --method dense --seq-len 32k 2>&1 | tee "$OUT/overhead_dense.log"
}

genbench() {
  $PY -m tsa_bench ruler --bench-generate --tokenizer toy --data generated --words builtin \
      --seq-lens 4k..128k -n 32 --no-progress 2>&1 | tee "$OUT/genbench.log"
}

"${1:-pipeline}"
