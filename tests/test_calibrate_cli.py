"""``tsa-bench calibrate``: the speed figures and the evaluation from prediction records, the
command's flow on fabricated ruler runs (choice, profile, held-out, CSV, nothing feasible),
usage errors, the profile's tau in ``load_model`` / ``configure_tsa``, and the whole command
on the tiny random model."""
import json
import math
import re
from pathlib import Path

import pandas as pd
import pytest

pytest.importorskip("transformers")

from tsa_bench.analysis.calibrate import Evaluation, Setting  # noqa: E402
from tsa_bench.cli import main  # noqa: E402
from tsa_bench.commands import calibrate as C  # noqa: E402

TINY = ["--model", "tiny-llama", "--weights", "random", "--dtype", "fp32", "--device", "cpu"]


def _recs(seed, scores, **fields):
    """One record per score, task ``t<k // 2>`` (two samples a task), length 2048."""
    return [dict(id=f"t{k // 2}-2048-{k % 2}", task=f"t{k // 2}", max_length=2048, index=k % 2, score=s,
                 prompt_sha=f"{seed}:{k}", **fields) for k, s in enumerate(scores)]


class ScriptedRunner:
    """Returns fabricated runs: dense scores 1, 1, 1, 1 with prefill 1.0 s and 1 ms of attention
    in each of 4 layers; TSA scores 0, 1, 1, 1 (task t0 loses one of two samples: -50 points
    on t0, -25 on the mean over tasks) with 0.5 s prefill, 0.25 ms per layer, and
    attention-map sparsities 0.4 and 0.2 in layers 2 and 3."""

    def __init__(self):
        self.calls = []

    def __call__(self, *, seed, n, method, tau=None, sparse_layers=None):
        self.calls.append(dict(seed=seed, n=n, method=method, tau=tau, sparse_layers=sparse_layers))
        if method == "dense":
            recs = _recs(seed, [1, 1, 1, 1], prefill_s=1.0, attn_ms={str(i): 1.0 for i in range(4)})
        else:
            recs = _recs(seed, [0, 1, 1, 1], prefill_s=0.5, attn_ms={str(i): 0.25 for i in range(4)},
                         tsa_layers={"2": [0.5, 0.4], "3": [0.7, 0.2]})
        return C.Run(recs, f"{method}.jsonl", f"{method}.csv", tau)


@pytest.mark.parametrize("objective, speed", [("sparsity", (0.4 + 0.2) / 4), ("ttft", 2.0), ("attention", 4.0)],
                         ids=["sparsity", "ttft", "attention"])
def test_evaluation_of_fabricated_records(objective, speed):
    """Known answer: drop 25 points (one of four samples lost, in one of two tasks), sparsity
    (0.4 + 0.2) / 4 full-attention layers, TTFT 1.0 / 0.5, attention 4 ms / 1 ms."""
    runner = ScriptedRunner()
    ev = C.Evaluator(runner, seed=1042, n=2, objective=objective, num_attention_layers=4)
    got = ev(Setting(0.01, (2, 3), "half"))
    assert isinstance(got, Evaluation)
    assert got.drop == pytest.approx(25.0) and got.speedup == pytest.approx(speed)
    assert got.drop_hi >= got.drop
    m = ev.measured[(0.01, (2, 3))]
    assert (m.dense_score, m.score, m.n) == (pytest.approx(100.0), pytest.approx(75.0), 4)
    assert m.drop_lo <= m.drop <= m.drop_hi
    ev(Setting(0.02, (2, 3), "half"))
    assert [c["method"] for c in runner.calls] == ["dense", "tsa", "tsa"]           # dense once, then cached
    assert runner.calls[1] == dict(seed=1042, n=2, method="tsa", tau=0.01, sparse_layers="half=2,3")


