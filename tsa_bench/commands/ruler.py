"""``tsa-bench ruler``: generate RULER, run a model with an attention method on it, score, store.

Pipeline per (task, length): the generator (:mod:`tasks.ruler`) writes or reuses cached JSONL
samples fitted to the model's tokenizer; the runner feeds each prompt to the model (greedy,
the task's generation length), scores the prediction with RULER's post-processing and metric,
and appends one line per sample to a predictions JSONL as soon as it is scored. The file is
named after everything that determines a prediction, so rerunning the same command resumes:
samples already in the file are read back, never run again, never lost. At the end the scores
go to the tidy CSV (one row per task and length, per-length means, the mean over lengths),
and a task x length table is printed.

Runner overhead: the only per-sample work besides ``model.generate`` is one tokenisation of
the prompt (done in a background thread while the previous sample runs), one decode, a
substring test and one JSON line. The time inside ``generate`` (CUDA-synchronised) and the
loop's wall time are both recorded, so every run reports its own overhead.
"""
from __future__ import annotations

import hashlib
import json
import math
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Dict, Iterable, List, Optional, Sequence, Tuple

from tsa_bench.args import add_model_load_arguments, fmt_length, parse_lengths
from tsa_bench.cli import UsageError

NAME = "ruler"
HELP = "RULER (13 tasks, 4K-128K): generate for the model's tokenizer, evaluate a method, score, store."
EPILOG = """examples:
  tsa-bench ruler --model meta-llama/Llama-3.1-8B-Instruct --method tsa --tau 0.005 --seq-lens 4k..128k -n 32
  tsa-bench ruler --model meta-llama/Llama-3.1-8B-Instruct --method dense --seq-lens 128k --tasks niah
  tsa-bench ruler --model mistralai/Mistral-Nemo-Instruct-2407 --method tsa --tau 0.008 --template base
  tsa-bench ruler --model /models/llama --method xattention+tsa --seq-lens 32k --tasks qa_1,qa_2 \\
      --squad ~/data/dev-v2.0.json --hotpotqa ~/data/hotpot_dev_distractor_v1.json
  tsa-bench ruler --model tiny-llama --weights random --tokenizer toy --device cpu --seq-lens 1k -n 2
  tsa-bench ruler --generate-only --tokenizer meta-llama/Llama-3.1-8B-Instruct --seq-lens 4k..128k
  tsa-bench ruler --bench-generate --tokenizer toy        # generator speed: 13 tasks x 4k..128k x 32
  tsa-bench ruler --model M --seq-lens 32k --dry-run
  make ruler CTX=128k MODEL=meta-llama/Llama-3.1-8B-Instruct METHOD=tsa TAU=0.005 N=32

A killed run resumes where it stopped when the same command is run again (predictions JSONL
under results/ruler/preds/). Data: --data auto uses the real corpora when available (local
files via --essays/--squad/--hotpotqa or TSA_RULER_* variables, or the `datasets` cache) and the
project's generated prose / QA passages otherwise; every sample and row records its source.
"""


def add_model_arguments(p) -> None:
    """Model, method and output flags shared by ``ruler`` and ``niah``."""
    p.add_argument("--model", default=None, help="preset name, local path or Hugging Face id (required)")
    p.add_argument("--method", default="tsa", help="dense | tsa | <backend> | <backend>+tsa (default tsa)")
    p.add_argument("--tau", type=float, default=0.005, help="TSA token coverage (default 0.005)")
    add_model_load_arguments(p)
    p.add_argument("--dense-backend", default="sdpa", help="dense kernel from the registry (default sdpa)")
    p.add_argument("--sparse-layers", default=None, help="layers running TSA (default: preset / profile)")
    p.add_argument("--out-dir", default=None, help="CSV directory (default results/<command>)")
    p.add_argument("--predictions", default=None, help="predictions JSONL (default: derived from the config)")
    p.add_argument("--no-progress", action="store_true", help="no progress bars")
    p.add_argument("--dry-run", action="store_true", help="print the resolved configuration and exit")


