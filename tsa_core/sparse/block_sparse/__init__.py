"""Block-sparse causal attention: masked-dense reference and the Triton kernel."""
from tsa_core.sparse.block_sparse.naive import block_sparse_attention_naive
from tsa_core.sparse.block_sparse.kernel import block_sparse_attention

__all__ = ["block_sparse_attention_naive", "block_sparse_attention"]
