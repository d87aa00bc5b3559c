"""The "tsa" transformers attention on tiny random-weight Llama, Mistral, Qwen2 and Qwen3 models."""
import pytest
import torch

transformers = pytest.importorskip("transformers")
from transformers import AutoConfig, AutoModelForCausalLM  # noqa: E402

from tsa_core import TSAConfig  # noqa: E402
from tsa_bench.hf import last_stats, load_model, summarize_stats  # noqa: E402

L = 256
VOCAB = 128
# Small window / min_keep so that TSA really sparsifies at 256 tokens.
SPARSE = TSAConfig(tau=0.05, window=16, min_keep=16, pool_kernel=3)
FORCED = TSAConfig(tau=0.005, window=16, min_keep=16, pool_kernel=3, keep_ratio=0.5)

FAMILIES = {
    "llama": dict(),
    "mistral": dict(head_dim=32, sliding_window=None),
    "qwen2": dict(),
    "qwen3": dict(head_dim=32),
}


def tiny_config(family: str):
    return AutoConfig.for_model(family, vocab_size=VOCAB, hidden_size=64, intermediate_size=128,
                                num_hidden_layers=4, num_attention_heads=4, num_key_value_heads=2,
                                max_position_embeddings=1024, **FAMILIES[family])


@pytest.fixture(scope="module", params=sorted(FAMILIES), ids=sorted(FAMILIES))
def checkpoint(request, tmp_path_factory):
    """A tiny random checkpoint on disk, so the load-by-local-path code path is the one tested."""
    family = request.param
    path = tmp_path_factory.mktemp(f"tiny-{family}")
    with torch.random.fork_rng():
        torch.manual_seed(7)
        model = AutoModelForCausalLM.from_config(tiny_config(family), dtype=torch.float32)
    model.save_pretrained(path)
    return str(path)


def _plain(path):
    return AutoModelForCausalLM.from_pretrained(path, attn_implementation="sdpa", dtype=torch.float32).eval()


def _tsa(path, **kw):
    kw.setdefault("method", "tsa")
    kw.setdefault("impl", "naive")
    return load_model(path, dtype=torch.float32, **kw)[0]


def _ids(n=L, batch=1, seed=0):
    return torch.randint(0, VOCAB, (batch, n), generator=torch.Generator().manual_seed(seed))


@torch.no_grad()
def test_tau_zero_logits_identical_to_sdpa(checkpoint):
    ids = _ids()
    ref = _plain(checkpoint)(ids).logits
    cfg = TSAConfig(tau=0.0, window=16, min_keep=16, pool_kernel=3)
    got = _tsa(checkpoint, tsa_config=cfg, sparse_layers="half")(ids).logits
    assert torch.equal(got, ref)


@torch.no_grad()
def test_dense_method_logits_identical_to_sdpa(checkpoint):
    ids = _ids()
    ref = _plain(checkpoint)(ids).logits
    got = _tsa(checkpoint, method="dense")(ids).logits
    assert torch.equal(got, ref)


@torch.no_grad()
def test_tau_positive_changes_only_sparse_layers(checkpoint):
    ids = _ids()
    ref = _plain(checkpoint)(ids, output_hidden_states=True).hidden_states
    model = _tsa(checkpoint, tsa_config=SPARSE, sparse_layers=[2, 3])
    got = model(ids, output_hidden_states=True).hidden_states
    for i in range(3):                       # inputs of layers 0, 1, 2: untouched by TSA
        assert torch.equal(got[i], ref[i]), f"hidden state {i} changed before the first sparse layer"
    assert not torch.allclose(got[3], ref[3]), "the first sparse layer's output did not change"
    stats = last_stats(model)
    assert [i for i, s in stats.items() if not s.dense] == [2, 3]
    assert all(s.kept[0] < L for i, s in stats.items() if i in (2, 3))


@torch.no_grad()
def test_generate_runs_and_cache_keeps_every_token(checkpoint):
    ids = _ids()
    model = _tsa(checkpoint, tsa_config=FORCED, sparse_layers=[1, 3])
    out = model(ids, use_cache=True)
    assert out.past_key_values.get_seq_length() == L
    ref = _plain(checkpoint)(ids, use_cache=True).past_key_values
    # Layer 1's K/V come from its (unchanged) input, and are stored in full, not compressed.
    assert torch.equal(_layer_keys(out.past_key_values, 1), _layer_keys(ref, 1))
    gen = model.generate(ids, attention_mask=torch.ones_like(ids), max_new_tokens=4, do_sample=False,
                         pad_token_id=0)
    assert gen.shape == (1, L + 4)
    assert summarize_stats(last_stats(model), [1, 3])["keep_fraction"] < 1.0   # decode kept prefill stats


