"""Registry entries of the sparse attention methods (FlexPrefill, XAttention, MInference).

Imported by :mod:`tsa_core.backends` after the dense entries; it takes the registry from
:mod:`tsa_core.backends.registry`, not from the package, so the two do not import each other.
Every entry points lazily at :func:`tsa_core.sparse.methods.sparse_attention` with the method
(and executor) as options, so registering imports neither Triton nor the methods. All entries
are ``kind="sparse"``. The CPU entries run the PyTorch references (or the Triton kernels under
``TRITON_INTERPRET=1``); the ``-flex`` entries execute the same block pattern with
FlexAttention (CUDA only). Block density of the last call: :func:`tsa_core.sparse.last_stats`.
Other parameters (``gamma``, ``block_size``, ...) via a custom entry, e.g.::

    register_backend(AttentionBackend("flexprefill-g90", _TARGET, kind="sparse",
                     devices=("cpu", "cuda"), options={"method": "flexprefill", "gamma": 0.9}))
"""
from tsa_core.backends.registry import AttentionBackend, register_backend

_TARGET = "tsa_core.sparse.methods:sparse_attention"

for _b in (
    AttentionBackend("flexprefill", _TARGET, kind="sparse", devices=("cpu", "cuda"),
                     options={"method": "flexprefill"},
                     description="FlexPrefill (gamma 0.95, tau 0.1, block 128, min budget 1024), "
                                 "Triton block-sparse kernel"),
    AttentionBackend("xattention", _TARGET, kind="sparse", devices=("cpu", "cuda"),
                     options={"method": "xattention"},
                     description="XAttention (antidiagonal stride 16, threshold 0.9, block 128), "
                                 "Triton block-sparse kernel"),
    AttentionBackend("minference", _TARGET, kind="sparse", devices=("cpu", "cuda"),
                     options={"method": "minference"},
                     description="MInference vertical-slash (last 64 queries, budget 0.1 L, 20% "
                                 "vertical / 80% slash), Triton block-sparse + column kernel"),
    AttentionBackend("flexprefill-flex", _TARGET, kind="sparse", devices=("cuda",),
                     options={"method": "flexprefill", "executor": "flex"},
                     description="FlexPrefill pattern executed by FlexAttention (BlockMask.from_kv_blocks)"),
    AttentionBackend("xattention-flex", _TARGET, kind="sparse", devices=("cuda",),
                     options={"method": "xattention", "executor": "flex"},
                     description="XAttention pattern executed by FlexAttention (BlockMask.from_kv_blocks)"),
):
    register_backend(_b)
