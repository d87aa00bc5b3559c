"""``tsa-bench latency``: attention-only latency of dense attention vs TSA, per stage."""
from __future__ import annotations

import gc
import sys

import torch

from tsa_bench.args import fmt_length, parse_floats, parse_lengths
from tsa_bench.cli import UsageError

NAME = "latency"
HELP = "Attention-only latency: dense vs TSA (per stage) vs the plain PyTorch composition."
EPILOG = """examples:
  tsa-bench latency --tau 0.005                          # 4k..128k, Llama-3.1-8B shape, bf16, H100
  tsa-bench latency --tau 0.005,0.01 --dense sdpa-flash
  tsa-bench latency --keep-ratio 1.0,0.9,0.8,0.675,0.5,0.3 --seq-lens 32k,128k
  tsa-bench latency --shape qwen2.5-7b --batch 4 --seq-lens 32k --keep-ratio 0.675
  tsa-bench latency --dry-run                            # print the resolved sweep
  tsa-bench latency --device cpu --seq-lens 1280 --heads 4 --kv-heads 2 --head-dim 16 --min-keep 512
  (on CPU set TRITON_INTERPRET=1 to run the Triton kernels through the interpreter)

workload (default synthetic): attention sinks, a recency bump and a log-normal tail of
salient tokens whose heaviness is --tail (0 = uniform attention); see tsa_bench/workload.py.
Use --keep-ratio to force the kept fraction regardless of the scores.
"""

_DTYPES = {"fp32": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16}


def add_arguments(p) -> None:
    from tsa_bench.bench.shapes import SHAPES

    p.add_argument("--tau", default=None, help="token coverage(s), comma-separated (default 0.005)")
    p.add_argument("--keep-ratio", default=None, help="forced kept fraction(s) of prefix tokens, comma-separated")
    p.add_argument("--method", default="tsa",
                   help="comma-separated: 'tsa' (TSA with the --dense kernel), a sparse method from the registry "
                        "(flexprefill, xattention, minference: on the full sequence, pattern estimation timed as "
                        "its own stage) or '<sparse>+tsa' (TSA with that method on the kept tokens). Default tsa")
    p.add_argument("--seq-lens", default="4k,8k,16k,32k,64k,128k", help="lengths (default 4k..128k)")
    p.add_argument("--dense", default="auto",
                   help="dense kernel(s) from the registry, comma-separated; 'auto' = fastest available "
                        "(sdpa-cudnn on CUDA, sdpa on CPU)")
    p.add_argument("--shape", default="llama-3.1-8b", choices=sorted(SHAPES), help="attention shape preset")
    p.add_argument("--heads", type=int, default=None, help="query heads (overrides the preset)")
    p.add_argument("--kv-heads", type=int, default=None, help="KV heads (overrides the preset)")
    p.add_argument("--head-dim", type=int, default=None, help="head dimension (overrides the preset)")
    p.add_argument("--batch", type=int, default=1)
    p.add_argument("--dtype", default="bf16", choices=sorted(_DTYPES))
    p.add_argument("--window", type=int, default=128, help="TSA window W (default 128)")
    p.add_argument("--min-keep", type=int, default=1024, help="TSA minimum kept prefix tokens (default 1024)")
    p.add_argument("--sparse-frac", type=float, default=0.5, help="fraction of sparse layers for the all-layer "
                   "average (default 0.5, as in the paper)")
    p.add_argument("--tail", type=float, default=3.4, help="synthetic workload tail heaviness at 8k (default 3.4; grows 0.35 per doubling, calibrated to the paper's Table 3)")
    p.add_argument("--qkv", default="synthetic", help="'synthetic' (default) or 'model:<preset|hf id|path>' "
                   "to capture Q/K/V from a model layer")
    p.add_argument("--weights", default="pretrained", choices=["pretrained", "random"],
                   help="with --qkv model:...: load the checkpoint (default) or build random weights")
    p.add_argument("--layer", type=int, default=None, help="layer to capture with --qkv model:... (default: middle)")
    p.add_argument("--input-sets", type=int, default=0, help="input sets rotated between calls (default: auto)")
    p.add_argument("--warmup", type=int, default=3, help="untimed calls before timing (default 3)")
    p.add_argument("--budget", type=float, default=1.0, help="seconds per measurement when --reps is auto (default 1)")
    p.add_argument("--reps", type=int, default=0, help="timed calls per measurement (default: auto, 5..50)")
    p.add_argument("--no-torch-baseline", action="store_true", help="skip the plain PyTorch composition")
    p.add_argument("--check-heads", type=int, default=2, help="heads checked against references (default 2)")
    p.add_argument("--device", default="cuda", help="cuda (default) or cpu")
    p.add_argument("--out-dir", default=None, help="directory for the CSV (default results/latency)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--dry-run", action="store_true", help="print the resolved sweep and exit")


