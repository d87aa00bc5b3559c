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

import contextlib
import copy
import dataclasses
import functools
import hashlib
import json
import math
import os
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Dict, Iterable, List, Optional, Sequence, Tuple

from tsa_bench import distributed as D
from tsa_bench.args import (add_model_load_arguments, add_sliding_argument, fmt_length, parse_lengths,
                             resolve_model_arg)
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
    p.add_argument("--model", default=None,
                   help="preset name, .gguf file or directory, local path or Hugging Face id (default: smollm2-135m "
                        "when every length is <= 8k, else gemma3-270m up to 32k)")
    p.add_argument("--method", default="tsa",
                   help="dense | tsa | <backend> | <backend>+tsa, or a comma list run one after the other on the "
                        "same samples with the model loaded once (default tsa); in ruler a TSA method may name "
                        "one layer set of --sparse-layers and/or one tau: tsa@late, xattention+tsa@drift:0.005")
    p.add_argument("--tau", default=None,
                   help="TSA token coverage (default: the tau saved in the --sparse-layers profile, else the "
                        "preset's, else 0.005); ruler takes a comma list, each TSA method then runs once per tau")
    add_model_load_arguments(p)
    p.add_argument("--dense-backend", default="sdpa", help="dense kernel from the registry (default sdpa)")
    add_sliding_argument(p)
    p.add_argument("--dropped", default="zero",
                   help="output of the query rows TSA drops: zero (the paper) or local:<w> (attention over the "
                        "last w keys; docs/dropped-rows.md). Kept rows are unchanged")
    p.add_argument("--sparse-layers", default=None,
                   help="layers running TSA: '15-29', 'half', 'auto' or a profile JSON (default: preset / profile); "
                        "ruler takes several sets separated by ';', each optionally named 'name=spec' "
                        "(e.g. 'half;drift=results/layers/x.json'): each TSA method runs once per set")
    p.add_argument("--out-dir", default=None, help="CSV directory (default results/<command>)")
    p.add_argument("--predictions", default=None, help="predictions JSONL (default: derived from the config)")
    p.add_argument("--engine", default="batched", choices=["batched", "hf-generate"],
                   help="greedy decoding: batched = per-sample prefill, batched decode replayed as a CUDA graph "
                        "(tsa_bench.engine; equals generate token for token up to bf16 near-ties); hf-generate = "
                        "plain model.generate, one sample at a time (default batched)")
    p.add_argument("--decode-attention", default="grouped", choices=["sdpa", "grouped"],
                   help="batched engine's decode attention: grouped (the query heads of a KV group in one product, "
                        "K/V read once; fp32 scores; default: 3x faster a step than sdpa on an H200, "
                        "docs/perf-notes.md) or sdpa (transformers' SDPA, K/V repeated per query head)")
    p.add_argument("--refill", action="store_true",
                   help="batched engine: continuous batching (a finished row takes the next sample at once "
                        "instead of idling until its batch's longest row ends)")
    p.add_argument("--batch-size", default="auto",
                   help="decode rows of the batched engine (default auto: up to 64, as GPU memory allows)")
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


def prompt_sha(sample: dict) -> str:
    """SHA-256 (hex) of the sample's prompt *text*, UTF-8: the templated input plus the answer
    prefix, the string the runner tokenises. Text rather than token ids because hashing a 128K
    prompt takes about a millisecond and tokenising it about a second; the tokenizer itself is
    part of the run key."""
    from tasks.ruler.generate import prompt_of
    return hashlib.sha256(prompt_of(sample).encode("utf-8")).hexdigest()


