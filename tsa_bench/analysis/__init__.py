"""Analysis of the accuracy study (issue 12): paired bootstrap comparisons, Pareto frontiers,
the calibration search, per-layer sensitivity, figures. CPU only; numpy, pandas, matplotlib.

Modules: :mod:`~tsa_bench.analysis.paired` (method vs dense on the same samples),
:mod:`~tsa_bench.analysis.pareto`, :mod:`~tsa_bench.analysis.calibrate`,
:mod:`~tsa_bench.analysis.sensitivity`, :mod:`~tsa_bench.analysis.tables` (read the CSVs, one
point per setting, the per-task table) and :mod:`~tsa_bench.analysis.figures`.

The accuracy CSV (``results/accuracy/<run_id>.csv``): tidy rows of
:func:`tsa_bench.results.row` (provenance columns as every result file) with identity
``model``, ``seq_len``, ``method``, ``tau``, ``task`` (``"all"`` for a mean over tasks), the
extra columns ``setting`` (one label per method configuration within a model and length,
e.g. ``"tsa tau=0.005 drift"``), ``layers`` (the layer-set name: ``"half"``, ``"drift"``,
``"calibrated"``, ...) and ``level`` (``task`` / ``mean_tasks`` / ``mean_lengths``), and metrics:

* ``score``: value in points, ``lo``/``hi`` its percentile bootstrap interval, ``n`` samples
  (rows from :func:`~tsa_bench.analysis.paired.paired_rows`);
* ``score_diff``: method - dense in points, ``lo``/``hi`` the paired bootstrap interval;
* ``attention_speedup``: dense / sparse attention time of the sparse layers on the model's
  own Q/K/V at that length (``task`` = ``"all"``; ``tsa-bench study tables``: the median over
  samples of the per-sample ratio of the layers' CUDA-event times, ``attention_speedup_total``
  the ratio of the sums, ``attention_speedup_all_layers`` over every layer);
* ``attention_sparsity``: fraction of the causal attention map the sparse layers skip;
  ``keep_fraction``: fraction of query tokens kept; ``ttft_speedup``: whole-model TTFT ratio
  (median of per-sample ratios; ``ttft_speedup_total`` the ratio of the sums).

Dense has ``score_diff`` 0 with interval [0, 0], ``attention_speedup`` 1, sparsity 0.
"""
