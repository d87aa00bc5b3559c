"""``tsa-bench study``: turn ``tsa-bench ruler`` runs into the tidy accuracy CSV (issue 12).

A ruler run writes, per configuration ("arm": a method, and for TSA a tau and a layer set),
one CSV (its rows carry ``predictions``, ``setting``, ``layers`` and the JSON ``config`` with
``run_key``, ``plan``, ``tasks``, ``seq_lens``, ``n``) and a predictions JSONL, one record per
sample. ``study tables`` pairs every arm with the dense arm of the same model and length, on
the samples every arm of that group answered, and writes the rows that
:mod:`tsa_bench.analysis` reads (:mod:`tsa_bench.analysis.tables`, the figures, the notebook):

* ``score`` / ``score_diff`` per task and as the mean over tasks (:func:`compare_many`, paired
  percentile bootstrap; see :mod:`tsa_bench.analysis.paired`);
* per arm and length (``task = "all"``, ``n`` = samples used), with ``S`` the common samples:

  - ``attention_speedup`` = the median over ``S`` of the per-sample ratio: dense ``attn_ms``
    summed over the arm's sparse layers / the arm's ``attn_ms`` over the same layers. Sparse
    layers: ``plan.sparse_layers`` for a TSA arm; every layer for a sparse method without TSA
    (``xattention``) and for dense (whose ratio is then exactly 1). The median, as every timing
    here, so a one-off stall (a kernel compiled inside a timed sample) does not decide it;
  - ``attention_speedup_total``: the ratio of the sums over ``S`` instead (stalls included);
  - ``attention_speedup_all_layers``: the median ratio over every layer the dense records time;
  - ``ttft_speedup`` = the median over ``S`` of dense ``prefill_s`` / the arm's ``prefill_s``;
    ``ttft_speedup_total`` the ratio of the sums;
  - ``attention_sparsity`` / ``keep_fraction``: the mean over ``S`` and over the layers in each
    record's ``tsa_layers`` of their attention-map sparsity / kept fraction (dense: 0 / 1; a
    sparse method without ``tsa_layers``: no row).

  A ratio is taken over the samples of ``S`` whose records in *both* arms hold the times it
  needs; with none (``attn_ms`` is recorded on CUDA only, ``prefill_s`` by the batched engine
  only) there is no row, and the command says so.

``study sensitivity`` compares each arm that runs TSA in exactly one layer with dense
(:func:`~tsa_bench.analysis.sensitivity.sensitivity_table`) beside the layer's drift and its
own sparsity, kept fraction and attention speedup. Full definitions: ``docs/study.md``.
"""
from __future__ import annotations

import json
import math
import statistics
import shlex
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Dict, List, Mapping, Optional, Sequence, Tuple

from tsa_bench.cli import UsageError

NAME = "study"
HELP = "Accuracy study: ruler runs -> the tidy accuracy CSV (scores vs dense, speedups, sparsity, sensitivity)."
EPILOG = """examples:
  tsa-bench ruler --model smollm2-135m --method dense,tsa --tau 0.002,0.005,0.01 \\
      --sparse-layers "half;drift=results/layers/smollm2-135m.json" --seq-lens 4k -n 32 --out-dir runs/smol
  tsa-bench study tables runs/smol --model-name smollm2-135m --out results/accuracy/smollm2-4k.csv --print
  tsa-bench study tables runs/smol runs/smol-8k --dry-run          # list the arms and groups found
  tsa-bench figures --latency --accuracy results/accuracy/smollm2-4k.csv --out-dir /tmp/figs
  tsa-bench ruler --model smollm2-135m --method dense,tsa --sparse-layers "L0=0;L1=1;L2=2;L3=3" --out-dir runs/sens
  tsa-bench study sensitivity runs/sens --drift results/layers/smollm2-135m.json --model-name smollm2-135m --print

Run folders: the CSVs directly under each folder (or CSV files named themselves); a CSV's
predictions JSONL is its `predictions` path, else <folder>/preds/<that file's name>.
See docs/study.md for the exact definitions.
"""
SPEED_METRIC_ORDER = ("attention_speedup", "attention_speedup_all_layers", "ttft_speedup",
                      "attention_sparsity", "keep_fraction")
ROW_METRICS = SPEED_METRIC_ORDER + ("attention_speedup_total", "ttft_speedup_total", "attention_speedup_untouched",
                                    "predictions_changed")                                 # written to the CSV
UNTOUCHED_TOLERANCE = 0.02      # |untouched - 1| above this: stderr says the arm's timing carries a bias
PREDICTORS = ("sparsity", "keep_fraction", "attention_speedup")      # per-layer columns, sensitivity


def add_arguments(p) -> None:
    sub = p.add_subparsers(dest="study_command", metavar="SUBCOMMAND")
    tables = sub.add_parser("tables", help="score, paired difference to dense, speedups and sparsity per arm",
                            description="Pair every arm of the ruler runs with the dense arm of its model and length "
                                        "and write the tidy accuracy CSV.")
    tables.add_argument("run_dirs", nargs="+", metavar="RUN_DIR", help="ruler output folders (or ruler CSVs)")
    tables.add_argument("--speed-from", nargs="+", action="append", default=None, metavar="RUN_DIR",
                        help="take the timing figures (attention and TTFT speedups) from these ruler runs "
                             "instead: each arm from the run of the same setting, model and length, against "
                             "that run's own dense arm (e.g. a short run with the GPU to itself); an arm "
                             "they lack gets no timing rows. Scores and sparsity stay those of RUN_DIR. "
                             "Repeat the flag for runs of separate sessions, each with its own dense arm: "
                             "an arm is timed in the first session that ran it, against that session's dense")
    tables.add_argument("--method-layers", default=None, metavar="LAYERS",
                        help="the layers a sparse method without TSA (flexprefill, xattention, minference) runs "
                             "in, e.g. '5,11,17': its attention_speedup sums over them (default: every layer). "
                             "For a hybrid model give its full-attention layers (Gemma-3-270M: 5,11,17); its "
                             "sliding-window layers keep their band under every method")
    sens = sub.add_parser("sensitivity", help="score lost per layer (TSA in that layer alone) vs drift",
                          description="Compare every arm that runs TSA in exactly one layer with dense, beside "
                                      "the layer's drift, and write the tidy rows.")
    sens.add_argument("run_dirs", nargs="+", metavar="RUN_DIR", help="ruler output folders (or ruler CSVs)")
    sens.add_argument("--drift", required=True, metavar="PROFILE",
                      help="drift per layer: a profile-layers JSON (its 'drift' list) or CSV (metric == 'drift')")
    lay = sub.add_parser("layers", help="per-layer attention time of every arm, vs dense and vs the method alone",
                         description="Per (model, length) and arm: every layer's attention time (median over the "
                                     "common samples), its speedup against dense, and for a '<method>+tsa' arm its "
                                     "speedup against the '<method>' arm of the same run (what TSA adds on top).")
    lay.add_argument("run_dirs", nargs="+", metavar="RUN_DIR", help="ruler output folders (or ruler CSVs)")
    twins = sub.add_parser("twins", help="every arm against its twin (same setting and length) in other runs",
                           description="Pair every arm of RUN_DIR with the arm of the same setting and length in the "
                                       "--against runs (the same grid under another engine, attention path or "
                                       "session) on the samples both answered: predictions and scores that "
                                       "differ, and the paired score difference (RUN_DIR - twin).")
    twins.add_argument("run_dirs", nargs="+", metavar="RUN_DIR", help="the runs under test (ruler folders or CSVs)")
    twins.add_argument("--against", nargs="+", required=True, metavar="RUN_DIR",
                       help="the reference runs, e.g. the same arms with --sliding-attention mask")
    best = sub.add_parser("best", help="per model and length, the fastest setting within --max-drop of dense",
                          description="Read accuracy CSVs (written by `study tables`) and print, per model and "
                                      "length, the fastest setting other than dense whose score is within "
                                      "--max-drop points of dense.")
    best.add_argument("paths", nargs="*", metavar="CSV_OR_DIR",
                      help="accuracy CSVs or folders of them (default results/accuracy)")
    best.add_argument("--max-drop", type=float, default=1.0, help="accuracy budget in RULER points (default 1.0)")
    best.add_argument("--criterion", choices=["point", "upper"], default="point",
                      help="point: the drop's estimate within the budget (default); upper: the upper end of its "
                           "paired interval")
    best.add_argument("--speed", choices=["attention", "ttft", "sparsity"], default="attention",
                      help="what fastest means: attention speedup of the sparse layers (default), TTFT speedup, "
                           "or attention-map sparsity")
    for q in (tables, sens, lay, twins):
        q.add_argument("--model-name", default=None,
                       help="model name in the rows (e.g. smollm2-135m; default: the runs' --model); the runs "
                            "must then hold one model")
        q.add_argument("--out", default=None,
                       help="output CSV path, or a folder (default results/accuracy/<run id>.csv); never overwritten")
        q.add_argument("--resamples", type=int, default=2000, help="bootstrap resamples (default 2000)")
        q.add_argument("--confidence", type=float, default=0.95, help="interval level (default 0.95)")
        q.add_argument("--seed", type=int, default=0, help="bootstrap seed (default 0)")
        q.add_argument("--print", dest="print_table", action="store_true", help="print a summary table to stdout")
        q.add_argument("--dry-run", action="store_true", help="list the arms and groups found; write nothing")


