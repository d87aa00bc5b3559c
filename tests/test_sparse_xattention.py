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


def _expected_mask(scores, thr):
    """Step 3 row by row in plain Python: the sink and the diagonal, then the other causal
    blocks by descending score (ties to the lower index) while the mass taken so far is
    below ``thr`` of the row total. Returns ``(mask, smallest distance of a decision from
    the threshold)``."""
    B, H, nb, _ = scores.shape
    want = torch.zeros(B, H, nb, nb, dtype=torch.bool)
    margin = float("inf")
    for b in range(B):
        for h in range(H):
            for r in range(nb):
                row = scores[b, h, r].double().tolist()
                target = thr * sum(row[: r + 1])
                forced = sorted({0, r})
                mass = sum(row[c] for c in forced)
                for c in forced:
                    want[b, h, r, c] = True
                for c in sorted(range(1, r), key=lambda c: (-row[c], c)):
                    margin = min(margin, abs(mass - target))
                    if mass >= target:
                        break
                    want[b, h, r, c] = True
                    mass += row[c]
    return want, margin


@pytest.mark.parametrize("thr", [pytest.param(0.8, id="thr0.8"), pytest.param(0.9, id="thr0.9"),
                                 pytest.param(0.99, id="thr0.99")])
def test_pattern_is_the_brute_force_selection(qkv, thr):
    """The pattern equals a row-by-row selection from the block scores, at several
    thresholds (densities). Catches a selector that adds the wrong blocks first (e.g. the
    lowest-scoring ones), which Triton-vs-naive cannot see since both share the selection."""
    q, k, _ = qkv
    prm = XAttentionParams(stride=4, block_size=16, threshold=thr)
    pattern = xattention_pattern_naive(q, k, prm)
    want, margin = _expected_mask(block_scores_naive(q, k, prm, 32 ** -0.5), thr)
    assert margin > 1e-6, "a decision within rounding of the threshold: choose other data"
    nb = pattern.num_blocks
    optional = want & ~torch.eye(nb, dtype=torch.bool)
    optional[..., 0] = False
    causal_optional = causal_block_grid(nb, nb, "cpu") & ~torch.eye(nb, dtype=torch.bool)
    causal_optional[..., 0] = False
    assert optional.any() and (causal_optional & ~optional).any()    # the case makes real choices
    assert torch.equal(pattern.block_mask, want)


def test_tied_blocks_go_to_the_lower_index():
    """Zero queries and keys: every off-diagonal causal block of a row has exactly the same
    score, so the optional blocks kept are the lowest indices after the sink. Pins the
    tie-break that makes the pattern deterministic (reference scores: exact ties)."""
    q, k = torch.zeros(1, 1, 128, 16), torch.zeros(1, 1, 128, 16)
    prm = XAttentionParams(stride=4, block_size=16, threshold=0.6)
    row = xattention_pattern_naive(q, k, prm).block_mask[0, 0, 7]
    kept = row.nonzero().flatten().tolist()
    assert kept[0] == 0 and kept[-1] == 7
    optional = kept[1:-1]
    assert 0 < len(optional) < 6
    assert optional == list(range(1, 1 + len(optional)))


def test_params_validation():
    with pytest.raises(ValueError, match="multiple of stride"):
        XAttentionParams(stride=3, block_size=16)
    with pytest.raises(ValueError, match="threshold"):
        XAttentionParams(threshold=0.0)


def test_select_blocks_by_hand():
    """Exact binary fractions, threshold 0.75 (values above the diagonal must be ignored).
    Row 1: the sink is kept although its score is 0. Row 3: sink + diagonal hold 0.5, block 1
    brings the mass to 0.75 = threshold x total exactly, so block 2 is not added."""
    scores = torch.tensor([[1.0, 7.0, 7.0, 7.0],
                           [0.0, 1.0, 7.0, 7.0],
                           [0.0, 0.5, 0.5, 7.0],
                           [0.0, 0.25, 0.25, 0.5]]).view(1, 1, 4, 4)
    assert select_blocks(scores, 0.75)[0, 0].int().tolist() == [[1, 0, 0, 0],
                                                                [1, 1, 0, 0],
                                                                [1, 1, 1, 0],
                                                                [1, 1, 0, 1]]


def test_select_blocks_ties_go_to_the_lower_index_in_long_rows():
    """Row 19 of 20 equal blocks (CPU torch.sort without stable=True reorders ties from 17
    entries on): total 20, sink + diagonal = 2, blocks added while the mass before is < 10."""
    mask = select_blocks(torch.ones(1, 1, 20, 20), 0.5)
    assert mask[0, 0, 19].nonzero().flatten().tolist() == list(range(9)) + [19]


def test_select_blocks_keeps_the_input_device():
    # the meta device stands in for CUDA: a tensor made on the default device shows up here
    assert select_blocks(torch.ones(1, 1, 4, 4, device="meta"), 0.9).device.type == "meta"
