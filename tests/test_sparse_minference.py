"""MInference vertical-slash estimation: Triton vs reference, selector invariants."""
import pytest
import torch

from tsa_bench.workload import Workload, synthetic_qkv
from tsa_core.backends.dense import math_attention
from tsa_core.sparse.block_sparse import block_sparse_attention
from tsa_core.sparse.flexprefill.naive import profiles_naive
from tsa_core.sparse.minference.kernel import minference_pattern_triton
from tsa_core.sparse.minference.naive import (MInferenceParams, minference_pattern_naive, select_vertical_slash,
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


def _top_set(scores, n, n_forced):
    """The first ``n_forced`` positions, then the highest ``scores`` (plain floats), ties to
    the lower index, ``n`` in all. Plain Python, independent of the selector under test."""
    rest = sorted(range(n_forced, len(scores)), key=lambda i: (-scores[i], i))
    return set((list(range(n_forced)) + rest)[:n])


def _expected_pattern(vertical, slash, prm):
    """``(cols [B][H] sorted lists, block mask)`` built entry by entry: the top ``V`` columns
    and ``S`` distances (forced ones first), and every block a kept slash line crosses (the
    line at distance ``o = t bs + u`` crosses key block ``r - t`` of query block ``r``, and
    ``r - t - 1`` if ``u > 0``)."""
    B, H, L = vertical.shape
    bs = prm.block_size
    nb = -(-L // bs)
    n_v, n_s = prm.sizes(L)
    cols = [[None] * H for _ in range(B)]
    mask = torch.zeros(B, H, nb, nb, dtype=torch.bool)
    for b in range(B):
        for h in range(H):
            cols[b][h] = sorted(_top_set(vertical[b, h].tolist(), n_v, prm.sink_columns))
            for o in _top_set(slash[b, h].tolist(), n_s, prm.local_diagonals):
                t, u = divmod(o, bs)
                for r in range(nb):
                    for c in (r - t, r - t - 1) if u else (r - t,):
                        if c >= 0:
                            mask[b, h, r, c] = True
    return cols, mask


DENSITIES = [
    pytest.param(dict(budget=0.1, vertical_share=0.5), id="budget0.1"),
    pytest.param(dict(budget=0.2, vertical_share=0.2), id="budget0.2"),
    pytest.param(dict(budget=0.3, vertical_share=0.4), id="budget0.3"),
]


@pytest.mark.parametrize("kw", DENSITIES)
def test_pattern_is_the_top_columns_and_diagonals(qkv, kw):
    """The columns and blocks equal a brute-force top-k of the two profiles, at several
    budgets. Catches a selector that keeps the wrong lines (e.g. the lowest-scoring ones):
    the Triton-vs-naive comparison cannot, since both share the selection."""
    q, k, _ = qkv
    prm = MInferenceParams(block_size=16, last_q=16, sink_columns=4, local_diagonals=8, min_vertical=4,
                           min_slash=8, **kw)
    n_v, n_s = prm.sizes(q.shape[2])
    assert prm.sink_columns < n_v and prm.local_diagonals < n_s     # a real choice beyond the forced lines
    pattern = minference_pattern_naive(q, k, prm)
    vertical, slash = profiles_naive(q, k, prm.last_q, 32 ** -0.5)
    cols, mask = _expected_pattern(vertical, slash, prm)
    assert pattern.cols.tolist() == cols
    assert torch.equal(pattern.block_mask, mask)
    assert pattern.density().max().item() < 1.0


def test_tied_lines_go_to_the_lower_index():
    """Zero queries and keys give flat profiles (exact ties over every column and distance
    the last queries all see): the kept columns and distances are the lowest ones. Pins the
    tie-break of the selection (shared by both paths) that makes the pattern deterministic.
    Reference profiles only: the Triton slash profile sums each distance in its own order,
    so its ties are not exact."""
    L = 100
    q, k = torch.zeros(1, 1, L, 16), torch.zeros(1, 1, L, 16)
    prm = MInferenceParams(block_size=16, last_q=16, sink_columns=4, local_diagonals=4, min_vertical=4,
                           min_slash=4, budget=0.2, vertical_share=0.5)
    assert prm.sizes(L) == (10, 10)
    pattern = minference_pattern_naive(q, k, prm)
    assert pattern.cols[0, 0].tolist() == list(range(10))
    # distances 0..9: the diagonal block and, for u > 0, the block left of it
    assert pattern.block_mask[0, 0, 6].nonzero().flatten().tolist() == [5, 6]


def test_params_validation():
    with pytest.raises(ValueError, match="budget"):
        MInferenceParams(budget=0.0)
    with pytest.raises(ValueError, match="last_q"):
        MInferenceParams(last_q=0)


def test_slash_line_at_a_multiple_of_the_block_size_crosses_one_block_per_row():
    """Kept distances 0 (forced) and 32 = 2 x bs: the diagonal block and the block two to its
    left, nothing between or beyond (u = 0 adds no second block)."""
    prm = MInferenceParams(block_size=16, sink_columns=1, local_diagonals=1, min_vertical=1, min_slash=1,
                           budget=1 / 16, vertical_share=0.5)
    assert prm.sizes(64) == (2, 2)
    vertical, slash = torch.zeros(1, 1, 64), torch.zeros(1, 1, 64)
    vertical[0, 0, 40] = 1.0
    slash[0, 0, 32] = 1.0
    pattern = select_vertical_slash(vertical, slash, prm)
    assert pattern.block_mask[0, 0].tolist() == [[r - c in (0, 2) for c in range(4)] for r in range(4)]
    assert pattern.cols[0, 0].tolist() == [0, 40]


def test_selection_makes_its_tensors_on_the_profiles_device(gen):
    """With the default device set to meta, a tensor made without an explicit device lands
    there (the CPU stand-in for a CUDA run that creates one on the CPU): the CPU selection
    must still equal the one made under the normal default."""
    vertical, slash = torch.rand(1, 2, 160, generator=gen), torch.rand(1, 2, 160, generator=gen)
    want = select_vertical_slash(vertical, slash, SMALL)
    with torch.device("meta"):
        got = select_vertical_slash(vertical, slash, SMALL)
    assert torch.equal(got.block_mask, want.block_mask) and torch.equal(got.cols, want.cols)
