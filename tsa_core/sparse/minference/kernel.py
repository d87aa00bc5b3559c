"""MInference vertical-slash estimation with the Triton profiles.

The two profiles (column sums and diagonal sums of the last queries' attention) are exactly
FlexPrefill's steps 1-2 with ``nq = last_q``, so this reuses
:func:`tsa_core.sparse.flexprefill.kernel.profiles_triton` (GQA-native, no ``[nq, L]``
gather) and the shared selection :func:`select_vertical_slash`.
"""
from __future__ import annotations

import math
from typing import Optional

import torch

from tsa_core.sparse.flexprefill.kernel import profiles_triton
from tsa_core.sparse.minference.naive import MInferenceParams, select_vertical_slash
from tsa_core.sparse.pattern import BlockPattern


def minference_pattern_triton(q: torch.Tensor, k: torch.Tensor, params: MInferenceParams = MInferenceParams(),
                              *, scale: Optional[float] = None) -> BlockPattern:
    """Triton twin of :func:`minference_pattern_naive` (same contract)."""
    B, Hq, L, D = q.shape
    scale = 1.0 / math.sqrt(D) if scale is None else float(scale)
    vertical, slash = profiles_triton(q, k, min(params.last_q, L), scale)
    return select_vertical_slash(vertical, slash, params)
