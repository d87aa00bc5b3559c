"""``tsa-bench study``: ruler run folders (fabricated here, no model) -> the tidy accuracy CSV.

The run folders are written by :func:`make_arm` through the ruler command's own row and file
writers (``score_rows``, ``write_results``), so they have the shape a real ``tsa-bench ruler``
run leaves: one CSV per arm (``predictions``, ``setting``, ``layers``, JSON ``config`` with
``run_key`` and ``plan``) and a predictions JSONL under ``preds/``.
"""
import hashlib
import json
from pathlib import Path
from typing import Dict, Optional, Sequence

import pandas as pd
import pytest

from tsa_bench.cli import main

MODEL = "smollm2-135m"
L = 4096
TASKS = ("niah_single_1", "vt")
LAYERS = 4


def rec(task: str, index: int, score: float, *, length: int = L, **extra) -> dict:
    return dict(id=f"{task}-{length}-{index:05d}", task=task, max_length=length, index=index, pred="x",
                outputs=["x"], metric="string_match_all", source="generated", score=float(score), **extra)


def make_arm(run_dir: Path, records: Sequence[dict], *, method: str, tau: Optional[float] = None,
             layers: str = "", sparse_layers: Sequence[int] = (), setting: Optional[str] = None,
             tasks: Sequence[str] = TASKS, seq_lens: Sequence[int] = (L,), n: int = 32,
             model: str = MODEL, run_key: Optional[str] = None) -> Path:
    """Write one ruler arm (CSV + predictions JSONL) under ``run_dir``; returns the CSV."""
    from tsa_bench.commands.ruler import score_rows, write_results

    tsa = method == "tsa" or method.endswith("+tsa")
    setting = setting or " ".join([method] + ([f"tau={tau:g}"] + ([layers] if layers else []) if tsa else []))
    plan = dict(method=method, prefill_backend="sdpa", dense_backend="sdpa",
                tsa=dict(tau=tau, window=128) if tsa else None, sparse_layers=list(sparse_layers) if tsa else [])
    key = run_key or hashlib.sha256(f"{model}|{setting}".encode()).hexdigest()[:12]
    preds = run_dir / "preds" / f"{model}-{method}-{key}.jsonl"
    preds.parent.mkdir(parents=True, exist_ok=True)
    preds.write_text("".join(json.dumps(r) + "\n" for r in records))
    identity = dict(method=method, backend="sdpa", tau=tau, model=model, dtype="bf16", weights="pretrained",
                    stage="e2e", batch=1)
    extra = dict(template="base", predictions=str(preds), engine="batched-b4", ranks=1,
                 layers=layers if tsa else "", setting=setting)
    rows, _ = score_rows(records, list(tasks), list(seq_lens), identity, extra)
    config = dict(model=model, method=method, tau=tau, plan=plan, tasks=list(tasks), seq_lens=list(seq_lens),
                  n=n, run_key=key)
    return write_results("ruler", rows, config, "cpu", run_dir, key)


def timed(task, index, score, attn: Optional[Dict[int, float]] = None, prefill: Optional[float] = None,
          tsa_layers: Optional[Dict[int, Sequence[float]]] = None) -> dict:
    extra = {}
    if attn is not None:
        extra["attn_ms"] = {str(k): v for k, v in attn.items()}
    if prefill is not None:
        extra["prefill_s"] = prefill
    if tsa_layers is not None:
        extra["tsa_layers"] = {str(k): list(v) for k, v in tsa_layers.items()}
    return rec(task, index, score, **extra)


# Four samples (2 tasks x 2). Dense: 10 ms per layer on samples 0-2, 40 ms on sample 3.
# TSA in layers 1 and 3: 5 ms there on samples 0-2, 10 ms on sample 3; the other layers as dense.
#   attention_speedup: per-sample ratios 2, 2, 2, 4 -> median 2.0 (ratio of sums, the _total:
#   (2 * (3 * 10 + 40)) / (2 * (3 * 5 + 10)) = 140 / 50 = 2.8; mean of ratios: 2.5)
#   all layers: per sample 40 / 30 (x3) and 160 / 100 -> median 4 / 3
#   TTFT: dense 0.5 s each, TSA 0.4, 0.4, 0.4, 0.3: median ratio 1.25; total 2.0 / 1.5
#   tsa_layers {1: [keep .4, sparsity .7], 3: [.2, .9]}: keep 0.3, sparsity 0.8
# xattention (no TSA): half of dense in every layer -> 2.0 over every layer, no sparsity rows.
SAMPLES = [(t, i) for t in TASKS for i in range(2)]
DENSE_MS = [10.0, 10.0, 10.0, 40.0]
TSA_SPARSE_MS = [5.0, 5.0, 5.0, 10.0]
TSA_PREFILL = [0.4, 0.4, 0.4, 0.3]


def dense_records(scores=(1, 1, 0, 1), attn=True):
    return [timed(t, i, s, {k: DENSE_MS[j] for k in range(LAYERS)} if attn else None, 0.5)
            for j, ((t, i), s) in enumerate(zip(SAMPLES, scores))]


def tsa_records(scores=(1, 0, 0, 1), attn=True, sparse=(1, 3)):
    out = []
    for j, ((t, i), s) in enumerate(zip(SAMPLES, scores)):
        ms = {k: (TSA_SPARSE_MS[j] if k in sparse else DENSE_MS[j]) for k in range(LAYERS)}
        out.append(timed(t, i, s, ms if attn else None, TSA_PREFILL[j], {1: [0.4, 0.7], 3: [0.2, 0.9]}))
    return out


