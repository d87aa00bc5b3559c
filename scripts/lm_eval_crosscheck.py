"""Cross-check of our RULER runner with an independent implementation: lm-eval's own RULER niah
tasks, run through the ``tsa-hf`` bridge (:mod:`tsa_bench.lm_eval_bridge`).

    PYTHONPATH=. python scripts/lm_eval_crosscheck.py -n 1                      # time one sample
    PYTHONPATH=. python scripts/lm_eval_crosscheck.py                           # niah_single_1, 4K, dense, 50
    PYTHONPATH=. python scripts/lm_eval_crosscheck.py --tasks offline --methods dense,tsa --device cuda
    PYTHONPATH=. python scripts/lm_eval_crosscheck.py --dry-run

What runs: lm-eval's task code generates the samples (its port of the 2024 RULER generator,
500 per length, Python's ``random`` seeded as ``simple_evaluate`` seeds it, sizes counted with
the tokenizer lm-eval is given) and scores them (``string_match_all``); our code only loads the
model (``tsa-hf``: :func:`tsa_bench.hf.load_model`, so ``--methods`` are our attention methods)
and evaluates the first ``-n`` samples of each task, in chunks of ``--chunk`` samples, one
``simple_evaluate`` call per chunk, until ``--budget-s`` seconds of wall time would be passed
(a first chunk of one sample times the model; a chunk that would not fit is shrunk or skipped,
and the output says how many samples ran).

Offline: lm-eval's tasks load their tokenizer by name (``AutoTokenizer.from_pretrained``). For
a GGUF model (the ``smollm2-135m`` and ``gemma3-270m`` presets) the tokenizer stored in the GGUF,
as our loader builds it, is saved once to ``<cache>/tokenizers/<file>`` and that path is given
to lm-eval (``--tokenizer-dir`` to choose). ``niah_single_1`` (noise haystack) and
``niah_multikey_2/3`` (needle haystack) need nothing else; the five essay tasks need the
``baber/paul_graham_essays`` dataset from the Hugging Face hub and run only where it is cached
(``--tasks all`` lists which ran and which were skipped, and why).

Template: ``--template chat`` (default) passes ``apply_chat_template=True``: lm-eval then sends
the task text as one user turn and its ``gen_prefix`` ("The special magic number for ... is")
as the start of the assistant turn (``continue_final_message``); ``--template base`` sends the
task text, a space and the prefix. lm-eval sizes a sample without the template, so a templated
prompt is a few dozen tokens longer than the nominal length: the model's ``max_length`` is the
length + ``--headroom`` so nothing is truncated (checked per sample: ``prompt_tokens``).

Outputs, in ``--out-dir`` (default ``results/accuracy/lm-eval``): ``<run_id>.csv`` (tidy rows:
``score`` in points with its 95% percentile bootstrap interval from
:func:`tsa_bench.analysis.paired.compare_many`, ``score_diff`` of every further method against
the first on their common samples, ``s_per_sample``; provenance on every row) and
``<run_id>.jsonl`` beside it (one record per sample: id, task, max_length, method, score, pred,
outputs, prompt_tokens, seconds), appended after every chunk. The last line printed is the CSV.
"""
from __future__ import annotations

import argparse
import json
import math
import os
import random
import sys
import time
from pathlib import Path
from typing import Any, Dict, Iterable, List, Mapping, Optional, Sequence, Tuple

REPO = Path(__file__).resolve().parent.parent
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

from tsa_bench.cli import UsageError  # noqa: E402

OFFLINE_TASKS = ("niah_single_1", "niah_multikey_2", "niah_multikey_3")        # noise / needle haystacks
ESSAY_TASKS = ("niah_single_2", "niah_single_3", "niah_multikey_1", "niah_multivalue", "niah_multiquery")
ESSAY_DATASET = "baber/paul_graham_essays"
TASK_SETS = {"offline": OFFLINE_TASKS, "all": OFFLINE_TASKS + ESSAY_TASKS}
LM_EVAL_SEED = 0          # lm_eval.evaluator's DEFAULT_RANDOM_SEED: simple_evaluate seeds `random` with it
MAX_GEN_TOKS = 128        # the niah tasks' max_gen_toks
BENCH = "lm-eval"
DEFAULT_OUT = REPO / "results" / "accuracy" / "lm-eval"


