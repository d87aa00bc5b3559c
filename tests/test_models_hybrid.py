"""Hybrid models (Gemma 3): TSA in the full-attention layers, SDPA with the band mask in the
sliding-window ones; layer selection restricted to the full-attention layers."""
import json

import pytest
import torch

transformers = pytest.importorskip("transformers")
from transformers import Gemma3TextConfig  # noqa: E402

from tsa_core import TSAConfig, tsa_attention  # noqa: E402
from tsa_bench.hf import configure_tsa, last_stats, load_model, resolve_sparse_layers, tsa_plan  # noqa: E402
from tsa_bench.hf.layers import check_full_attention, full_attention_layers, select_by_drift  # noqa: E402

S, F = "sliding_attention", "full_attention"
LAYER_TYPES = [S, S, F, S, S, F]
GLOBAL = (2, 5)
WINDOW = 32                     # sliding window, shorter than the prompt
SCALAR = 24                     # query_pre_attn_scalar != head_dim: the scale must come from the model
N = 128
CFG = TSAConfig(tau=0.005, window=16, min_keep=16, pool_kernel=3, keep_ratio=0.5)
RECORDER = "tsa-record-hybrid"


def tiny_gemma():
    return Gemma3TextConfig(vocab_size=128, hidden_size=64, intermediate_size=128, num_hidden_layers=6,
                            num_attention_heads=4, num_key_value_heads=2, head_dim=16, query_pre_attn_scalar=SCALAR,
                            sliding_window=WINDOW, layer_types=LAYER_TYPES, max_position_embeddings=1024,
                            pad_token_id=0, bos_token_id=1, eos_token_id=2)


def _ids(n=N, seed=4):
    return torch.randint(3, 128, (1, n), generator=torch.Generator().manual_seed(seed))


def _banded_reference(q, k, v, scale, window):
    """softmax(q k^T * scale) v over keys j with i - window < j <= i (Gemma's sliding mask),
    GQA by repeating the KV heads; ``[B, L, Hq, D]``."""
    rep = q.shape[1] // k.shape[1]
    k, v = k.repeat_interleave(rep, dim=1), v.repeat_interleave(rep, dim=1)
    L = q.shape[2]
    i = torch.arange(L).view(L, 1)
    j = torch.arange(L).view(1, L)
    allowed = (j <= i) & (j > i - window)
    scores = (q.double() @ k.double().transpose(-1, -2)) * scale
    scores = scores.masked_fill(~allowed, float("-inf"))
    return (scores.softmax(-1) @ v.double()).to(q.dtype).transpose(1, 2)


@pytest.fixture
def recorded():
    """An attention function registered under another name that records each layer's inputs
    and delegates to the real "tsa" function; returns ``{layer_idx: (q, k, v, sliding_window)}``."""
    from transformers import AttentionInterface
    from transformers.masking_utils import AttentionMaskInterface, sdpa_mask

    from tsa_bench.hf import tsa_attention_forward

    calls = {}

    def record(module, query, key, value, attention_mask, **kwargs):
        calls[module.layer_idx] = (query.clone(), key.clone(), value.clone(), kwargs.get("sliding_window"))
        return tsa_attention_forward(module, query, key, value, attention_mask, **kwargs)

    AttentionInterface.register(RECORDER, record)
    AttentionMaskInterface.register(RECORDER, sdpa_mask)
    return calls


def test_full_attention_layers_of_hybrid_and_plain_configs():
    assert full_attention_layers(tiny_gemma()) == GLOBAL
    plain = transformers.AutoConfig.for_model("qwen2", num_hidden_layers=4)     # layer_types all full
    assert full_attention_layers(plain) is None
    assert full_attention_layers(transformers.AutoConfig.for_model("llama")) is None


def test_fallback_and_half_pick_global_layers_only():
    full = full_attention_layers(tiny_gemma())
    layers, source = resolve_sparse_layers(None, 6, model_name="some/hybrid", attention_layers=full)
    assert layers == GLOBAL and "full-attention" in source
    assert resolve_sparse_layers("half", 6, attention_layers=full)[0] == (5,)
    assert resolve_sparse_layers(None, 6, model_name="some/plain")[0] == (3, 4, 5)