class PredictionLog:
    """Append-only JSONL of scored samples; a torn last line (killed mid-write) is dropped.

    Each record carries the ``prompt_sha`` of the prompt it answered; :meth:`verify` refuses to
    treat a record as "already scored" for a sample whose prompt is no longer that one.
    """

    def __init__(self, path: Path):
        self.path = Path(path)
        if self.path.exists():
            raw = self.path.read_bytes()
            keep = raw.rfind(b"\n") + 1
            if keep != len(raw):
                with open(self.path, "r+b") as f:
                    f.truncate(keep)
        self.done: Dict[str, dict] = D.read_records(self.path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._f = None

    def append(self, rec: dict) -> None:
        if self._f is None:
            self._f = open(self.path, "a", encoding="utf-8")
        self._f.write(json.dumps(rec, ensure_ascii=False, sort_keys=True) + "\n")
        self._f.flush()
        self.done[rec["id"]] = rec

    def verify(self, sample: dict, sha: str) -> None:
        """Raise :class:`UsageError` if this file holds a prediction for ``sample`` that was made
        for another prompt than the one hashing to ``sha`` (or that has no prompt hash)."""
        rec = self.done.get(sample["id"])
        if rec is None or rec.get("prompt_sha") == sha:
            return
        stored = rec.get("prompt_sha")
        why = (f"it answered a prompt with sha256 {stored[:16]}..., the sample's prompt now hashes to "
               f"{sha[:16]}..." if stored else "it has no prompt_sha (written by an older tsa-bench)")
        raise UsageError(f"predictions file {self.path}: the stored prediction for {sample['id']} cannot be "
                         f"resumed: {why}. The samples changed since the file was written; pass a new "
                         f"--predictions path, or delete {self.path} to score them again")

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
                     progress: bool = True, generate_fn: Optional[Callable] = None, engine=None,
                     stats_fn: Optional[Callable[[], dict]] = None,
                     desc: str = "ruler", warn: Callable[[str], None] = print) -> Timing:
    """Run and score every sample not yet in ``log``; each is appended as soon as it is scored,
    with the :func:`prompt_sha` of its prompt. Raises :class:`UsageError` before running anything
    if a sample already in ``log`` was scored for a different prompt (:meth:`PredictionLog.verify`).

    Decoding: ``engine`` (a :class:`tsa_bench.engine.BatchedGreedy`) runs the samples in chunks of
    its batch size (each prompt prefilled alone, the chunk decoded together; the chunk is
    appended when it is done); otherwise ``generate_fn(model, input_ids, max_new_tokens, device)
    -> (new ids, seconds)`` decodes one prompt at a time (default :func:`greedy_generate`).
    ``stats_fn()``, called right after each sample's prefill, returns what to record about it
    (the TSA keep fraction and attention-map sparsity of its sparse layers)."""
    from tasks.ruler.generate import encode_prompt, prompt_of
    from tasks.ruler.scoring import score_sample

    gen = generate_fn or greedy_generate
    shas = {s["id"]: prompt_sha(s) for s in samples}
    for s in samples:
        log.verify(s, shas[s["id"]])
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
    # with continuous batching a chunk holds several batches' worth of samples (rows refill within
    # it; only its tail idles); without, one batch
    size = (engine.batch_size * (8 if getattr(engine, "refill", False) else 1)) if engine is not None else 1
    chunks = [todo[i:i + size] for i in range(0, len(todo), size)]

    def encode(chunk):
        with lock:
            return [encode_prompt(tokenizer, prompt_of(s)) for s in chunk]

    def record(s, ids, new_ids, seconds, extra):
        with lock:
            pred = tokenizer.decode(new_ids, skip_special_tokens=True)
        log.append({
            "id": s["id"], "task": s["task"], "max_length": s["max_length"], "index": s["index"],
            "pred": pred, "outputs": s["outputs"], "metric": s["metric"],
            "score": score_sample(s["metric"], pred, s["outputs"]),
            "input_tokens": len(ids), "new_tokens": len(new_ids), "model_s": round(seconds, 6),
            "depth": s.get("depth"), "source": s.get("source"), "prompt_sha": shas[s["id"]], **extra,
        })

    with ThreadPoolExecutor(max_workers=1) as pool:
        if engine is not None and engine.device.type == "cuda":   # warm-up, untimed: kernel compilation
            # and the decode graph capture (nothing of the kind happens on a CPU)
            first = chunks[0][0]
            ids = encode([first])
            engine.generate(ids, [int(first["tokens_to_generate"])])
            engine.warm_prefill(warm_variants(ids[0]))
        nxt = pool.submit(encode, chunks[0])
        t_loop = time.perf_counter()
        for c, chunk in enumerate(chunks):
            prompts = nxt.result()
            if c + 1 < len(chunks):
                nxt = pool.submit(encode, chunks[c + 1])
            for s, ids in zip(chunk, prompts):
                if len(ids) != s["length"]:
                    mismatches += 1
                    if mismatches == 1:
                        warn(f"warning: {s['id']}: prompt has {len(ids)} tokens, the generator recorded "
                             f"{s['length']} (different tokenizer or settings?)")
            if engine is not None:
                stats: Dict[int, dict] = {}
                engine.on_prefill = (lambda i: stats.__setitem__(i, stats_fn())) if stats_fn else None
                outs = engine.generate(prompts, [int(s["tokens_to_generate"]) for s in chunk])
                for i, (s, ids, g) in enumerate(zip(chunk, prompts, outs)):
                    extra = {"prefill_s": round(g.prefill_s, 6), "decode_s": round(g.decode_s, 6),
                             **stats.get(i, {})}
                    record(s, ids, g.tokens, g.seconds, extra)
                    timing.model_s += g.seconds
            else:
                s, ids = chunk[0], prompts[0]
                new_ids, dt = gen(model, ids, int(s["tokens_to_generate"]), device)
                record(s, ids, new_ids, dt, stats_fn() if stats_fn else {})
                timing.model_s += dt
            timing.samples += len(chunk)
            if bar is not None:
                bar.update(len(chunk))
        timing.loop_s = time.perf_counter() - t_loop
    if bar is not None:
        bar.close()
    if mismatches:
        warn(f"warning: {mismatches} prompts differed in length from the generator's record")
    return timing


WARM_TRIMS = (1, 2, 3, 5, 8, 13, 16, 31)


