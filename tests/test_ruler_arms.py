"""``ruler --tau a,b --sparse-layers 'x;y'``: several configurations on the same samples, one model load."""
import json
from types import SimpleNamespace

import pandas as pd
import pytest

from tsa_bench.cli import UsageError, main
from tsa_bench.commands import ruler as R


@pytest.mark.parametrize("value, want", [
    (None, [None]),
    ("0.005", [0.005]),
    (0.01, [0.01]),
    ("0.002, 0.005,0.002", [0.002, 0.005]),
    ("0", [0.0]),
], ids=["none", "one", "float", "list-dedup", "zero"])
def test_parse_taus(value, want):
    assert R.parse_taus(value) == want


@pytest.mark.parametrize("value, msg", [
    ("1.0", "[0, 1)"), ("-0.1", "[0, 1)"), ("0.1,x", "'x' is not a number"), (" , ", "empty"),
], ids=["one", "negative", "not-a-number", "empty"])
def test_parse_taus_rejects(value, msg):
    with pytest.raises(UsageError, match=f"--tau.*{msg}" if msg != "[0, 1)" else r"--tau must be in \[0, 1\)"):
        R.parse_taus(value)


def test_parse_layer_sets_labels_and_names():
    assert R.parse_layer_sets(None) == [("", None)]
    assert R.parse_layer_sets("15-29") == [("15-29", "15-29")]
    assert R.parse_layer_sets("half; drift=results/layers/m-drift.json ;/x/y/prof.json;l5=5") == [
        ("half", "half"), ("drift", "results/layers/m-drift.json"), ("prof", "/x/y/prof.json"), ("l5", "5")]
    for bad, msg in (("=5", "empty name"), ("a=", "no layer spec"), ("half;half", "named 'half'"), (";", "empty")):
        with pytest.raises(UsageError, match=msg):
            R.parse_layer_sets(bad)


def _args(method, tau=None, layers=None):
    a = SimpleNamespace(method=method, tau=tau, sparse_layers=layers, model=None)
    R.check_common(a, several=True)
    return a


def test_arms_cross_taus_and_layer_sets_for_tsa_methods_only():
    a = _args("dense,tsa,xattention,xattention+tsa", "0.002,0.01", "half;a=3,4")
    arms = R.arms_of(a)
    assert [x.label() for x in arms] == [
        "dense",
        "tsa tau=0.002 half", "tsa tau=0.01 half", "tsa tau=0.002 a", "tsa tau=0.01 a",
        "xattention",
        "xattention+tsa tau=0.002 half", "xattention+tsa tau=0.01 half",
        "xattention+tsa tau=0.002 a", "xattention+tsa tau=0.01 a"]
    assert arms[3] == R.Arm("tsa", 0.002, "3,4", "a")
    # the first of each list stays on args for single-value code paths
    assert (a.tau, a.sparse_layers, a.layers_label) == (0.002, "half", "half")


def test_method_qualifiers_pick_one_layer_set_or_tau():
    """``tsa@late`` runs only the set named late (every tau), ``x+tsa@drift:0.005`` only that
    set and tau (a tau outside --tau too), an arm named twice runs once, in first-named order."""
    a = _args("dense,tsa@late,flexprefill,flexprefill+tsa@drift:0.005,tsa:0.3,tsa@late",
              "0.02,0.05", "late=11,17;all=5,11,17;drift=17")
    assert [x.label() for x in R.arms_of(a)] == [
        "dense", "tsa tau=0.02 late", "tsa tau=0.05 late", "flexprefill", "flexprefill+tsa tau=0.005 drift",
        "tsa tau=0.3 late", "tsa tau=0.3 all", "tsa tau=0.3 drift"]    # tsa:0.3: that tau in every set
    arms = R.arms_of(a)
    assert arms[4] == R.Arm("flexprefill+tsa", 0.005, "17", "drift")
    assert R.methods_of(a) == ["dense", "tsa", "flexprefill", "flexprefill+tsa"]
    # method names are case-free, set names are not (as in --sparse-layers)
    mixed = _args("TSA@Late", "0.02", "Late=11,17;late=5")
    assert [x.label() for x in R.arms_of(mixed)] == ["tsa tau=0.02 Late"]
    # the plain form is unchanged: the whole cross product
    plain = _args("dense,tsa", "0.02,0.05", "late=11,17;drift=17")
    assert len(R.arms_of(plain)) == 5


@pytest.mark.parametrize("method, msg", [
    ("dense@late", "only a TSA method"), ("xattention:0.1", "only a TSA method"),
    ("tsa@nope", "no layer set named 'nope'"), ("tsa:2", "each tau must be in"), ("tsa:x", "is not a number"),
    ("tsa:", "empty"), ("@late", "names no method"), (" , ", "--method is empty"),
], ids=["dense-set", "backend-tau", "unknown-set", "tau-range", "tau-nan", "tau-empty", "no-method", "empty"])
def test_method_qualifiers_refuse_bad_items(method, msg):
    a = _args("dense", None, "late=11,17")
    a.method = method
    with pytest.raises(UsageError, match=msg):
        R.arms_of(a)


