"""Token selection: pooling, the Dynamic Token Coverage budget, per-head top-k."""
from tsa_core.selection.naive import layer_budget, pool_scores_naive, select_topk_naive
from tsa_core.selection.kernel import pool_scores_triton, select_topk_triton

__all__ = ["layer_budget", "pool_scores_naive", "select_topk_naive",
           "pool_scores_triton", "select_topk_triton"]
