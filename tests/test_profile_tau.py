"""A saved layer profile's ``tau``: validated on load, and used by ``ruler`` / ``niah`` /
``prefill`` when ``--tau`` is not given (``--tau`` > profile > preset > 0.005)."""
import json

import pandas as pd
import pytest

pytest.importorskip("transformers")

from tsa_bench.cli import build_parser, main  # noqa: E402
from tsa_bench.hf.layers import load_profile, resolve_tau  # noqa: E402

TINY = ["--model", "tiny-llama", "--weights", "random", "--dtype", "fp32", "--device", "cpu"]
RULER = ["ruler", *TINY, "--tokenizer", "toy", "--method", "tsa", "--seq-lens", "512", "-n", "1",
         "--tasks", "qa_1", "--data", "generated", "--words", "builtin", "--no-progress"]


def _profile(tmp_path, **fields):
    """A tiny-llama (4 layers) profile JSON with ``fields`` on top; returns its path."""
    path = tmp_path / "profile.json"
    path.write_text(json.dumps({"model": "tiny-llama", "num_layers": 4, "sparse_layers": [2, 3], **fields}))
    return path


@pytest.mark.parametrize("given, saved, preset, want", [
    (0.01, 0.02, 0.008, (0.01, "given explicitly")),
    (None, 0.02, 0.008, (0.02, "profile")),
    (None, None, 0.008, (0.008, "preset")),
    (None, None, None, (0.005, "default")),
], ids=["flag-wins", "profile-over-preset", "preset-when-profile-has-none", "paper-default"])
def test_resolve_tau_precedence(tmp_path, given, saved, preset, want):
    path = _profile(tmp_path, **({} if saved is None else {"tau": saved}))
    tau, source = resolve_tau(given, str(path), preset)
    assert tau == want[0] and source.startswith(want[1])


def test_resolve_tau_ignores_a_layer_list():
    assert resolve_tau(None, "2,3", 0.008) == (0.008, "preset")


@pytest.mark.parametrize("bad", [0, 1, 1.5, -0.1, "0.02", True, [0.02]],
                         ids=["zero", "one", "above-one", "negative", "string", "bool", "list"])
def test_a_bad_profile_tau_is_a_clear_error(tmp_path, bad):
    with pytest.raises(ValueError, match=r"'tau' must be a number in \(0, 1\)"):
        load_profile(_profile(tmp_path, tau=bad))


def test_a_profile_without_tau_loads(tmp_path):
    assert load_profile(_profile(tmp_path))["sparse_layers"] == [2, 3]


def test_ruler_runs_tsa_at_the_profile_tau(tmp_path, capsys, one_thread):
    prof = _profile(tmp_path, tau=0.02)
    rc = main([*RULER, "--sparse-layers", str(prof), "--out-dir", str(tmp_path / "out"),
               "--cache-dir", str(tmp_path / "c")])
    assert rc == 0
    df = pd.read_csv(capsys.readouterr().out.strip().splitlines()[-1])
    plan = json.loads(df["config"].iloc[0])["plan"]          # model.config.tsa_settings of the run
    assert set(df["tau"]) == {0.02}
    assert plan["tsa"]["tau"] == 0.02 and plan["sparse_layers"] == [2, 3]
    assert set(df["setting"]) == {"tsa tau=0.02 profile"}   # the label names the tau that ran


@pytest.mark.parametrize("argv, want", [
    ([], "tau 0.02,"),
    (["--tau", "0.01"], "tau 0.01,"),
], ids=["profile", "flag-overrides-profile"])
@pytest.mark.parametrize("command", ["ruler", "niah"], ids=["ruler", "niah"])
def test_dry_run_prints_the_resolved_tau(tmp_path, capsys, command, argv, want):
    prof = _profile(tmp_path, tau=0.02)
    assert main([command, *TINY, "--seq-lens", "1k", "--sparse-layers", str(prof), *argv, "--dry-run"]) == 0
    assert want in capsys.readouterr().out


@pytest.mark.parametrize("argv, want", [([], 0.02), (["--tau", "0.01"], 0.01)],
                         ids=["profile", "flag-overrides-profile"])
def test_prefill_uses_the_profile_tau(tmp_path, capsys, argv, want):
    prof = _profile(tmp_path, tau=0.02)
    assert main(["prefill", *TINY, "--seq-lens", "256", "--sparse-layers", str(prof), *argv, "--dry-run"]) == 0
    out = capsys.readouterr().out
    setup = json.loads(out[out.index("{"):out.rindex("}") + 1])
    assert setup["tau"] == want and setup["sparse_layers"] == [2, 3]


@pytest.mark.parametrize("command", ["ruler", "niah", "prefill"], ids=["ruler", "niah", "prefill"])
def test_a_bad_profile_tau_is_a_usage_error(tmp_path, capsys, command):
    prof = _profile(tmp_path, tau=5)
    assert main([command, *TINY, "--seq-lens", "1k", "--sparse-layers", str(prof), "--dry-run"]) == 2
    err = capsys.readouterr().err
    assert "--sparse-layers" in err and "'tau' must be a number in (0, 1), got 5" in err


def test_the_run_key_changes_only_with_the_resolved_tau(tmp_path):
    """No --tau and no profile resolves to the preset's 0.005: the same key as ``--tau 0.005``
    (earlier predictions files stay valid); a profile's 0.02 keys like ``--tau 0.02``."""
    import torch

    from tasks.ruler.generate import Generator, GenConfig
    from tasks.ruler.toy_tokenizer import build_tokenizer
    from tsa_bench.commands import ruler as R
    from tsa_bench.hf import load_model

    model = load_model("tiny-llama", method="tsa", weights="random", dtype=torch.float32)[0]
    gen = Generator(build_tokenizer(), GenConfig(data="generated", words="builtin"), cache_dir=tmp_path / "c",
                    log=lambda m: None)
    prof = str(_profile(tmp_path, tau=0.02))

    def key(*argv):
        args = build_parser().parse_args(["ruler", *TINY, *argv])
        args.tau = R.resolve_tau(args)
        R.configure_method(model, args, args.method)
        return R.run_identity(args, gen, "base", model=model)[2]

    assert key() == key("--tau", "0.005")
    assert key("--sparse-layers", prof) == key("--sparse-layers", prof, "--tau", "0.02")
    assert key("--sparse-layers", prof) != key("--sparse-layers", prof, "--tau", "0.01")