def add_data_arguments(p) -> None:
    """Tokenizer, template and corpus flags shared by ``ruler`` and ``niah``."""
    p.add_argument("--template", default="auto", choices=["auto", "base", "chat", "meta-llama3"],
                   help="model template: auto = meta-llama3 for Llama-3 tokenizers, else the tokenizer's chat "
                        "template if it has one, else base (the TSA paper used base for Mistral)")
    p.add_argument("--tokenizer", default=None,
                   help="tokenizer path or HF id (default: the model's); 'toy' = the project's offline BPE "
                        "(sized to the model's vocabulary)")
    p.add_argument("--data", default="auto", choices=["auto", "real", "generated"],
                   help="corpora: real if available else generated (auto), require real, or generated only")
    p.add_argument("--essays", default=None, help="Paul Graham essays: JSON {'text'}, .txt or a folder of .txt")
    p.add_argument("--words", default="auto", choices=["auto", "wonderwords", "builtin"],
                   help="needle word lists (auto: wonderwords if installed)")
    p.add_argument("--seed", type=int, default=42, help="generation seed (default 42, as RULER)")
    p.add_argument("--cache-dir", default=None, help="generated-data cache (default ~/.cache/tsa-bench/ruler)")
    p.add_argument("--exact-count", action="store_true",
                   help="tokenise every candidate prompt in full while fitting (slow; default counts pieces)")


def add_arguments(p) -> None:
    add_model_arguments(p)
    add_data_arguments(p)
    p.add_argument("--seq-lens", default=None,
                   help="context lengths, e.g. 4k,32k or 4k..128k (default 4k; 4k..128k with --bench-generate)")
    p.add_argument("--tasks", default="all", help="all, niah, or a comma list of task names (default all)")
    p.add_argument("-n", "--num-samples", type=int, default=32, help="samples per task and length (default 32)")
    p.add_argument("--squad", default=None, help="SQuAD v2 dev JSON (dev-v2.0.json)")
    p.add_argument("--hotpotqa", default=None, help="HotpotQA dev distractor JSON")
    p.add_argument("--generate-only", action="store_true", help="generate/cache the samples and stop")
    p.add_argument("--bench-generate", action="store_true",
                   help="time generating tasks x lengths x n into a fresh cache and print it")


# --------------------------------------------------------------------------- helpers

def resolve_device(device: str) -> str:
    if device == "auto":
        import torch
        return "cuda" if torch.cuda.is_available() else "cpu"
    return device


def load_tokenizer(spec: Optional[str], model_tokenizer=None, vocab_size: Optional[int] = None):
    """``spec``: None (use the model's), ``toy`` (offline BPE) or a path / HF id."""
    if spec is None:
        if model_tokenizer is None:
            raise UsageError("the model came without a tokenizer (random weights or no tokenizer files): "
                             "pass --tokenizer PATH|HF_ID, or --tokenizer toy for the project's offline one")
        return model_tokenizer
    if spec == "toy":
        from tasks.ruler.toy_tokenizer import build_tokenizer
        size = 4000 if vocab_size is None else max(300, min(int(vocab_size), 8000))
        return build_tokenizer(size)
    from transformers import AutoTokenizer
    try:
        return AutoTokenizer.from_pretrained(spec)
    except (OSError, ValueError) as exc:
        raise UsageError(f"--tokenizer {spec!r} could not be loaded: {exc}") from None


def resolve_template(template: str, tokenizer) -> str:
    """``auto``: RULER's ``meta-llama3`` for Llama-3 tokenizers (what RULER and the TSA paper use),
    else the tokenizer's chat template if it has one, else ``base``."""
    if template != "auto":
        return template
    vocab = tokenizer.get_vocab() if hasattr(tokenizer, "get_vocab") else {}
    if getattr(tokenizer, "bos_token", None) == "<|begin_of_text|>" and "<|start_header_id|>" in vocab:
        return "meta-llama3"
    return "chat" if getattr(tokenizer, "chat_template", None) else "base"


def uses_tsa(method: str) -> bool:
    m = method.strip().lower()
    return m == "tsa" or m.endswith("+tsa")