# --------------------------------------------------------------------------- finding the arms

@dataclass
class ArmRun:
    """One arm of a ruler run, read from its CSV(s): what it ran and where its predictions are.
    CSVs of the same ``run_key`` (the same configuration run again, e.g. at another length, or
    in another session's folder) are merged into one ArmRun; ``predictions`` is the latest
    CSV's file and ``earlier_predictions`` the other files they name, in CSV order."""
    csvs: List[Path]
    predictions: Path
    model: str
    setting: str
    method: str
    tau: Optional[float]
    layers: str
    tsa: bool                           # the plan runs TSA in some layers
    sparse_layers: Tuple[int, ...]      # plan.sparse_layers (empty without TSA)
    run_key: str
    tasks: List[str]
    seq_lens: List[int]
    n: Optional[int]                    # samples per task and length (None: all in the file)
    weights: str = ""
    dtype: str = ""
    earlier_predictions: List[Path] = field(default_factory=list)
    _records: Optional[Dict[str, dict]] = field(default=None, repr=False)

    def records(self) -> Dict[str, dict]:
        """Every record of the predictions files by id: within a file the first record of an id
        wins (a torn last line ignored); across files the later file's (``predictions`` last)."""
        if self._records is None:
            from tsa_bench.distributed import read_records
            merged: Dict[str, dict] = {}
            for path in [*self.earlier_predictions, self.predictions]:
                try:
                    merged.update(read_records(path))
                except (json.JSONDecodeError, UnicodeDecodeError) as exc:
                    raise UsageError(f"predictions {path} (of run {self.run_key}): not JSONL: {exc}") from None
            self._records = merged
        return self._records

    def at(self, seq_len: int) -> Dict[str, dict]:
        """The records of this run at ``seq_len``: its tasks, the first ``n`` samples of each."""
        out = {}
        for i, r in self.records().items():
            if int(r.get("max_length", -1)) != seq_len or r.get("task") not in self.tasks:
                continue
            if self.n is not None and r.get("index") is not None and int(r["index"]) >= self.n:
                continue
            out[i] = r
        return out

    def speed_layers(self, method_layers: Optional[Sequence[int]] = None) -> Optional[Tuple[int, ...]]:
        """The layers ``attention_speedup`` sums over: the plan's sparse layers under TSA; for a
        sparse method without TSA ``method_layers`` (the layers it runs in; ``study tables
        --method-layers``), ``None`` (every layer) when not given; ``None`` for dense."""
        if self.tsa:
            return self.sparse_layers
        return tuple(method_layers) if method_layers and not _is_dense(self) else None

    def changed_layers(self, method_layers: Optional[Sequence[int]] = None) -> Optional[Tuple[int, ...]]:
        """The layers whose attention this arm changes: TSA's sparse layers, plus, for a sparse
        method (alone or ``<method>+tsa``), the layers it runs in (``method_layers``; ``None``:
        every layer, so the result is ``None``). Empty for dense."""
        if _is_dense(self):
            return ()
        if self.method == "tsa":
            return self.sparse_layers
        if not method_layers:
            return None
        return tuple(sorted(set(method_layers) | set(self.sparse_layers)))


def _stderr(msg: str) -> None:
    print(msg, file=sys.stderr)


def _is_dense(arm: ArmRun) -> bool:
    return arm.method == "dense"


def _first(df, col: str) -> Any:
    if col not in df.columns:
        return None
    vals = df[col].dropna()
    return None if vals.empty else vals.iloc[0]


def csv_files(paths: Sequence[str]) -> List[Path]:
    """The CSVs of the run folders (``*.csv`` directly under each) and of the CSV files given."""
    out: List[Path] = []
    for raw in paths:
        p = Path(raw)
        if p.is_dir():
            out.extend(sorted(p.glob("*.csv")))
        elif p.is_file():
            out.append(p)
        else:
            raise UsageError(f"RUN_DIR: no such folder or file: {raw}")
    return list(dict.fromkeys(out))


def predictions_path(recorded: str, csv: Path) -> Path:
    """The predictions JSONL a CSV names: the recorded path where it exists, else
    ``<the CSV's folder>/preds/<its file name>`` (a run copied from another machine)."""
    p = Path(recorded)
    if p.is_file():
        return p
    local = csv.parent / "preds" / p.name
    if local.is_file():
        return local
    raise UsageError(f"{csv}: its predictions file {recorded} does not exist, nor {local}")


def read_arm(csv: Path) -> Optional[ArmRun]:
    """The arm a ruler CSV describes, or None for a CSV that is no ruler run (no ``predictions``)."""
    import pandas as pd

    try:
        df = pd.read_csv(csv)
    except (pd.errors.ParserError, pd.errors.EmptyDataError, UnicodeDecodeError) as exc:
        raise UsageError(f"{csv}: not a CSV: {exc}") from None
    if "predictions" not in df.columns or df["predictions"].dropna().empty:
        return None
    if "bench" in df.columns and set(df["bench"].dropna()) - {"ruler"}:
        return None
    preds = sorted(set(df["predictions"].dropna()))
    if len(preds) > 1:
        raise UsageError(f"{csv}: rows name {len(preds)} predictions files; a ruler CSV holds one arm")
    try:
        config = json.loads(_first(df, "config") or "{}")
    except json.JSONDecodeError as exc:
        raise UsageError(f"{csv}: its 'config' column is not JSON: {exc}") from None
    plan = config.get("plan") or {}
    method = str(_first(df, "method") or config.get("method") or "").lower()
    if not method:
        raise UsageError(f"{csv}: no 'method' column nor config.method")
    tsa = plan.get("tsa") is not None if plan else (method == "tsa" or method.endswith("+tsa"))
    tau = _first(df, "tau")
    tau = float(tau) if tau is not None and tsa else None
    layers = _first(df, "layers")
    layers = "" if layers is None else str(layers)
    setting = _first(df, "setting")
    if setting is None:                  # a CSV written before ruler recorded its setting
        from tsa_bench.commands.ruler import Arm
        setting = Arm(method, tau, layers_label=layers).label()
    setting = str(setting)
    seq_lens = config.get("seq_lens") or sorted(int(v) for v in df["seq_len"].dropna().unique())
    tasks = config.get("tasks") or sorted(set(df["task"].dropna()) - {"all"})
    model = _first(df, "model") or config.get("model")
    if model is None:
        raise UsageError(f"{csv}: no 'model' column nor config.model")
    return ArmRun(csvs=[csv], predictions=predictions_path(str(preds[0]), csv), model=str(model),
                  setting=setting, method=method, tau=tau, layers=layers, tsa=tsa,
                  sparse_layers=tuple(int(i) for i in plan.get("sparse_layers") or ()) if tsa else (),
                  run_key=str(config.get("run_key") or preds[0]), tasks=list(tasks),
                  seq_lens=[int(L) for L in seq_lens], n=config.get("n"),
                  weights=str(_first(df, "weights") or ""), dtype=str(_first(df, "dtype") or ""))


