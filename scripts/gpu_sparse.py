"""GPU check and timing of the sparse methods (issue 6), one self-contained run.

    PYTHONPATH=. python3 scripts/gpu_sparse.py --out $OUT          # H100, about 3-5 minutes
    PYTHONPATH=. python3 scripts/gpu_sparse.py --out /tmp/x --tiny # CPU smoke test (interpreter)

What it does (Llama-3.1-8B attention shape: 32 query heads, 8 KV heads, d 128, bf16, batch 1,
128K tokens unless --seq-len says otherwise):

1. **Correctness gate**: the block-sparse kernel at ~10% block density vs the masked-dense
   fp32 reference on a subset of heads (``--check-heads``), FlexAttention on the same
   BlockMask vs the kernel, and FlexPrefill's Triton estimation vs its PyTorch reference
   (block-mask agreement). A failed gate makes the exit code 1 and marks ``checked=False``.
2. **Kernel timing**: the block-sparse kernel at 10% density and at 100% (every causal
   block) vs dense SDPA-flash and SDPA-cudnn, and vs FlexAttention with a BlockMask built
   from the same block lists (``BlockMask.from_kv_blocks``; mask build timed on its own).
   Derived: speedup vs SDPA-flash, and time / (density x SDPA-flash time).
3. **Methods on the synthetic workload** (``tsa_bench.workload.synthetic_qkv``):
   FlexPrefill, XAttention, MInference: pattern estimation, attention with the pattern, and
   total, with the density; FlexPrefill + TSA (``tsa_attention(..., TSAConfig(tau=0.005),
   backend="flexprefill")``) and its speedup over FlexPrefill alone.

Every latency is the median over CUDA-event timed calls after warm-up, with p20/p80 as
``lo``/``hi``. One tidy CSV (``tsa_bench.results`` columns) is written under ``--out``; its
path is the last line printed.
"""
from __future__ import annotations

import argparse
import math
import os
import sys
import time


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter,
                                epilog="examples:\n  PYTHONPATH=. python3 scripts/gpu_sparse.py --out $OUT\n"
                                       "  PYTHONPATH=. python3 scripts/gpu_sparse.py --out /tmp/sp --tiny\n"
                                       "  PYTHONPATH=. python3 scripts/gpu_sparse.py --out results/figures "
                                       "--plot-only results/sparse/<run>.csv")
    p.add_argument("--out", required=True, help="directory for the CSV and the figure")
    p.add_argument("--plot-only", metavar="CSV", help="only redraw the figure of an existing CSV into --out")
    p.add_argument("--tiny", action="store_true", help="tiny shapes (CPU + TRITON_INTERPRET=1 smoke test)")
    p.add_argument("--seq-len", type=int, default=131072, help="sequence length (default 131072)")
    p.add_argument("--density", type=float, default=0.10, help="block density of the kernel benchmark")
    p.add_argument("--check-heads", default="0,31", help="query heads checked against the reference")
    p.add_argument("--budget-s", type=float, default=1.5, help="timing budget per measurement (s)")
    p.add_argument("--skip", default="", help="comma list of parts to skip: flex,cudnn,xattention,minference,tsa")
    return p.parse_args(argv)


ARGS = parse_args() if __name__ == "__main__" else None
if ARGS is not None and ARGS.tiny:
    os.environ.setdefault("TRITON_INTERPRET", "1")

import torch  # noqa: E402

from tsa_bench.bench.timing import time_fn  # noqa: E402
from tsa_bench.results import ResultWriter, row  # noqa: E402
from tsa_bench.workload import synthetic_qkv  # noqa: E402
from tsa_core import TSAConfig, tsa_attention  # noqa: E402
from tsa_core.backends.dense import sdpa_attention  # noqa: E402
from tsa_core.sparse import last_stats, sparse_attention  # noqa: E402
from tsa_core.sparse.block_sparse import block_sparse_attention, block_sparse_attention_naive  # noqa: E402
from tsa_core.sparse.flexprefill import FlexPrefillParams, flexprefill_pattern_naive  # noqa: E402
from tsa_core.sparse.flexprefill.kernel import flexprefill_pattern_triton  # noqa: E402
from tsa_core.sparse.methods import compiled_flex_attention, estimate_pattern, flex_block_mask  # noqa: E402
from tsa_core.sparse.methods import run_with_pattern  # noqa: E402
from tsa_core.sparse.pattern import BlockPattern, causal_block_grid  # noqa: E402


