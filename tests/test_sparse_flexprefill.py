"""FlexPrefill pattern estimation: Triton vs reference, and the selector's invariants."""
import math

import pytest
import torch

from tsa_bench.workload import Workload, synthetic_qkv
from tsa_core.sparse.flexprefill.kernel import flexprefill_pattern_triton, profiles_triton
from tsa_core.sparse.flexprefill.naive import (FlexPrefillParams, _budget_blocks, _mean_pool_tokens, _top_blocks,
                                               coverage_blocks, flexprefill_pattern_naive, js_distance,
                                               profiles_naive)
from tsa_core.sparse.pattern import causal_block_grid


@pytest.fixture(scope="module")
def qkv():
    return synthetic_qkv(2, 4, 2, 181, 32, workload=Workload(seed=3))


@pytest.mark.parametrize("mode", ["gather", "skew"])
@pytest.mark.parametrize("nq", [pytest.param(16, id="nq16"), pytest.param(40, id="nq40-odd")])
def test_profiles_triton_matches_naive(qkv, mode, nq):
    q, k, _ = qkv
    vn, sn = profiles_naive(q, k, nq, 0.2)
    vt, st = profiles_triton(q, k, nq, 0.2, slash_mode=mode)
    torch.testing.assert_close(vt, vn, atol=1e-6, rtol=1e-4)
    torch.testing.assert_close(st, sn, atol=1e-6, rtol=1e-4)
    torch.testing.assert_close(vn.sum(-1), torch.ones(2, 4), atol=1e-5, rtol=0)
    torch.testing.assert_close(sn.sum(-1), torch.ones(2, 4), atol=1e-5, rtol=0)


def test_slash_profile_is_the_diagonal_mass():
    """One query row, one key: the whole mass sits on a known distance."""
    L, D = 20, 16
    q = torch.zeros(1, 1, L, D)
    k = torch.zeros(1, 1, L, D)
    q[0, 0, -1, 0] = 50.0
    k[0, 0, 7, 0] = 1.0            # the last query (position 19) looks at key 7: distance 12
    _, slash = profiles_naive(q, k, 1, 1.0)
    assert slash[0, 0].argmax().item() == 12
    assert slash[0, 0, 12].item() > 0.99


@pytest.mark.parametrize("tau", [pytest.param(0.1, id="tau0.1"), pytest.param(1.0, id="query-aware")])
def test_pattern_triton_matches_naive(qkv, tau):
    q, k, _ = qkv
    prm = FlexPrefillParams(block_size=16, min_budget=32, tau=tau)
    pn, info_n = flexprefill_pattern_naive(q, k, prm)
    pt, info_t = flexprefill_pattern_triton(q, k, prm)
    assert torch.equal(pn.block_mask, pt.block_mask)
    assert torch.equal(info_n.query_aware, info_t.query_aware)


@pytest.mark.parametrize("tau", [pytest.param(0.0, id="all-vertical-slash"),
                                 pytest.param(1.0, id="all-query-aware")])
def test_sink_and_diagonal_always_kept(qkv, tau):
    q, k, _ = qkv
    pattern, info = flexprefill_pattern_naive(q, k, FlexPrefillParams(block_size=16, min_budget=16, tau=tau))
    nb = pattern.num_blocks
    assert pattern.block_mask[..., :, 0].all()
    assert pattern.block_mask[..., torch.arange(nb), torch.arange(nb)].all()
    assert not (pattern.block_mask & ~causal_block_grid(nb, nb, "cpu")).any()
    assert bool(info.query_aware.all()) == (tau == 1.0)


def test_budgets_respected(qkv):
    q, k, _ = qkv
    prm = FlexPrefillParams(block_size=16, min_budget=40, max_budget=80, tau=0.5)
    _, info = flexprefill_pattern_naive(q, k, prm)
    lo, hi = math.ceil(40 / 16), math.ceil(80 / 16)
    for n in (info.vertical_blocks, info.slash_blocks):
        assert ((n >= lo) & (n <= hi)).all()
        assert torch.equal(n[info.query_aware], torch.full_like(n[info.query_aware], lo))