def xattn_records(scores=(1, 1, 0, 0), attn=True):
    return [timed(t, i, s, {k: DENSE_MS[j] / 2 for k in range(LAYERS)} if attn else None, 0.25)
            for j, ((t, i), s) in enumerate(zip(SAMPLES, scores))]


def standard_run(run_dir: Path, attn: bool = True) -> Path:
    make_arm(run_dir, dense_records(attn=attn), method="dense")
    make_arm(run_dir, tsa_records(attn=attn), method="tsa", tau=0.005, layers="half", sparse_layers=(1, 3))
    make_arm(run_dir, xattn_records(attn=attn), method="xattention")
    return run_dir


def study(capsys, *argv) -> tuple:
    rc = main(["study", *argv, "--resamples", "200"])
    cap = capsys.readouterr()
    return rc, cap.out, cap.err


def tables(capsys, tmp_path, *run_dirs, extra=()) -> tuple:
    out = tmp_path / "acc" / "study.csv"
    rc, stdout, stderr = study(capsys, "tables", *map(str, run_dirs), "--model-name", MODEL, "--out", str(out),
                               *extra)
    return rc, stdout, stderr, (pd.read_csv(out) if rc == 0 else None)


def value(df: pd.DataFrame, setting: str, metric: str, task: str = "all") -> pd.Series:
    sel = df[(df.setting == setting) & (df.metric == metric) & (df.task == task)]
    assert len(sel) == 1, (setting, metric, len(sel))
    return sel.iloc[0]


def test_speed_rows_are_median_ratios_over_the_sparse_layers(tmp_path, capsys):
    rc, out, err, df = tables(capsys, tmp_path, standard_run(tmp_path / "run"))
    assert rc == 0, err
    tsa, x = "tsa tau=0.005 half", "xattention"
    assert value(df, tsa, "attention_speedup").value == pytest.approx(2.0, abs=1e-4)
    assert value(df, tsa, "attention_speedup_total").value == pytest.approx(2.8, abs=1e-4)
    assert value(df, tsa, "attention_speedup_all_layers").value == pytest.approx(4 / 3, abs=1e-4)
    assert value(df, tsa, "ttft_speedup").value == pytest.approx(1.25, abs=1e-4)
    assert value(df, tsa, "ttft_speedup_total").value == pytest.approx(2.0 / 1.5, abs=1e-4)
    assert value(df, tsa, "keep_fraction").value == pytest.approx(0.3)
    assert value(df, tsa, "attention_sparsity").value == pytest.approx(0.8)
    assert value(df, tsa, "attention_speedup").n == 4
    assert value(df, x, "attention_speedup").value == pytest.approx(2.0)          # every layer
    assert value(df, x, "ttft_speedup").value == pytest.approx(2.0)
    assert not df[(df.setting == x) & df.metric.isin(["attention_sparsity", "keep_fraction"])].size
    for metric, want in (("attention_speedup", 1.0), ("ttft_speedup", 1.0), ("attention_sparsity", 0.0),
                         ("keep_fraction", 1.0)):
        assert value(df, "dense", metric).value == want
    assert out.strip().splitlines()[-1] == str(tmp_path / "acc" / "study.csv")


def test_speed_from_takes_the_timing_of_another_run_and_keeps_scores_and_sparsity(tmp_path, capsys):
    """The accuracy run (the standard one: TSA x2.0 attention, x1.25 TTFT) and a timing run in
    which dense takes 20 ms a layer and 1.0 s, and TSA 4 ms in its sparse layers and 0.5 s: the
    TSA timing rows become x5.0 and x2.0, tagged with the timing run's key; its scores, paired
    differences and sparsity stay those of the accuracy run (the timing run's TSA scores 0 and
    its sparsity differs); xattention, absent from the timing run, gets no timing rows."""
    acc = standard_run(tmp_path / "acc_run")
    timing = tmp_path / "timing_run"
    make_arm(timing, [timed(t, i, 1, {k: 20.0 for k in range(LAYERS)}, 1.0) for t, i in SAMPLES],
             method="dense", run_key="densetiming1")
    make_arm(timing, [timed(t, i, 0, {k: 4.0 if k in (1, 3) else 20.0 for k in range(LAYERS)}, 0.5,
                            {1: [0.9, 0.1], 3: [0.9, 0.1]}) for t, i in SAMPLES],
             method="tsa", tau=0.005, layers="half", sparse_layers=(1, 3), run_key="tsatiming123")
    plain = tables(capsys, tmp_path / "plain", acc)[3]
    rc, out, err, df = tables(capsys, tmp_path, acc, extra=("--speed-from", str(timing), "--print"))
    assert rc == 0, err
    tsa, x = "tsa tau=0.005 half", "xattention"
    assert value(df, tsa, "attention_speedup").value == pytest.approx(5.0)
    assert value(df, tsa, "attention_speedup_all_layers").value == pytest.approx(80 / 48, abs=1e-4)
    assert value(df, tsa, "ttft_speedup").value == pytest.approx(2.0)
    assert value(df, tsa, "attention_speedup").timed_run_key == "tsatiming123"
    assert value(df, "dense", "ttft_speedup").timed_run_key == "densetiming1"
    assert value(df, tsa, "attention_sparsity").value == pytest.approx(0.8)        # the accuracy run's
    for metric in ("score", "score_diff"):
        assert value(df, tsa, metric).value == value(plain, tsa, metric).value
    assert not df[(df.setting == x) & df.metric.str.contains("speedup")].size
    assert value(plain, x, "attention_speedup").value == pytest.approx(2.0)          # it had one before
    assert f"{MODEL} 4k: --speed-from has no run of xattention: no timing rows for it" in err
    assert "speedups from --speed-from (4 samples per arm)" in out
    config = json.loads(df.config.iloc[0])
    assert config["speed_from"] == [str(timing)] and config["speed_groups"][0]["baseline_run_key"] == "densetiming1"


