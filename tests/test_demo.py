"""``tsa-bench demo``: the synthetic layer's dropped-row check, the flag split between the two
demos, the ruler command line the model demo runs, its CSV summary, the CPU guard on the TSA
ops, and the GPU commands it prints. No model is loaded here (see test_demo_model.py)."""
import re
import shlex
from pathlib import Path

import pandas as pd
import pytest
import torch

import tsa_core.pipeline as pipeline
from tsa_bench.cli import build_parser, main
from tsa_bench.commands import demo
from tsa_bench.commands import ruler as ruler_cmd
from tsa_bench.provenance import REPO_ROOT

SMALL = ["demo", "--synthetic", "--seq-len", "2k", "--heads", "4", "--kv-heads", "2", "--head-dim", "16",
         "--impl", "naive"]
DROPPED = re.compile(r"dropped \(token, head\) rows: (\d+), not exactly zero: (\d+)")


def test_synthetic_demo_finds_every_dropped_row_zero(capsys):
    assert main(SMALL) == 0
    dropped, nonzero = map(int, DROPPED.search(capsys.readouterr().out).groups())
    assert dropped > 0 and nonzero == 0       # the check looked at rows that TSA dropped


@pytest.mark.parametrize("value", [1.0, float("nan")], ids=["one", "nan"])
def test_synthetic_demo_exits_1_on_a_nonzero_dropped_row(monkeypatch, capsys, value):
    real = pipeline.NAIVE_OPS.decompress

    def leaky(out_c, order, n_kept, seq_len):
        out = real(out_c, order, n_kept, seq_len)
        first_dropped = int(order[0, 0, int(n_kept[0])])           # head 0's first dropped token
        out[0, first_dropped, 0, :] = value
        return out

    monkeypatch.setattr(pipeline, "NAIVE_OPS", pipeline.NAIVE_OPS._replace(decompress=leaky))
    assert main(SMALL) == 1
    captured = capsys.readouterr()
    assert DROPPED.search(captured.out).group(2) == "1"
    assert "FAILED" in captured.err


def test_kept_rows_follow_the_selection_not_the_output(gen):
    """A kept row whose attention output is exactly zero (all-zero V) still counts as kept."""
    from tsa_core import TSAConfig, tsa_attention

    cfg = TSAConfig(tau=0.005, keep_ratio=0.5, window=16, min_keep=32)
    q, k = (torch.randn(1, 2, 256, 8, generator=gen) for _ in range(2))
    v = torch.zeros(1, 2, 256, 8)
    out, stats = tsa_attention(q, k, v, cfg, impl="naive")
    kept = demo.kept_rows(q, k, cfg, "naive", 8 ** -0.5, stats)
    assert not stats.dense and not out.any()
    assert kept.sum(dim=1).tolist() == [[stats.kept[0]] * 2]      # per head: the kept count


def test_synthetic_flag_without_synthetic_is_a_usage_error(monkeypatch, capsys):
    monkeypatch.setattr(demo, "run_model_demo", lambda args: pytest.fail("the model demo ran"))
    assert main(["demo", "--heads", "4"]) == 2
    assert "--heads" in capsys.readouterr().err


def test_model_flag_with_synthetic_is_a_usage_error(capsys):
    assert main(["demo", "--synthetic", "-n", "3"]) == 2
    assert "-n" in capsys.readouterr().err


def _demo_args(*extra):
    return build_parser().parse_args(["demo", *extra])


@pytest.mark.parametrize("extra, tasks, lens, n", [
    ((), demo.TASKS, demo.SEQ_LENS, demo.NUM_SAMPLES),
    (("--quick",), "niah_single_1", "2k", 1),
    (("--quick", "--seq-lens", "4k", "-n", "2"), "niah_single_1", "4k", 2),
], ids=["defaults", "quick", "quick-with-flags"])
def test_ruler_argv_parses_with_the_real_parser(tmp_path, extra, tasks, lens, n):
    r = build_parser().parse_args(demo.ruler_argv(_demo_args(*extra), tmp_path))
    assert r.command == "ruler" and r._run.__module__ == "tsa_bench.commands.ruler"
    assert (r.model, r.method, r.device, r.dtype) == ("smollm2-135m", "dense,tsa", "cpu", "fp32")
    assert ruler_cmd.parse_taus(r.tau) == [0.005]
    assert (r.tasks, r.seq_lens, r.num_samples) == (tasks, lens, n)
    assert (r.data, r.words, r.out_dir) == ("generated", "builtin", str(tmp_path))