def _resolve(args):
    from tsa_bench.bench.shapes import SHAPES
    from tsa_core import TSAConfig, get_backend

    shape = SHAPES[args.shape]
    heads = args.heads or shape.heads
    kv_heads = args.kv_heads or shape.kv_heads
    head_dim = args.head_dim or shape.head_dim
    if heads % kv_heads:
        raise UsageError(f"--heads ({heads}) must be a multiple of --kv-heads ({kv_heads})")
    if not 0.0 <= args.sparse_frac <= 1.0:
        raise UsageError(f"--sparse-frac must be in [0, 1], got {args.sparse_frac}")
    if args.batch < 1:
        raise UsageError(f"--batch must be >= 1, got {args.batch}")
    taus = parse_floats(args.tau, "tau") if args.tau else []
    ratios = parse_floats(args.keep_ratio, "keep-ratio") if args.keep_ratio else []
    if not taus and not ratios:
        taus = [0.005]
    configs = [TSAConfig(tau=t, window=args.window, min_keep=args.min_keep) for t in taus]
    configs += [TSAConfig(keep_ratio=r, window=args.window, min_keep=args.min_keep) for r in ratios]
    device = torch.device(args.device)
    if args.dense == "auto":
        dense = ["sdpa-cudnn" if device.type == "cuda" else "sdpa"]
    else:
        dense = [d.strip() for d in args.dense.split(",") if d.strip()]
    for d in dense:
        get_backend(d)   # unknown names raise a ValueError listing the registry
    methods = [m.strip() for m in args.method.split(",") if m.strip()]
    for m in methods:
        if m == "tsa":
            continue
        base = m[:-4] if m.endswith("+tsa") else m
        if get_backend(base).kind != "sparse":
            raise UsageError(f"--method {m!r}: {base!r} is not a sparse method; use --dense for dense kernels")
    lengths = parse_lengths(args.seq_lens)
    short = [n for n in lengths if n <= args.min_keep + args.window]
    if short:
        print(f"note: {', '.join(map(fmt_length, short))} <= min_keep + window: TSA runs dense there", file=sys.stderr)
    return dict(heads=heads, kv_heads=kv_heads, head_dim=head_dim, configs=configs, dense=dense,
                lengths=lengths, device=device, methods=methods)


