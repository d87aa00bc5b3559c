"""``TSAConfig.dropped``: exact zeros (the paper) or local-window attention in the dropped rows."""
import dataclasses

import pytest
import torch

import tsa_core.dropped as dropped_mod
from tsa_core import TSAConfig, get_backend, tsa_attention
from tsa_core.config import parse_dropped
from tsa_core.dropped import BLOCK, bytes_per_block, fill_dropped_local
from tsa_core.pipeline import resolve_ops
from tsa_core.selection import layer_budget
from tsa_bench.workload import Workload, synthetic_qkv

CFG = TSAConfig(tau=0.05, window=8, min_keep=8, pool_kernel=3)


def _qkv(B=2, Hq=6, Hkv=2, L=130, D=16, seed=0, dtype=torch.float32):
    return synthetic_qkv(B, Hq, Hkv, L, D, workload=Workload(tail=2.0, seed=seed), dtype=dtype)


def band_reference(q, k, v, w, scale):
    """``[B, L, Hq, D]`` float64: every query's causal attention over keys ``max(0, i-w+1)..i``,
    as a full ``L x L`` softmax with a band mask (K/V repeated per query head, ``h -> h // G``)."""
    G = q.shape[1] // k.shape[1]
    L = q.shape[2]
    i = torch.arange(L)
    band = (i[None, :] <= i[:, None]) & (i[None, :] > i[:, None] - w)
    kk, vv = k.double().repeat_interleave(G, dim=1), v.double().repeat_interleave(G, dim=1)
    logits = (q.double() @ kk.transpose(-1, -2)) * scale
    probs = torch.softmax(logits.masked_fill(~band, float("-inf")), dim=-1)
    return (probs @ vv).transpose(1, 2)


# -- the spec ----------------------------------------------------------------------------------
@pytest.mark.parametrize("spec, window", [("zero", 0), ("local:1", 1), ("local:64", 64), ("local:4096", 4096)],
                         ids=["zero", "local-1", "local-64", "local-4096"])
def test_valid_specs_parse(spec, window):
    assert parse_dropped(spec) == window
    assert TSAConfig(dropped=spec).local_window == window


@pytest.mark.parametrize("spec", ["local:0", "local:x", "foo", "local:", "local:-3", "local:1.5", "local:064",
                                  " local:64", "Zero", "", 64, None],
                         ids=["zero-window", "not-int", "unknown", "empty-window", "negative", "float", "leading-0",
                              "space", "case", "empty", "int", "none"])
def test_invalid_spec_names_the_field(spec):
    with pytest.raises(ValueError, match="dropped"):
        TSAConfig(dropped=spec)


def test_default_is_zero():
    assert TSAConfig().dropped == "zero" and TSAConfig().local_window == 0


# -- the pipeline ------------------------------------------------------------------------------
@pytest.mark.parametrize("impl", ["naive", "triton"])
def test_zero_is_the_scatter_of_the_kept_attention(impl):
    """``dropped="zero"``: the output is exactly the ops composed by hand (score, pool, budget,
    select, gather, kernel, scatter): nothing else touches it, dropped rows are exact zeros."""
    q, k, v = _qkv()
    out, stats = tsa_attention(q, k, v, dataclasses.replace(CFG, dropped="zero"), "math", impl=impl)
    ops, W, scale = resolve_ops(impl, q.device), CFG.window, q.shape[-1] ** -0.5
    pooled, layer = ops.pool(ops.score(q, k, W, scale), CFG.pool_kernel)
    keep, _ = layer_budget(layer, CFG)
    order = ops.select(pooled, keep, q.shape[2])
    qc, kc, vc = ops.compress(q, k, v, order, int(keep.max()) + W)
    ref = ops.decompress(get_backend("math")(qc, kc, vc, scale=scale, valid_len=keep + W), order, keep + W, q.shape[2])
    assert not stats.dense and stats.budget == tuple(keep.tolist())
    assert torch.equal(out, ref)
    assert (out == 0).all(-1).any()


