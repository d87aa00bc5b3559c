"""Drift profiling and the profile-layers / prefill commands on the tiny preset (CPU)."""
import json
from pathlib import Path

import pandas as pd
import pytest
import torch

pytest.importorskip("transformers")

from tsa_bench.cli import main  # noqa: E402
from tsa_bench.hf import load_model  # noqa: E402
from tsa_bench.hf.layers import measure_drift, select_by_drift  # noqa: E402

TINY = ["--model", "tiny-llama", "--weights", "random", "--dtype", "fp32", "--device", "cpu"]
SMALL_TSA = ["--window", "16", "--min-keep", "16", "--pool-kernel", "3", "--impl", "naive"]


def _last_line(capsys) -> str:
    return capsys.readouterr().out.strip().splitlines()[-1]


def test_select_by_drift_follows_the_rank_rule():
    assert select_by_drift([0.3, 0.1, 0.2, 0.4], 0.5) == (1, 2)
    assert select_by_drift([0.3, 0.1, 0.2, 0.4], 1.0) == (0, 1, 2, 3)
    assert select_by_drift([0.3, 0.1, 0.2, 0.4], 0.25) == (1,)
    assert select_by_drift([0.2, 0.2, 0.1, 0.4], 0.5) == (2,)     # a tie ranks both at 3/4
    with pytest.raises(ValueError, match="delta"):
        select_by_drift([0.1, 0.2], 0.0)


@torch.no_grad()
def test_measure_drift_matches_hidden_states():
    model, _ = load_model("tiny-llama", weights="random", dtype=torch.float32)
    ids = torch.randint(0, 512, (1, 96), generator=torch.Generator().manual_seed(0))
    drift = measure_drift(model, ids, chunk=40)
    hs = model.model(ids, output_hidden_states=True).hidden_states   # the last entry is after the norm
    for i in range(len(drift) - 1):
        a, b = hs[i][0], hs[i + 1][0]
        want = ((b - a).norm(dim=-1) / (a.norm(dim=-1) + 1e-8)).mean().item()
        assert drift[i] == pytest.approx(want, rel=1e-5)
    assert len(drift) == 4 and all(d > 0 for d in drift)


def test_profile_layers_writes_a_valid_list(tmp_path, capsys):
    rc = main(["profile-layers", *TINY, "--seq-len", "128", "--delta", "0.5", "--out-dir", str(tmp_path)])
    assert rc == 0
    csv = Path(_last_line(capsys))
    doc = json.loads((tmp_path / "tiny-llama-random.json").read_text())
    assert len(doc["sparse_layers"]) == 2 and all(0 <= i < 4 for i in doc["sparse_layers"])
    assert doc["sparse_layers"] == list(select_by_drift(doc["drift"], 0.5))
    df = pd.read_csv(csv)
    assert set(df.weights) == {"random"}
    assert sorted(df[(df.metric == "selected") & (df.value == 1)].layer) == doc["sparse_layers"]


def test_prefill_writes_tidy_rows(tmp_path, capsys):
    rc = main(["prefill", *TINY, *SMALL_TSA, "--seq-lens", "256", "--keep-ratio", "0.5", "--runs", "2",
               "--warmup", "0", "--out-dir", str(tmp_path)])
    assert rc == 0
    df = pd.read_csv(_last_line(capsys))
    assert set(df.weights) == {"random"}
    gate = df[df.metric == "gate_tau0_equals_dense"]
    assert gate.value.tolist() == [1] and gate.checked.all()
    tsa = df[df.method == "tsa"].set_index("metric").value
    assert 0.5 < tsa["keep_fraction"] < 0.6            # 0.5 of the 240 prefix tokens + the 16 window
    assert tsa["dense_fallback_layers"] == 0 and tsa["sparse_layers"] == 2
    assert "speedup_vs_dense" in tsa.index
    assert set(df[df.metric == "ttft_mean_s"].method) == {"dense", "tsa"}


def test_prefill_a_method_that_crashes_fails_the_run(tmp_path, capsys, monkeypatch):
    """A method that raises (not an out-of-memory) writes a 'failed' row and exits 1."""
    import tsa_bench.commands.prefill as P
    real = P._time_one
    calls = []

    def crash_second(*a, **k):
        calls.append(1)
        if len(calls) == 2:
            raise RuntimeError("injected kernel failure")
        return real(*a, **k)
    monkeypatch.setattr(P, "_time_one", crash_second)
    rc = main(["prefill", *TINY, *SMALL_TSA, "--seq-lens", "256", "--keep-ratio", "0.5", "--runs", "1",
               "--warmup", "0", "--out-dir", str(tmp_path)])
    assert rc == 1
    df = pd.read_csv(_last_line(capsys))
    assert df[df.metric == "failed"].checked.tolist() == [False]