def warm_variants(ids: Sequence[int]) -> List[List[int]]:
    """The prompt cut short by each of :data:`WARM_TRIMS` tokens and by ``len % 16`` (+16): prompt
    lengths (and so kept-token counts) of many residues mod 16, multiples of 16 among them, so
    the Triton kernels compile their variants in the warm-up instead of inside a timed sample
    (a 4 s compile once showed up as a 0.006 s/sample bias; at 32K, where no trim gave a
    multiple of 16, one 5 s compile landed in a timed sample)."""
    r = len(ids) % 16
    trims = sorted(set(WARM_TRIMS) | ({r, r + 16} if r else {16}))
    return [list(ids[: len(ids) - k]) for k in trims if len(ids) - k >= 1]


def tsa_stats_fn(model):
    """``stats_fn`` for :func:`evaluate_samples`: the last prefill's TSA statistics per sparse layer
    (``"tsa_layers": {layer: [keep fraction, attention-map sparsity]}``, batch element 0; absent
    when the method runs no TSA) and, when attention timing is on (CUDA,
    :func:`tsa_bench.hf.set_attention_timing`), every layer's prefill attention time
    (``"attn_ms": {layer: ms}``, CUDA events around the whole attention call)."""
    from tsa_bench.hf import attention_times, last_stats, tsa_plan

    layers = tsa_plan(model).sparse_layers

    def fn() -> dict:
        out = {}
        times = attention_times(model)           # empty unless timing is on (CUDA)
        if times:
            out["attn_ms"] = {str(i): round(ms, 4) for i, ms in times.items()}
        if not layers:
            return out
        st = last_stats(model)
        out["tsa_layers"] = {str(i): [round(st[i].keep_fraction[0], 5), round(st[i].sparsity[0], 5)]
                             for i in layers if i in st}
        return out

    return fn


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


def tsa_rows(records: Iterable[dict], lengths: Sequence[int], identity: dict, extra: dict) -> List[dict]:
    """Per length: the mean over samples of each sparse layer's keep fraction and attention-map
    sparsity (``layer`` set), and their mean over the sparse layers (``layer`` empty)."""
    from tsa_bench.results import row

    rows = []
    for L in lengths:
        per_layer: Dict[int, List[Tuple[float, float]]] = {}
        for r in records:
            if int(r["max_length"]) == L:
                for i, (keep, sparsity) in (r.get("tsa_layers") or {}).items():
                    per_layer.setdefault(int(i), []).append((keep, sparsity))
        if not per_layer:
            continue
        means = {}
        for i, vals in sorted(per_layer.items()):
            keep = sum(v[0] for v in vals) / len(vals)
            sparsity = sum(v[1] for v in vals) / len(vals)
            means[i] = (keep, sparsity)
            for metric, value in (("keep_fraction", keep), ("attn_sparsity", sparsity)):
                rows.append({**row(metric, round(value, 5), n=len(vals), task="all", seq_len=L, layer=i,
                                   **identity), **extra})
        for k, metric in enumerate(("keep_fraction", "attn_sparsity")):
            value = sum(m[k] for m in means.values()) / len(means)
            rows.append({**row(metric, round(value, 5), n=len(means), task="all", seq_len=L, **identity), **extra})
    return rows


def run_key(parts: dict) -> str:
    return hashlib.sha256(json.dumps(parts, sort_keys=True, default=str).encode()).hexdigest()[:12]


# --------------------------------------------------------------------------- command

_KEPT_MODELS: Optional[Dict[tuple, tuple]] = None


@contextlib.contextmanager
def keep_models():
    """Within this block, :func:`run` loads each model once and reuses it in later calls with
    the same model, weights, dtype, device, RoPE scaling and dense backend (every arm
    reconfigures the method anyway). For callers that run many evaluations in one process
    (``tsa-bench calibrate``); the models are released when the block ends."""
    global _KEPT_MODELS
    outer = _KEPT_MODELS
    _KEPT_MODELS = {} if outer is None else outer
    try:
        yield
    finally:
        if outer is None:
            _KEPT_MODELS = None


def _load_model(args, device):
    try:
        from tsa_bench.hf import load_model
    except ImportError as exc:
        raise UsageError(f"the transformers integration (tsa_bench.hf) is not available: {exc}") from None
    key = (str(args.model), args.weights, args.dtype, str(device), str(getattr(args, "rope_scaling", None)),
           args.dense_backend)
    if _KEPT_MODELS is not None and key in _KEPT_MODELS:
        return _KEPT_MODELS[key]
    cfg = _tsa_config(args) if uses_tsa(args.method) else None
    loaded = load_model(args.model, method=args.method, tsa_config=cfg, dense_backend=args.dense_backend,
                        weights=args.weights, dtype=args.dtype, device=device,
                        sparse_layers=args.sparse_layers, rope_scaling=getattr(args, "rope_scaling", None),
                        sliding=getattr(args, "sliding_attention", "mask"))
    if _KEPT_MODELS is not None:
        _KEPT_MODELS[key] = loaded
    return loaded


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


