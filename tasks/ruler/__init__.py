"""RULER task generation and scoring."""
