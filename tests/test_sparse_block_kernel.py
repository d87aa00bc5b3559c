"""Block-sparse attention: the Triton kernel vs the masked-dense reference, and the pattern."""
import pytest
import torch

from tsa_core.backends.dense import math_attention
from tsa_core.sparse.block_sparse import block_sparse_attention, block_sparse_attention_naive
from tsa_core.sparse.pattern import BlockPattern, causal_block_grid, mask_to_lists, mask_to_lists_torch


def _qkv(gen, B, Hq, Hkv, L, D, dtype=torch.float32):
    q = torch.randn(B, Hq, L, D, generator=gen).to(dtype)
    k = torch.randn(B, Hkv, L, D, generator=gen).to(dtype)
    v = torch.randn(B, Hkv, L, D, generator=gen).to(dtype)
    return q, k, v


def _random_pattern(gen, B, H, L, bs, p=0.4, n_cols=0):
    nb = -(-L // bs)
    mask = torch.rand(B, H, nb, nb, generator=gen) < p
    cols = None
    if n_cols:
        cols = torch.stack([torch.randperm(L, generator=gen)[:n_cols] for _ in range(B * H)]).view(B, H, n_cols)
    return BlockPattern.from_mask(mask, bs, L, cols=cols)


def _rms_ratio(a, b):
    return ((a.float() - b.float()).pow(2).mean().sqrt() / b.float().pow(2).mean().sqrt()).item()


SHAPES = [
    pytest.param(2, 4, 2, 83, 32, 16, id="B2-gqa2-L83-bs16"),
    pytest.param(1, 3, 1, 70, 16, 32, id="B1-mqa-L70-bs32"),
    pytest.param(2, 2, 2, 48, 24, 16, id="B2-mha-L48-D24"),
    pytest.param(1, 4, 1, 45, 256, 16, id="B1-gqa4-L45-D256"),      # Gemma-3's head: 4 x 256, one KV head
]


@pytest.mark.parametrize("B,Hq,Hkv,L,D,bs", SHAPES)
def test_kernel_matches_reference_blocks(gen, B, Hq, Hkv, L, D, bs):
    q, k, v = _qkv(gen, B, Hq, Hkv, L, D)
    pattern = _random_pattern(gen, B, Hq, L, bs)
    out = torch.full_like(q, float("nan"))
    block_sparse_attention(q, k, v, pattern, out=out)
    ref = block_sparse_attention_naive(q, k, v, pattern)
    assert not out.isnan().any()
    torch.testing.assert_close(out, ref, atol=2e-5, rtol=1e-4)


def test_kernel_matches_reference_with_columns(gen):
    q, k, v = _qkv(gen, 2, 4, 2, 83, 32)
    pattern = _random_pattern(gen, 2, 4, 83, 16, p=0.3, n_cols=9)
    out = torch.full_like(q, float("nan"))
    block_sparse_attention(q, k, v, pattern, out=out)
    torch.testing.assert_close(out, block_sparse_attention_naive(q, k, v, pattern), atol=2e-5, rtol=1e-4)


def test_kernel_matches_reference_with_many_columns(gen):
    """More columns than one ``BLOCK_N`` gather (100 columns, 32 per step: four passes of
    the column loop, the last one partial), many of them inside active blocks (skipped)."""
    B, Hq, Hkv, L, D, bs = 1, 2, 1, 300, 16, 32
    q, k, v = _qkv(gen, B, Hq, Hkv, L, D)
    pattern = _random_pattern(gen, B, Hq, L, bs, p=0.3, n_cols=100)
    assert int(pattern.col_cnt.max()) > 3 * 32
    inside = pattern.block_mask[0, 0, -1][pattern.cols[0, 0].long() // bs]
    assert inside.any() and not inside.all()          # last row: some columns skipped, some gathered
    out = torch.full_like(q, float("nan"))
    block_sparse_attention(q, k, v, pattern, out=out)
    torch.testing.assert_close(out, block_sparse_attention_naive(q, k, v, pattern), atol=2e-5, rtol=1e-4)


def test_kernel_subtiles_match(gen):
    """Tiles smaller than the pattern block (BLOCK_M = BLOCK_N = 16 inside 32-blocks)."""
    q, k, v = _qkv(gen, 1, 2, 1, 77, 16)
    pattern = _random_pattern(gen, 1, 2, 77, 32)
    out = torch.full_like(q, float("nan"))
    block_sparse_attention(q, k, v, pattern, out=out, block_m=16, block_n=16, num_warps=4, num_stages=2)
    torch.testing.assert_close(out, block_sparse_attention_naive(q, k, v, pattern), atol=2e-5, rtol=1e-4)


def test_kernel_fp16(gen):
    q, k, v = _qkv(gen, 1, 2, 1, 50, 32, torch.float16)
    pattern = _random_pattern(gen, 1, 2, 50, 16, p=0.5)
    out = torch.full_like(q, float("nan"))
    block_sparse_attention(q, k, v, pattern, out=out)
    assert _rms_ratio(out, block_sparse_attention_naive(q, k, v, pattern)) < 2e-3


def test_every_block_equals_dense_attention(gen):
    q, k, v = _qkv(gen, 2, 4, 2, 83, 32)
    pattern = BlockPattern.dense(2, 4, 83, 16, q.device)
    assert torch.allclose(pattern.density(), torch.ones(2, 4))
    dense = math_attention(q, k, v, scale=32 ** -0.5)
    out = torch.full_like(q, float("nan"))
    block_sparse_attention(q, k, v, pattern, out=out)
    torch.testing.assert_close(out, dense, atol=2e-5, rtol=1e-4)
    torch.testing.assert_close(block_sparse_attention_naive(q, k, v, pattern), dense, atol=2e-5, rtol=1e-4)


def test_rows_without_visible_keys_are_zero(gen):
    q, k, v = _qkv(gen, 1, 1, 1, 40, 16)
    mask = torch.zeros(1, 1, 3, 3, dtype=torch.bool)
    mask[0, 0, 2, 0] = True                      # only row block 2 attends (to block 0)
    pattern = BlockPattern.from_mask(mask, 16, 40)
    out = torch.full_like(q, float("nan"))
    block_sparse_attention(q, k, v, pattern, out=out)
    assert torch.equal(out[0, 0, :32], torch.zeros(32, 16))
    torch.testing.assert_close(out, block_sparse_attention_naive(q, k, v, pattern), atol=2e-5, rtol=1e-4)


@pytest.mark.parametrize("fn", [pytest.param(mask_to_lists, id="triton"), pytest.param(mask_to_lists_torch, id="torch")])
def test_mask_to_lists_roundtrip(gen, fn):
    mask = torch.rand(2, 3, 5, 5, generator=gen) < 0.5
    idx, cnt = fn(mask)
    assert torch.equal(cnt, mask.sum(-1).int())
    rebuilt = torch.zeros_like(mask)
    for b in range(2):
        for h in range(3):
            for r in range(5):
                row = idx[b, h, r, : cnt[b, h, r]]
                assert torch.equal(row, row.sort().values)
                rebuilt[b, h, r, row.long()] = True
    assert torch.equal(rebuilt, mask)


def test_pattern_drops_blocks_above_diagonal():
    mask = torch.ones(1, 1, 4, 4, dtype=torch.bool)
    pattern = BlockPattern.from_mask(mask, 16, 64)
    assert torch.equal(pattern.block_mask[0, 0], causal_block_grid(4, 4, "cpu"))
    assert pattern.density().item() == pytest.approx(1.0)


def test_pattern_validation():
    with pytest.raises(ValueError, match="block_size"):
        BlockPattern.from_mask(torch.ones(1, 1, 2, 2, dtype=torch.bool), 12, 24)
    with pytest.raises(ValueError, match="block_mask must end with"):
        BlockPattern.from_mask(torch.ones(1, 1, 2, 2, dtype=torch.bool), 16, 40)
    with pytest.raises(ValueError, match="distinct"):
        BlockPattern.from_mask(torch.ones(1, 1, 2, 2, dtype=torch.bool), 16, 32,
                               cols=torch.tensor([[[3, 3]]]))


def test_kernel_rejects_mismatched_pattern(gen):
    q, k, v = _qkv(gen, 1, 2, 1, 32, 16)
    pattern = BlockPattern.dense(1, 4, 32, 16, "cpu")
    with pytest.raises(ValueError, match="pattern is for"):
        block_sparse_attention(q, k, v, pattern)


def _lowp_reference(q, k, v, pattern, scale):
    """A plain low-precision PyTorch run: bf16 logits, bf16 probabilities, bf16 output."""
    G = q.shape[1] // k.shape[1]
    out = torch.empty_like(q)
    for b in range(q.shape[0]):
        for h in range(q.shape[1]):
            logits = (q[b, h] @ k[b, h // G].T) * scale
            logits = logits.masked_fill(~pattern.token_mask(b, h), float("-inf"))
            out[b, h] = torch.softmax(logits, dim=-1).nan_to_num(0.0) @ v[b, h // G]
    return out


@pytest.mark.gpu
@pytest.mark.parametrize("Hq,Hkv,D", [(8, 2, 128), (4, 1, 256)], ids=["D128", "gemma3-D256"])
def test_kernel_gpu_bf16_vs_reference(Hq, Hkv, D):
    """bf16 on the GPU: error vs the fp32 reference at most 2x a plain bf16 PyTorch run's (also
    at Gemma-3's 256-wide heads, where only the small tile fits shared memory)."""
    gen = torch.Generator(device="cuda").manual_seed(0)
    B, L = 2, 1000
    q, k, v = (torch.randn(B, h, L, D, device="cuda", generator=gen).bfloat16() for h in (Hq, Hkv, Hkv))
    nb = -(-L // 128)
    mask = torch.rand(B, Hq, nb, nb, device="cuda", generator=gen) < 0.3
    pattern = BlockPattern.from_mask(mask, 128, L)
    out = torch.full_like(q, float("nan"))
    block_sparse_attention(q, k, v, pattern, out=out)
    ref32 = block_sparse_attention_naive(q.float(), k.float(), v.float(), pattern)
    lowp = _lowp_reference(q, k, v, pattern, D ** -0.5)
    assert not out.isnan().any()
    assert _rms_ratio(out, ref32) <= 2 * _rms_ratio(lowp, ref32)


def test_density_counts_columns_outside_blocks():
    """Exact entry accounting: a column inside an active block adds nothing."""
    mask = torch.zeros(1, 1, 2, 2, dtype=torch.bool)
    mask[0, 0, 0, 0] = mask[0, 0, 1, 1] = True
    cols = torch.tensor([[[3, 20]]])            # col 3 is in block 0, col 20 in block 1
    pattern = BlockPattern.from_mask(mask, 16, 32, cols=cols)
    # row 0 reads col 3 (inside its block 0); row 1 reads 3 (outside: +1/16) and 20 (inside)
    assert pattern.density().item() == pytest.approx((2 + 1 / 16) / 3)


def test_compaction_triton_matches_torch_on_long_rows(gen):
    mask = torch.rand(1, 2, 2, 1500, generator=gen) < 0.2     # rows longer than one 1024 chunk
    a, b = mask_to_lists(mask), mask_to_lists_torch(mask)
    assert torch.equal(a[0], b[0]) and torch.equal(a[1], b[1])


def test_wide_heads_keep_a_tile_that_fits_shared_memory():
    """At D = 256 every configured tile but one needs more shared memory than a Hopper SM has
    (bf16: Q tile + num_stages x (K + V tiles)); the prune adds a small one there and only there."""
    from tsa_core.sparse.block_sparse.kernel import _GPU_CONFIGS, _prune

    def smem_kib(c, d):
        return 2 * d * (c.kwargs["BLOCK_M"] + c.num_stages * 2 * c.kwargs["BLOCK_N"]) / 1024

    narrow = _prune(list(_GPU_CONFIGS), {}, BLOCK_SIZE=128, BLOCK_D=128)
    assert len(narrow) == len(_GPU_CONFIGS)                       # D <= 128: the list as before
    wide = _prune(list(_GPU_CONFIGS), {}, BLOCK_SIZE=128, BLOCK_D=256)
    assert min(smem_kib(c, 256) for c in wide) <= 100 < min(smem_kib(c, 256) for c in _GPU_CONFIGS)
    small = _prune(list(_GPU_CONFIGS), {}, BLOCK_SIZE=16, BLOCK_D=64)  # no configured tile fits 16-blocks
    assert [(c.kwargs["BLOCK_M"], c.kwargs["BLOCK_N"]) for c in small] == [(16, 16)]
