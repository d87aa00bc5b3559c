"""Accuracy tables and figures: known frontier on hand-made rows, what the artists hold, the
committed fixtures (regenerable, small) and the per-task table."""
import importlib.util
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from tsa_bench.analysis.figures import layer_sensitivity, score_vs_sparsity, score_vs_speedup
from tsa_bench.analysis.sensitivity import table_from_rows
from tsa_bench.analysis.tables import accuracy_points, find_csvs, per_task_table, read_csvs

FIXTURES = Path(__file__).resolve().parent / "fixtures" / "accuracy"
PNG = b"\x89PNG\r\n\x1a\n"


def tidy(points, model="m", seq_len=4096):
    """Tidy rows from ``(setting, method, tau, score, diff, diff_lo, diff_hi, speedup, sparsity)``."""
    rows = []
    for setting, method, tau, score, diff, lo, hi, speedup, sparsity in points:
        ident = dict(model=model, seq_len=seq_len, method=method, tau=tau, layers="drift" if tau else None,
                     setting=setting, task="all")
        rows += [dict(ident, metric="score", value=score, lo=score - 5, hi=score + 5, n=100),
                 dict(ident, metric="score_diff", value=diff, lo=lo, hi=hi, n=100)]
        if speedup is not None:
            rows.append(dict(ident, metric="attention_speedup", value=speedup))
        if sparsity is not None:
            rows.append(dict(ident, metric="attention_sparsity", value=sparsity))
    return pd.DataFrame(rows)


KNOWN = [  # setting, method, tau, score, diff, diff_lo, diff_hi, speedup, sparsity
    ("dense", "dense", None, 60.0, 0.0, 0.0, 0.0, 1.0, 0.0),      # dominated by A (faster, better)
    ("A", "tsa", 0.005, 62.0, 2.0, -1.0, 4.0, 1.3, 0.2),          # frontier
    ("B", "tsa", 0.02, 55.0, -5.0, -8.0, -1.0, 1.5, 0.4),         # frontier
    ("C", "tsa", 0.01, 50.0, -10.0, -14.0, -6.0, 1.4, 0.3),       # dominated by B
    ("D", "flexprefill", None, 40.0, -20.0, -25.0, -15.0, 2.0, 0.6),   # frontier
    ("E", "tsa", 0.05, 70.0, 10.0, 5.0, 15.0, None, None),        # no speed measured: not plotted
]


def test_accuracy_points_pivot_and_frontier():
    pts = accuracy_points(tidy(KNOWN)).set_index("setting")
    assert pts.loc[["A", "B", "D"], "on_frontier"].all() and not pts.loc[["dense", "C", "E"], "on_frontier"].any()
    # error bar: the paired interval of the difference, drawn around the score
    assert pts.loc["B", ["bar_lo", "bar_hi"]].tolist() == [52.0, 59.0]
    assert pts.loc["B", ["score_lo", "score_hi", "n"]].tolist() == [50.0, 60.0, 100]
    assert np.isnan(pts.loc["E", "attention_speedup"])


def test_later_rows_win_and_missing_metrics_are_refused():
    df = pd.concat([tidy(KNOWN[:2]), tidy([("A", "tsa", 0.005, 30.0, -30.0, -35.0, -25.0, None, None)])])
    pts = accuracy_points(df).set_index("setting")
    assert pts.loc["A", "score"] == 30.0 and pts.loc["A", "attention_speedup"] == 1.3
    with pytest.raises(ValueError, match="no 'score_diff' rows"):
        accuracy_points(tidy(KNOWN)[lambda d: d.metric != "score_diff"])


def test_score_vs_speedup_draws_the_known_frontier(tmp_path):
    plot = score_vs_speedup(tidy(KNOWN), tmp_path / "f" / "speed.png")
    assert plot.path.read_bytes()[:8] == PNG and plot.path.stat().st_size > 5000
    drawn = plot.drawn[("m", 4096)]
    assert drawn["frontier"].tolist() == [[1.3, 62.0], [1.5, 55.0], [2.0, 40.0]]
    assert sorted(map(tuple, drawn["points"].tolist())) == [(1.0, 60.0), (1.3, 62.0), (1.4, 50.0), (1.5, 55.0),
                                                            (2.0, 40.0)]
    assert sorted(plot.data.loc[plot.data.on_frontier, "setting"]) == ["A", "B", "D"]


def test_frontier_is_per_model_and_length(tmp_path):
    other = tidy([("dense", "dense", None, 90.0, 0.0, 0.0, 0.0, 1.0, 0.0),
                  ("X", "tsa", 0.01, 80.0, -10.0, -12.0, -8.0, 3.0, 0.7)], seq_len=8192)
    plot = score_vs_speedup(pd.concat([tidy(KNOWN), other]), tmp_path / "two.png")
    assert plot.drawn[("m", 4096)]["frontier"].tolist() == [[1.3, 62.0], [1.5, 55.0], [2.0, 40.0]]
    assert plot.drawn[("m", 8192)]["frontier"].tolist() == [[1.0, 90.0], [3.0, 80.0]]
    on = plot.data[plot.data.on_frontier]
    assert sorted(zip(on.seq_len, on.setting)) == [(4096, "A"), (4096, "B"), (4096, "D"), (8192, "X"), (8192, "dense")]