def find_arms(paths: Sequence[str], log=None) -> List[ArmRun]:
    """Every arm of the ruler CSVs under ``paths``; CSVs of one ``run_key`` merged (tasks and
    lengths united, the largest ``n``). CSVs that are no ruler runs are named on ``log``."""
    log = log or _stderr
    files = sorted(csv_files(paths), key=lambda p: (p.name, str(p)))     # run id = time: later CSVs last
    arms: Dict[str, ArmRun] = {}
    for f in files:
        arm = read_arm(f)
        if arm is None:
            log(f"skipped {f}: not a ruler CSV (no 'predictions' column)")
            continue
        log(f"read {f}")
        old = arms.get(arm.run_key)
        if old is None:
            arms[arm.run_key] = arm
            continue
        old.csvs.append(f)
        if arm.predictions != old.predictions:
            if old.predictions not in old.earlier_predictions:
                old.earlier_predictions.append(old.predictions)
            if arm.predictions in old.earlier_predictions:
                old.earlier_predictions.remove(arm.predictions)
            old.predictions = arm.predictions
        old.tasks = sorted(set(old.tasks) | set(arm.tasks))
        old.seq_lens = sorted(set(old.seq_lens) | set(arm.seq_lens))
        old.n = None if old.n is None or arm.n is None else max(int(old.n), int(arm.n))
    if not arms:
        raise UsageError(f"no ruler CSVs in {', '.join(map(str, paths))} (run `tsa-bench ruler ... --out-dir DIR`)")
    for arm in arms.values():
        if arm.earlier_predictions:
            log(f"run {arm.run_key} ({arm.setting}): records of {1 + len(arm.earlier_predictions)} predictions files "
                f"united, where an id is in several the latest file's ({arm.predictions})")
    return list(arms.values())


@dataclass
class Group:
    """The arms of one model at one length, the dense one first, on their common samples."""
    model: str
    seq_len: int
    arms: List[ArmRun]
    records: Dict[str, Dict[str, dict]]          # setting -> id -> record, common ids only
    dropped: Dict[str, int]                      # setting -> records left out (not in every arm)

    @property
    def dense(self) -> ArmRun:
        return self.arms[0]

    @property
    def n(self) -> int:
        return len(next(iter(self.records.values())))


def group_arms(arms: Sequence[ArmRun], model_name: Optional[str]) -> List[Group]:
    """Arms grouped by (model, length), each group with exactly one dense arm (first) and its
    records cut down to the ids present in every arm of the group. UsageError for a group
    without or with several dense arms, two runs of one setting, or mixed weights / dtype."""
    models = sorted({a.model for a in arms})
    if model_name is not None and len(models) > 1:
        raise UsageError(f"--model-name names one model; the runs hold {len(models)}: {', '.join(models)} "
                         "(run `study` once per model)")
    cells: Dict[Tuple[str, int], List[ArmRun]] = {}
    for a in arms:
        for L in a.seq_lens:
            cells.setdefault((a.model, L), []).append(a)
    groups = []
    for (model, L), members in sorted(cells.items()):
        name = model_name or model
        where = f"{name} at length {L}"
        by_setting: Dict[str, ArmRun] = {}
        for a in members:
            if a.setting in by_setting:
                b = by_setting[a.setting]
                raise UsageError(f"{where}: two different runs of setting {a.setting!r} (run keys {b.run_key} "
                                 f"and {a.run_key}: {b.csvs[-1]} and {a.csvs[-1]}); give only one of them")
            by_setting[a.setting] = a
        dense = [a for a in members if _is_dense(a)]
        if len(dense) != 1:
            raise UsageError(f"{where}: need exactly one dense arm as the baseline, found {len(dense)} among "
                             f"settings {sorted(by_setting)} (run `tsa-bench ruler --method dense,...` on the same "
                             "samples)")
        for col in ("weights", "dtype"):
            vals = sorted({getattr(a, col) for a in members if getattr(a, col)})
            if len(vals) > 1:
                raise UsageError(f"{where}: the arms mix {col} {vals}; compare runs of one {col}")
        ordered = dense + [a for a in members if not _is_dense(a)]
        recs = {a.setting: a.at(L) for a in ordered}
        empty = [s for s, r in recs.items() if not r]
        if empty:
            raise UsageError(f"{where}: no prediction records for settings {empty}")
        common = set.intersection(*(set(r) for r in recs.values()))
        if not common:
            sizes = ", ".join(f"{s}: {len(r)}" for s, r in recs.items())
            raise UsageError(f"{where}: no sample id is in every arm ({sizes} samples)")
        dropped = {s: len(r) - len(common) for s, r in recs.items()}
        recs = {s: {i: r[i] for i in sorted(common)} for s, r in recs.items()}
        groups.append(Group(name, L, ordered, recs, dropped))
    return groups


def say_dropped(g: Group, log) -> None:
    total = sum(g.dropped.values())
    msg = f"{g.model} {_fmt_len(g.seq_len)}: {g.n} samples in every one of the {len(g.arms)} arms"
    if total:
        msg += "; left out (not in every arm): " + ", ".join(f"{s} {k}" for s, k in g.dropped.items() if k)
    log(msg)


def _fmt_len(L: int) -> str:
    return f"{L // 1024}k" if L % 1024 == 0 else str(L)


# --------------------------------------------------------------------------- the speed figures

def _ratio(pairs: Sequence[Tuple[float, float]], stat: str, what: str) -> float:
    """``stat="median"``: the median over samples of ``num / den`` (robust to a one-off stall,
    e.g. a kernel compiled inside a timed sample); ``"total"``: sum of ``num`` / sum of ``den``."""
    if stat == "total":
        den = sum(d for _, d in pairs)
        if den <= 0.0:
            raise ValueError(f"{what} of the arm sums to {den} over {len(pairs)} samples")
        return sum(n for n, _ in pairs) / den
    if stat != "median":
        raise ValueError(f"stat must be 'median' or 'total', got {stat!r}")
    if any(d <= 0.0 for _, d in pairs):
        raise ValueError(f"{what} of the arm is <= 0 on some sample")
    return float(statistics.median(n / d for n, d in pairs))


def attention_speedup(dense: Mapping[str, dict], arm: Mapping[str, dict],
                      layers: Optional[Sequence[int]], stat: str = "median") -> Optional[Tuple[float, int]]:
    """``(speedup, samples used)``: per sample, the dense ``attn_ms`` summed over ``layers``
    (``None``: every layer the dense record times) over the arm's; then the median of those
    per-sample ratios (``stat="median"``, the headline) or the ratio of the sums over samples
    (``"total"``: includes any one-off stall). Records are matched by id; a sample counts when
    both its records time every one of those layers. None when no sample does, or ``layers``
    is empty."""
    if layers is not None and not layers:
        return None
    pairs = []
    for i, d in dense.items():
        a = arm.get(i)
        td, ta = d.get("attn_ms") or {}, (a or {}).get("attn_ms") or {}
        keys = [str(k) for k in layers] if layers is not None else list(td)
        if not keys or any(k not in td or k not in ta for k in keys):
            continue
        pairs.append((sum(float(td[k]) for k in keys), sum(float(ta[k]) for k in keys)))
    if not pairs:
        return None
    return _ratio(pairs, stat, "attention time"), len(pairs)


