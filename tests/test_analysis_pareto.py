"""Pareto frontier of (speedup, score), both maximised: known answers, ties, invariants."""
import numpy as np
import pytest

from tsa_bench.analysis.pareto import frontier_steps, pareto_frontier, pareto_mask

# (speedup, score)                        on the frontier?
POINTS = [(1.0, 80.0),                    # 0 yes: the best score
          (1.5, 78.0),                    # 1 yes
          (1.2, 75.0),                    # 2 no: 1 is faster and better
          (2.0, 70.0),                    # 3 yes
          (2.0, 65.0),                    # 4 no: same speedup as 3, lower score
          (1.5, 78.0),                    # 5 yes: an exact copy of 1 (neither dominates the other)
          (0.9, 80.0),                    # 6 no: same score as 0, slower
          (3.0, 50.0)]                    # 7 yes: the fastest


def test_known_frontier_sorted_by_speedup_with_ties():
    x, y = zip(*POINTS)
    assert pareto_frontier(x, y).tolist() == [0, 1, 5, 3, 7]
    assert pareto_mask(x, y).tolist() == [True, True, False, True, False, True, False, True]


def test_frontier_steps_are_the_frontier_coordinates():
    x, y = zip(*POINTS)
    xs, ys = frontier_steps(x, y)
    assert xs.tolist() == [1.0, 1.5, 1.5, 2.0, 3.0] and ys.tolist() == [80.0, 78.0, 78.0, 70.0, 50.0]


def test_single_point_is_the_frontier():
    assert pareto_frontier([1.3], [40.0]).tolist() == [0]


@pytest.mark.parametrize("seed", [0, 1, 2], ids=["seed0", "seed1", "seed2"])
def test_frontier_invariants_on_random_points_with_ties(seed):
    rng = np.random.default_rng(seed)
    x = rng.integers(0, 6, 40).astype(float)       # few distinct values: many ties
    y = rng.integers(0, 6, 40).astype(float)
    idx = pareto_frontier(x, y)
    dominated = lambda i, j: x[j] >= x[i] and y[j] >= y[i] and (x[j] > x[i] or y[j] > y[i])
    for i in idx:
        assert not any(dominated(i, j) for j in range(40))
    for i in set(range(40)) - set(idx.tolist()):
        assert any(dominated(i, j) for j in idx)
    assert np.all(np.diff(x[idx]) >= 0) and np.all(np.diff(y[idx]) <= 0)


@pytest.mark.parametrize("x,y,match", [
    ([1.0, np.nan], [1.0, 2.0], r"speedup must be finite; point 1 has nan"),
    ([1.0, 2.0], [1.0, np.inf], r"score must be finite; point 1 has inf"),
    ([1.0, 2.0], [1.0], r"1-D of one length"),
], ids=["nan-speedup", "inf-score", "length-mismatch"])
def test_bad_points_are_refused(x, y, match):
    with pytest.raises(ValueError, match=match):
        pareto_frontier(x, y)
