"""The batched greedy engine equals plain ``model.generate`` token for token (CPU, fp32)."""
import pytest
import torch

from tsa_bench.commands.ruler import greedy_generate
from tsa_bench.engine import BatchedGreedy, make_generate_fn
from tsa_bench.hf import last_stats, load_model
from tsa_core import TSAConfig

LENGTHS = (37, 80, 55, 12, 64, 101, 23)
MAX_NEW = (20, 9, 30, 5, 17, 11, 1)


def _prompts(vocab, seed=0, lengths=LENGTHS, low=3):
    g = torch.Generator().manual_seed(seed)
    return [torch.randint(low, vocab, (n,), generator=g).tolist() for n in lengths]


def _reference(model, prompts, max_new):
    return [greedy_generate(model, p, k, "cpu")[0] for p, k in zip(prompts, max_new)]


@pytest.fixture(scope="module")
def llama():
    model, _ = load_model("tiny-llama", weights="random", dtype="fp32", device="cpu", method="dense", seed=3)
    return model


@pytest.fixture(scope="module")
def gemma():
    from transformers import Gemma3TextConfig
    cfg = Gemma3TextConfig(vocab_size=300, hidden_size=64, intermediate_size=128, num_hidden_layers=4,
                           num_attention_heads=4, num_key_value_heads=1, head_dim=16, sliding_window=16,
                           layer_types=["sliding_attention", "sliding_attention", "full_attention",
                                        "sliding_attention"],
                           max_position_embeddings=512, query_pre_attn_scalar=16)
    model, _ = load_model(cfg, weights="random", dtype="fp32", device="cpu", method="dense", seed=5)
    return model


@pytest.mark.parametrize("batch", [1, 3, 16], ids=["b1", "b3", "b16-more-rows-than-samples"])
def test_llama_equals_generate(llama, batch):
    prompts = _prompts(llama.config.vocab_size)
    ref = _reference(llama, prompts, MAX_NEW)
    out = BatchedGreedy(llama, batch_size=batch, check_every=4, eos_ids=[]).generate(prompts, MAX_NEW)
    assert [o.tokens for o in out] == ref
    assert [len(o.tokens) for o in out] == list(MAX_NEW)


def test_eos_stops_each_row_like_generate(llama):
    prompts = _prompts(llama.config.vocab_size, seed=1)
    free = _reference(llama, prompts, [12] * len(prompts))
    eos = free[0][4]                      # a token row 0 produces at step 4: it must stop there
    llama.generation_config.eos_token_id = eos
    try:
        ref = _reference(llama, prompts, [12] * len(prompts))
        out = BatchedGreedy(llama, batch_size=4, check_every=3).generate(prompts, [12] * len(prompts))
    finally:
        llama.generation_config.eos_token_id = None
    assert ref[0][-1] == eos and len(ref[0]) <= 5
    assert [o.tokens for o in out] == ref


def test_hybrid_sliding_window_equals_generate(gemma):
    """Gemma-3-style layers: sliding-window (16) layers decode with the window mask, prompts longer
    than the window; a mask that ignored the window would change the tokens."""
    prompts = _prompts(300, seed=2)
    ref = _reference(gemma, prompts, MAX_NEW)
    out = BatchedGreedy(gemma, batch_size=3, check_every=5, eos_ids=[]).generate(prompts, MAX_NEW)
    assert [o.tokens for o in out] == ref


def test_tsa_prefill_per_sample(llama):
    """With TSA the prefill is the same one-sequence forward as generate's: equal tokens, and the
    model's last_stats after each prefill are that sample's (its own length, tokens dropped)."""
    from tsa_bench.hf import configure_tsa
    cfg = TSAConfig(tau=0.3, window=8, min_keep=8)
    configure_tsa(llama, method="tsa", tsa_config=cfg, sparse_layers=[1, 3])
    try:
        prompts = _prompts(llama.config.vocab_size, seed=4, lengths=(90, 70, 120))
        ref = _reference(llama, prompts, [6, 6, 6])
        seen = {}
        eng = BatchedGreedy(llama, batch_size=2, eos_ids=[],
                            on_prefill=lambda i: seen.setdefault(i, last_stats(llama)[1]))
        out = eng.generate(prompts, [6, 6, 6])
    finally:
        configure_tsa(llama, method="dense")
    assert [o.tokens for o in out] == ref
    assert sorted(seen) == [0, 1, 2]
    assert [s.seq_len for s in (seen[0], seen[1], seen[2])] == [90, 70, 120]
    assert all(not s.dense and min(s.kept) < s.seq_len for s in seen.values())


