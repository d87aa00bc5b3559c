"""Needle-in-a-haystack sweep: needle placement, budget, depth parsing, one tidy row per cell."""
import pytest

from tasks.ruler.generate import Generator, GenConfig, count_tokens, prompt_of
from tasks.ruler.tasks import SWEEP_NEEDLE, sweep_spec
from tasks.ruler.toy_tokenizer import build_tokenizer
from tsa_bench.commands.niah import parse_depths


@pytest.fixture(scope="module")
def gen(tmp_path_factory):
    return Generator(build_tokenizer(), GenConfig(data="generated", words="builtin"),
                     cache_dir=tmp_path_factory.mktemp("n"), log=lambda m: None)


@pytest.mark.parametrize("depth", [0.0, 50.0, 100.0], ids=["d0", "d50", "d100"])
def test_needle_sits_at_its_depth_and_the_prompt_fits(gen, depth):
    (s,) = gen.samples(sweep_spec(depth), 4096, 1)
    text = s["input"]
    assert text.count(SWEEP_NEEDLE) == 1
    book = text.split("<book> ", 1)[1].split(" </book>", 1)[0]
    pos = book.index(SWEEP_NEEDLE) / max(1, len(book) - len(SWEEP_NEEDLE))
    assert abs(100 * pos - depth) < 3
    n = count_tokens(gen.tok, prompt_of(s))
    assert n == s["length"] and 4096 - 40 <= n + 30 <= 4096


def test_parse_depths():
    assert parse_depths("10")[:3] == [0.0, 11.1111, 22.2222] and parse_depths("10")[-1] == 100.0
    assert parse_depths("0,25,100") == [0.0, 25.0, 100.0]
    with pytest.raises(ValueError, match="percents"):
        parse_depths("50,120")


def test_niah_cli_writes_one_row_per_cell(tmp_path, capsys):
    pytest.importorskip("tsa_bench.hf")
    import pandas as pd

    from tsa_bench.cli import main
    args = ["niah", "--model", "tiny-llama", "--weights", "random", "--tokenizer", "toy", "--device", "cpu",
            "--dtype", "fp32", "--seq-lens", "1k,2k", "--depths", "0,100", "--method", "dense", "--data",
            "generated", "--out-dir", str(tmp_path), "--cache-dir", str(tmp_path / "c"), "--no-progress"]
    assert main(args) == 0
    df = pd.read_csv(capsys.readouterr().out.strip().splitlines()[-1])
    cells = df[df["metric"] == "rouge1_f"]
    assert sorted(zip(cells["seq_len"], cells["depth"])) == [(1024, 0.0), (1024, 100.0), (2048, 0.0), (2048, 100.0)]
    assert (df["weights"] == "random").all()
    assert cells["value"].between(0, 100).all() and cells["data_source"].str.startswith("generated-prose-v1").all()