def test_speed_from_sessions_time_each_arm_against_its_own_sessions_dense(tmp_path, capsys):
    """Two timing sessions, each with its own dense arm (the same run key in both, as when a
    lost machine's arms are run again beside a fresh dense arm). Session 1: dense 20 ms a layer
    and 1.0 s, TSA 4 ms in its sparse layers and 0.5 s. Session 2: dense 10 ms and 0.8 s, TSA
    again (2 ms, 0.1 s: not used, session 1 timed it first), xattention 5 ms in every layer and
    0.4 s. TSA: x5.0 and x2.0 from session 1; xattention: x2.0 and x2.0 against session 2's
    dense (against session 1's, the bug this catches, x4.0 and x2.5)."""
    acc = standard_run(tmp_path / "acc_run")
    s1, s2 = tmp_path / "session1", tmp_path / "session2"
    for d, ms, ttft in ((s1, 20.0, 1.0), (s2, 10.0, 0.8)):
        make_arm(d, [timed(t, i, 1, {k: ms for k in range(LAYERS)}, ttft) for t, i in SAMPLES],
                 method="dense", run_key="densetiming1")
    for d, ms, ttft, key in ((s1, 4.0, 0.5, "tsatiming1"), (s2, 2.0, 0.1, "tsatiming2")):
        make_arm(d, [timed(t, i, 0, {k: ms if k in (1, 3) else (20.0 if d == s1 else 10.0) for k in range(LAYERS)},
                           ttft, {1: [0.9, 0.1], 3: [0.9, 0.1]}) for t, i in SAMPLES],
                 method="tsa", tau=0.005, layers="half", sparse_layers=(1, 3), run_key=key)
    make_arm(s2, [timed(t, i, 0, {k: 5.0 for k in range(LAYERS)}, 0.4) for t, i in SAMPLES],
             method="xattention", run_key="xtiming2")
    rc, out, err, df = tables(capsys, tmp_path, acc,
                              extra=("--speed-from", str(s1), "--speed-from", str(s2), "--print"))
    assert rc == 0, err
    tsa, x = "tsa tau=0.005 half", "xattention"
    assert value(df, tsa, "attention_speedup").value == pytest.approx(5.0)
    assert value(df, tsa, "ttft_speedup").value == pytest.approx(2.0)
    assert value(df, x, "attention_speedup").value == pytest.approx(2.0)
    assert value(df, x, "ttft_speedup").value == pytest.approx(2.0)
    assert (value(df, tsa, "ttft_speedup").timed_session, value(df, x, "ttft_speedup").timed_session) == (1, 2)
    assert value(df, tsa, "attention_speedup").timed_run_key == "tsatiming1"
    assert value(df, "dense", "ttft_speedup").timed_session == 1
    assert "session 1: 4 samples per arm, 2 arms timed there; session 2: 4 samples per arm, 1 arm timed there" in out
    config = json.loads(df.config.iloc[0])
    assert config["speed_from"] == [str(s1), str(s2)] and config["speed_sessions"] == [[str(s1)], [str(s2)]]
    assert [g["session"] for g in config["speed_groups"]] == [1, 2]
    # one session: no session column, the words and config as before
    rc, out, err, one = tables(capsys, tmp_path / "one", acc, extra=("--speed-from", str(s2), "--print"))
    assert rc == 0, err
    assert "timed_session" not in one.columns
    assert "speedups from --speed-from (4 samples per arm)" in out
    assert "speed_sessions" not in json.loads(one.config.iloc[0])


def test_a_speed_session_without_its_own_dense_arm_is_refused(tmp_path, capsys):
    acc = standard_run(tmp_path / "acc_run")
    s1, s2 = tmp_path / "session1", tmp_path / "session2"
    make_arm(s1, [timed(t, i, 1, {k: 20.0 for k in range(LAYERS)}, 1.0) for t, i in SAMPLES], method="dense")
    make_arm(s2, [timed(t, i, 0, {k: 5.0 for k in range(LAYERS)}, 0.4) for t, i in SAMPLES], method="xattention")
    rc, out, err, _ = tables(capsys, tmp_path, acc, extra=("--speed-from", str(s1), "--speed-from", str(s2)))
    assert rc == 2 and f"--speed-from (session 2) {s2}:" in err and "need exactly one dense arm" in err


def test_speed_from_with_no_run_at_that_length_says_so(tmp_path, capsys):
    acc = standard_run(tmp_path / "acc_run")
    other = tmp_path / "timing_8k"
    make_arm(other, [rec(t, i, 1, length=2 * L, attn_ms={str(k): 20.0 for k in range(LAYERS)}, prefill_s=1.0)
                     for t, i in SAMPLES], method="dense", seq_lens=(2 * L,))
    rc, out, err, df = tables(capsys, tmp_path, acc, extra=("--speed-from", str(other)))
    assert rc == 0, err
    assert "--speed-from: smollm2-135m 8k has no accuracy run; not used" in err
    assert "--speed-from has no run of any arm: no timing rows for them" in err
    assert not df[df.metric.str.contains("speedup")].size and value(df, "dense", "attention_sparsity").value == 0


