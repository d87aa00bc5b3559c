"""RULER task generation and scoring (needs only a tokenizer; knows nothing of tsa_core).

* :class:`tasks.ruler.generate.Generator`: samples for a tokenizer, length and config, cached.
* :data:`tasks.ruler.tasks.TASKS`: the 13 task specs; :func:`tasks.ruler.tasks.sweep_spec`: the
  paper's needle sweep.
* :mod:`tasks.ruler.scoring`: RULER post-processing and metrics.

See docs/ruler.md.
"""