def test_gemma_preset_fallback_is_its_three_global_layers():
    model, _ = load_model("gemma3-270m", weights="random", device="meta", method="tsa")
    assert tsa_plan(model).sparse_layers == (5, 11, 17)


@pytest.mark.parametrize("layers", [[0], [2, 3]], ids=["sliding-only", "global-and-sliding"])
def test_tsa_in_a_sliding_layer_is_refused(layers):
    model, _ = load_model(tiny_gemma(), weights="random", dtype=torch.float32)
    bad = [i for i in layers if i not in GLOBAL]
    with pytest.raises(ValueError, match=rf"layers? {bad[0]} .*sliding_attention \(a {WINDOW}-token window\).*"
                                         r"full-attention layers only: 2, 5"):
        configure_tsa(model, method="tsa", tsa_config=CFG, sparse_layers=layers)
    with pytest.raises(ValueError, match="full-attention layers only"):
        check_full_attention(layers, model.config)


@torch.no_grad()
def test_global_layers_run_tsa_and_sliding_layers_their_band(recorded):
    """Each attention module's output is o_proj of: ``tsa_core.tsa_attention`` on its own q/k/v
    with the model's scale (query_pre_attn_scalar ** -0.5) in the global layers, which drop
    tokens; exact banded softmax attention (an independent reference) in the sliding layers."""
    model, _ = load_model(tiny_gemma(), weights="random", method="tsa", tsa_config=CFG, dtype=torch.float32,
                          impl="naive", seed=2)
    assert tsa_plan(model).sparse_layers == GLOBAL
    model.set_attn_implementation(RECORDER)
    outputs = {}
    hooks = [layer.self_attn.register_forward_hook(lambda mod, args, out: outputs.__setitem__(mod.layer_idx, out[0]))
             for layer in model.model.layers]
    model(_ids(), use_cache=False)
    for h in hooks:
        h.remove()
    stats = last_stats(model)
    assert sorted(recorded) == sorted(outputs) == list(range(6))
    scale = SCALAR ** -0.5
    for i, (q, k, v, sliding) in recorded.items():
        attn = model.model.layers[i].self_attn
        if i in GLOBAL:
            assert sliding is None
            assert not stats[i].dense and stats[i].kept[0] < N
            want, want_stats = tsa_attention(q, k, v, CFG, "sdpa", scale=scale, impl="naive")
            assert want_stats == stats[i]
            torch.testing.assert_close(outputs[i], attn.o_proj(want.reshape(1, N, -1)), rtol=0, atol=0)
        else:
            assert sliding == WINDOW and stats[i].dense and "sliding" in stats[i].reason
            want = _banded_reference(q, k, v, scale, WINDOW)
            torch.testing.assert_close(outputs[i], attn.o_proj(want.reshape(1, N, -1)), rtol=1e-5, atol=1e-5)


@torch.no_grad()
def test_sliding_layers_equal_the_plain_sdpa_model():
    """Method "tsa" changes nothing before the first global layer: layers 0-1 (sliding) give
    the plain SDPA model's hidden states bit for bit."""
    model, _ = load_model(tiny_gemma(), weights="random", method="tsa", tsa_config=CFG, dtype=torch.float32,
                          impl="naive", seed=2)
    with torch.random.fork_rng():
        torch.manual_seed(2)
        with torch.device("cpu"):
            plain = transformers.AutoModelForCausalLM.from_config(tiny_gemma(), dtype=torch.float32,
                                                                  attn_implementation="sdpa").eval()
    plain.load_state_dict(model.state_dict())
    ids = _ids()
    got = model(ids, output_hidden_states=True, use_cache=False).hidden_states
    ref = plain(ids, output_hidden_states=True, use_cache=False).hidden_states
    for i in range(3):                       # embeddings, after layer 0, after layer 1
        assert torch.equal(got[i], ref[i])
    assert not torch.equal(got[3], ref[3])   # layer 2 (global) dropped tokens


@torch.no_grad()
def test_sliding_layer_selected_by_hand_is_refused_at_run_time():
    """Settings written without configure_tsa (which would refuse them) still cannot run TSA in
    a sliding layer once its mask is banded."""
    model, _ = load_model(tiny_gemma(), weights="random", method="tsa", tsa_config=CFG, dtype=torch.float32,
                          impl="naive")
    settings = dict(model.config.tsa_settings, sparse_layers=[0, 2, 5])
    model.config.tsa_settings = settings
    with pytest.raises(ValueError, match="layer 0 is a sliding-window layer"):
        model(_ids(), use_cache=False)