class PredictionLog:
    """Append-only JSONL of scored samples; a torn last line (killed mid-write) is dropped."""

    def __init__(self, path: Path):
        self.path = Path(path)
        self.done: Dict[str, dict] = {}
        if self.path.exists():
            raw = self.path.read_bytes()
            keep = raw[: raw.rfind(b"\n") + 1]
            if len(keep) != len(raw):
                with open(self.path, "r+b") as f:
                    f.truncate(len(keep))
            for line in keep.decode("utf-8").splitlines():
                if line.strip():
                    rec = json.loads(line)
                    self.done.setdefault(rec["id"], rec)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._f = None

    def append(self, rec: dict) -> None:
        if self._f is None:
            self._f = open(self.path, "a", encoding="utf-8")
        self._f.write(json.dumps(rec, ensure_ascii=False, sort_keys=True) + "\n")
        self._f.flush()
        self.done[rec["id"]] = rec

    def close(self) -> None:
        if self._f is not None:
            self._f.close()
            self._f = None


@dataclass
class Timing:
    model_s: float = 0.0      # inside model.generate (synchronised)
    loop_s: float = 0.0       # whole loop wall time for the samples run now
    samples: int = 0

    @property
    def overhead_pct(self) -> float:
        return 100.0 * (self.loop_s - self.model_s) / self.model_s if self.model_s > 0 else float("nan")


def greedy_config(model, max_new_tokens: int, fixed_length: bool = False):
    """Greedy GenerationConfig from the model's own: its EOS ids (an int or, as in Llama-3.1,
    a list), and a pad id (the model's, else its first EOS id; a list is not a valid pad id).
    ``fixed_length`` makes every call generate exactly ``max_new_tokens`` (EOS is not allowed
    to stop it early): equal work per sample, for timing comparisons."""
    from transformers import GenerationConfig

    base = model.generation_config
    eos = base.eos_token_id
    pad = base.pad_token_id
    if pad is None:
        pad = eos[0] if isinstance(eos, (list, tuple)) and eos else eos
    return GenerationConfig(max_new_tokens=max_new_tokens, do_sample=False, num_beams=1,
                            eos_token_id=eos, pad_token_id=pad,
                            min_new_tokens=max_new_tokens if fixed_length else None)


def greedy_generate(model, input_ids: List[int], max_new_tokens: int, device,
                    fixed_length: bool = False) -> Tuple[List[int], float]:
    """Greedy decoding of ``max_new_tokens`` (stops early at EOS unless ``fixed_length``);
    returns (new ids, seconds)."""
    import torch

    gc = greedy_config(model, max_new_tokens, fixed_length)
    ids = torch.tensor([input_ids], dtype=torch.long, device=device)
    cuda = ids.is_cuda
    if cuda:
        torch.cuda.synchronize(ids.device)
    t0 = time.perf_counter()
    with torch.inference_mode():
        out = model.generate(input_ids=ids, attention_mask=torch.ones_like(ids), generation_config=gc)
    if cuda:
        torch.cuda.synchronize(ids.device)
    dt = time.perf_counter() - t0
    return out[0, ids.shape[1]:].tolist(), dt


def evaluate_samples(model, tokenizer, samples: Sequence[dict], log: PredictionLog, *, device="cpu",
                     progress: bool = True, generate_fn: Optional[Callable] = None,
                     desc: str = "ruler", warn: Callable[[str], None] = print) -> Timing:
    """Run and score every sample not yet in ``log``; each is appended as soon as it is scored."""
    from tasks.ruler.generate import encode_prompt, prompt_of
    from tasks.ruler.scoring import score_sample

    gen = generate_fn or greedy_generate
    todo = [s for s in samples if s["id"] not in log.done]
    timing = Timing()
    if not todo:
        return timing
    bar = None
    if progress:
        from tqdm.auto import tqdm
        bar = tqdm(total=len(samples), initial=len(samples) - len(todo), desc=desc, unit="sample",
                   dynamic_ncols=True, file=sys.stderr)
    mismatches = 0
    lock = threading.Lock()      # fast tokenizers are not documented as safe for concurrent calls

    def encode(sample):
        with lock:
            return encode_prompt(tokenizer, prompt_of(sample))

    with ThreadPoolExecutor(max_workers=1) as pool:
        nxt = pool.submit(encode, todo[0])
        t_loop = time.perf_counter()
        for i, s in enumerate(todo):
            ids = nxt.result()
            if i + 1 < len(todo):
                nxt = pool.submit(encode, todo[i + 1])
            if len(ids) != s["length"]:
                mismatches += 1
                if mismatches == 1:
                    warn(f"warning: {s['id']}: prompt has {len(ids)} tokens, the generator recorded "
                         f"{s['length']} (different tokenizer or settings?)")
            new_ids, dt = gen(model, ids, int(s["tokens_to_generate"]), device)
            with lock:
                pred = tokenizer.decode(new_ids, skip_special_tokens=True)
            log.append({
                "id": s["id"], "task": s["task"], "max_length": s["max_length"], "index": s["index"],
                "pred": pred, "outputs": s["outputs"], "metric": s["metric"],
                "score": score_sample(s["metric"], pred, s["outputs"]),
                "input_tokens": len(ids), "new_tokens": len(new_ids), "model_s": round(dt, 6),
                "depth": s.get("depth"), "source": s.get("source"),
            })
            timing.model_s += dt
            timing.samples += 1
            if bar is not None:
                bar.update(1)
        timing.loop_s = time.perf_counter() - t_loop
    if bar is not None:
        bar.close()
    if mismatches:
        warn(f"warning: {mismatches} prompts differed in length from the generator's record")
    return timing


