"""scripts/rebuild_accuracy.py: every committed study CSV comes out of its command and the
committed raw runs again (the published numbers are the ones the runs give), and the
comparison notices a changed value, a missing row and a metric that should not be there."""
import importlib.util
from pathlib import Path

import pandas as pd
import pytest

pytest.importorskip("transformers")
ROOT = Path(__file__).resolve().parents[1]


def _script():
    spec = importlib.util.spec_from_file_location("rebuild_accuracy", ROOT / "scripts" / "rebuild_accuracy.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def test_every_committed_study_csv_rebuilds_from_the_raw_runs(capsys):
    mod = _script()
    assert mod.main([]) == 0
    out = capsys.readouterr().out
    assert f"{len(mod.REBUILDS)} of {len(mod.REBUILDS)} committed CSVs rebuilt" in out


def test_the_comparison_sees_a_changed_value_a_lost_row_and_a_foreign_metric(tmp_path):
    mod = _script()
    committed = mod.ACC / mod.REBUILDS["gemma-4k-16k"][0]
    df = pd.read_csv(committed)
    assert mod.compare(committed, committed) == []
    i = df.index[(df.metric == "score_diff") & (df.task == "all")][1]

    changed = df.copy()
    changed.loc[i, "value"] = changed.loc[i, "value"] + 0.01
    changed.to_csv(tmp_path / "changed.csv", index=False)
    assert any(p.startswith("value: 1 rows differ") for p in mod.compare(committed, tmp_path / "changed.csv"))

    df.drop(index=i).to_csv(tmp_path / "lost.csv", index=False)
    assert any("committed rows" in p for p in mod.compare(committed, tmp_path / "lost.csv"))

    foreign = pd.concat([df, df.iloc[[i]].assign(metric="made_up")])
    foreign.to_csv(tmp_path / "foreign.csv", index=False)
    assert any("made_up" in p for p in mod.compare(committed, tmp_path / "foreign.csv"))

    older = mod.ACC / mod.REBUILDS["smollm2-4k-speed"][0]            # written before those two metrics existed
    old = pd.read_csv(older)
    assert not old.metric.isin(mod.ADDED_METRICS).any()
    added = pd.concat([old, old.iloc[[0]].assign(metric="attention_speedup_untouched")])
    added.to_csv(tmp_path / "added.csv", index=False)
    assert mod.compare(older, tmp_path / "added.csv") == []              # a metric `study` writes since
