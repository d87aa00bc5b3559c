"""Paired comparison of methods on the same RULER samples, with a percentile bootstrap.

Input: prediction records as ``tsa-bench ruler`` writes them (one JSON object per sample with
``id``, ``task``, ``max_length``, ``score`` in [0, 1], ...). Records of two methods are
matched by ``id``; both must hold exactly the same ids (a paired comparison of different
samples is not one), else :class:`ValueError`.

Statistics, all in points (score x 100, as RULER reports):

* **stratum** = one (task, length) cell; its score is the mean of the per-sample scores.
* ``level="task"`` rows: one stratum. ``level="mean_tasks"``: the unweighted mean over the
  tasks present at that length (RULER's headline number). ``level="mean_lengths"`` (only when
  there is more than one length): the unweighted mean over lengths of the per-length means.
* ``diff`` = method score - baseline score (negative: the method lost points).
* Intervals: **percentile bootstrap** (Efron), ``confidence`` = 0.95 by default. Each of the
  ``n_resamples`` replicates draws, *independently within every stratum* (stratified by task
  and length), ``n_s`` sample ids with replacement from that stratum's ``n_s`` ids. The same
  drawn ids are used for the baseline and for every method (the resampling is *paired*: a
  sample's scores under all methods move together), so the interval of ``diff`` reflects only
  the samples on which the methods disagree: identical predictions give exactly [0, 0]. Every
  statistic (a task's score, the mean over tasks, the difference) is computed on each
  replicate; the interval is the ``(1 - confidence) / 2`` and ``(1 + confidence) / 2``
  quantiles of the replicates (numpy's default linear interpolation between order statistics).
* The resampling is seeded (``numpy.random.Generator``); strata are visited in a fixed order
  (length, then task name; ids sorted within a stratum), so the same seed gives the same
  replicates whatever the order of the input records and however many methods are compared.

Implementation: a replicate's draw of a stratum is stored as per-sample counts ``C [B, n_s]``
(how often each id was drawn), so every replicate mean of every method is one matrix product
``C @ scores / n_s``; the differences are averaged from per-sample differences, so they are
exactly 0 where the predictions agree (13 tasks x 50 samples x 2000 replicates: tens of ms).
"""
from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any, Dict, List, Mapping, Optional, Sequence, Tuple, Union

import numpy as np
import pandas as pd

Records = Sequence[Mapping[str, Any]]
Seed = Union[int, np.random.Generator]
TABLE_COLUMNS = ["method", "task", "seq_len", "level", "n", "baseline", "baseline_lo", "baseline_hi",
                 "score", "score_lo", "score_hi", "diff", "diff_lo", "diff_hi"]


def read_predictions(path: Union[str, Path]) -> List[dict]:
    """Records of a predictions JSONL. A last line without its newline (a run killed while
    writing it) is ignored, as ``PredictionLog`` does, but the file is left untouched."""
    raw = Path(path).read_bytes()
    keep = raw[: raw.rfind(b"\n") + 1]
    out = []
    for k, line in enumerate(keep.decode("utf-8").splitlines(), 1):
        if line.strip():
            try:
                out.append(json.loads(line))
            except json.JSONDecodeError as exc:
                raise ValueError(f"{path}: line {k} is not JSON: {exc}") from None
    return out


def _by_id(records: Records, name: str) -> Dict[str, Mapping[str, Any]]:
    out: Dict[str, Mapping[str, Any]] = {}
    for r in records:
        for field in ("id", "task", "max_length", "score"):
            if field not in r:
                raise ValueError(f"{name}: a prediction record has no {field!r} field: {dict(r)!r:.200}")
        s = r["score"]
        if isinstance(s, bool) or not isinstance(s, (int, float)) or not (0.0 <= float(s) <= 1.0):
            raise ValueError(f"{name}: record {r['id']!r} has score {s!r}; 'score' must be a number in [0, 1]")
        if r["id"] in out:
            raise ValueError(f"{name}: sample id {r['id']!r} occurs twice")
        out[r["id"]] = r
    if not out:
        raise ValueError(f"{name}: no prediction records")
    return out


def _check_same_ids(base: Mapping[str, Any], other: Mapping[str, Any], name: str) -> None:
    if base.keys() == other.keys():
        return
    only_b = sorted(set(base) - set(other))
    only_m = sorted(set(other) - set(base))
    raise ValueError(
        f"method {name!r} has {len(other)} samples and the baseline {len(base)}; {len(only_b)} ids only in "
        f"the baseline{' (e.g. ' + ', '.join(only_b[:3]) + ')' if only_b else ''}, {len(only_m)} only in "
        f"{name!r}{' (e.g. ' + ', '.join(only_m[:3]) + ')' if only_m else ''}: a paired comparison needs "
        "the same samples")


