"""Subcommands of ``tsa-bench`` (discovered by :mod:`tsa_bench.cli`)."""
