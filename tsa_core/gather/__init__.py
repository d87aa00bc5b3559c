"""Compress (gather Q, K, V rows per query head) and decompress (scatter the output back)."""
from tsa_core.gather.naive import compress_qkv_naive, decompress_output_naive
from tsa_core.gather.kernel import compress_qkv_triton, decompress_output_triton

__all__ = ["compress_qkv_naive", "decompress_output_naive",
           "compress_qkv_triton", "decompress_output_triton"]
