"""Issue-4 GPU run: end-to-end prefill of random-weight Llama-3.1-8B, dense vs TSA.

    PYTHONPATH=. python3 scripts/gpu_prefill.py --out $OUT            # H100, under 8 minutes
    PYTHONPATH=. python3 scripts/gpu_prefill.py --out /tmp/x --tiny   # CPU smoke run, tiny preset

Setup (issue 4): bf16, batch 1, 8K and 128K prompts, the preset's 16 of 32 layers sparse
(15-30, the paper's list, i.e. half the layers), keep ratio 0.675, TSA against the same
dense kernel: sdpa-flash (FlashAttention-2 in torch SDPA, the paper's baseline kernel), then
sdpa-cudnn if the time budget allows. 1 warm-up + 5 timed runs (CUDA events) per cell;
logits for the last token only; KV cache built. Writes the tidy CSV of `tsa-bench prefill`
under --out and prints the targets (>= 1.25x at 128K, <= 3% cost at 8K) next to the
measured ratios. Then, if time is left, `tsa-bench profile-layers` on the same random-weight
model at 128K (JSON + CSV under --out/layers): the drift profiler at full scale.
Exit code: 0, or 1 if a correctness gate failed, 2 on a usage error.
"""
from __future__ import annotations

import argparse
import gc
import os
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", required=True, help="output directory (the CSV goes here)")
    ap.add_argument("--tiny", action="store_true", help="CPU smoke run: tiny-llama preset, 1k/2k tokens")
    ap.add_argument("--backends", default=None, help="dense kernels (default sdpa-flash,sdpa-cudnn)")
    ap.add_argument("--seq-lens", default=None, help="default 8k,128k")
    ap.add_argument("--methods", default="dense,tsa",
                    help="methods of `tsa-bench prefill` (default dense,tsa; 'auto' adds the registry's sparse ones)")
    ap.add_argument("--budget-s", type=float, default=340.0,
                    help="time budget of the timed cells in seconds (default 340; the whole script < 8 min)")
    ap.add_argument("--no-profile", dest="profile", action="store_false",
                    help="skip the 128K drift-profiler run at the end")
    ap.add_argument("--profile-after-s", type=float, default=390.0,
                    help="run the profiler only if less than this much time has passed (default 390)")
    opts = ap.parse_args()
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    # 128K activations are GiB-sized and vary per layer (compressed lengths); avoid fragmentation.
    os.environ.setdefault("PYTORCH_CUDA_ALLOC_CONF", "expandable_segments:True")
    t0 = time.perf_counter()

    import torch
    from tsa_bench.cli import main as cli

    if opts.tiny:
        argv = ["prefill", "--model", "tiny-llama", "--seq-lens", opts.seq_lens or "1k,2k",
                "--dense-backend", opts.backends or "sdpa", "--window", "16", "--min-keep", "16",
                "--runs", "2", "--device", "cpu", "--dtype", "fp32"]
    else:
        if not torch.cuda.is_available():
            print("no CUDA device: run with --tiny for the CPU smoke run", file=sys.stderr)
            return 2
        print(f"GPU {torch.cuda.get_device_name(0)}, torch {torch.__version__}, CUDA {torch.version.cuda}")
        argv = ["prefill", "--model", "llama-3.1-8b", "--seq-lens", opts.seq_lens or "8k,128k",
                "--dense-backend", opts.backends or "sdpa-flash,sdpa-cudnn", "--device", "cuda",
                "--dtype", "bf16", "--runs", "5", "--warmup", "1"]
    argv += ["--weights", "random", "--keep-ratio", "0.675", "--methods", opts.methods,
             "--sparse-layers", "preset", "--out-dir", opts.out,
             "--time-budget-s", str(max(30.0, opts.budget_s - (time.perf_counter() - t0)))]
    print("tsa-bench " + " ".join(argv), flush=True)
    rc = cli(argv)
    _summary(Path(opts.out))
    # The drift profiler at full scale: one dense 128K forward with hooks (a memory and runtime
    # check; random weights, so the list itself says nothing about the real model).
    if opts.profile and time.perf_counter() - t0 < opts.profile_after_s:
        pargv = ["profile-layers", "--weights", "random", "--delta", "0.5", "--out-dir", str(Path(opts.out) / "layers")]
        pargv += (["--model", "tiny-llama", "--seq-len", "1k", "--device", "cpu", "--dtype", "fp32"] if opts.tiny
                  else ["--model", "llama-3.1-8b", "--seq-len", "128k", "--device", "cuda", "--dtype", "bf16"])
        gc.collect()                                   # the prefill model is gone; free its memory
        if torch.cuda.is_available():
            torch.cuda.empty_cache()
        print("tsa-bench " + " ".join(pargv), flush=True)
        prc = cli(pargv)
        rc = rc or prc
    elif opts.profile:
        print(f"profile-layers skipped: {time.perf_counter() - t0:.0f} s already spent")
    print(f"total {time.perf_counter() - t0:.0f} s, exit code {rc}")
    return rc


def _summary(out: Path) -> None:
    import pandas as pd
    from tsa_bench.args import fmt_length

    files = sorted(out.glob("prefill-*.csv"))
    if not files:
        return
    df = pd.read_csv(files[-1])
    sp = df[df.metric == "speedup_vs_dense"]
    print(f"\nsummary of {files[-1]} (target: x >= 1.25 at 128K, x >= 0.97 at 8K):")
    for _, r in sp.sort_values(["backend", "seq_len"]).iterrows():
        n = int(r.seq_len)
        target = {131072: 1.25, 8192: 0.97}.get(n)
        verdict = "" if target is None else ("  meets target" if r.value >= target else "  BELOW target")
        print(f"  {r.method:>6s} on {r.backend:<12s} {fmt_length(n):>5s}: x{r.value:.3f}{verdict}")
    mem = df[df.metric == "peak_mem_gib"]
    for _, r in mem.sort_values(["backend", "seq_len", "method"]).iterrows():
        print(f"  peak memory {r.method:>6s} on {r.backend:<12s} {fmt_length(int(r.seq_len)):>5s}: {r.value:.1f} GiB")


if __name__ == "__main__":
    sys.exit(main())