def test_budget_rule_brute_force():
    prof = torch.tensor([[[0.5, 0.2, 0.15, 0.1, 0.05] + [0.0] * 27]])
    # cumsum 0.5, 0.7, 0.85, 0.95, 1.0 -> 4 entries <= 0.95, +1 = 5 tokens -> 5 // 4 + 1 = 2 blocks
    assert _budget_blocks(prof, 0.95, 4, 1, 8).item() == 2
    assert _budget_blocks(prof, 0.5, 4, 1, 8).item() == 1
    assert _budget_blocks(prof, 0.5, 4, 3, 8).item() == 3


def test_query_aware_heads_reach_gamma_coverage(qkv):
    """tau = 1 makes every head query-aware; the pattern then holds >= gamma of the block
    attention mass (the rows' total is nb)."""
    q, k, _ = qkv
    prm = FlexPrefillParams(block_size=16, min_budget=16, tau=1.0, gamma=0.8)
    pattern, _ = flexprefill_pattern_naive(q, k, prm)
    nb = pattern.num_blocks
    qp = _mean_pool_tokens(q, 16, nb)
    kp = _mean_pool_tokens(k, 16, nb).repeat_interleave(2, dim=1)
    logits = (qp @ kp.transpose(-1, -2)) * 32 ** -0.5
    causal = causal_block_grid(nb, nb, "cpu")
    probs = torch.softmax(logits.masked_fill(~causal, float("-inf")), dim=-1)
    covered = (probs * pattern.block_mask).sum((-1, -2))
    assert (covered >= 0.8 * nb - 1e-4).all()


def test_coverage_blocks_is_minimal():
    probs = torch.tensor([[[0.6, 0.0], [0.3, 0.1]]])        # total 1.0
    keep = coverage_blocks(probs, 0.85)
    assert keep.tolist() == [[[True, False], [True, False]]]   # 0.6 + 0.3 >= 0.85, 0.6 alone is not


def test_js_distance_bounds():
    p = torch.tensor([0.25, 0.25, 0.5])
    assert js_distance(p, p).item() == pytest.approx(0.0, abs=1e-6)
    a, b = torch.tensor([1.0, 0.0]), torch.tensor([0.0, 1.0])
    assert js_distance(a, b).item() == pytest.approx(math.sqrt(math.log(2)), rel=1e-5)


def _ranked(scores, forced):
    """Indices of ``scores`` (plain floats): the forced ones first, then by descending score,
    ties to the lower index. Plain Python, independent of the selector under test."""
    rest = sorted((i for i in range(len(scores)) if i not in forced), key=lambda i: (-scores[i], i))
    return list(forced) + rest


def _top_set(scores, n, forced):
    """``(the top n indices as a set, score gap between the last kept and the first dropped)``."""
    ranked = _ranked(scores, forced)
    gap = math.inf
    if len(forced) < n < len(ranked):
        gap = scores[ranked[n - 1]] - scores[ranked[n]]
    return set(ranked[:n]), gap