def parse_taus(value, flag: str = "--tau", zero: bool = True) -> List[Optional[float]]:
    """``--tau`` as a list: ``None`` -> ``[None]`` (resolved later), ``0.005`` or ``"0.002,0.005"``
    -> floats in [0, 1) (in (0, 1) with ``zero=False``), duplicates dropped, order kept. A bad
    entry is a UsageError naming ``flag`` (``calibrate --taus`` shares this parser)."""
    if value is None:
        return [None]
    parts = [value] if isinstance(value, (int, float)) else [v.strip() for v in str(value).split(",") if v.strip()]
    if not parts:
        raise UsageError(f"{flag} is empty")
    out: List[Optional[float]] = []
    for v in parts:
        try:
            t = float(v)
        except ValueError:
            raise UsageError(f"{flag}: {v!r} is not a number") from None
        if not zero and not 0.0 < t < 1.0:
            raise UsageError(f"{flag}: each tau must be in (0, 1), got {v}")
        if not 0.0 <= t < 1.0:
            raise UsageError(f"{flag} must be in [0, 1), got {t:g}")
        if t not in out:
            out.append(t)
    return out


def parse_layer_sets(value) -> List[Tuple[str, Optional[str]]]:
    """``--sparse-layers`` as ``[(label, spec)]``: sets separated by ``;``, each ``spec`` or
    ``name=spec``. Without a name the label is the spec itself, or a profile file's stem.
    ``None`` -> ``[("", None)]`` (the preset's / profile's default set)."""
    if value is None:
        return [("", None)]
    out: List[Tuple[str, Optional[str]]] = []
    for part in str(value).split(";"):
        part = part.strip()
        if not part:
            continue
        name, eq, spec = part.partition("=")
        if eq and not name.strip():
            raise UsageError(f"--sparse-layers: {part!r} has an empty name before '='")
        label, spec = (name.strip(), spec.strip()) if eq else ("", part)
        if not spec:
            raise UsageError(f"--sparse-layers: {part!r} has no layer spec")
        if not label:
            label = Path(spec).stem if spec.lower().endswith(".json") else spec
        if label in [l for l, _ in out]:
            raise UsageError(f"--sparse-layers: two sets are named {label!r}")
        out.append((label, spec))
    if not out:
        raise UsageError("--sparse-layers is empty")
    return out


def _tsa_config(args):
    """``TSAConfig`` from ``--tau`` and ``--dropped`` (validated by :func:`check_common`)."""
    from tsa_core import TSAConfig
    return TSAConfig(tau=args.tau, dropped=getattr(args, "dropped", "zero"))


def check_common(args, several: bool = False) -> None:
    """Validate ``--tau`` / ``--sparse-layers``; keep their lists on ``args.tau_list`` /
    ``args.layer_sets`` and the first of each on ``args.tau`` / ``args.sparse_layers`` /
    ``args.layers_label``. Unless ``several``, more than one of either is a UsageError."""
    if not hasattr(args, "tau_list"):
        args.tau_list = parse_taus(args.tau)
        args.layer_sets = parse_layer_sets(args.sparse_layers)
    if not several:
        for flag, vals in (("--tau", args.tau_list), ("--sparse-layers", args.layer_sets)):
            if len(vals) > 1:
                raise UsageError(f"{flag}: this command takes one value (got {len(vals)}); ruler runs lists")
    args.tau = args.tau_list[0]
    args.layers_label, args.sparse_layers = args.layer_sets[0]
    if getattr(args, "dropped", "zero") != "zero":
        from tsa_core.config import parse_dropped
        try:
            parse_dropped(args.dropped)
        except ValueError as exc:
            raise UsageError(f"--dropped: {exc}") from None


@dataclass(frozen=True)
class Arm:
    """One configuration run on the samples: a method, and for TSA methods a tau, a layer set
    and what dropped query rows get (``--dropped``; named in the label unless ``zero``)."""
    method: str
    tau: Optional[float] = None
    sparse_layers: Optional[str] = None
    layers_label: str = ""
    dropped: str = "zero"

    def label(self) -> str:
        parts = [self.method]
        if uses_tsa(self.method):
            parts.append(f"tau={self.tau:g}" if self.tau is not None else "tau=default")
            if self.layers_label:
                parts.append(self.layers_label)
            if self.dropped != "zero":
                parts.append(f"dropped={self.dropped}")
        return " ".join(parts)


def method_items(args) -> List[Tuple[str, Optional[str], Optional[float]]]:
    """``--method`` as ``[(method, layer set, tau)]``. An item is ``METHOD``, or for a TSA
    method ``METHOD@SET``, ``METHOD:TAU`` or ``METHOD@SET:TAU``: only that layer set of
    ``--sparse-layers`` (by its name) and only that tau. ``None`` leaves the crossing of the
    lists in place. A qualifier on a method without TSA, an unknown set or a bad tau is a
    UsageError."""
    items: List[Tuple[str, Optional[str], Optional[float]]] = []
    names = [label for label, _ in getattr(args, "layer_sets", [("", None)])]
    for raw in str(args.method).split(","):
        text = raw.strip()
        if not text:
            continue
        rest, colon, tau_text = text.partition(":")
        method, at, set_name = rest.partition("@")
        method, set_name = method.strip().lower(), set_name.strip()     # set names keep their case
        if not method:
            raise UsageError(f"--method: {raw.strip()!r} names no method")
        if (at or colon) and not uses_tsa(method):
            raise UsageError(f"--method: {raw.strip()!r}: only a TSA method (tsa, <backend>+tsa) takes "
                             "@SET or :TAU")
        if at and set_name not in names:
            known = ", ".join(repr(n) for n in names if n) or "none (give --sparse-layers 'name=spec;...')"
            raise UsageError(f"--method: {raw.strip()!r}: no layer set named {set_name!r} in --sparse-layers "
                             f"(named sets: {known})")
        tau = parse_taus(tau_text.strip(), flag=f"--method {raw.strip()!r}", zero=False)[0] if colon else None
        item = (method, set_name if at else None, tau)
        if item not in items:
            items.append(item)
    if not items:
        raise UsageError("--method is empty")
    return items


