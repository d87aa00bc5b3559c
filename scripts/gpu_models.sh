#!/usr/bin/env bash
# Real-model GPU runs (issue 10): one device call, several parts; logs, CSVs and predictions
# come back as one log and one tarball under $OUT (the device returns at most 8 files).
#
# The GGUF files travel in parts (a call carries at most 64 MiB): split them into .carry/<dir>/
# (git-ignored), carry one folder per call and stash it, then join and check:
#   bash scripts/gpu_models.sh stash            # copies every carried .carry/*/ part into /tmp/parts
#   bash scripts/gpu_models.sh join engine ruler-smol ...
# parts: stash join engine ruler-smol site524 gemma-check gemma-niah ruler-1gpu ruler-2gpu tests
set -uo pipefail
: "${OUT:?set OUT}"
FINAL="$OUT"; OUT=$(mktemp -d); export OUT
exec > >(tee -a "$FINAL/session.log") 2>&1
trap 'tar czf "$FINAL/session.tgz" --exclude=cache -C "$OUT" . 2>/dev/null; ls -la "$FINAL"' EXIT
export PYTHONPATH=.${PYTHONPATH:+:$PYTHONPATH} PYTHONUNBUFFERED=1 HF_HUB_OFFLINE=1 TOKENIZERS_PARALLELISM=false TRITON_INTERPRET=0
export NCCL_NVLS_ENABLE=0 TORCH_SYMM_MEM_DISABLE_MULTICAST=1 NVSHMEM_DISABLE_NVLS=1
M=/tmp/models
SMOL=$M/SmolLM2-135M-Instruct.Q4_1.gguf
GEMMA=$M/gemma-3-270m-q4_k_m.gguf
SMOL_SHA=b179c9523d0e6a0f98a330c7562b682750a6f8c8c15e5bc70ea373728110db53
GEMMA_SHA=a5fd3b62230aa5ec60212297dc9d20eaa70578ac519e00d93a17e44c087a6818
CTX=${CTX:-4k}; N=${N:-50}
nvidia-smi --query-gpu=name,clocks.sm,memory.total --format=csv,noheader
for part in "$@"; do
  echo "== $part (t=${SECONDS}s)"
  case "$part" in
    stash) mkdir -p /tmp/parts && cp -v .carry/*/* /tmp/parts/ ;;
    join)  mkdir -p $M
           [ -f $SMOL ] || cat /tmp/parts/smol.part* > $SMOL 2>/dev/null
           [ -f $GEMMA ] || { ls /tmp/parts/gem.part* >/dev/null 2>&1 && cat /tmp/parts/gem.part* > $GEMMA; }
           echo "$SMOL_SHA  $SMOL" | sha256sum -c - || rm -f $SMOL
           [ -f $GEMMA ] && { echo "$GEMMA_SHA  $GEMMA" | sha256sum -c - || rm -f $GEMMA; }
           ls -la $M ;;
    engine) timeout 400 python3 scripts/gpu_engine.py --model $SMOL --seq-len $CTX -n 2 --methods dense,tsa \
              --out "$OUT" 2>&1 | tee "$OUT/$part.log" | tail -12 ;;
    ruler-smol) timeout 420 python3 -m tsa_bench ruler --model $SMOL --method dense,tsa --tau 0.005 --seq-lens $CTX \
              -n $N --engine batched --data generated --words builtin --no-progress --out-dir "$OUT/ruler" \
              2>&1 | tee "$OUT/$part.log" | tail -40 ;;
    site524) [ -d /tmp/site524 ] || python3 -m pip install -q --no-index --no-deps --no-compile --target /tmp/site524 \
              .whl524/*.whl ;;   # transformers 5.24 (carry .whl524): 5.17 breaks Gemma's GGUF tokenizer
    gemma-check) timeout 200 python3 scripts/gemma_stack_check.py --gguf $GEMMA --device cuda --dtype fp32 \
              --attn sdpa,eager --out "$OUT/gemma-517" 2>&1 | tee "$OUT/$part.log" | tail -12
           PYTHONPATH=/tmp/site524:$PYTHONPATH timeout 200 python3 scripts/gemma_stack_check.py --gguf $GEMMA \
              --device cuda --dtype fp32 --attn sdpa,eager --out "$OUT/gemma-524" 2>&1 | tee -a "$OUT/$part.log" | tail -12 ;;
    gemma-niah) PYTHONPATH=/tmp/site524:$PYTHONPATH timeout 400 python3 -m tsa_bench ruler --model $GEMMA --method dense \
              --seq-lens ${GEMMA_CTX:-4k,8k,16k,32k} --tasks niah_single_1,niah_single_2,niah_single_3,niah_multikey_1 \
              -n ${GEMMA_N:-20} --template base --engine batched --data generated --words builtin --no-progress \
              --out-dir "$OUT/ruler" 2>&1 | tee "$OUT/$part.log" | tail -16 ;;
    ruler-1gpu) CUDA_VISIBLE_DEVICES=0 timeout 300 python3 -m tsa_bench ruler --model $SMOL --method ${METHODS:-dense,tsa} \
              --seq-lens $CTX -n $N --engine batched --data generated --words builtin --no-progress \
              --out-dir /tmp/runs/one 2>&1 | tee "$OUT/$part.log" | grep -v Convert | tail -40
           mkdir -p "$OUT/one" && cp -r /tmp/runs/one/* "$OUT/one/" ;;
    ruler-2gpu) timeout 300 torchrun --standalone --nproc_per_node 2 -m tsa_bench ruler --model $SMOL --method dense \
              --seq-lens $CTX -n $N --engine batched --data generated --words builtin --no-progress \
              --out-dir /tmp/runs/two 2>&1 | tee "$OUT/$part.log" | grep -v Convert | tail -20
           mkdir -p "$OUT/two" && cp -r /tmp/runs/two/* "$OUT/two/"
           python3 scripts/compare_runs.py /tmp/runs/one/preds/*-dense-*.jsonl /tmp/runs/two/preds/*-dense-*.jsonl \
              $(ls -t /tmp/runs/one/*.csv | tail -1) $(ls /tmp/runs/two/*.csv) 2>&1 | tee "$OUT/compare.log" ;;
    tests) timeout 200 python3 -m pytest -q -m gpu tests 2>&1 | tee "$OUT/$part.log" | tail -8 ;;
    *) echo "unknown part $part" ;;
  esac
done
echo "== end (t=${SECONDS}s)"
