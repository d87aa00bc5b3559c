"""MInference vertical-slash estimation: Triton vs reference, selector invariants."""
import pytest
import torch

from tsa_bench.workload import Workload, synthetic_qkv
from tsa_core.backends.dense import math_attention
from tsa_core.sparse.block_sparse import block_sparse_attention
from tsa_core.sparse.flexprefill.naive import profiles_naive
from tsa_core.sparse.minference.kernel import minference_pattern_triton
from tsa_core.sparse.minference.naive import (MInferenceParams, minference_pattern_naive,
                                              vertical_slash_indices)

SMALL = MInferenceParams(block_size=16, last_q=16, sink_columns=4, local_diagonals=8,
                         min_vertical=4, min_slash=8, budget=0.2)


@pytest.fixture(scope="module")
def qkv():
    return synthetic_qkv(1, 4, 2, 173, 32, workload=Workload(seed=7))


def test_sizes_rule():
    prm = MInferenceParams()
    assert prm.sizes(131072) == (2621, 10486)        # 2% vertical, 8% slash of L
    assert prm.sizes(1000) == (30, 80)               # vertical floor 30
    assert prm.sizes(20) == (20, 20)                 # clamped to L


def test_pattern_triton_matches_naive(qkv):
    q, k, _ = qkv
    pn, pt = minference_pattern_naive(q, k, SMALL), minference_pattern_triton(q, k, SMALL)
    assert torch.equal(pn.block_mask, pt.block_mask)
    assert torch.equal(pn.cols, pt.cols)


def test_selected_lines_are_covered(qkv):
    """Every kept column and every kept diagonal is computed; sinks and local diagonals are in."""
    q, k, _ = qkv
    L = q.shape[2]
    vertical, slash = profiles_naive(q, k, SMALL.last_q, 32 ** -0.5)
    cols, dist = vertical_slash_indices(vertical, slash, SMALL)
    n_v, n_s = SMALL.sizes(L)
    assert cols.shape[-1] == n_v and dist.shape[-1] == n_s
    pattern = minference_pattern_naive(q, k, SMALL)
    pos = torch.arange(L)
    for h in range(4):
        assert set(range(SMALL.sink_columns)) <= set(cols[0, h].tolist())
        assert set(range(SMALL.local_diagonals)) <= set(dist[0, h].tolist())
        tm = pattern.token_mask(0, h)
        causal = pos.view(1, L) <= pos.view(L, 1)
        assert tm[:, cols[0, h]][causal[:, cols[0, h]]].all()
        for o in dist[0, h].tolist():
            i = torch.arange(o, L)
            assert tm[i, i - o].all()


def test_full_budget_equals_dense():
    q, k, v = synthetic_qkv(1, 2, 1, 75, 16, workload=Workload(seed=8))
    prm = MInferenceParams(block_size=16, last_q=16, budget=1.0, vertical_share=1.0)   # V = L columns
    pattern = minference_pattern_triton(q, k, prm)
    out = torch.full_like(q, float("nan"))
    block_sparse_attention(q, k, v, pattern, out=out)
    torch.testing.assert_close(out, math_attention(q, k, v, scale=16 ** -0.5), atol=2e-5, rtol=1e-4)


def test_deterministic(qkv):
    q, k, _ = qkv
    p1, p2 = minference_pattern_triton(q, k, SMALL), minference_pattern_triton(q, k, SMALL)
    assert torch.equal(p1.kv_idx, p2.kv_idx) and torch.equal(p1.cols, p2.cols)


def test_params_validation():
    with pytest.raises(ValueError, match="budget"):
        MInferenceParams(budget=0.0)
    with pytest.raises(ValueError, match="last_q"):
        MInferenceParams(last_q=0)