LOCAL_CASES = {                      # id: (impl, L, w, dtype)
    "naive-L77-w64": ("naive", 77, 64, torch.float32),        # most dropped positions have i < w
    "naive-L130-w5": ("naive", 130, 5, torch.float32),
    "naive-L130-w1": ("naive", 130, 1, torch.float32),        # w = 1: the row is v at its own position
    "naive-L130-w200": ("naive", 130, 200, torch.float32),    # w > L: full causal attention
    "triton-L77-w64": ("triton", 77, 64, torch.float32),
    "triton-L130-w5": ("triton", 130, 5, torch.float32),
    "naive-L130-w9-bf16": ("naive", 130, 9, torch.bfloat16),
}


@pytest.mark.parametrize("impl, L, w, dtype", list(LOCAL_CASES.values()), ids=list(LOCAL_CASES))
def test_local_keeps_kept_rows_and_fills_dropped_rows(impl, L, w, dtype, poison):
    """GQA (6 query heads on 2 KV heads), batch 2 with a different budget per element, ``torch.empty``
    NaN-poisoned: kept rows are bit-identical to ``"zero"``, dropped rows are the band reference."""
    q, k, v = _qkv(L=L, seed=1, dtype=dtype)                            # budgets (23, 8) / (35, 20)
    zero, s0 = tsa_attention(q, k, v, CFG, "math", impl=impl)
    local, s1 = tsa_attention(q, k, v, dataclasses.replace(CFG, dropped=f"local:{w}"), "math", impl=impl)
    assert s1 == s0 and not s0.dense and s0.budget[0] != s0.budget[1]
    dropped = (zero == 0).all(-1)                                        # [B, L, Hq]
    assert dropped.any() and (~dropped).any()
    assert torch.equal(local[~dropped], zero[~dropped])
    ref = band_reference(q, k, v, w, q.shape[-1] ** -0.5)
    tol = dict(rtol=1e-5, atol=1e-5) if dtype == torch.float32 else dict(rtol=1e-2, atol=1e-2)
    torch.testing.assert_close(local[dropped].double(), ref[dropped].to(dtype).double(), **tol)


def _random_order(gen, B, Hq, L, n_kept):
    """A selection permutation: per (b, h), ``n_kept[b]`` random positions ascending, then the rest."""
    order = torch.empty(B, Hq, L, dtype=torch.int32)
    for b in range(B):
        for h in range(Hq):
            perm = torch.randperm(L, generator=gen)
            order[b, h] = torch.cat([perm[:n_kept[b]].sort().values, perm[n_kept[b]:].sort().values]).int()
    return order


@pytest.mark.parametrize("chunk_len", [None, BLOCK, 2 * BLOCK], ids=["default", "one-block", "two-blocks"])
def test_fill_writes_exactly_the_dropped_rows(chunk_len, gen):
    """On an output poisoned with NaN (77 positions: a partial last block): the dropped rows hold
    the band reference (none left unwritten, whatever the chunking), the kept rows still hold NaN
    (none overwritten)."""
    B, Hq, L, w = 2, 6, 77, 13
    q, k, v = _qkv(L=L, seed=5)
    n_kept = [30, 51]
    order = _random_order(gen, B, Hq, L, n_kept)
    out = torch.full((B, L, Hq, q.shape[-1]), float("nan"))
    fill_dropped_local(out, q, k, v, order, n_kept, w, 0.3, chunk_len=chunk_len)
    dropped = torch.zeros(B, Hq, L, dtype=torch.bool)
    for b in range(B):
        dropped[b].scatter_(1, order[b, :, n_kept[b]:].long(), True)
    dropped = dropped.transpose(1, 2)                                    # [B, L, Hq]
    assert out[~dropped].isnan().all()
    torch.testing.assert_close(out[dropped].double(), band_reference(q, k, v, w, 0.3)[dropped], rtol=1e-5, atol=1e-5)