def test_score_rows_pair_every_arm_with_dense(tmp_path, capsys):
    rc, out, err, df = tables(capsys, tmp_path, standard_run(tmp_path / "run"), extra=["--print"])
    assert rc == 0, err
    # dense 3/4 right, TSA 2/4: task means niah (100, 50) and vt (50, 50) -> 75 and 50 points
    row = value(df, "tsa tau=0.005 half", "score_diff")
    assert (row.value, row.n, row.level) == (-25.0, 4, "mean_tasks")
    assert value(df, "dense", "score").value == 75.0 and value(df, "dense", "score_diff").value == 0.0
    assert value(df, "xattention", "score", task="vt").value == 0.0
    assert set(df.model) == {MODEL} and set(df.seq_len) == {L} and set(df.bench) == {"accuracy"}
    config = json.loads(df.config.iloc[0])
    assert config["command"].startswith("tsa-bench study tables ") and config["resamples"] == 200
    # each row names its own arm; the config holds no per-arm list (it repeated on every row)
    assert [g["arms"] for g in config["groups"]] == [df.setting.nunique()]
    assert df.predictions.str.endswith(".jsonl").all() and df.groupby("setting").predictions.nunique().eq(1).all()
    summary = [line for line in out.splitlines() if line.startswith("tsa tau=0.005 half")]
    assert len(summary) == 1 and "-25.00 [" in summary[0] and " 2.00 " in summary[0]


def test_only_ids_in_every_arm_are_compared(tmp_path, capsys):
    run = tmp_path / "run"
    make_arm(run, dense_records(scores=(1, 1, 0, 0)), method="dense")
    make_arm(run, tsa_records(scores=(1, 1, 0, 1))[:3], method="tsa", tau=0.005, layers="half",
             sparse_layers=(1, 3))                                  # vt-00001 never run
    rc, _, err, df = tables(capsys, tmp_path, run)
    assert rc == 0, err
    assert "3 samples in every one of the 2 arms; left out (not in every arm): dense 1" in err
    assert set(df.n[df.metric.isin(["score", "score_diff"]) & (df.task == "all")]) == {3}
    # on the three common ids both arms score niah (1, 1) and vt (0): 50 points each, diff 0
    assert value(df, "dense", "score").value == 50.0
    assert value(df, "tsa tau=0.005 half", "score_diff").value == 0.0
    assert value(df, "dense", "ttft_speedup").n == 3
    assert value(df, "tsa tau=0.005 half", "attention_speedup").value == pytest.approx(2.0)


@pytest.mark.parametrize("dense_arms,message", [
    (0, "need exactly one dense arm as the baseline, found 0"),
    (2, "two different runs of setting 'dense'"),
], ids=["no-dense", "two-dense"])
def test_a_group_needs_exactly_one_dense_arm(tmp_path, capsys, dense_arms, message):
    run = tmp_path / "run"
    for k in range(dense_arms):                   # two runs of dense under different run keys
        make_arm(run, dense_records(), method="dense", run_key=f"densekey{k:04d}")
    make_arm(run, tsa_records(), method="tsa", tau=0.005, layers="half", sparse_layers=(1, 3))
    rc, _, err, _ = tables(capsys, tmp_path, run)
    assert rc == 2 and message in err and f"{MODEL} at length {L}" in err


def test_without_attention_times_there_is_no_attention_speedup_row(tmp_path, capsys):
    rc, _, err, df = tables(capsys, tmp_path, standard_run(tmp_path / "run", attn=False))
    assert rc == 0, err
    assert not df.metric.isin(["attention_speedup", "attention_speedup_all_layers"]).any()
    assert f"{MODEL} 4k: no attention_speedup row for any arm: the records lack attn_ms" in err
    assert value(df, "tsa tau=0.005 half", "ttft_speedup").value == pytest.approx(1.25, abs=1e-4)


def test_predictions_of_another_machine_are_found_under_preds(tmp_path, capsys):
    run = standard_run(tmp_path / "run")
    for csv in run.glob("*.csv"):
        df = pd.read_csv(csv)
        df["predictions"] = "/elsewhere/results/ruler/preds/" + Path(df.predictions.iloc[0]).name
        df.to_csv(csv, index=False)
    rc, _, err, df = tables(capsys, tmp_path, run)
    assert rc == 0, err
    assert value(df, "tsa tau=0.005 half", "attention_speedup_total").value == pytest.approx(2.8, abs=1e-4)


def test_figures_draw_from_the_study_csv(tmp_path, capsys):
    from tsa_bench.analysis.figures import score_vs_speedup
    from tsa_bench.analysis.tables import read_csvs

    rc, _, err, _ = tables(capsys, tmp_path, standard_run(tmp_path / "run"))
    assert rc == 0, err
    csv = tmp_path / "acc" / "study.csv"
    assert main(["figures", "--latency", "--accuracy", str(csv), "--out-dir", str(tmp_path / "fig")]) == 0
    pngs = capsys.readouterr().out.split()
    assert [Path(p).name for p in pngs] == ["accuracy_score_vs_speedup.png", "accuracy_score_vs_sparsity.png"]
    assert all(Path(p).stat().st_size > 1000 for p in pngs)
    drawn = score_vs_speedup(read_csvs([csv]), tmp_path / "check.png").drawn[(MODEL, L)]["points"]
    assert sorted(map(tuple, drawn.round(4).tolist())) == [(1.0, 75.0), (2.0, 50.0), (2.0, 50.0)]


