"""``tsa-bench calibrate``: the fastest TSA setting (coverage tau, sparse layers) whose RULER drop
versus dense stays within a budget, saved as a layer/tau profile and checked on held-out samples.

Flow: every evaluation is one ``tsa-bench ruler`` arm run in this process on the *calibration*
samples (``--calib-seed``; the model is loaded once, :func:`tsa_bench.commands.ruler.keep_models`),
compared sample by sample with one dense run on the same samples
(:func:`tsa_bench.analysis.paired.compare`). The search
(:func:`tsa_bench.analysis.calibrate.calibrate`) picks which settings to evaluate. The chosen
setting is written as a profile JSON, then dense and the profile (read back through
``ruler --sparse-layers <profile>``, its tau included) run on the *held-out* samples
(``--eval-seed``), and the held-out drop, its paired interval and the speed figures are reported.
"""
from __future__ import annotations

import contextlib
import json
import math
import shlex
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Dict, List, Mapping, Optional, Sequence, Tuple

from tsa_bench.args import add_model_load_arguments, fmt_length, parse_lengths, resolve_model_arg
from tsa_bench.cli import UsageError

NAME = "calibrate"
HELP = ("Search TSA's tau and sparse layers for the fastest setting within an accuracy budget on calibration "
        "samples; save it as a profile and report its held-out drop and speed.")
EPILOG = """examples:
  tsa-bench calibrate --model meta-llama/Llama-3.1-8B-Instruct --seq-lens 4k --max-drop 1.0 --device cuda
  tsa-bench calibrate --model M --seq-lens 4k,16k --taus 0.005,0.01,0.02 --layer-sets "half;drift=results/layers/m.json"
  tsa-bench calibrate --model M --tasks niah_single_1,vt,qa_1 -n 25 --objective ttft --criterion upper
  tsa-bench calibrate --model M --seq-lens 4k -n 100 --criterion upper --confidence 0.6 --margin 0.5
  tsa-bench calibrate --model tiny-llama --weights random --tokenizer toy --device cpu --dtype fp32 \\
      --seq-lens 2k --tasks qa_1 -n 2 --taus 0.1,0.3 --layer-sets "last=3" --eval-n 1   # CPU smoke run
  tsa-bench calibrate --model M --dry-run

speed figure (--objective; higher is faster, a whole-model figure so layer sets compare):
  sparsity   fraction of the model's causal attention map that TSA skips: the sum over the sparse
             layers of their mean attention-map sparsity, divided by the number of full-attention
             layers (grows with tau and with every added layer; deterministic, no timing noise)
  ttft       dense mean prefill time / the setting's mean prefill time (batched engine)
  attention  dense / the setting's attention time summed over all layers, per-sample mean
             (CUDA only: CUDA events around every layer's attention call)

A setting is feasible when its drop (dense - TSA, RULER points, mean over tasks, and over
lengths when several) is <= --max-drop: the point estimate (--criterion point) or the upper end
of its paired bootstrap interval at --confidence (--criterion upper). --margin M tests the search
against --max-drop - M instead, a guard against the winner's curse (the search's sparsest
feasible setting is the one whose estimate was luckiest); the held-out verdict keeps --max-drop.
The profile goes to
results/layers/<model>-calibrated.json (<model>-random-calibrated.json for random weights; in
--out-dir when given) and is used by `ruler`, `niah`, `prefill` (--sparse-layers PATH, its tau
unless --tau) and tsa_bench.hf.load_model(sparse_layers=PATH). Exit code 0: a setting was found;
1: no setting met the budget (nothing saved, the closest one reported); 2: usage error.
Every ruler run is resumable: rerunning the same command reuses the stored predictions.
"""

DEFAULT_TAUS = "0.002,0.005,0.01,0.02,0.05"
# --objective -> the figure used as the search's speed (also the CSV metric name)
OBJECTIVES = {"sparsity": "model_attention_sparsity", "ttft": "ttft_speedup",
              "attention": "model_attention_speedup"}
FIGURE_NAMES = {"model_attention_sparsity": "model attention sparsity",
                "sparse_layer_sparsity": "sparse layers skip", "ttft_speedup": "TTFT speedup",
                "model_attention_speedup": "attention speedup"}
N_RESAMPLES = 2000