def arms_of(args) -> List[Arm]:
    """Every (method, tau, layer set) the command runs, in order: each item of ``--method``;
    a TSA method once per layer set and per tau (sets outer), or only the set / tau its
    ``@SET`` / ``:TAU`` names (:func:`method_items`), any other method once. An arm named twice
    runs once."""
    out: List[Arm] = []
    dropped = getattr(args, "dropped", "zero")
    for m, only_set, only_tau in method_items(args):
        if uses_tsa(m):
            for label, spec in args.layer_sets:
                if only_set is not None and label != only_set:
                    continue
                for tau in ([only_tau] if only_tau is not None else args.tau_list):
                    arm = Arm(m, tau, spec, label, dropped)
                    if arm not in out:
                        out.append(arm)
        elif Arm(m) not in out:
            out.append(Arm(m))
    return out


def arm_args(args, arm: Arm):
    """A copy of ``args`` set up for one arm (its tau resolved: --tau > profile > preset > 0.005)."""
    a = copy.copy(args)
    a.method, a.tau, a.sparse_layers, a.layers_label = arm.method, arm.tau, arm.sparse_layers, arm.layers_label
    if getattr(args, "model", None) is not None:
        a.tau = resolve_tau(a)
    return a


def resolve_tau(args) -> float:
    """The tau the run uses: ``--tau``, else the ``tau`` saved in the profile JSON that
    ``--sparse-layers`` names, else the model preset's, else 0.005
    (:func:`tsa_bench.hf.layers.resolve_tau`). A profile with a bad tau is a UsageError."""
    try:
        from tsa_bench.hf.layers import resolve_tau as resolve
        from tsa_bench.hf.presets import find_preset
    except ImportError as exc:
        raise UsageError(f"the transformers integration (tsa_bench.hf) is not available: {exc}") from None
    preset = find_preset(_model_name(args)) if args.model is not None else None
    try:
        return resolve(args.tau, args.sparse_layers, preset.tau if preset else None)[0]
    except ValueError as exc:
        raise UsageError(f"--sparse-layers: {exc}") from None


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


_WEIGHT_SUFFIXES = (".safetensors", ".bin", ".gguf", ".pt", ".pth", ".ckpt")


def weights_fingerprint(model_arg, model=None) -> Optional[str]:
    """What identifies the weights beyond their name: for each local path among ``model_arg``
    and the loaded model's ``config._name_or_path`` (a weights file, or a folder whose
    ``*.safetensors``/``*.bin``/``*.gguf``/``*.pt``/``*.pth``/``*.ckpt`` files and
    ``config.json`` are taken), the resolved path, size and mtime of each file; and the hub
    commit transformers records for a downloaded checkpoint. Files up to 2 GiB (a GGUF of a
    small model) count by name and content hash, so the same file joined again on another
    machine resumes; larger ones by resolved path, size and mtime (copying or touching them
    starts a fresh predictions file, never a wrong resume). Hashed to 16 hex digits; ``None``
    when there is neither (a preset name with random weights)."""
    config = getattr(model, "config", None)
    parts = []
    commit = getattr(config, "_commit_hash", None)
    if commit:
        parts.append(f"commit:{commit}")
    arg_file = Path(str(model_arg)).expanduser() if model_arg else None
    arg_file = arg_file.resolve() if arg_file is not None and arg_file.is_file() else None
    for cand in dict.fromkeys(str(c) for c in (model_arg, getattr(config, "_name_or_path", None)) if c):
        path = Path(cand).expanduser()
        if not path.exists():
            continue
        path = path.resolve()
        if arg_file is not None and path.is_dir() and arg_file.parent == path:
            # a single weights file (a GGUF): transformers records its folder as _name_or_path;
            # the other files of that folder (other models) are not these weights
            continue
        files = [path] if path.is_file() else sorted(
            f for f in path.iterdir() if f.is_file() and (f.suffix in _WEIGHT_SUFFIXES or f.name == "config.json"))
        for f in files:
            st = f.stat()
            if st.st_size <= _HASH_CONTENT_UP_TO:      # content: the same file copied elsewhere resumes
                parts.append(f"{f.name}:sha256:{_file_sha256(str(f), st.st_size, st.st_mtime_ns)}")
            else:
                parts.append(f"{f}:{st.st_size}:{st.st_mtime_ns}")
    return hashlib.sha256("\n".join(parts).encode()).hexdigest()[:16] if parts else None


