"""``tsa-bench figures``: regenerate the figures from the committed result CSVs."""
from __future__ import annotations

import glob
import sys
from pathlib import Path

from tsa_bench.cli import UsageError
from tsa_bench.provenance import REPO_ROOT

NAME = "figures"
HELP = "Regenerate results/figures/*.png from the result CSVs (prints which CSVs it read)."
EPILOG = """examples:
  tsa-bench figures                                   # every CSV under results/latency
  tsa-bench figures --latency results/latency/latency-2026*.csv --out-dir /tmp/figs
"""


def add_arguments(p) -> None:
    p.add_argument("--latency", nargs="*", default=None,
                   help="latency CSVs (default: results/latency/*.csv)")
    p.add_argument("--gpu", default=None, help="GPU whose rows to plot (default: that of the newest row)")
    p.add_argument("--out-dir", default=str(REPO_ROOT / "results" / "figures"))


def run(args) -> int:
    import matplotlib
    matplotlib.use("Agg")
    import pandas as pd

    files = args.latency if args.latency is not None else sorted(glob.glob(str(REPO_ROOT / "results/latency/*.csv")))
    if not files:
        raise UsageError("no latency CSVs found (run `tsa-bench latency` first or pass --latency)")
    for f in files:
        print(f"read {f}", file=sys.stderr)
    df = pd.concat([pd.read_csv(f) for f in files], ignore_index=True)
    df = df[df.batch == 1]
    gpu = args.gpu or df.sort_values("timestamp").gpu.iloc[-1]
    if gpu not in set(df.gpu):
        raise UsageError(f"no rows from GPU {gpu!r}; have {sorted(set(df.gpu))}")
    print(f"plotting GPU {gpu} (speedups never mix GPUs)", file=sys.stderr)
    df = df[df.gpu == gpu]
    out = Path(args.out_dir)
    out.mkdir(parents=True, exist_ok=True)
    written = [speedup_vs_context(df, out / "latency_speedup.png"),
               overhead_breakdown(df, out / "latency_overhead.png")]
    for w in written:
        print(w)
    return 0


def _label(r) -> str:
    return f"tau={r.tau:g}" if r.tau == r.tau else f"keep={r.keep_ratio:g}"   # NaN != NaN


def speedup_vs_context(df, path: Path) -> Path:
    import matplotlib.pyplot as plt

    s = df[(df.metric == "speedup_all_layers") & (df.method == "tsa")].copy()
    s["setting"] = s.apply(_label, axis=1)
    backends = sorted(s.backend.unique())
    fig, axes = plt.subplots(1, len(backends), figsize=(6 * len(backends), 4.2), sharey=True, squeeze=False)
    for ax, be in zip(axes[0], backends):
        sub = s[s.backend == be]
        for setting, g in sorted(sub.groupby("setting"), key=lambda x: x[0]):
            g = g.groupby("seq_len").value.median().sort_index()
            ax.plot(g.index, g.values, marker="o", label=setting)
        ax.axhline(1.0, color="gray", lw=0.8)
        ax.set_xscale("log", base=2)
        ax.set_xticks(sorted(sub.seq_len.unique()), [f"{int(x) // 1024}k" for x in sorted(sub.seq_len.unique())])
        ax.set_title(f"all-layer attention speedup vs {be} (half the layers sparse)")
        ax.set_xlabel("context length")
        ax.grid(alpha=0.3)
    axes[0][0].set_ylabel("speedup (dense / mean over layers)")
    axes[0][-1].legend(fontsize=8, ncol=2)
    gpu = ", ".join(sorted(df.gpu.dropna().unique()))
    fig.suptitle(f"TSA attention speedup, {gpu}", fontsize=10)
    fig.tight_layout()
    fig.savefig(path, dpi=130)
    plt.close(fig)
    return path


def overhead_breakdown(df, path: Path, keep_ratio: float = 0.675) -> Path:
    import matplotlib.pyplot as plt
    import numpy as np

    lat = df[(df.metric == "latency_ms") & (df.keep_ratio == keep_ratio)]
    be = "sdpa-cudnn" if "sdpa-cudnn" in set(lat.backend) else sorted(lat.backend.unique())[0]
    lat = lat[lat.backend == be]
    stages = ["score", "select", "gather", "scatter"]
    lengths = sorted(lat.seq_len.unique())
    fig, ax = plt.subplots(figsize=(8, 4.2))
    width = 0.38
    x = np.arange(len(lengths))
    for j, (method, hatch) in enumerate([("tsa", None), ("tsa-torch", "//")]):
        bottom = np.zeros(len(lengths))
        for i, stage in enumerate(stages):
            vals = np.array([lat[(lat.method == method) & (lat.stage == stage) & (lat.seq_len == L)].value.median()
                             for L in lengths])
            ax.bar(x + (j - 0.5) * width, vals, width, bottom=bottom, color=f"C{i}", hatch=hatch,
                   edgecolor="black", lw=0.3, label=stage if j == 0 else None)
            bottom += np.nan_to_num(vals)
    ax.set_xticks(x, [f"{L // 1024}k" for L in lengths])
    ax.set_ylabel("ms (stages timed one by one)")
    ax.set_title(f"TSA overhead by stage, keep ratio {keep_ratio}, {be}: ours (plain) vs PyTorch composition (hatched)",
                 fontsize=9)
    ax.legend(fontsize=8)
    ax.grid(axis="y", alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=130)
    plt.close(fig)
    return path
