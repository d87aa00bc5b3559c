"""The calibrate search: known optimum of a toy score function with few evaluations, the budget
criterion, nothing feasible, non-monotone scores, and the profile it writes."""
import json
import math

import pytest

from tsa_bench.analysis.calibrate import (CalibrationResult, Evaluation, Setting, calibrate, profile_dict,
                                          write_profile)
from tsa_bench.analysis.paired import compare

TAUS = [0.002, 0.005, 0.01, 0.02, 0.05, 0.1, 0.2]
WEIGHT = {0: 0.1, 1: 0.5, 2: 1.0, 3: 2.0, 4: 0.2, 5: 0.3}           # damage of each layer per unit tau
LAYER_SETS = {"all": [0, 1, 2, 3, 4, 5], "low": [0, 4, 5], "half": [3, 4, 5], "pair": [0, 4], "heavy": [2, 3]}


class Toy:
    """drop = 100 * tau * sum of the layers' weights; drop_hi = drop + 0.5; speed = 1 + 10 * tau *
    number of layers. Feasible (drop <= 1): all/half/heavy only at tau 0.002, low up to 0.01,
    pair up to 0.02; fastest feasible: pair at 0.02 (speed 1.4)."""

    def __init__(self):
        self.calls = []

    def __call__(self, s: Setting):
        self.calls.append(s)
        drop = 100.0 * s.tau * sum(WEIGHT[i] for i in s.layers)
        return drop, drop + 0.5, 1.0 + 10.0 * s.tau * len(s.layers)


def brute_force(fn, max_drop, upper=False):
    best = None
    for name, layers in LAYER_SETS.items():
        for tau in TAUS:
            drop, hi, speed = fn(Setting(tau, tuple(layers), name))
            if (hi if upper else drop) <= max_drop and (best is None or speed > best[0]):
                best = (speed, tau, tuple(layers))
    return best


def test_finds_the_known_optimum_with_fewer_evaluations_than_the_grid():
    toy = Toy()
    res = calibrate(TAUS, LAYER_SETS, toy, max_drop=1.0)
    assert (res.best.tau, res.best.layers, res.best.layer_set) == (0.02, (0, 4), "pair")
    assert (res.best.tau, res.best.layers) == brute_force(Toy(), 1.0)[1:]
    assert res.best_evaluation.speedup == pytest.approx(1.4) and res.best_evaluation.drop == pytest.approx(0.6)
    assert res.grid_size == 35 and len(res.log) == len(toy.calls) <= 3 * len(LAYER_SETS) < res.grid_size
    assert len({(c.tau, c.layers) for c in toy.calls}) == len(toy.calls)     # nothing evaluated twice
    assert [e.step for e in res.log] == list(range(len(res.log)))
    assert res.log[0].setting.layer_set == "all"           # most layers first: the fastest set is tried first


def test_identical_layer_sets_are_evaluated_once():
    toy = Toy()
    res = calibrate(TAUS, {"pair": [0, 4], "same-pair": [4, 0]}, toy, max_drop=1.0)
    assert len(toy.calls) == len({(c.tau, c.layers) for c in toy.calls}) == len(res.log)
    assert res.best.layers == (0, 4) and res.best.tau == 0.02


def test_upper_criterion_judges_the_interval_not_the_point_estimate():
    res = calibrate(TAUS, LAYER_SETS, Toy(), max_drop=1.0, criterion="upper")
    # drop + 0.5 <= 1: pair up to tau 0.01 (speed 1.2), low up to 0.005 (1.15), the rest nothing
    assert (res.best.tau, res.best.layers) == (0.01, (0, 4)) == brute_force(Toy(), 1.0, upper=True)[1:]
    assert all(e.feasible == (e.evaluation.drop_hi <= 1.0) for e in res.log)


@pytest.mark.parametrize("k", range(-1, len(TAUS)), ids=[f"boundary{k}" for k in range(-1, len(TAUS))])
def test_bisection_finds_the_largest_feasible_tau(k):
    """One layer set, feasible exactly for the first k + 1 taus (none for k = -1)."""
    calls = []

    def fn(s):
        calls.append(s)
        i = TAUS.index(s.tau)
        return (0.0 if i <= k else 5.0), 0.0, 1.0 + i

    res = calibrate(TAUS, {"only": [1, 2]}, fn, max_drop=1.0)
    assert (res.best is None) if k < 0 else (res.best.tau == TAUS[k])
    assert len(calls) <= math.ceil(math.log2(len(TAUS) + 1))


