"""RULER runner: scoring rows, resume after an interruption, CLI usage errors, the real model path."""
import json

import pytest
import torch

from tasks.ruler.generate import Generator, GenConfig
from tasks.ruler.toy_tokenizer import build_tokenizer
from tsa_bench.commands.ruler import PredictionLog, evaluate_samples, greedy_generate, score_rows

TASKS = ("niah_single_1", "vt", "qa_1")


@pytest.fixture(scope="module")
def tok():
    return build_tokenizer()


@pytest.fixture(scope="module")
def model(tok):
    from transformers import LlamaConfig, LlamaForCausalLM
    cfg = LlamaConfig(vocab_size=len(tok), hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                      num_attention_heads=2, num_key_value_heads=1, max_position_embeddings=4096,
                      bos_token_id=tok.bos_token_id, eos_token_id=tok.eos_token_id, pad_token_id=tok.pad_token_id)
    with torch.random.fork_rng():
        torch.manual_seed(0)
        m = LlamaForCausalLM(cfg)
    m.config._attn_implementation = "sdpa"
    return m.eval()


@pytest.fixture(scope="module")
def samples(tok, tmp_path_factory):
    gen = Generator(tok, GenConfig(data="generated", words="builtin"), cache_dir=tmp_path_factory.mktemp("c"),
                    log=lambda m: None)
    data = gen.generate(list(TASKS), [1024], 2)
    return [s for t in TASKS for s in data[(t, 1024)]]


class Interrupt(Exception):
    pass


def _counting(limit=None):
    calls = []

    def gen(model, ids, n, device):
        if limit is not None and len(calls) >= limit:
            raise Interrupt()
        calls.append(len(ids))
        return greedy_generate(model, ids, n, device)
    return gen, calls


def test_interrupted_run_resumes_without_loss_or_repeats(model, tok, samples, tmp_path):
    path = tmp_path / "preds.jsonl"
    gen, calls = _counting(limit=3)
    log = PredictionLog(path)
    with pytest.raises(Interrupt):
        evaluate_samples(model, tok, samples, log, progress=False, generate_fn=gen)
    log.close()
    assert len(calls) == 3 and len(path.read_text().splitlines()) == 3
    with open(path, "a") as f:                       # a torn line, as if killed mid-write
        f.write('{"id": "vt-1024-0000')
    gen2, calls2 = _counting()
    log2 = PredictionLog(path)
    assert len(log2.done) == 3
    timing = evaluate_samples(model, tok, samples, log2, progress=False, generate_fn=gen2)
    log2.close()
    assert len(calls2) == len(samples) - 3 and timing.samples == len(samples) - 3
    lines = [json.loads(x) for x in path.read_text().splitlines()]
    assert sorted(r["id"] for r in lines) == sorted(s["id"] for s in samples)     # each exactly once
    # a run that was never interrupted gives the same predictions
    ref_log = PredictionLog(tmp_path / "ref.jsonl")
    evaluate_samples(model, tok, samples, ref_log, progress=False)
    ref_log.close()
    ref = {r["id"]: r["pred"] for r in map(json.loads, (tmp_path / "ref.jsonl").read_text().splitlines())}
    assert {r["id"]: r["pred"] for r in lines} == ref
    # and a third run has nothing left to do
    gen3, calls3 = _counting()
    evaluate_samples(model, tok, samples, PredictionLog(path), progress=False, generate_fn=gen3)
    assert calls3 == []


def test_predictions_record_tokens_and_scores(model, tok, samples, tmp_path):
    log = PredictionLog(tmp_path / "p.jsonl")
    evaluate_samples(model, tok, samples[:2], log, progress=False)
    for s in samples[:2]:
        r = log.done[s["id"]]
        assert r["input_tokens"] == s["length"]
        assert 1 <= r["new_tokens"] <= s["tokens_to_generate"]
        assert 0.0 <= r["score"] <= 1.0 and r["outputs"] == s["outputs"]