def test_search_confidence_sets_the_interval_the_upper_criterion_tests():
    """Known answer on 40 tasks x 2 samples, TSA losing one sample in each of 8 tasks: the drop is
    8 * 50 / 40 = 10 points at every level, and the interval the upper criterion tests narrows
    as --confidence falls (a 0.6 interval's upper end below the 0.95 one's, above the estimate)."""
    class Runner:
        def __call__(self, *, seed, n, method, tau=None, sparse_layers=None):
            scores = [1] * 80 if method == "dense" else [0 if k < 16 and k % 2 == 0 else 1 for k in range(80)]
            return C.Run(_recs(seed, scores), f"{method}.jsonl", f"{method}.csv", tau)

    wide = C.Evaluator(Runner(), seed=1042, n=2, objective="sparsity", num_attention_layers=4)(Setting(0.01, (1,), "a"))
    narrow = C.Evaluator(Runner(), seed=1042, n=2, objective="sparsity", num_attention_layers=4,
                         confidence=0.6)(Setting(0.01, (1,), "a"))
    assert wide.drop == narrow.drop == pytest.approx(10.0)
    assert wide.drop < narrow.drop_hi < wide.drop_hi


def test_model_sparsity_counts_a_missing_layer_as_zero():
    recs = [{"tsa_layers": {"1": [0.5, 0.6]}}, {"tsa_layers": {}}, {}]
    assert C.model_sparsity(recs, 2) == pytest.approx(0.6 / 3 / 2)


def test_sparse_layer_sparsity_is_the_mean_over_the_sparse_layers_alone():
    # layer 3 skips 0.2 and 0.4 of its map (mean 0.3), layer 5 0.6 and 0.8 (mean 0.7): 0.5 of
    # their own maps; over a 10-layer model that is (0.3 + 0.7) / 10 = 0.1
    recs = [{"tsa_layers": {"3": [0.9, 0.2], "5": [0.5, 0.6]}}, {"tsa_layers": {"3": [0.8, 0.4], "5": [0.4, 0.8]}}]
    assert C.sparse_layer_sparsity(recs) == pytest.approx(0.5)
    figs = C.figures(recs, recs, 10)
    assert figs["sparse_layer_sparsity"] == pytest.approx(0.5)
    assert figs["model_attention_sparsity"] == pytest.approx(0.1)
    assert "sparse layers skip 0.5000" in C._fmt_figs(figs)
    assert C.sparse_layer_sparsity([{}, {"tsa_layers": {}}]) is None


def test_a_missing_timing_is_named():
    with pytest.raises(ValueError, match="needs prefill times"):
        C.ttft_speedup(_recs(1, [1]), _recs(1, [1], prefill_s=0.1))
    with pytest.raises(C.UsageError, match="--objective attention: the runs recorded no attention speedup"):
        C.speed_of("attention", C.figures(_recs(1, [1]), _recs(1, [1]), 4))


def test_ruler_runner_keeps_only_the_asked_samples(tmp_path, monkeypatch):
    """A predictions file is keyed by the configuration, not by tasks, lengths or n, so it may
    hold more samples than asked: the runner keeps the asked ones, reads the CSV the run wrote,
    passes the seed, n and setting to ruler, and does not run the same arm twice."""
    from tsa_bench.commands import ruler

    preds = tmp_path / "p.jsonl"
    rows = [dict(id=f"{t}-{L}-{i}", task=t, max_length=L, index=i, score=1.0)
            for t in ("vt", "qa_1") for L in (2048, 4096) for i in range(3)]
    preds.write_text("".join(json.dumps(r) + "\n" for r in rows))
    seen = []

    def fake_run(args):
        seen.append(args)
        pd.DataFrame([{"metric": "score", "tau": 0.02, "predictions": str(preds)}]).to_csv(
            tmp_path / f"ruler-{len(seen)}.csv", index=False)
        return 0

    monkeypatch.setattr(ruler, "run", fake_run)
    runner = C.RulerRunner(["ruler", *TINY, "--seq-lens", "2k", "--tasks", "vt"], tmp_path, ["vt"], [2048])
    got = runner(seed=7, n=2, method="tsa", tau=0.02, sparse_layers="last=3")
    assert sorted(r["id"] for r in got.records) == ["vt-2048-0", "vt-2048-1"]
    assert got.tau == 0.02 and got.predictions == str(preds) and got.csv.endswith("ruler-1.csv")
    a = seen[0]
    assert (a.seed, a.num_samples, a.method, a.tau, a.sparse_layers) == (7, 2, "tsa", "0.02", "last=3")
    assert runner(seed=7, n=2, method="tsa", tau=0.02, sparse_layers="last=3") is got and len(seen) == 1