def add_arguments(p) -> None:
    p.add_argument("--model", default=None,
                   help="preset name, .gguf file or directory, local path or Hugging Face id (default: as ruler)")
    add_model_load_arguments(p)
    p.add_argument("--seq-lens", default="4k", help="context lengths, e.g. 4k or 4k,16k (default 4k)")
    p.add_argument("--max-drop", type=float, default=1.0,
                   help="accuracy budget: largest allowed drop vs dense in RULER points (default 1.0)")
    p.add_argument("--taus", default=DEFAULT_TAUS, help=f"candidate TSA coverages, comma list (default {DEFAULT_TAUS})")
    p.add_argument("--layer-sets", default=None,
                   help="candidate sparse-layer sets separated by ';', each 'spec' or 'name=spec'; spec: '15-29', "
                        "'half', 'all' (every full-attention layer), 'preset' or a profile JSON (default: half, "
                        "the model's drift profile when results/layers holds one, all)")
    p.add_argument("--tasks", default="all", help="RULER tasks: all, niah, or a comma list (default all)")
    p.add_argument("-n", "--num-samples", type=int, default=25,
                   help="calibration samples per task and length (default 25)")
    p.add_argument("--calib-seed", type=int, default=1042,
                   help="generation seed of the calibration samples (default 1042; must differ from --eval-seed)")
    p.add_argument("--eval-seed", type=int, default=42,
                   help="generation seed of the held-out samples (default 42, the evaluation set of `ruler`)")
    p.add_argument("--eval-n", type=int, default=50,
                   help="held-out samples per task and length (default 50; 0 skips the held-out evaluation)")
    p.add_argument("--objective", default="sparsity", choices=sorted(OBJECTIVES),
                   help="speed figure the search maximises (default sparsity; definitions below)")
    p.add_argument("--criterion", default="point", choices=["point", "upper"],
                   help="budget test on the drop's point estimate or its paired interval's upper end (default point)")
    p.add_argument("--confidence", type=float, default=0.95,
                   help="level of the search's paired bootstrap intervals, whose upper end --criterion upper tests "
                        "(default 0.95; 0.6 makes that end a one-sided 80%% bound: between the point estimate and "
                        "the 95%% bound in caution). The held-out report keeps 95%%")
    p.add_argument("--margin", type=float, default=0.0,
                   help="points taken off --max-drop for the search only (default 0): a setting is feasible on the "
                        "calibration samples when its drop is <= max-drop - margin; the held-out verdict keeps "
                        "--max-drop")
    p.add_argument("--out-dir", default=None,
                   help="directory of the CSV, the ruler runs and the profile (default: results/calibrate, "
                        "the profile in results/layers)")
    p.add_argument("--dense-backend", default="sdpa", help="dense kernel from the registry (default sdpa)")
    p.add_argument("--engine", default="batched", choices=["batched", "hf-generate"],
                   help="ruler's greedy decoding engine (default batched; ttft needs it)")
    p.add_argument("--batch-size", default="auto", help="decode rows of the batched engine (default auto)")
    p.add_argument("--tokenizer", default=None, help="tokenizer path or HF id, or 'toy' (default: the model's)")
    p.add_argument("--template", default="auto", choices=["auto", "base", "chat", "meta-llama3"],
                   help="model template (default auto, as ruler)")
    p.add_argument("--data", default="auto", choices=["auto", "real", "generated"], help="corpora (as ruler)")
    p.add_argument("--words", default="auto", choices=["auto", "wonderwords", "builtin"],
                   help="needle word lists (as ruler)")
    p.add_argument("--essays", default=None, help="Paul Graham essays (as ruler)")
    p.add_argument("--squad", default=None, help="SQuAD v2 dev JSON (as ruler)")
    p.add_argument("--hotpotqa", default=None, help="HotpotQA dev distractor JSON (as ruler)")
    p.add_argument("--cache-dir", default=None, help="generated-data cache (default ~/.cache/tsa-bench/ruler)")
    p.add_argument("--no-progress", action="store_true", help="no progress bars")
    p.add_argument("--dry-run", action="store_true", help="print the resolved search and exit")


# --------------------------------------------------------------------------- figures

def model_sparsity(records: Sequence[Mapping], num_attention_layers: int) -> float:
    """Fraction of the whole model's causal attention map that TSA skips: for each sparse layer,
    the mean over the records of its attention-map sparsity (``tsa_layers[layer][1]``), summed
    over the layers and divided by ``num_attention_layers`` (the full-attention layers; dense
    layers contribute 0). A record without ``tsa_layers`` (dense) contributes nothing."""
    if num_attention_layers < 1:
        raise ValueError(f"num_attention_layers must be >= 1, got {num_attention_layers}")
    if not records:
        raise ValueError("no prediction records")
    return sum(sum(v) / len(records) for v in _layer_sparsities(records).values()) / num_attention_layers


def sparse_layer_sparsity(records: Sequence[Mapping]) -> Optional[float]:
    """Fraction of their own causal attention map that the sparse layers skip: per layer the
    mean over the records holding it of ``tsa_layers[layer][1]``, averaged over the layers
    (the figure a target such as "the sparse layers skip 20%" speaks of). None without any."""
    per_layer = _layer_sparsities(records)
    if not per_layer:
        return None
    return sum(sum(v) / len(v) for v in per_layer.values()) / len(per_layer)


def _layer_sparsities(records: Sequence[Mapping]) -> Dict[str, List[float]]:
    """Layer -> the attention-map sparsities (``tsa_layers[layer][1]``) of the records holding it."""
    per_layer: Dict[str, List[float]] = {}
    for r in records:
        for layer, (_, sparsity) in (r.get("tsa_layers") or {}).items():
            per_layer.setdefault(str(layer), []).append(float(sparsity))
    return per_layer


