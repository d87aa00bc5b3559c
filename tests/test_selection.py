import pytest
import torch

from tsa_core import TSAConfig
from tsa_core.selection import (layer_budget, pool_scores_naive, pool_scores_triton,
                                select_topk_naive, select_topk_triton)


def _scores(gen, B, H, P, ties=False):
    s = torch.rand(B, H, P, generator=gen) ** 4       # skewed, like attention
    if ties:
        s = (s * 8).round() / 8                           # many exact ties, zeros included
    return s


@pytest.mark.parametrize("shape, kernel", [((1, 2, 50), 7), ((2, 4, 157), 7), ((2, 3, 61), 1), ((1, 4, 5), 9),
                                           ((1, 2, 2500), 7)],
                         ids=["b1", "b2-odd", "k1", "kernel-wider-than-input", "three-1024-tiles"])
def test_pool_triton_matches_naive(shape, kernel, gen, poison):
    s = _scores(gen, *shape)
    p_ref, l_ref = pool_scores_naive(s, kernel)
    p_out, l_out = pool_scores_triton(s, kernel)
    torch.testing.assert_close(p_out, p_ref, rtol=1e-6, atol=1e-7)
    torch.testing.assert_close(l_out, l_ref, rtol=1e-6, atol=1e-7)


def test_pool_is_avg_pool_with_zero_padding(gen):
    s = _scores(gen, 1, 1, 12)
    pooled, layer = pool_scores_naive(s, 3)
    padded = torch.nn.functional.pad(s[0, 0], (1, 1))
    want = torch.stack([padded[j:j + 3].sum() / 3 for j in range(12)])
    torch.testing.assert_close(pooled[0, 0], want)
    torch.testing.assert_close(layer[0], want)


@pytest.mark.parametrize("fn", [pool_scores_naive, pool_scores_triton], ids=["naive", "triton"])
def test_pool_rejects_even_kernel(fn, gen):
    with pytest.raises(ValueError, match="odd"):
        fn(_scores(gen, 1, 1, 8), 4)


# ----- budget (Dynamic Token Coverage) ---------------------------------------------------

@pytest.mark.parametrize("tau", [0.001, 0.01, 0.1, 0.5], ids=["t001", "t01", "t1", "t5"])
def test_budget_rule_and_minimality(tau, gen):
    layer = torch.rand(3, 400, generator=gen) ** 3
    keep, pruned = layer_budget(layer, TSAConfig(tau=tau, min_keep=1))
    dist = layer / layer.sum(-1, keepdim=True)
    for b in range(3):
        asc = torch.sort(dist[b]).values.double()
        n_drop = 400 - int(keep[b])
        assert asc[:n_drop].sum() < tau                      # what is dropped stays under tau
        assert asc[:n_drop + 1].sum() >= tau                 # dropping one more would not
        assert abs(float(pruned[b]) - asc[:n_drop].sum().item()) < 1e-5


def test_budget_respects_min_keep(gen):
    layer = torch.rand(2, 300, generator=gen) ** 8
    keep, _ = layer_budget(layer, TSAConfig(tau=0.9, min_keep=200))
    assert keep.tolist() == [200, 200]


def test_budget_differs_per_batch_element(gen):
    flat = torch.ones(1, 500)
    peaked = torch.rand(1, 500, generator=gen) ** 10
    keep, _ = layer_budget(torch.cat([flat, peaked]), TSAConfig(tau=0.05, min_keep=1))
    assert keep[0] > keep[1]
    assert keep[0] == 500 - 24     # 24 * (1/500) = 0.048 < 0.05 <= 25 * (1/500)


def test_budget_keep_ratio(gen):
    keep, pruned = layer_budget(torch.rand(2, 1000, generator=gen), TSAConfig(keep_ratio=0.3, min_keep=10))
    assert keep.tolist() == [300, 300]
    assert (pruned > 0).all()


# ----- per-head top-k as a permutation ------------------------------------------------------