def ttft_speedup(dense: Mapping[str, dict], arm: Mapping[str, dict],
                 stat: str = "median") -> Optional[Tuple[float, int]]:
    """``(dense prefill_s / the arm's, samples used)``: median of the per-sample ratios
    (``stat="median"``) or ratio of the sums (``"total"``) over the ids of ``dense`` where both
    records hold ``prefill_s``; None when none do."""
    pairs = [(float(d["prefill_s"]), float((arm.get(i) or {})["prefill_s"])) for i, d in dense.items()
             if d.get("prefill_s") is not None and (arm.get(i) or {}).get("prefill_s") is not None]
    if not pairs:
        return None
    return _ratio(pairs, stat, "prefill time"), len(pairs)


def tsa_means(records: Mapping[str, dict], layers: Optional[Sequence[int]] = None
              ) -> Optional[Tuple[float, float, int]]:
    """``(keep fraction, attention-map sparsity, samples used)``: the means over the records
    and over the layers of their ``tsa_layers`` (only ``layers`` when given) of each layer's
    ``[keep fraction, sparsity]``; None when no record has any."""
    keep = sparsity = 0.0
    pairs = n = 0
    wanted = None if layers is None else {str(k) for k in layers}
    for r in records.values():
        entries = [(k, v) for k, v in (r.get("tsa_layers") or {}).items() if wanted is None or str(k) in wanted]
        if not entries:
            continue
        for _, (k_frac, s_frac) in entries:
            keep += float(k_frac)
            sparsity += float(s_frac)
            pairs += 1
        n += 1
    return None if n == 0 else (keep / pairs, sparsity / pairs, n)


TIMING_METRICS = ("attention_speedup", "attention_speedup_all_layers", "ttft_speedup", "attention_speedup_total",
                  "ttft_speedup_total", "attention_speedup_untouched")


def timing_metrics(group: Group, arm: ArmRun,
                   method_layers: Optional[Sequence[int]] = None) -> Dict[str, Tuple[float, int]]:
    """The timing figures (:data:`TIMING_METRICS`) of ``arm`` against the dense arm of ``group``:
    ``{metric: (value, n)}`` for those its records allow (see the module docstring);
    ``method_layers``: see :meth:`ArmRun.speed_layers`."""
    dense, recs = group.records[group.dense.setting], group.records[arm.setting]
    layers = arm.speed_layers(method_layers)
    # the layers the arm leaves as dense: they should run x1.00 against dense, so their ratio
    # measures how far this arm's and dense's timings are apart for reasons other than the method
    # (another session's GPU, a busy host); none for dense or an arm that changes every layer
    changed = set(arm.changed_layers(method_layers) or ())
    untouched = [int(k) for k in _timed_layers(group) if int(k) not in changed] if changed else None
    out: Dict[str, Tuple[float, int]] = {}
    for metric, value in zip(TIMING_METRICS, (attention_speedup(dense, recs, layers),
                                              attention_speedup(dense, recs, None),
                                              ttft_speedup(dense, recs),
                                              attention_speedup(dense, recs, layers, "total"),
                                              ttft_speedup(dense, recs, "total"),
                                              attention_speedup(dense, recs, untouched) if untouched else None)):
        if value is not None:
            out[metric] = value
    return out


def changed_metrics(group: Group, arm: ArmRun) -> Dict[str, Tuple[float, int]]:
    """``predictions_changed``: on how many of the group's common samples the arm's generated
    text differs from dense's (``pred``; samples without it in either record are not counted),
    ``{metric: (count, samples compared)}``; none for dense or when no record holds ``pred``."""
    if _is_dense(arm):
        return {}
    dense, recs = group.records[group.dense.setting], group.records[arm.setting]
    pairs = [(d["pred"], recs[i]["pred"]) for i, d in dense.items()
             if "pred" in d and i in recs and "pred" in recs[i]]
    return {"predictions_changed": (float(sum(a != b for a, b in pairs)), len(pairs))} if pairs else {}


def sparsity_metrics(group: Group, arm: ArmRun) -> Dict[str, Tuple[float, int]]:
    """``attention_sparsity`` and ``keep_fraction`` of ``arm`` in ``group`` (dense: 0 and 1; a
    method without TSA: none), ``{metric: (value, n)}``."""
    out: Dict[str, Tuple[float, int]] = {}
    recs = group.records[arm.setting]
    if _is_dense(arm):
        out["attention_sparsity"], out["keep_fraction"] = (0.0, len(recs)), (1.0, len(recs))
    else:
        means = tsa_means(recs)
        if means is not None:
            out["keep_fraction"], out["attention_sparsity"] = (means[0], means[2]), (means[1], means[2])
    return out


# --------------------------------------------------------------------------- output

def _r(x: Optional[float], digits: int = 4) -> Optional[float]:
    return None if x is None or (isinstance(x, float) and math.isnan(x)) else round(float(x), digits) + 0.0


_CORE_IDENTITY = ("method", "tau", "model", "weights", "dtype")


def _split_identity(ident: Mapping[str, Any]) -> Tuple[Dict[str, Any], Dict[str, Any]]:
    """``(core, extra)`` of an arm's identity: the CSV identity columns :func:`row` takes, and
    the rest (setting, layers, run key, predictions), added beside them."""
    core = {k: v for k, v in ident.items() if k in _CORE_IDENTITY}
    return core, {k: v for k, v in ident.items() if k not in core}


def _identity(arm: ArmRun, model: str) -> Dict[str, Any]:
    ident = dict(method=arm.method, tau=arm.tau, model=model, setting=arm.setting, layers=arm.layers,
                 run_key=arm.run_key, predictions=str(arm.predictions))
    if arm.weights:
        ident["weights"] = arm.weights
    if arm.dtype:
        ident["dtype"] = arm.dtype
    return ident


def command_line(args) -> str:
    """The command as it would be typed (every option explicit), for the provenance config."""
    parts = ["tsa-bench", "study", args.study_command, *args.run_dirs]
    if getattr(args, "drift", None):
        parts += ["--drift", args.drift]
    if getattr(args, "against", None):
        parts += ["--against", *args.against]
    for flag, val in (("--model-name", args.model_name), ("--out", args.out)):
        if val is not None:
            parts += [flag, val]
    parts += ["--resamples", str(args.resamples), "--confidence", f"{args.confidence:g}", "--seed", str(args.seed)]
    if args.print_table:
        parts.append("--print")
    return shlex.join(parts)


def _write(args, kind: str, config: Dict[str, Any], rows: List[dict], summary: List[str]) -> int:
    """Write ``rows`` to the subcommand's CSV (``--out``), print ``summary`` under ``--print``,
    then the CSV's path; returns 0."""
    writer = _writer(args, kind, config)
    writer.add(rows)
    if args.print_table:
        print("\n".join(summary))
    print(writer.write())
    return 0


def _writer(args, kind: str, config: Dict[str, Any]):
    from tsa_bench.paths import RESULTS_DIR
    from tsa_bench.provenance import new_run_id
    from tsa_bench.results import ResultWriter

    out = Path(args.out) if args.out else RESULTS_DIR / "accuracy"
    if out.suffix == ".csv":
        out_dir, run_id = out.parent, out.stem
        if out.exists():
            raise UsageError(f"--out: {out} exists; result files are never overwritten")
    else:
        out_dir, run_id = out, new_run_id(kind)
    return ResultWriter("accuracy", config, device="cpu", out_dir=out_dir, run_id=run_id)