def align(baseline: Records, methods: Mapping[str, Records]) -> Tuple[List[Tuple[str, int]], List[np.ndarray]]:
    """Strata ``[(task, length), ...]`` (sorted by length, then task) and, per stratum, an
    array ``[n_s, 1 + k]`` of scores in points: column 0 the baseline, column ``1 + j`` the
    ``j``-th method of ``methods``, rows the stratum's ids in sorted order."""
    if not methods:
        raise ValueError("methods: give at least one method to compare with the baseline")
    base = _by_id(baseline, "baseline")
    others = {}
    for name, recs in methods.items():
        m = _by_id(recs, f"method {name!r}")
        _check_same_ids(base, m, name)
        for i, r in m.items():
            b = base[i]
            if (r["task"], int(r["max_length"])) != (b["task"], int(b["max_length"])):
                raise ValueError(f"sample {i!r}: the baseline has it as task {b['task']} at length "
                                 f"{b['max_length']}, method {name!r} as {r['task']} at {r['max_length']}")
        others[name] = m
    cells: Dict[Tuple[str, int], List[str]] = {}
    for i, r in base.items():
        cells.setdefault((str(r["task"]), int(r["max_length"])), []).append(i)
    strata = sorted(cells, key=lambda c: (c[1], c[0]))
    values = []
    for cell in strata:
        ids = sorted(cells[cell])
        cols = [[float(base[i]["score"]) for i in ids]] + [[float(m[i]["score"]) for i in ids] for m in others.values()]
        values.append(100.0 * np.asarray(cols, dtype=np.float64).T)
    return strata, values


def bootstrap_means(values: Sequence[np.ndarray], n_resamples: int, rng: np.random.Generator) -> np.ndarray:
    """Replicate means ``[B, S, k]`` of ``values`` (``S`` arrays ``[n_s, k]``, one per stratum).

    For replicate ``b`` and stratum ``s``, ``n_s`` row indices are drawn uniformly with
    replacement (``rng.integers``), independently of the other strata, and *the same rows* are
    averaged in every one of the ``k`` columns (the columns are paired)."""
    if n_resamples < 1:
        raise ValueError(f"n_resamples must be >= 1, got {n_resamples}")
    k = values[0].shape[1]
    out = np.empty((n_resamples, len(values), k))
    rows = np.arange(n_resamples)[:, None]
    for s, v in enumerate(values):
        n = v.shape[0]
        idx = rng.integers(0, n, size=(n_resamples, n))
        counts = np.bincount((rows * n + idx).ravel(), minlength=n_resamples * n).reshape(n_resamples, n)
        # numpy's own loop, not BLAS: these products are small, and a threaded BLAS on a busy
        # machine spends more time waking threads than multiplying
        out[:, s, :] = np.einsum("bn,nk->bk", counts.astype(np.float64), v, optimize=False) / n
    return out


def _levels(strata: Sequence[Tuple[str, int]]) -> List[Tuple[str, Optional[int], str, np.ndarray]]:
    """(task, seq_len, level, weights over strata) of every reported statistic."""
    S = len(strata)
    out = []
    lengths = sorted({L for _, L in strata})
    for s, (task, L) in enumerate(strata):
        w = np.zeros(S)
        w[s] = 1.0
        out.append((task, L, "task", w))
    per_length = {}
    for L in lengths:
        members = [s for s, (_, Ls) in enumerate(strata) if Ls == L]
        w = np.zeros(S)
        w[members] = 1.0 / len(members)
        per_length[L] = w
        out.append(("all", L, "mean_tasks", w))
    if len(lengths) > 1:
        out.append(("all", None, "mean_lengths", sum(per_length.values()) / len(lengths)))
    return out


