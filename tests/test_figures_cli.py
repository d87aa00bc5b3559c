from pathlib import Path

from tsa_bench.cli import main
from test_latency_cli import TINY

FIXTURES = Path(__file__).resolve().parent / "fixtures" / "accuracy"
ACCURACY_PNGS = ("accuracy_score_vs_speedup.png", "accuracy_score_vs_sparsity.png")


def test_figures_from_a_tiny_run(tmp_path, capsys):
    assert main([*TINY, "--keep-ratio", "0.675", "--out-dir", str(tmp_path / "lat")]) == 0
    csv = capsys.readouterr().out.strip().splitlines()[-1]
    assert main(["figures", "--latency", csv, "--accuracy", "--out-dir", str(tmp_path / "fig")]) == 0
    captured = capsys.readouterr()
    assert f"read {csv}" in captured.err
    assert "no accuracy CSVs given: accuracy figures skipped" in captured.err
    for name in ("latency_speedup.png", "latency_overhead.png"):
        assert (tmp_path / "fig" / name).stat().st_size > 1000
    assert not any((tmp_path / "fig" / name).exists() for name in ACCURACY_PNGS)
    assert Path(captured.out.strip().splitlines()[-1]).exists()


def test_figures_draws_the_accuracy_figures_from_the_fixtures(tmp_path, capsys):
    """Every CSV of the folder is read and named; the two PNGs are exactly what the analysis
    functions draw from those CSVs; no latency CSVs is said, not an error."""
    from tsa_bench.analysis.figures import score_vs_sparsity, score_vs_speedup
    from tsa_bench.analysis.tables import find_csvs, read_csvs

    assert main(["figures", "--latency", "--accuracy", str(FIXTURES), "--out-dir", str(tmp_path / "fig")]) == 0
    captured = capsys.readouterr()
    csvs = find_csvs(FIXTURES)
    assert len(csvs) == 3 and all(f"read {p}" in captured.err for p in csvs)
    assert "no latency CSVs given: latency figures skipped" in captured.err
    sens = "accuracy_sensitivity_smollm2-135m_4k.png"         # the fixture's sensitivity rows
    assert captured.out.split() == [str(tmp_path / "fig" / name) for name in (*ACCURACY_PNGS, sens)]
    df = read_csvs(csvs)
    from tsa_bench.analysis.figures import layer_sensitivity
    from tsa_bench.analysis.sensitivity import table_from_rows
    table, rho = table_from_rows(df, model="smollm2-135m", seq_len=4096)
    want = [score_vs_speedup(df, tmp_path / "want" / ACCURACY_PNGS[0]).path,
            score_vs_sparsity(df, tmp_path / "want" / ACCURACY_PNGS[1]).path,
            layer_sensitivity(table, tmp_path / "want" / sens, rho=rho,
                              title="smollm2-135m, 4k: TSA in one layer at a time (paired 95% bootstrap)").path]
    for name, ref in zip((*ACCURACY_PNGS, sens), want):
        assert (tmp_path / "fig" / name).read_bytes() == ref.read_bytes()


def test_figures_without_csvs_is_a_usage_error(tmp_path, capsys):
    assert main(["figures", "--latency", "--accuracy", "--out-dir", str(tmp_path)]) == 2
    assert "no latency CSVs and no accuracy CSVs" in capsys.readouterr().err


def test_figures_names_a_missing_accuracy_path(tmp_path, capsys):
    assert main(["figures", "--latency", "--accuracy", "no/such/folder", "--out-dir", str(tmp_path)]) == 2
    assert "--accuracy: no such file or folder: no/such/folder" in capsys.readouterr().err