def test_score_vs_sparsity_plots_sparsity(tmp_path):
    plot = score_vs_sparsity(tidy(KNOWN), tmp_path / "sparsity.png")
    assert plot.path.read_bytes()[:8] == PNG
    assert sorted(plot.drawn[("m", 4096)]["points"][:, 0].tolist()) == [0.0, 0.2, 0.3, 0.4, 0.6]
    assert "frontier" not in plot.drawn[("m", 4096)]


def test_per_task_table():
    df = pd.DataFrame([dict(model="m", seq_len=4096, method=m, setting=m, task=t, metric="score", value=v)
                       for m, vals in (("dense", (90, 70, 80)), ("tsa", (85, 75, 80)))
                       for t, v in zip(("b_task", "a_task", "all"), vals)])
    t = per_task_table(df)
    assert list(t.index) == ["a_task", "b_task", "mean"] and list(t.columns) == ["dense", "tsa"]
    assert t.loc["b_task"].tolist() == [90, 85] and t.loc["mean"].tolist() == [80, 80]
    with pytest.raises(ValueError, match=r"several values of seq_len \(\[4096, 8192\]\); pass seq_len="):
        per_task_table(pd.concat([df, df.assign(seq_len=8192)]))


def test_figures_from_the_committed_fixtures(tmp_path):
    df = read_csvs(find_csvs(FIXTURES))
    speed = score_vs_speedup(df, tmp_path / "speed.png")
    assert set(speed.drawn) == {("smollm2-135m", 4096), ("gemma3-270m", 32768)}
    for (model, L), d in speed.drawn.items():
        g = speed.data[(speed.data.model == model) & (speed.data.seq_len == L)]
        x, y = g.attention_speedup.to_numpy(float), g.score.to_numpy(float)
        brute = sorted((xi, yi) for xi, yi in zip(x, y)
                       if not ((x >= xi) & (y >= yi) & ((x > xi) | (y > yi))).any())
        assert sorted(map(tuple, d["frontier"].tolist())) == brute
    table, rho = table_from_rows(df)
    sens = layer_sensitivity(table, tmp_path / "sens.png", rho=rho)
    assert sens.path.read_bytes()[:8] == PNG
    np.testing.assert_allclose(sens.drawn[None]["bars"][:, 1], table["drop"])
    np.testing.assert_allclose(sens.drawn[None]["drift"][:, 1], table["drift"])
    assert len(table) == 30


def test_committed_fixtures_are_small_and_regenerate_identically(tmp_path):
    spec = importlib.util.spec_from_file_location("make_fixtures", FIXTURES / "make_fixtures.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    mod.main(tmp_path)
    names = sorted(p.name for p in find_csvs(FIXTURES))
    assert names == ["scores.csv", "sensitivity.csv", "speed.csv"]
    for name in names:
        assert (FIXTURES / name).stat().st_size < 20_000
        assert (tmp_path / name).read_bytes() == (FIXTURES / name).read_bytes(), f"{name} is stale: rerun make_fixtures"


def test_sensitivity_figure_refuses_a_table_without_drift(tmp_path):
    with pytest.raises(ValueError, match="missing column 'drift'"):
        layer_sensitivity(pd.DataFrame(dict(layer=[0], drop=[1.0], drop_lo=[0.0], drop_hi=[2.0])), tmp_path / "x.png")


def test_the_dropped_row_variant_gets_its_own_colour():
    from tsa_bench.analysis.figures import _family
    assert _family("tsa", "tsa tau=0.005 drift dropped=local:64") == "tsa (dropped rows: local:64)"
    assert _family("tsa", "tsa tau=0.005 drift") == "tsa"
    assert _family("XAttention+TSA", None) == "xattention+tsa"


def test_a_method_or_layer_set_keeps_its_slot_whatever_else_is_plotted():
    """Colours and markers come from fixed slots, so xattention is the same colour in a figure
    with the dropped-row variant as in one without it."""
    from tsa_bench.analysis.figures import FAMILY_ORDER, LAYER_SET_ORDER, _slots
    few = _slots({"dense", "xattention", "tsa"}, FAMILY_ORDER)
    many = _slots({"dense", "xattention", "tsa", "tsa (dropped rows: local:64)", "flexprefill"}, FAMILY_ORDER)
    assert few == {"dense": 0, "tsa": 1, "xattention": 4}
    assert many["xattention"] == few["xattention"] == 4
    assert many["tsa (dropped rows: local:64)"] == len(FAMILY_ORDER)          # unknown names follow
    assert _slots({"late", "drift", "mine", "abc"}, LAYER_SET_ORDER) == {"drift": 1, "late": 3, "abc": 4, "mine": 5}