def single_layer_arm(run: Path, layer: int, scores: Sequence[int], sparsity: float) -> Path:
    """TSA in ``layer`` alone: 10 ms there (dense: 10 * (1 + layer) ms, so a speedup of 1 + layer)."""
    recs = [timed(t, i, s, {k: 10.0 if k == layer else 10.0 * (1 + k) for k in range(LAYERS)}, 0.4,
                  {layer: [1 - sparsity, sparsity]}) for (t, i), s in zip(SAMPLES, scores)]
    return make_arm(run, recs, method="tsa", tau=0.01, layers=f"L{layer}", sparse_layers=(layer,))


def test_sensitivity_compares_single_layer_arms_with_dense(tmp_path, capsys):
    run = tmp_path / "run"
    make_arm(run, [timed(t, i, 1, {k: 10.0 * (1 + k) for k in range(LAYERS)}) for t, i in SAMPLES], method="dense")
    for layer, scores, sparsity in ((0, (1, 1, 1, 1), 0.3), (1, (1, 1, 0, 1), 0.5), (2, (0, 1, 0, 1), 0.9)):
        single_layer_arm(run, layer, scores, sparsity)
    make_arm(run, tsa_records()[:2], method="tsa", tau=0.01, layers="half", sparse_layers=(1, 3))   # ignored
    drift = tmp_path / "drift.json"
    drift.write_text(json.dumps({"drift": [0.1, 0.2, 0.3, 0.4]}))
    out = tmp_path / "sens.csv"
    rc, stdout, err = study(capsys, "sensitivity", str(run), "--drift", str(drift), "--model-name", MODEL,
                            "--out", str(out), "--print")
    assert rc == 0, err
    df = pd.read_csv(out)

    def by(metric):
        return df[df.metric == metric].set_index("layer")["value"].to_dict()

    # drops: layer 0 none, layer 1 one vt sample (vt 50 -> mean over tasks -25), layer 2 one of each
    assert by("layer_drop") == {0: 0.0, 1: 25.0, 2: 50.0}
    assert by("layer_drift") == {0: 0.1, 1: 0.2, 2: 0.3}
    assert by("layer_sparsity") == {0: 0.3, 1: 0.5, 2: 0.9}
    assert by("layer_attention_speedup") == {0: 1.0, 1: 2.0, 2: 3.0}
    assert set(df.n[df.metric == "layer_drop"]) == {4}                 # the half arm's ids do not narrow it
    for metric in ("drift_drop_spearman", "sparsity_drop_spearman", "attention_speedup_drop_spearman"):
        assert df[df.metric == metric].value.tolist() == [1.0]
    assert df[df.metric == "keep_fraction_drop_spearman"].value.tolist() == [-1.0]
    assert "Spearman rho with the drop: drift +1.00, sparsity +1.00, keep_fraction -1.00" in stdout


def test_sensitivity_without_single_layer_arms_is_a_usage_error(tmp_path, capsys):
    run = standard_run(tmp_path / "run")
    drift = tmp_path / "drift.json"
    drift.write_text(json.dumps({"drift": [0.1, 0.2, 0.3, 0.4]}))
    rc, _, err = study(capsys, "sensitivity", str(run), "--drift", str(drift), "--out", str(tmp_path / "s.csv"))
    assert rc == 2 and "no arm runs TSA in exactly one layer" in err


def test_method_layers_time_a_sparse_method_where_it_runs(tmp_path, capsys):
    """A hybrid model: the method runs in layer 2 only (the others keep their own attention, as
    Gemma-3's sliding layers do). Dense takes 10 ms in every layer; the method 4 ms in layer 2
    and 10 ms elsewhere. Over every layer (the default) that is 40 / 34; with --method-layers 2
    it is 10 / 4 = 2.5, and the all-layer row stays 40 / 34. TSA arms keep their sparse layers."""
    run = tmp_path / "run"
    make_arm(run, [timed(t, i, 1, {k: 10.0 for k in range(LAYERS)}, 1.0) for t, i in SAMPLES], method="dense")
    make_arm(run, [timed(t, i, 1, {k: 4.0 if k == 2 else 10.0 for k in range(LAYERS)}, 0.9) for t, i in SAMPLES],
             method="flexprefill")
    make_arm(run, [timed(t, i, 1, {k: 5.0 if k == 1 else 10.0 for k in range(LAYERS)}, 0.9, {1: [0.5, 0.5]})
                   for t, i in SAMPLES], method="tsa", tau=0.01, layers="l1", sparse_layers=(1,))
    default = tables(capsys, tmp_path / "a", run)[3]
    assert value(default, "flexprefill", "attention_speedup").value == pytest.approx(40 / 34, abs=1e-4)
    rc, out, err, df = tables(capsys, tmp_path / "b", run, extra=("--method-layers", "2"))
    assert rc == 0, err
    assert value(df, "flexprefill", "attention_speedup").value == pytest.approx(2.5)
    assert value(df, "flexprefill", "attention_speedup_all_layers").value == pytest.approx(40 / 34, abs=1e-4)
    assert value(df, "tsa tau=0.01 l1", "attention_speedup").value == pytest.approx(2.0)
    assert value(df, "dense", "attention_speedup").value == pytest.approx(1.0)
    assert json.loads(df.config.iloc[0])["method_layers"] == [2]
    rc, out, err = study(capsys, "tables", str(run), "--model-name", MODEL, "--out", str(tmp_path / "c.csv"),
                         "--method-layers", "7")
    assert rc == 2 and "times no layer [7]" in err
    rc, out, err = study(capsys, "tables", str(run), "--model-name", MODEL, "--out", str(tmp_path / "c.csv"),
                         "--method-layers", "two")
    assert rc == 2 and "--method-layers" in err