def _fmt_table(header: Sequence[str], rows: Sequence[Sequence[str]]) -> str:
    """Plain text table: the first column left-aligned, the others right-aligned."""
    widths = [max(len(str(x)) for x in col) for col in zip(header, *rows)]
    lines = []
    for r in (header, *rows):
        cells = [str(r[0]).ljust(widths[0])] + [str(x).rjust(w) for x, w in zip(r[1:], widths[1:])]
        lines.append("  ".join(cells).rstrip())
    return "\n".join(lines)


def _num(x: Optional[float], fmt: str) -> str:
    return "-" if x is None or (isinstance(x, float) and math.isnan(x)) else format(x, fmt)


def _check_stats_args(args) -> None:
    if args.resamples < 1:
        raise UsageError(f"--resamples must be >= 1, got {args.resamples}")
    if not 0.0 < args.confidence < 1.0:
        raise UsageError(f"--confidence must be in (0, 1), got {args.confidence}")


def _dry_run(groups: Sequence[Group], method_layers: Optional[Sequence[int]] = None) -> int:
    for g in groups:
        print(f"{g.model} {_fmt_len(g.seq_len)}: {g.n} common samples, baseline {g.dense.setting}")
        for a in g.arms:
            sl = a.speed_layers(method_layers)
            layers = "every layer" if sl is None else f"layers {list(sl)}"
            print(f"  {a.setting}: {len(g.records[a.setting])} samples, {g.dropped[a.setting]} left out, "
                  f"speedup over {layers}; {a.predictions}")
    return 0


# --------------------------------------------------------------------------- study tables

def tables_rows(groups: Sequence[Group], *, n_resamples: int, seed: int, confidence: float,
                log=None, speed_sessions: Optional[Sequence[Sequence[Group]]] = None,
                method_layers: Optional[Sequence[int]] = None) -> Tuple[List[dict], List[str]]:
    """(tidy rows, summary lines) of ``study tables`` over ``groups``. ``speed_sessions`` (the
    ``--speed-from`` runs, the groups of each timing session): each arm's timing rows come from
    the arm of the same setting in the first session whose group of the same model and length ran
    it, against that group's dense arm, and carry its run key in ``timed_run_key`` (and, with
    several sessions, the session's number from 1 in ``timed_session``); an arm no session ran
    gets no timing rows. ``method_layers``: the layers a sparse method without TSA runs in (its
    ``attention_speedup``; default every layer)."""
    from tsa_bench.analysis.paired import compare_many, paired_rows
    from tsa_bench.results import row

    log = log or _stderr
    rows: List[dict] = []
    summary: List[str] = []
    timed_elsewhere = speed_sessions is not None
    several = timed_elsewhere and len(speed_sessions) > 1
    by_cell: Dict[Tuple[str, int], List[Tuple[int, Group]]] = {}
    for number, session in enumerate(speed_sessions or (), start=1):
        for sg in session:
            by_cell.setdefault((sg.model, sg.seq_len), []).append((number, sg))
    for cell in sorted(set(by_cell) - {(g.model, g.seq_len) for g in groups}):
        log(f"--speed-from: {cell[0]} {_fmt_len(cell[1])} has no accuracy run; not used")
    for g in groups:
        timed_in: Dict[str, Tuple[Group, ArmRun]] = {}
        session_of: Dict[str, int] = {}
        if timed_elsewhere:
            for number, sg in by_cell.get((g.model, g.seq_len), ()):
                for sa in sg.arms:
                    if sa.setting not in timed_in:
                        timed_in[sa.setting] = (sg, sa)
                        session_of[sa.setting] = number
            untimed = [a.setting for a in g.arms if a.setting not in timed_in]
            if untimed:
                log(f"{g.model} {_fmt_len(g.seq_len)}: --speed-from has no run of "
                    f"{'any arm' if len(untimed) == len(g.arms) else ', '.join(untimed)}: no timing rows for "
                    f"{'them' if len(untimed) > 1 else 'it'}")
        dense = list(g.records[g.dense.setting].values())
        table = compare_many(dense, {a.setting: list(g.records[a.setting].values()) for a in g.arms},
                             n_resamples=n_resamples, seed=seed, confidence=confidence)
        identities = {a.setting: _identity(a, g.model) for a in g.arms}
        for ident in identities.values():
            ident["baseline_run_key"] = g.dense.run_key
        rows += paired_rows(table, identities)
        head = table[table.level == "mean_tasks"].set_index("method")
        lines = []
        missing: Dict[str, List[str]] = {}
        biased: List[str] = []
        for a in g.arms:
            timed = timed_in.get(a.setting) if timed_elsewhere else (g, a)   # None: said above
            speed = {**(timing_metrics(*timed, method_layers) if timed else {}), **sparsity_metrics(g, a),
                     **changed_metrics(g, a)}
            if timed:
                for metric in ("attention_speedup", "ttft_speedup"):
                    if metric not in speed:
                        missing.setdefault(metric, []).append(a.setting)
                if abs(speed.get("attention_speedup_untouched", (1.0, 0))[0] - 1.0) > UNTOUCHED_TOLERANCE:
                    biased.append(f"{a.setting} x{speed['attention_speedup_untouched'][0]:.3f}")
            core, extra = _split_identity(identities[a.setting])
            for metric in ROW_METRICS:
                if metric in speed:
                    value, n = speed[metric]
                    where = dict(timed_run_key=timed[1].run_key) if timed_elsewhere \
                        and metric in TIMING_METRICS else {}
                    if where and several:
                        where["timed_session"] = session_of[a.setting]
                    rows.append({**row(metric, _r(value), n=n, task="all", seq_len=g.seq_len, **core), **extra,
                                 **where})
            h = head.loc[a.setting]
            value = {m: v for m, (v, _) in speed.items()}
            lines.append([a.setting, _num(h["score"], ".2f"),
                          f"{h['diff']:+.2f} [{h['diff_lo']:+.2f}, {h['diff_hi']:+.2f}]",
                          *(_num(value.get(m), ".3f" if m in ("attention_sparsity", "keep_fraction") else ".2f")
                            for m in SPEED_METRIC_ORDER)])
        for metric, settings in missing.items():
            if metric == "attention_speedup":
                arm_of = {a.setting: a for a in g.arms}
                none = [s for s in settings if arm_of[s].speed_layers(method_layers) == ()]
                if none:
                    log(f"{g.model} {_fmt_len(g.seq_len)}: no attention_speedup row for {', '.join(none)}: "
                        "the run's config names no sparse layer (plan.sparse_layers)")
                settings = [s for s in settings if s not in none]
            if not settings:
                continue
            why = "attn_ms (timed on CUDA only)" if metric == "attention_speedup" else \
                "prefill_s (recorded by the batched engine)"
            log(f"{g.model} {_fmt_len(g.seq_len)}: no {metric} row for "
                f"{'any arm' if len(settings) == len(g.arms) else ', '.join(settings)}: the records lack {why}")
        if biased:
            log(f"{g.model} {_fmt_len(g.seq_len)}: the layers these arms leave as dense run against dense's at "
                f"{', '.join(biased)} (attention_speedup_untouched): their speed columns carry a bias of about that "
                "size (timed in another session or on a busy host, or, where kernel launches are the bottleneck, "
                "the sparse layers' host work delaying the layers after them)")
        pct = f"{confidence * 100:g}%"
        summary.append(f"{g.model}, {_fmt_len(g.seq_len)}: {g.n} samples per arm, baseline {g.dense.setting}; "
                       f"score = mean over tasks (points), diff vs dense [paired {pct} bootstrap]"
                       + ("" if not timed_elsewhere else
                          "; speedups from --speed-from "
                          f"({_speed_sources(by_cell[(g.model, g.seq_len)], session_of, several)})"
                          if (g.model, g.seq_len) in by_cell else "; no --speed-from run at this length"))
        summary.append(_fmt_table(["setting", "score", "diff [lo, hi]", "attn x", "attn x all", "ttft x",
                                   "sparsity", "keep"], lines))
        summary.append("")
    return rows, summary


