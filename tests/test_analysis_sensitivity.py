"""Per-layer sensitivity: Spearman with averaged ties (hand-computed), the drop table, drift inputs."""
import json
import math

import numpy as np
import pandas as pd
import pytest

from tsa_bench.analysis.sensitivity import (load_drift, rank_correlations, rankdata, sensitivity_rows,
                                            sensitivity_table, spearman, table_from_rows)


def records(scores_by_task, length=4096):
    return [dict(id=f"{t}-{length}-{i:05d}", task=t, max_length=length, index=i, score=float(s))
            for t, scores in scores_by_task.items() for i, s in enumerate(scores)]


def test_rankdata_averages_ties():
    assert rankdata([30, 10, 20, 20, 10, 10]).tolist() == [6.0, 2.0, 4.5, 4.5, 2.0, 2.0]


def test_spearman_without_ties_matches_the_textbook_formula():
    # ranks differ by d = (-1, 1, -1, 1, 0): rho = 1 - 6 * sum d^2 / (n (n^2 - 1)) = 1 - 24 / 120
    assert spearman([1, 2, 3, 4, 5], [2, 1, 4, 3, 5]) == pytest.approx(0.8)


def test_spearman_with_ties_is_the_correlation_of_averaged_ranks():
    # x ranks (1, 2.5, 2.5, 4), y ranks (1, 3, 2, 4); centred: (-1.5, 0, 0, 1.5), (-1.5, .5, -.5, 1.5)
    # rho = 4.5 / sqrt(4.5 * 5) = sqrt(0.9); the no-ties shortcut would give 1 - 6 * 0.5 / 60 = 0.95
    assert spearman([1, 2, 2, 3], [1, 3, 2, 4]) == pytest.approx(math.sqrt(0.9))


@pytest.mark.parametrize("x,y,rho", [
    ([1, 2, 3], [10, 20, 300], 1.0),
    ([1, 2, 3], [3, 2, -50], -1.0),
], ids=["monotone-up", "monotone-down"])
def test_spearman_of_monotone_data(x, y, rho):
    assert spearman(x, y) == pytest.approx(rho)


def test_spearman_of_a_constant_is_nan_and_bad_input_raises():
    assert math.isnan(spearman([1, 1, 1], [1, 2, 3]))
    with pytest.raises(ValueError, match="at least two pairs"):
        spearman([1], [2])
    with pytest.raises(ValueError, match="1-D of one length"):
        spearman([1, 2], [1, 2, 3])


def _scan(num_layers=4, n=10):
    """Dense right on every sample of tasks a and b; TSA in layer L loses L samples of task a."""
    dense = records({"a": np.ones(n), "b": np.ones(n)})
    runs = {}
    for layer in range(num_layers):
        a = np.ones(n)
        a[:layer] = 0.0
        runs[layer] = records({"a": a, "b": np.ones(n)})
    return dense, runs


def test_drop_per_layer_has_the_known_value_and_rank_correlation():
    dense, runs = _scan()
    drift = [0.1, 0.3, 0.2, 0.4]              # ranks 1, 3, 2, 4 vs drops 0, 5, 10, 15: rho = 1 - 6 * 2 / 60
    table, rho = sensitivity_table(dense, runs, drift, n_resamples=500, seed=0)
    assert table["layer"].tolist() == [0, 1, 2, 3]
    assert table["drop"].tolist() == pytest.approx([0.0, 5.0, 10.0, 15.0])     # (100 L / 10) / 2 tasks
    assert table["dense"].tolist() == [100.0] * 4 and table["n"].tolist() == [20] * 4
    assert (table["drop_lo"] <= table["drop"]).all() and (table["drop"] <= table["drop_hi"]).all()
    assert table.loc[0, ["drop_lo", "drop_hi"]].tolist() == [0.0, 0.0]
    assert table["drift"].tolist() == drift
    assert rho == pytest.approx(0.8)


def test_drift_must_cover_every_layer_run():
    dense, runs = _scan()
    with pytest.raises(ValueError, match=r"no drift value for layers \[3\]"):
        sensitivity_table(dense, runs, [0.1, 0.2, 0.3], n_resamples=10)


def test_drift_from_a_profile_layers_json_and_csv(tmp_path):
    js = tmp_path / "smollm2-135m.json"
    js.write_text(json.dumps({"model": "m", "num_layers": 3, "sparse_layers": [0], "drift": [0.5, 0.25, 0.75]}))
    assert load_drift(js) == {0: 0.5, 1: 0.25, 2: 0.75}
    csv = tmp_path / "layers.csv"
    pd.DataFrame([dict(metric="drift", layer=i, value=v) for i, v in enumerate([0.5, 0.25])]
                 + [dict(metric="selected", layer=0, value=1)]).to_csv(csv, index=False)
    assert load_drift(csv) == {0: 0.5, 1: 0.25}
    (tmp_path / "bad.json").write_text(json.dumps({"sparse_layers": [0]}))
    with pytest.raises(ValueError, match="has no 'drift' list"):
        load_drift(tmp_path / "bad.json")
    twice = pd.DataFrame([dict(metric="drift", layer=0, value=0.5)] * 2)
    with pytest.raises(ValueError, match=r"layers \[0\] occur more than once"):
        load_drift(twice)


def test_rows_round_trip_through_a_csv(tmp_path):
    dense, runs = _scan()
    table, rho = sensitivity_table(dense, runs, [0.3, 0.1, 0.4, 0.2], n_resamples=300, seed=1)
    rows = sensitivity_rows(table, rho, model="smollm2-135m", seq_len=4096, method="tsa", tau=0.02)
    assert [r["metric"] for r in rows].count("layer_drop") == 4 and rows[-1]["metric"] == "drift_drop_spearman"
    path = tmp_path / "sens.csv"
    pd.DataFrame(rows).to_csv(path, index=False)
    back, rho_back = table_from_rows(pd.read_csv(path))
    cols = ["layer", "drift", "n", "drop", "drop_lo", "drop_hi"]
    pd.testing.assert_frame_equal(back[cols], table[cols].round(4), check_dtype=False)
    assert rho_back == pytest.approx(rho)


def test_rank_correlations_of_extra_predictors():
    t = pd.DataFrame(dict(layer=[0, 1, 2, 3], drop=[0.0, 5.0, 10.0, 15.0], drift=[0.1, 0.3, 0.2, 0.4],
                          keep=[0.9, 0.8, np.nan, 0.6]))
    out = rank_correlations(t, ["drift", "keep"])
    assert out["drift"] == pytest.approx(0.8) and out["keep"] == pytest.approx(-1.0)   # NaN row left out
    with pytest.raises(ValueError, match="no column 'sparsity'"):
        rank_correlations(t, ["sparsity"])