def test_layers_gives_per_layer_times_against_dense_and_against_the_method_alone(tmp_path, capsys):
    """Dense 10 ms in each of 4 layers; FlexPrefill 4 ms in layer 2; FlexPrefill + TSA (layer 1)
    5 ms in layer 1 and 4 in layer 2. Layer 1 of the composed arm: 5 ms, x2.0 vs dense, x2.0 vs
    FlexPrefill alone; layer 2: x2.5 and x1.0; all layers: 29 ms, 40 / 29 and 34 / 29."""
    run = tmp_path / "run"
    make_arm(run, [timed(t, i, 1, {k: 10.0 for k in range(LAYERS)}, 1.0) for t, i in SAMPLES], method="dense")
    make_arm(run, [timed(t, i, 1, {k: 4.0 if k == 2 else 10.0 for k in range(LAYERS)}, 0.9) for t, i in SAMPLES],
             method="flexprefill", run_key="flexalone123")
    ms = {0: 10.0, 1: 5.0, 2: 4.0, 3: 10.0}
    make_arm(run, [timed(t, i, 1, ms, 0.8, {1: [0.5, 0.5]}) for t, i in SAMPLES], method="flexprefill+tsa",
             tau=0.005, layers="l1", sparse_layers=(1,))
    out = tmp_path / "layers.csv"
    rc, stdout, err = study(capsys, "layers", str(run), "--model-name", MODEL, "--out", str(out), "--print")
    assert rc == 0, err
    df = pd.read_csv(out)
    comp = "flexprefill+tsa tau=0.005 l1"

    def at(setting, metric, layer=None):
        sel = df[(df.setting == setting) & (df.metric == metric)]
        sel = sel[sel.layer.isna()] if layer is None else sel[sel.layer == layer]
        assert len(sel) == 1, (setting, metric, layer, len(sel))
        return sel.iloc[0]

    assert at(comp, "attention_ms", 1).value == pytest.approx(5.0)
    assert at(comp, "attention_ms_all_layers").value == pytest.approx(29.0)
    assert at(comp, "attention_speedup", 1).value == pytest.approx(2.0)
    assert at(comp, "attention_speedup", 2).value == pytest.approx(2.5)
    assert at(comp, "attention_speedup_all_layers").value == pytest.approx(40 / 29, abs=1e-4)
    vs = at(comp, "attention_speedup_vs_method", 1)
    assert vs.value == pytest.approx(2.0) and vs.baseline_run_key == "flexalone123"
    assert at(comp, "attention_speedup_vs_method", 2).value == pytest.approx(1.0)
    assert at(comp, "attention_speedup_vs_method_all_layers").value == pytest.approx(34 / 29, abs=1e-4)
    assert at("dense", "attention_ms", 3).value == pytest.approx(10.0)
    assert not len(df[(df.setting == "dense") & df.metric.str.startswith("attention_speedup")])
    assert not len(df[(df.setting == "flexprefill") & (df.metric.str.startswith("attention_speedup_vs"))])
    assert "dense, per layer (ms): 0: 10.00, 1: 10.00" in stdout
    bare = tmp_path / "bare"
    make_arm(bare, dense_records(attn=False), method="dense")
    make_arm(bare, tsa_records(attn=False), method="tsa", tau=0.005, layers="half", sparse_layers=(1, 3))
    rc, stdout, err = study(capsys, "layers", str(bare), "--model-name", MODEL, "--out", str(tmp_path / "b.csv"))
    assert rc == 2 and "attn_ms" in err


def test_layer_time_figure_draws_each_arms_medians(tmp_path, capsys):
    """`tsa-bench figures --layers` on `study layers` output: one figure per model and length,
    each arm's line at its per-layer medians (dense 10 ms everywhere, FlexPrefill 4 ms in layer
    2); a CSV without attention_ms rows is a usage error."""
    from tsa_bench.analysis.figures import layer_times
    run = tmp_path / "run"
    make_arm(run, [timed(t, i, 1, {k: 10.0 for k in range(LAYERS)}, 1.0) for t, i in SAMPLES], method="dense")
    make_arm(run, [timed(t, i, 1, {k: 4.0 if k == 2 else 10.0 for k in range(LAYERS)}, 0.9) for t, i in SAMPLES],
             method="flexprefill")
    csv = tmp_path / "layers.csv"
    assert study(capsys, "layers", str(run), "--model-name", MODEL, "--out", str(csv))[0] == 0
    df = pd.read_csv(csv)
    plot = layer_times(df, tmp_path / "f.png")
    assert plot.path.exists()
    assert plot.drawn[None]["dense"].tolist() == [[k, 10.0] for k in range(LAYERS)]
    assert plot.drawn[None]["flexprefill"].tolist() == [[0, 10.0], [1, 10.0], [2, 4.0], [3, 10.0]]
    rc = main(["figures", "--latency", "--accuracy", "--layers", str(csv), "--out-dir", str(tmp_path / "figs")])
    out = capsys.readouterr().out
    assert rc == 0 and f"accuracy_layer_times_{MODEL}_4k.png" in out
    assert (tmp_path / "figs" / f"accuracy_layer_times_{MODEL}_4k.png").exists()
    scores = tmp_path / "scores.csv"
    tables(capsys, tmp_path / "t", standard_run(tmp_path / "std"))
    (tmp_path / "t" / "acc" / "study.csv").rename(scores)
    rc = main(["figures", "--latency", "--accuracy", "--layers", str(scores), "--out-dir", str(tmp_path / "figs")])
    assert rc == 2 and "no attention_ms rows" in capsys.readouterr().err


