#!/usr/bin/env bash
# Gemma-3-270M at 32K with TSA in its three global layers (issue 12), resuming the dense
# predictions of the earlier NIAH run (carried in .gpre/). Parts of the GGUF were stashed into
# /tmp/parts by earlier calls (`mkdir -p /tmp/parts && cp .carry/*/* /tmp/parts/`).
set -uo pipefail
: "${OUT:?set OUT}"
export PYTHONUNBUFFERED=1 HF_HUB_OFFLINE=1 TOKENIZERS_PARALLELISM=false
M=/tmp/models; GEMMA=$M/gemma-3-270m-q4_k_m.gguf
mkdir -p $M /tmp/g32/preds
[ -f $GEMMA ] || cat /tmp/parts/gem.part* > $GEMMA
echo "a5fd3b62230aa5ec60212297dc9d20eaa70578ac519e00d93a17e44c087a6818  $GEMMA" | sha256sum -c - || exit 1
python3 -m pip install -q --no-index --no-deps --no-compile --target /tmp/site .whl/*.whl
python3 -m pip install -q --no-index --no-deps --no-compile --target /tmp/site524 .whl524/*.whl
cp /tmp/gpre/*.jsonl /tmp/g32/preds/ 2>/dev/null
export PYTHONPATH=.:/tmp/site524:/tmp/site
timeout ${LIMIT:-230} python3 -m tsa_bench ruler --model $GEMMA --method dense,tsa --template base \
  --tau 0.005,0.02 --sparse-layers "all=5,11,17" --seq-lens 32k \
  --tasks niah_single_1,niah_single_2,niah_single_3,niah_multikey_1 -n 20 --decode-attention grouped \
  --engine batched --data generated --words builtin --no-progress --out-dir /tmp/g32 2>&1 \
  | grep -v "Convert\|Loading weights" | tail -40
tar czf "$OUT/g32.tgz" -C /tmp g32
