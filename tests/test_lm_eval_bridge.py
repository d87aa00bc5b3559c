"""The lm-eval model ``tsa-hf``: registered, loads through our attention, runs a tiny offline task."""
import math
from pathlib import Path

import pytest
import torch

lm_eval = pytest.importorskip("lm_eval")
pytest.importorskip("tsa_bench.hf")

TASK_DIR = Path(__file__).resolve().parent.parent / "tasks" / "ruler" / "lm_eval"


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory):
    """A tiny random Llama and the toy tokenizer, saved like a Hub checkpoint."""
    from transformers import LlamaConfig, LlamaForCausalLM

    from tasks.ruler.toy_tokenizer import build_tokenizer
    tok = build_tokenizer()
    cfg = LlamaConfig(vocab_size=len(tok), hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                      num_attention_heads=2, num_key_value_heads=1, max_position_embeddings=4096,
                      bos_token_id=tok.bos_token_id, eos_token_id=tok.eos_token_id)
    with torch.random.fork_rng():
        torch.manual_seed(0)
        model = LlamaForCausalLM(cfg)
    d = tmp_path_factory.mktemp("tiny")
    model.save_pretrained(d)
    tok.save_pretrained(d)
    return d


def test_model_is_registered_and_splits_tsa_options():
    from lm_eval.api.registry import get_model

    from tsa_bench.lm_eval_bridge import TSAHFLM, split_tsa_args
    assert get_model("tsa-hf") is TSAHFLM
    kw = {"method": "tsa", "tau": "0.01", "window": "16", "pretrained": "x", "batch_size": 1}
    assert split_tsa_args(kw) == {"method": "tsa", "tau": 0.01, "window": 16}
    assert kw == {"pretrained": "x", "batch_size": 1}


def test_tsa_hf_runs_a_tiny_offline_ruler_task(model_dir, tmp_path, monkeypatch):
    monkeypatch.setenv("TSA_BENCH_CACHE", str(tmp_path))
    from lm_eval.tasks import TaskManager

    import tsa_bench.lm_eval_bridge  # noqa: F401  (registers tsa-hf)
    # with an explicit TaskManager, lm-eval does not copy model_args into the task metadata:
    # the tokenizer for the generator is named here (the CLI path does it for you)
    tm = TaskManager(include_path=str(TASK_DIR), metadata={"max_seq_lengths": [1024], "num_samples": 2,
                                                           "data": "generated", "words": "builtin",
                                                           "pretrained": str(model_dir)})
    args = (f"pretrained={model_dir},method=tsa,tau=0.005,window=16,min_keep=64,sparse_layers=1,"
            "impl=naive,dtype=float32,max_length=1200")
    out = lm_eval.simple_evaluate(model="tsa-hf", model_args=args, tasks=["tsa_ruler_niah_single_1"],
                                  task_manager=tm, device="cpu", batch_size=1)
    res = out["results"]["tsa_ruler_niah_single_1"]
    score = res["string_match_all,none"]
    assert 0.0 <= score <= 1.0 and not math.isnan(score)
    assert out["n-samples"]["tsa_ruler_niah_single_1"]["effective"] == 2


def test_tsa_hf_loads_the_plan_from_model_args(model_dir):
    from tsa_bench.hf import tsa_plan
    from tsa_bench.lm_eval_bridge import TSAHFLM
    lm = TSAHFLM(pretrained=str(model_dir), method="tsa", tau=0.02, window=16, min_keep=64, sparse_layers="1",
                 device="cpu", dtype="float32", batch_size=1)
    plan = tsa_plan(lm.model)
    assert plan.method == "tsa" and plan.tsa.tau == 0.02 and plan.tsa.window == 16
    assert plan.sparse_layers == (1,)
    from tsa_bench.hf import last_stats
    with torch.inference_mode():
        lm.model(torch.randint(10, 1000, (1, 300), generator=torch.Generator().manual_seed(0)))
    stats = last_stats(lm.model)
    assert stats[1].dense is False and stats[0].dense is True      # TSA ran in the selected layer only
    with pytest.raises(ValueError, match="only applies to TSA methods"):
        TSAHFLM(pretrained=str(model_dir), method="dense", tau=0.01, device="cpu")


def test_dropped_option_reaches_the_tsa_config_and_is_refused_for_dense():
    """``dropped=local:64`` in model_args becomes TSAConfig.dropped; with a method that runs no
    TSA it is an error (it would silently do nothing)."""
    from tsa_bench.lm_eval_bridge import _tsa_config, split_tsa_args
    kw = {"method": "tsa", "tau": "0.01", "dropped": "local:64", "pretrained": "x"}
    opts = split_tsa_args(kw)
    assert opts["dropped"] == "local:64" and "dropped" not in kw
    assert _tsa_config(opts).dropped == "local:64"
    with pytest.raises(ValueError, match="dropped= only applies to TSA methods"):
        _tsa_config({"method": "dense", "dropped": "local:64"})