def _speed_sources(sessions: Sequence[Tuple[int, Group]], session_of: Dict[str, int], several: bool) -> str:
    """The summary's words for where a group's arms were timed: ``N samples per arm`` with one
    session, else per session its samples per arm and how many of this group's arms it timed."""
    if not several:
        return f"{sessions[0][1].n} samples per arm"
    parts = []
    for number, sg in sessions:
        k = sum(1 for v in session_of.values() if v == number)
        parts.append(f"session {number}: {sg.n} samples per arm, {k} arm{'' if k == 1 else 's'} timed there")
    return "; ".join(parts)


def _config(args, groups: Sequence[Group], speed_sessions: Optional[Sequence[Sequence[Group]]] = None) -> Dict[str, Any]:
    """The provenance ``config`` of every row: the command and, per group, its sample count and
    the samples left out of arms (not in every arm). Each row names its own arm in the
    ``run_key`` and ``predictions`` columns (and its dense arm in ``baseline_run_key``); the
    config holds no per-arm list, which repeated on every row made a 650-sample grid's CSV
    mostly copies of it."""
    out = dict(command=command_line(args), run_dirs=list(args.run_dirs), resamples=args.resamples,
               seed=args.seed, confidence=args.confidence,
               groups=[dict(model=g.model, seq_len=g.seq_len, samples=g.n, arms=len(g.arms),
                            left_out={s: k for s, k in g.dropped.items() if k}) for g in groups])
    if getattr(args, "method_layers", None):
        out["method_layers"] = list(args.method_layers)
    if speed_sessions is not None:
        several = len(speed_sessions) > 1
        out["speed_from"] = [d for session in args.speed_from for d in session]
        if several:
            out["speed_sessions"] = [list(session) for session in args.speed_from]
        out["speed_groups"] = [dict(model=g.model, seq_len=g.seq_len, samples=g.n, arms=len(g.arms),
                                    baseline_run_key=g.dense.run_key, **(dict(session=k) if several else {}))
                               for k, session in enumerate(speed_sessions, start=1) for g in session]
    return out


def _parse_method_layers(spec: Optional[str]) -> Optional[List[int]]:
    if spec is None:
        return None
    from tsa_bench.hf.layers import parse_layer_spec
    try:
        layers = sorted(set(parse_layer_spec(spec)))
    except ValueError as e:
        raise UsageError(f"--method-layers: {e}") from None
    if not layers:
        raise UsageError(f"--method-layers: no layer in {spec!r}")
    return layers


def _groups(arms: Sequence[ArmRun], model_name: Optional[str], at_least: int = 1, log=_stderr) -> List[Group]:
    """:func:`group_arms` of ``arms``, the groups with at least ``at_least`` arms, each group's
    left-out samples said through ``log`` (stderr)."""
    groups = [g for g in group_arms(arms, model_name) if len(g.arms) >= at_least]
    for g in groups:
        say_dropped(g, log)
    return groups


def run_tables(args) -> int:
    _check_stats_args(args)
    args.method_layers = _parse_method_layers(args.method_layers)
    groups = _groups(find_arms(args.run_dirs), args.model_name)
    speed_sessions = None
    if args.speed_from:
        speed_sessions = []
        for k, session in enumerate(args.speed_from, start=1):
            tag = "--speed-from" if len(args.speed_from) == 1 else f"--speed-from (session {k})"
            try:
                speed_sessions.append(_groups(find_arms(session), args.model_name,
                                              log=lambda m, tag=tag: _stderr(f"{tag}: {m}")))
            except UsageError as e:
                raise UsageError(f"{tag} {' '.join(session)}: {e}") from None
    for g in (groups if args.method_layers else ()):
        timed = _timed_layers(g)
        absent = [i for i in args.method_layers if timed and str(i) not in timed]
        if absent:
            raise UsageError(f"--method-layers: {g.model} {_fmt_len(g.seq_len)} times no layer {absent} (its dense "
                             f"records time layers {[int(k) for k in timed]})")
    if args.dry_run:
        return _dry_run(groups, args.method_layers)
    rows, summary = tables_rows(groups, n_resamples=args.resamples, seed=args.seed, confidence=args.confidence,
                                speed_sessions=speed_sessions, method_layers=args.method_layers)
    return _write(args, "accuracy", _config(args, groups, speed_sessions), rows, summary)


# --------------------------------------------------------------------------- study sensitivity

def _single_layer(a: ArmRun) -> bool:
    return a.tsa and len(a.sparse_layers) == 1


def single_layer_sets(g: Group) -> Dict[Tuple[str, Optional[float]], Dict[int, ArmRun]]:
    """The arms of ``g`` that run TSA in exactly one layer (``plan.sparse_layers`` of length 1),
    by (method, tau), then by layer. UsageError when two arms of one (method, tau) run the
    same layer."""
    out: Dict[Tuple[str, Optional[float]], Dict[int, ArmRun]] = {}
    for a in g.arms:
        if not _single_layer(a):
            continue
        layer = a.sparse_layers[0]
        cell = out.setdefault((a.method, a.tau), {})
        if layer in cell:
            raise UsageError(f"{g.model} {_fmt_len(g.seq_len)}: settings {cell[layer].setting!r} and {a.setting!r} "
                             f"both run {a.method} tau={a.tau} in layer {layer} alone")
        cell[layer] = a
    return dict(sorted(out.items(), key=lambda kv: (kv[0][0], -1.0 if kv[0][1] is None else kv[0][1])))


def sensitivity_of(g: Group, arms: Mapping[int, ArmRun], drift, *, n_resamples: int, seed: int,
                   confidence: float):
    """(table, rho, predictor rhos) for the single-layer ``arms`` of ``g`` (layer -> arm).

    ``table``: :func:`~tsa_bench.analysis.sensitivity.sensitivity_table` (dense vs each arm on
    the group's common samples) with, per layer, the columns of :data:`PREDICTORS`: the
    layer's own attention-map sparsity and kept fraction (means over the samples of its
    ``tsa_layers`` entry; ``tsa_n`` samples) and its attention speedup (dense ``attn_ms`` of
    that layer / the arm's, summed over ``speed_n`` samples), NaN where not recorded.
    ``rho``: Spearman's rho of drift and drop; predictor rhos: Spearman's rho of each
    recorded predictor with the drop (:func:`rank_correlations`)."""
    from tsa_bench.analysis.sensitivity import rank_correlations, sensitivity_table

    dense = g.records[g.dense.setting]
    table, rho = sensitivity_table(list(dense.values()), {layer: list(g.records[a.setting].values())
                                                          for layer, a in arms.items()},
                                   drift, n_resamples=n_resamples, seed=seed, confidence=confidence)
    cols: Dict[str, List[float]] = {c: [] for c in (*PREDICTORS, "tsa_n", "speed_n")}
    for layer in (int(v) for v in table["layer"]):
        recs = g.records[arms[layer].setting]
        means = tsa_means(recs, [layer])
        speed = attention_speedup(dense, recs, [layer])
        cols["keep_fraction"].append(means[0] if means else math.nan)
        cols["sparsity"].append(means[1] if means else math.nan)
        cols["tsa_n"].append(means[2] if means else 0)
        cols["attention_speedup"].append(speed[0] if speed else math.nan)
        cols["speed_n"].append(speed[1] if speed else 0)
    for c, vals in cols.items():
        table[c] = vals
    present = [p for p in PREDICTORS if table[p].notna().any()]
    return table, rho, rank_correlations(table, present)


def _tau_label(tau: Optional[float]) -> str:
    return "default" if tau is None else f"{tau:g}"


