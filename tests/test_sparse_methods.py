"""Sparse methods as registry backends: callable, padded batches, stats, composition with TSA."""
import pytest
import torch

from tsa_bench.workload import Workload, synthetic_qkv
from tsa_core import TSAConfig, tsa_attention
from tsa_core.backends import AttentionBackend, available_backends, get_backend, list_backends
from tsa_core.backends.dense import math_attention
from tsa_core.pipeline import NAIVE_OPS
from tsa_core.selection import layer_budget
from tsa_core.sparse import estimate_pattern, last_stats, run_with_pattern, sparse_attention
from tsa_core.sparse.block_sparse import block_sparse_attention_naive

SMALL = {
    "flexprefill": dict(block_size=16, min_budget=32),
    "xattention": dict(block_size=16, stride=4),
    "minference": dict(block_size=16, last_q=16, sink_columns=4, local_diagonals=8, min_vertical=4,
                       min_slash=8),
}
METHODS = [pytest.param(m, id=m) for m in SMALL]


@pytest.fixture(scope="module")
def qkv():
    return synthetic_qkv(2, 2, 1, 90, 16, workload=Workload(seed=11))


def test_registry_entries():
    sparse = list_backends("sparse")
    for name in ("flexprefill", "xattention", "minference", "flexprefill-flex", "xattention-flex"):
        assert name in sparse and sparse[name].kind == "sparse"
    assert {"flexprefill", "xattention", "minference"} <= set(available_backends("cpu", "sparse"))
    assert "flexprefill-flex" not in available_backends("cpu", "sparse")


@pytest.mark.parametrize("name", METHODS)
def test_registry_entry_callable(qkv, name):
    """The registry entries (default parameters) run and report their density; 40 tokens are
    less than one default block, so every method computes dense causal attention there."""
    q, k, v = (t[:1, :, :40] for t in qkv)
    out = get_backend(name)(q, k, v, scale=0.3)            # not 1/sqrt(D): a dropped scale shows
    torch.testing.assert_close(out, math_attention(q, k, v, scale=0.3), atol=2e-5, rtol=1e-4)
    st = last_stats()
    assert st["method"] == name and st["density"] == pytest.approx(1.0)


@pytest.mark.parametrize("name", METHODS)
def test_backend_matches_reference_pipeline(qkv, name):
    """Triton estimation + kernel == naive estimation + masked dense, through the backend."""
    q, k, v = qkv
    stats = {}
    out = sparse_attention(q, k, v, scale=0.25, method=name, stats=stats, **SMALL[name])
    ref = sparse_attention(q, k, v, scale=0.25, method=name, impl="naive", **SMALL[name])
    torch.testing.assert_close(out, ref, atol=2e-5, rtol=1e-4)
    assert 0.0 < stats["density"] < 1.0 and len(stats["density_per_element"]) == 2


def test_two_stages_compose(qkv):
    q, k, v = qkv
    pattern = estimate_pattern("flexprefill", q, k, impl="naive", **SMALL["flexprefill"])
    staged = run_with_pattern(q, k, v, pattern, scale=0.25, impl="naive")
    whole = sparse_attention(q, k, v, scale=0.25, method="flexprefill", impl="naive", **SMALL["flexprefill"])
    torch.testing.assert_close(staged, whole)


def test_valid_len_uses_each_elements_prefix(qkv):
    """Padded batch: element b equals running alone on its valid prefix; padding rows are 0."""
    q, k, v = qkv
    valid = torch.tensor([90, 61])
    prm = SMALL["flexprefill"]
    out = sparse_attention(q, k, v, scale=0.25, valid_len=valid, method="flexprefill", impl="naive", **prm)
    assert last_stats()["seq_lens"] == (90, 61)
    alone = sparse_attention(q[1:, :, :61], k[1:, :, :61], v[1:, :, :61], scale=0.25,
                             method="flexprefill", impl="naive", **prm)
    torch.testing.assert_close(out[1:, :, :61], alone)
    assert torch.equal(out[1, :, 61:], torch.zeros_like(out[1, :, 61:]))


def test_bad_parameters_raise(qkv):
    q, k, v = qkv
    with pytest.raises(ValueError, match="unknown sparse method"):
        sparse_attention(q, k, v, scale=0.25, method="nope")
    with pytest.raises(ValueError, match="bad parameter"):
        sparse_attention(q, k, v, scale=0.25, method="flexprefill", stride=4)
    with pytest.raises(ValueError, match="valid_len"):
        sparse_attention(q, k, v, scale=0.25, valid_len=torch.tensor([90, 0]), method="minference")


@pytest.mark.parametrize("name", METHODS)
def test_composition_with_tsa(name):
    """tsa_attention(backend=<method>) == the method's reference on the gathered sequence."""
    q, k, v = synthetic_qkv(2, 2, 1, 120, 16, workload=Workload(seed=13))
    cfg = TSAConfig(tau=0.05, window=16, min_keep=32)
    be = AttentionBackend(f"test-{name}", "tsa_core.sparse.methods:sparse_attention", kind="sparse",
                          devices=("cpu",), options={"method": name, **SMALL[name]})
    out, st = tsa_attention(q, k, v, cfg, backend=be, impl="naive", scale=0.25)
    assert not st.dense
    # the reference: the same TSA selection, then the method's naive path per element
    ops = NAIVE_OPS
    scores = ops.score(q, k, cfg.window, 0.25)
    pooled, layer = ops.pool(scores, cfg.pool_kernel)
    keep, _ = layer_budget(layer, cfg)
    order = ops.select(pooled, keep, q.shape[2])
    n_kept = keep + cfg.window
    qc, kc, vc = ops.compress(q, k, v, order, int(n_kept.max()))
    out_c = torch.zeros_like(qc)
    for b, n in enumerate(n_kept.tolist()):
        pattern = estimate_pattern(name, qc[b:b + 1, :, :n], kc[b:b + 1, :, :n], scale=0.25, impl="naive",
                                   **SMALL[name])
        out_c[b:b + 1, :, :n] = block_sparse_attention_naive(qc[b:b + 1, :, :n], kc[b:b + 1, :, :n],
                                                             vc[b:b + 1, :, :n], pattern, scale=0.25)
    ref = ops.decompress(out_c, order, n_kept, q.shape[2])
    torch.testing.assert_close(out, ref, atol=2e-5, rtol=1e-4)
    assert last_stats()["seq_lens"] == tuple(st.kept)