class FakeRuler:
    """Stands in for :class:`RulerRunner` in the command: 10 samples of one task; the dense run
    scores all; TSA at (tau, layers) misses floor(5 * tau * len(layers)) of them (drop = 10
    points each) and skips sqrt(tau) of each sparse layer's attention map. Tau and layers of a
    profile path are read from the file, as ruler does."""
    calls = []

    def __init__(self, base, out_dir, tasks, lengths):
        self.tasks, self.lengths = tasks, lengths

    def __call__(self, *, seed, n, method, tau=None, sparse_layers=None):
        FakeRuler.calls.append(dict(seed=seed, n=n, method=method, tau=tau, sparse_layers=sparse_layers))
        if sparse_layers is not None and sparse_layers.endswith(".json"):
            prof = json.loads(Path(sparse_layers).read_text())
            tau, layers = prof["tau"], prof["sparse_layers"]
        elif sparse_layers is not None:
            layers = [int(x) for x in sparse_layers.split("=")[-1].split(",")]
        fails = 0 if method == "dense" else math.floor(5 * tau * len(layers) + 1e-9)
        extra = {} if method == "dense" else {"tsa_layers": {str(i): [0.5, math.sqrt(tau)] for i in layers}}
        recs = [dict(id=f"qa_1-2048-{i}", task="qa_1", max_length=2048, index=i, score=0 if i < fails else 1,
                     prompt_sha=f"{seed}:{i}", **extra) for i in range(10)]
        return C.Run(recs, f"{method}-{seed}.jsonl", "x.csv", tau)


FLOW = ["calibrate", *TINY, "--tokenizer", "toy", "--seq-lens", "2k", "--tasks", "qa_1", "-n", "10",
        "--taus", "0.1,0.2,0.4", "--layer-sets", "half;all", "--eval-n", "10"]


def test_flow_chooses_saves_and_checks_on_held_out_samples(tmp_path, capsys, monkeypatch):
    """Drops: half 10/20/40, all 20/40/80 points at tau 0.1/0.2/0.4; budget 20: half up to 0.2
    (sparsity 2 * sqrt(0.2) / 4 = 0.224), all up to 0.1 (4 * sqrt(0.1) / 4 = 0.316): all at 0.1."""
    FakeRuler.calls = []
    monkeypatch.setattr(C, "RulerRunner", FakeRuler)
    assert main([*FLOW, "--max-drop", "20", "--out-dir", str(tmp_path)]) == 0
    out = capsys.readouterr().out
    prof = json.loads((tmp_path / "tiny-llama-random-calibrated.json").read_text())
    assert (prof["tau"], prof["sparse_layers"], prof["layer_set"]) == (0.1, [0, 1, 2, 3], "all")
    assert prof["speedup"] == pytest.approx(math.sqrt(0.1)) and prof["drop"] == pytest.approx(20.0)
    assert prof["calibration"]["seed"] == 1042 and prof["objective"] == "sparsity"
    assert prof["heldout"]["drop"] == pytest.approx(20.0) and prof["heldout"]["calibration_prompts_shared"] == 0
    calib = [c for c in FakeRuler.calls if c["seed"] == 1042]
    held = [c for c in FakeRuler.calls if c["seed"] == 42]
    assert len(calib) - 1 < 6                                   # fewer than the 6 settings, plus one dense run
    assert [c["method"] for c in held] == ["dense", "tsa"] and held[1]["tau"] is None
    assert held[1]["sparse_layers"] == str(tmp_path / "tiny-llama-random-calibrated.json")
    df = pd.read_csv(out.strip().splitlines()[-1])
    assert set(df.split) == {"calibration", "heldout"} and (df.bench == "calibrate").all()
    search = df[(df.split == "calibration") & (df.metric == "drop")]
    assert len(search) == len(calib) - 1 and search.chosen.sum() == 1
    assert df["git_sha"].notna().all()
    assert "use it: tsa-bench ruler --model tiny-llama --sparse-layers" in out


