"""tsa-bench: benchmarks, model integration and evaluation around :mod:`tsa_core`."""
__version__ = "0.1.0"