def _by_id(records: Sequence[Mapping], key: str, what: str) -> Dict[str, Mapping]:
    """``records`` keyed by id, each of which must hold ``key``."""
    missing = [r.get("id") for r in records if r.get(key) is None]
    if missing or not records:
        raise ValueError(f"{what}: {len(missing)} of {len(records)} prediction records have no {key!r} "
                         f"(e.g. {missing[:2]})")
    return {r["id"]: r for r in records}


def _total_ratio(fn, dense: Sequence[Mapping], records: Sequence[Mapping], key: str, what: str, *layers) -> float:
    """``fn`` (a :mod:`tsa_bench.commands.study` speedup) as the ratio of the totals over the
    samples both runs hold (every record must hold ``key``)."""
    got = fn(_by_id(dense, key, what), _by_id(records, key, what), *layers, stat="total")
    if got is None:
        raise ValueError(f"{what}: the two runs share no sample")
    return got[0]


def ttft_speedup(dense: Sequence[Mapping], records: Sequence[Mapping]) -> float:
    """Dense mean ``prefill_s`` / the setting's mean ``prefill_s`` (the batched engine records it)."""
    from tsa_bench.commands.study import ttft_speedup as ratio
    return _total_ratio(ratio, dense, records, "prefill_s",
                        "the ttft objective needs prefill times (ruler --engine batched)")


def attention_speedup(dense: Sequence[Mapping], records: Sequence[Mapping]) -> float:
    """Dense / the setting's attention time: per record the sum of ``attn_ms`` over all layers,
    averaged over the records (recorded on CUDA only)."""
    from tsa_bench.commands.study import attention_speedup as ratio
    return _total_ratio(ratio, dense, records, "attn_ms",
                        "the attention objective needs per-layer attention times (recorded on CUDA only)", None)


def figures(dense: Sequence[Mapping], records: Sequence[Mapping], num_attention_layers: int) -> Dict[str, float]:
    """Every speed figure the records allow: the sparsity always, the TTFT and attention
    speedups when both runs recorded their times."""
    out = {"model_attention_sparsity": model_sparsity(records, num_attention_layers)}
    layer_sparsity = sparse_layer_sparsity(records)
    if layer_sparsity is not None:
        out["sparse_layer_sparsity"] = layer_sparsity
    for name, fn in (("ttft_speedup", ttft_speedup), ("model_attention_speedup", attention_speedup)):
        try:
            out[name] = fn(dense, records)
        except ValueError:
            pass
    return out


def speed_of(objective: str, figs: Mapping[str, float]) -> float:
    """The figure ``objective`` names; ValueError saying what is missing otherwise."""
    if objective not in OBJECTIVES:
        raise ValueError(f"--objective must be one of {sorted(OBJECTIVES)}, got {objective!r}")
    name = OBJECTIVES[objective]
    if name not in figs:
        need = "ruler --engine batched" if objective == "ttft" else "a CUDA device"
        raise UsageError(f"--objective {objective}: the runs recorded no {FIGURE_NAMES[name]} (needs {need})")
    return figs[name]


@dataclass(frozen=True)
class Measured:
    """One setting on one sample set: the drop (dense - method, points) with its paired 95%
    interval ``[drop_lo, drop_hi]``, both scores, the speed figures, the sample count, the
    paired table and the predictions file."""
    drop: float
    drop_lo: float
    drop_hi: float
    dense_score: float
    score: float
    n: int
    figures: Dict[str, float]
    table: object = field(repr=False, compare=False, default=None)
    predictions: str = ""


def measure(dense: Sequence[Mapping], records: Sequence[Mapping], num_attention_layers: int,
            predictions: str = "", confidence: float = 0.95) -> Measured:
    """Pair ``records`` with ``dense`` (same ids) and measure them: the headline row of
    :func:`~tsa_bench.analysis.paired.compare` (mean over lengths when several, else over tasks),
    its interval at ``confidence``."""
    from tsa_bench.analysis.calibrate import headline_row
    from tsa_bench.analysis.paired import compare

    table = compare(dense, records, name="tsa", n_resamples=N_RESAMPLES, seed=0, confidence=confidence)
    r = headline_row(table)
    # + 0.0: identical predictions give a drop of 0.0, not -0.0
    return Measured(drop=-float(r["diff"]) + 0.0, drop_lo=-float(r["diff_hi"]) + 0.0,
                    drop_hi=-float(r["diff_lo"]) + 0.0,
                    dense_score=float(r["baseline"]), score=float(r["score"]), n=int(r["n"]),
                    figures=figures(dense, records, num_attention_layers), table=table, predictions=predictions)


# --------------------------------------------------------------------------- ruler runs

@dataclass(frozen=True)
class Run:
    """One ruler arm: its prediction records (the asked samples only), predictions file, CSV and
    the tau its plan ran (None for dense)."""
    records: List[dict]
    predictions: str
    csv: str
    tau: Optional[float]


