"""Figures of the accuracy study (matplotlib's Agg canvas, without pyplot): score vs attention speedup with the
Pareto frontier, score vs attention-map sparsity, and per-layer sensitivity vs drift.

Each function takes a tidy DataFrame and an output path and returns a :class:`Plot`: the path
written (``os.fspath(plot)`` works), the plotted table, and ``drawn``: per panel, the
coordinates read back from the matplotlib artists after drawing (so a test checks what is
on the figure, not only what was meant to be).
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Dict, Optional, Tuple, Union

import numpy as np
import pandas as pd

from tsa_bench.analysis.pareto import frontier_steps
from tsa_bench.analysis.tables import accuracy_points

Panel = Tuple[str, int]


@dataclass(frozen=True)
class Plot:
    """``path``: the PNG written; ``data``: one row per plotted point (for the accuracy figures
    :func:`~tsa_bench.analysis.tables.accuracy_points` rows, with ``on_frontier``); ``drawn``:
    per panel key, ``{"points": [n, 2] array, "frontier": [m, 2] array}`` read back from the
    artists (``frontier`` absent where none is drawn)."""
    path: Path
    data: pd.DataFrame
    drawn: Dict[Any, Dict[str, np.ndarray]] = field(default_factory=dict)

    def __fspath__(self) -> str:
        return str(self.path)


def _figure(figsize):
    """A figure drawn by the Agg canvas, outside pyplot: no global backend switch, nothing to
    close, nothing shown in a notebook unless displayed."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=figsize)
    FigureCanvasAgg(fig)
    return fig


def _fmt_len(L: int) -> str:
    return f"{L // 1024}K" if L % 1024 == 0 else str(L)


def _family(method: Any, setting: Any = None) -> str:
    """The colour group of a point: its method, plus the dropped-row variant when the setting
    names one (``... dropped=local:64``), so that variant is told apart from plain TSA."""
    fam = str(method).lower() if isinstance(method, str) else "?"
    if isinstance(setting, str) and " dropped=" in setting:
        fam += " (dropped rows: " + setting.split(" dropped=", 1)[1].split()[0] + ")"
    return fam


# fixed colour and marker slots, so a method or layer set looks the same in every figure
# (the others follow, in sorted order)
FAMILY_ORDER = ("dense", "tsa", "flexprefill", "flexprefill+tsa", "xattention", "xattention+tsa",
                "minference", "minference+tsa")
LAYER_SET_ORDER = ("all", "drift", "half", "late")


def _slots(present, fixed) -> Dict[str, int]:
    """``{name: slot}``: a name of ``fixed`` keeps its index there; the other present names take
    the next slots, sorted."""
    present = set(present)
    out = {name: i for i, name in enumerate(fixed) if name in present}
    for k, name in enumerate(sorted(present - set(fixed))):
        out[name] = len(fixed) + k
    return out


def _grid(n: int, width: float = 5.2, height: float = 4.2):
    cols = min(n, 3)
    rows = math.ceil(n / cols)
    fig = _figure((width * cols, height * rows))
    axes = fig.subplots(rows, cols, squeeze=False)
    for ax in axes.flat[n:]:
        ax.set_visible(False)
    return fig, list(axes.flat[:n])


