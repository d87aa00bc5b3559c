import pytest
import torch

from tsa_core.gather import (compress_qkv_naive, compress_qkv_triton, decompress_output_naive,
                             decompress_output_triton)
from tsa_core.selection import select_topk_naive

CASES = [  # B, Hq, Hkv, L, D, W, keeps
    (1, 2, 2, 40, 16, 4, [10]),
    (2, 4, 2, 157, 24, 9, [30, 100]),
    (2, 6, 1, 90, 8, 5, [85, 12]),
]
IDS = ["mha", "gqa-b2-odd", "mqa-b2"]


def _setup(gen, case, dtype=torch.float32):
    B, Hq, Hkv, L, D, W, keeps = case
    q = torch.randn(B, Hq, L, D, generator=gen).to(dtype)
    k = torch.randn(B, Hkv, L, D, generator=gen).to(dtype)
    v = torch.randn(B, Hkv, L, D, generator=gen).to(dtype)
    order = select_topk_naive(torch.rand(B, Hq, L - W, generator=gen), torch.tensor(keeps), L)
    n_kept = torch.tensor(keeps) + W
    return q, k, v, order, n_kept


@pytest.mark.parametrize("case", CASES, ids=IDS)
def test_compress_triton_matches_naive(case, gen, poison):
    q, k, v, order, n_kept = _setup(gen, case)
    n_max = int(n_kept.max())
    for a, b in zip(compress_qkv_triton(q, k, v, order, n_max), compress_qkv_naive(q, k, v, order, n_max)):
        assert torch.equal(a, b)


@pytest.mark.parametrize("case", CASES, ids=IDS)
def test_compress_reads_the_right_rows(case, gen):
    q, k, v, order, n_kept = _setup(gen, case)
    G = q.shape[1] // k.shape[1]
    qc, kc, vc = compress_qkv_triton(q, k, v, order, int(n_kept.max()))
    b, h = q.shape[0] - 1, q.shape[1] - 1
    idx = order[b, h, : int(n_kept[b])].long()
    assert torch.equal(qc[b, h, : len(idx)], q[b, h, idx])
    assert torch.equal(kc[b, h, : len(idx)], k[b, h // G, idx])
    assert torch.equal(vc[b, h, : len(idx)], v[b, h // G, idx])


def test_compress_non_contiguous_fp16(gen):
    q, k, v, order, n_kept = _setup(gen, CASES[1], torch.float16)
    views = [t.transpose(1, 2).contiguous().transpose(1, 2) for t in (q, k, v)]
    assert not views[0].is_contiguous()
    n_max = int(n_kept.max())
    for a, b in zip(compress_qkv_triton(*views, order, n_max), compress_qkv_naive(q, k, v, order, n_max)):
        assert torch.equal(a, b)


@pytest.mark.parametrize("case", CASES, ids=IDS)
def test_decompress_triton_matches_naive(case, gen, poison):
    q, k, v, order, n_kept = _setup(gen, case)
    oc = torch.randn(q.shape[0], q.shape[1], int(n_kept.max()), q.shape[3], generator=gen)
    L = q.shape[2]
    out = decompress_output_triton(oc, order, n_kept, L)
    assert out.shape == (q.shape[0], L, q.shape[1], q.shape[3])
    assert torch.equal(out, decompress_output_naive(oc, order, n_kept, L))


@pytest.mark.parametrize("impl", ["naive", "triton"])
@pytest.mark.parametrize("case", CASES, ids=IDS)
def test_gather_then_scatter_is_identity_on_kept_rows_and_zero_elsewhere(case, impl, gen):
    compress = compress_qkv_triton if impl == "triton" else compress_qkv_naive
    decompress = decompress_output_triton if impl == "triton" else decompress_output_naive
    q, k, v, order, n_kept = _setup(gen, case)
    L = q.shape[2]
    qc, _, _ = compress(q, k, v, order, int(n_kept.max()))
    back = decompress(qc, order, n_kept, L)            # [B, L, H, D]
    full = q.transpose(1, 2)
    for b in range(q.shape[0]):
        for h in range(q.shape[1]):
            kept = torch.zeros(L, dtype=torch.bool)
            kept[order[b, h, : int(n_kept[b])].long()] = True
            assert torch.equal(back[b, kept, h], full[b, kept, h])
            assert (back[b, ~kept, h] == 0).all()
            assert not torch.signbit(back[b, ~kept, h]).any()      # +0.0, not garbage or -0.0


def test_bad_order(gen):
    q, k, v, order, n_kept = _setup(gen, CASES[0])
    with pytest.raises(ValueError, match="order"):
        compress_qkv_naive(q, k, v, order.long(), 5)
    with pytest.raises(ValueError, match="n_max"):
        compress_qkv_triton(q, k, v, order, 0)
