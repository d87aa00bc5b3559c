"""scripts/lm_eval_crosscheck.py without a model: records from lm-eval's logged samples, the
bootstrap interval, the CSV/JSONL it writes, the budget planner and its usage errors."""
import importlib.util
import json
from pathlib import Path

import pandas as pd
import pytest

SCRIPT = Path(__file__).resolve().parent.parent / "scripts" / "lm_eval_crosscheck.py"


@pytest.fixture(scope="module")
def cc():
    spec = importlib.util.spec_from_file_location("lm_eval_crosscheck", SCRIPT)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def logged(scores, start=0, length=4096):
    """Samples as ``simple_evaluate(..., log_samples=True)["samples"][task]`` holds them. With
    ``samples=`` lm-eval renumbers ``doc_id`` from 0 in every call; the generator's ``index`` in
    the doc is the sample's identity."""
    return [{"doc_id": k, "doc": {"index": start + k, "max_length": length, "outputs": [str(1000000 + start + k)]},
             "arguments": [[f"prompt {start + k}", {"max_gen_toks": 128}]],
             "resps": [[f" {1000000 + start + k}."]], "filtered_resps": [f" {1000000 + start + k}."],
             str(length): float(s)} for k, s in enumerate(scores)]


IDENT = {m: dict(method=m, backend="sdpa", stage="e2e", batch=1, dtype="fp32", model="smollm2-135m",
                 weights="pretrained", tau=0.005 if m == "tsa" else None, template="chat", harness="lm-eval 0.4.13")
         for m in ("dense", "tsa")}


def test_records_take_the_identity_from_the_doc_not_the_renumbered_doc_id(cc):
    recs = cc.records_from_samples(logged([1, 0, 1], start=10), "niah_single_1", "dense", seconds=6.0,
                                   prompt_tokens=[3800, 3801, 3802])
    assert [r["id"] for r in recs] == [f"lm-eval/niah_single_1/4096/{i}" for i in (10, 11, 12)]
    assert [r["score"] for r in recs] == [1.0, 0.0, 1.0]
    assert [r["pred"] for r in recs] == [" 1000010.", " 1000011.", " 1000012."]
    assert [r["seconds"] for r in recs] == [2.0, 2.0, 2.0]
    assert [r["prompt_tokens"] for r in recs] == [3800, 3801, 3802]


def test_records_refuse_lm_evals_other_length_marker(cc):
    bad = logged([1, 1])
    bad[1]["4096"] = -1.0
    with pytest.raises(ValueError, match="no score in"):
        cc.records_from_samples(bad, "niah_single_1", "dense")


def test_score_and_its_bootstrap_interval(cc):
    recs = cc.records_from_samples(logged([1] * 15 + [0] * 5), "niah_single_1", "dense", seconds=20.0)
    rows = cc.result_rows({"dense": recs}, IDENT, n_resamples=2000, seed=0)
    score = [r for r in rows if r["metric"] == "score"]
    assert len(score) == 1
    s = score[0]
    assert (s["task"], s["seq_len"], s["method"], s["n"], s["value"]) == ("niah_single_1", 4096, "dense", 20, 75.0)
    # binomial standard error at p = 0.75, n = 20: 9.7 points; a 95% interval spans about 4 of them
    assert 50.0 <= s["lo"] < 75.0 < s["hi"] <= 95.0 and 28.0 < s["hi"] - s["lo"] < 48.0
    per = [r for r in rows if r["metric"] == "s_per_sample"]
    assert len(per) == 1 and per[0]["value"] == 1.0 and per[0]["n"] == 20


def test_all_correct_has_a_degenerate_interval(cc):
    recs = cc.records_from_samples(logged([1] * 8), "niah_single_1", "dense")
    (s,) = [r for r in cc.result_rows({"dense": recs}, IDENT) if r["metric"] == "score"]
    assert (s["value"], s["lo"], s["hi"]) == (100.0, 100.0, 100.0)