def test_generate_fn_adapter(llama):
    prompts = _prompts(llama.config.vocab_size, seed=6, lengths=(40,))
    fn = make_generate_fn(BatchedGreedy(llama, batch_size=2, eos_ids=[]))
    toks, secs = fn(llama, prompts[0], 7, "cpu")
    assert toks == _reference(llama, prompts, [7])[0] and secs > 0


@pytest.mark.parametrize("kw,msg", [(dict(batch_size=0), "batch_size"), (dict(check_every=0), "check_every")],
                         ids=["batch", "check"])
def test_bad_settings(llama, kw, msg):
    with pytest.raises(ValueError, match=msg):
        BatchedGreedy(llama, **kw)


def test_bad_inputs(llama):
    eng = BatchedGreedy(llama, batch_size=2)
    with pytest.raises(ValueError, match="max_new_tokens"):
        eng.generate([[1, 2, 3]], [0])
    with pytest.raises(ValueError, match="empty prompt"):
        eng.generate([[]], [3])
    with pytest.raises(ValueError, match="differ in length"):
        eng.generate([[1, 2]], [3, 4])


def test_min_cap_gives_every_batch_one_cache_shape(llama):
    """Batches whose longest request crosses a multiple of ``cap_multiple`` used to get a new
    decode state (and on CUDA a new graph capture) each time; with ``min_cap`` covering the run
    they share one, and the tokens are unchanged."""
    prompts = _prompts(llama.config.vocab_size, seed=4, lengths=(10, 70, 12, 75))
    max_new = [6, 6, 6, 6]
    ref = _reference(llama, prompts, max_new)
    eng = BatchedGreedy(llama, batch_size=2, cap_multiple=64, eos_ids=[])
    eng.min_cap = 90
    seen = set()
    out = []
    for i in range(0, 4, 2):
        out += eng.generate(prompts[i:i + 2], max_new[i:i + 2])
        seen.add(id(eng._state))
    assert [o.tokens for o in out] == ref
    assert len(seen) == 1 and eng._state.cap == 128
    # without min_cap a short batch and a long batch get different cache lengths (a new state)
    eng = BatchedGreedy(llama, batch_size=2, cap_multiple=64, eos_ids=[])
    eng.generate([prompts[0]], [6])
    short = eng._state.cap
    eng.generate([prompts[1]], [6])
    assert (short, eng._state.cap) == (64, 128)