def test_drift_ranks_only_candidate_layers():
    drift = [0.1, 0.9, 0.5, 0.2, 0.3, 0.4]
    assert select_by_drift(drift, 0.5) == (0, 3, 4)
    assert select_by_drift(drift, 0.5, candidates=GLOBAL) == (5,)       # 0.4 < 0.5: the lower half of {2, 5}
    assert select_by_drift(drift, 1.0, candidates=GLOBAL) == GLOBAL
    with pytest.raises(ValueError, match="out of range"):
        select_by_drift(drift, 0.5, candidates=[6])


def test_profile_layers_picks_among_global_layers(tmp_path):
    from tsa_bench.cli import main

    model_dir = tmp_path / "tiny-gemma"
    tiny_gemma().save_pretrained(model_dir)
    out = tmp_path / "layers"
    rc = main(["profile-layers", "--model", str(model_dir), "--weights", "random", "--seq-len", "96", "--delta", "1",
               "--dtype", "fp32", "--device", "cpu", "--out-dir", str(out)])
    assert rc == 0
    doc = json.loads(next(out.glob("*.json")).read_text())
    assert doc["candidate_layers"] == list(GLOBAL)
    assert doc["sparse_layers"] == list(GLOBAL) and len(doc["drift"]) == 6


@torch.no_grad()
def test_capture_takes_the_middle_global_layer_with_band_masks_before_it(recorded):
    """latency --qkv model:... on a hybrid model: the default layer is the middle full-attention
    one, and its q/k/v are those the model computes (the sliding layers before it kept their
    band masks); a sliding layer cannot be captured."""
    from tsa_bench.capture import capture_from_model

    model, _ = load_model(tiny_gemma(), weights="random", method="dense", dtype=torch.float32, seed=2)
    model.set_attn_implementation(RECORDER)
    ids = _ids()
    model(ids, use_cache=False)
    model.set_attn_implementation("tsa")
    q, k, v = capture_from_model(model, ids)
    for got, want in zip((q, k, v), recorded[5][:3]):
        assert torch.equal(got, want)
    with pytest.raises(ValueError, match="layer: layer 4 of this model uses sliding_attention"):
        capture_from_model(model, ids, layer=4)


def _sliding_mask(B, L, window, pad=()):
    """Gemma's sliding mask, boolean ``[B, 1, L, L]`` (True = attend): i - window < j <= i, and
    the first ``pad[b]`` positions of row ``b`` masked as left padding."""
    i = torch.arange(L).view(L, 1)
    j = torch.arange(L).view(1, L)
    band = (j <= i) & (j > i - window)
    m = band.expand(B, 1, L, L).clone()
    for b, p in enumerate(pad):
        m[b, :, :, :p] = False
        m[b, :, :p, :] = torch.eye(L, dtype=torch.bool)[:p]     # padded rows attend to themselves only
    return m


@pytest.mark.parametrize("B,L,window,chunk,pad", [
    (1, 100, 7, 16, ()),                 # L off the chunk
    (2, 257, 32, 64, (0, 45)),           # batch > 1 with left padding in one row
    (1, 50, 60, 16, ()),                 # window longer than the prompt
    (1, 33, 1, 8, ()),                   # a window of one key
], ids=["L100-w7", "B2-pad", "wide-window", "w1"])
def test_banded_sliding_attention_equals_the_masked_product(B, L, window, chunk, pad):
    """Chunked prefill of a sliding layer == transformers' SDPA over the full L x L mask (GQA 2:1,
    fp32), with the mask sliced from the same tensor, padding included."""
    from tsa_bench.hf.attention import _sdpa_forward, banded_sliding_attention
    model, _ = load_model(tiny_gemma(), weights="random", dtype=torch.float32)
    attn = model.model.layers[0].self_attn
    g = torch.Generator().manual_seed(L)
    q = torch.randn(B, 4, L, 16, generator=g)
    k, v = torch.randn(B, 2, L, 16, generator=g), torch.randn(B, 2, L, 16, generator=g)
    mask = _sliding_mask(B, L, window, pad)
    want, _ = _sdpa_forward(attn, q, k, v, mask, 0.0, 0.3, sliding_window=window)
    got, none = banded_sliding_attention(attn, q, k, v, mask, window, 0.0, 0.3, chunk=chunk, sliding_window=window)
    assert none is None and got.shape == want.shape == (B, L, 4, 16)
    torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-6)
    with pytest.raises(ValueError, match="prefill"):
        banded_sliding_attention(attn, q, k[:, :, :-1], v[:, :, :-1], mask, window)
    with pytest.raises(ValueError, match="window"):
        banded_sliding_attention(attn, q, k, v, mask, 0)