def test_chunks_stay_within_the_memory_budget(gen, monkeypatch):
    """Every chunk's temporaries fit in ``CHUNK_BYTES``, and the chunks tile the positions once."""
    B, Hq, Hkv, L, D, w = 1, 6, 2, 150, 16, 13
    q, k, v = _qkv(B=B, L=L, D=D, seed=2)
    order = _random_order(gen, B, Hq, L, [20])
    budget = 2 * bytes_per_block(w, Hq, Hkv, D) + 5
    monkeypatch.setattr(dropped_mod, "CHUNK_BYTES", budget)
    spans, real = [], dropped_mod.local_window_attention

    def spy(q, k, v, b, start, stop, window, scale):
        spans.append((start, stop))
        return real(q, k, v, b, start, stop, window, scale)

    monkeypatch.setattr(dropped_mod, "local_window_attention", spy)
    fill_dropped_local(torch.zeros(B, L, Hq, D), q, k, v, order, [20], w, 0.25)
    assert max(-(-(stop - start) // BLOCK) for start, stop in spans) * bytes_per_block(w, Hq, Hkv, D) <= budget
    assert [p for start, stop in spans for p in range(start, stop)] == list(range(L)) and len(spans) > 1


@pytest.mark.parametrize("kwargs, match", [
    (dict(window=0), "window"), (dict(n_kept=[0, 5]), "n_kept"), (dict(n_kept=[5]), "n_kept"),
    (dict(out=torch.zeros(2, 77, 6, 8)), "out"), (dict(order=torch.zeros(2, 6, 77, dtype=torch.int64)), "order"),
    (dict(chunk_len=0), "chunk_len"), (dict(chunk_len=BLOCK + 1), "chunk_len"),
], ids=["window-0", "n_kept-0", "n_kept-short", "out-shape", "order-dtype", "chunk-0", "chunk-not-blocks"])
def test_fill_rejects_bad_arguments(kwargs, match, gen):
    q, k, v = _qkv(L=77)
    args = dict(out=torch.zeros(2, 77, 6, 16), order=_random_order(gen, 2, 6, 77, [30, 40]), n_kept=[30, 40],
                window=4, chunk_len=None)
    args.update(kwargs)
    with pytest.raises(ValueError, match=match):
        fill_dropped_local(args["out"], q, k, v, args["order"], args["n_kept"], args["window"], 0.25,
                           chunk_len=args["chunk_len"])


# -- through the transformers integration ------------------------------------------------------
VOCAB = 128
TINY = TSAConfig(window=16, min_keep=16, pool_kernel=3, keep_ratio=0.5)


@pytest.fixture(scope="module")
def tiny_llama():
    """A tiny random GQA Llama (6 query heads on 2 KV heads, head_dim 16)."""
    transformers = pytest.importorskip("transformers")
    cfg = transformers.AutoConfig.for_model("llama", vocab_size=VOCAB, hidden_size=96, intermediate_size=128,
                                            num_hidden_layers=2, num_attention_heads=6, num_key_value_heads=2,
                                            max_position_embeddings=512)
    with torch.random.fork_rng():
        torch.manual_seed(11)
        return transformers.AutoModelForCausalLM.from_config(cfg, dtype=torch.float32).eval()


@torch.no_grad()
def test_configure_tsa_carries_dropped_to_the_layers(tiny_llama, one_thread, monkeypatch):
    """``configure_tsa(tsa_config=TSAConfig(..., dropped="local:8"))``: the settings carry it, the
    sparse layer runs TSA with it (its dropped rows are filled), the selection stats are those of
    ``"zero"``, and the logits change; back to ``"zero"``, the settings leave the field out."""
    import tsa_bench.hf.attention as attention
    from tsa_bench.hf import configure_tsa, last_stats

    seen, real = [], attention.tsa_attention

    def spy(q, k, v, cfg, *a, **kw):
        out, stats = real(q, k, v, cfg, *a, **kw)
        seen.append((cfg.dropped, (out == 0).all(-1).any().item()))
        return out, stats

    monkeypatch.setattr(attention, "tsa_attention", spy)
    ids = torch.randint(0, VOCAB, (1, 160), generator=torch.Generator().manual_seed(3))
    runs = {}
    for spec in ("zero", "local:8"):
        plan = configure_tsa(tiny_llama, method="tsa", tsa_config=dataclasses.replace(TINY, dropped=spec),
                             sparse_layers=[1], impl="naive", weights="random")
        assert plan.tsa.dropped == spec
        runs[spec] = (tiny_llama(ids).logits, last_stats(tiny_llama)[1], tiny_llama.config.tsa_settings["tsa"])
    assert seen == [("zero", True), ("local:8", False)]
    assert runs["local:8"][2]["dropped"] == "local:8" and "dropped" not in runs["zero"][2]
    assert runs["local:8"][1] == runs["zero"][1] and not runs["zero"][1].dense
    assert not torch.allclose(runs["local:8"][0], runs["zero"][0])
