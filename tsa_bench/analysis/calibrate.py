"""The search behind ``tsa-bench calibrate``: the fastest TSA setting whose accuracy drop stays
within a budget, found with few evaluations, and the layer/tau profile it is saved as.

A *setting* is a coverage ``tau`` and a set of sparse layers. ``evaluate(setting)`` runs it on
calibration samples and returns an :class:`Evaluation`: the drop versus dense in points
(dense score - method score, positive = points lost), the upper end of its paired bootstrap
interval, and a speed figure where higher is faster. A setting is *feasible* when its drop is
``<= max_drop``.

The speed figure must describe the *whole model*, so that settings with different layer sets
compare: e.g. the fraction of all full-attention layers' attention map that is skipped, or
dense / sparse time to first token. A per-layer figure (the speedup of the sparse layers
alone) does not: one sparse layer at some ``tau`` would look as fast as thirty at that ``tau``,
and the search would prefer the set that sparsifies least.

Assumptions (the search is exact under them, see :func:`calibrate`):

1. within one layer set, feasibility is monotone in ``tau``: if a ``tau`` is feasible, every
   smaller ``tau`` is (a larger ``tau`` drops more tokens, so it loses at least as much);
2. within one layer set, the speed increases with ``tau``;
3. across layer sets, at the same ``tau`` a set is at least as fast as any of its subsets
   (every extra sparse layer skips some more of the model's attention): speed grows with the
   number of sparse layers, which is why the sets are visited largest first.

Real calibration scores are noisy, so (1) can fail by a sample or two. The search then still
returns a setting that *was measured* feasible and is the fastest of the feasible settings it
measured; it may miss a faster feasible setting it never evaluated. The log of every
evaluation is returned, so a reader can see what was and was not tried.
"""
from __future__ import annotations

import json
import math
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Callable, Dict, List, Mapping, Optional, Sequence, Tuple, Union

import pandas as pd

CRITERIA = ("point", "upper")


@dataclass(frozen=True)
class Setting:
    """TSA coverage ``tau`` and the sparse ``layers`` (sorted, unique); ``layer_set`` names the
    set (e.g. ``"drift"``, ``"half"``), for the log and the profile only."""
    tau: float
    layers: Tuple[int, ...]
    layer_set: str = ""

    def __post_init__(self):
        if not (isinstance(self.tau, (int, float)) and 0.0 < float(self.tau) < 1.0):
            raise ValueError(f"tau must be in (0, 1), got {self.tau!r}")
        layers = tuple(self.layers)
        if not layers or any(isinstance(i, bool) or not isinstance(i, int) or i < 0 for i in layers):
            raise ValueError(f"layers must be a non-empty list of layer indices >= 0, got {self.layers!r}")
        object.__setattr__(self, "tau", float(self.tau))
        object.__setattr__(self, "layers", tuple(sorted(set(layers))))


@dataclass(frozen=True)
class Evaluation:
    """``drop`` = dense - method score (points); ``drop_hi`` = upper end of the drop's paired
    bootstrap interval; ``speedup``: a whole-model speed figure, higher is faster (see the
    module docstring)."""
    drop: float
    drop_hi: float
    speedup: float

    def __post_init__(self):
        for name in ("drop", "drop_hi", "speedup"):
            v = getattr(self, name)
            if isinstance(v, bool) or not isinstance(v, (int, float)) or not math.isfinite(v):
                raise ValueError(f"Evaluation.{name} must be a finite number, got {v!r}")
            object.__setattr__(self, name, float(v))

    @classmethod
    def from_paired(cls, table: pd.DataFrame, speedup: float, method: Optional[str] = None) -> "Evaluation":
        """From a :func:`tsa_bench.analysis.paired.compare` table: its :func:`headline_row`,
        ``drop = -diff``, ``drop_hi = -diff_lo``."""
        r = headline_row(table, method)
        return cls(drop=-float(r["diff"]) + 0.0, drop_hi=-float(r["diff_lo"]) + 0.0, speedup=speedup)   # no -0.0


def headline_row(table: pd.DataFrame, method: Optional[str] = None) -> pd.Series:
    """The overall row of a :func:`tsa_bench.analysis.paired.compare` table for one method: the
    mean over lengths when there are several, else the mean over tasks."""
    t = table if method is None else table[table.method == method]
    if t.method.nunique() != 1:
        raise ValueError(f"the table holds methods {sorted(t.method.unique())}; name one with method=")
    for level in ("mean_lengths", "mean_tasks"):
        sel = t[t.level == level]
        if len(sel) == 1:
            return sel.iloc[0]
    raise ValueError("the table has no single overall row (level mean_lengths or mean_tasks)")


@dataclass(frozen=True)
class LogEntry:
    """One evaluation: its order, the setting, the result, and whether it met the budget under
    the criterion."""
    step: int
    setting: Setting
    evaluation: Evaluation
    feasible: bool


