import subprocess
import sys

import pytest

from tsa_bench.cli import build_parser, main

PROBE = """
import torch
def boom(*a, **k):
    raise SystemExit("CUDA was queried at import time")
for name in ("is_available", "init", "device_count", "get_device_properties", "current_device", "get_device_name"):
    setattr(torch.cuda, name, boom)
import tsa_core, tsa_core.scoring.kernel, tsa_core.selection.kernel, tsa_core.gather.kernel
import tsa_core.backends.dense, tsa_bench.cli, tsa_bench.workload
tsa_bench.cli.build_parser()
assert not torch.cuda.is_initialized()
print("ok")
"""


@pytest.mark.parametrize("interpret", ["0", "1"])
def test_import_never_touches_cuda(interpret):
    env = {"TRITON_INTERPRET": interpret, "PATH": "/usr/bin:/bin", "HF_HUB_OFFLINE": "1"}
    res = subprocess.run([sys.executable, "-c", PROBE], capture_output=True, text=True, env=env, timeout=120)
    assert res.returncode == 0 and res.stdout.strip().endswith("ok"), res.stderr[-2000:]


def test_every_command_has_help_with_examples():
    parser = build_parser()
    sub = next(a for a in parser._actions if a.dest == "command")
    assert {"demo", "latency", "figures"} <= set(sub.choices)
    for name, p in sub.choices.items():
        assert p.epilog and "tsa-bench" in p.epilog, name


def test_no_command_prints_help_and_exits_2(capsys):
    assert main([]) == 2
    assert "COMMAND" in capsys.readouterr().out


def test_demo_runs_on_cpu(capsys):
    assert main(["demo", "--synthetic", "--seq-len", "2k", "--heads", "4", "--kv-heads", "2", "--head-dim", "16",
                 "--impl", "naive"]) == 0
    out = capsys.readouterr().out
    assert "kept" in out and "relative L2 error" in out