def test_margin_tightens_the_search_but_not_the_held_out_verdict(tmp_path, capsys, monkeypatch):
    """Known answer (drops as in the flow test): --max-drop 20 with --margin 10 searches against
    10 points, so "all" at tau 0.1 (drop 20) is over and "half" at tau 0.1 (drop 10, sparsity
    2 * sqrt(0.1) / 4) is chosen; held out it drops 10, within the budget of 20."""
    monkeypatch.setattr(C, "RulerRunner", FakeRuler)
    assert main([*FLOW, "--max-drop", "20", "--margin", "10", "--out-dir", str(tmp_path)]) == 0
    out = capsys.readouterr().out
    assert "budget 10 points (point criterion; --max-drop 20 less a margin of 10, held out against 20)" in out
    prof = json.loads((tmp_path / "tiny-llama-random-calibrated.json").read_text())
    assert (prof["tau"], prof["layer_set"]) == (0.1, "half")
    assert prof["speedup"] == pytest.approx(2 * math.sqrt(0.1) / 4)
    assert (prof["max_drop"], prof["budget"], prof["margin"]) == (10.0, 20.0, 10.0)
    assert prof["heldout"]["drop"] == pytest.approx(10.0) and prof["heldout"]["within_budget"] is True
    rows = pd.read_csv(out.strip().splitlines()[-1])
    assert set(rows.margin) == {10.0} and set(rows.max_drop) == {20.0}
    assert rows.query("metric == 'drop' and split == 'calibration' and layer_set == 'all'").feasible.eq(False).all()


def test_nothing_feasible_saves_nothing_and_exits_1(tmp_path, capsys, monkeypatch):
    monkeypatch.setattr(C, "RulerRunner", FakeRuler)
    assert main([*FLOW, "--max-drop", "5", "--out-dir", str(tmp_path)]) == 1
    out = capsys.readouterr().out
    assert "no setting met the search budget of 5 points" in out and "Closest: tau 0.1 half" in out
    assert not list(tmp_path.glob("*.json"))
    assert pd.read_csv(out.strip().splitlines()[-1]).query("metric == 'drop'").feasible.eq(False).all()


@pytest.mark.parametrize("argv, msg", [
    (["--calib-seed", "42"], "--calib-seed and --eval-seed are both 42"),
    (["--max-drop", "-1"], "--max-drop must be a finite number of points >= 0"),
    (["--taus", "0.1,0"], r"--taus: each tau must be in \(0, 1\)"),
    (["--taus", "a"], "--taus: 'a' is not a number"),
    (["--layer-sets", "x=9"], "--layer-sets x=9: .*out of range"),
    (["--objective", "attention"], "--objective attention needs a CUDA device"),
    (["--objective", "ttft", "--engine", "hf-generate"], "--objective ttft needs --engine batched"),
    (["-n", "0"], "-n must be >= 1"),
    (["--eval-n", "-1"], "--eval-n must be >= 0"),
    (["--tasks", "nope"], "--tasks: unknown RULER task 'nope'"),
    (["--confidence", "1"], r"--confidence must be in \(0, 1\)"),
    (["--margin", "-0.5"], r"--margin must be between 0 and --max-drop \(1\) points"),
    (["--max-drop", "1", "--margin", "1.5"], r"--margin must be between 0 and --max-drop \(1\) points"),
], ids=["same-seeds", "negative-budget", "tau-zero", "tau-text", "layer-out-of-range", "attention-on-cpu",
        "ttft-without-prefill-times", "no-samples", "negative-eval-n", "unknown-task", "confidence-one",
        "negative-margin", "margin-over-budget"])
def test_bad_flags_are_usage_errors(capsys, argv, msg):
    assert main(["calibrate", *TINY, "--seq-lens", "2k", *argv, "--dry-run"]) == 2
    assert re.search(msg, capsys.readouterr().err)


def test_default_layer_sets_half_drift_all(tmp_path, monkeypatch):
    from tsa_bench.hf import layers as L
    from tsa_bench.hf.loading import model_config

    drift = tmp_path / "drift.json"
    drift.write_text(json.dumps({"num_layers": 4, "sparse_layers": [1, 3]}))
    monkeypatch.setattr(L, "find_profile", lambda name: drift)
    config, preset = model_config("tiny-llama", "random")
    assert C.resolve_layer_sets(None, config, preset=preset, model_name="tiny-llama", weights="pretrained") == {
        "half": (2, 3), "drift": (1, 3), "all": (0, 1, 2, 3)}
    assert C.resolve_layer_sets(None, config, preset=preset, model_name="tiny-llama", weights="random") == {
        "half": (2, 3), "all": (0, 1, 2, 3)}                  # a pretrained drift profile is not for random weights