def _ci(values: List[float]) -> Tuple[float, float, float]:
    n = len(values)
    m = sum(values) / n
    if n < 2:
        return m, m, m
    sd = math.sqrt(sum((v - m) ** 2 for v in values) / (n - 1))
    h = 1.96 * sd / math.sqrt(n)
    return m, max(0.0, m - h), min(100.0, m + h)


def score_rows(records: Iterable[dict], tasks: Sequence[str], lengths: Sequence[int],
               identity: dict, extra: dict) -> Tuple[List[dict], "object"]:
    """Tidy rows (task x length, per-length means, mean over lengths) and a pivot table."""
    import pandas as pd
    from tsa_bench.results import row

    by: Dict[Tuple[str, int], List[dict]] = {}
    for r in records:
        by.setdefault((r["task"], int(r["max_length"])), []).append(r)
    rows, table = [], {}
    for L in lengths:
        per_task = []
        for t in tasks:
            recs = by.get((t, L), [])
            if not recs:
                continue
            vals = [100.0 * float(r["score"]) for r in recs]
            m, lo, hi = _ci(vals)
            sources = sorted({str(r.get("source")) for r in recs})
            rows.append({**row("score", round(m, 2), lo=round(lo, 2), hi=round(hi, 2), n=len(recs),
                               task=t, seq_len=L, **identity), **extra, "data_source": ";".join(sources),
                         "metric_kind": recs[0]["metric"],
                         "nulls": sum(1 for r in recs if not str(r["pred"]).strip())})
            table.setdefault(t, {})[fmt_length(L)] = round(m, 2)
            per_task.append(m)
        if per_task:
            mean = sum(per_task) / len(per_task)
            rows.append({**row("score_mean_tasks", round(mean, 2), n=len(per_task), task="all", seq_len=L,
                               **identity), **extra})
            table.setdefault("mean", {})[fmt_length(L)] = round(mean, 2)
    means = [v for k, v in table.get("mean", {}).items()]
    if len(means) > 1:
        rows.append({**row("score_mean_lengths", round(sum(means) / len(means), 2), n=len(means), task="all",
                           **identity), **extra})
    df = pd.DataFrame(table).T
    if len(df.columns) > 1:
        df["avg"] = df.mean(axis=1).round(2)
    return rows, df


def run_key(parts: dict) -> str:
    return hashlib.sha256(json.dumps(parts, sort_keys=True, default=str).encode()).hexdigest()[:12]


# --------------------------------------------------------------------------- command

def _load_model(args, device):
    try:
        from tsa_bench.hf import load_model
    except ImportError as exc:
        raise UsageError(f"the transformers integration (tsa_bench.hf) is not available: {exc}") from None
    from tsa_core import TSAConfig
    cfg = TSAConfig(tau=args.tau) if uses_tsa(args.method) else None
    return load_model(args.model, method=args.method, tsa_config=cfg, dense_backend=args.dense_backend,
                      weights=args.weights, dtype=args.dtype, device=device,
                      sparse_layers=args.sparse_layers)


def _gen_config(args, template):
    from tasks.ruler.generate import GenConfig
    return GenConfig(template=template, seed=args.seed, data=args.data, words=args.words, essays=args.essays,
                     squad=getattr(args, "squad", None), hotpotqa=getattr(args, "hotpotqa", None))