def test_predictions_changed_counts_texts_that_differ_from_dense(tmp_path, capsys):
    """Dense answers "x" everywhere; the TSA arm "y" on two of the four samples (one of which it
    still scores the same): predictions_changed = 2 of 4, whatever the scores; none for dense."""
    run = tmp_path / "run"
    make_arm(run, dense_records(), method="dense")
    tsa = tsa_records()
    for r in tsa[:2]:
        r["pred"] = "y"
    make_arm(run, tsa, method="tsa", tau=0.005, layers="half", sparse_layers=(1, 3))
    df = tables(capsys, tmp_path, run)[3]
    got = value(df, "tsa tau=0.005 half", "predictions_changed")
    assert (got.value, got.n) == (2.0, 4)
    assert not len(df[(df.setting == "dense") & (df.metric == "predictions_changed")])


def test_one_run_in_two_folders_unites_their_records(tmp_path, capsys):
    """The same arm (run key) in two sessions' folders: its records are the union of both
    predictions files, the later CSV's record where an id is in both (there: dense's score on
    vt sample 1 is 1 in the second session, 0 in the first), and stderr says so. Before,
    only the later file was read, and samples only the first session had were silently lost."""
    first, second = tmp_path / "s1", tmp_path / "s2"
    make_arm(first, [r for r in dense_records() if r["task"] == "niah_single_1"]
             + [rec("vt", 1, 0.0, attn_ms={str(k): 10.0 for k in range(LAYERS)}, prefill_s=0.5)],
             method="dense", run_key="densesplit01")
    make_arm(second, [r for r in dense_records() if r["task"] == "vt"], method="dense", run_key="densesplit01")
    make_arm(second, tsa_records(), method="tsa", tau=0.005, layers="half", sparse_layers=(1, 3))
    rc, _, err, df = tables(capsys, tmp_path, first, second)
    assert rc == 0
    assert "records of 2 predictions files united" in err and str(second / "preds") in err
    assert value(df, "dense", "score", "niah_single_1").value == pytest.approx(100.0)   # only in s1
    assert value(df, "dense", "score", "vt").value == pytest.approx(50.0)      # s2's 0, 1 (s1's vt 1 was 0)
    assert value(df, "tsa tau=0.005 half", "score_diff").n == 4


def test_untouched_layers_measure_a_timing_bias(tmp_path, capsys):
    """Layers 0 and 2 are dense in the TSA arm (sparse 1, 3): in the standard run they take what
    dense takes (x1.00, no warning); slowed by 10% (another session, a busy host) they give
    x1/1.1 and stderr names the arm. No row for dense or for XAttention (timed over every layer)."""
    rc, _, err, df = tables(capsys, tmp_path, standard_run(tmp_path / "ok"))
    assert rc == 0 and "carry a bias" not in err
    assert value(df, "tsa tau=0.005 half", "attention_speedup_untouched").value == pytest.approx(1.0)
    for setting in ("dense", "xattention"):
        assert df[(df.setting == setting) & (df.metric == "attention_speedup_untouched")].empty
    slow = tmp_path / "slow"
    make_arm(slow, dense_records(), method="dense")
    recs = tsa_records()
    for r in recs:
        r["attn_ms"] = {k: v * (1.1 if k in ("0", "2") else 1.0) for k, v in r["attn_ms"].items()}
    make_arm(slow, recs, method="tsa", tau=0.005, layers="half", sparse_layers=(1, 3))
    rc, _, err, df = tables(capsys, tmp_path / "second", slow)
    assert rc == 0
    assert value(df, "tsa tau=0.005 half", "attention_speedup_untouched").value == pytest.approx(1 / 1.1, abs=1e-4)
    assert "tsa tau=0.005 half x0.909" in err and "carry a bias" in err
    assert value(df, "tsa tau=0.005 half", "attention_speedup").value == pytest.approx(2.0)   # sparse layers unchanged


def test_untouched_layers_of_a_composed_arm_exclude_the_methods_layers(tmp_path, capsys):
    """--method-layers 2,3: FlexPrefill changes layers 2, 3, FlexPrefill + TSA (TSA in 1) layers
    1, 2, 3; both run their changed layers at half of dense's 10 ms, the rest at 10 ms. The
    untouched layers (0, 1 and 0) are then x1.00; counting layer 2 as untouched for the
    composed arm (TSA's layers only) would give (10 + 10) / (10 + 5) = x1.33."""
    run = tmp_path / "run"
    ms = lambda changed: {k: 5.0 if k in changed else 10.0 for k in range(LAYERS)}      # noqa: E731
    make_arm(run, [timed(t, i, 1, ms(()), 0.5) for t, i in SAMPLES], method="dense")
    make_arm(run, [timed(t, i, 1, ms((2, 3)), 0.4) for t, i in SAMPLES], method="flexprefill")
    make_arm(run, [timed(t, i, 1, ms((1, 2, 3)), 0.3, {1: [0.5, 0.6]}) for t, i in SAMPLES],
             method="flexprefill+tsa", tau=0.005, layers="one", sparse_layers=(1,))
    rc, _, err, df = tables(capsys, tmp_path, run, extra=("--method-layers", "2,3"))
    assert rc == 0 and "carry a bias" not in err
    for setting in ("flexprefill", "flexprefill+tsa tau=0.005 one"):
        assert value(df, setting, "attention_speedup_untouched").value == pytest.approx(1.0)
    rc, _, _, df = tables(capsys, tmp_path / "every", run)           # without --method-layers: every layer
    assert rc == 0 and df[df.metric == "attention_speedup_untouched"].empty


