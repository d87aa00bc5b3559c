import pandas as pd
import pytest

from tsa_bench.cli import main
from tsa_bench.results import COLUMNS

TINY = ["latency", "--device", "cpu", "--seq-lens", "700", "--heads", "2", "--kv-heads", "1", "--head-dim", "16",
        "--min-keep", "256", "--window", "32", "--dtype", "fp32", "--warmup", "1", "--reps", "1"]


def test_dry_run_prints_the_sweep(capsys):
    assert main(["latency", "--dry-run", "--tau", "0.005,0.01", "--keep-ratio", "0.5", "--seq-lens", "4k..16k"]) == 0
    out = capsys.readouterr().out
    assert out.count("seq_len=") == 9 and "seq_len=16384" in out and "keep_ratio=0.5" in out


@pytest.mark.parametrize("argv, match", [
    (["--heads", "6", "--kv-heads", "4"], "multiple"),
    (["--seq-lens", "4q"], "bad length"),
    (["--dense", "nope"], "unknown attention backend"),
    (["--tau", "1.5"], "tau"),
    (["--sparse-frac", "2"], "sparse-frac"),
], ids=["heads", "length", "backend", "tau", "frac"])
def test_bad_flags_exit_2(argv, match, capsys):
    assert main(["latency", "--dry-run", *argv]) == 2
    assert match in capsys.readouterr().err


def test_tiny_run_writes_tidy_csv(tmp_path, capsys):
    assert main([*TINY, "--out-dir", str(tmp_path)]) == 0
    path = capsys.readouterr().out.strip().splitlines()[-1]
    df = pd.read_csv(path)
    assert list(df.columns[: len(COLUMNS)]) == COLUMNS
    assert df.git_sha.notna().all() and (df.gpu == "cpu").all()
    lat = df[df.metric == "latency_ms"]
    stages = set(zip(lat.method, lat.stage))
    for stage in ["score", "select", "gather", "attention", "scatter", "total"]:
        assert ("tsa", stage) in stages and ("tsa-torch", stage) in stages
    assert ("dense", "total") in stages
    assert (lat.value > 0).all() and (lat.lo <= lat.value).all() and (lat.value <= lat.hi).all()
    assert df[df.stage == "check"].checked.all()
    for metric in ["sparsity", "kept_tokens", "overhead_frac", "speedup_layer", "speedup_all_layers",
                   "overhead_vs_torch"]:
        assert metric in set(df.metric), metric


def test_capture_from_a_tiny_model(tmp_path, capsys):
    argv = ["latency", "--device", "cpu", "--qkv", "model:tiny-llama", "--weights", "random", "--seq-lens", "400",
            "--min-keep", "128", "--window", "32", "--dtype", "fp32", "--warmup", "1", "--reps", "1",
            "--no-torch-baseline", "--out-dir", str(tmp_path)]
    assert main(argv) == 0
    df = pd.read_csv(capsys.readouterr().out.strip().splitlines()[-1])
    assert (df.model == "model:tiny-llama").all()
    assert df.heads.iloc[0] != 32                   # the model's own shape, not the --shape preset
    assert df[df.stage == "check"].checked.all()


def test_dry_run_with_sparse_methods(capsys):
    argv = ["latency", "--dry-run", "--method", "tsa,flexprefill,flexprefill+tsa", "--seq-lens", "32k",
            "--tau", "0.005,0.01"]
    assert main(argv) == 0
    out = capsys.readouterr().out
    # the method alone does not depend on tau: one case; TSA and the composition: one per tau
    assert out.count("method=flexprefill ") == 1 and out.count("method=flexprefill+tsa") == 2
    assert out.count("method=tsa ") == 2


def test_unknown_or_dense_method_is_a_usage_error(capsys):
    assert main(["latency", "--dry-run", "--method", "sdpa-flash+tsa"]) == 2
    assert "not a sparse method" in capsys.readouterr().err
    assert main(["latency", "--dry-run", "--method", "nope"]) == 2
