"""Model loading, presets, layer resolution and the registration contract."""
import logging

import pytest
import torch

transformers = pytest.importorskip("transformers")
from transformers import AutoConfig, LlamaForCausalLM  # noqa: E402

from tsa_core import TSAConfig  # noqa: E402
from tsa_bench.hf import (configure_tsa, find_preset, last_stats, load_model, presets,  # noqa: E402
                          register_tsa_attention, resolve_sparse_layers, tsa_plan)

SMALL = TSAConfig(tau=0.005, window=16, min_keep=16, pool_kernel=3, keep_ratio=0.5)


def tiny(layers=4):
    return AutoConfig.for_model("llama", vocab_size=128, hidden_size=64, intermediate_size=128,
                                num_hidden_layers=layers, num_attention_heads=4, num_key_value_heads=2,
                                max_position_embeddings=1024)


def _ids(n=128):
    return torch.randint(0, 128, (1, n), generator=torch.Generator().manual_seed(3))


def test_register_is_idempotent():
    from transformers import AttentionInterface
    from transformers.masking_utils import AttentionMaskInterface

    assert register_tsa_attention() == register_tsa_attention() == "tsa"
    assert "tsa" in AttentionInterface._global_mapping
    assert "tsa" in AttentionMaskInterface._global_mapping


def test_random_weights_are_seeded_and_leave_global_rng_alone():
    state = torch.random.get_rng_state()
    a, _ = load_model(tiny(), weights="random", dtype=torch.float32, seed=5)
    b, _ = load_model(tiny(), weights="random", dtype=torch.float32, seed=5)
    assert torch.equal(torch.random.get_rng_state(), state)
    assert all(torch.equal(p, q) for p, q in zip(a.parameters(), b.parameters()))


@torch.no_grad()
def test_two_models_keep_their_own_settings():
    cfg = tiny()
    a, _ = load_model(cfg, method="tsa", tsa_config=SMALL, sparse_layers=[1], weights="random",
                      dtype=torch.float32, impl="naive")
    b, _ = load_model(cfg, method="tsa", tsa_config=SMALL, sparse_layers=[3], weights="random",
                      dtype=torch.float32, impl="naive")
    a(_ids())
    b(_ids())
    assert [i for i, s in last_stats(a).items() if not s.dense] == [1]
    assert [i for i, s in last_stats(b).items() if not s.dense] == [3]
    assert tsa_plan(a).sparse_layers == (1,) and tsa_plan(b).sparse_layers == (3,)


@torch.no_grad()
def test_configure_switches_method_without_reload():
    model, _ = load_model(tiny(), weights="random", dtype=torch.float32)
    ids = _ids()
    dense = model(ids).logits
    plan = configure_tsa(model, method="tsa", tsa_config=SMALL, sparse_layers="2-3", impl="naive")
    assert plan.sparse_layers == (2, 3)
    assert not torch.equal(model(ids).logits, dense)
    configure_tsa(model, method="dense")
    assert torch.equal(model(ids).logits, dense)


def test_unknown_method_and_backend_are_refused():
    with pytest.raises(ValueError, match="unknown attention backend"):
        load_model(tiny(), method="nope+tsa", weights="random")
    with pytest.raises(ValueError, match="unknown attention backend"):
        load_model(tiny(), dense_backend="nope", weights="random")
    with pytest.raises(ValueError, match="weights must be"):
        load_model(tiny(), weights="zeros")


def test_model_without_attention_interface_is_refused():
    class Legacy(LlamaForCausalLM):
        _supports_attention_backend = False

    with torch.device("meta"):
        model = Legacy(tiny(2))
    with pytest.raises(ValueError, match="AttentionInterface"):
        configure_tsa(model, method="tsa")


def test_presets_hold_real_shapes_and_valid_layer_lists():
    ps = presets()
    for name in ("llama-3.1-8b", "mistral-nemo-12b", "qwen2.5-7b", "qwen3-8b"):
        assert name in ps
        cfg = AutoConfig.for_model(**ps[name].config)          # the preset builds its own config class
        head_dim = getattr(cfg, "head_dim", None) or cfg.hidden_size // cfg.num_attention_heads
        assert type(cfg).__name__ == ps[name].config["architectures"][0].replace("ForCausalLM", "Config")
        assert (cfg.num_hidden_layers, head_dim) == (ps[name].num_layers, 128)
        assert cfg.num_attention_heads % cfg.num_key_value_heads == 0
        if ps[name].sparse_layers is not None:
            assert all(0 <= i < ps[name].num_layers for i in ps[name].sparse_layers)
    assert ps["llama-3.1-8b"].sparse_layers == tuple(range(15, 31))
    assert ps["mistral-nemo-12b"].sparse_layers == (14, 15, *range(20, 38))
    assert find_preset("meta-llama/Llama-3.1-8B-Instruct").name == "llama-3.1-8b"