# --------------------------------------------------------------------------- arguments

def parse_tasks(text: str) -> Tuple[str, ...]:
    """``offline`` | ``all`` | a comma list of lm-eval niah task names (order kept, no repeats)."""
    if text.strip() in TASK_SETS:
        return TASK_SETS[text.strip()]
    names = tuple(dict.fromkeys(t.strip() for t in text.split(",") if t.strip()))
    known = OFFLINE_TASKS + ESSAY_TASKS
    bad = [t for t in names if t not in known]
    if not names or bad:
        raise UsageError(f"--tasks: unknown lm-eval niah task(s) {', '.join(bad) or '(none given)'}; "
                         f"choose from offline, all, {', '.join(known)}")
    return names


def uses_tsa(method: str) -> bool:
    m = method.lower()
    return m == "tsa" or m.endswith("+tsa")


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", default="smollm2-135m", help="preset, .gguf path, directory or HF id (default smollm2-135m)")
    p.add_argument("--tasks", default="niah_single_1",
                   help="comma list of lm-eval niah tasks, or 'offline' (no hub data) / 'all' (default niah_single_1)")
    p.add_argument("--seq-len", default="4k", help="the one length lm-eval generates (max_seq_lengths; default 4k)")
    p.add_argument("--methods", default="dense", help="comma list: dense | tsa | <backend>[+tsa] (default dense)")
    p.add_argument("--tau", type=float, default=0.005, help="TSA tau for the TSA methods (default 0.005)")
    p.add_argument("-n", "--num-samples", type=int, default=50, help="samples per task, lm-eval's first n (default 50)")
    p.add_argument("--chunk", type=int, default=10, help="samples per simple_evaluate call (default 10)")
    p.add_argument("--budget-s", type=float, default=1500.0,
                   help="wall-clock seconds for the evaluation; no chunk is started that would pass it (default 1500)")
    p.add_argument("--device", default="cpu", help="cpu, cuda or auto (default cpu)")
    p.add_argument("--dtype", default="auto", choices=["auto", "fp32", "bf16", "fp16"],
                   help="weights dtype; auto = bf16 on CUDA, fp32 on the CPU")
    p.add_argument("--template", default="chat", choices=["chat", "base"],
                   help="chat: apply_chat_template=True (the model's chat template); base: plain text")
    p.add_argument("--headroom", type=int, default=256,
                   help="model max_length = length + this, so templated prompts are not truncated (default 256)")
    p.add_argument("--tokenizer-dir", default=None,
                   help="where the GGUF's tokenizer is saved for lm-eval (default <TSA_BENCH_CACHE>/tokenizers/<file>)")
    p.add_argument("--n-resamples", type=int, default=2000, help="bootstrap replicates (default 2000)")
    p.add_argument("--seed", type=int, default=0, help="bootstrap seed (default 0)")
    p.add_argument("--out-dir", default=str(DEFAULT_OUT), help=f"output folder (default {DEFAULT_OUT.relative_to(REPO)})")
    p.add_argument("--dry-run", action="store_true", help="print the resolved plan and exit")
    return p


def check_args(args) -> None:
    """UsageError naming the flag for every bad value (before anything is loaded)."""
    from tsa_bench.args import parse_length

    args.task_list = parse_tasks(args.tasks)
    args.length = parse_length(args.seq_len)
    if args.length < 512:
        raise UsageError(f"--seq-len must be >= 512 tokens (the niah prompt and {MAX_GEN_TOKS} generated tokens "
                         f"must fit), got {args.length}")
    args.method_list = tuple(dict.fromkeys(m.strip() for m in args.methods.split(",") if m.strip()))
    if not args.method_list:
        raise UsageError("--methods: give at least one method (e.g. dense)")
    for name, value, low in (("-n", args.num_samples, 1), ("--chunk", args.chunk, 1), ("--n-resamples", args.n_resamples, 1),
                             ("--headroom", args.headroom, 0)):
        if value < low:
            raise UsageError(f"{name} must be >= {low}, got {value}")
    if not args.budget_s > 0:
        raise UsageError(f"--budget-s must be > 0, got {args.budget_s}")
    if not 0.0 < args.tau < 1.0:
        raise UsageError(f"--tau must be in (0, 1), got {args.tau}")


