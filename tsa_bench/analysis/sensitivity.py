"""Per-layer sensitivity: the score lost when TSA runs in one layer only, beside that layer's drift.

Input: a dense run and one run per layer (TSA in that layer alone), all on the same samples
(prediction records, matched by id), and the per-layer drift of ``tsa-bench profile-layers``
(its JSON's ``drift`` list, its CSV's ``metric == "drift"`` rows, or a plain list / mapping).

Per layer: ``drop`` = dense score - single-layer score in points (positive = damage) for the
headline statistic (mean over tasks; mean over lengths too when there are several), with the
percentile bootstrap interval of :mod:`tsa_bench.analysis.paired` (resampled within each
task and length, the same resampled ids for dense and for every layer's run). Then the
Spearman rank correlation between drift and drop over the layers.
"""
from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any, Dict, List, Mapping, Optional, Sequence, Tuple, Union

import numpy as np
import pandas as pd

from tsa_bench.analysis.paired import Records, Seed, compare_many

DriftSource = Union[str, Path, pd.DataFrame, Sequence[float], Mapping[int, float]]
SENSITIVITY_COLUMNS = ["layer", "drift", "n", "dense", "score", "drop", "drop_lo", "drop_hi"]


def rankdata(x: Sequence[float]) -> np.ndarray:
    """Ranks 1..n of ``x`` (ascending); tied values share the mean of the ranks they span."""
    a = np.asarray(x, dtype=np.float64)
    if a.ndim != 1:
        raise ValueError(f"rankdata needs a 1-D sequence, got shape {a.shape}")
    order = np.argsort(a, kind="stable")
    sorted_a = a[order]
    ranks = np.empty(a.size)
    start = 0
    for end in range(1, a.size + 1):
        if end == a.size or sorted_a[end] != sorted_a[start]:
            ranks[order[start:end]] = (start + 1 + end) / 2.0          # mean of ranks start+1 .. end
            start = end
    return ranks


def spearman(x: Sequence[float], y: Sequence[float]) -> float:
    """Spearman's rho: the Pearson correlation of the average-tie ranks of ``x`` and ``y``.
    NaN when either is constant (the rank correlation is undefined); ValueError for fewer
    than two pairs, unequal lengths or non-finite values."""
    a = np.asarray(x, dtype=np.float64)
    b = np.asarray(y, dtype=np.float64)
    if a.shape != b.shape or a.ndim != 1:
        raise ValueError(f"x and y must be 1-D of one length, got shapes {a.shape} and {b.shape}")
    if a.size < 2:
        raise ValueError(f"spearman needs at least two pairs, got {a.size}")
    if not (np.isfinite(a).all() and np.isfinite(b).all()):
        raise ValueError("spearman: x and y must be finite")
    ra, rb = rankdata(a) - (a.size + 1) / 2.0, rankdata(b) - (a.size + 1) / 2.0
    den = math.sqrt(float(ra @ ra) * float(rb @ rb))
    return float("nan") if den == 0.0 else float(ra @ rb) / den


def load_drift(source: DriftSource) -> Dict[int, float]:
    """``{layer: drift}`` from a ``profile-layers`` JSON path (its ``drift`` list, index =
    layer), a ``profile-layers`` CSV path or DataFrame (rows with ``metric == "drift"``, columns
    ``layer`` and ``value``), a list (index = layer) or a mapping."""
    if isinstance(source, (str, Path)):
        p = Path(source)
        if p.suffix == ".csv":
            return load_drift(pd.read_csv(p))
        try:
            doc = json.loads(p.read_text())
        except (OSError, json.JSONDecodeError) as exc:
            raise ValueError(f"cannot read drift profile {p}: {exc}") from None
        if not isinstance(doc.get("drift"), list):
            raise ValueError(f"drift profile {p} has no 'drift' list (write it with `tsa-bench profile-layers`)")
        return load_drift(doc["drift"])
    if isinstance(source, pd.DataFrame):
        rows = source[source["metric"] == "drift"] if "metric" in source.columns else source
        if rows.empty or not {"layer", "value"} <= set(rows.columns):
            raise ValueError("drift table: need rows with metric == 'drift' and columns 'layer' and 'value'")
        if rows["layer"].duplicated().any():
            dup = sorted(int(v) for v in rows.loc[rows["layer"].duplicated(), "layer"].unique())
            raise ValueError(f"drift table: layers {dup} occur more than once (rows of several runs?)")
        out = {int(layer): float(v) for layer, v in zip(rows["layer"], rows["value"])}
    elif isinstance(source, Mapping):
        out = {int(k): float(v) for k, v in source.items()}
    else:
        out = {i: float(v) for i, v in enumerate(source)}
    bad = [k for k, v in out.items() if not math.isfinite(v)]
    if bad:
        raise ValueError(f"drift of layers {bad} is not finite")
    return out