def test_preset_builds_on_meta_device():
    model, tok = load_model("llama-3.1-8b", weights="random", device="meta", method="tsa")
    assert tok is None
    n = sum(p.numel() for p in model.parameters())
    assert 7.9e9 < n < 8.1e9                          # Llama-3.1-8B has 8.03B parameters
    plan = tsa_plan(model)
    assert plan.sparse_layers == tuple(range(15, 31)) and plan.tsa.tau == 0.005
    assert "preset" in plan.layer_source


def test_layer_resolution_precedence(caplog):
    p = find_preset("mistral-nemo-12b")
    assert resolve_sparse_layers("14,15,20-37", 40)[0] == p.sparse_layers
    assert resolve_sparse_layers(None, 40, preset=p)[0] == p.sparse_layers
    cfg = TSAConfig(sparse_layers=(1, 2))
    assert resolve_sparse_layers(None, 40, tsa_config=cfg, preset=p)[0] == (1, 2)
    with caplog.at_level(logging.WARNING, logger="tsa_bench.hf"):
        layers, source = resolve_sparse_layers(None, 6, model_name="some/unknown-model")
    assert layers == (3, 4, 5) and "fallback" in source
    assert "second half" in caplog.text


def test_layer_spec_errors():
    with pytest.raises(ValueError, match="bad layer list"):
        resolve_sparse_layers("1,x", 4)
    with pytest.raises(ValueError, match="no preset layer list"):
        resolve_sparse_layers("preset", 4, model_name="x")


@torch.no_grad()
def test_configure_switches_a_model_loaded_elsewhere():
    """A model built by other code (e.g. lm-eval) with SDPA is switched to "tsa" in place."""
    with torch.random.fork_rng():
        torch.manual_seed(0)
        model = LlamaForCausalLM._from_config(tiny(), attn_implementation="sdpa").eval()
    ids = _ids()
    ref = model(ids).logits
    configure_tsa(model, method="tsa", tsa_config=SMALL, sparse_layers=[3], impl="naive")
    assert model.config._attn_implementation == "tsa"
    out = model(ids).logits
    assert [i for i, s in last_stats(model).items() if not s.dense] == [3]
    assert not torch.equal(out, ref)


@torch.no_grad()
def test_per_layer_configs_override_the_shared_one():
    model, _ = load_model(tiny(), method="tsa", tsa_config=SMALL, sparse_layers=[2, 3], weights="random",
                          dtype=torch.float32, impl="naive",
                          layer_configs={3: TSAConfig(tau=0.0, window=16, min_keep=16, pool_kernel=3)})
    model(_ids())
    stats = last_stats(model)
    assert not stats[2].dense
    assert stats[3].dense and stats[3].reason == "tau = 0"
    with pytest.raises(ValueError, match="not one of the sparse layers"):
        configure_tsa(model, method="tsa", tsa_config=SMALL, sparse_layers=[2], layer_configs={3: SMALL})


def test_profile_json_is_accepted_and_checked(tmp_path):
    import json

    path = tmp_path / "m.json"
    path.write_text(json.dumps({"sparse_layers": [1, 3], "num_layers": 4}))
    assert resolve_sparse_layers(str(path), 4)[0] == (1, 3)
    with pytest.raises(ValueError, match="4-layer model"):
        resolve_sparse_layers(str(path), 6)
    path.write_text("{}")
    with pytest.raises(ValueError, match="no 'sparse_layers'"):
        resolve_sparse_layers(str(path), 4)


def test_hf_imports_nothing_of_the_bench_layer():
    """``tsa_bench.hf`` (the transformers integration) may import ``tsa_core``, itself and the
    neutral :mod:`tsa_bench.paths`, never the bench layer (provenance, results, commands), at
    module level or inside a function."""
    import ast
    from pathlib import Path

    import tsa_bench.hf

    allowed = ("tsa_bench.hf", "tsa_bench.paths")
    bad = []
    for path in sorted(Path(tsa_bench.hf.__file__).parent.glob("*.py")):
        for node in ast.walk(ast.parse(path.read_text())):
            names = [a.name for a in node.names] if isinstance(node, ast.Import) else \
                [node.module or ""] if isinstance(node, ast.ImportFrom) and node.level == 0 else []
            bad += [f"{path.name}: {n}" for n in names
                    if n.split(".")[0] == "tsa_bench" and not any(n == a or n.startswith(a + ".") for a in allowed)]
    assert bad == []