class RulerRunner:
    """Runs ``tsa-bench ruler`` arms in this process (``base``: ruler's argv without ``--method``,
    ``--tau``, ``--sparse-layers``, ``--seed``, ``-n``), writing under ``out_dir``. Call within
    :func:`tsa_bench.commands.ruler.keep_models` to load the model once. Ruler's own printing
    goes to stderr. A run already made in this process is not run again."""

    def __init__(self, base: Sequence[str], out_dir: Path, tasks: Sequence[str], lengths: Sequence[int]):
        self.base, self.out_dir = list(base), Path(out_dir)
        self.tasks, self.lengths = list(tasks), list(lengths)
        self._done: Dict[tuple, Run] = {}

    def argv(self, *, seed: int, n: int, method: str, tau: Optional[float] = None,
             sparse_layers: Optional[str] = None) -> List[str]:
        out = [*self.base, "--method", method, "--seed", str(seed), "-n", str(n), "--out-dir", str(self.out_dir)]
        if tau is not None:
            out += ["--tau", repr(float(tau))]
        if sparse_layers is not None:
            out += ["--sparse-layers", sparse_layers]
        return out

    def __call__(self, *, seed: int, n: int, method: str, tau: Optional[float] = None,
                 sparse_layers: Optional[str] = None) -> Run:
        import pandas as pd

        from tsa_bench.analysis.paired import read_predictions
        from tsa_bench.cli import build_parser
        from tsa_bench.commands import ruler

        key = (seed, n, method, tau, sparse_layers)
        if key in self._done:
            return self._done[key]
        args = build_parser().parse_args(self.argv(seed=seed, n=n, method=method, tau=tau,
                                                   sparse_layers=sparse_layers))
        before = set(self.out_dir.glob("*.csv"))
        with contextlib.redirect_stdout(sys.stderr):
            rc = ruler.run(args)
        new = sorted(set(self.out_dir.glob("*.csv")) - before)
        if rc != 0 or len(new) != 1:
            raise RuntimeError(f"ruler {method} (seed {seed}) returned {rc} and wrote {len(new)} CSV files")
        df = pd.read_csv(new[0])
        preds = str(df["predictions"].dropna().iloc[0])
        tau_ran = df["tau"].dropna()
        # the predictions file is keyed by the configuration, not by tasks or n: keep the asked samples
        want = len(self.tasks) * len(self.lengths) * n
        records = [r for r in read_predictions(preds) if r["task"] in self.tasks
                   and int(r["max_length"]) in self.lengths and int(r.get("index", 0)) < n]
        if len(records) != want:
            raise RuntimeError(f"{preds}: expected {want} prediction records, found {len(records)}")
        run = Run(records, preds, str(new[0]), float(tau_ran.iloc[0]) if len(tau_ran) else None)
        self._done[key] = run
        return run


class Evaluator:
    """``evaluate(setting)`` for the search: runs the setting on the calibration samples (``seed``,
    ``n``), pairs it with one dense run there (made once), and returns an
    :class:`~tsa_bench.analysis.calibrate.Evaluation` whose speed is the ``objective``'s figure.
    ``measured[(tau, layers)]`` keeps the full :class:`Measured` of every setting."""

    def __init__(self, runner: Callable[..., Run], *, seed: int, n: int, objective: str,
                 num_attention_layers: int, confidence: float = 0.95):
        speed_of(objective, {v: 0.0 for v in OBJECTIVES.values()})       # a bad objective fails now
        self.runner, self.seed, self.n, self.confidence = runner, seed, n, confidence
        self.objective, self.num_attention_layers = objective, num_attention_layers
        self.measured: Dict[Tuple[float, Tuple[int, ...]], Measured] = {}
        self._dense: Optional[Run] = None

    @property
    def dense(self) -> Run:
        if self._dense is None:
            self._dense = self.runner(seed=self.seed, n=self.n, method="dense")
        return self._dense

    def __call__(self, setting):
        from tsa_bench.analysis.calibrate import Evaluation

        layers = ",".join(map(str, setting.layers))
        spec = f"{setting.layer_set}={layers}" if setting.layer_set else layers
        dense = self.dense                  # the dense run first: a failing setup fails before any TSA run
        run = self.runner(seed=self.seed, n=self.n, method="tsa", tau=setting.tau, sparse_layers=spec)
        m = measure(dense.records, run.records, self.num_attention_layers, run.predictions, self.confidence)
        self.measured[(setting.tau, setting.layers)] = m
        return Evaluation.from_paired(m.table, speedup=speed_of(self.objective, m.figures))


# --------------------------------------------------------------------------- setup

