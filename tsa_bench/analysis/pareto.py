"""Pareto frontier of (speedup, score) points, both to be maximised.

Point ``i`` is *dominated* when some point ``j`` is at least as good in both coordinates and
strictly better in one: ``x_j >= x_i and y_j >= y_i and (x_j > x_i or y_j > y_i)``. The
frontier is the set of points no other point dominates. Consequences, stated once:

* Points with *equal coordinates* do not dominate each other: all copies of a frontier point
  are on the frontier (e.g. two methods that measured the same speedup and score).
* Equal speedup, different score: only the higher score is on the frontier (and symmetrically
  for equal score).
* Along the frontier sorted by speedup, the speedup increases and the score strictly
  decreases (ties only between exact copies).
"""
from __future__ import annotations

from typing import Sequence

import numpy as np


def _points(speedup: Sequence[float], score: Sequence[float]):
    x = np.asarray(speedup, dtype=np.float64)
    y = np.asarray(score, dtype=np.float64)
    if x.ndim != 1 or x.shape != y.shape:
        raise ValueError(f"speedup and score must be 1-D of one length, got shapes {x.shape} and {y.shape}")
    for name, v in (("speedup", x), ("score", y)):
        bad = np.flatnonzero(~np.isfinite(v))
        if bad.size:
            raise ValueError(f"{name} must be finite; point {int(bad[0])} has {v[bad[0]]}")
    return x, y


def pareto_mask(speedup: Sequence[float], score: Sequence[float]) -> np.ndarray:
    """Boolean mask ``[n]``: True where the point is on the frontier (not dominated)."""
    x, y = _points(speedup, score)
    ge = (x[None, :] >= x[:, None]) & (y[None, :] >= y[:, None])        # [i, j]: j weakly beats i
    gt = (x[None, :] > x[:, None]) | (y[None, :] > y[:, None])
    return ~(ge & gt).any(axis=1)


def pareto_frontier(speedup: Sequence[float], score: Sequence[float]) -> np.ndarray:
    """Indices of the frontier points sorted by speedup (ascending; exact copies in input order)."""
    x, _ = _points(speedup, score)
    idx = np.flatnonzero(pareto_mask(speedup, score))
    return idx[np.argsort(x[idx], kind="stable")]


def frontier_steps(speedup: Sequence[float], score: Sequence[float]):
    """(xs, ys) of the frontier for ``matplotlib``'s ``step(xs, ys, where="pre")``: the best
    score reachable at a speedup of at least ``x`` is ``ys[i]`` for ``xs[i-1] < x <= xs[i]``."""
    x, y = _points(speedup, score)
    idx = pareto_frontier(x, y)
    return x[idx], y[idx]