def test_nothing_within_budget_returns_none_with_the_log():
    res = calibrate(TAUS, LAYER_SETS, Toy(), max_drop=0.01)
    assert res.best is None and res.best_evaluation is None
    assert len(res.log) > 0 and not any(e.feasible for e in res.log)
    frame = res.to_frame()
    assert len(frame) == len(res.log) and not frame.chosen.any()
    with pytest.raises(ValueError, match="no setting met the budget of 0.01 points"):
        profile_dict(res, model="m", num_layers=6)


def test_non_monotone_scores_give_the_fastest_feasible_evaluated_setting():
    """drop spikes at tau index 3 only: bisection steps below it and never sees the feasible
    taus 4 and 5. The result is still a setting measured feasible, and the fastest such one in
    the log (the documented limit: it may miss faster feasible settings it did not evaluate)."""
    drops = [0.0, 0.0, 0.0, 5.0, 0.0, 0.0, 3.0]
    res = calibrate(TAUS, {"x": [0, 1]}, lambda s: (drops[TAUS.index(s.tau)], 0.0, 1.0 + TAUS.index(s.tau)),
                    max_drop=1.0)
    feasible = [e for e in res.log if e.feasible]
    assert res.best == max(feasible, key=lambda e: e.evaluation.speedup).setting
    assert res.best.tau == 0.01
    assert [e.setting.tau for e in res.log] == [0.02, 0.005, 0.01]


def test_a_subset_of_the_best_layers_is_searched_only_above_the_best_tau():
    """"all" is feasible up to TAUS[4]; its subset "sub" at TAUS[4] or below has fewer sparse
    layers at no larger tau, so it cannot be faster (assumption 3): none of those is evaluated.
    "sub" is feasible up to TAUS[6], which is then the fastest setting (speed 1.4 vs 1.2)."""
    calls = []

    def fn(s):
        calls.append(s)
        i = TAUS.index(s.tau)
        limit = 4 if s.layer_set == "all" else 6
        return (0.0 if i <= limit else 5.0), 0.0, 1.0 + s.tau * len(s.layers)

    res = calibrate(TAUS, {"all": [0, 1, 2, 3], "sub": [2, 3]}, fn, max_drop=1.0)
    sub = [c.tau for c in calls if c.layer_set == "sub"]
    assert sub and min(sub) > TAUS[4]
    assert (res.best.layer_set, res.best.tau) == ("sub", TAUS[6])
    assert any(m.startswith("sub: taus <= 0.05 not evaluated") for m in res.skipped)


def _random_case(rng):
    """Layer sets over 6 layers (nested and not) with per-layer damage and speed weights:
    drop = 100 * tau * damage, speed = 1 + tau * (sum of the layers' speed weights): feasibility
    monotone in tau, speed growing with tau and with every added layer (assumptions 1-3)."""
    damage = {i: rng.uniform(0.05, 2.0) for i in range(6)}
    speed = {i: rng.uniform(0.5, 2.0) for i in range(6)}
    sets = {}
    while len(sets) < rng.randint(2, 5):
        layers = sorted(rng.sample(range(6), rng.randint(1, 6)))
        sets[f"s{len(sets)}"] = layers
        if rng.random() < 0.5:                             # a nested subset of it, often
            sets[f"s{len(sets)}"] = layers[rng.randint(0, len(layers) - 1):]

    def fn(s):
        drop = 100.0 * s.tau * sum(damage[i] for i in s.layers)
        return drop, drop, 1.0 + s.tau * sum(speed[i] for i in s.layers)

    return sets, fn, rng.uniform(0.1, 6.0)


@pytest.mark.parametrize("seed", range(40), ids=[f"case{k}" for k in range(40)])
def test_random_monotone_grids_give_the_brute_force_optimum(seed):
    import random

    sets, fn, max_drop = _random_case(random.Random(seed))
    calls = []
    res = calibrate(TAUS, sets, lambda s: calls.append(s) or fn(s), max_drop=max_drop)
    grid = [(fn(Setting(t, tuple(l), n)), t, tuple(sorted(set(l)))) for n, l in sets.items() for t in TAUS]
    feasible = [(ev[2], t, l) for ev, t, l in grid if ev[0] <= max_drop]
    if not feasible:
        assert res.best is None
    else:
        top = max(v for v, _, _ in feasible)
        assert res.best_evaluation.speedup == pytest.approx(top)
    assert len(calls) <= math.ceil(math.log2(len(TAUS) + 1)) * len(sets)


