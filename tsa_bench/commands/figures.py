"""``tsa-bench figures``: regenerate the figures from the committed result CSVs.

Latency figures from ``results/latency/*.csv`` (``--latency``); accuracy figures (per model and
length, score vs attention speedup with the Pareto frontier, and score vs attention-map
sparsity: :mod:`tsa_bench.analysis.figures`) from ``results/accuracy/*.csv`` (``--accuracy``)
when there are any; per-layer attention time per arm from ``results/accuracy/layers/*.csv``
(``--layers``, `tsa-bench study layers` output). Each CSV read is named on stderr; a missing
kind is said and skipped; with none it is a usage error. The PNG paths go to stdout, one a line.
"""
from __future__ import annotations

import glob
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Dict, List, Optional, Sequence, Tuple

from tsa_bench.cli import UsageError
from tsa_bench.paths import RESULTS_DIR

if TYPE_CHECKING:
    import pandas as pd

NAME = "figures"
HELP = "Regenerate results/figures/*.png from the result CSVs (prints which CSVs it read)."
EPILOG = """examples:
  tsa-bench figures                                   # every CSV under results/latency and results/accuracy
  tsa-bench figures --latency results/latency/latency-2026*.csv --out-dir /tmp/figs
  tsa-bench figures --latency --accuracy tests/fixtures/accuracy --out-dir /tmp/figs   # accuracy figures only
  tsa-bench figures --latency --accuracy --layers results/accuracy/layers --out-dir /tmp/figs   # per-layer times
"""
ACCURACY_FIGURES = ("accuracy_score_vs_speedup.png", "accuracy_score_vs_sparsity.png")


def add_arguments(p) -> None:
    p.add_argument("--latency", nargs="*", default=None,
                   help="latency CSVs (default: results/latency/*.csv)")
    p.add_argument("--accuracy", nargs="*", default=None,
                   help="accuracy CSVs, or folders whose *.csv are read (default: results/accuracy/)")
    p.add_argument("--layers", nargs="*", default=None,
                   help="per-layer attention CSVs of `tsa-bench study layers`, or folders of them (default: "
                        "results/accuracy/layers/ when --accuracy is not given either): one "
                        "accuracy_layer_times_<model>_<len>.png per model and length")
    p.add_argument("--gpu", default=None, help="GPU whose latency rows to plot (default: that of the newest row)")
    p.add_argument("--out-dir", default=str(RESULTS_DIR / "figures"))


def accuracy_files(paths: Optional[Sequence[str]], what: str = "--accuracy",
                   default: Optional[Path] = None) -> List[Path]:
    """``--accuracy`` as CSV paths: a folder gives its ``*.csv`` sorted by name (run id = time,
    :func:`tsa_bench.analysis.tables.find_csvs`), a file itself; ``None`` = ``results/accuracy/``
    (absent: no files). A given path that does not exist is a UsageError naming ``what`` (the
    argument, also for ``tsa-bench study best``)."""
    from tsa_bench.analysis.tables import find_csvs

    if paths is None:
        return find_csvs(default or RESULTS_DIR / "accuracy")
    files: List[Path] = []
    for raw in paths:
        p = Path(raw)
        if p.is_dir():
            files.extend(find_csvs(p))
        elif p.is_file():
            files.append(p)
        else:
            raise UsageError(f"{what}: no such file or folder: {raw}")
    return files


def accuracy_figures(files: Sequence[Path], out: Path) -> List[Path]:
    """Score vs attention speedup (Pareto frontier) and score vs sparsity from ``files``."""
    from tsa_bench.analysis.figures import score_vs_sparsity, score_vs_speedup
    from tsa_bench.analysis.tables import read_csvs

    try:
        df = read_csvs(files)
        written = [score_vs_speedup(df, out / ACCURACY_FIGURES[0]).path,
                   score_vs_sparsity(df, out / ACCURACY_FIGURES[1]).path]
        written += sensitivity_figures(df, out)
        return written
    except (ValueError, KeyError) as exc:
        raise UsageError(f"--accuracy: cannot draw the accuracy figures from {len(files)} CSVs: {exc}") from None


def sensitivity_figures(df, out: Path) -> List[Path]:
    """One per-layer sensitivity figure (``tsa-bench study sensitivity`` rows: ``layer_drop``,
    ``layer_drift``) per model and length, ``accuracy_sensitivity_<model>_<len>.png``; none
    when the CSVs hold no such rows."""
    from tsa_bench.analysis.figures import layer_sensitivity
    from tsa_bench.analysis.sensitivity import table_from_rows

    rows = df[df["metric"] == "layer_drop"] if "metric" in df.columns else df.iloc[:0]
    written = []
    for (model, L), _ in sorted(rows.groupby(["model", "seq_len"])):
        table, rho = table_from_rows(df, model=model, seq_len=L)
        name = f"accuracy_sensitivity_{str(model).replace('/', '_')}_{int(L) // 1024}k.png"
        title = f"{model}, {int(L) // 1024}k: TSA in one layer at a time (paired 95% bootstrap)"
        written.append(layer_sensitivity(table, out / name, rho=rho, title=title).path)
    return written


