from pathlib import Path

from tsa_bench.cli import main
from test_latency_cli import TINY


def test_figures_from_a_tiny_run(tmp_path, capsys):
    assert main([*TINY, "--keep-ratio", "0.675", "--out-dir", str(tmp_path / "lat")]) == 0
    csv = capsys.readouterr().out.strip().splitlines()[-1]
    assert main(["figures", "--latency", csv, "--out-dir", str(tmp_path / "fig")]) == 0
    captured = capsys.readouterr()
    assert f"read {csv}" in captured.err
    for name in ("latency_speedup.png", "latency_overhead.png"):
        assert (tmp_path / "fig" / name).stat().st_size > 1000
    assert Path(captured.out.strip().splitlines()[-1]).exists()


def test_figures_without_csvs_is_a_usage_error(tmp_path, capsys):
    assert main(["figures", "--latency", "--out-dir", str(tmp_path)]) == 2