@torch.no_grad()
def test_banded_sliding_prefill_gives_the_mask_path_logits():
    """A tiny Gemma-3 whose prompt is longer than the chunk (window 32: chunks of 1024 queries;
    the prompt 1500 tokens) gives the same logits with sliding="banded" as with the default
    "mask", for dense and for TSA in the global layers; the default leaves no "sliding" entry in
    the settings, so run keys of earlier runs stay as they were."""
    model, _ = load_model(tiny_gemma(), weights="random", method="dense", dtype=torch.float32, seed=3)
    assert "sliding" not in model.config.tsa_settings
    ids = _ids(1500, seed=9)
    for method, cfg in (("dense", None), ("tsa", CFG)):
        configure_tsa(model, method=method, tsa_config=cfg, impl="naive")
        want = model(ids, use_cache=False).logits
        configure_tsa(model, method=method, tsa_config=cfg, impl="naive", sliding="banded")
        assert tsa_plan(model).sliding == "banded" and model.config.tsa_settings["sliding"] == "banded"
        got = model(ids, use_cache=False).logits
        reasons = {i: st.reason for i, st in last_stats(model).items()}
        assert all(reasons[i].endswith("by query chunks") for i in range(6) if i not in GLOBAL), reasons
        torch.testing.assert_close(got, want, rtol=1e-4, atol=1e-4)
    with pytest.raises(ValueError, match="sliding must be one of"):
        configure_tsa(model, method="dense", sliding="band")


@pytest.mark.parametrize("command", ["ruler", "niah", "prefill"])
def test_sliding_attention_flag_reaches_the_plan(command):
    """`--sliding-attention banded` of ruler/niah/prefill configures the model with it (so ruler's
    run key, which hashes the settings, separates the two); the default is mask."""
    from tsa_bench.cli import build_parser
    from tsa_bench.commands.ruler import configure_method
    extra = ["--model", "gemma3-270m"] if command == "prefill" else []
    args = build_parser().parse_args([command, *extra, "--weights", "random"])
    assert args.sliding_attention == "mask"
    args = build_parser().parse_args([command, *extra, "--weights", "random", "--sliding-attention", "banded"])
    assert args.sliding_attention == "banded"
    with pytest.raises(SystemExit):
        build_parser().parse_args([command, *extra, "--sliding-attention", "band"])
    if command == "ruler":                  # every arm reconfigures the loaded model
        model, _ = load_model("gemma3-270m", weights="random", device="meta")
        args.model, args.sparse_layers = "gemma3-270m", None
        configure_method(model, args, "dense")
        assert model.config.tsa_settings["sliding"] == "banded"
    if command == "niah":                   # niah runs the model as loaded
        from tsa_bench.commands.ruler import _load_model
        args.model, args.method = "gemma3-270m", "dense"
        model, _ = _load_model(args, "meta")
        assert model.config.tsa_settings["sliding"] == "banded"


def test_the_cli_offers_exactly_the_sliding_paths_the_loader_accepts():
    """args.add_sliding_argument spells the choices out (the CLI parser must not import torch);
    they must stay those of tsa_bench.hf.attention.SLIDING_PREFILL."""
    import argparse

    from tsa_bench.args import add_sliding_argument
    from tsa_bench.hf.attention import SLIDING_PREFILL

    p = argparse.ArgumentParser()
    add_sliding_argument(p)
    action = next(a for a in p._actions if a.dest == "sliding_attention")
    assert tuple(action.choices) == SLIDING_PREFILL and action.default == SLIDING_PREFILL[0]