def resolve_layer_sets(text: Optional[str], config, *, preset=None, model_name: str = "",
                       weights: str = "pretrained") -> Dict[str, Tuple[int, ...]]:
    """``--layer-sets`` as ``{name: layers}``. Specs: ``all`` (every full-attention layer), or
    anything ``--sparse-layers`` takes (``15-29``, ``half``, ``preset``, a profile JSON). Default
    (``text`` None): ``half``, the model's drift profile if ``results/layers`` holds one for it
    (pretrained weights), and ``all``. Layers that cannot run TSA are a UsageError."""
    from tsa_bench.commands.ruler import parse_layer_sets
    from tsa_bench.hf.layers import check_full_attention, find_profile, full_attention_layers, load_profile
    from tsa_bench.hf.loading import num_decoder_layers, resolve_sparse_layers

    n_layers = num_decoder_layers(config)
    full = full_attention_layers(config)
    if text is None:
        specs = [("half", "half")]
        drift = find_profile(model_name) if weights == "pretrained" and model_name else None
        if drift is not None and load_profile(drift).get("num_layers") in (None, n_layers):
            specs.append(("drift", str(drift)))
        specs.append(("all", "all"))
    else:
        try:
            specs = parse_layer_sets(text)
        except UsageError as exc:
            raise UsageError(str(exc).replace("--sparse-layers", "--layer-sets")) from None
    out: Dict[str, Tuple[int, ...]] = {}
    for name, spec in specs:
        try:
            if spec.strip().lower() == "all":
                layers = tuple(full) if full is not None else tuple(range(n_layers))
            else:
                layers = resolve_sparse_layers(spec, n_layers, preset=preset, model_name=model_name,
                                               weights=weights, attention_layers=full)[0]
            check_full_attention(layers, config)
        except ValueError as exc:
            raise UsageError(f"--layer-sets {name}={spec}: {exc}") from None
        if not layers:
            raise UsageError(f"--layer-sets {name}={spec}: no layers")
        out[name] = tuple(layers)
    return out


def parse_taus(text: str) -> List[float]:
    """``--taus``: sorted unique floats, each in (0, 1) (ruler's ``--tau`` parser, zero refused:
    tau 0 is dense, which the search runs anyway)."""
    from tsa_bench.commands.ruler import parse_taus as parse
    return sorted(parse(str(text), flag="--taus", zero=False))


def calibrated_profile_path(model_name: str, weights: str, out_dir: Optional[str]) -> Path:
    """``<dir>/<model slug>[-random]-calibrated.json``, dir = ``out_dir`` or ``results/layers``:
    next to the drift profile (``<slug>.json``), never over it."""
    from tsa_bench.hf.layers import profile_path

    p = profile_path(model_name, weights, Path(out_dir) if out_dir else None)
    return p.with_name(f"{p.stem}-calibrated.json")


def _ruler_base(args, device: str, tasks: Sequence[str]) -> List[str]:
    base = ["ruler", "--model", str(args.model), "--weights", args.weights, "--device", device,
            "--dtype", args.dtype, "--seq-lens", args.seq_lens, "--tasks", ",".join(tasks),
            "--dense-backend", args.dense_backend, "--engine", args.engine, "--batch-size", str(args.batch_size),
            "--template", args.template, "--data", args.data, "--words", args.words]
    for flag, value in (("--rope-scaling", args.rope_scaling), ("--tokenizer", args.tokenizer),
                        ("--essays", args.essays), ("--squad", args.squad), ("--hotpotqa", args.hotpotqa),
                        ("--cache-dir", args.cache_dir)):
        if value is not None:
            base += [flag, str(value)]
    return base + (["--no-progress"] if args.no_progress else [])


def _use_command(args, path: Path) -> str:
    parts = ["tsa-bench", "ruler", "--model", str(args.model), "--sparse-layers", str(path),
             "--seq-lens", args.seq_lens]
    if args.weights != "pretrained":
        parts += ["--weights", args.weights]
    if args.tokenizer:
        parts += ["--tokenizer", args.tokenizer]
    return " ".join(shlex.quote(p) for p in parts)


def _fmt_figs(figs: Mapping[str, float]) -> str:
    unit = {"model_attention_sparsity": "", "sparse_layer_sparsity": ""}
    return ", ".join(f"{FIGURE_NAMES[k]} {v:.4f}" if k in unit else f"{FIGURE_NAMES[k]} {v:.3f}x"
                     for k, v in figs.items())


# --------------------------------------------------------------------------- command

@dataclass(frozen=True)
class Plan:
    """The validated command: samples, model facts, the grid, and where things go."""
    tasks: List[str]
    lengths: List[int]
    taus: List[float]
    layer_sets: Dict[str, Tuple[int, ...]]
    model_name: str
    num_layers: int
    num_attention_layers: int
    device: str
    profile: Path
    out_dir: Path