def test_a_dropped_row_variant_is_its_own_setting():
    # study pairs arms by setting: the --dropped variant must not share the plain arm's label
    a = _args("dense,tsa", "0.005", "drift=3,4")
    a.dropped = "local:64"
    labels = [x.label() for x in R.arms_of(a)]
    assert labels == ["dense", "tsa tau=0.005 drift dropped=local:64"]
    a.dropped = "zero"
    assert [x.label() for x in R.arms_of(a)] == ["dense", "tsa tau=0.005 drift"]


def test_single_value_commands_refuse_lists():
    a = SimpleNamespace(method="tsa", tau="0.1,0.2", sparse_layers=None)
    with pytest.raises(UsageError, match="--tau: this command takes one value"):
        R.check_common(a)
    a = SimpleNamespace(method="tsa", tau=None, sparse_layers="half;1,2")
    with pytest.raises(UsageError, match="--sparse-layers: this command takes one value"):
        R.check_common(a)


def test_cli_runs_every_arm_on_the_same_samples(tmp_path, capsys):
    """Two taus x two layer sets + dense: five prediction files over the same ids, each CSV
    naming its setting and layer set, each plan holding its own layers and tau; a rerun
    resumes every arm."""
    pytest.importorskip("tsa_bench.hf")
    out = tmp_path / "out"
    args = ["ruler", "--model", "tiny-llama", "--weights", "random", "--tokenizer", "toy", "--device", "cpu",
            "--dtype", "fp32", "--seq-lens", "2k", "-n", "1", "--tasks", "vt", "--method", "dense,tsa",
            "--tau", "0.3,0.6", "--sparse-layers", "first=0;last=1",
            "--out-dir", str(out), "--cache-dir", str(tmp_path / "cache"), "--no-progress",
            "--data", "generated"]
    assert main(args) == 0
    csvs = sorted(out.glob("*.csv"))
    assert len(csvs) == 5
    df = pd.concat([pd.read_csv(p) for p in csvs], ignore_index=True)
    score = df[df.metric == "score"]
    assert sorted(score.setting) == sorted(["dense", "tsa tau=0.3 first", "tsa tau=0.6 first",
                                            "tsa tau=0.3 last", "tsa tau=0.6 last"])
    by = {r.setting: r for r in score.itertuples()}
    assert by["tsa tau=0.6 last"].layers == "last" and by["tsa tau=0.6 last"].tau == 0.6
    assert pd.isna(by["dense"].tau)
    for p in csvs:
        cfg = json.loads(pd.read_csv(p).config.iloc[0])
        r = pd.read_csv(p).iloc[0]
        if r.setting != "dense":
            want = [0] if r.layers == "first" else [1]
            assert cfg["plan"]["sparse_layers"] == want and cfg["plan"]["tsa"]["tau"] == r.tau
    preds = sorted((out / "preds").glob("*.jsonl"))
    assert len(preds) == 5
    ids = [sorted(json.loads(line)["id"] for line in p.read_text().splitlines()) for p in preds]
    assert all(i == ids[0] for i in ids)
    capsys.readouterr()
    assert main(args) == 0
    assert capsys.readouterr().err.count("1 already scored") == 5
    # an arm picked by a qualifier is the same run (same key): it resumes too, and runs alone
    pick = args[:args.index("--method") + 1] + ["dense,tsa@last:0.6"] + args[args.index("--method") + 2:]
    assert main(pick) == 0
    err = capsys.readouterr().err
    assert err.count("1 already scored") == 2 and "== [2/2] tsa tau=0.6 last" in err
    assert len(list((out / "preds").glob("*.jsonl"))) == 5


def test_keep_models_loads_once_across_runs(tmp_path, monkeypatch, capsys):
    """Inside ``keep_models()`` a second run with the same model reuses the loaded one (and a
    different tau still takes effect); outside it every run loads again."""
    hf = pytest.importorskip("tsa_bench.hf")
    calls = []
    real = hf.load_model

    def counting(*a, **k):
        calls.append(a[0])
        return real(*a, **k)

    monkeypatch.setattr(hf, "load_model", counting)
    base = ["ruler", "--model", "tiny-llama", "--weights", "random", "--tokenizer", "toy", "--device", "cpu",
            "--dtype", "fp32", "--seq-lens", "2k", "-n", "1", "--tasks", "vt", "--method", "tsa",
            "--sparse-layers", "1", "--out-dir", str(tmp_path / "out"), "--cache-dir", str(tmp_path / "cache"),
            "--no-progress", "--data", "generated"]
    with R.keep_models():
        assert main(base + ["--tau", "0.3"]) == 0
        assert main(base + ["--tau", "0.6"]) == 0
    assert len(calls) == 1
    taus = sorted(json.loads(pd.read_csv(p).config.iloc[0])["plan"]["tsa"]["tau"]
                  for p in (tmp_path / "out").glob("*.csv"))
    assert taus == [0.3, 0.6]
    assert main(base + ["--tau", "0.6"]) == 0
    assert len(calls) == 2


