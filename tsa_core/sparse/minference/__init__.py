"""MInference vertical-slash (arXiv 2407.02490), the TSA paper's adaptive-budget setting."""
from tsa_core.sparse.minference.naive import MInferenceParams, minference_pattern_naive
from tsa_core.sparse.minference.kernel import minference_pattern_triton

__all__ = ["MInferenceParams", "minference_pattern_naive", "minference_pattern_triton"]