def test_diff_is_paired_on_the_samples_both_methods_ran(cc):
    dense = cc.records_from_samples(logged([1] * 10), "niah_single_1", "dense")
    tsa = cc.records_from_samples(logged([1, 0, 1, 0, 1, 1]), "niah_single_1", "tsa")   # the budget cut it at 6
    rows = cc.result_rows({"dense": dense, "tsa": tsa}, IDENT)
    by = {(r["metric"], r["method"]): r for r in rows}
    assert by["score", "dense"]["n"] == 10 and by["score", "tsa"]["n"] == 6
    assert by["score", "tsa"]["value"] == pytest.approx(400 / 6, abs=1e-3)
    d = by["score_diff", "tsa"]
    assert d["n"] == 6 and d["baseline"] == "dense" and d["value"] == pytest.approx(-200 / 6, abs=1e-3)
    assert d["lo"] < d["value"] <= d["hi"] <= 0.0
    assert ("score_diff", "dense") not in by


def test_writes_a_tidy_csv_and_the_jsonl_beside_it(cc, tmp_path):
    from tsa_bench.results import ResultWriter
    dense = cc.records_from_samples(logged([1, 1, 0, 1]), "niah_single_1", "dense", seconds=8.0)
    jsonl = tmp_path / "run.jsonl"
    cc.append_records(jsonl, dense[:2])
    cc.append_records(jsonl, dense[2:])
    assert [json.loads(x) for x in jsonl.read_text().splitlines()] == dense
    w = ResultWriter(cc.BENCH, {"num_samples": 4}, out_dir=tmp_path, run_id="run")
    w.add(cc.result_rows({"dense": dense}, IDENT))
    df = pd.read_csv(w.write())
    assert list(df["metric"]) == ["score", "s_per_sample"]
    assert df.loc[0, ["bench", "task", "seq_len", "method", "value", "n"]].tolist() == \
        ["lm-eval", "niah_single_1", 4096, "dense", 75.0, 4]
    assert df.loc[0, "lo"] < 75.0 < df.loc[0, "hi"]
    assert df["git_sha"].notna().all() and json.loads(df.loc[0, "config"]) == {"num_samples": 4}
    assert (df["harness"] == "lm-eval 0.4.13").all() and (df["template"] == "chat").all()


@pytest.mark.parametrize("remaining,chunk,rate,left,want", [
    (50, 10, None, 1000.0, 1),       # first call: one sample, to time the model
    (49, 10, 30.0, 1000.0, 10),      # plenty of time: a full chunk
    (49, 10, 30.0, 200.0, 6),        # shrunk to what fits
    (49, 10, 30.0, 20.0, 0),         # not even one: stop
    (3, 10, 30.0, 1000.0, 3),        # the last few
    (0, 10, 30.0, 1000.0, 0),        # done
], ids=["first-timing-sample", "full-chunk", "shrunk-to-budget", "budget-spent", "tail", "done"])
def test_next_chunk_respects_the_budget(cc, remaining, chunk, rate, left, want):
    assert cc.next_chunk(remaining, chunk, rate, left) == want


@pytest.mark.parametrize("argv,flag", [
    (["-n", "0"], "-n"),
    (["--tasks", "niah_single_9"], "--tasks"),
    (["--tau", "1.5"], "--tau"),
    (["--seq-len", "256"], "--seq-len"),
    (["--budget-s", "0"], "--budget-s"),
    (["--methods", ","], "--methods"),
], ids=["zero-samples", "unknown-task", "tau-out-of-range", "too-short", "no-budget", "no-method"])
def test_bad_flags_exit_2_naming_the_flag(cc, capsys, argv, flag):
    assert cc.main([*argv, "--dry-run"]) == 2
    assert flag in capsys.readouterr().err


def test_task_sets_expand_and_essay_tasks_are_known(cc):
    assert cc.parse_tasks("offline") == ("niah_single_1", "niah_multikey_2", "niah_multikey_3")
    assert set(cc.parse_tasks("all")) == set(cc.OFFLINE_TASKS) | set(cc.ESSAY_TASKS) and len(cc.parse_tasks("all")) == 8
    assert cc.parse_tasks("niah_single_1, niah_single_1,niah_single_2") == ("niah_single_1", "niah_single_2")
