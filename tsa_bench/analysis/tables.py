"""Accuracy-study tables: read the tidy CSVs, one point per method, the per-task table.

The accuracy CSVs (``results/accuracy/*.csv``, see :mod:`tsa_bench.analysis`) hold tidy rows
keyed by ``model``, ``seq_len``, ``setting`` (one label per method configuration, e.g.
``"tsa tau=0.005 drift"``; derived from ``method``/``tau``/``layers`` when the column is
absent) and ``task`` (``"all"`` for the mean over tasks), with the metrics of :data:`METRICS`.
"""
from __future__ import annotations

import glob
from pathlib import Path
from typing import Iterable, List, Optional, Sequence, Union

import numpy as np
import pandas as pd

from tsa_bench.analysis.pareto import pareto_mask

SCORE_METRICS = ("score", "score_diff")
# attention_speedup_all_layers (dense / method attention time summed over every layer, `tsa-bench study`)
# and attention_speedup_untouched (the layers the arm leaves as dense: x1.00 unless its timing carries a
# bias) are carried into the points table; the figures plot attention_speedup (the sparse layers)
SPEED_METRICS = ("attention_speedup", "attention_sparsity", "keep_fraction", "ttft_speedup",
                 "attention_speedup_all_layers", "attention_speedup_untouched")
METRICS = SCORE_METRICS + SPEED_METRICS
POINT_COLUMNS = ["model", "seq_len", "setting", "method", "tau", "layers", "n", "score", "score_lo", "score_hi",
                 "diff", "diff_lo", "diff_hi", "bar_lo", "bar_hi", *SPEED_METRICS, "on_frontier"]


def read_csvs(paths: Iterable[Union[str, Path]]) -> pd.DataFrame:
    """Concatenate CSVs in the given order (pass them sorted by run id, i.e. by time: where two
    rows measure the same thing, later rows win in :func:`accuracy_points`)."""
    paths = [Path(p) for p in paths]
    if not paths:
        raise ValueError("no CSV files given")
    return pd.concat([pd.read_csv(p) for p in paths], ignore_index=True)


def find_csvs(directory: Union[str, Path]) -> List[Path]:
    """The ``*.csv`` files directly under ``directory``, sorted by name (= run id = time)."""
    return [Path(p) for p in sorted(glob.glob(str(Path(directory) / "*.csv")))]


def _label(r) -> str:
    parts = [str(r["method"])]
    tau = r.get("tau")
    if tau is not None and tau == tau:
        parts.append(f"tau={float(tau):g}")
    layers = r.get("layers")
    if layers is not None and layers == layers and str(layers):
        parts.append(str(layers))
    return " ".join(parts)


def with_setting(df: pd.DataFrame) -> pd.DataFrame:
    """``df`` with a ``setting`` column (kept where present and filled, else derived as
    ``"<method> tau=<tau> <layers>"``)."""
    for col in ("model", "seq_len", "method", "task", "metric", "value"):
        if col not in df.columns:
            raise ValueError(f"accuracy table: missing column {col!r}")
    out = df.copy()
    derived = out.apply(_label, axis=1) if len(out) else pd.Series([], dtype=object)
    out["setting"] = out["setting"].where(out["setting"].notna(), derived) if "setting" in out.columns else derived
    return out


def accuracy_points(df: pd.DataFrame) -> pd.DataFrame:
    """One row per (model, seq_len, setting) with the headline score, its paired difference to
    dense and the speed figures (columns :data:`POINT_COLUMNS`).

    ``score``/``diff`` come from the rows with ``task == "all"`` and a ``seq_len`` (the mean
    over tasks at that length). ``bar_lo``/``bar_hi``: the paired interval of the difference
    drawn around the method's score (``score - (diff - diff_lo)``, ``score + (diff_hi - diff)``),
    the error bar of the figures: it says whether the point is distinguishable from dense on
    these samples. The speed metrics are matched on (model, seq_len, setting) whatever their
    ``task``; missing ones are NaN. ``on_frontier``: on the (attention_speedup, score) Pareto
    frontier of its (model, seq_len) among points with both values (False otherwise).
    Where a key has several rows of one metric, the last row wins.
    """
    d = with_setting(df)
    d = d[d["metric"].isin(METRICS) & d["seq_len"].notna()]
    score = d[d["metric"].isin(SCORE_METRICS) & (d["task"] == "all")]
    speed = d[d["metric"].isin(SPEED_METRICS)]
    key = ["model", "seq_len", "setting"]
    if score.empty:
        raise ValueError("accuracy table: no 'score' rows with task == 'all' and a seq_len")
    s = score.drop_duplicates(key + ["metric"], keep="last")
    wide = s.pivot(index=key, columns="metric", values="value")
    for col in SCORE_METRICS:
        if col not in wide.columns:
            raise ValueError(f"accuracy table: no {col!r} rows")
    for col, src in (("score_lo", ("score", "lo")), ("score_hi", ("score", "hi")),
                     ("diff_lo", ("score_diff", "lo")), ("diff_hi", ("score_diff", "hi")),
                     ("n", ("score", "n"))):
        wide[col] = s[s["metric"] == src[0]].set_index(key)[src[1]]
    wide = wide.rename(columns={"score_diff": "diff"})
    meta = s[s["metric"] == "score"].set_index(key)
    for col in ("method", "tau", "layers"):
        wide[col] = meta[col] if col in meta.columns else np.nan
    sp = speed.drop_duplicates(key + ["metric"], keep="last").pivot(index=key, columns="metric", values="value")
    wide = wide.join(sp, how="left")
    for col in SPEED_METRICS:
        if col not in wide.columns:
            wide[col] = np.nan
    wide["bar_lo"] = wide["score"] - (wide["diff"] - wide["diff_lo"])
    wide["bar_hi"] = wide["score"] + (wide["diff_hi"] - wide["diff"])
    wide = wide.reset_index()
    wide.columns.name = None
    wide["seq_len"] = wide["seq_len"].astype(int)
    wide["on_frontier"] = False
    for _, g in wide.groupby(["model", "seq_len"]):
        ok = g["attention_speedup"].notna() & g["score"].notna()
        if ok.any():
            wide.loc[g.index[ok], "on_frontier"] = pareto_mask(g.loc[ok, "attention_speedup"], g.loc[ok, "score"])
    return wide[POINT_COLUMNS].sort_values(["model", "seq_len", "attention_speedup", "setting"],
                                           na_position="first").reset_index(drop=True)