def sensitivity_table(dense: Records, per_layer: Mapping[int, Records], drift: DriftSource, *,
                      n_resamples: int = 2000, seed: Seed = 0,
                      confidence: float = 0.95) -> Tuple[pd.DataFrame, float]:
    """(table, rho): one row per layer of ``per_layer`` (columns :data:`SENSITIVITY_COLUMNS`,
    sorted by layer; ``dense``/``score`` are the headline scores, ``drop = dense - score`` with
    its paired interval ``[drop_lo, drop_hi]``), and Spearman's rho between ``drift`` and
    ``drop`` over those layers (NaN when either column is constant)."""
    if not per_layer:
        raise ValueError("per_layer: give the runs of at least one layer")
    d = load_drift(drift)
    missing = sorted(set(per_layer) - set(d))
    if missing:
        raise ValueError(f"no drift value for layers {missing} (drift covers layers {sorted(d)})")
    layers = sorted(per_layer)
    table = compare_many(dense, {str(layer): per_layer[layer] for layer in layers},
                         n_resamples=n_resamples, seed=seed, confidence=confidence)
    level = "mean_lengths" if (table.level == "mean_lengths").any() else "mean_tasks"
    head = table[table.level == level].set_index("method")
    rows = []
    for layer in layers:
        r = head.loc[str(layer)]
        rows.append(dict(layer=layer, drift=d[layer], n=int(r["n"]), dense=r["baseline"], score=r["score"],
                         drop=0.0 - r["diff"], drop_lo=0.0 - r["diff_hi"], drop_hi=0.0 - r["diff_lo"]))
    out = pd.DataFrame(rows, columns=SENSITIVITY_COLUMNS)
    rho = spearman(out["drift"], out["drop"]) if len(out) >= 2 else float("nan")
    return out, rho


def rank_correlations(table: pd.DataFrame, predictors: Sequence[str], target: str = "drop") -> Dict[str, float]:
    """Spearman's rho between ``table[target]`` and each column of ``predictors`` (e.g. drift
    and any per-layer figure joined onto the :func:`sensitivity_table`, such as a layer's kept
    fraction), over the rows where both are finite; NaN where fewer than two rows remain or
    a column is constant there."""
    out = {}
    for col in predictors:
        if col not in table.columns:
            raise ValueError(f"no column {col!r} in the table (have {list(table.columns)})")
        x = pd.to_numeric(table[col], errors="coerce").to_numpy(dtype=float)
        y = pd.to_numeric(table[target], errors="coerce").to_numpy(dtype=float)
        ok = np.isfinite(x) & np.isfinite(y)
        out[col] = spearman(x[ok], y[ok]) if ok.sum() >= 2 else float("nan")
    return out


def sensitivity_rows(table: pd.DataFrame, rho: float, digits: Optional[int] = 4, **identity: Any) -> List[Dict[str, Any]]:
    """Tidy rows (:func:`tsa_bench.results.row`) of a :func:`sensitivity_table`: per layer
    ``layer_drop`` (value, paired interval, ``n``) and ``layer_drift``; once
    ``drift_drop_spearman`` (rho). ``identity``: identity columns (``model``, ``seq_len``,
    ``method``, ``tau``, ...) and extra columns; ``task`` defaults to ``"all"``."""
    from tsa_bench.results import IDENTITY, row

    core = {k: v for k, v in identity.items() if k in IDENTITY and k != "layer"}
    core.setdefault("task", "all")
    extra = {k: v for k, v in identity.items() if k not in IDENTITY}

    def r(x):
        x = float(x)
        return None if math.isnan(x) else (round(x, digits) if digits is not None else x) + 0.0   # no -0.0

    out = []
    for t in table.itertuples(index=False):
        layer = int(t.layer)
        out.append({**row("layer_drop", r(t.drop), lo=r(t.drop_lo), hi=r(t.drop_hi), n=int(t.n), layer=layer,
                          **core), **extra})
        out.append({**row("layer_drift", r(t.drift), layer=layer, **core), **extra})
    out.append({**row("drift_drop_spearman", r(rho), n=len(table), **core), **extra})
    return out


def table_from_rows(df: pd.DataFrame, model: Optional[str] = None,
                    seq_len: Optional[int] = None) -> Tuple[pd.DataFrame, float]:
    """The (table, rho) of :func:`sensitivity_table` back from tidy rows (:func:`sensitivity_rows`)
    of one model and length (default: the only one present). Later rows win where a layer
    appears twice. ``dense``/``score`` are not stored in the rows: NaN here."""
    d = df[df["metric"].isin(["layer_drop", "layer_drift", "drift_drop_spearman"])]
    for col, val in (("model", model), ("seq_len", seq_len)):
        if val is None:
            vals = sorted(v.item() if hasattr(v, "item") else v for v in d[col].dropna().unique())
            if len(vals) != 1:
                raise ValueError(f"sensitivity rows: several values of {col} ({vals}); pass {col}=")
        else:
            d = d[d[col] == val]
    drop = d[d["metric"] == "layer_drop"].drop_duplicates("layer", keep="last").set_index("layer")
    drift = d[d["metric"] == "layer_drift"].drop_duplicates("layer", keep="last").set_index("layer")["value"]
    if drop.empty:
        raise ValueError(f"no layer_drop rows for model={model} seq_len={seq_len}")
    missing = sorted(set(drop.index) - set(drift.index))
    if missing:
        raise ValueError(f"no layer_drift rows for layers {[int(i) for i in missing]}")
    layers = sorted(int(i) for i in drop.index)
    out = pd.DataFrame(dict(layer=layers, drift=[float(drift[i]) for i in layers],
                            n=[int(drop.loc[i, "n"]) for i in layers], dense=np.nan, score=np.nan,
                            drop=[float(drop.loc[i, "value"]) for i in layers],
                            drop_lo=[float(drop.loc[i, "lo"]) for i in layers],
                            drop_hi=[float(drop.loc[i, "hi"]) for i in layers]), columns=SENSITIVITY_COLUMNS)
    rho_rows = d[d["metric"] == "drift_drop_spearman"]
    rho = float(rho_rows["value"].iloc[-1]) if len(rho_rows) else spearman(out["drift"], out["drop"])
    return out, rho