def _layer_keys(cache, i):
    layer = cache.layers[i] if hasattr(cache, "layers") else None
    return layer.keys if layer is not None else cache.key_cache[i]


@torch.no_grad()
def test_short_prompt_is_reported_as_dense_fallback(checkpoint):
    model = _tsa(checkpoint, tsa_config=SPARSE, sparse_layers=[2, 3])
    model(_ids(SPARSE.min_keep + SPARSE.window))
    stats = last_stats(model)
    assert stats[2].dense and "min_keep + window" in stats[2].reason


def test_sparse_layer_out_of_range(checkpoint):
    with pytest.raises(ValueError, match=r"out of range.*0\.\.3"):
        _tsa(checkpoint, tsa_config=SPARSE, sparse_layers=[2, 4])


@torch.no_grad()
def test_padded_batch_refused_in_sparse_layers(checkpoint):
    ids = _ids(batch=2)
    mask = torch.ones_like(ids)
    mask[1, :5] = 0                          # left padding of the second prompt
    model = _tsa(checkpoint, tsa_config=SPARSE, sparse_layers=[2, 3])
    with pytest.raises(ValueError, match="attention mask"):
        model(ids, attention_mask=mask)


@torch.no_grad()
def test_padded_batch_exact_in_dense_layers(checkpoint):
    """tau = 0 layers take the mask through SDPA: same logits as the plain model."""
    ids = _ids(batch=2)
    mask = torch.ones_like(ids)
    mask[1, :5] = 0
    ref = _plain(checkpoint)(ids, attention_mask=mask).logits
    cfg = TSAConfig(tau=0.0, window=16, min_keep=16, pool_kernel=3)
    got = _tsa(checkpoint, tsa_config=cfg, sparse_layers=[2, 3])(ids, attention_mask=mask).logits
    assert torch.equal(got[mask.bool()], ref[mask.bool()])


@torch.no_grad()
def test_triton_ops_match_naive_inside_the_model():
    """The Triton TSA ops (interpreter on CPU) through the integration give the naive result."""
    cfg = AutoConfig.for_model("llama", vocab_size=VOCAB, hidden_size=64, intermediate_size=128,
                               num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2,
                               max_position_embeddings=1024)
    ids = _ids(200)
    logits, kept = {}, {}
    for impl in ("naive", "triton"):
        model, _ = load_model(cfg, method="tsa", weights="random", dtype=torch.float32, impl=impl,
                              sparse_layers=[1], tsa_config=SPARSE)
        logits[impl] = model(ids).logits
        kept[impl] = last_stats(model)[1].kept
    assert kept["naive"] == kept["triton"] and kept["naive"][0] < 200
    torch.testing.assert_close(logits["triton"], logits["naive"], rtol=1e-5, atol=1e-5)


@pytest.mark.filterwarnings("ignore:`past_key_values` is deprecated:FutureWarning")
@torch.no_grad()
def test_decode_after_tsa_prefill_is_dense_over_the_full_cache(checkpoint):
    """A decode step of the TSA model equals the plain SDPA model's step on the same cache."""
    import copy

    ids = _ids()
    model = _tsa(checkpoint, tsa_config=FORCED, sparse_layers=[1, 3])
    cache = model(ids, use_cache=True).past_key_values
    nxt = _ids(1, seed=5)
    got = model(nxt, past_key_values=copy.deepcopy(cache), use_cache=True).logits
    ref = _plain(checkpoint)(nxt, past_key_values=copy.deepcopy(cache), use_cache=True).logits
    assert torch.equal(got, ref)


@pytest.mark.gpu
@torch.no_grad()
def test_gpu_tiny_llama_bf16_triton_ops():
    """CUDA, bf16: tau = 0 is bit-identical to transformers' SDPA; the Triton TSA ops inside
    the model keep what the naive ops keep and give close logits."""
    cfg = AutoConfig.for_model("llama", vocab_size=VOCAB, hidden_size=256, intermediate_size=512,
                               num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2,
                               max_position_embeddings=8192)
    ids = _ids(3000).cuda()
    plain, _ = load_model(cfg, method="dense", weights="random", dtype=torch.bfloat16, device="cuda", seed=1)
    plain.set_attn_implementation("sdpa")
    ref = plain(ids).logits
    zero = TSAConfig(tau=0.0)
    tsa0, _ = load_model(cfg, method="tsa", tsa_config=zero, sparse_layers=[1], weights="random",
                         dtype=torch.bfloat16, device="cuda", seed=1)
    assert torch.equal(tsa0(ids).logits, ref)
    forced = TSAConfig(keep_ratio=0.5)
    logits, kept = {}, {}
    for impl in ("naive", "triton"):
        model, _ = load_model(cfg, method="tsa", tsa_config=forced, sparse_layers=[1], weights="random",
                              dtype=torch.bfloat16, device="cuda", seed=1, impl=impl)
        logits[impl] = model(ids).logits.float()
        kept[impl] = last_stats(model)[1].kept
    assert kept["naive"] == kept["triton"] and kept["naive"][0] < 3000
    err = (logits["triton"] - logits["naive"]).norm() / logits["naive"].norm()
    assert err < 2e-2