@dataclass(frozen=True)
class CalibrationResult:
    """``best``: the chosen setting (None when no evaluated setting met the budget) and its
    evaluation; ``log``: every evaluation in order; ``grid_size``: settings in the full grid;
    ``skipped``: a sentence per layer set the search stopped early on, and why."""
    best: Optional[Setting]
    best_evaluation: Optional[Evaluation]
    log: Tuple[LogEntry, ...]
    grid_size: int
    max_drop: float
    criterion: str
    skipped: Tuple[str, ...] = ()

    def to_frame(self) -> pd.DataFrame:
        """The log, one row per evaluation, ``chosen`` marking the result."""
        rows = [dict(step=e.step, layer_set=e.setting.layer_set, layers=",".join(map(str, e.setting.layers)),
                     tau=e.setting.tau, drop=e.evaluation.drop, drop_hi=e.evaluation.drop_hi,
                     speedup=e.evaluation.speedup, feasible=e.feasible,
                     chosen=self.best is not None and e.setting == self.best)
                for e in self.log]
        return pd.DataFrame(rows, columns=["step", "layer_set", "layers", "tau", "drop", "drop_hi", "speedup",
                                           "feasible", "chosen"])


def _as_evaluation(v: Any, setting: Setting) -> Evaluation:
    if isinstance(v, Evaluation):
        return v
    try:
        drop, drop_hi, speed = v
    except (TypeError, ValueError):
        raise ValueError(f"evaluate({setting}) must return an Evaluation or a (drop, drop_hi, speedup) "
                         f"triple, got {v!r}") from None
    return Evaluation(drop, drop_hi, speed)


def calibrate(taus: Sequence[float], layer_sets: Mapping[str, Sequence[int]],
              evaluate: Callable[[Setting], Union[Evaluation, Tuple[float, float, float]]],
              max_drop: float = 1.0, *, criterion: str = "point",
              expected_speed: Callable[[Tuple[int, ...]], float] = len,
              on_evaluation: Optional[Callable[[LogEntry], None]] = None) -> CalibrationResult:
    """The fastest setting in ``taus`` x ``layer_sets`` whose drop is ``<= max_drop`` points.

    ``criterion``: ``"point"`` (default) compares the drop's point estimate with the budget,
    ``"upper"`` the upper end of its paired interval. The default is the point estimate
    because the interval's width is set by the number of calibration samples, not by the
    setting: with RULER's 0/1 metrics and a few hundred samples, a setting that changes a
    handful of answers (in either direction) already has an upper end near or above one point,
    so ``"upper"`` would mostly pick the densest setting whatever the true drop, and a larger
    calibration set would change the answer. The point estimate is the best single guess of
    the drop; the chosen setting is then judged on held-out samples with its paired interval
    (the issue's acceptance test). Pass ``"upper"`` for a conservative choice.

    The search, per layer set (visited in order of ``expected_speed(layers)``, fastest first,
    ties in the given order; the default, the number of layers, visits a superset before its
    subsets), over its ``taus`` sorted ascending: bisection for the largest feasible ``tau``
    (assumption 1). ``lo`` = largest index at or below which nothing needs evaluating (start: -1),
    ``hi`` = smallest index known infeasible (start: ``len(taus)``, past the end); evaluate
    ``(lo + hi) // 2`` and move ``lo`` or ``hi`` to it. Two rules cut evaluations:

    * when the best feasible setting so far runs a superset of the set's layers at ``tau_b``,
      ``lo`` starts at ``tau_b``'s index: the set at ``tau_b`` or below is not faster than the
      best (assumptions 2 and 3), whether it is feasible or not;
    * a set stops early when a measured infeasible ``tau`` is not faster than the best so far:
      every smaller ``tau`` of the set is slower still (assumption 2), and every larger one is
      infeasible (assumption 1).

    Each distinct (tau, layers) is evaluated at most once: at most
    ``ceil(log2(len(taus) + 1))`` evaluations per layer set instead of ``len(taus)`` (3 for the
    issue's five taus), fewer once a fast feasible setting is known.

    ``on_evaluation(entry)`` is called after each evaluation (progress reports).

    The result is the fastest feasible setting among those evaluated (ties: the smaller drop,
    then the earlier evaluation); under assumptions 1 to 3 it is the fastest feasible setting
    of the whole grid (a subset tying the best's speed at the best's ``tau`` may be left
    unevaluated). ``best`` is None when nothing evaluated met the budget.
    """
    if criterion not in CRITERIA:
        raise ValueError(f"criterion must be one of {CRITERIA}, got {criterion!r}")
    if isinstance(max_drop, bool) or not isinstance(max_drop, (int, float)) or not math.isfinite(max_drop):
        raise ValueError(f"max_drop must be a finite number of points, got {max_drop!r}")
    ts = sorted({float(t) for t in taus})
    if not ts:
        raise ValueError("taus: give at least one tau value")
    if not layer_sets:
        raise ValueError("layer_sets: give at least one layer set")
    sets = [(name, Setting(ts[0], tuple(layers), str(name)).layers) for name, layers in layer_sets.items()]
    order = sorted(range(len(sets)), key=lambda i: -float(expected_speed(sets[i][1])))   # stable: ties keep order

    log: List[LogEntry] = []
    seen: Dict[Tuple[float, Tuple[int, ...]], LogEntry] = {}
    skipped: List[str] = []
    best: Optional[LogEntry] = None

    def better(e: LogEntry) -> bool:
        if best is None:
            return True
        a, b = e.evaluation, best.evaluation
        return a.speedup > b.speedup or (a.speedup == b.speedup and a.drop < b.drop)

    def run(name: str, layers: Tuple[int, ...], tau: float) -> LogEntry:
        nonlocal best
        key = (tau, layers)
        if key in seen:
            return seen[key]
        s = Setting(tau, layers, name)
        ev = _as_evaluation(evaluate(s), s)
        measured = ev.drop if criterion == "point" else ev.drop_hi
        e = LogEntry(len(log), s, ev, measured <= max_drop)
        log.append(e)
        seen[key] = e
        if e.feasible and better(e):
            best = e
        if on_evaluation is not None:
            on_evaluation(e)
        return e

    def not_faster(e: LogEntry) -> bool:
        return best is not None and e.evaluation.speedup <= best.evaluation.speedup

    for i in order:
        name, layers = sets[i]
        lo, hi = -1, len(ts)                # lo: nothing at or below it can win, hi: smallest infeasible
        if best is not None and best.setting.layers != layers and set(layers) <= set(best.setting.layers):
            lo = ts.index(best.setting.tau)
            skipped.append(f"{name}: taus <= {ts[lo]:g} not evaluated: the best so far ({best.setting.layer_set}, "
                           f"tau {ts[lo]:g}) sparsifies a superset of its layers, so they are not faster")
        while hi - lo > 1:
            mid = (lo + hi) // 2
            e = run(name, layers, ts[mid])
            if e.feasible:
                lo = mid
            else:
                hi = mid
                if not_faster(e):
                    skipped.append(f"{name}: tau {ts[mid]:g} fails the budget and is not faster than the best "
                                   "so far; smaller taus are slower still")
                    break
    return CalibrationResult(best=None if best is None else best.setting,
                             best_evaluation=None if best is None else best.evaluation,
                             log=tuple(log), grid_size=len(ts) * len(sets), max_drop=float(max_drop),
                             criterion=criterion, skipped=tuple(skipped))