def test_the_calibrated_profile_never_takes_the_drift_profile_path():
    from tsa_bench.hf.layers import LAYERS_DIR, profile_path

    for weights in ("pretrained", "random"):
        p = C.calibrated_profile_path("meta-llama/Llama-3.1-8B", weights, None)
        assert p.parent == LAYERS_DIR and p != profile_path("meta-llama/Llama-3.1-8B", weights)
        assert p.name.endswith("-calibrated.json")


@pytest.mark.parametrize("tsa_config_tau, want", [(None, 0.02), (0.01, 0.01)], ids=["profile-tau", "config-wins"])
def test_load_model_and_configure_tsa_take_the_profile_tau(tmp_path, tsa_config_tau, want):
    import torch

    from tsa_bench.hf import configure_tsa, load_model, tsa_plan
    from tsa_core import TSAConfig

    prof = tmp_path / "p.json"
    prof.write_text(json.dumps({"num_layers": 4, "sparse_layers": [3], "tau": 0.02}))
    cfg = None if tsa_config_tau is None else TSAConfig(tau=tsa_config_tau)
    model, _ = load_model("tiny-llama", method="tsa", weights="random", dtype=torch.float32, tsa_config=cfg,
                          sparse_layers=str(prof))
    plan = tsa_plan(model)
    assert plan.tsa.tau == want and plan.sparse_layers == (3,)
    configure_tsa(model, method="tsa", model_name="tiny-llama")                   # no profile: the preset's
    assert tsa_plan(model).tsa.tau == 0.005
    configure_tsa(model, method="tsa", tsa_config=cfg, sparse_layers=str(prof), model_name="tiny-llama")
    assert tsa_plan(model).tsa.tau == want


def test_whole_command_on_the_tiny_random_model(tmp_path, capsys, one_thread):
    """Two taus in one layer, one calibration and one held-out sample at 2k (TSA sparsifies past
    min_keep + window = 1152 tokens): every score is 0 (random weights), so every setting is
    feasible and the larger tau, which skips more, is chosen. The profile is written, read back
    by the held-out run and by `ruler --sparse-layers`; the held-out prompts are not the
    calibration ones."""
    out_dir = tmp_path / "out"
    argv = ["calibrate", *TINY, "--tokenizer", "toy", "--seq-lens", "2k", "--tasks", "qa_1", "-n", "1",
            "--eval-n", "1", "--taus", "0.1,0.3", "--layer-sets", "last=3", "--data", "generated", "--words",
            "builtin", "--out-dir", str(out_dir), "--cache-dir", str(tmp_path / "cache"), "--no-progress"]
    assert main(argv) == 0
    out = capsys.readouterr().out
    path = out_dir / "tiny-llama-random-calibrated.json"
    prof = json.loads(path.read_text())
    assert (prof["tau"], prof["sparse_layers"], prof["num_layers"]) == (0.3, [3], 4)
    assert 0.0 < prof["calibration"]["figures"]["model_attention_sparsity"] < 0.25      # one layer of four
    assert prof["heldout"]["calibration_prompts_shared"] == 0
    df = pd.read_csv(out.strip().splitlines()[-1])
    calib = set(df.loc[df.split == "calibration", "predictions"].dropna())
    held = set(df.loc[df.split == "heldout", "predictions"].dropna())
    sha = lambda files: {json.loads(l)["prompt_sha"] for f in files for l in Path(f).read_text().splitlines()}  # noqa
    assert calib and held and not (sha(calib) & sha(held))
    assert main(["ruler", *TINY, "--seq-lens", "2k", "--sparse-layers", str(path), "--dry-run"]) == 0
    assert "tau 0.3," in capsys.readouterr().out


def test_confidence_flag_reaches_the_search(tmp_path, capsys, monkeypatch):
    seen = []

    class Recording(C.Evaluator):
        def __init__(self, *a, **kw):
            seen.append(kw.get("confidence"))
            super().__init__(*a, **kw)

    monkeypatch.setattr(C, "RulerRunner", FakeRuler)
    monkeypatch.setattr(C, "Evaluator", Recording)
    main([*FLOW, "--max-drop", "20", "--criterion", "upper", "--confidence", "0.6", "--out-dir", str(tmp_path)])
    assert seen == [0.6]
    assert "upper criterion, upper end of the 60% interval" in capsys.readouterr().out