# --------------------------------------------------------------------------- pure parts (tested on CPU)

def next_chunk(remaining: int, chunk: int, s_per_sample: Optional[float], time_left: float) -> int:
    """How many samples the next ``simple_evaluate`` call takes: 1 while the time per sample is
    unknown, else ``min(chunk, remaining)`` shrunk to what fits in ``time_left`` (0: stop)."""
    if remaining <= 0 or time_left <= 0:
        return 0
    if s_per_sample is None:
        return 1
    fits = int(time_left // s_per_sample) if s_per_sample > 0 else remaining
    return max(0, min(chunk, remaining, fits))


def sample_id(task: str, max_length: int, index: int) -> str:
    """The identity of an lm-eval sample: its task, length and the generator's ``index``."""
    return f"lm-eval/{task}/{int(max_length)}/{int(index)}"


def records_from_samples(logged: Sequence[Mapping[str, Any]], task: str, method: str, *,
                         seconds: Optional[float] = None, prompt_tokens: Optional[Sequence[int]] = None) -> List[dict]:
    """Per-sample records of one task from ``simple_evaluate(...)["samples"][task]``.

    Each logged sample carries its ``doc`` (lm-eval's generated sample: ``index``,
    ``max_length``, ``outputs``) and its metric under the length's name (``"4096"``: 1.0 if
    every expected value occurs in the prediction, else 0.0, lm-eval's ``string_match_all``);
    a score of -1 (lm-eval's "other length" marker) or a missing one is a ValueError.
    ``seconds``: the chunk's wall time, shared equally by its samples."""
    out = []
    for k, s in enumerate(logged):
        doc = s["doc"]
        L = int(doc["max_length"])
        score = s.get(str(L))
        if score is None or isinstance(score, bool) or not 0.0 <= float(score) <= 1.0:
            raise ValueError(f"{task}: logged sample {s.get('doc_id')} has no score in [0, 1] under {str(L)!r}: "
                             f"{score!r}")
        pred = s.get("filtered_resps", s.get("resps"))
        while isinstance(pred, list) and pred:
            pred = pred[0]
        out.append({"id": sample_id(task, L, doc["index"]), "task": task, "max_length": L, "method": method,
                    "index": int(doc["index"]), "score": float(score), "pred": pred,
                    "outputs": list(doc["outputs"]),
                    "prompt_tokens": None if prompt_tokens is None else int(prompt_tokens[k]),
                    "seconds": None if seconds is None else round(seconds / len(logged), 3)})
    return out


def result_rows(records: Mapping[str, Sequence[Mapping[str, Any]]], identities: Mapping[str, Mapping[str, Any]], *,
                n_resamples: int = 2000, seed: int = 0, confidence: float = 0.95) -> List[dict]:
    """Tidy rows of a run: per method and task ``score`` (points, percentile bootstrap interval
    over that method's own samples) and ``s_per_sample`` (mean wall seconds); per further method
    and task ``score_diff`` against the first method on the samples both ran (paired bootstrap).
    ``records``: method -> its per-sample records (:func:`records_from_samples`), in run order."""
    from tsa_bench.analysis.paired import compare_many, paired_rows
    from tsa_bench.results import IDENTITY, row

    rows: List[dict] = []
    methods = [m for m in records if records[m]]
    for m in methods:
        table = compare_many(records[m], {m: records[m]}, n_resamples=n_resamples, seed=seed, confidence=confidence)
        table = table[table["level"] == "task"]
        rows += [r for r in paired_rows(table, {m: identities[m]}) if r["metric"] == "score"]
        core = {k: v for k, v in identities[m].items() if k in IDENTITY and k not in ("task", "seq_len")}
        extra = {k: v for k, v in identities[m].items() if k not in IDENTITY}
        for task, L in sorted({(r["task"], int(r["max_length"])) for r in records[m]}):
            sec = [r["seconds"] for r in records[m] if r["task"] == task and r.get("seconds") is not None]
            if sec:
                rows.append({**row("s_per_sample", round(sum(sec) / len(sec), 3), n=len(sec), task=task,
                                   seq_len=L, **core), **extra, "level": "task"})
    if len(methods) > 1:
        base = methods[0]
        for m in methods[1:]:
            common = {r["id"] for r in records[base]} & {r["id"] for r in records[m]}
            if not common:
                continue
            b = [r for r in records[base] if r["id"] in common]
            o = [r for r in records[m] if r["id"] in common]
            table = compare_many(b, {m: o}, n_resamples=n_resamples, seed=seed, confidence=confidence)
            table = table[table["level"] == "task"]
            rows += [{**r, "baseline": base} for r in paired_rows(table, {m: identities[m]})
                     if r["metric"] == "score_diff"]
    return rows


def append_records(path: Path, records: Iterable[Mapping[str, Any]]) -> None:
    """Append one JSON line per record and flush (a killed run keeps its finished chunks)."""
    with open(path, "a", encoding="utf-8") as f:
        for r in records:
            f.write(json.dumps(r, sort_keys=True) + "\n")
        f.flush()


def _shown(path: Path) -> str:
    """``path`` relative to the repository when it lies inside it (rows stay portable)."""
    try:
        return str(Path(path).resolve().relative_to(REPO))
    except ValueError:
        return str(path)


def format_score(r: Mapping[str, Any]) -> str:
    return (f"{r['task']} {r['seq_len']} {r['method']}: {r['value']:.1f} "
            f"[{r['lo']:.1f}, {r['hi']:.1f}] (95% bootstrap, n={r['n']})")


# --------------------------------------------------------------------------- lm-eval and the model

def essays_available() -> Tuple[bool, str]:
    """Whether lm-eval's essay haystack loads here (``datasets`` cache; no network)."""
    try:
        import datasets
        datasets.load_dataset(ESSAY_DATASET, split="train")
    except Exception as exc:  # noqa: BLE001 - offline, not cached, ...: all mean "not available"
        return False, f"{ESSAY_DATASET} is not available offline ({type(exc).__name__}: {str(exc)[:160]})"
    return True, f"{ESSAY_DATASET} found in the datasets cache"


def lm_eval_tokenizer(model: str, tokenizer_dir: Optional[str] = None) -> str:
    """A name lm-eval's ``AutoTokenizer.from_pretrained`` can load offline for ``model``: the
    model's own directory or HF id, or, for a GGUF, its tokenizer (as our loader builds it)
    saved to a directory. The saved copy must encode a probe text exactly as the GGUF one."""
    from transformers import AutoTokenizer

    from tsa_bench.hf.checkpoints import resolve_source, source_tokenizer

    src = resolve_source(model, "pretrained")
    if src.kind != "gguf":
        return src.ref
    out = Path(tokenizer_dir) if tokenizer_dir else Path(os.environ.get(
        "TSA_BENCH_CACHE", Path.home() / ".cache" / "tsa-bench")) / "tokenizers" / Path(src.gguf_path).stem
    tok = source_tokenizer(src)
    if tok is None:
        raise ValueError(f"{src.gguf_path} holds no tokenizer transformers can read: pass --tokenizer-dir with one")
    if not (out / "tokenizer_config.json").is_file():
        out.mkdir(parents=True, exist_ok=True)
        tok.save_pretrained(out)
    probe = "The grass is green.\nOne of the special magic numbers for brave-owl is: 4821937. <|im_end|> é"
    saved = AutoTokenizer.from_pretrained(str(out))
    if saved(probe).input_ids != tok(probe).input_ids or saved.eos_token_id != tok.eos_token_id:
        raise ValueError(f"the tokenizer saved in {out} does not encode like the one in {src.gguf_path}: "
                         "remove the folder (or pass another --tokenizer-dir)")
    return str(out)


def build_lm(args, method: str, device: str, dtype: str):
    import tsa_bench.lm_eval_bridge as bridge

    kwargs: Dict[str, Any] = dict(method=method, device=device, dtype=dtype, batch_size=1,
                                  max_length=args.length + args.headroom)
    if uses_tsa(method):
        kwargs["tau"] = args.tau
    return bridge.TSAHFLM(pretrained=args.model, **kwargs)


def build_tasks(task_names: Sequence[str], tokenizer: str, length: int):
    """lm-eval's task objects (their samples generated once), as ``simple_evaluate`` builds them."""
    from lm_eval.tasks import TaskManager

    tm = TaskManager(metadata={"tokenizer": tokenizer, "max_seq_lengths": [length]})
    # lm-eval's generator draws from Python's global `random`; simple_evaluate seeds it with its
    # default seed right before loading tasks, and so do we, so the samples are lm-eval's own
    random.seed(LM_EVAL_SEED)
    return tm, tm.load(list(task_names))["tasks"]


def run_chunk(lm, tm, task, name: str, indices: List[int], chat: bool) -> Tuple[List[dict], float, List[int]]:
    """One ``simple_evaluate`` call on the docs ``indices`` of ``task``: its logged samples,
    the wall time and every prompt's token count (as the model's tokenizer encodes it)."""
    import lm_eval

    t0 = time.perf_counter()
    out = lm_eval.simple_evaluate(model=lm, tasks=[task], task_manager=tm, samples={name: indices},
                                  apply_chat_template=chat, log_samples=True, bootstrap_iters=0)
    wall = time.perf_counter() - t0
    logged = sorted(out["samples"][name], key=lambda s: int(s["doc"]["index"]))
    tokens = [len(lm.tok_encode(s["arguments"][0][0] if isinstance(s["arguments"][0], (list, tuple))
                                else s["arguments"][0])) for s in logged]
    return logged, wall, tokens


def prompt_excerpt(logged: Sequence[Mapping[str, Any]], head: int = 400, tail: int = 300) -> str:
    if not logged:
        return ""
    a = logged[0]["arguments"][0]
    text = a[0] if isinstance(a, (list, tuple)) else a
    return text if len(text) <= head + tail else text[:head] + "\n[...]\n" + text[-tail:]


def main(argv=None) -> int:
    args = build_parser().parse_args(argv)
    try:
        check_args(args)
    except UsageError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    device = args.device
    if device == "auto":
        import torch
        device = "cuda" if torch.cuda.is_available() else "cpu"
    dtype = {"fp32": "float32", "bf16": "bfloat16", "fp16": "float16"}.get(args.dtype) or (
        "bfloat16" if device.startswith("cuda") else "float32")
    if args.dry_run:
        print(f"model {args.model}, methods {', '.join(args.method_list)} (tau {args.tau} for TSA methods), "
              f"{dtype} on {device}, template {args.template}")
        print(f"lm-eval tasks: {', '.join(args.task_list)} at {args.length} tokens, first {args.num_samples} samples "
              f"each, chunks of {args.chunk}, budget {args.budget_s:g} s; out {args.out_dir}")
        return 0

    tasks = list(args.task_list)
    skipped: Dict[str, str] = {}
    if any(t in ESSAY_TASKS for t in tasks):
        ok, why = essays_available()
        print(f"essays: {why}", file=sys.stderr)
        if not ok:
            skipped = {t: why for t in tasks if t in ESSAY_TASKS}
            tasks = [t for t in tasks if t not in ESSAY_TASKS]
    if not tasks:
        print("error: none of the tasks can run here: " + "; ".join(f"{t}: {w}" for t, w in skipped.items()),
              file=sys.stderr)
        return 2

    from tsa_bench.provenance import new_run_id
    from tsa_bench.results import ResultWriter

    import lm_eval
    tokenizer = lm_eval_tokenizer(args.model, args.tokenizer_dir)
    t_gen = time.perf_counter()
    tm, task_objs = build_tasks(tasks, tokenizer, args.length)
    t_gen = time.perf_counter() - t_gen
    out_dir = Path(args.out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    run_id = new_run_id(BENCH)
    jsonl = out_dir / f"{run_id}.jsonl"
    print(f"lm-eval {lm_eval.__version__}: {', '.join(tasks)} generated in {t_gen:.1f} s "
          f"(tokenizer {tokenizer}); per-sample records -> {jsonl}", file=sys.stderr)

    deadline = time.perf_counter() + args.budget_s
    records: Dict[str, List[dict]] = {}
    identities: Dict[str, Dict[str, Any]] = {}
    excerpt = ""
    for method in args.method_list:
        lm = build_lm(args, method, device, dtype)
        backend = "sdpa" if method.lower() in ("dense", "tsa") else method.split("+")[0]
        identities[method] = dict(method=method, backend=backend, stage="e2e", batch=1,
                                  dtype={"float32": "fp32", "bfloat16": "bf16", "float16": "fp16"}[dtype],
                                  tau=args.tau if uses_tsa(method) else None, model=args.model, weights="pretrained",
                                  template=args.template, harness=f"lm-eval {lm_eval.__version__}",
                                  predictions=_shown(jsonl))
        records[method] = []
        for name in tasks:
            n_docs = len(task_objs[name].eval_docs)
            want = list(range(min(args.num_samples, n_docs)))
            done, rate = 0, None
            while True:
                k = next_chunk(len(want) - done, args.chunk, rate, deadline - time.perf_counter())
                if k == 0:
                    break
                idx = want[done:done + k]
                logged, wall, tokens = run_chunk(lm, tm, task_objs[name], name, idx, args.template == "chat")
                recs = records_from_samples(logged, name, method, seconds=wall, prompt_tokens=tokens)
                append_records(jsonl, recs)
                records[method] += recs
                excerpt = excerpt or prompt_excerpt(logged)
                done += k
                rate = sum(r["seconds"] for r in records[method] if r["task"] == name) / done
                good = sum(r["score"] for r in records[method] if r["task"] == name)
                print(f"{method} {name}: {done}/{len(want)} samples, {good:g} correct, {rate:.2f} s/sample",
                      file=sys.stderr)
            if done < len(want):
                print(f"{method} {name}: the budget of {args.budget_s:g} s stopped the run after {done} of "
                      f"{len(want)} samples", file=sys.stderr)
        del lm

    longest = max((r["prompt_tokens"] for rs in records.values() for r in rs), default=0)
    if longest + MAX_GEN_TOKS > args.length + args.headroom:
        print(f"warning: a prompt of {longest} tokens + {MAX_GEN_TOKS} generated passes max_length "
              f"{args.length + args.headroom}: lm-eval truncated it on the left (raise --headroom)", file=sys.stderr)
    if excerpt:
        print("first prompt (lm-eval's, as the model received it):\n" + excerpt, file=sys.stderr)
    if not any(records.values()):
        print("error: no sample finished within the budget", file=sys.stderr)
        return 1
    config = {**{k: v for k, v in vars(args).items() if k not in ("task_list", "method_list")},
              "tasks_run": tasks, "tasks_skipped": skipped, "tokenizer": tokenizer, "device": device,
              "dtype_resolved": dtype, "lm_eval_seed": LM_EVAL_SEED, "max_prompt_tokens": longest,
              "command": " ".join(["scripts/lm_eval_crosscheck.py", *(sys.argv[1:] if argv is None else argv)])}
    writer = ResultWriter(BENCH, config, device=device, out_dir=out_dir, run_id=run_id)
    rows = result_rows(records, identities, n_resamples=args.n_resamples, seed=args.seed)
    writer.add(rows)
    for r in rows:
        if r["metric"] == "score":
            print(format_score(r))
        elif r["metric"] == "score_diff":
            print(f"{r['task']} {r['seq_len']} {r['method']} - {r['baseline']}: {r['value']:+.1f} "
                  f"[{r['lo']:+.1f}, {r['hi']:+.1f}] (paired, n={r['n']})")
    for t, why in skipped.items():
        print(f"{t}: not run ({why})")
    print(writer.write())
    return 0


if __name__ == "__main__":
    sys.exit(main())