def compare_many(baseline: Records, methods: Mapping[str, Records], *, n_resamples: int = 2000,
                 seed: Seed = 0, confidence: float = 0.95) -> pd.DataFrame:
    """Every method of ``methods`` (name -> records) against one ``baseline``, on the same
    bootstrap replicates (one draw of ids serves the baseline and all methods).

    Returns one row per method and statistic (columns :data:`TABLE_COLUMNS`): ``task`` /
    ``seq_len`` / ``level`` say which statistic (see the module docstring; ``task="all"`` for
    the means, ``seq_len`` missing for the mean over lengths), ``n`` the number of samples it
    averages, ``baseline``/``score``/``diff`` the point estimates in points and ``*_lo``/``*_hi``
    their percentile bootstrap interval. To get the baseline's own rows, include it among
    ``methods`` (its ``diff`` is then exactly 0 with interval [0, 0]).
    """
    if not 0.0 < confidence < 1.0:
        raise ValueError(f"confidence must be in (0, 1), got {confidence}")
    if isinstance(n_resamples, bool) or not isinstance(n_resamples, (int, np.integer)) or n_resamples < 1:
        raise ValueError(f"n_resamples must be a positive integer, got {n_resamples!r}")
    strata, values = align(baseline, methods)
    k = len(methods)
    # columns: baseline, the k methods, then the k differences (computed per sample, so that
    # identical predictions give differences that are exactly zero in every replicate)
    values = [np.concatenate([v, v[:, 1:] - v[:, :1]], axis=1) for v in values]
    rng = seed if isinstance(seed, np.random.Generator) else np.random.default_rng(seed)
    reps = bootstrap_means(values, int(n_resamples), rng)                   # [B, S, 1 + 2k]
    point = np.stack([v.mean(axis=0) for v in values])                      # [S, 1 + 2k]
    sizes = np.array([v.shape[0] for v in values])
    q = [(1.0 - confidence) / 2.0, (1.0 + confidence) / 2.0]
    rows = []
    for task, L, level, w in _levels(strata):
        est = w @ point                                                     # [1 + 2k]
        lo, hi = np.quantile(np.einsum("bsk,s->bk", reps, w), q, axis=0)    # [1 + 2k] each
        n = int(sizes[w > 0].sum())
        for j, name in enumerate(methods):
            m, d = 1 + j, 1 + k + j
            rows.append(dict(method=name, task=task, seq_len=L, level=level, n=n,
                             baseline=est[0], baseline_lo=lo[0], baseline_hi=hi[0],
                             score=est[m], score_lo=lo[m], score_hi=hi[m],
                             diff=est[d], diff_lo=lo[d], diff_hi=hi[d]))
    df = pd.DataFrame(rows, columns=TABLE_COLUMNS)
    df["seq_len"] = df["seq_len"].astype("Int64")
    return df


def compare(baseline: Records, method: Records, *, name: str = "method", n_resamples: int = 2000,
            seed: Seed = 0, confidence: float = 0.95) -> pd.DataFrame:
    """One method against the baseline: :func:`compare_many` with ``{name: method}``."""
    return compare_many(baseline, {name: method}, n_resamples=n_resamples, seed=seed, confidence=confidence)


def paired_rows(table: pd.DataFrame, identities: Mapping[str, Mapping[str, Any]],
                digits: Optional[int] = 4) -> List[Dict[str, Any]]:
    """Tidy rows (:func:`tsa_bench.results.row`) of a :func:`compare_many` table.

    Per table row two result rows: ``score`` (the method's score, its own bootstrap interval)
    and ``score_diff`` (method - baseline, the paired interval); ``n`` = samples averaged,
    ``task="all"`` for the means. ``identities[method]`` gives that method's identity columns
    (``method``, ``tau``, ``model``, ...; see :data:`tsa_bench.results.IDENTITY`); its other
    keys (e.g. ``setting``, ``layers``) become extra columns. ``digits`` rounds the values.
    """
    from tsa_bench.results import IDENTITY, row

    def r(x):                                   # + 0.0: no "-0.0" in the CSV
        return None if x is None or (isinstance(x, float) and math.isnan(x)) else \
            (round(float(x), digits) if digits is not None else float(x)) + 0.0

    out = []
    for t in table.itertuples(index=False):
        if t.method not in identities:
            raise ValueError(f"identities has no entry for method {t.method!r}")
        ident = dict(identities[t.method])
        core = {k: v for k, v in ident.items() if k in IDENTITY and k not in ("task", "seq_len")}
        extra = {k: v for k, v in ident.items() if k not in IDENTITY}
        L = None if pd.isna(t.seq_len) else int(t.seq_len)
        for metric, v, lo, hi in (("score", t.score, t.score_lo, t.score_hi),
                                  ("score_diff", t.diff, t.diff_lo, t.diff_hi)):
            out.append({**row(metric, r(v), lo=r(lo), hi=r(hi), n=int(t.n), task=t.task, seq_len=L, **core),
                        **extra, "level": t.level})
    return out