def per_task_table(df: pd.DataFrame, model: Optional[str] = None, seq_len: Optional[int] = None,
                   metric: str = "score", settings: Optional[Sequence[str]] = None) -> pd.DataFrame:
    """Task x setting table of ``metric`` (``"score"`` or ``"score_diff"``) for one model and
    length (default: the only one present), the mean over tasks as the last row ``"mean"``.
    ``settings`` picks and orders the columns (default: all, sorted)."""
    d = with_setting(df)
    d = d[(d["metric"] == metric) & d["seq_len"].notna() & d["task"].notna()]
    for col, val in (("model", model), ("seq_len", seq_len)):
        if val is None:
            vals = sorted(v.item() if hasattr(v, "item") else v for v in d[col].unique())
            if len(vals) != 1:
                raise ValueError(f"per_task_table: several values of {col} ({vals}); pass {col}=")
        else:
            d = d[d[col] == val]
    if d.empty:
        raise ValueError(f"per_task_table: no {metric!r} rows for model={model} seq_len={seq_len}")
    d = d.drop_duplicates(["setting", "task"], keep="last")
    t = d.pivot(index="task", columns="setting", values="value")
    tasks = [x for x in sorted(t.index) if x != "all"] + (["all"] if "all" in t.index else [])
    t = t.loc[tasks].rename(index={"all": "mean"})
    if settings is not None:
        missing = [s for s in settings if s not in t.columns]
        if missing:
            raise ValueError(f"per_task_table: no rows for settings {missing}")
        t = t[list(settings)]
    else:
        t = t[sorted(t.columns)]
    t.columns.name = None
    return t


BEST_SPEEDS = {"attention": "attention_speedup", "ttft": "ttft_speedup", "sparsity": "attention_sparsity"}


def best_within(points: pd.DataFrame, max_drop: float = 1.0, criterion: str = "point",
                speed: str = "attention") -> pd.DataFrame:
    """Per (model, seq_len): the fastest setting other than dense whose score is within
    ``max_drop`` points of dense, from an :func:`accuracy_points` table.

    Within the budget means ``-diff <= max_drop`` (``criterion="point"``) or ``-diff_lo <=
    max_drop`` (``"upper"``: the upper end of the drop's paired interval). Fastest = the largest
    ``speed`` figure (``attention``: attention speedup of the sparse layers; ``ttft``;
    ``sparsity``: attention-map sparsity), ties broken by the higher score, then the setting
    name. Settings without that figure are not candidates. One row per (model, seq_len), in
    columns ``model, seq_len, setting, diff, diff_lo, diff_hi, attention_speedup, ttft_speedup,
    attention_sparsity, attention_speedup_untouched`` (the layers the setting leaves as dense,
    against dense's: far from 1 when its timing and dense's ran on differently loaded hosts; NaN
    where the table has none), ``candidates`` (settings within the budget), ``closest``; where
    none is within the budget, ``setting`` is None and ``closest`` names the setting with the
    smallest drop (its figures fill the row).
    """
    if criterion not in ("point", "upper"):
        raise ValueError(f"criterion must be 'point' or 'upper', got {criterion!r}")
    if speed not in BEST_SPEEDS:
        raise ValueError(f"speed must be one of {sorted(BEST_SPEEDS)}, got {speed!r}")
    if not max_drop >= 0:
        raise ValueError(f"max_drop must be >= 0, got {max_drop}")
    col = BEST_SPEEDS[speed]
    figs = ("diff", "diff_lo", "diff_hi", "attention_speedup", "ttft_speedup", "attention_sparsity",
            "attention_speedup_untouched")
    points = points.assign(**{c: np.nan for c in figs if c not in points.columns})
    rows = []
    for (model, L), g in points.groupby(["model", "seq_len"], sort=True):
        g = g[(g["method"].astype(str).str.lower() != "dense") & g[col].notna() & g["diff"].notna()]
        drop = -(g["diff"] if criterion == "point" else g["diff_lo"])
        ok = g[drop <= max_drop + 1e-9]
        base = dict(model=model, seq_len=int(L), candidates=len(ok))
        if len(ok):
            best = ok.sort_values([col, "score", "setting"], ascending=[False, False, True]).iloc[0]
            rows.append({**base, "setting": best["setting"], "closest": None, **{c: best[c] for c in figs}})
        else:
            near = g.loc[drop.idxmin()] if len(g) else None
            rows.append({**base, "setting": None, "closest": None if near is None else near["setting"],
                         **{c: (np.nan if near is None else near[c]) for c in figs}})
    return pd.DataFrame(rows, columns=["model", "seq_len", "setting", *figs, "candidates", "closest"])