def _bench_generate(args, tasks, lengths) -> int:
    import tempfile
    from tasks.ruler.generate import Generator

    tok = load_tokenizer(args.tokenizer or "toy")
    template = resolve_template(args.template, tok)
    with tempfile.TemporaryDirectory() as tmp:
        gen = Generator(tok, _gen_config(args, template), cache_dir=Path(tmp), exact=args.exact_count)
        gen.corpora.essay()
        for which in ("squad", "hotpotqa"):
            gen.corpora.qa(which)
        t0 = time.perf_counter()
        per_len = {}
        for L in lengths:
            t1 = time.perf_counter()
            gen.generate(tasks, [L], args.num_samples, progress=not args.no_progress)
            per_len[L] = time.perf_counter() - t1
        total = time.perf_counter() - t0
    for L, dt in per_len.items():
        print(f"  {fmt_length(L):>5}: {dt:7.1f} s")
    print(f"generated {len(tasks)} tasks x {len(lengths)} lengths x {args.num_samples} samples "
          f"= {len(tasks) * len(lengths) * args.num_samples} samples in {total:.1f} s "
          f"(tokenizer {getattr(tok, 'name_or_path', '?')}, template {template}, "
          f"{gen.counter.full_calls} full tokenisations)")
    return 0


def check_common(args) -> None:
    if not 0.0 <= args.tau < 1.0:
        raise UsageError(f"--tau must be in [0, 1), got {args.tau}")


def setup(args, device: str, need_model: bool = True):
    """Load the model (unless not needed), pick the tokenizer and template, build the generator."""
    from tasks.ruler.generate import Generator

    model = model_tok = None
    if need_model:
        model, model_tok = _load_model(args, device)
    vocab = getattr(getattr(model, "config", None), "vocab_size", None)
    tok = load_tokenizer(args.tokenizer, model_tok, vocab)
    if vocab is not None and len(tok) > vocab:
        raise UsageError(f"the tokenizer has {len(tok)} tokens but the model's vocabulary is {vocab}")
    template = resolve_template(args.template, tok)
    gen = Generator(tok, _gen_config(args, template), cache_dir=args.cache_dir, exact=args.exact_count,
                    log=lambda m: print(m, file=sys.stderr))
    return model, tok, template, gen


def run_identity(args, gen, template: str) -> Tuple[dict, dict, str]:
    """(key parts, identity columns, run key): everything that determines a prediction."""
    key_parts = dict(model=args.model, weights=args.weights, method=args.method.lower(),
                     tau=args.tau if uses_tsa(args.method) else None, dense_backend=args.dense_backend,
                     sparse_layers=args.sparse_layers, dtype=args.dtype, tokenizer=gen.tok_id, template=template,
                     seed=args.seed, data=gen.corpora.data_tag())
    identity = dict(method=args.method.lower(), backend=args.dense_backend,
                    tau=args.tau if uses_tsa(args.method) else None, model=args.model, dtype=args.dtype,
                    weights=args.weights, stage="e2e", batch=1)
    return key_parts, identity, run_key(key_parts)


def open_predictions(args, out_dir: Path, key: str) -> PredictionLog:
    safe_model = "".join(c if c.isalnum() or c in "-_." else "_" for c in str(args.model).split("/")[-1])
    pred_path = Path(args.predictions) if args.predictions else \
        out_dir / "preds" / f"{safe_model}-{args.method.lower().replace('+', '_')}-{key}.jsonl"
    plog = PredictionLog(pred_path)
    print(f"predictions: {pred_path} ({len(plog.done)} already scored)", file=sys.stderr)
    return plog


def timing_rows(timings: Dict[int, Timing], identity: dict, extra: dict) -> List[dict]:
    from tsa_bench.results import row

    rows = []
    for L, tm in timings.items():
        if tm.samples:
            rows.append({**row("model_s_per_sample", round(tm.model_s / tm.samples, 6), n=tm.samples, task="all",
                               seq_len=L, **identity), **extra})
            rows.append({**row("runner_overhead_pct", round(tm.overhead_pct, 3), n=tm.samples, task="all",
                               seq_len=L, **identity), **extra})
    return rows


