"""``tsa-bench demo``: run the TSA pipeline once on the synthetic workload and report it."""
from __future__ import annotations

import time

import torch

from tsa_bench.args import parse_length

NAME = "demo"
HELP = "Run TSA on one synthetic layer; print what it kept and its error against dense attention."
EPILOG = """examples:
  tsa-bench demo                         # CPU, 8 heads / 2 KV heads, 8k tokens, tau 0.005
  tsa-bench demo --seq-len 16k --tau 0.01
  tsa-bench demo --device cuda --seq-len 128k --heads 32 --kv-heads 8 --head-dim 128 --dtype bf16
"""

_DTYPES = {"fp32": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16}


def add_arguments(p) -> None:
    p.add_argument("--seq-len", default="8k", help="sequence length, e.g. 8k (default 8k)")
    p.add_argument("--heads", type=int, default=8, help="query heads (default 8)")
    p.add_argument("--kv-heads", type=int, default=2, help="KV heads (default 2)")
    p.add_argument("--head-dim", type=int, default=64, help="head dimension (default 64)")
    p.add_argument("--batch", type=int, default=1, help="batch size (default 1)")
    p.add_argument("--tau", type=float, default=0.005, help="token coverage tau (default 0.005)")
    p.add_argument("--keep-ratio", type=float, default=None, help="force the kept fraction instead of tau")
    p.add_argument("--tail", type=float, default=3.4, help="heaviness of the synthetic attention tail (default 3.4)")
    p.add_argument("--backend", default="sdpa", help="attention backend from the registry (default sdpa)")
    p.add_argument("--impl", default="auto", choices=["auto", "triton", "naive"], help="TSA ops implementation")
    p.add_argument("--device", default="cpu", help="cpu or cuda (default cpu)")
    p.add_argument("--dtype", default="fp32", choices=sorted(_DTYPES), help="tensor dtype (default fp32)")
    p.add_argument("--seed", type=int, default=0)


def run(args) -> int:
    from tsa_bench.workload import Workload, synthetic_qkv
    from tsa_core import TSAConfig, get_backend, tsa_attention

    L = parse_length(args.seq_len)
    if args.device.startswith("cuda") and not torch.cuda.is_available():
        raise ValueError("--device cuda was asked for but CUDA is not available")
    cfg = TSAConfig(tau=args.tau, keep_ratio=args.keep_ratio)
    backend = get_backend(args.backend)
    q, k, v = synthetic_qkv(args.batch, args.heads, args.kv_heads, L, args.head_dim,
                            workload=Workload(tail=args.tail, seed=args.seed), device=args.device,
                            dtype=_DTYPES[args.dtype])
    scale = args.head_dim ** -0.5
    print(f"synthetic layer: batch {args.batch}, {args.heads} query / {args.kv_heads} KV heads, "
          f"L={L}, D={args.head_dim}, {args.dtype} on {args.device}; tau={cfg.tau}, W={cfg.window}, "
          f"pool={cfg.pool_kernel}, min_keep={cfg.min_keep}, backend={backend.name}, impl={args.impl}")
    t0 = time.perf_counter()
    out, stats = tsa_attention(q, k, v, cfg, backend, impl=args.impl)
    t_tsa = time.perf_counter() - t0
    dense = backend(q, k, v, scale=scale).transpose(1, 2).float()
    out = out.float()
    kept_rows = out.abs().amax(dim=-1) > 0          # [B, L, H]; dropped rows are exact zeros
    for b in range(args.batch):
        print(f"element {b}: {'DENSE (' + stats.reason + ')' if stats.dense else 'sparse'}; "
              f"kept {stats.kept[b]}/{L} tokens per head ({stats.keep_fraction[b]:.1%}), "
              f"prefix budget {stats.budget[b]}, pruned mass {stats.pruned_mass[b]:.4f}, "
              f"attention-map sparsity {stats.sparsity[b]:.1%}")
    diff = (out - dense)[kept_rows]
    ref = dense[kept_rows]
    rel = (diff.norm() / ref.norm()).item() if ref.numel() else 0.0
    dropped = (~kept_rows).sum().item()
    print(f"relative L2 error vs dense attention on kept rows: {rel:.4e}")
    print(f"dropped (token, head) rows: {dropped} (all exactly zero); TSA wall time {t_tsa * 1e3:.1f} ms")
    return 0
