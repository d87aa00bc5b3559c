"""XAttention (arXiv 2503.16428): antidiagonal block scoring with a cumulative threshold."""
from tsa_core.sparse.xattention.naive import XAttentionParams, xattention_pattern_naive
from tsa_core.sparse.xattention.kernel import xattention_pattern_triton

__all__ = ["XAttentionParams", "xattention_pattern_naive", "xattention_pattern_triton"]