def run(args) -> int:
    from tqdm import tqdm

    from tsa_bench.bench.latency import Case, measure
    from tsa_bench.results import ResultWriter, row

    r = _resolve(args)
    # a sparse method alone does not depend on the TSA setting: one case per length and kernel
    sweep = [(L, d, c, m) for L in r["lengths"] for d in r["dense"] for m in r["methods"]
             for c in (r["configs"] if (m == "tsa" or m.endswith("+tsa")) else r["configs"][:1])]
    desc = (f"{len(sweep)} cases ({', '.join(r['methods'])}): lengths {','.join(map(fmt_length, r['lengths']))}; dense {','.join(r['dense'])}; "
            f"shape {r['heads']}q/{r['kv_heads']}kv/d{r['head_dim']} {args.dtype} batch {args.batch}; "
            f"settings " + "; ".join(f"tau={c.tau}" if c.keep_ratio is None else f"keep_ratio={c.keep_ratio}"
                                     for c in r["configs"]))
    if args.dry_run:
        print(desc)
        for L, d, c, m in sweep:
            what = f"tau={c.tau}" if c.keep_ratio is None else f"keep_ratio={c.keep_ratio}"
            print(f"  seq_len={L} method={m} dense={d} {what} W={c.window} min_keep={c.min_keep} pool={c.pool_kernel}")
        return 0
    device = r["device"]
    if device.type == "cuda" and not torch.cuda.is_available():
        raise UsageError("CUDA is not available: use --device cpu (with TRITON_INTERPRET=1 for the kernels)")
    config = {k: v for k, v in vars(args).items() if not k.startswith("_")}
    writer = ResultWriter("latency", config, device=str(device), out_dir=args.out_dir)
    print(desc, file=sys.stderr)
    failed = False
    bar = tqdm(sweep, desc="latency", file=sys.stderr, dynamic_ncols=True)
    cache, dense_cache = {}, {}
    for L, d, c, m in bar:
        bar.set_postfix_str(f"{fmt_length(L)} {m} {d} " + (f"tau={c.tau}" if c.keep_ratio is None else f"r={c.keep_ratio}"))
        ident = dict(model=f"shape:{args.shape}" if args.qkv == "synthetic" else args.qkv)
        try:
            if cache.get("L") != L:
                cache.clear()
                gc.collect()
                if device.type == "cuda":
                    torch.cuda.empty_cache()
                cache["L"] = L
                cache["inputs"] = _inputs(args, r, L, device)
            q0, k0, _ = cache["inputs"][0]      # a captured model layer brings its own shape
            case = Case(L, args.batch, q0.shape[1], k0.shape[1], q0.shape[3], _DTYPES[args.dtype], c, d, m,
                        args.sparse_frac, not args.no_torch_baseline, args.check_heads, ident)
            rows = measure(case, cache["inputs"], device, reps=args.reps, warmup=args.warmup,
                           budget_s=args.budget, dense_cache=dense_cache)
            failed |= any(x["checked"] is False for x in rows)
            writer.add(rows)
        except torch.OutOfMemoryError as exc:
            cache.clear()
            gc.collect()
            torch.cuda.empty_cache()
            writer.add([row("oom", 1.0, stage="total", seq_len=L, backend=d, batch=args.batch,
                            tau=c.tau, keep_ratio=c.keep_ratio, method=m, **ident)])
            tqdm.write(f"out of memory at {fmt_length(L)} ({d}): {str(exc).splitlines()[0]}", file=sys.stderr)
    if device.type == "cuda":
        from tsa_core.scoring.kernel import best_configs
        print(f"scoring autotune choices: {best_configs()}", file=sys.stderr)
    df = writer.frame()
    _summary(df)
    path = writer.write()
    if failed:
        print("correctness gate FAILED for some cases (rows with checked=False)", file=sys.stderr)
    print(path)
    return 1 if failed else 0


def _inputs(args, r, L, device):
    """Input sets rotated between timed calls (enough to exceed the L2 cache several times)."""
    from tsa_bench.workload import Workload, synthetic_qkv

    dtype = _DTYPES[args.dtype]
    if args.qkv != "synthetic":
        from tsa_bench.capture import capture_qkv
        if not args.qkv.startswith("model:"):
            raise UsageError(f"--qkv must be 'synthetic' or 'model:<preset|hf id|path>', got {args.qkv!r}")
        return [capture_qkv(args.qkv[len("model:"):], L, layer=args.layer, batch=args.batch,
                            device=device, dtype=dtype, seed=args.seed, weights=args.weights)]
    per_set = args.batch * (r["heads"] + 2 * r["kv_heads"]) * L * r["head_dim"] * torch.tensor([], dtype=dtype).element_size()
    auto = max(1, min(4, -(-256 * 2**20 // per_set))) if device.type == "cuda" else 1
    n = args.input_sets or auto
    return [synthetic_qkv(args.batch, r["heads"], r["kv_heads"], L, r["head_dim"],
                          workload=Workload(tail=args.tail, seed=args.seed + i), device=device, dtype=dtype)
            for i in range(n)]


def _summary(df) -> None:
    """One line per (length, method, setting): what a reader wants first."""
    import pandas as pd

    if df.empty:
        return
    key = ["seq_len", "method", "backend", "tau", "keep_ratio"]
    lat = df[df.metric == "latency_ms"].pivot_table(index=key, columns="stage", values="value", dropna=False)
    met = df[df.metric.isin(["sparsity", "block_density", "speedup_layer", "speedup_all_layers"])]
    met = met.pivot_table(index=key, columns="metric", values="value", aggfunc="mean", dropna=False)
    out = lat.join(met, how="outer").dropna(how="all")
    if {"score", "select", "gather", "scatter"} <= set(out.columns):
        out["overhead"] = out[["score", "select", "gather", "scatter"]].sum(axis=1, min_count=4)
    cols = [c for c in ["total", "attention", "estimate", "overhead", "sparsity", "block_density",
                        "speedup_layer", "speedup_all_layers"] if c in out.columns]
    table = out[cols].rename(columns={"total": "total_ms", "attention": "attn_ms", "estimate": "estimate_ms",
                                      "overhead": "overhead_ms"})
    with pd.option_context("display.width", 200, "display.max_columns", 20, "display.float_format", "{:.3f}".format):
        print(table.reset_index().to_string(index=False))