def _expected_budget(profile, gamma, bs, lo, hi):
    """Step 3 in plain Python: tokens whose descending cumulative mass stays <= gamma, + 1."""
    count, csum = 0, 0.0
    for p in sorted(profile, reverse=True):
        csum += p
        if csum > gamma:
            break
        count += 1
    return min(max((count + 1) // bs + 1, lo), hi)


def _expected_vertical_slash(vertical, slash, n_v, n_s, bs):
    """The vertical-slash block mask built entry by entry: block ``c`` of row ``r`` is active
    iff ``c`` is among the top ``n_v`` sum-pooled vertical blocks or the distance block
    ``r - c`` among the top ``n_s`` sum-pooled slash blocks (block 0 forced in both)."""
    B, H, L = vertical.shape
    nb = -(-L // bs)
    want = torch.zeros(B, H, nb, nb, dtype=torch.bool)
    min_gap = math.inf
    for b in range(B):
        for h in range(H):
            v_blocks = [vertical[b, h, c * bs:(c + 1) * bs].double().sum().item() for c in range(nb)]
            s_blocks = [slash[b, h, t * bs:(t + 1) * bs].double().sum().item() for t in range(nb)]
            cols, gap_v = _top_set(v_blocks, int(n_v[b, h]), [0])
            diags, gap_s = _top_set(s_blocks, int(n_s[b, h]), [0])
            min_gap = min(min_gap, gap_v, gap_s)
            for r in range(nb):
                for c in range(r + 1):
                    want[b, h, r, c] = c in cols or (r - c) in diags
    return want, min_gap


BRUTE_CASES = [
    pytest.param(dict(gamma=0.5, min_budget=48), id="floor3"),
    pytest.param(dict(gamma=0.9, min_budget=32), id="gamma0.9"),
    pytest.param(dict(gamma=0.99, min_budget=16, max_budget=64), id="gamma0.99-cap4"),
    pytest.param(dict(gamma=0.99, min_budget=16), id="gamma0.99"),
]


@pytest.mark.parametrize("kw", BRUTE_CASES)
def test_vertical_slash_blocks_are_the_top_pooled_profiles(qkv, kw):
    """tau = 0 (every head vertical-slash): the pattern equals a brute-force top-k of the
    pooled profiles, at several budgets (densities). Catches a selector that keeps the
    wrong blocks (e.g. the lowest-scoring ones), which the Triton-vs-naive comparison
    cannot see since both share the selection."""
    q, k, _ = qkv
    prm = FlexPrefillParams(block_size=16, tau=0.0, **kw)
    pattern, info = flexprefill_pattern_naive(q, k, prm)
    vertical, slash = profiles_naive(q, k, 16, 32 ** -0.5)
    nb = pattern.num_blocks
    lo = -(-prm.min_budget // 16)
    hi = nb if prm.max_budget is None else -(-prm.max_budget // 16)
    for name, prof, got in (("vertical", vertical, info.vertical_blocks), ("slash", slash, info.slash_blocks)):
        want = [[_expected_budget(prof[b, h].double().tolist(), prm.gamma, 16, lo, hi) for h in range(4)]
                for b in range(2)]
        assert got.tolist() == want, name
        assert ((got > 1) & (got < nb)).any(), f"{name}: no head with a real choice; the case tests nothing"
    want, gap = _expected_vertical_slash(vertical, slash, info.vertical_blocks, info.slash_blocks, 16)
    assert gap > 1e-6, "near-tie at the cut (rounding could flip it): choose other data"
    assert torch.equal(pattern.block_mask, want)
    assert 0.0 < pattern.density().mean().item() < 1.0


def test_query_aware_heads_keep_the_top_floor_blocks(qkv):
    """tau = 1 (every head query-aware): both budgets drop to the floor and the pattern holds
    the top floor-many pooled vertical and slash blocks (plus the coverage blocks)."""
    q, k, _ = qkv
    prm = FlexPrefillParams(block_size=16, tau=1.0, gamma=0.5, min_budget=48)
    pattern, info = flexprefill_pattern_naive(q, k, prm)
    assert bool(info.query_aware.all())
    vertical, slash = profiles_naive(q, k, 16, 32 ** -0.5)
    floor = torch.full((2, 4), 3)
    want, gap = _expected_vertical_slash(vertical, slash, floor, floor, 16)
    assert gap > 1e-6, "near-tie at the cut (rounding could flip it): choose other data"
    assert not (want & ~pattern.block_mask).any()


def test_tied_blocks_go_to_the_lower_index():
    """Zero queries and keys give flat profiles (the pooled blocks that every last query sees
    tie exactly): the kept blocks are the forced one, then the lowest indices. Pins the
    tie-break of the selection (shared by both paths) that makes the pattern deterministic.
    Reference profiles only: the Triton slash profile sums each distance in its own order,
    so its ties need not be exact."""
    L, D = 100, 16
    q = torch.zeros(1, 1, L, D)
    k = torch.zeros(1, 1, L, D)
    prm = FlexPrefillParams(block_size=16, tau=0.0, gamma=0.5, min_budget=48)   # 3 blocks each
    pattern, info = flexprefill_pattern_naive(q, k, prm)
    assert info.vertical_blocks.tolist() == [[3]]
    nb = pattern.num_blocks
    kept_cols = pattern.block_mask[0, 0, nb - 1]      # last row: vertical blocks and slash blocks
    # uniform attention: both profiles are flat over the first 5 blocks (exact ties), so the
    # vertical blocks are 0 (sink), 1, 2 and the slash blocks the distances 0 (diagonal), 1, 2
    assert kept_cols.nonzero().flatten().tolist() == [0, 1, 2, nb - 3, nb - 2, nb - 1]


def test_short_sequences_run_dense(qkv):
    q, k, _ = qkv
    pattern, info = flexprefill_pattern_naive(q, k, FlexPrefillParams(block_size=16, min_budget=1024))
    assert info.query_aware is None
    assert torch.allclose(pattern.density(), torch.ones(2, 4))


def test_params_validation():
    with pytest.raises(ValueError, match="gamma"):
        FlexPrefillParams(gamma=1.5)
    with pytest.raises(ValueError, match="block_size"):
        FlexPrefillParams(block_size=100)
    with pytest.raises(ValueError, match="min_budget"):
        FlexPrefillParams(min_budget=0)


# ----- selection helpers on hand-made inputs (edge cases found by mutation testing) -----------
# CPU torch.sort without stable=True reorders ties from 17 entries on, so the tie cases are
# at least that long.

def test_budget_counts_the_entry_whose_cumsum_equals_gamma():
    prof = torch.tensor([[[0.5, 0.125, 0.25, 0.125]]])     # sorted cumsums 0.5, 0.75, 0.875, 1 (exact)
    # 2 cumsums <= 0.75, +1 = 3 tokens -> 3 // 3 + 1 = 2 blocks (a strict < would give 1)
    assert _budget_blocks(prof, 0.75, 3, 1, 8).item() == 2


def test_top_blocks_forced_first_then_ties_to_the_lower_index():
    keep = _top_blocks(torch.zeros(1, 2, 20), torch.tensor([[4, 1]]), forced=7)
    assert keep[0, 0].nonzero().flatten().tolist() == [0, 1, 2, 7]
    assert keep[0, 1].nonzero().flatten().tolist() == [7]


def test_coverage_blocks_stops_once_the_mass_before_reaches_gamma():
    probs = torch.tensor([[[0.5, 0.25], [0.25, 0.0]]])     # gamma 0.75: 0.5 + 0.25 reaches it exactly
    assert coverage_blocks(probs, 0.75).tolist() == [[[True, True], [False, False]]]


def test_coverage_blocks_ties_go_to_the_lower_flat_index():
    keep = coverage_blocks(torch.ones(1, 5, 5), 0.2)       # 25 equal entries: 5 are needed
    assert keep[0, 0].all() and not keep[0, 1:].any()


def test_coverage_blocks_treats_leading_dims_as_a_batch(gen):
    probs = torch.rand(2, 3, 4, 4, generator=gen)
    keep = coverage_blocks(probs, 0.6)
    for b in range(2):
        for h in range(3):
            assert torch.equal(keep[b, h], coverage_blocks(probs[b, h][None], 0.6)[0]), (b, h)


def test_selection_helpers_keep_the_input_device():
    # the meta device stands in for CUDA: a tensor made on the default device shows up here
    n = torch.tensor([[3]], device="meta")
    assert _top_blocks(torch.zeros(1, 1, 20, device="meta"), n, forced=0).device.type == "meta"
    assert coverage_blocks(torch.zeros(2, 4, 4, device="meta"), 0.5).device.type == "meta"


@pytest.mark.gpu
@pytest.mark.parametrize("mode", ["gather", "skew"])
@pytest.mark.parametrize("D", [64, 256])
def test_profiles_triton_matches_naive_in_fp32_on_gpu(mode, D):
    """Compiled, in fp32, GQA, a length off every tile: the profile tiles multiply in full fp32
    (``input_precision="ieee"``, as the scorer whose statistics they divide by), so they meet
    the interpreter test's tolerance against the fp32 reference."""
    q, k, _ = synthetic_qkv(2, 4, 2, 1237, D, device="cuda", dtype=torch.float32, workload=Workload(seed=7))
    scale = D ** -0.5
    vn, sn = profiles_naive(q, k, 128, scale)
    vt, st = profiles_triton(q, k, 128, scale, slash_mode=mode)
    torch.testing.assert_close(vt, vn, atol=1e-6, rtol=1e-4)
    torch.testing.assert_close(st, sn, atol=1e-6, rtol=1e-4)