SELECT_CASES = [  # B, H, P, W, keeps, ties
    (1, 2, 60, 5, [20], False),
    (2, 4, 157, 13, [40, 101], False),
    (2, 3, 129, 7, [64, 1], True),
    (1, 2, 33, 1, [33], True),
]
SELECT_IDS = ["b1", "b2-budgets-differ", "ties", "keep-all"]


@pytest.mark.parametrize("case", SELECT_CASES, ids=SELECT_IDS)
def test_select_triton_matches_naive(case, gen, poison):
    B, H, P, W, keeps, ties = case
    s = _scores(gen, B, H, P, ties)
    keep = torch.tensor(keeps)
    ref = select_topk_naive(s, keep, P + W)
    out = select_topk_triton(s, keep, P + W)
    assert torch.equal(out, ref)


@pytest.mark.parametrize("impl", [select_topk_naive, select_topk_triton], ids=["naive", "triton"])
@pytest.mark.parametrize("case", SELECT_CASES, ids=SELECT_IDS)
def test_select_invariants(case, impl, gen):
    B, H, P, W, keeps, ties = case
    L = P + W
    s = _scores(gen, B, H, P, ties)
    order = impl(s, torch.tensor(keeps), L)
    assert order.dtype == torch.int32 and order.shape == (B, H, L)
    for b, kb in enumerate(keeps):
        for h in range(H):
            o = order[b, h].long()
            assert torch.equal(torch.sort(o).values, torch.arange(L))          # a permutation
            kept, window, dropped = o[:kb], o[kb:kb + W], o[kb + W:]
            assert torch.equal(window, torch.arange(P, L))                       # window always kept
            assert (kept < P).all() and (torch.diff(kept) > 0).all()             # sorted, unique, prefix
            assert dropped.numel() == 0 or (torch.diff(dropped) > 0).all()
            if dropped.numel():
                assert s[b, h, kept].min() >= s[b, h, dropped].max()             # it is a top-k


def test_select_exact_set_without_ties(gen):
    s = _scores(gen, 1, 3, 90)
    order = select_topk_triton(s, torch.tensor([30]), 100)
    for h in range(3):
        want = torch.sort(torch.topk(s[0, h], 30).indices).values
        assert torch.equal(order[0, h, :30].long(), want)


def test_select_ties_go_to_lower_indices():
    s = torch.zeros(1, 1, 10)
    s[0, 0, [2, 5]] = 1.0
    for fn in (select_topk_naive, select_topk_triton):
        order = fn(s, torch.tensor([4]), 12)
        assert order[0, 0, :4].tolist() == [0, 1, 2, 5]


def _tied_runs_case(gen, B, H, P, runs, n_high):
    """Scores with ``n_high`` distinct high values per row (random positions outside the
    runs), one tied value 0.5 on every position of ``runs``, distinct low values elsewhere."""
    s = torch.rand(B, H, P, generator=gen) * 0.4                 # low: [0, 0.4)
    tied = torch.zeros(P, dtype=torch.bool)
    for lo, hi in runs:
        tied[lo:hi] = True
    free = (~tied).nonzero().flatten()
    high = torch.zeros(B, H, P, dtype=torch.bool)
    for b in range(B):
        for h in range(H):
            high[b, h, free[torch.randperm(len(free), generator=gen)[:n_high]]] = True
    s = torch.where(high, 0.6 + 0.4 * torch.rand(B, H, P, generator=gen), s)
    return torch.where(tied, torch.full_like(s, 0.5), s), high, tied