def test_composition_registry_name_runs():
    """The exact call of the issue, on tiny inputs: default FlexPrefill runs dense on the
    compressed sequence there, so the result is TSA with a dense backend."""
    q, k, v = synthetic_qkv(1, 2, 1, 80, 16, workload=Workload(seed=2))
    cfg = TSAConfig(tau=0.05, window=16, min_keep=32)
    out, st = tsa_attention(q, k, v, cfg, backend="flexprefill")
    dense, st_dense = tsa_attention(q, k, v, cfg, backend="math")
    assert not st.dense and st.kept == st_dense.kept
    torch.testing.assert_close(out, dense, atol=2e-5, rtol=1e-4)
    assert torch.equal(out == 0, dense == 0)                 # the same dropped rows, exact zeros


@pytest.mark.gpu
@pytest.mark.parametrize("name", ["flexprefill", "xattention"])
def test_flex_executor_matches_triton_gpu(name):
    q, k, v = synthetic_qkv(1, 8, 2, 2048, 128, device="cuda", dtype=torch.bfloat16)
    pattern = estimate_pattern(name, q, k, block_size=128)
    a = run_with_pattern(q, k, v, pattern, executor="triton")
    b = run_with_pattern(q, k, v, pattern, executor="flex")
    assert ((a.float() - b.float()).pow(2).mean().sqrt() / b.float().pow(2).mean().sqrt()).item() < 1e-2


def test_flex_block_mask_holds_the_same_blocks(qkv):
    """The FlexAttention BlockMask built from the lists marks exactly the pattern's blocks
    (diagonal blocks partial, the others full); construction only, no kernel."""
    from tsa_core.sparse.methods import flex_block_mask
    q, k, _ = qkv
    pattern = estimate_pattern("xattention", q[:, :, :64], k[:, :, :64], impl="naive", **SMALL["xattention"])
    bm = flex_block_mask(pattern, "cpu")
    n = pattern.num_blocks
    eye = torch.eye(n, dtype=torch.bool)
    part = torch.zeros_like(pattern.block_mask)
    full = torch.zeros_like(pattern.block_mask)
    for b in range(pattern.batch):
        for h in range(pattern.heads):
            for r in range(n):
                part[b, h, r, bm.kv_indices[b, h, r, : bm.kv_num_blocks[b, h, r]].long()] = True
                full[b, h, r, bm.full_kv_indices[b, h, r, : bm.full_kv_num_blocks[b, h, r]].long()] = True
    assert torch.equal(part, pattern.block_mask & eye)
    assert torch.equal(full, pattern.block_mask & ~eye)


def test_stages_of_a_registry_entry(qkv):
    """stages(entry) = the entry's own estimation and execution, composed = the backend call."""
    from tsa_core.sparse.methods import stages
    q, k, v = qkv
    be = AttentionBackend("test-stages", "tsa_core.sparse.methods:sparse_attention", kind="sparse",
                          devices=("cpu",), options={"method": "xattention", "impl": "naive", **SMALL["xattention"]})
    estimate, run = stages(be)
    pattern = estimate(q[:1], k[:1], 0.25)
    staged = run(q[:1], k[:1], v[:1], pattern, 0.25)
    torch.testing.assert_close(staged, be(q[:1], k[:1], v[:1], scale=0.25))
    with pytest.raises(ValueError, match="not a sparse-method entry"):
        stages("sdpa")


@pytest.mark.gpu
@pytest.mark.parametrize("name", ["flexprefill", "xattention", "minference"])
def test_methods_at_gemma3_head_width_gpu(name):
    """Every method with its default parameters at Gemma-3-270M's attention shape (4 query heads
    on one KV head, 256 wide, bf16, a length off every tile), as the composed runs on Gemma at 32K
    call it: the Triton estimation and the block-sparse kernel, against the masked-dense
    reference on the same pattern (estimation in bf16 and fp32 may differ near a threshold)."""
    q, k, v = synthetic_qkv(1, 4, 1, 4100, 256, device="cuda", dtype=torch.bfloat16, workload=Workload(seed=5))
    stats = {}
    out = sparse_attention(q, k, v, scale=256 ** -0.5, method=name, stats=stats)
    assert torch.isfinite(out).all() and 0.0 < stats["density"] <= 1.0
    pattern = estimate_pattern(name, q, k, scale=256 ** -0.5)
    ref = run_with_pattern(q.float(), k.float(), v.float(), pattern, scale=256 ** -0.5, impl="naive")
    again = run_with_pattern(q, k, v, pattern, scale=256 ** -0.5)
    for got in (out, again):
        err = (got.float() - ref).pow(2).mean().sqrt() / ref.pow(2).mean().sqrt()
        assert err.item() < 2e-2, err.item()