def profile_dict(result: CalibrationResult, *, model: str, num_layers: int,
                 extra: Optional[Mapping[str, Any]] = None) -> Dict[str, Any]:
    """The layer/tau profile of ``result.best``: ``{"model", "num_layers", "sparse_layers",
    "tau", "layer_set", "source": "calibrate", "max_drop", "criterion", "drop", "drop_hi",
    "speedup", "grid_size", "evaluated": [...], ...extra}``. The keys ``sparse_layers`` and
    ``num_layers`` are what :func:`tsa_bench.hf.layers.load_profile` and the layer resolver
    read; ``ruler``, ``niah`` and ``prefill`` also take ``tau`` from it when ``--sparse-layers``
    names the profile and ``--tau`` is not given (``tsa_bench.hf.layers.resolve_tau``), and so
    do ``tsa_bench.hf.load_model`` / ``configure_tsa`` when ``sparse_layers`` names it and no
    ``tsa_config`` is given."""
    if result.best is None:
        raise ValueError(f"no setting met the budget of {result.max_drop:g} points ({result.criterion} "
                         f"criterion, {len(result.log)} evaluated): there is no profile to write")
    if isinstance(num_layers, bool) or not isinstance(num_layers, int) or num_layers < 1:
        raise ValueError(f"num_layers must be a positive integer, got {num_layers!r}")
    bad = [i for i in result.best.layers if i >= num_layers]
    if bad:
        raise ValueError(f"layers {bad} are out of range for a {num_layers}-layer model")
    ev = result.best_evaluation
    doc = {"model": model, "num_layers": num_layers, "sparse_layers": list(result.best.layers),
           "tau": result.best.tau, "layer_set": result.best.layer_set, "source": "calibrate",
           "max_drop": result.max_drop, "criterion": result.criterion,
           "drop": ev.drop, "drop_hi": ev.drop_hi, "speedup": ev.speedup, "grid_size": result.grid_size,
           "evaluated": [dict(step=e.step, tau=e.setting.tau, layer_set=e.setting.layer_set,
                              sparse_layers=list(e.setting.layers), feasible=e.feasible,
                              **asdict(e.evaluation)) for e in result.log]}
    for k, v in (extra or {}).items():
        if k in doc:
            raise ValueError(f"extra key {k!r} would overwrite a profile field")
        doc[k] = v
    return doc


def write_profile(path: Union[str, Path], result: CalibrationResult, *, model: str, num_layers: int,
                  extra: Optional[Mapping[str, Any]] = None) -> Path:
    """Write :func:`profile_dict` as JSON to ``path`` (parents created); returns the path."""
    doc = profile_dict(result, model=model, num_layers=num_layers, extra=extra)
    p = Path(path)
    p.parent.mkdir(parents=True, exist_ok=True)
    p.write_text(json.dumps(doc, indent=2) + "\n")
    return p