def test_select_ties_across_prefix_blocks(gen):
    """P = 4500 spans three 2048-token blocks of the selection kernels (radix histograms and
    the compaction's carried counts); the tied run at the threshold crosses the borders at
    2048 and 4096, and the ties are taken lowest index first across them. Exact kept set,
    and the whole permutation equals the reference."""
    B, H, P, W, n_high = 2, 2, 4500, 20, 300
    runs = [(2000, 2101), (4050, 4151)]                          # 101 + 101 tied positions
    s, high, tied = _tied_runs_case(gen, B, H, P, runs, n_high)
    need = [150, 60]                  # b0: all of run 1, then 4050..4098; b1: 2000..2059
    keep = torch.tensor([n_high + n for n in need])
    order = select_topk_triton(s, keep, P + W)
    tie_pos = tied.nonzero().flatten()
    for b in range(B):
        for h in range(H):
            want = torch.zeros(P, dtype=torch.bool)
            want[high[b, h]] = True
            want[tie_pos[: need[b]]] = True
            assert torch.equal(order[b, h, : int(keep[b])].long(), want.nonzero().flatten())
    assert torch.equal(order, select_topk_naive(s, keep, P + W))


def test_select_rejects_bad_keep(gen):
    s = _scores(gen, 2, 2, 10)
    with pytest.raises(ValueError, match="keep"):
        select_topk_naive(s, torch.tensor([3]), 12)
    with pytest.raises(ValueError, match="seq_len"):
        select_topk_triton(s, torch.tensor([3, 3]), 10)


# ----- input checks and edge cases pinned by mutation testing (results/tests/mutation-*.md) ----

@pytest.mark.parametrize("scores, message", [
    ([[[1.0]]], r"^scores must be a \[B, H, P\] tensor, got \[\[\[1\.0\]\]\]$"),
    (torch.zeros(2, 3), r"^scores must be a \[B, H, P\] tensor, got torch\.Size\(\[2, 3\]\)$"),
    (torch.zeros(1, 1, 4, dtype=torch.float64), r"^scores must be float32, got torch\.float64$"),
], ids=["not-a-tensor", "two-dims", "float64"])
def test_pool_rejects_bad_scores_naming_what_it_got(scores, message):
    with pytest.raises(ValueError, match=message):
        pool_scores_naive(scores, 3)


@pytest.mark.parametrize("kernel", [True, 3.0, 0, -1], ids=["bool", "float", "zero", "negative"])
def test_pool_rejects_kernels_that_are_not_positive_odd_ints(kernel):
    with pytest.raises(ValueError, match=rf"^pool kernel must be a positive odd integer, got {kernel!r}$"):
        pool_scores_naive(torch.ones(1, 1, 8), kernel)


def test_budget_rejects_a_layer_that_is_not_2d():
    with pytest.raises(ValueError, match=r"^layer must be \[B, P\], got shape \(1, 2, 3\)$"):
        layer_budget(torch.ones(1, 2, 3), TSAConfig(tau=0.1, min_keep=1))


def test_budget_pruned_mass_when_one_token_or_none_is_dropped():
    # row 0: shares 0.1, 0.2, 0.3, 0.4: tau 0.15 drops exactly the 0.1 token; row 1: flat 0.25
    # each, nothing drops and the pruned mass is exactly 0
    layer = torch.tensor([[2.0, 4.0, 3.0, 1.0], [1.0, 1.0, 1.0, 1.0]])
    keep, pruned = layer_budget(layer, TSAConfig(tau=0.15, min_keep=1))
    assert keep.tolist() == [3, 4]
    torch.testing.assert_close(pruned, torch.tensor([0.1, 0.0]))


@pytest.mark.parametrize("config", [TSAConfig(tau=0.1, min_keep=1), TSAConfig(keep_ratio=0.5, min_keep=1)],
                         ids=["coverage", "keep-ratio"])
def test_budget_outputs_stay_on_the_input_device(config):
    # the meta device stands in for CUDA: a tensor made on the default device shows up here
    keep, pruned = layer_budget(torch.ones(2, 20, device="meta"), config)
    assert keep.device.type == "meta" and pruned.device.type == "meta"
    assert keep.dtype == torch.int64


def test_select_output_stays_on_the_input_device():
    order = select_topk_naive(torch.ones(2, 3, 20, device="meta"), torch.tensor([5, 20]), 24)
    assert order.device.type == "meta" and order.dtype == torch.int32 and order.shape == (2, 3, 24)