def make_plan(args) -> Plan:
    """Validate the flags (UsageError naming the flag) and resolve model, layer sets and paths."""
    from tasks.ruler.tasks import resolve_tasks
    from tsa_bench.commands.ruler import resolve_device
    from tsa_bench.hf.layers import full_attention_layers
    from tsa_bench.hf.loading import model_config, num_decoder_layers
    from tsa_bench.provenance import REPO_ROOT

    lengths = parse_lengths(args.seq_lens)
    try:
        tasks = resolve_tasks(args.tasks)
    except ValueError as exc:
        raise UsageError(f"--tasks: {exc}") from None
    taus = parse_taus(args.taus)
    if not math.isfinite(args.max_drop) or args.max_drop < 0:
        raise UsageError(f"--max-drop must be a finite number of points >= 0, got {args.max_drop}")
    if not math.isfinite(args.margin) or not 0 <= args.margin <= args.max_drop:
        raise UsageError(f"--margin must be between 0 and --max-drop ({args.max_drop:g}) points, got {args.margin}")
    if args.num_samples < 1:
        raise UsageError(f"-n must be >= 1, got {args.num_samples}")
    if not 0.0 < args.confidence < 1.0:
        raise UsageError(f"--confidence must be in (0, 1), got {args.confidence}")
    if args.eval_n < 0:
        raise UsageError(f"--eval-n must be >= 0, got {args.eval_n}")
    if args.calib_seed == args.eval_seed:
        raise UsageError(f"--calib-seed and --eval-seed are both {args.eval_seed}: the calibration samples "
                         "must be disjoint from the held-out ones")
    if min(lengths) < 256:
        raise UsageError(f"--seq-lens must be >= 256 tokens, got {min(lengths)}")
    resolve_model_arg(args, lengths)
    try:
        config, preset = model_config(args.model, args.weights, args.rope_scaling)
    except ValueError as exc:
        raise UsageError(f"--model {args.model}: {exc}") from None
    model_name = preset.name if preset is not None else str(args.model)
    n_layers = num_decoder_layers(config)
    full = full_attention_layers(config)
    layer_sets = resolve_layer_sets(args.layer_sets, config, preset=preset, model_name=model_name,
                                    weights=args.weights)
    device = resolve_device(args.device)
    if args.objective == "attention" and not device.startswith("cuda"):
        raise UsageError(f"--objective attention needs a CUDA device (attention times are recorded on CUDA only); "
                         f"the device is {device}: use --objective sparsity or ttft")
    if args.objective == "ttft" and args.engine != "batched":
        raise UsageError("--objective ttft needs --engine batched (it records each sample's prefill time)")
    return Plan(tasks=tasks, lengths=lengths, taus=taus, layer_sets=layer_sets, model_name=model_name,
                num_layers=n_layers, num_attention_layers=n_layers if full is None else len(full), device=device,
                profile=calibrated_profile_path(model_name, args.weights, args.out_dir),
                out_dir=Path(args.out_dir) if args.out_dir else REPO_ROOT / "results" / "calibrate")


def print_plan(args, plan: Plan) -> None:
    per_set = math.ceil(math.log2(len(plan.taus) + 1))
    print(f"calibrate: {plan.model_name} ({plan.num_layers} layers, {plan.num_attention_layers} full-attention), "
          f"{args.weights} weights, {args.dtype} on {plan.device}")
    print(f"search: taus {', '.join(f'{t:g}' for t in plan.taus)} x {len(plan.layer_sets)} layer sets = "
          f"{len(plan.taus) * len(plan.layer_sets)} settings, at most {per_set * len(plan.layer_sets)} evaluations "
          f"+ 1 dense run; objective {args.objective} ({FIGURE_NAMES[OBJECTIVES[args.objective]]}); budget "
          f"{_search_budget(args):g} points ({args.criterion} criterion"
          + (f", upper end of the {args.confidence * 100:g}% interval" if args.criterion == "upper" else "")
          + (f"; --max-drop {args.max_drop:g} less a margin of {args.margin:g}, held out against "
             f"{args.max_drop:g})" if args.margin else ")"))
    for name, layers in plan.layer_sets.items():
        print(f"  layer set {name}: {_n_layers(layers)} {','.join(map(str, layers))}")
    print(f"calibration samples: seed {args.calib_seed}, {args.num_samples} per task and length; held-out: seed "
          f"{args.eval_seed}, {args.eval_n} per task and length; {len(plan.tasks)} tasks x "
          f"{', '.join(fmt_length(L) for L in plan.lengths)}")


def run(args) -> int:
    from tsa_bench.analysis.calibrate import calibrate
    from tsa_bench.commands import ruler as R

    plan = make_plan(args)
    print_plan(args, plan)
    if args.dry_run:
        print(f"would write {plan.profile}")
        return 0
    runner = RulerRunner(_ruler_base(args, plan.device, plan.tasks), plan.out_dir / "ruler", plan.tasks,
                         plan.lengths)
    setup = {k: v for k, v in vars(args).items() if not k.startswith("_") and k != "command"}
    setup.update(model_name=plan.model_name, device=plan.device, tasks=plan.tasks, seq_lens=plan.lengths,
                 taus=plan.taus, layer_sets={k: list(v) for k, v in plan.layer_sets.items()},
                 num_layers=plan.num_layers, num_attention_layers=plan.num_attention_layers,
                 profile=str(plan.profile))
    with R.keep_models():
        ev = Evaluator(runner, seed=args.calib_seed, n=args.num_samples, objective=args.objective,
                       num_attention_layers=plan.num_attention_layers, confidence=args.confidence)

        def report(e):
            m = ev.measured[(e.setting.tau, e.setting.layers)]
            print(f"[{e.step + 1}] tau {e.setting.tau:g} {e.setting.layer_set} ({_n_layers(e.setting.layers)}): "
                  f"drop {_pts(m)} (tsa {m.score:.2f}, dense {m.dense_score:.2f}), {_fmt_figs(m.figures)} -> "
                  + ("feasible" if e.feasible else "over budget"), flush=True)

        result = calibrate(plan.taus, plan.layer_sets, ev, _search_budget(args), criterion=args.criterion,
                           on_evaluation=report)
        for note in result.skipped:
            print(f"  skipped {note}")
        rows = _search_rows(args, plan, result, ev)
        if result.best is None:
            _report_infeasible(args, result, ev)
        else:
            rows += _save_and_check(args, plan, result, ev, runner, setup)
    print(_write_csv(rows, setup, plan.device, plan.out_dir))
    return 0 if result.best is not None else 1