# -- the sparse layer inside the model equals tsa_core.tsa_attention on its own q/k/v ----------
RECORDER = "tsa-recorder"
# FlexPrefill with 16-token blocks, a 16-token minimum budget and coverage gamma 0.5 (the
# registry's "flexprefill" has 128-token blocks and a 1024-token budget, so it would run dense
# on a CPU-sized prompt; random weights spread attention, so gamma 0.95 keeps every block);
# the PyTorch references, so the test does not wait on the Triton interpreter.
FLEX_SMALL = "flexprefill-block16"
CAPTURE = TSAConfig(tau=0.005, window=16, min_keep=16, pool_kernel=3, keep_ratio=0.5)


@pytest.fixture
def recorded():
    """Register (under another name) an attention function that records each layer's
    ``(query, key, value)`` (after RoPE: what the attention function receives) and delegates
    to the real "tsa" function; returns the dict it fills, ``{layer_idx: (q, k, v)}``."""
    from transformers import AttentionInterface
    from transformers.masking_utils import AttentionMaskInterface, sdpa_mask

    from tsa_bench.hf import tsa_attention_forward
    from tsa_core.backends import AttentionBackend, register_backend

    options = {"method": "flexprefill", "block_size": 16, "min_budget": 16, "gamma": 0.5, "impl": "naive"}
    register_backend(AttentionBackend(FLEX_SMALL, "tsa_core.sparse.methods:sparse_attention", kind="sparse",
                                      devices=("cpu", "cuda"), options=options), replace=True)
    calls = {}

    def record(module, query, key, value, attention_mask, **kwargs):
        calls[module.layer_idx] = (query.clone(), key.clone(), value.clone())
        return tsa_attention_forward(module, query, key, value, attention_mask, **kwargs)

    AttentionInterface.register(RECORDER, record)
    AttentionMaskInterface.register(RECORDER, sdpa_mask)
    return calls


@pytest.mark.parametrize("method, kernel", [("tsa", "sdpa"), (f"{FLEX_SMALL}+tsa", FLEX_SMALL)],
                         ids=["tsa", "flexprefill+tsa"])
@torch.no_grad()
def test_sparse_layer_output_is_tsa_attention_on_its_qkv(method, kernel, recorded):
    """Every attention module's output is o_proj of what tsa_core computes on the q/k/v that
    layer saw: ``tsa_attention(q, k, v, cfg, kernel)`` in the sparse layers 2 and 3 (which
    drop tokens), ``kernel`` on the full sequence in layers 0 and 1."""
    from tsa_core import get_backend, tsa_attention
    from tsa_core.sparse import last_stats as sparse_stats

    n = 192
    model, _ = load_model("tiny-llama", weights="random", method=method, tsa_config=CAPTURE, sparse_layers=[2, 3],
                          dtype=torch.float32, impl="naive", seed=3)
    model.set_attn_implementation(RECORDER)
    outputs = {}
    hooks = [layer.self_attn.register_forward_hook(lambda mod, args, out: outputs.__setitem__(mod.layer_idx, out[0]))
             for layer in model.model.layers]
    cache = model(_ids(n, seed=2), use_cache=True).past_key_values
    for h in hooks:
        h.remove()
    stats = last_stats(model)
    assert sorted(recorded) == sorted(outputs) == [0, 1, 2, 3]
    for i, (q, k, v) in recorded.items():
        assert torch.equal(k, _layer_keys(cache, i))          # the keys the cache holds: after RoPE
        if i in (2, 3):
            assert not stats[i].dense and stats[i].kept[0] < n
            want, want_stats = tsa_attention(q, k, v, CAPTURE, kernel, impl="naive")
            assert want_stats == stats[i]
        else:
            assert stats[i].dense
            want = get_backend(kernel)(q, k, v, scale=q.shape[-1] ** -0.5).transpose(1, 2)
        attn = model.model.layers[i].self_attn
        torch.testing.assert_close(outputs[i], attn.o_proj(want.reshape(1, n, -1)), rtol=0, atol=0)
    if kernel == FLEX_SMALL:                                   # the last call: layer 3, kept tokens only
        last = sparse_stats()
        assert last["seq_lens"] == (stats[3].kept[0],) and last["density"] < 1.0
