"""Paired bootstrap of tsa_bench.analysis.paired: known answers, pairing, stratification, input checks."""
import itertools
import json
import time

import numpy as np
import pytest

from tsa_bench.analysis.paired import (bootstrap_means, compare, compare_many, paired_rows,
                                       read_predictions)


def records(scores_by_task, length=4096):
    """Prediction records: ``scores_by_task = {task: [score, ...]}`` (scores in [0, 1])."""
    return [dict(id=f"{t}-{length}-{i:05d}", task=t, max_length=length, index=i, score=float(s), pred="")
            for t, scores in scores_by_task.items() for i, s in enumerate(scores)]


def random_records(tasks=13, n=50, p=0.7, seed=0, length=4096):
    rng = np.random.default_rng(seed)
    return records({f"task_{t:02d}": (rng.random(n) < p).astype(float) for t in range(tasks)}, length)


def test_identical_predictions_give_zero_difference_and_a_zero_interval():
    base = random_records(tasks=3, n=20, seed=1)
    df = compare(base, [dict(r) for r in base], n_resamples=500, seed=0)
    assert (df["diff"] == 0).all() and (df["diff_lo"] == 0).all() and (df["diff_hi"] == 0).all()
    assert (df["score"] == df["baseline"]).all()
    assert (df["score_hi"] > df["score_lo"]).any()          # the scores themselves do vary


@pytest.mark.parametrize("n", [20, 80, 320], ids=["n20", "n80", "n320"])
def test_better_on_k_of_n_samples_gives_100k_over_n(n):
    k = n // 5
    rng = np.random.default_rng(n)
    shared = (rng.random(n) < 0.5).astype(float)
    base = shared.copy()
    base[:k] = 0.0
    meth = shared.copy()
    meth[:k] = 1.0
    df = compare(records({"t": base}), records({"t": meth}), n_resamples=2000, seed=3)
    row = df[df.level == "task"].iloc[0]
    assert row["diff"] == pytest.approx(100.0 * k / n)
    assert 0.0 <= row["diff_lo"] < row["diff"] < row["diff_hi"] <= 100.0