def _report_infeasible(args, result, ev: Evaluator) -> None:
    """No setting met the budget: say so, and name the closest one (smallest drop under the
    criterion, then the fastest)."""
    judged = (lambda e: e.evaluation.drop) if args.criterion == "point" else (lambda e: e.evaluation.drop_hi)
    close = min(result.log, key=lambda e: (judged(e), -e.evaluation.speedup))
    m = ev.measured[(close.setting.tau, close.setting.layers)]
    print(f"no setting met the search budget of {_search_budget(args):g} points ({args.criterion} criterion, "
          f"{len(result.log)} of {result.grid_size} settings evaluated); nothing saved. "
          f"Closest: tau {close.setting.tau:g} "
          f"{close.setting.layer_set} (layers {','.join(map(str, close.setting.layers))}): drop {_pts(m)}. "
          "Try smaller --taus, smaller --layer-sets, a larger --max-drop or a smaller --margin")


def _save_and_check(args, plan: Plan, result, ev: Evaluator, runner: RulerRunner, setup: dict) -> List[dict]:
    """Write the chosen setting's profile, print how to use it, run the held-out check (unless
    ``--eval-n 0``) and add its results to the profile; returns the held-out rows."""
    from tsa_bench.analysis.calibrate import profile_dict
    from tsa_bench.provenance import provenance

    best = result.best
    m = ev.measured[(best.tau, best.layers)]
    extra = {"objective": args.objective, "objective_metric": OBJECTIVES[args.objective], "weights": args.weights,
             "num_attention_layers": plan.num_attention_layers,
             "calibration": {"seed": args.calib_seed, "n": args.num_samples, "tasks": plan.tasks,
                             "seq_lens": plan.lengths, "dense_score": m.dense_score, "score": m.score,
                             "drop_lo": m.drop_lo, "figures": m.figures},
             "budget": args.max_drop, "margin": args.margin,
             "skipped": list(result.skipped), "provenance": provenance(setup, plan.device)}
    doc = profile_dict(result, model=plan.model_name, num_layers=plan.num_layers, extra=extra)
    _write_json(plan.profile, doc)
    print(f"chosen: tau {best.tau:g}, layer set {best.layer_set} (layers {','.join(map(str, best.layers))}): "
          f"drop {_pts(m)}, {_fmt_figs(m.figures)} ({len(result.log)} of {result.grid_size} settings evaluated)")
    print(f"profile: {plan.profile}")
    print(f"use it: {_use_command(args, plan.profile)}")
    if args.eval_n == 0:
        return []
    held = _heldout(args, plan, runner, best, ev.dense)
    doc["heldout"] = {k: v for k, v in held.items() if k != "rows"}
    _write_json(plan.profile, doc)
    return held["rows"]


def _search_budget(args) -> float:
    """The budget the search tests: --max-drop less --margin (the held-out verdict keeps --max-drop)."""
    return args.max_drop - args.margin


def _n_layers(layers) -> str:
    return f"{len(layers)} layer" + ("" if len(layers) == 1 else "s")


def _pts(m: Measured) -> str:
    return f"{m.drop:.2f} [{m.drop_lo:.2f}, {m.drop_hi:.2f}]"


def _write_json(path: Path, doc: dict) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(doc, indent=2) + "\n")


def _ident(args, plan: Plan, method: str, tau: Optional[float]) -> dict:
    """Identity columns of a headline row (mean over tasks, and over lengths when several)."""
    return dict(method=method, tau=tau, model=str(args.model), weights=args.weights, dtype=args.dtype,
                stage="e2e", task="all", seq_len=plan.lengths[0] if len(plan.lengths) == 1 else None)


def _level(plan: Plan) -> str:
    return "mean_tasks" if len(plan.lengths) == 1 else "mean_lengths"


def _measured_rows(args, plan: Plan, m: Measured, tau: float, extra: dict) -> List[dict]:
    """``drop`` (dense - tsa, points, paired 95% interval), ``score`` and one row per speed figure."""
    from tsa_bench.results import row

    ident = _ident(args, plan, "tsa", tau)
    return ([{**row("drop", round(m.drop, 4), lo=round(m.drop_lo, 4), hi=round(m.drop_hi, 4), n=m.n, **ident),
              **extra},
             {**row("score", round(m.score, 4), n=m.n, **ident), **extra}]
            + [{**row(name, round(v, 6), n=m.n, **ident), **extra} for name, v in m.figures.items()])


