"""Token scoring: mean softmax probability that the last W queries give each prefix key."""
from tsa_core.scoring.naive import score_window_naive
from tsa_core.scoring.kernel import score_window_triton

__all__ = ["score_window_naive", "score_window_triton"]
