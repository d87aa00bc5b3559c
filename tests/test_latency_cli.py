import pandas as pd
import pytest
import torch

from tsa_bench.cli import main
from tsa_bench.results import COLUMNS
from tsa_core import pipeline

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


BATCH2 = ["latency", "--device", "cpu", "--seq-lens", "400", "--batch", "2", "--heads", "2", "--kv-heads", "1",
          "--head-dim", "16", "--min-keep", "128", "--window", "32", "--keep-ratio", "0.5", "--dtype", "fp32",
          "--warmup", "1", "--reps", "1"]


def _select_wrong_in(real, element: int):
    """``real`` selection, except that in batch element ``element``, head 0, the first kept
    prefix token trades places with the first dropped one (both parts re-sorted, so the result
    is still a plausible permutation: sorted kept tokens, the window, sorted dropped tokens)."""
    def select(pooled, keep, seq_len):
        order = real(pooled, keep, seq_len).clone()
        kb = int(keep[element])
        first_dropped = kb + seq_len - pooled.shape[-1]
        head0 = order[element, 0]
        head0[0], head0[first_dropped] = head0[first_dropped].clone(), head0[0].clone()
        head0[:kb] = head0[:kb].sort().values
        head0[first_dropped:] = head0[first_dropped:].sort().values
        return order

    return select


@pytest.mark.parametrize("wrong", [None, 0, 1], ids=["real-selection", "element-0-wrong", "only-element-1-wrong"])
def test_wrong_selection_fails_the_gate(wrong, tmp_path, capsys, monkeypatch):
    """A selection kernel that is wrong in one batch element makes the run exit 1 with
    ``checked=False`` rows, whichever element it is; the real one passes."""
    # The ops the benchmark resolves (the Triton ones under the interpreter) get the broken
    # selection, in the stage-by-stage run and the whole tsa_attention call alike, so those
    # two agree: only the check against the reference selection (its own copy of the naive
    # ops, imported before the patch) can notice.
    if wrong is not None:
        ops = pipeline.resolve_ops("auto", torch.device("cpu"))
        name = "TRITON_OPS" if ops is pipeline.TRITON_OPS else "NAIVE_OPS"
        monkeypatch.setattr(pipeline, name, ops._replace(select=_select_wrong_in(ops.select, wrong)))
    code = main([*BATCH2, "--out-dir", str(tmp_path)])
    df = pd.read_csv(capsys.readouterr().out.strip().splitlines()[-1])
    gate = df[(df.method == "tsa") & (df.stage == "check")].set_index("metric")
    assert gate.loc["pipeline_equals_stages", "checked"]
    assert (df[df.metric == "kept_tokens"].value < 400).all()      # TSA did drop tokens in both elements
    if wrong is None:
        assert code == 0
        assert gate.checked.all() and gate.loc["select_equal", "value"] == 1.0
    else:
        assert code == 1
        assert gate.loc["select_equal", "value"] == 0.0 and not gate.loc["select_equal", "checked"]
        timed = df[(df.method == "tsa") & (df.metric == "latency_ms")]
        assert len(timed) and not timed.checked.any()
