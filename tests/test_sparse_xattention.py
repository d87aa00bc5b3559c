"""XAttention pattern estimation: Triton block scores vs reference, selector invariants."""
import pytest
import torch

from tsa_bench.workload import Workload, synthetic_qkv
from tsa_core.sparse.pattern import causal_block_grid
from tsa_core.sparse.xattention.kernel import block_scores_triton, xattention_pattern_triton
from tsa_core.sparse.xattention.naive import (XAttentionParams, block_scores_naive, reshape_groups,
                                              select_blocks, xattention_pattern_naive)

SMALL = XAttentionParams(stride=4, block_size=16, threshold=0.9)


@pytest.fixture(scope="module")
def qkv():
    return synthetic_qkv(1, 4, 2, 101, 32, workload=Workload(seed=5))


def test_antidiagonal_score_definition(gen):
    """score(i, j) = sum_s q[i S + S-1-s] . k[j S + s], checked entry by entry."""
    S, D = 4, 16
    q = torch.randn(1, 1, 12, D, generator=gen)
    k = torch.randn(1, 1, 12, D, generator=gen)
    qr, kr = reshape_groups(q, k, S)
    scores = qr[0, 0] @ kr[0, 0].T
    for i in range(3):
        for j in range(3):
            want = sum(q[0, 0, i * S + S - 1 - s] @ k[0, 0, j * S + s] for s in range(S))
            assert scores[i, j].item() == pytest.approx(want.item(), rel=1e-5, abs=1e-5)


def test_block_scores_triton_matches_naive(qkv):
    q, k, _ = qkv
    a_n = block_scores_naive(q, k, SMALL, 0.2)
    a_t = block_scores_triton(q, k, SMALL, 0.2, block_g=16)
    torch.testing.assert_close(a_t, a_n, atol=1e-5, rtol=1e-4)
    full_rows = a_n[..., :-1, :].sum(-1)                       # every full block row sums to bs / S
    torch.testing.assert_close(full_rows, torch.full_like(full_rows, 4.0), atol=1e-4, rtol=0)


def test_pattern_triton_matches_naive(qkv):
    q, k, _ = qkv
    assert torch.equal(xattention_pattern_naive(q, k, SMALL).block_mask,
                       xattention_pattern_triton(q, k, SMALL).block_mask)


@pytest.mark.parametrize("thr", [pytest.param(0.5, id="thr0.5"), pytest.param(0.9, id="thr0.9")])
def test_threshold_coverage_and_minimality(qkv, thr):
    q, k, _ = qkv
    scores = block_scores_naive(q, k, SMALL, 0.2)
    mask = select_blocks(scores, thr)
    nb = mask.shape[-1]
    causal = causal_block_grid(nb, nb, "cpu")
    forced = torch.eye(nb, dtype=torch.bool)
    forced[:, 0] = True
    assert (mask & forced).eq(forced & causal).all()             # sink and diagonal in every row
    assert not (mask & ~causal).any()
    total = (scores * causal).sum(-1)
    covered = (scores * mask).sum(-1)
    assert (covered >= thr * total - 1e-5).all()
    # minimality: dropping the weakest optional block of a row falls below the threshold
    optional = mask & ~forced
    weakest = torch.where(optional, scores, torch.full_like(scores, float("inf"))).min(-1).values
    has_opt = optional.any(-1)
    assert ((covered - weakest)[has_opt] < thr * total[has_opt] + 1e-6).all()


def test_deterministic(qkv):
    q, k, _ = qkv
    p1, p2 = xattention_pattern_triton(q, k, SMALL), xattention_pattern_triton(q, k, SMALL)
    assert torch.equal(p1.kv_idx, p2.kv_idx)


def test_params_validation():
    with pytest.raises(ValueError, match="multiple of stride"):
        XAttentionParams(stride=3, block_size=16)
    with pytest.raises(ValueError, match="threshold"):
        XAttentionParams(threshold=0.0)
