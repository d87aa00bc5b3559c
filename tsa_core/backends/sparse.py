"""Registry entries of the sparse attention methods (FlexPrefill, XAttention, MInference).

Imported by :mod:`tsa_core.backends` after the dense entries; each entry points lazily at
its implementation under :mod:`tsa_core.sparse`.
"""