def sensitivity_output(g: Group, method: str, tau: Optional[float], arms: Mapping[int, ArmRun], drift, *,
                       n_resamples: int, seed: int, confidence: float) -> Tuple[List[dict], List[str]]:
    """(tidy rows, summary lines) of one (model, length, method, tau): :func:`sensitivity_rows`
    (``layer_drop``, ``layer_drift``, ``drift_drop_spearman``) plus ``layer_<predictor>`` per
    layer and ``<predictor>_drop_spearman`` for the recorded :data:`PREDICTORS`."""
    from tsa_bench.analysis.sensitivity import sensitivity_rows
    from tsa_bench.results import row

    where = f"{g.model} {_fmt_len(g.seq_len)} {method} tau={_tau_label(tau)}"
    try:
        table, rho, rhos = sensitivity_of(g, arms, drift, n_resamples=n_resamples, seed=seed, confidence=confidence)
    except ValueError as exc:
        raise UsageError(f"{where}: {exc}") from None
    core = dict(model=g.model, seq_len=g.seq_len, method=method, tau=tau)
    rows = sensitivity_rows(table, rho, **core, baseline_run_key=g.dense.run_key)
    for t in table.itertuples(index=False):
        arm = arms[int(t.layer)]
        for p in PREDICTORS:
            v = getattr(t, p)
            if v == v:                                            # NaN: not recorded
                n = int(t.speed_n if p == "attention_speedup" else t.tsa_n)
                rows.append({**row(f"layer_{p}", _r(v), n=n, layer=int(t.layer), task="all", **core),
                             "setting": arm.setting, "run_key": arm.run_key, "baseline_run_key": g.dense.run_key})
    for p, value in rhos.items():
        rows.append({**row(f"{p}_drop_spearman", _r(value), n=len(table), task="all", **core),
                     "baseline_run_key": g.dense.run_key})
    lines = [[str(int(t.layer)), _num(t.drift, ".4f"), _num(t.score, ".2f"),
              f"{t.drop:+.2f} [{t.drop_lo:+.2f}, {t.drop_hi:+.2f}]", _num(t.sparsity, ".3f"),
              _num(t.keep_fraction, ".3f"), _num(t.attention_speedup, ".2f")]
             for t in table.itertuples(index=False)]
    summary = [f"{where} in one layer: {g.n} samples, dense {table['dense'].iloc[0]:.2f}; "
               f"drop = dense - score (points) [paired {confidence * 100:g}% bootstrap]",
               _fmt_table(["layer", "drift", "score", "drop [lo, hi]", "sparsity", "keep", "attn x"], lines),
               "Spearman rho with the drop: " + ", ".join(
                   f"{name} {_num(v, '+.2f')}" for name, v in [("drift", rho), *rhos.items()]),
               ""]
    return rows, summary


def run_sensitivity(args) -> int:
    from tsa_bench.analysis.sensitivity import load_drift

    _check_stats_args(args)
    try:
        drift = load_drift(args.drift)
    except (ValueError, KeyError) as exc:
        raise UsageError(f"--drift: {exc}") from None
    # dense and the single-layer arms only: the other arms' samples do not narrow the common ids
    arms = [a for a in find_arms(args.run_dirs) if _is_dense(a) or _single_layer(a)]
    if not any(_single_layer(a) for a in arms):
        raise UsageError("no arm runs TSA in exactly one layer (run e.g. `tsa-bench ruler --method dense,tsa "
                         "--sparse-layers \"L0=0;L1=1;L2=2\"`)")
    groups = _groups(arms, args.model_name, at_least=2)
    if args.dry_run:
        return _dry_run(groups)
    rows: List[dict] = []
    summary: List[str] = []
    for g in groups:
        for (method, tau), layer_arms in single_layer_sets(g).items():
            r, s = sensitivity_output(g, method, tau, layer_arms, drift, n_resamples=args.resamples,
                                      seed=args.seed, confidence=args.confidence)
            rows += r
            summary += s
    return _write(args, "sensitivity", {**_config(args, groups), "drift": str(args.drift)}, rows, summary)


# --------------------------------------------------------------------------- study layers

def _timed_layers(g: Group) -> List[str]:
    """The layers (as ``attn_ms`` keys, in layer order) that the group's dense records time."""
    return sorted({k for r in g.records[g.dense.setting].values() for k in (r.get("attn_ms") or {})}, key=int)


def _alone_method(arm: ArmRun) -> Optional[str]:
    """``"flexprefill"`` for a ``flexprefill+tsa`` arm; None for any other."""
    return arm.method[: -len("+tsa")] if arm.method.endswith("+tsa") else None


def _median_ms(recs: Mapping[str, dict], keys: Sequence[str]) -> Optional[Tuple[float, int]]:
    """(median over samples of the arm's ``attn_ms`` summed over ``keys``, samples used)."""
    vals = [sum(float(r["attn_ms"][k]) for k in keys) for r in recs.values()
            if all(k in (r.get("attn_ms") or {}) for k in keys)]
    return (float(statistics.median(vals)), len(vals)) if vals else None


def layer_rows(g: Group) -> Tuple[List[dict], List[str]]:
    """(tidy rows, summary lines) of ``study layers`` for one group. Per arm and per layer the
    dense record times (``layer`` column), then over all of them (``*_all_layers``):
    ``attention_ms`` (median over samples), ``attention_speedup`` (median over samples of dense /
    arm; not for dense) and, for a ``<m>+tsa`` arm whose group holds the ``<m>`` arm alone,
    ``attention_speedup_vs_method`` (median of ``<m>`` / arm), naming that arm in ``baseline_run_key``."""
    from tsa_bench.results import row

    dense = g.records[g.dense.setting]
    timed = _timed_layers(g)
    if not timed:
        return [], [f"{g.model} {_fmt_len(g.seq_len)}: the dense records hold no attn_ms (timed on CUDA only)"]
    alone = {a.method: a for a in g.arms if not a.tsa and not _is_dense(a)}
    rows: List[dict] = []
    lines = []
    dense_ms: Dict[str, float] = {}                  # the dense arm's per-layer medians, for the summary
    for a in g.arms:
        recs = g.records[a.setting]
        core, extra = _split_identity(_identity(a, g.model))
        base = alone.get(_alone_method(a)) if a.tsa else None
        line = [a.setting]
        for key in timed + [None]:
            keys, sel = (timed, None) if key is None else ([key], [int(key)])
            suffix = "_all_layers" if key is None else ""
            where = dict(task="all", seq_len=g.seq_len, **({} if key is None else {"layer": int(key)}), **core)
            ms = _median_ms(recs, keys)
            if ms is None:
                continue
            if _is_dense(a) and key is not None:
                dense_ms[key] = ms[0]
            rows.append({**row("attention_ms" + suffix, _r(ms[0]), n=ms[1], **where), **extra})
            sp = vs = None
            if not _is_dense(a):
                sp = attention_speedup(dense, recs, sel)
                if sp is not None:
                    rows.append({**row("attention_speedup" + suffix, _r(sp[0]), n=sp[1], **where), **extra,
                                 "baseline_run_key": g.dense.run_key})
            if base is not None:
                vs = attention_speedup(g.records[base.setting], recs, sel)
                if vs is not None:
                    rows.append({**row("attention_speedup_vs_method" + suffix, _r(vs[0]), n=vs[1], **where),
                                 **extra, "baseline_run_key": base.run_key})
            if key is None:
                line += [_num(ms[0], ".2f"), _num(sp and sp[0], ".2f"), _num(vs and vs[0], ".2f")]
        lines.append(line)
    per_layer = ", ".join(f"{k}: {_num(v, '.2f')}" for k, v in dense_ms.items())
    summary = [f"{g.model}, {_fmt_len(g.seq_len)}: {g.n} samples per arm; attention ms = median over samples of the "
               "sum over every layer; x dense, x method = medians of per-sample ratios",
               _fmt_table(["setting", "attention ms", "x dense", "x method"], lines),
               f"dense, per layer (ms): {per_layer}", ""]
    return rows, summary