def _scatter_panels(points: pd.DataFrame, xcol: str, xlabel: str, path: Path, title: str,
                    frontier: bool) -> Plot:
    from matplotlib import colormaps

    pts = points[points[xcol].notna() & points["score"].notna()]
    if pts.empty:
        raise ValueError(f"no point has both a score and {xcol}")
    panels = sorted({(m, int(L)) for m, L in zip(pts["model"], pts["seq_len"])})
    fig, axes = _grid(len(panels))
    pts = pts.assign(family=[_family(m, st) for m, st in zip(pts["method"], pts["setting"])])
    slots = _slots(pts["family"], FAMILY_ORDER)
    families = sorted(slots, key=slots.get)
    colours = {f: colormaps["tab10"](i % 10) for f, i in slots.items()}
    set_slots = _slots({str(v) for v in pts["layers"] if isinstance(v, str)}, LAYER_SET_ORDER)
    markers = {name: "os^Dvp*hX"[i % 9] for name, i in set_slots.items()}     # in slot order
    drawn: Dict[Panel, Dict[str, np.ndarray]] = {}
    for ax, (model, L) in zip(axes, panels):
        g = pts[(pts["model"] == model) & (pts["seq_len"] == L)]
        xy = []
        for fam in families:
            gf = g[g["family"] == fam]
            for _, r in gf.iterrows():
                x, y = float(r[xcol]), float(r["score"])
                lo = y - float(r["bar_lo"]) if pd.notna(r["bar_lo"]) else 0.0      # no interval: no bar
                hi = float(r["bar_hi"]) - y if pd.notna(r["bar_hi"]) else 0.0
                marker = markers.get(r["layers"], "o") if isinstance(r["layers"], str) else "o"
                cont = ax.errorbar([x], [y], yerr=[[lo], [hi]], fmt=marker, ms=6, capsize=2,
                                   color=colours[fam], mfc=colours[fam] if r["on_frontier"] else "white")
                xy.append(np.column_stack(cont.lines[0].get_data()).astype(np.float64))
                if pd.notna(r["tau"]):
                    ax.annotate(f"{float(r['tau']):g}", (x, y), textcoords="offset points",
                                xytext=(4, 3), fontsize=6, color=colours[fam])
        drawn[(model, L)] = {"points": np.vstack(xy)}
        if frontier:
            xs, ys = frontier_steps(g[xcol].astype(float), g["score"].astype(float))
            (line,) = ax.step(xs, ys, where="pre", color="black", lw=1.0, alpha=0.7)
            drawn[(model, L)]["frontier"] = np.column_stack(line.get_data())
        ax.set_title(f"{model}, {_fmt_len(L)}", fontsize=10)
        ax.set_xlabel(xlabel)
        ax.set_ylabel("RULER score, mean over tasks (points)")
        ax.grid(alpha=0.3)
    # one legend for the figure: every method of every panel, the layer-set markers, the frontier
    from matplotlib.lines import Line2D
    handles = [Line2D([], [], ls="", marker="o", color=colours[f], label=f) for f in families]
    handles += [Line2D([], [], ls="", marker=mk, color="gray", mfc="white", label=f"layers: {name}")
                for name, mk in markers.items()]
    if frontier:
        handles.append(Line2D([], [], color="black", lw=1.0, alpha=0.7, label="Pareto frontier (filled: on it)"))
    fig.legend(handles=handles, loc="lower center", ncol=min(len(handles), 6), fontsize=7, frameon=False)
    fig.suptitle(title, fontsize=10)
    fig.tight_layout(rect=(0, 0.045 + 0.025 * ((len(handles) - 1) // 6), 1, 1))
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=120)
    return Plot(path=path, data=pts.reset_index(drop=True), drawn=drawn)


def score_vs_speedup(df: pd.DataFrame, path: Union[str, Path]) -> Plot:
    """Per (model, length) panel: every setting a point at (attention speedup of its sparse
    layers, score = mean over tasks); error bar = the paired 95% bootstrap interval of its
    difference to dense, drawn around its score (``bar_lo``..``bar_hi`` of
    :func:`~tsa_bench.analysis.tables.accuracy_points`); filled markers on the Pareto frontier,
    which is drawn as a step line (best score reachable at a speedup of at least x). Colour =
    method, marker = layer set, the small number = tau. Points without a speedup are left out."""
    pts = accuracy_points(df)
    return _scatter_panels(pts, "attention_speedup", "attention speedup of the sparse layers (x dense)", Path(path),
                           "Accuracy vs attention speedup (error bars: paired 95% bootstrap interval vs dense)",
                           frontier=True)


def score_vs_sparsity(df: pd.DataFrame, path: Union[str, Path]) -> Plot:
    """As :func:`score_vs_speedup` with x = attention-map sparsity (fraction of the causal
    attention map the sparse layers skip); no frontier. Points without a sparsity are left out."""
    pts = accuracy_points(df)
    return _scatter_panels(pts, "attention_sparsity", "attention-map sparsity of the sparse layers", Path(path),
                           "Accuracy vs attention-map sparsity (error bars: paired 95% bootstrap interval vs dense)",
                           frontier=False)


def layer_sensitivity(table: pd.DataFrame, path: Union[str, Path], *, rho: Optional[float] = None,
                      title: Optional[str] = None) -> Plot:
    """Bars: the score drop (points, dense - TSA in that layer only) per layer with its paired
    bootstrap interval as error bar; line on a twin axis: the layer's drift. ``table`` is a
    :func:`~tsa_bench.analysis.sensitivity.sensitivity_table` (columns ``layer``, ``drop``,
    ``drop_lo``, ``drop_hi``, ``drift``); ``rho`` (Spearman, drift vs drop) goes in the title.
    ``drawn[None]``: ``{"bars": [n, 2] (layer, drop), "drift": [n, 2] (layer, drift)}``."""
    for col in ("layer", "drop", "drop_lo", "drop_hi", "drift"):
        if col not in table.columns:
            raise ValueError(f"sensitivity table: missing column {col!r}")
    if table.empty:
        raise ValueError("sensitivity table is empty")
    t = table.sort_values("layer").reset_index(drop=True)
    x = np.arange(len(t))
    width = max(5.0, 0.35 * len(t) + 2.5)
    fig = _figure((width, 4.0))
    ax = fig.subplots()
    bars = ax.bar(x, t["drop"], yerr=[t["drop"] - t["drop_lo"], t["drop_hi"] - t["drop"]], capsize=2,
                  color="tab:red", alpha=0.75, label="score drop (points)")
    ax.axhline(0.0, color="gray", lw=0.8)
    ax.set_xticks(x, [str(int(v)) for v in t["layer"]])
    ax.set_xlabel("layer running TSA (alone)")
    ax.set_ylabel("score drop vs dense (points)")
    ax2 = ax.twinx()
    (line,) = ax2.plot(x, t["drift"], "o-", color="tab:blue", ms=4, label="drift")
    ax2.set_ylabel("drift (||h_out - h_in|| / ||h_in||)")
    head = title or "Per-layer sensitivity (error bars: paired 95% bootstrap interval)"
    if rho is not None:
        head += f"; Spearman rho(drift, drop) = {rho:.2f}" if rho == rho else "; Spearman rho undefined"
    import textwrap
    ax.set_title("\n".join(textwrap.wrap(head, width=int(width * 11))), fontsize=9)   # narrow figures wrap it
    handles = [bars, line]
    ax.legend(handles, [h.get_label() for h in handles], fontsize=7, loc="upper left")
    fig.tight_layout()
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=120)
    drawn = {None: {"bars": np.array([[t["layer"].iloc[i], p.get_height()] for i, p in enumerate(bars.patches)]),
                    "drift": np.column_stack([t["layer"].to_numpy(), line.get_ydata()])}}
    return Plot(path=path, data=t, drawn=drawn)


def layer_times(df: pd.DataFrame, path: Union[str, Path], *, title: Optional[str] = None) -> Plot:
    """Per-layer attention time of every arm (``tsa-bench study layers`` rows of one model and
    length: ``metric == "attention_ms"``, ``layer`` set): x = layer, y = median ms (log scale),
    one line per setting, dense in black. ``drawn[None]``: ``{setting: [n, 2] (layer, ms)}``."""
    for col in ("metric", "layer", "value", "setting", "method"):
        if col not in df.columns:
            raise ValueError(f"layer-time rows: missing column {col!r}")
    rows = df[(df["metric"] == "attention_ms") & df["layer"].notna()]
    if rows.empty:
        raise ValueError("no per-layer attention_ms rows (write them with `tsa-bench study layers`)")
    from matplotlib import colormaps

    settings = list(dict.fromkeys(rows["setting"]))
    family = {st: _family(m, st) for st, m in zip(rows["setting"], rows["method"])}
    slots = _slots(set(family.values()), FAMILY_ORDER)
    cmap = colormaps["tab10"]
    styles = ("-", "--", ":", "-.")
    layers = sorted({int(v) for v in rows["layer"]})
    fig = _figure((max(6.0, 0.3 * len(layers) + 4.0), 4.6))
    ax = fig.subplots()
    drawn = {}
    seen: Dict[str, int] = {}
    for st in settings:
        t = rows[rows["setting"] == st].sort_values("layer")
        fam = family[st]
        k = seen.get(fam, 0)
        seen[fam] = k + 1
        dense = fam == "dense"
        (line,) = ax.plot(t["layer"].astype(int), t["value"], styles[k % len(styles)], marker="o", ms=3,
                          lw=2.0 if dense else 1.0, color="black" if dense else cmap(slots[fam] % 10), label=st)
        drawn[st] = np.column_stack([line.get_xdata(), line.get_ydata()]).astype(float)
    ax.set_yscale("log")
    ax.set_xticks(layers, [str(v) for v in layers], fontsize=7)
    ax.set_xlabel("layer")
    ax.set_ylabel("attention time per call (ms, median over samples)")
    ax.set_title(title or "Attention time per layer", fontsize=9)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=6, loc="center left", bbox_to_anchor=(1.01, 0.5))
    fig.tight_layout()
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=120)
    return Plot(path=path, data=rows, drawn={None: drawn})