def _search_rows(args, plan: Plan, result, ev: Evaluator) -> List[dict]:
    """Tidy rows of the search (``split`` = ``calibration``): the dense score, and per evaluation
    :func:`_measured_rows` with the extra columns step/layer_set/layers/setting/feasible/chosen."""
    from tsa_bench.results import row

    common = dict(split="calibration", seed=args.calib_seed, objective=args.objective, criterion=args.criterion,
                  max_drop=args.max_drop, margin=args.margin, level=_level(plan))
    rows = []
    for e in result.log:
        m = ev.measured[(e.setting.tau, e.setting.layers)]
        if not rows:
            rows.append({**row("score", round(m.dense_score, 4), n=m.n, **_ident(args, plan, "dense", None)),
                         **common, "setting": "dense", "predictions": ev.dense.predictions})
        extra = dict(common, step=e.step, layer_set=e.setting.layer_set, layers=",".join(map(str, e.setting.layers)),
                     setting=f"tsa tau={e.setting.tau:g} {e.setting.layer_set}", feasible=e.feasible,
                     chosen=result.best is not None and e.setting == result.best, predictions=m.predictions)
        rows += _measured_rows(args, plan, m, e.setting.tau, extra)
    return rows


def _heldout(args, plan: Plan, runner: RulerRunner, best, calib_dense: Run) -> dict:
    """Dense and the saved profile (``ruler --sparse-layers <profile>``, its tau read from the
    profile) on the held-out samples: the paired comparison and speed figures, printed, as
    rows (``split`` = ``heldout``: :func:`~tsa_bench.analysis.paired.paired_rows` per task and
    mean, then :func:`_measured_rows`) and as a dict for the profile."""
    from tsa_bench.analysis.paired import compare_many, paired_rows
    from tsa_bench.results import row

    dense = runner(seed=args.eval_seed, n=args.eval_n, method="dense")
    tsa = runner(seed=args.eval_seed, n=args.eval_n, method="tsa", sparse_layers=str(plan.profile))
    if tsa.tau is None or not math.isclose(tsa.tau, best.tau):
        raise RuntimeError(f"the held-out run of {plan.profile} ran tau {tsa.tau}, the profile holds {best.tau}")
    shared = {r.get("prompt_sha") for r in calib_dense.records} & {r.get("prompt_sha") for r in dense.records}
    shared.discard(None)
    if shared:
        print(f"warning: {len(shared)} held-out prompts are also calibration prompts (same text): the held-out "
              "drop is not independent of the search", file=sys.stderr)
    m = measure(dense.records, tsa.records, plan.num_attention_layers, tsa.predictions)
    within = m.drop <= args.max_drop
    print(f"held-out (seed {args.eval_seed}, {m.n} samples): tsa {m.score:.2f}, dense {m.dense_score:.2f}, drop "
          f"{_pts(m)} points ({'within' if within else 'OVER'} the budget of {args.max_drop:g}); "
          f"{_fmt_figs(m.figures)}")
    common = dict(split="heldout", seed=args.eval_seed, objective=args.objective, criterion=args.criterion,
                  max_drop=args.max_drop, margin=args.margin)
    tsa_extra = dict(common, layer_set=best.layer_set, layers=",".join(map(str, best.layers)),
                     setting=f"tsa tau={best.tau:g} calibrated", chosen=True, profile=str(plan.profile),
                     predictions=tsa.predictions)
    core = ("method", "tau", "model", "weights", "dtype", "stage")
    idents = {"dense": {**{k: v for k, v in _ident(args, plan, "dense", None).items() if k in core},
                        **common, "setting": "dense", "predictions": dense.predictions},
              "tsa": {**{k: v for k, v in _ident(args, plan, "tsa", best.tau).items() if k in core}, **tsa_extra}}
    table = compare_many(dense.records, {"dense": dense.records, "tsa": tsa.records}, n_resamples=N_RESAMPLES, seed=0)
    rows = paired_rows(table, idents)
    rows += _measured_rows(args, plan, m, best.tau, dict(tsa_extra, level=_level(plan)))
    rows.append({**row("calibration_prompts_shared", len(shared), n=m.n, **_ident(args, plan, "tsa", best.tau)),
                 **tsa_extra})
    return {"rows": rows, "seed": args.eval_seed, "n": args.eval_n, "samples": m.n, "dense_score": m.dense_score,
            "score": m.score, "drop": m.drop, "drop_lo": m.drop_lo, "drop_hi": m.drop_hi, "figures": m.figures,
            "within_budget": within, "calibration_prompts_shared": len(shared)}


def _write_csv(rows: List[dict], setup: dict, device: str, out_dir: Path) -> Path:
    from tsa_bench.provenance import new_run_id
    from tsa_bench.results import ResultWriter

    run_id, k = new_run_id("calibrate"), 1
    while (out_dir / f"{run_id}.csv").exists():
        k += 1
        run_id = f"{new_run_id('calibrate')}-{k}"
    writer = ResultWriter("calibrate", setup, device=device, out_dir=out_dir, run_id=run_id)
    writer.add(rows)
    return writer.write()