def test_interval_shrinks_as_n_grows():
    widths = []
    for n in (20, 80, 320):
        meth = np.zeros(n)
        meth[: n // 5] = 1.0
        df = compare(records({"t": np.zeros(n)}), records({"t": meth}), n_resamples=2000, seed=3)
        row = df[df.level == "task"].iloc[0]
        widths.append(row["diff_hi"] - row["diff_lo"])
    assert widths[0] > widths[1] > widths[2] > 0


def test_one_of_four_samples_better_has_the_hand_computed_interval():
    # diff per sample (points) = [100, 0, 0, 0]; a replicate's mean is 25 * K with K ~ Binomial(4, 1/4)
    # the number of draws of sample 0. CDF: K<=0 81/256, K<=2 243/256 = 0.949, K<=3 255/256 = 0.996,
    # so the 2.5% quantile is 0 and the 97.5% quantile is 75 (K = 3).
    df = compare(records({"t": [0, 0, 1, 0]}), records({"t": [1, 0, 1, 0]}), n_resamples=20000, seed=5)
    row = df[df.level == "task"].iloc[0]
    assert (row["diff"], row["diff_lo"], row["diff_hi"]) == (25.0, 0.0, 75.0)


def _exact_bootstrap(d):
    """All len(d)**len(d) equally likely resamples of ``d``: their means."""
    n = len(d)
    return np.array([np.mean(np.asarray(d)[list(t)]) for t in itertools.product(range(n), repeat=n)])


def test_replicates_follow_the_exhaustive_bootstrap_distribution():
    d = np.array([100.0, 50.0, 0.0, -100.0])
    exact = _exact_bootstrap(d)                                       # 4**4 = 256 resamples
    reps = bootstrap_means([d[:, None]], 20000, np.random.default_rng(7))[:, 0, 0]
    atoms = np.unique(exact)
    cdf_exact = np.array([(exact <= a).mean() for a in atoms])
    cdf_mc = np.array([(reps <= a + 1e-9).mean() for a in atoms])
    assert np.isin(np.round(reps, 9), np.round(atoms, 9)).all()
    assert np.abs(cdf_mc - cdf_exact).max() < 0.015


def test_percentile_interval_matches_the_exhaustive_one():
    base, meth = [0.0, 0.5, 1.0, 1.0], [1.0, 1.0, 1.0, 0.0]         # per-sample diff 100, 50, 0, -100
    exact = _exact_bootstrap(100.0 * (np.array(meth) - np.array(base)))
    lo, hi = np.quantile(exact, [0.025, 0.975], method="inverted_cdf")
    # both quantiles sit on flat parts of the exact CDF, away from its jumps (so many
    # resamples find exactly them): P(<= -75) = 5/256 < 0.025 < P(<= -62.5) = 9/256, etc.
    assert (lo, hi) == (-62.5, 75.0)
    df = compare(records({"t": base}), records({"t": meth}), n_resamples=20000, seed=11)
    row = df[df.level == "task"].iloc[0]
    assert row["diff"] == pytest.approx(12.5)
    assert (row["diff_lo"], row["diff_hi"]) == (lo, hi)


def test_mean_over_tasks_resamples_within_each_task():
    # task a (2 samples): the method wins both (diff 100 in every resample of a); task b (40
    # samples): identical (diff 0). Within-task resampling keeps the mean over tasks at exactly
    # 50. Drawing the 42 samples from one pool would vary how many come from a (none at all in
    # about (40/42)**42 = 13% of the replicates) and widen the interval.
    base = records({"a": np.zeros(2), "b": np.ones(40)})
    meth = records({"a": np.ones(2), "b": np.ones(40)})
    df = compare(base, meth, n_resamples=1000, seed=0)
    row = df[df.level == "mean_tasks"].iloc[0]
    assert (row["task"], row["n"], row["diff"], row["diff_lo"], row["diff_hi"]) == ("all", 42, 50.0, 50.0, 50.0)


def test_mean_over_tasks_weights_tasks_equally_and_mean_over_lengths_averages_lengths():
    base = records({"a": [1, 1, 1, 1], "b": [0, 0]}, 4096) + records({"a": [1, 1], "b": [1, 1]}, 8192)
    meth = records({"a": [1, 1, 1, 0], "b": [1, 0]}, 4096) + records({"a": [1, 1], "b": [1, 1]}, 8192)
    df = compare(base, meth, n_resamples=200, seed=0).set_index("level")
    per_len = df.loc["mean_tasks"].set_index("seq_len")
    assert per_len.loc[4096, "baseline"] == pytest.approx(50.0)        # (100 + 0) / 2, not 4/6
    assert per_len.loc[4096, "score"] == pytest.approx((75.0 + 50.0) / 2)
    assert per_len.loc[8192, "score"] == pytest.approx(100.0)
    top = df.loc["mean_lengths"]
    assert top["score"] == pytest.approx((62.5 + 100.0) / 2) and top["n"] == 10


def test_all_methods_share_the_resampled_ids():
    base = random_records(tasks=4, n=25, seed=0)
    a = random_records(tasks=4, n=25, seed=1)
    b = random_records(tasks=4, n=25, seed=2)
    many = compare_many(base, {"a": a, "b": b, "same": base}, n_resamples=800, seed=42)
    alone = compare(base, a, name="a", n_resamples=800, seed=42)
    cols = ["baseline_lo", "baseline_hi", "score_lo", "score_hi", "diff_lo", "diff_hi"]
    np.testing.assert_array_equal(many[many.method == "a"][cols].to_numpy(), alone[cols].to_numpy())
    same = many[many.method == "same"]
    assert (same["diff_lo"] == 0).all() and (same["diff_hi"] == 0).all()


def test_record_order_does_not_change_the_result():
    base = random_records(tasks=3, n=15, seed=4)
    meth = random_records(tasks=3, n=15, seed=5)
    perm = np.random.default_rng(0).permutation(len(base))
    a = compare(base, meth, n_resamples=300, seed=9)
    b = compare([base[i] for i in perm], [meth[i] for i in perm[::-1]], n_resamples=300, seed=9)
    np.testing.assert_array_equal(a.drop(columns="seq_len").to_numpy(), b.drop(columns="seq_len").to_numpy())


def test_seed_fixes_the_replicates():
    base, meth = random_records(tasks=2, n=30, seed=0), random_records(tasks=2, n=30, seed=1)
    a = compare(base, meth, n_resamples=300, seed=1)
    assert a.equals(compare(base, meth, n_resamples=300, seed=1))
    assert not a.equals(compare(base, meth, n_resamples=300, seed=2))


def test_13_tasks_50_samples_2000_resamples_is_fast():
    base, meth = random_records(seed=0), random_records(seed=1)
    compare(base, meth, n_resamples=50, seed=0)              # warm-up (imports, allocator)
    t0 = time.perf_counter()
    df = compare(base, meth, n_resamples=2000, seed=0)
    assert time.perf_counter() - t0 < 1.0
    assert len(df) == 14


@pytest.mark.parametrize("drop,extra,match", [
    (1, 0, r"method 'm' has 9 samples and the baseline 10; 1 ids only in the baseline \(e\.g\. t-4096-00009\), "
           r"0 only in 'm'"),
    (0, 2, r"method 'm' has 12 samples and the baseline 10; 0 ids only in the baseline, 2 only in 'm'"),
], ids=["missing-in-method", "extra-in-method"])
def test_different_id_sets_are_refused_with_counts(drop, extra, match):
    base = records({"t": np.ones(10)})
    meth = records({"t": np.ones(10 - drop + extra)})
    with pytest.raises(ValueError, match=match):
        compare(base, meth, name="m")


@pytest.mark.parametrize("mutate,match", [
    (lambda r: r[1].update(score=1.5), r"'score' must be a number in \[0, 1\]"),
    (lambda r: r.append(dict(r[0])), r"occurs twice"),
    (lambda r: r[0].pop("task"), r"no 'task' field"),
], ids=["score-out-of-range", "duplicate-id", "no-task"])
def test_bad_records_are_refused(mutate, match):
    base = records({"t": np.ones(4)})
    meth = [dict(r) for r in base]
    mutate(meth)
    with pytest.raises(ValueError, match=match):
        compare(base, meth)


def test_a_sample_filed_under_another_task_is_refused():
    base = records({"t": np.ones(3)})
    meth = [dict(r, task="u") if i == 0 else dict(r) for i, r in enumerate(base)]
    with pytest.raises(ValueError, match="sample 't-4096-00000': the baseline has it as task t"):
        compare(base, meth)


@pytest.mark.parametrize("kw,match", [
    (dict(n_resamples=0), "n_resamples must be a positive integer"),
    (dict(confidence=1.0), r"confidence must be in \(0, 1\)"),
], ids=["no-resamples", "confidence-1"])
def test_bad_parameters_are_refused(kw, match):
    base = records({"t": np.ones(3)})
    with pytest.raises(ValueError, match=match):
        compare(base, base, **kw)


def test_paired_rows_are_tidy_score_and_difference_rows():
    base = records({"a": [1, 0, 1], "b": [1, 1, 0]})
    meth = records({"a": [1, 1, 1], "b": [0, 1, 0]})
    table = compare_many(base, {"tsa": meth}, n_resamples=100, seed=0)
    rows = paired_rows(table, {"tsa": dict(method="tsa", tau=0.005, model="m", setting="tsa tau=0.005 drift")})
    assert len(rows) == 2 * len(table)
    top = [r for r in rows if r["task"] == "all"]
    assert [r["metric"] for r in top] == ["score", "score_diff"]
    assert top[1]["value"] == pytest.approx(0.0) and top[0]["value"] == pytest.approx(100 * 4 / 6)
    assert all(r["setting"] == "tsa tau=0.005 drift" and r["seq_len"] == 4096 and r["n"] == 6 for r in top)
    with pytest.raises(ValueError, match="no entry for method 'tsa'"):
        paired_rows(table, {})


def test_read_predictions_skips_a_torn_last_line_and_leaves_the_file(tmp_path):
    p = tmp_path / "preds.jsonl"
    recs = records({"t": [1, 0]})
    text = "".join(json.dumps(r) + "\n" for r in recs) + '{"id": "t-4096-0000'
    p.write_text(text)
    assert read_predictions(p) == recs
    assert p.read_text() == text
