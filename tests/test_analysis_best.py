"""`best_within` and `tsa-bench study best`: the fastest setting within the accuracy budget."""
import numpy as np
import pandas as pd
import pytest

from tsa_bench.analysis.tables import best_within


def _points(rows):
    cols = ["model", "seq_len", "setting", "method", "score", "diff", "diff_lo", "diff_hi", "attention_speedup",
            "ttft_speedup", "attention_sparsity"]
    return pd.DataFrame(rows, columns=cols)


P = _points([
    ("m", 4096, "dense", "dense", 50.0, 0.0, 0.0, 0.0, 1.0, 1.0, 0.0),
    ("m", 4096, "A", "tsa", 49.5, -0.5, -1.5, 0.5, 1.2, 1.05, 0.3),     # in the budget; its interval is not
    ("m", 4096, "B", "tsa", 49.2, -0.8, -0.9, -0.7, 1.1, 1.10, 0.4),    # in the budget either way
    ("m", 4096, "C", "tsa", 45.0, -5.0, -6.0, -4.0, 3.0, 1.30, 0.8),    # fastest, over the budget
    ("m", 8192, "dense", "dense", 40.0, 0.0, 0.0, 0.0, 1.0, 1.0, 0.0),
    ("m", 8192, "D", "tsa", 30.0, -10.0, -12.0, -8.0, 2.0, 1.2, 0.5),
    ("m", 8192, "E", "tsa", 37.0, -3.0, -4.0, -2.0, 1.5, 1.1, 0.3),
])


def test_fastest_within_the_budget_by_each_criterion_and_speed():
    t = best_within(P, 1.0)
    assert t.set_index("seq_len").loc[4096, "setting"] == "A"              # attention x1.2 beats B's x1.1
    assert t.set_index("seq_len").loc[4096, "candidates"] == 2             # A and B; never dense, never C
    assert best_within(P, 1.0, "upper").set_index("seq_len").loc[4096, "setting"] == "B"   # A's interval reaches -1.5
    assert best_within(P, 1.0, speed="ttft").set_index("seq_len").loc[4096, "setting"] == "B"
    assert best_within(P, 5.0).set_index("seq_len").loc[4096, "setting"] == "C"              # budget edge included


def test_the_pick_carries_its_untouched_layers_ratio():
    """The bias marker travels with the chosen setting (and is NaN where the table has none)."""
    assert np.isnan(best_within(P, 1.0).set_index("seq_len").loc[4096, "attention_speedup_untouched"])
    q = P.assign(attention_speedup_untouched=[np.nan, 1.21, 0.99, 1.0, np.nan, 1.0, 1.02])
    t = best_within(q, 1.0).set_index("seq_len")
    assert t.loc[4096, "setting"] == "A" and t.loc[4096, "attention_speedup_untouched"] == 1.21
    assert t.loc[8192, "closest"] == "E" and t.loc[8192, "attention_speedup_untouched"] == 1.02


def test_none_within_the_budget_names_the_closest():
    r = best_within(P, 1.0).set_index("seq_len").loc[8192]
    assert r["setting"] is None or (isinstance(r["setting"], float) and np.isnan(r["setting"]))
    assert r["closest"] == "E" and r["diff"] == -3.0 and r["candidates"] == 0


def test_bad_arguments_are_refused():
    for kw in (dict(criterion="mean"), dict(speed="flops"), dict(max_drop=-1.0)):
        with pytest.raises(ValueError):
            best_within(P, **{"max_drop": 1.0, **kw})


def test_study_best_reads_the_committed_accuracy_csvs(capsys):
    from tsa_bench.cli import main
    assert main(["study", "best"]) == 0
    out = capsys.readouterr().out
    assert "within 1 points of dense" in out and "smollm2-135m" in out and "untouched x" in out