def run_layers(args) -> int:
    groups = _groups(find_arms(args.run_dirs), args.model_name)
    if args.dry_run:
        return _dry_run(groups)
    rows: List[dict] = []
    summary: List[str] = []
    for g in groups:
        r, s_ = layer_rows(g)
        rows += r
        summary += s_
    if not rows:
        raise UsageError("no arm holds per-layer attention times (attn_ms: recorded on CUDA only)")
    return _write(args, "layers", _config(args, groups), rows, summary)


# --------------------------------------------------------------------------- study twins

def twin_rows(tested: Sequence[ArmRun], reference: Sequence[ArmRun], model_name: Optional[str], *,
              n_resamples: int, seed: int, confidence: float, log=_stderr) -> Tuple[List[dict], List[str]]:
    """(tidy rows, summary lines) of ``study twins``: per arm of ``tested`` and length, against
    the ``reference`` arm of the same setting and length on their common samples (task "all"):
    ``predictions_differ`` and ``scores_differ`` (counts, ``n`` = common samples), ``score`` of
    each side (``score_twin`` for the reference) and ``score_diff`` = tested - reference with its
    paired bootstrap interval. The twin is named in ``twin_run_key`` / ``twin_predictions``."""
    from tsa_bench.analysis.paired import compare
    from tsa_bench.results import row

    twin: Dict[Tuple[str, int], ArmRun] = {}
    for a in reference:
        for L in a.seq_lens:
            if (a.setting, L) in twin:
                raise UsageError(f"--against: two runs of setting {a.setting!r} at length {L} (run keys "
                                 f"{twin[(a.setting, L)].run_key} and {a.run_key}); give only one of them")
            twin[(a.setting, L)] = a
    rows: List[dict] = []
    lines = []
    for b in tested:
        for L in b.seq_lens:
            a = twin.get((b.setting, L))
            if a is None:
                log(f"{b.setting} at {_fmt_len(L)}: no twin in --against")
                continue
            ra, rb = a.at(L), b.at(L)
            common = sorted(set(ra) & set(rb))
            if not common:
                log(f"{b.setting} at {_fmt_len(L)}: no sample in both runs")
                continue
            differ = sum(ra[i].get("pred") != rb[i].get("pred") for i in common)
            scores = sum(ra[i].get("score") != rb[i].get("score") for i in common)
            t = compare([ra[i] for i in common], [rb[i] for i in common], name=b.setting, n_resamples=n_resamples,
                        seed=seed, confidence=confidence)
            r = t[(t.task == "all") & (t.seq_len == L)].iloc[0]
            core, extra = _split_identity(_identity(b, model_name or b.model))
            where = dict(task="all", seq_len=L, **core)
            extra = {**extra, "twin_run_key": a.run_key, "twin_predictions": str(a.predictions)}
            stats = [("predictions_differ", differ, None, None), ("scores_differ", scores, None, None)]
            stats += [(metric, _r(r[col]), _r(r[col + "_lo"]), _r(r[col + "_hi"]))
                      for metric, col in (("score", "score"), ("score_twin", "baseline"), ("score_diff", "diff"))]
            rows += [{**row(metric, v, lo=lo, hi=hi, n=len(common), **where), **extra} for metric, v, lo, hi in stats]
            lines.append([b.setting, _fmt_len(L), str(len(common)), str(differ), str(scores), _num(r["baseline"], ".2f"),
                          _num(r["score"], ".2f"), f"{_num(r['diff'], '+.2f')} [{_num(r['diff_lo'], '+.2f')}, "
                                                   f"{_num(r['diff_hi'], '+.2f')}]"])
    summary = [f"every arm against its twin; diff = run - twin [paired {confidence:.0%} bootstrap]",
               _fmt_table(["setting", "length", "common", "preds differ", "scores differ", "twin", "run", "diff"],
                          lines)]
    return rows, summary


def run_twins(args) -> int:
    _check_stats_args(args)
    tested, reference = find_arms(args.run_dirs), find_arms(args.against)
    if args.dry_run:
        for b in tested:
            print(f"{b.setting}: run {b.run_key}, lengths {', '.join(_fmt_len(L) for L in b.seq_lens)}")
        return 0
    rows, summary = twin_rows(tested, reference, args.model_name, n_resamples=args.resamples, seed=args.seed,
                              confidence=args.confidence)
    if not rows:
        raise UsageError("no arm has a twin (same setting and length) with common samples in --against")
    config = dict(command=command_line(args), run_dirs=list(args.run_dirs), against=list(args.against),
                  resamples=args.resamples, seed=args.seed, confidence=args.confidence)
    return _write(args, "twins", config, rows, summary)


# --------------------------------------------------------------------------- study best

def run_best(args) -> int:
    from tsa_bench.analysis.tables import BEST_SPEEDS, accuracy_points, best_within, read_csvs
    from tsa_bench.commands.figures import accuracy_files

    files = accuracy_files(args.paths or None, what="CSV_OR_DIR")
    if not files:
        raise UsageError(f"no CSV in {', '.join(args.paths or ['results/accuracy'])}")
    df = read_csvs(sorted(files, key=lambda f: f.name))        # by run id, i.e. by time: the later row wins
    if "metric" not in df.columns or not df["metric"].isin(["score", "score_diff"]).any():
        raise UsageError("no accuracy rows (metric score / score_diff) in those CSVs: give `study tables` output")
    try:
        table = best_within(accuracy_points(df), args.max_drop, args.criterion, args.speed)
    except ValueError as exc:
        raise UsageError(str(exc)) from None
    col = BEST_SPEEDS[args.speed]
    drop = "drop estimate" if args.criterion == "point" else "upper end of the drop's interval"
    print(f"fastest setting by {col} within {args.max_drop:g} points of dense ({drop}); diff = setting - dense "
          "[paired 95% interval]; attn x = attention speedup of the sparse layers; untouched x = the layers it "
          "leaves as dense against dense's (far from 1: its timing and dense's ran on differently loaded hosts); "
          "within = settings in the budget")
    rows = []
    for _, r in table.iterrows():
        name = r["setting"] if isinstance(r["setting"], str) else f"none (closest: {r['closest']})"
        rows.append([r["model"], _fmt_len(int(r["seq_len"])), str(name),
                     _num(r["diff"], "+.2f") + f" [{_num(r['diff_lo'], '+.2f')}, {_num(r['diff_hi'], '+.2f')}]",
                     _num(r["attention_speedup"], ".2f"), _num(r["ttft_speedup"], ".2f"),
                     _num(r["attention_sparsity"], ".3f"), _num(r["attention_speedup_untouched"], ".2f"),
                     str(r["candidates"])])
    print(_fmt_table(["model", "length", "setting", "diff [lo, hi]", "attn x", "ttft x", "sparsity", "untouched x",
                      "within"], rows))
    return 0


def run(args) -> int:
    if getattr(args, "study_command", None) == "tables":
        return run_tables(args)
    if getattr(args, "study_command", None) == "sensitivity":
        return run_sensitivity(args)
    if getattr(args, "study_command", None) == "best":
        return run_best(args)
    if getattr(args, "study_command", None) == "layers":
        return run_layers(args)
    if getattr(args, "study_command", None) == "twins":
        return run_twins(args)
    raise UsageError("choose a subcommand: `tsa-bench study tables RUN_DIR ...`, "
                     "`tsa-bench study sensitivity RUN_DIR ... --drift PROFILE`, `tsa-bench study layers RUN_DIR ...`, "
                     "`tsa-bench study twins RUN_DIR ... --against RUN_DIR ...` or `tsa-bench study best [CSV ...]`")