def test_twins_pair_each_arm_with_the_same_setting_in_other_runs(tmp_path, capsys):
    """Known answer. The reference run ("mask") has dense and TSA on samples 0-1 of both tasks;
    the run under test ("banded") on samples 0-2 (the third is no twin's) plus an arm the
    reference lacks. Banded dense answers "y" on one sample with the same score and "z" on
    another with score 0 where the mask path had 1: 2 predictions and 1 score differ of 4
    common; score 75 against 100 -> diff -25. Banded TSA equals its twin: 0 / 0 and diff 0
    exactly. The arm without a twin is named on stderr and gets no rows."""
    ref, run = tmp_path / "mask", tmp_path / "banded"
    make_arm(ref, [rec(t, i, 1) for t in TASKS for i in range(2)], method="dense", run_key="maskdense000")
    make_arm(ref, [rec(t, i, 1) for t in TASKS for i in range(2)], method="tsa", tau=0.005, layers="drift",
             sparse_layers=(3,), run_key="masktsa00000")
    dense = [rec(t, i, 1) for t in TASKS for i in range(3)]
    dense[0]["pred"] = "y"                                    # niah_single_1 #0: same score
    dense[1]["pred"], dense[1]["score"] = "z", 0.0            # niah_single_1 #1: score 1 -> 0
    make_arm(run, dense, method="dense", run_key="bandense0000")
    make_arm(run, [rec(t, i, 1) for t in TASKS for i in range(3)], method="tsa", tau=0.005, layers="drift",
             sparse_layers=(3,), run_key="bandtsa00000")
    make_arm(run, [rec(t, i, 1) for t in TASKS for i in range(3)], method="tsa", tau=0.02, layers="drift",
             sparse_layers=(3,), run_key="bandtsa20000")
    out = tmp_path / "twins.csv"
    rc, stdout, stderr = study(capsys, "twins", str(run), "--against", str(ref), "--out", str(out), "--print")
    assert rc == 0
    assert "tsa tau=0.02 drift at 4k: no twin in --against" in stderr
    df = pd.read_csv(out)
    assert set(df.setting) == {"dense", "tsa tau=0.005 drift"}
    assert (value(df, "dense", "predictions_differ").value, value(df, "dense", "predictions_differ").n) == (2, 4)
    assert value(df, "dense", "scores_differ").value == 1
    assert value(df, "dense", "score_twin").value == 100.0
    # mean over the two tasks of the per-task means: niah_single_1 1/2 = 50 %, vt 100 %
    assert value(df, "dense", "score").value == 75.0
    d = value(df, "dense", "score_diff")
    assert d.value == -25.0 and d.lo <= -25.0 <= d.hi and d.twin_run_key == "maskdense000"
    t = value(df, "tsa tau=0.005 drift", "score_diff")
    assert (t.value, t.lo, t.hi) == (0.0, 0.0, 0.0)
    assert value(df, "tsa tau=0.005 drift", "predictions_differ").value == 0
    assert "dense" in stdout and "-25.00" in stdout


def test_twins_refuses_two_reference_runs_of_one_setting(tmp_path, capsys):
    ref, run = tmp_path / "mask", tmp_path / "banded"
    make_arm(ref, [rec(t, 0, 1) for t in TASKS], method="dense", run_key="aaaaaaaaaaaa")
    make_arm(ref, [rec(t, 0, 1) for t in TASKS], method="dense", run_key="bbbbbbbbbbbb")
    make_arm(run, [rec(t, 0, 1) for t in TASKS], method="dense", run_key="cccccccccccc")
    rc, _, stderr = study(capsys, "twins", str(run), "--against", str(ref), "--out", str(tmp_path / "t.csv"))
    assert rc != 0 and "two runs of setting 'dense'" in stderr


def test_layer_time_figures_of_two_sessions_stay_apart(tmp_path, capsys, monkeypatch):
    """Two `study layers` CSVs of one model and length (two timing sessions: dense 10 ms a layer
    in the first, 20 ms in the second): one figure each, named by the CSV's run id, each dense
    line at its own session's medians (one figure of both would draw two points per layer)."""
    import matplotlib.pyplot as plt

    import tsa_bench.analysis.figures as figs
    from tsa_bench.commands.figures import layer_time_figures
    csvs = []
    for k, ms in ((1, 10.0), (2, 20.0)):
        run = tmp_path / f"run{k}"
        make_arm(run, [timed(t, i, 1, {j: ms for j in range(LAYERS)}, 1.0) for t, i in SAMPLES], method="dense")
        csv = tmp_path / "layers" / f"layers-2026113{k}T000000000Z-abc.csv"
        assert study(capsys, "layers", str(run), "--model-name", MODEL, "--out", str(csv))[0] == 0
        csvs.append(csv)
    drawn, real = [], figs.layer_times

    def spy(df, path, **kw):
        plot = real(df, path, **kw)
        drawn.append(plot.drawn[None]["dense"].tolist())
        plt.close("all")
        return plot

    monkeypatch.setattr(figs, "layer_times", spy)
    written = layer_time_figures(csvs, tmp_path / "figs")
    assert [p.name for p in written] == [f"accuracy_layer_times_{MODEL}_4k_2026113{k}T000000000Z-abc.png"
                                         for k in (1, 2)]
    assert all(p.exists() for p in written)
    assert drawn == [[[j, 10.0] for j in range(LAYERS)], [[j, 20.0] for j in range(LAYERS)]]
    one = layer_time_figures(csvs[:1], tmp_path / "figs1")
    assert [p.name for p in one] == [f"accuracy_layer_times_{MODEL}_4k.png"]