def layer_time_figures(files: Sequence[Path], out: Path) -> List[Path]:
    """One per-layer attention-time figure per model, length and `study layers` CSV of ``files``:
    ``accuracy_layer_times_<model>_<len>.png``, or, where several CSVs cover one model and length
    (timing runs of different sessions, whose arms must not share a line),
    ``accuracy_layer_times_<model>_<len>_<run id>.png`` for each (the run id is the CSV's name
    without ``layers-``)."""
    from tsa_bench.analysis.figures import layer_times
    from tsa_bench.analysis.tables import read_csvs

    cells: Dict[Tuple[str, int], List[Tuple[Path, pd.DataFrame]]] = {}
    for f in files:
        df = read_csvs([f])
        if "metric" not in df.columns:
            continue
        rows = df[df["metric"] == "attention_ms"]
        for (model, L), g in rows.groupby(["model", "seq_len"]):
            cells.setdefault((str(model), int(L)), []).append((Path(f), g))
    if not cells:
        raise UsageError(f"--layers: no attention_ms rows in {len(files)} CSVs (write them with `tsa-bench study "
                         "layers`)")
    written = []
    for (model, L), sources in sorted(cells.items()):
        stem = f"accuracy_layer_times_{model.replace('/', '_')}_{L // 1024}k"
        for f, g in sources:
            run_id = f.stem[len("layers-"):] if f.stem.startswith("layers-") else f.stem
            name = f"{stem}.png" if len(sources) == 1 else f"{stem}_{run_id}.png"
            title = f"{model}, {L // 1024}k: attention time per layer and arm (median over samples)" + \
                ("" if len(sources) == 1 else f"\n{f.name}")
            written.append(layer_times(g, out / name, title=title).path)
    return written


def run(args) -> int:
    import matplotlib
    matplotlib.use("Agg")

    files = args.latency if args.latency is not None else sorted(glob.glob(str(RESULTS_DIR / "latency/*.csv")))
    acc_files = accuracy_files(args.accuracy)
    layers = getattr(args, "layers", None)
    # the default folder only when --accuracy is defaulted too: explicit inputs draw only what they name
    layer_files = accuracy_files(layers, "--layers", RESULTS_DIR / "accuracy" / "layers") \
        if layers is not None or args.accuracy is None else []
    if not files and not acc_files and not layer_files:
        raise UsageError("no latency CSVs and no accuracy CSVs found (run `tsa-bench latency` first, or pass "
                         "--latency / --accuracy / --layers)")
    out = Path(args.out_dir)
    out.mkdir(parents=True, exist_ok=True)
    written: List[Path] = []
    if acc_files:
        for f in acc_files:
            print(f"read {f}", file=sys.stderr)
        written += accuracy_figures(acc_files, out)
    else:
        print("no accuracy CSVs " + ("given" if args.accuracy is not None else f"under {RESULTS_DIR / 'accuracy'}")
              + ": accuracy figures skipped", file=sys.stderr)
    if layer_files:
        written += layer_time_figures(layer_files, out)
    if files:
        written += _latency_figures(files, args.gpu, out)
    else:
        print("no latency CSVs " + ("given" if args.latency is not None else f"under {RESULTS_DIR / 'latency'}")
              + ": latency figures skipped", file=sys.stderr)
    for w in written:
        print(w)
    return 0


def _latency_figures(files: Sequence[str], gpu: Optional[str], out: Path) -> List[Path]:
    import pandas as pd

    for f in files:
        print(f"read {f}", file=sys.stderr)
    df = pd.concat([pd.read_csv(f) for f in files], ignore_index=True)
    df = df[df.batch == 1]
    gpu = gpu or df.sort_values("timestamp").gpu.iloc[-1]
    if gpu not in set(df.gpu):
        raise UsageError(f"no rows from GPU {gpu!r}; have {sorted(set(df.gpu))}")
    print(f"plotting GPU {gpu} (speedups never mix GPUs)", file=sys.stderr)
    df = df[df.gpu == gpu]
    return [speedup_vs_context(df, out / "latency_speedup.png"),
            overhead_breakdown(df, out / "latency_overhead.png")]


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