def random_pattern(B, H, L, bs, density, device, seed=0) -> BlockPattern:
    """Row r keeps max(1, round(density (r + 1))) causal blocks: sink, diagonal, then random."""
    nb = -(-L // bs)
    gen = torch.Generator(device=device).manual_seed(seed)
    score = torch.rand(B, H, nb, nb, device=device, generator=gen)
    causal = causal_block_grid(nb, nb, device)
    score = score.masked_fill(~causal, -1.0)
    score[..., :, 0] = 2.0
    score = torch.where(torch.eye(nb, dtype=torch.bool, device=device), torch.full_like(score, 3.0), score)
    n_row = torch.clamp(torch.round(density * torch.arange(1, nb + 1, device=device)), min=1)
    order = torch.sort(score, dim=-1, descending=True).indices
    take = torch.arange(nb, device=device).view(1, nb) < n_row.view(nb, 1)
    mask = torch.zeros(B, H, nb, nb, dtype=torch.bool, device=device).scatter(-1, order, take.expand(B, H, nb, nb))
    return BlockPattern.from_mask(mask, bs, L)


def rms_ratio(a, b) -> float:
    a, b = a.float(), b.float()
    return ((a - b).pow(2).mean().sqrt() / b.pow(2).mean().sqrt().clamp_min(1e-30)).item()


class Run:
    def __init__(self, args, device):
        self.args, self.device = args, device
        self.tiny = args.tiny
        if self.tiny:
            self.B, self.Hq, self.Hkv, self.L, self.D, self.bs = 1, 2, 1, 160, 16, 16
            self.dtype = torch.float32
        else:
            self.B, self.Hq, self.Hkv, self.L, self.D, self.bs = 1, 32, 8, args.seq_len, 128, 128
            self.dtype = torch.bfloat16
        self.scale = 1.0 / math.sqrt(self.D)
        self.rows = []
        self.failed = []
        self.t0 = time.time()
        self.skip = set(s for s in args.skip.split(",") if s)

    def ident(self, **kw):
        base = dict(seq_len=self.L, batch=self.B, heads=self.Hq, kv_heads=self.Hkv, head_dim=self.D,
                    dtype=str(self.dtype).replace("torch.", ""))
        if "workload" in kw:                 # the input data go in the identity column "task"
            kw["task"] = kw.pop("workload")
        base.update(kw)
        return base

    def time(self, fn, method, stage, backend="", **kw):
        budget = 0.2 if self.tiny else self.args.budget_s
        t = time_fn(lambda i: fn(), self.device, warmup=1 if self.tiny else 3, budget_s=budget,
                    reps=1 if self.tiny else 0, min_reps=5, max_reps=30)
        self.rows.append(row("latency_ms", t.median, lo=t.p20, hi=t.p80, n=t.n,
                             **self.ident(method=method, stage=stage, backend=backend, **kw)))
        print(f"  {method:<18} {stage:<12} {backend:<14} {t.median:9.3f} ms  [p20 {t.p20:.3f}, p80 {t.p80:.3f}, n={t.n}]")
        return t.median

    def metric(self, metric, value, method, stage="", backend="", checked=None, **kw):
        self.rows.append(row(metric, value, checked=checked, **self.ident(method=method, stage=stage,
                                                                            backend=backend, **kw)))
        print(f"  {method:<18} {stage:<12} {backend:<14} {metric} = {value:.4g}"
              + ("" if checked is None else f"  checked={checked}"))

    def gate(self, name, ok):
        if not ok:
            self.failed.append(name)
        return ok

    def elapsed(self):
        return time.time() - self.t0


def out_sdpa_ref(q, k, v, run):
    """SDPA-flash output of the first heads, to validate cuDNN (PEERS.md §7.2 corruption report)."""
    try:
        return sdpa_attention(q[:, :8], k[:, :2], v[:, :2], scale=run.scale, sdpa_backend="FLASH_ATTENTION")
    except Exception:  # noqa: BLE001
        return None


def dense_baseline(run, q, k, v, sdpa_backend, name, check_against=None):
    """Time one SDPA backend with native GQA; if it refuses GQA, with K/V expanded (noted)."""
    G = q.shape[1] // k.shape[1]
    for expand in (False, True):
        kk = k.repeat_interleave(G, dim=1) if expand else k
        vv = v.repeat_interleave(G, dim=1) if expand else v
        label = name + ("-expanded-kv" if expand else "")
        try:
            res = sdpa_attention(q, kk, vv, scale=run.scale, sdpa_backend=sdpa_backend)
            if check_against is not None:
                err = rms_ratio(res[:, :8], check_against)
                run.metric("check_rms_ratio_vs_sdpa_flash", err, "dense", "check", backend=label,
                           checked=err < 1e-2)
            del res
            return run.time(lambda: sdpa_attention(q, kk, vv, scale=run.scale, sdpa_backend=sdpa_backend),
                            "dense", "attention", label)
        except Exception as e:  # noqa: BLE001 - record why the baseline is missing
            print(f"  {label} failed: {type(e).__name__}: {str(e)[:200]}")
    return None


def part_kernel(run: Run):
    dev, B, Hq, Hkv, L, D, bs = run.device, run.B, run.Hq, run.Hkv, run.L, run.D, run.bs
    gen = torch.Generator(device=dev).manual_seed(0)
    q = torch.randn(B, Hq, L, D, device=dev, generator=gen, dtype=torch.float32).to(run.dtype)
    k = torch.randn(B, Hkv, L, D, device=dev, generator=gen, dtype=torch.float32).to(run.dtype)
    v = torch.randn(B, Hkv, L, D, device=dev, generator=gen, dtype=torch.float32).to(run.dtype)
    pattern = random_pattern(B, Hq, L, bs, run.args.density, dev)
    dens = pattern.density().mean().item()
    print(f"[kernel] L={L} density={dens:.4f}")
    run.metric("density", dens, "block-sparse", "pattern", backend="triton")

    out = torch.full_like(q, float("nan"))
    block_sparse_attention(q, k, v, pattern, scale=run.scale, out=out)
    heads = [int(h) % Hq for h in run.args.check_heads.split(",")] if not run.tiny else list(range(Hq))
    G = Hq // Hkv
    worst, worst_base = 0.0, 0.0
    for h in heads:
        sub = pattern.select(heads=slice(h, h + 1))
        qh, kh, vh = q[:, h:h + 1], k[:, h // G:h // G + 1], v[:, h // G:h // G + 1]
        ref = block_sparse_attention_naive(qh.float(), kh.float(), vh.float(), sub, scale=run.scale, chunk=2048)
        # a plain low-precision PyTorch run's own error: the reference rounded to the input dtype
        base = rms_ratio(ref.to(run.dtype), ref)
        worst = max(worst, rms_ratio(out[:, h:h + 1], ref))
        worst_base = max(worst_base, base)
        del ref
    nan_free = not bool(out.isnan().any())
    ok = run.gate("kernel-vs-reference", nan_free and worst <= max(4 * worst_base, 1e-5) + 2e-3)
    run.metric("check_rms_ratio", worst, "block-sparse", "check", backend="triton", checked=ok)
    run.metric("check_rms_ratio_dtype_floor", worst_base, "block-sparse", "check", backend="reference")

    t_cudnn = None
    t_flash = dense_baseline(run, q, k, v, "FLASH_ATTENTION", "sdpa-flash")
    if "cudnn" not in run.skip:
        t_cudnn = dense_baseline(run, q, k, v, "CUDNN_ATTENTION", "sdpa-cudnn", check_against=out_sdpa_ref(q, k, v, run))
    if t_flash is None and run.tiny:
        t_flash = run.time(lambda: sdpa_attention(q, k, v, scale=run.scale), "dense", "attention", "sdpa")
    t_bs = run.time(lambda: block_sparse_attention(q, k, v, pattern, scale=run.scale, out=out),
                    "block-sparse", "attention", "triton", keep_ratio=round(dens, 4))
    full = BlockPattern.dense(B, Hq, L, bs, dev)
    t_full = run.time(lambda: block_sparse_attention(q, k, v, full, scale=run.scale, out=out),
                      "block-sparse-dense", "attention", "triton", keep_ratio=1.0)
    if t_flash:
        run.metric("speedup_vs_sdpa_flash", t_flash / t_bs, "block-sparse", "attention", backend="triton",
                   keep_ratio=round(dens, 4))
        run.metric("time_over_density_prediction", t_bs / (dens * t_flash), "block-sparse", "attention",
                   backend="triton", keep_ratio=round(dens, 4))
        run.metric("speedup_vs_sdpa_flash", t_flash / t_full, "block-sparse-dense", "attention",
                   backend="triton", keep_ratio=1.0)
    if t_cudnn:
        run.metric("speedup_vs_sdpa_cudnn", t_cudnn / t_bs, "block-sparse", "attention", backend="triton",
                   keep_ratio=round(dens, 4))

    run.state = dict(q=q, k=k, v=v, out=out, pattern=pattern, dens=dens, t_flash=t_flash, t_bs=t_bs)
    del full
    return t_flash


def part_flex(run: Run):
    """FlexAttention on a BlockMask built from the same block lists as the kernel."""
    st = run.state
    q, k, v, out, pattern, dens, t_flash, t_bs = (st[n] for n in ("q", "k", "v", "out", "pattern", "dens",
                                                                  "t_flash", "t_bs"))
    dev = run.device
    if run.tiny or "flex" in run.skip:
        run.state.clear()
        return
    out = block_sparse_attention(q, k, v, pattern, scale=run.scale, out=out)   # (timing reused `out`)
    try:
        t0 = time.time()
        bm = flex_block_mask(pattern, dev)
        if dev.type == "cuda":
            torch.cuda.synchronize()
        build_ms = (time.time() - t0) * 1e3
        flex = compiled_flex_attention()
        out_flex = flex(q, k, v, block_mask=bm, scale=run.scale, enable_gqa=True)
        err = rms_ratio(out_flex, out)
        ok = run.gate("flex-vs-kernel", err < 1e-2)
        run.metric("check_rms_ratio_vs_kernel", err, "flex-block-sparse", "check", backend="flex", checked=ok)
        run.metric("mask_build_ms_first_call", build_ms, "flex-block-sparse", "mask_build", backend="flex")
        run.time(lambda: flex_block_mask(pattern, dev), "flex-block-sparse", "mask_build", "flex")
        t_fx = run.time(lambda: flex(q, k, v, block_mask=bm, scale=run.scale, enable_gqa=True),
                        "flex-block-sparse", "attention", "flex", keep_ratio=round(dens, 4))
        run.metric("triton_speedup_vs_flex", t_fx / t_bs, "block-sparse", "attention", backend="triton",
                   keep_ratio=round(dens, 4))
        if t_flash:
            run.metric("speedup_vs_sdpa_flash", t_flash / t_fx, "flex-block-sparse", "attention",
                       backend="flex", keep_ratio=round(dens, 4))
        del out_flex, bm
    except Exception as e:  # noqa: BLE001
        print(f"  FlexAttention failed: {e!r}")
    run.state.clear()


def part_setup_methods(run: Run, t_flash):
    """Synthetic workload; FlexPrefill estimation check and its stage breakdown."""
    dev, B, Hq, Hkv, L, D = run.device, run.B, run.Hq, run.Hkv, run.L, run.D
    q, k, v = synthetic_qkv(B, Hq, Hkv, L, D, device=dev, dtype=run.dtype)
    print(f"[methods] synthetic workload, L={L}")
    if t_flash is None:
        t_flash = run.time(lambda: sdpa_attention(q, k, v, scale=run.scale), "dense", "attention", "sdpa",
                           workload="synthetic")
    small = run.tiny
    params = {
        "flexprefill": dict(block_size=16, min_budget=32) if small else {},
        "xattention": dict(block_size=16, stride=4) if small else {},
        "minference": dict(block_size=16, last_q=16) if small else {},
    }
    ctx = dict(q=q, k=k, v=v, params=params, t_flash=t_flash, totals={})
    # FlexPrefill's Triton estimation vs its PyTorch reference (block-mask agreement)
    prm = FlexPrefillParams(**params["flexprefill"])
    pt, _ = flexprefill_pattern_triton(q, k, prm, scale=run.scale)
    pn, _ = flexprefill_pattern_naive(q, k, prm, scale=run.scale)
    causal = causal_block_grid(pt.num_blocks, pt.num_blocks, dev)
    agree = ((pt.block_mask == pn.block_mask) & causal).sum().item() / (causal.sum().item() * B * Hq)
    ok = run.gate("flexprefill-estimation", agree >= 0.99)
    run.metric("pattern_agreement_vs_naive", agree, "flexprefill", "check", backend="triton", checked=ok)
    del pn, pt
    # where FlexPrefill's estimation time goes (profiles vs selection)
    from tsa_core.sparse.flexprefill import kernel as fpk
    from tsa_core.sparse.flexprefill.naive import select_from_profiles
    nq = min(prm.block_size, L)
    vert, sl = fpk.profiles_triton(q, k, nq, run.scale)
    run.time(lambda: fpk.profiles_triton(q, k, nq, run.scale), "flexprefill", "est_profiles", "triton",
             workload="synthetic")
    run.time(lambda: select_from_profiles(q, k, vert, sl, prm, run.scale), "flexprefill", "est_select",
             "torch", workload="synthetic")
    run.time(lambda: fpk.profiles_triton(q, k, nq, run.scale, slash_mode="skew"), "flexprefill",
             "est_profiles", "triton-skew", workload="synthetic")
    run.metric("gather_kernel_ok", float(fpk.gather_kernel_failure() is None), "flexprefill", "est_profiles",
               backend="triton")
    return ctx


def part_method(run: Run, ctx, method: str):
    """One method on the synthetic workload: estimation, attention with the pattern, total."""
    if method in run.skip:
        print(f"  skipping {method}")
        return
    q, k, v, kw, t_flash = ctx["q"], ctx["k"], ctx["v"], ctx["params"][method], ctx["t_flash"]
    try:
        pattern = estimate_pattern(method, q, k, scale=run.scale, **kw)
        t_est = run.time(lambda: estimate_pattern(method, q, k, scale=run.scale, **kw), method, "estimate",
                         "triton", workload="synthetic")
        run.time(lambda: run_with_pattern(q, k, v, pattern, scale=run.scale), method, "attention", "triton",
                 workload="synthetic")
        t_tot = run.time(lambda: sparse_attention(q, k, v, scale=run.scale, method=method, **kw), method,
                         "total", "triton", workload="synthetic")
        dens = last_stats()["density"]
        ctx["totals"][method] = t_tot
        run.metric("density", dens, method, "pattern", backend="triton", workload="synthetic")
        run.metric("estimate_share", t_est / t_tot, method, "estimate", backend="triton", workload="synthetic")
        run.metric("speedup_vs_dense", t_flash / t_tot, method, "total", backend="triton", workload="synthetic")
        del pattern
    except Exception as e:  # noqa: BLE001 - one failed method must not lose the others' numbers
        print(f"  {method} failed: {e!r}")
        run.gate(method, False)


def part_tsa(run: Run, ctx):
    """FlexPrefill + TSA (tau = 0.005) vs FlexPrefill alone, same inputs."""
    if "tsa" in run.skip or "flexprefill" not in ctx["totals"]:
        return
    q, k, v, t_flash = ctx["q"], ctx["k"], ctx["v"], ctx["t_flash"]
    cfg = TSAConfig(tau=0.005) if not run.tiny else TSAConfig(tau=0.005, window=16, min_keep=32)
    be = "flexprefill"
    if run.tiny:
        from tsa_core.backends import AttentionBackend
        be = AttentionBackend("flexprefill-tiny", "tsa_core.sparse.methods:sparse_attention", kind="sparse",
                              devices=("cpu", "cuda"), options={"method": "flexprefill", **ctx["params"]["flexprefill"]})
    try:
        _, st = tsa_attention(q, k, v, cfg, backend=be, scale=run.scale)
        dens = last_stats()["density"]
        t_tsa = run.time(lambda: tsa_attention(q, k, v, cfg, backend=be, scale=run.scale), "flexprefill+tsa",
                         "total", "triton", workload="synthetic", tau=0.005)
    except Exception as e:  # noqa: BLE001
        print(f"  flexprefill+tsa failed: {e!r}")
        run.gate("flexprefill+tsa", False)
        return
    run.metric("keep_fraction", sum(st.keep_fraction) / len(st.keep_fraction), "flexprefill+tsa", "tsa",
               workload="synthetic", tau=0.005)
    run.metric("density_on_compressed", dens, "flexprefill+tsa", "pattern", workload="synthetic", tau=0.005)
    run.metric("speedup_vs_dense", t_flash / t_tsa, "flexprefill+tsa", "total", workload="synthetic", tau=0.005)
    run.metric("speedup_vs_flexprefill", ctx["totals"]["flexprefill"] / t_tsa, "flexprefill+tsa", "total",
               workload="synthetic", tau=0.005)
    print("  paper (A100, FA2 baseline): FlexPrefill x2.44, +TSA(0.005) x2.76 -> ratio 1.13")


def plot(csv_path, out_dir) -> str:
    """Two panels from one CSV: (a) kernel latencies at the benchmark density vs dense
    baselines; (b) each method's total split into estimation and attention. Returns the PNG path."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import pandas as pd
    from pathlib import Path

    df = pd.read_csv(csv_path)
    lat = df[df.metric == "latency_ms"]
    L = int(df.seq_len.iloc[0])
    fig, axes = plt.subplots(1, 2, figsize=(12, 4.2))
    kern = lat[(lat.stage == "attention") & lat.task.isna()]
    labels = [f"{m}\n{b}" + (f"\ndensity {kr:.2f}" if pd.notna(kr) else "")
              for m, b, kr in zip(kern.method, kern.backend, kern.keep_ratio)]
    ax = axes[0]
    ax.bar(range(len(kern)), kern.value, yerr=[kern.value - kern.lo, kern.hi - kern.value], capsize=3,
           color=["#888" if m == "dense" else "#3a7" for m in kern.method])
    ax.set_xticks(range(len(kern)), labels, fontsize=7)
    ax.set_ylabel("ms (median, p20-p80)")
    ax.set_title(f"(a) attention kernels, L={L}")
    ax = axes[1]
    meth = [m for m in ("flexprefill", "xattention", "minference") if ((lat.method == m) & (lat.stage == "total")).any()]
    est = [lat[(lat.method == m) & (lat.stage == "estimate")].value.iloc[0] for m in meth]
    tot = [lat[(lat.method == m) & (lat.stage == "total")].value.iloc[0] for m in meth]
    ax.bar(range(len(meth)), est, color="#d84", label="pattern estimation")
    ax.bar(range(len(meth)), [t - e for t, e in zip(tot, est)], bottom=est, color="#3a7", label="rest (attention)")
    tsa = lat[(lat.method == "flexprefill+tsa") & (lat.stage == "total")]
    if len(tsa):
        ax.bar([len(meth)], tsa.value, color="#37a", label="FlexPrefill + TSA (total)")
        meth = meth + ["flexprefill\n+tsa(0.005)"]
        tot = tot + [tsa.value.iloc[0]]
    dense = lat[(lat.method == "dense") & lat.backend.isin(["sdpa-flash", "sdpa"])]
    if len(dense):
        ax.axhline(dense.value.iloc[0], color="#888", ls="--", lw=1, label=f"dense {dense.backend.iloc[0]}")
        for x, t in enumerate(tot):
            ax.text(x, t, f"x{dense.value.iloc[0] / t:.3g}", ha="center", va="bottom", fontsize=8)
    ax.set_xticks(range(len(meth)), meth, fontsize=8)
    ax.set_ylabel("ms (median)")
    ax.set_title("(b) methods on the synthetic workload (speedup vs dense)")
    ax.legend(fontsize=7, loc="best")
    gpu = str(df.gpu.iloc[0]) if "gpu" in df else ""
    fig.suptitle(f"sparse methods, {gpu}, {Path(csv_path).name}", fontsize=9)
    fig.tight_layout()
    Path(out_dir).mkdir(parents=True, exist_ok=True)
    out = str(Path(out_dir) / (Path(csv_path).stem + ".png"))
    fig.savefig(out, dpi=130)
    plt.close(fig)
    return out


def main(args) -> int:
    if args.plot_only:
        print(f"read {args.plot_only}")
        print(plot(args.plot_only, args.out))
        return 0
    if args.tiny:
        device = torch.device("cpu")
    else:
        if not torch.cuda.is_available():
            print("no CUDA device; use --tiny for the CPU smoke test", file=sys.stderr)
            return 2
        device = torch.device("cuda")
    run = Run(args, device)
    t_flash = part_kernel(run)                       # required numbers first ...
    ctx = part_setup_methods(run, t_flash)
    part_method(run, ctx, "flexprefill")
    part_tsa(run, ctx)
    part_flex(run)                                   # ... then the comparisons that may be slow
    for method in ("xattention", "minference"):
        if run.elapsed() > 280:
            print(f"  skipping {method}: {run.elapsed():.0f} s elapsed (keep the run under 6 min)")
            continue
        part_method(run, ctx, method)
    cfg = dict(script="scripts/gpu_sparse.py", tiny=args.tiny, seq_len=run.L, density=args.density,
               check_heads=args.check_heads, failed=run.failed)
    writer = ResultWriter("sparse", cfg, device=str(device), out_dir=args.out)
    writer.add(run.rows)
    path = writer.write()
    try:
        print(f"figure: {plot(path, args.out)}")
    except Exception as e:  # noqa: BLE001 - the CSV is the result; the figure can be redrawn
        print(f"figure failed: {e!r}")
    print(f"elapsed {run.elapsed():.1f} s; correctness gates failed: {run.failed or 'none'}")
    print(path)
    return 1 if run.failed else 0


if __name__ == "__main__":
    sys.exit(main(ARGS))