_HASH_CONTENT_UP_TO = 2 << 30


@functools.lru_cache(maxsize=32)
def _file_sha256(path: str, size: int, mtime_ns: int) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(1 << 22), b""):
            h.update(block)
    return h.hexdigest()


def run_identity(args, gen, template: str, model=None, engine: str = "hf-generate") -> Tuple[dict, dict, str]:
    """(key parts, identity columns, run key): everything that determines a prediction.

    Key parts: the generator version and every task's generation length (they fix prompts and
    references; each stored prediction also carries its prompt's hash); the model (``--model``,
    :func:`weights_fingerprint`, ``--weights``, ``--dtype``, ``--rope-scaling``); ``tau``, the
    resolved one (the loaded plan's, else ``args.tau``); the flags ``--method``,
    ``--dense-backend``, ``--sparse-layers`` as given, and ``plan``,
    what the loaded ``model`` actually runs (``model.config.tsa_settings``: method, prefill and
    dense kernels, TSA tau, window, pool_kernel, min_keep, keep_ratio, the *resolved* sparse
    layer set, per-layer overrides, op impl; ``None`` without a model); the tokenizer
    fingerprint, template, seed and data sources; and ``engine``, what decodes
    (``"hf-generate"``: :func:`greedy_generate`).
    """
    from tasks.ruler import generate as G
    from tasks.ruler.tasks import TASKS

    settings = getattr(getattr(model, "config", None), "tsa_settings", None)
    # layer_source only says in words where the layer set came from: left out of the key
    plan = None if settings is None else {k: v for k, v in settings.items() if k != "layer_source"}
    tau = ((plan or {}).get("tsa") or {}).get("tau", args.tau) if uses_tsa(args.method) else None
    key_parts = dict(generator=G.GENERATOR_VERSION,
                     max_new_tokens=getattr(args, "max_new_tokens", None)
                     or {t: spec.tokens_to_generate for t, spec in TASKS.items()},
                     model=args.model, weights_id=weights_fingerprint(args.model, model), weights=args.weights,
                     dtype=args.dtype, rope_scaling=getattr(args, "rope_scaling", None),
                     method=args.method.lower(), tau=tau,
                     dense_backend=args.dense_backend, sparse_layers=args.sparse_layers, plan=plan,
                     tokenizer=gen.tok_id, template=template, seed=args.seed, data=gen.corpora.data_tag(),
                     engine=engine)
    identity = dict(method=args.method.lower(), backend=args.dense_backend,
                    tau=tau, model=args.model, dtype=args.dtype,
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
            if tm.loop_s > 0:
                rows.append({**row("samples_per_s", round(tm.samples / tm.loop_s, 4), n=tm.samples, task="all",
                                   seq_len=L, **identity), **extra})
            if extra.get("ranks", 1) == 1:      # the loop and the model time of one process
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


def print_timings(timings: Dict[int, Timing], ranks: int = 1) -> None:
    for L, tm in timings.items():
        if tm.samples:
            rate = tm.samples / tm.loop_s if tm.loop_s > 0 else float("nan")
            print(f"{fmt_length(L)}: {tm.samples} samples run, {tm.model_s / tm.samples:.3f} s/sample in the model, "
                  f"{rate:.2f} samples/s" + (f" over {ranks} ranks" if ranks > 1 else
                                             f", runner overhead {tm.overhead_pct:.2f}%"))


def run(args) -> int:
    from tasks.ruler.tasks import TASKS, resolve_tasks
    from tsa_bench.provenance import REPO_ROOT

    lengths = parse_lengths(args.seq_lens or ("4k..128k" if args.bench_generate else "4k"))
    tasks = resolve_tasks(args.tasks)
    check_common(args, several=True)
    if args.num_samples < 1:
        raise UsageError(f"-n must be >= 1, got {args.num_samples}")
    if min(lengths) < 256:
        raise UsageError(f"--seq-lens must be >= 256 tokens, got {min(lengths)}")
    if args.bench_generate:
        return _bench_generate(args, tasks, lengths)
    if not (args.model is None and args.generate_only and args.tokenizer):
        resolve_model_arg(args, lengths)      # default model (SmolLM2 <= 8K, Gemma-3-270M <= 32K), context check
        args.tau = resolve_tau(args)
        for arm in arms_of(args):            # a bad profile or tau in any arm fails before anything loads
            arm_args(args, arm)
    device = resolve_device(args.device)
    from tsa_bench.hf.attention import parse_method
    for m in methods_of(args):               # an unknown method fails before anything loads
        parse_method(m, args.dense_backend)
    if args.dry_run:
        print(f"model {args.model} ({args.weights} weights), method {args.method}, tau {args.tau}, "
              f"dense backend {args.dense_backend}, {args.dtype} on {device}, engine {args.engine} "
              f"(batch {args.batch_size})")
        print(f"tasks ({len(tasks)}): {', '.join(tasks)}")
        print(f"lengths: {', '.join(fmt_length(L) for L in lengths)}; {args.num_samples} samples each "
              f"-> {len(tasks) * len(lengths) * args.num_samples} samples")
        print(f"template {args.template}, data {args.data}, words {args.words}, seed {args.seed}, "
              f"tokenizer {args.tokenizer or '(the model s)'}")
        arms = arms_of(args)
        if len(arms) > 1:
            print(f"{len(arms)} configurations, one after the other on the same samples:")
            for arm in arms:
                print(f"  {arm.label()}" + (f" (tau {arm_args(args, arm).tau:g})" if uses_tsa(arm.method) else ""))
        return 0

    # cuBLAS picks its kernels per stream and workspace; a fixed workspace makes the bf16 GEMMs
    # (and so greedy near-ties) repeat from run to run. Set before the first CUDA matmul.
    os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
    world = D.world_from_env()
    D.init(world)
    device = D.device_for(world, device)
    if device.startswith("cuda:"):
        import torch
        torch.cuda.set_device(torch.device(device))    # streams, graphs and NCCL-free gloo stay per rank
    if device.startswith("cuda") and args.dense_backend == "sdpa":
        # torch's own choice would be cuDNN attention, which builds an execution plan for every new
        # shape (each prompt length, and under TSA each layer's kept length: tens of ms each) and
        # may pick a different plan from run to run (so greedy bf16 near-ties move). The flash and
        # memory-efficient kernels need no plan and are deterministic in the forward pass.
        import torch
        torch.backends.cuda.enable_cudnn_sdp(False)
    from tsa_core.pipeline import selection_graphs
    try:
        with selection_graphs(False):    # every prompt has its own length: no per-length captures
            return _run_loaded(args, tasks, lengths, device, world)
    finally:
        D.finish(world)


def methods_of(args) -> List[str]:
    """``--method`` as a list (a comma list runs each method on the same samples)."""
    return list(dict.fromkeys(m for m, _, _ in method_items(args)))


def _model_name(args) -> str:
    """The name the model was configured under (its preset's, when it resolves to one)."""
    try:
        from tsa_bench.hf.checkpoints import resolve_source
        src = resolve_source(args.model, args.weights)
        return src.preset.name if src is not None and src.preset is not None else args.model
    except (ImportError, ValueError):
        return args.model


def configure_method(model, args, method: str):
    """Switch the loaded model to ``method`` (no reload); returns the plan."""
    from tsa_bench.hf import configure_tsa
    cfg = _tsa_config(args) if uses_tsa(method) else None
    return configure_tsa(model, method=method, tsa_config=cfg, dense_backend=args.dense_backend,
                         sparse_layers=args.sparse_layers if uses_tsa(method) else None,
                         model_name=_model_name(args), weights=args.weights,
                         sliding=getattr(args, "sliding_attention", "mask"))


def engine_key(engine) -> str:
    """What decodes, for the run key: ``hf-generate``, ``batched`` (SDPA decode) or
    ``batched-grouped`` (a different decode attention: different bf16 near-ties), with
    ``-refill`` for continuous batching (the same tokens by design; kept apart all the same)."""
    if engine is None:
        return "hf-generate"
    key = "batched" if engine.decode_attention == "sdpa" else f"batched-{engine.decode_attention}"
    return key + ("-refill" if getattr(engine, "refill", False) else "")


def make_engine(args, model, lengths: Sequence[int]):
    """The batched engine (``--engine batched``) sized for the longest length, else None."""
    if getattr(args, "engine", "hf-generate") != "batched":
        return None
    from tsa_bench.engine import BatchedGreedy, auto_batch_size
    try:
        size = auto_batch_size(model, max(lengths) + 256, getattr(args, "batch_size", "auto"))
    except ValueError as exc:
        raise UsageError(f"--batch-size: {exc}") from None
    return BatchedGreedy(model, batch_size=size, decode_attention=getattr(args, "decode_attention", None),
                         refill=bool(getattr(args, "refill", False)))


def _shared_log(args, out_dir: Path, key: str, world) -> Tuple[PredictionLog, Path]:
    """``(log, predictions path)``: this rank's log is the predictions file itself, or under a
    multi-rank launch this rank's shard beside it, knowing every record the file and any shard
    already hold."""
    plog = open_predictions(args, out_dir, key)
    if not world.distributed:
        return plog, plog.path
    main_path = plog.path
    shard = PredictionLog(D.shard_path(main_path, world))
    known = dict(plog.done)
    for other in D.shard_files(main_path):
        for i, rec in D.read_records(other).items():
            known.setdefault(i, rec)
    for i, rec in known.items():
        shard.done.setdefault(i, rec)
    return shard, main_path


def _run_loaded(args, tasks, lengths, device, world) -> int:
    from tasks.ruler.tasks import TASKS
    from tsa_bench.provenance import REPO_ROOT

    arms = arms_of(args)
    first = arm_args(args, arms[0])
    t_launch = time.perf_counter()

    def phase(what: str) -> None:           # where a launch's time goes, on rank 0's stderr
        if world.is_main:
            print(f"[ruler +{time.perf_counter() - t_launch:.1f} s] {what}", file=sys.stderr, flush=True)

    # every rank loads its model and tokenizer at once; then rank 0 generates (and caches) the
    # samples while the others wait, and they read its cache
    model, tok, template, gen = setup(first, device, need_model=not args.generate_only)
    phase("model and tokenizer loaded" if not args.generate_only else "tokenizer loaded")
    if world.distributed and not world.is_main:
        D.barrier(world)
    gen.generate(tasks, lengths, args.num_samples, progress=not args.no_progress and world.is_main, keep=False)
    if world.distributed and world.is_main:
        D.barrier(world)
    phase("samples generated or read from the cache" + (" (every rank)" if world.distributed else ""))
    if args.generate_only:
        for L in lengths:
            for t in tasks:
                print(gen.path(t, L))
        return 0
    engine = make_engine(args, model, lengths)
    if str(device).startswith("cuda"):
        from tsa_bench.hf import set_attention_timing
        set_attention_timing(model)         # per-layer prefill attention time in every prediction record
    engine_name = "hf-generate" if engine is None else \
        f"{engine_key(engine)}-b{engine.batch_size}"
    out_dir = Path(args.out_dir) if args.out_dir else REPO_ROOT / "results" / "ruler"
    for n_arm, arm in enumerate(arms, 1):
        margs = arm_args(args, arm)
        method = arm.method
        if uses_tsa(method):                 # the label names the tau that runs (a profile's, say)
            arm = dataclasses.replace(arm, tau=margs.tau)
        if len(arms) > 1 and world.is_main:
            print(f"== [{n_arm}/{len(arms)}] {arm.label()}" + (f" (tau {margs.tau:g})" if uses_tsa(method) else ""),
                  file=sys.stderr)
        configure_method(model, margs, method)
        key_parts, identity, key = run_identity(margs, gen, template, model=model, engine=engine_key(engine))
        plog, pred_path = _shared_log(margs, out_dir, key, world)
        D.barrier(world)                    # every rank has read the files before any appends
        phase(f"{arm.label()}: {len(plog.done)} predictions already there")
        timings: Dict[int, Timing] = {}
        order: List[str] = []
        stats_fn = tsa_stats_fn(model)
        try:
            for L in lengths:                # one length in memory at a time
                samples = [s for t in tasks for s in gen.samples(t, L, args.num_samples)]
                order.extend(s["id"] for s in samples)
                for s in samples:            # a changed prompt is refused on every rank alike
                    plog.verify(s, prompt_sha(s))
                mine = D.take([s for s in samples if s["id"] not in plog.done], world)
                if engine is not None:       # one decode cache shape (one CUDA graph) per length
                    engine.min_cap = L + max(int(s["tokens_to_generate"]) for s in samples) + 3
                timings[L] = evaluate_samples(model, tok, mine, plog, device=device,
                                              progress=not args.no_progress, engine=engine, stats_fn=stats_fn,
                                              desc=f"ruler {fmt_length(L)} {method}"
                                              + (f" rank {world.rank}" if world.distributed else ""),
                                              warn=lambda m: print(m, file=sys.stderr))
        finally:
            plog.close()
        timings = _gather_timings(timings, world)
        phase(f"{arm.label()}: samples run (warm-up included)")
        if not world.is_main:
            continue
        if world.distributed:
            D.merge_shards(pred_path, order)
            plog = PredictionLog(pred_path)
        wanted = set(order)
        records = [r for i, r in plog.done.items() if i in wanted]
        extra = dict(template=template, predictions=str(plog.path), engine=engine_name, ranks=world.size,
                     layers=margs.layers_label if uses_tsa(method) else "", setting=arm.label())
        rows, table = score_rows(records, tasks, lengths, identity, extra)
        rows += tsa_rows(records, lengths, identity, extra)
        rows += timing_rows(timings, identity, extra)
        config = {**key_parts, "tasks": tasks, "seq_lens": lengths, "n": args.num_samples, "run_key": key,
                  "engine_batch": None if engine is None else engine.batch_size, "ranks": world.size,
                  "data_sources": sorted({gen.corpora.source_of(TASKS[t]) for t in tasks})}
        print()
        print(f"RULER score (%), {args.model}, method {method}"
              + (f", tau {margs.tau:g}" if uses_tsa(method) else "")
              + (f", layers {margs.layers_label}" if uses_tsa(method) and margs.layers_label else "")
              + f", template {template}, n={args.num_samples}")
        print(table.to_string())
        print_timings(timings, world.size)
        print(write_results("ruler", rows, config, device, out_dir, key))
    return 0


def _gather_timings(timings: Dict[int, Timing], world) -> Dict[int, Timing]:
    """Under a multi-rank launch: the ranks' timings added up (model time, samples), with the
    loop time of the slowest rank (the wall time the run took)."""
    if not world.distributed:
        return timings
    import torch.distributed as dist
    gathered: List[Optional[Dict[int, Timing]]] = [None] * world.size
    dist.all_gather_object(gathered, timings)
    out: Dict[int, Timing] = {}
    for part in gathered:
        for L, tm in (part or {}).items():
            acc = out.setdefault(L, Timing())
            acc.model_s += tm.model_s
            acc.samples += tm.samples
            acc.loop_s = max(acc.loop_s, tm.loop_s)
    return out