def test_score_rows_give_task_rows_length_means_and_overall_mean():
    recs = [{"task": t, "max_length": L, "score": sc, "metric": "string_match_all", "pred": "x", "source": "s"}
            for t, L, sc in [("a", 4096, 1.0), ("a", 4096, 0.5), ("b", 4096, 0.0), ("a", 8192, 1.0), ("b", 8192, 1.0)]]
    rows, table = score_rows(recs, ["a", "b"], [4096, 8192], dict(method="tsa"), {})
    by = {(r["task"], r.get("seq_len"), r["metric"]): r for r in rows}
    assert by[("a", 4096, "score")]["value"] == 75.0 and by[("a", 4096, "score")]["n"] == 2
    assert by[("all", 4096, "score_mean_tasks")]["value"] == 37.5
    assert by[("all", 8192, "score_mean_tasks")]["value"] == 100.0
    assert by[("all", None, "score_mean_lengths")]["value"] == 68.75
    assert table.loc["mean", "avg"] == 68.75


def test_cli_without_model_says_model_is_required(capsys):
    from tsa_bench.cli import main
    assert main(["ruler", "--seq-lens", "128k", "--method", "tsa", "--tau", "0.005", "-n", "32"]) == 2
    assert "MODEL is required" in capsys.readouterr().err


def test_cli_bad_input_is_a_usage_error(capsys):
    from tsa_bench.cli import main
    assert main(["ruler", "--model", "m", "--tasks", "niah_single_9", "--dry-run"]) == 2
    assert "unknown RULER task" in capsys.readouterr().err
    assert main(["ruler", "--model", "m", "-n", "0", "--dry-run"]) == 2


def test_cli_dry_run_prints_the_sweep(capsys):
    from tsa_bench.cli import main
    assert main(["ruler", "--model", "m", "--seq-lens", "4k..128k", "--tasks", "niah", "--dry-run",
                 "--device", "cpu"]) == 0
    out = capsys.readouterr().out
    assert "4k, 8k, 16k, 32k, 64k, 128k" in out and "-> 1536 samples" in out


def test_cli_end_to_end_with_the_transformers_integration(tmp_path, capsys):
    pytest.importorskip("tsa_bench.hf")
    from tsa_bench.cli import main
    args = ["ruler", "--model", "tiny-llama", "--weights", "random", "--tokenizer", "toy", "--device", "cpu",
            "--dtype", "fp32", "--seq-lens", "2k", "-n", "1", "--tasks", "vt", "--method", "tsa",
            "--out-dir", str(tmp_path / "out"), "--cache-dir", str(tmp_path / "cache"), "--no-progress",
            "--data", "generated"]
    assert main(args) == 0
    out = capsys.readouterr().out.strip().splitlines()
    import pandas as pd
    df = pd.read_csv(out[-1])
    assert set(df["metric"]) >= {"score", "score_mean_tasks", "runner_overhead_pct", "model_s_per_sample"}
    assert (df.loc[df["metric"] == "score", "task"] == "vt").all()
    assert df["git_sha"].notna().all() and df["config"].str.contains("run_key").all()
    assert (df["weights"] == "random").all()                  # every row says the weights were random
    raw = (tmp_path / "out").glob("*.csv").__next__().read_text()
    assert ",2048," in raw and ",2048.0," not in raw         # lengths stay integers next to mean rows
    assert main(args) == 0          # rerun: resumes, nothing to run, same scores
    assert "1 already scored" in capsys.readouterr().err


def test_greedy_generate_with_a_list_of_eos_ids_and_no_pad(model):
    """Llama-3.1's generation config has eos_token_id = [128001, 128008, 128009] and no pad id:
    a list is not a valid pad id, so the first EOS id is used (this broke the 8B GPU run)."""
    import copy
    m = copy.deepcopy(model)
    eos = m.generation_config.eos_token_id
    m.generation_config.eos_token_id = [eos, 5]
    m.generation_config.pad_token_id = None
    from tsa_bench.commands.ruler import greedy_config
    gc = greedy_config(m, 3)
    assert gc.pad_token_id == eos and gc.eos_token_id == [eos, 5]
    new, secs = greedy_generate(m, [7, 8, 9, 10], 3, torch.device("cpu"))
    assert 1 <= len(new) <= 3 and secs >= 0