@pytest.mark.parametrize("mask_kind", ["bool", "additive", "none"])
def test_grouped_decode_attention_equals_repeated_kv(mask_kind):
    """GQA (6 query heads on 2 KV heads), 3 rows with their own valid lengths, a cache length
    off every power of two: equal to softmax attention over K/V repeated per query head."""
    from tsa_bench.hf.attention import grouped_decode_attention
    g = torch.Generator().manual_seed(0)
    B, Hq, Hkv, S, D = 3, 6, 2, 37, 8
    q, k, v = (torch.randn(*shape, generator=g) for shape in ((B, Hq, 1, D), (B, Hkv, S, D), (B, Hkv, S, D)))
    valid = torch.tensor([5, 37, 20])
    keep = (torch.arange(S).view(1, S) < valid.view(B, 1)).view(B, 1, 1, S)
    mask = {"bool": keep, "additive": torch.where(keep, 0.0, float("-inf")), "none": None}[mask_kind]
    out = grouped_decode_attention(q, k, v, mask, scaling=0.3)
    kr, vr = (t.repeat_interleave(Hq // Hkv, dim=1).double() for t in (k, v))
    s = (q.double() @ kr.transpose(-1, -2)) * 0.3
    if mask is not None:
        s = s.masked_fill(~keep, float("-inf"))
    ref = (torch.softmax(s, -1) @ vr).transpose(1, 2)
    assert out.shape == (B, 1, Hq, D)
    torch.testing.assert_close(out.double(), ref, rtol=1e-5, atol=1e-6)


def test_engine_with_grouped_decode_equals_generate(llama, gemma, monkeypatch):
    """The grouped decode path in the engine (tiny Llama with GQA; Gemma-style hybrid with a
    banded sliding-window mask) runs every decode step and gives generate's tokens; the setting
    is checked."""
    import tsa_bench.hf.attention as A
    calls = []
    real = A.grouped_decode_attention
    monkeypatch.setattr(A, "grouped_decode_attention", lambda *a, **k: calls.append(1) or real(*a, **k))
    for model, seed in ((llama, 6), (gemma, 7)):
        prompts = _prompts(model.config.vocab_size, seed=seed)
        ref = _reference(model, prompts, MAX_NEW)
        eng = BatchedGreedy(model, batch_size=3, eos_ids=[], decode_attention="grouped")
        try:
            calls.clear()
            assert [o.tokens for o in eng.generate(prompts, MAX_NEW)] == ref
            assert len(calls) >= model.config.num_hidden_layers * (max(MAX_NEW) - 1)
        finally:
            BatchedGreedy(model, batch_size=1, decode_attention="sdpa")
    with pytest.raises(ValueError, match="decode attention must be one of"):
        BatchedGreedy(llama, decode_attention="flash")


@pytest.mark.parametrize("batch, check", [(1, 1), (2, 3), (3, 4), (16, 2)],
                         ids=["b1", "b2-check3", "b3-check4", "b16-more-rows-than-samples"])
def test_refill_equals_generate(llama, batch, check):
    """Continuous batching: rows take the next sample as theirs finish (EOS or budget), in any
    order; every sample's tokens are generate's, each prefill is reported once, in order."""
    prompts = _prompts(llama.config.vocab_size, seed=8)
    free = _reference(llama, prompts, MAX_NEW)
    eos = free[2][3]                       # row of sample 2 stops early, others run to their budget
    llama.generation_config.eos_token_id = eos
    try:
        ref = _reference(llama, prompts, MAX_NEW)
        seen = []
        eng = BatchedGreedy(llama, batch_size=batch, check_every=check, refill=True, on_prefill=seen.append)
        out = eng.generate(prompts, MAX_NEW)
    finally:
        llama.generation_config.eos_token_id = None
    assert [o.tokens for o in out] == ref
    assert any(len(r) < k for r, k in zip(ref, MAX_NEW))          # EOS did stop a sample early
    assert seen == list(range(len(prompts)))
    assert all(o.prefill_s > 0 and o.decode_s >= 0 for o in out)
    assert sum(o.decode_s for o in out) > 0                         # decode time is shared out


def test_refill_hybrid_and_grouped_equal_generate(gemma):
    """Refill on the Gemma-style hybrid (banded sliding-window masks per row) with the grouped
    decode attention: a refilled row must not see its previous sample's cache."""
    prompts = _prompts(gemma.config.vocab_size, seed=9, lengths=(40, 9, 33, 21, 50, 12))
    max_new = [7, 25, 3, 12, 9, 18]
    ref = _reference(gemma, prompts, max_new)
    try:
        out = BatchedGreedy(gemma, batch_size=2, check_every=2, eos_ids=[], refill=True,
                            decode_attention="grouped").generate(prompts, max_new)
    finally:
        BatchedGreedy(gemma, batch_size=1, decode_attention="sdpa")
    assert [o.tokens for o in out] == ref


@pytest.mark.gpu
def test_gpu_graphs_refill_and_grouped_equal_the_eager_engine():
    """CUDA graphs (captured once, replayed across refills) give the tokens of the same engine
    run eagerly, fp32, for SDPA and grouped decode, with and without refill."""
    model, _ = load_model("tiny-llama", weights="random", dtype="fp32", device="cuda", method="dense", seed=3)
    prompts = _prompts(model.config.vocab_size, seed=10)
    want = BatchedGreedy(model, batch_size=3, cuda_graphs=False, eos_ids=[]).generate(prompts, MAX_NEW)
    for refill in (False, True):
        for attn in ("sdpa", "grouped"):
            eng = BatchedGreedy(model, batch_size=3, eos_ids=[], refill=refill, decode_attention=attn)
            got = eng.generate(prompts, MAX_NEW)
            assert [g.tokens for g in got] == [w.tokens for w in want], (refill, attn)
            assert eng.graph_captures == 1