def write_results(bench: str, rows: List[dict], config: dict, device: str, out_dir: Path, key: str) -> Path:
    from tsa_bench.provenance import new_run_id
    from tsa_bench.results import ResultWriter

    run_id, k = f"{new_run_id(bench)}-{key[:6]}", 1
    while (out_dir / f"{run_id}.csv").exists():      # two runs within one second
        k += 1
        run_id = f"{new_run_id(bench)}-{key[:6]}-{k}"
    writer = ResultWriter(bench, config, device=device, out_dir=out_dir, run_id=run_id)
    writer.add(rows)
    return writer.write()


def print_timings(timings: Dict[int, Timing]) -> None:
    for L, tm in timings.items():
        if tm.samples:
            print(f"{fmt_length(L)}: {tm.samples} samples run, {tm.model_s / tm.samples:.3f} s/sample in the model, "
                  f"runner overhead {tm.overhead_pct:.2f}%")


def run(args) -> int:
    from tasks.ruler.tasks import TASKS, resolve_tasks
    from tsa_bench.provenance import REPO_ROOT

    lengths = parse_lengths(args.seq_lens or ("4k..128k" if args.bench_generate else "4k"))
    tasks = resolve_tasks(args.tasks)
    check_common(args)
    if args.num_samples < 1:
        raise UsageError(f"-n must be >= 1, got {args.num_samples}")
    if min(lengths) < 256:
        raise UsageError(f"--seq-lens must be >= 256 tokens, got {min(lengths)}")
    if args.bench_generate:
        return _bench_generate(args, tasks, lengths)
    if args.model is None and not (args.generate_only and args.tokenizer):
        raise UsageError("MODEL is required: tsa-bench ruler --model <preset|path|HF id> (make ruler CTX=128k "
                         "MODEL=meta-llama/Llama-3.1-8B-Instruct); there is no embedded default model yet")
    device = resolve_device(args.device)
    if args.dry_run:
        print(f"model {args.model} ({args.weights} weights), method {args.method}, tau {args.tau}, "
              f"dense backend {args.dense_backend}, {args.dtype} on {device}")
        print(f"tasks ({len(tasks)}): {', '.join(tasks)}")
        print(f"lengths: {', '.join(fmt_length(L) for L in lengths)}; {args.num_samples} samples each "
              f"-> {len(tasks) * len(lengths) * args.num_samples} samples")
        print(f"template {args.template}, data {args.data}, words {args.words}, seed {args.seed}, "
              f"tokenizer {args.tokenizer or '(the model s)'}")
        return 0

    model, tok, template, gen = setup(args, device, need_model=not args.generate_only)
    gen.generate(tasks, lengths, args.num_samples, progress=not args.no_progress, keep=False)
    if args.generate_only:
        for L in lengths:
            for t in tasks:
                print(gen.path(t, L))
        return 0

    key_parts, identity, key = run_identity(args, gen, template)
    out_dir = Path(args.out_dir) if args.out_dir else REPO_ROOT / "results" / "ruler"
    plog = open_predictions(args, out_dir, key)
    timings: Dict[int, Timing] = {}
    wanted = set()
    try:
        for L in lengths:                    # one length in memory at a time
            samples = [s for t in tasks for s in gen.samples(t, L, args.num_samples)]
            wanted.update(s["id"] for s in samples)
            timings[L] = evaluate_samples(model, tok, samples, plog, device=device,
                                          progress=not args.no_progress, desc=f"ruler {fmt_length(L)}",
                                          warn=lambda m: print(m, file=sys.stderr))
    finally:
        plog.close()

    records = [r for i, r in plog.done.items() if i in wanted]
    extra = dict(template=template, predictions=str(plog.path))
    rows, table = score_rows(records, tasks, lengths, identity, extra)
    rows += timing_rows(timings, identity, extra)
    config = {**key_parts, "tasks": tasks, "seq_lens": lengths, "n": args.num_samples, "run_key": key,
              "data_sources": sorted({gen.corpora.source_of(TASKS[t]) for t in tasks})}
    print()
    print(f"RULER score (%), {args.model}, method {args.method}"
          + (f", tau {args.tau}" if uses_tsa(args.method) else "") + f", template {template}, n={args.num_samples}")
    print(table.to_string())
    print_timings(timings)
    print(write_results("ruler", rows, config, device, out_dir, key))
    return 0