def test_the_default_tasks_are_the_four_niah_tasks():
    from tasks.ruler.tasks import resolve_tasks
    assert resolve_tasks(demo.TASKS) == ["niah_single_1", "niah_single_2", "niah_single_3", "niah_multikey_1"]


def test_pytorch_tsa_ops_on_cpu_even_under_the_interpreter(monkeypatch):
    monkeypatch.setenv("TRITON_INTERPRET", "1")
    assert pipeline.resolve_ops("auto", torch.device("cpu")) is pipeline.TRITON_OPS
    with demo.pytorch_tsa_ops("cpu"):
        assert pipeline.resolve_ops("auto", torch.device("cpu")) is pipeline.NAIVE_OPS
    assert pipeline.resolve_ops("auto", torch.device("cpu")) is pipeline.TRITON_OPS   # restored


def _rows(method, metric, seq_len, value, layer=None, n=1):
    return dict(method=method, metric=metric, seq_len=seq_len, layer=layer, task="all", value=value, n=n)


def test_summary_takes_the_mean_over_layers_not_one_layer(tmp_path):
    rows = [_rows("tsa", "score_mean_tasks", 2048, 75.0, n=4),
            _rows("tsa", "score", 2048, 50.0) | {"task": "niah_single_1"},
            _rows("tsa", "keep_fraction", 2048, 0.5, layer=15), _rows("tsa", "keep_fraction", 2048, 0.7, layer=16),
            _rows("tsa", "keep_fraction", 2048, 0.6, n=2),
            _rows("tsa", "attn_sparsity", 2048, 0.4, layer=15), _rows("tsa", "attn_sparsity", 2048, 0.3, n=2),
            _rows("tsa", "model_s_per_sample", 2048, 5.0, n=4), _rows("tsa", "score_mean_lengths", None, 75.0),
            _rows("dense", "score_mean_tasks", 2048, 50.0, n=4),
            _rows("dense", "model_s_per_sample", 2048, 6.0, n=4)]
    path = tmp_path / "ruler-x.csv"
    pd.DataFrame(rows).to_csv(path, index=False)
    s = demo.summarize([path])
    assert list(s) == ["tsa", "dense"]
    tsa = s["tsa"].loc[2048]
    assert (tsa.score, tsa.keep_fraction, tsa.attn_sparsity, tsa.s_per_sample) == (75.0, 0.6, 0.3, 5.0)
    assert (tsa.samples, tsa.layers) == (4, 2)
    assert pd.isna(s["dense"].loc[2048].keep_fraction) and s["dense"].loc[2048].score == 50.0
    table = demo.format_table("tsa", s["tsa"], 0.005)
    assert "2 TSA layers" in table and "0.600" in table and "30.0%" in table


def _gpu_commands():
    return [pytest.param(cmd, id=f"gpu-{i}") for i, (cmd, _) in enumerate(demo.GPU_COMMANDS)]


@pytest.mark.parametrize("cmd", _gpu_commands())
def test_every_printed_gpu_command_parses(cmd):
    """Each command's flags exist: tsa-bench's parser, torchrun's, or the Makefile's variables."""
    for part in cmd.split(" && "):
        words = shlex.split(part)
        if words[0] == "tsa-bench":
            build_parser().parse_args(words[1:])          # SystemExit on an unknown flag
        elif words[0] == "torchrun":
            from torch.distributed.run import get_args_parser
            t = get_args_parser().parse_args(words[1:])
            assert t.module and t.training_script == "tsa_bench"
            build_parser().parse_args(t.training_script_args)
        elif words[0] == "make":
            makefile = Path(REPO_ROOT, "Makefile").read_text()
            target = words[1]
            line = next((ln for ln in makefile.splitlines() if ln.startswith(f"{target}:")), None)
            assert line is not None, f"no make target {target!r}"
            for var in (w.split("=")[0] for w in words[2:]):
                assert f"$({var})" in line, f"make {target} does not use {var}"
        else:
            pytest.fail(f"unknown command {words[0]!r}")
