"""FlexPrefill (arXiv 2502.20766): query-aware / vertical-slash block patterns per head."""
from tsa_core.sparse.flexprefill.naive import FlexPrefillInfo, FlexPrefillParams, flexprefill_pattern_naive
from tsa_core.sparse.flexprefill.kernel import flexprefill_pattern_triton

__all__ = ["FlexPrefillInfo", "FlexPrefillParams", "flexprefill_pattern_naive", "flexprefill_pattern_triton"]