def test_prefill_reports_short_prompt_fallback(tmp_path, capsys):
    rc = main(["prefill", *TINY, *SMALL_TSA, "--seq-lens", "32", "--runs", "1", "--warmup", "0",
               "--no-check", "--out-dir", str(tmp_path)])
    out = capsys.readouterr().out
    assert rc == 0 and "falls back to dense" in out
    df = pd.read_csv(out.strip().splitlines()[-1])
    assert df[(df.method == "tsa") & (df.metric == "dense_fallback_layers")].value.tolist() == [2]


def test_prefill_dry_run_builds_nothing(tmp_path, capsys):
    rc = main(["prefill", "--model", "llama-3.1-8b", "--weights", "random", "--seq-lens", "8k,128k",
               "--keep-ratio", "0.675", "--dry-run", "--out-dir", str(tmp_path)])
    assert rc == 0
    assert "would time" in capsys.readouterr().out and not list(tmp_path.iterdir())


@pytest.mark.parametrize("argv, message", [
    (["--sparse-layers", "2,4"], "out of range"),
    (["--seq-lens", "0"], "positive"),
    (["--methods", "dense,bogus+tsa"], "unknown attention backend"),
    (["--runs", "0"], "--runs"),
], ids=["layer-out-of-range", "bad-length", "unknown-method", "zero-runs"])
def test_prefill_bad_input_exits_2(argv, message, capsys):
    rc = main(["prefill", *TINY, "--dry-run", *argv])
    assert rc == 2 and message in capsys.readouterr().err


class _WordTokenizer:
    """Whitespace 'tokenizer' standing in for a real one (one id per word)."""

    def __call__(self, text, add_special_tokens=True, return_tensors=None):
        ids = [1] if add_special_tokens else []
        ids += [hash(w) % 1000 + 2 for w in text.split()]
        return {"input_ids": torch.tensor([ids]) if return_tensors == "pt" else ids}


def test_prompt_ids_lengths_and_sources(tmp_path):
    from tsa_bench.hf.prompts import NEEDLE, prompt_ids

    ids, desc = prompt_ids(300, tokenizer=_WordTokenizer(), batch=2)
    assert ids.shape == (2, 300) and "haystack" in desc
    needle = _WordTokenizer()(NEEDLE, add_special_tokens=False)["input_ids"]
    row = ids[0].tolist()
    at = next(i for i in range(len(row)) if row[i:i + len(needle)] == needle)
    assert 0.3 < at / 300 < 0.7                                  # the needle sits near 50% depth
    f = tmp_path / "p.txt"
    f.write_text("one two three")
    ids, desc = prompt_ids(10, tokenizer=_WordTokenizer(), prompt_file=str(f))
    assert ids.shape == (1, 10) and "repeated" in desc
    a, _ = prompt_ids(50, vocab_size=100, seed=1)
    b, _ = prompt_ids(50, vocab_size=100, seed=1)
    assert torch.equal(a, b) and int(a.max()) < 100
    with pytest.raises(ValueError, match="needs a tokenizer"):
        prompt_ids(10, vocab_size=100, prompt_file=str(f))


def test_prefill_runs_every_sparse_method(tmp_path, capsys, monkeypatch):
    """``--methods auto``: every sparse method of the registry, alone and composed with TSA, runs
    inside ``prefill``; the compositions drop tokens in the sparse layers."""
    from tsa_core.backends import available_backends

    # the sparse methods' PyTorch references: under the Triton interpreter one forward takes ~10 s
    monkeypatch.setenv("TRITON_INTERPRET", "0")
    rc = main(["prefill", *TINY, *SMALL_TSA, "--seq-lens", "160", "--keep-ratio", "0.5", "--runs", "1",
               "--warmup", "0", "--no-check", "--methods", "auto", "--out-dir", str(tmp_path)])
    assert rc == 0
    df = pd.read_csv(_last_line(capsys))
    assert "failed" not in set(df.metric)
    sparse = available_backends("cpu", kind="sparse")
    assert {"flexprefill", "minference", "xattention"} <= set(sparse)
    ttft = df[df.metric == "ttft_mean_s"]
    assert set(ttft.method) == {"dense", "tsa", *sparse, *(f"{m}+tsa" for m in sparse)} and ttft.checked.all()
    for m in sparse:
        composed = df[df.method == f"{m}+tsa"].set_index("metric").value
        assert composed["keep_fraction"] < 0.6 and composed["dense_fallback_layers"] == 0, m
        assert "keep_fraction" not in set(df[df.method == m].metric), m        # no TSA in the method alone