def test_on_evaluation_sees_every_log_entry_in_order():
    seen = []
    res = calibrate(TAUS, LAYER_SETS, Toy(), max_drop=1.0, on_evaluation=seen.append)
    assert seen == list(res.log)


def test_a_layer_set_that_cannot_be_faster_is_left_after_one_evaluation():
    def fn(s):        # "fast": feasible up to tau 0.02 (speed 1.4); "slow": never feasible, speed <= 1.2
        fast = s.layer_set == "fast"
        return (0.0 if fast and s.tau <= 0.02 else 9.0), 0.0, 1.0 + s.tau * (20.0 if fast else 1.0)

    res = calibrate(TAUS, {"fast": [0, 4], "slow": [5]}, fn, max_drop=1.0)
    assert [e.setting.layer_set for e in res.log].count("slow") == 1
    assert res.best.layer_set == "fast" and any(m.startswith("slow:") for m in res.skipped)


@pytest.mark.parametrize("kw,match", [
    (dict(criterion="ci"), r"criterion must be one of \('point', 'upper'\)"),
    (dict(max_drop=float("nan")), "max_drop must be a finite number"),
    (dict(taus=[]), "give at least one tau"),
    (dict(taus=[0.0, 0.01]), r"tau must be in \(0, 1\)"),
    (dict(layer_sets={"bad": []}), "layers must be a non-empty list"),
], ids=["criterion", "max-drop-nan", "no-taus", "tau-zero", "empty-layers"])
def test_bad_arguments_are_refused(kw, match):
    args = dict(taus=TAUS, layer_sets=LAYER_SETS, evaluate=Toy(), max_drop=1.0)
    args.update(kw)
    with pytest.raises(ValueError, match=match):
        calibrate(**args)


def test_a_bad_evaluation_is_refused():
    with pytest.raises(ValueError, match="Evaluation.speedup must be a finite number"):
        calibrate(TAUS, {"x": [0]}, lambda s: (0.0, 0.0, float("nan")))
    with pytest.raises(ValueError, match=r"must return an Evaluation or a \(drop, drop_hi, speedup\) triple"):
        calibrate(TAUS, {"x": [0]}, lambda s: 0.0)


def test_evaluation_from_a_paired_table():
    base = [dict(id=f"t-{i}", task="t", max_length=4096, score=1.0) for i in range(4)]
    meth = [dict(r, score=0.0 if i == 0 else 1.0) for i, r in enumerate(base)]
    ev = Evaluation.from_paired(compare(base, meth, n_resamples=500, seed=0), speedup=1.7)
    assert ev.drop == pytest.approx(25.0) and ev.speedup == 1.7
    assert ev.drop_hi >= ev.drop                             # -diff_lo: the pessimistic end


def test_profile_is_loadable_by_the_layer_loader(tmp_path):
    from tsa_bench.hf.layers import check_layers, load_profile

    res = calibrate(TAUS, LAYER_SETS, Toy(), max_drop=1.0)
    path = write_profile(tmp_path / "prof" / "m.json", res, model="smollm2-135m", num_layers=6,
                         extra={"seq_len": 4096})
    prof = load_profile(path)
    assert check_layers(prof["sparse_layers"], prof["num_layers"]) == (0, 4)
    assert (prof["tau"], prof["source"], prof["model"], prof["seq_len"]) == (0.02, "calibrate", "smollm2-135m", 4096)
    assert len(prof["evaluated"]) == len(res.log) and json.loads(path.read_text()) == prof


def test_profile_refuses_layers_outside_the_model():
    res = calibrate(TAUS, LAYER_SETS, Toy(), max_drop=1.0)
    with pytest.raises(ValueError, match=r"layers \[4\] are out of range for a 3-layer model"):
        profile_dict(res, model="m", num_layers=3)
    assert isinstance(res, CalibrationResult)