def test_weights_fingerprint_follows_content_for_small_files(tmp_path, monkeypatch):
    """A GGUF joined again elsewhere (new path, new mtime) keeps its run key; other bytes change it;
    above the content-hash limit the path and mtime count (no multi-GB hashing)."""
    a, b, c = tmp_path / "a" / "m.gguf", tmp_path / "b" / "m.gguf", tmp_path / "c" / "m.gguf"
    for p, data in ((a, b"GGUF" + b"x" * 100), (b, b"GGUF" + b"x" * 100), (c, b"GGUF" + b"y" * 100)):
        p.parent.mkdir()
        p.write_bytes(data)
    fa, fb, fc = (R.weights_fingerprint(str(p)) for p in (a, b, c))
    assert fa == fb and fa != fc
    assert R.weights_fingerprint(str(a.parent)) == R.weights_fingerprint(str(b.parent))
    monkeypatch.setattr(R, "_HASH_CONTENT_UP_TO", 10)
    assert R.weights_fingerprint(str(a)) != R.weights_fingerprint(str(b))


def test_dropped_flag_reaches_the_plan_and_bad_values_are_usage_errors(tmp_path, capsys):
    """``--dropped local:8`` is in the run's plan (so in its key); ``--dropped local:0`` is refused."""
    pytest.importorskip("tsa_bench.hf")
    base = ["ruler", "--model", "tiny-llama", "--weights", "random", "--tokenizer", "toy", "--device", "cpu",
            "--dtype", "fp32", "--seq-lens", "2k", "-n", "1", "--tasks", "vt", "--method", "tsa", "--tau", "0.3",
            "--out-dir", str(tmp_path / "out"), "--cache-dir", str(tmp_path / "cache"), "--no-progress",
            "--data", "generated"]
    assert main(base + ["--dropped", "local:0"]) == 2
    assert "--dropped" in capsys.readouterr().err
    assert main(base + ["--dropped", "local:8"]) == 0
    cfg = json.loads(pd.read_csv(next((tmp_path / "out").glob("*.csv"))).config.iloc[0])
    assert cfg["plan"]["tsa"]["dropped"] == "local:8"


def test_weights_fingerprint_of_a_file_ignores_its_neighbours(tmp_path):
    """A GGUF's loaded config names its folder; other models in that folder must not change the
    key (they did: the same Gemma GGUF beside or without SmolLM2's gave two run keys)."""
    from types import SimpleNamespace
    d = tmp_path / "models"
    d.mkdir()
    g = d / "gemma.gguf"
    g.write_bytes(b"GGUF" + b"g" * 64)
    model = SimpleNamespace(config=SimpleNamespace(_name_or_path=str(d)))
    alone = R.weights_fingerprint(str(g), model)
    (d / "smol.gguf").write_bytes(b"GGUF" + b"s" * 64)
    assert R.weights_fingerprint(str(g), model) == alone
    assert R.weights_fingerprint(str(d), model) != alone        # a folder argument still counts its files


@pytest.mark.parametrize("n", [32630, 4096, 4001, 40, 3], ids=["32k-prompt", "multiple-of-16", "odd", "short", "tiny"])
def test_warm_variants_cover_a_multiple_of_16(n):
    """The warm-up lengths include a multiple of 16 (Triton's divisibility specialisation) and
    several other residues, all shorter than the prompt and non-empty."""
    ids = list(range(n))
    lens = [len(v) for v in R.warm_variants(ids)]
    assert all(1 <= L < n for L in lens)
    if n > 16:
        assert any(L % 16 == 0 for L in lens) and len({L % 16 for L in lens}) >= 5


def test_refill_run_has_its_own_key_and_the_same_predictions(tmp_path, capsys):
    """``--refill`` (continuous batching) writes a separate predictions file (engine in the key)
    whose predictions equal the plain batched engine's, sample for sample."""
    pytest.importorskip("tsa_bench.hf")
    base = ["ruler", "--model", "tiny-llama", "--weights", "random", "--tokenizer", "toy", "--device", "cpu",
            "--dtype", "fp32", "--seq-lens", "2k", "-n", "3", "--tasks", "vt,qa_1", "--method", "dense",
            "--batch-size", "2", "--cache-dir", str(tmp_path / "cache"), "--no-progress", "--data", "generated"]
    assert main(base + ["--out-dir", str(tmp_path / "a")]) == 0
    assert main(base + ["--out-dir", str(tmp_path / "b"), "--refill"]) == 0
    (pa,), (pb,) = (list((tmp_path / d / "preds").glob("*.jsonl")) for d in "ab")
    assert pa.name != pb.name
    ra, rb = ({json.loads(x)["id"]: json.loads(x)["pred"] for x in p.read_text().splitlines()} for p in (pa, pb))
    assert ra == rb and len(ra) == 6
    eng = pd.read_csv(next((tmp_path / "b").glob("*.csv"))).engine.iloc[0]
    assert eng == "batched-grouped-refill-b2"     # grouped decode is the default
