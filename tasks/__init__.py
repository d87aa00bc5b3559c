"""Evaluation tasks (RULER and friends); they need only a tokenizer, never tsa_core."""
