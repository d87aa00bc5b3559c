"""Generate RULER samples for a tokenizer and a context length, fitted to the budget, cached.

Budget (PEERS.md §5.4): ``len(prompt ids) + tokens_to_generate <= max_length`` where the prompt
is the task text after the model template plus the answer prefix, tokenised exactly as the
runner feeds it to the model (:func:`encode_prompt`: the tokenizer's special tokens are added,
unless the template already starts with the BOS string, so BOS is never doubled).

Counting. Tokenising a 128K prompt takes about a second, and RULER needs thousands of them,
so :class:`TokenCounter` counts a prompt as the sum of the token counts of its space-separated
pieces, each piece tokenised once and memoised. That equals the full count for tokenizers whose
pre-tokenizer splits before spaces (byte-level BPE: Llama-3, Qwen, Mistral-Nemo, GPT-2; and
Metaspace SentencePiece). It is *checked*, not assumed: for every task and length the probe at
the fitted size and the first sample are also tokenised in full, and on any mismatch that task
and length fall back to full tokenisation of every candidate (slow, exact). The runner
tokenises each prompt anyway and checks the recorded length again.

Search. The haystack size ``s`` (words, lines or documents) is found once per task and length
with a bracketed search on a probe sample: interpolation steps (token count is close to linear
in ``s``) inside a shrinking ``[fits, overflows]`` bracket, falling back to bisection, until
the bracket closes to one unit. Each sample is then built at ``s``; if its own random content
overflows, ``s`` is lowered the same way for that sample only. So every sample is within one
unit (plus its content's variance) of the budget, and generation costs about one tokenisation
per sample.

Determinism. Sample ``i`` of a task draws from ``random.Random(f"{seed}:{task}:{length}:{i}")``
and nothing else, so the same seed, tokenizer and sources give byte-identical files, and
asking for more samples later extends a file without changing its first lines.
"""
from __future__ import annotations

import hashlib
import json
import math
import os
import random
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Dict, Iterable, List, Optional, Sequence, Tuple

from tasks.ruler import sources, tasks as T, vocab

GENERATOR_VERSION = "tsa-ruler-2"   # 2: niah keys and values distinct, fillers never reuse them
MODEL_TEMPLATES = ("base", "chat", "meta-llama3")
_LLAMA3 = ("<|begin_of_text|><|start_header_id|>user<|end_header_id|>\n\n{task}<|eot_id|>"
           "<|start_header_id|>assistant<|end_header_id|>\n\n")


def default_cache_dir() -> Path:
    return Path(os.environ.get("TSA_BENCH_CACHE", Path.home() / ".cache" / "tsa-bench")) / "ruler"


# --------------------------------------------------------------------------- templates / tokens

def apply_model_template(tokenizer, template: str, task_text: str) -> str:
    """The model-templated input (without the answer prefix). ``chat`` uses the tokenizer's own
    chat template with one user turn and the generation prompt; ``meta-llama3`` is RULER's
    literal Llama-3 template; ``base`` is the task text itself."""
    if template == "base":
        return task_text
    if template == "meta-llama3":
        return _LLAMA3.format(task=task_text)
    if template == "chat":
        if not getattr(tokenizer, "chat_template", None):
            raise ValueError("--template chat: this tokenizer has no chat template; use --template base")
        return tokenizer.apply_chat_template([{"role": "user", "content": task_text}], tokenize=False,
                                             add_generation_prompt=True)
    raise ValueError(f"template must be one of {', '.join(MODEL_TEMPLATES)}, got {template!r}")


def encode_prompt(tokenizer, prompt: str) -> List[int]:
    """Token ids the model sees for ``prompt``: special tokens added as the tokenizer does by
    default, except that a prompt already starting with the BOS string gets no second BOS."""
    bos = getattr(tokenizer, "bos_token", None)
    add = not (bos and prompt.startswith(bos))
    return list(tokenizer(prompt, add_special_tokens=add)["input_ids"])


def count_tokens(tokenizer, prompt: str) -> int:
    return len(encode_prompt(tokenizer, prompt))


def tokenizer_id(tokenizer) -> str:
    """A short, stable fingerprint: name plus a hash of the full tokenizer definition."""
    name = str(getattr(tokenizer, "name_or_path", "") or type(tokenizer).__name__)
    backend = getattr(tokenizer, "backend_tokenizer", None)
    if backend is not None:
        blob = backend.to_str()
    else:
        blob = json.dumps(sorted(tokenizer.get_vocab().items()))
    blob += json.dumps([getattr(tokenizer, "bos_token", None), getattr(tokenizer, "chat_template", None)],
                       default=str)
    safe = "".join(c if c.isalnum() or c in "-_." else "_" for c in name.strip("/").split("/")[-1])[:40]
    return f"{safe or 'tok'}-{hashlib.sha256(blob.encode()).hexdigest()[:10]}"


# --------------------------------------------------------------------------- configuration

@dataclass(frozen=True)
class GenConfig:
    """What, besides the tokenizer, determines the generated files."""

    template: str = "base"
    seed: int = 42
    data: str = "auto"                 # auto | real | generated
    words: str = "auto"                # auto | wonderwords | builtin
    essays: Optional[str] = None
    squad: Optional[str] = None
    hotpotqa: Optional[str] = None

    def __post_init__(self):
        if self.template not in MODEL_TEMPLATES:
            raise ValueError(f"template must be one of {', '.join(MODEL_TEMPLATES)}, got {self.template!r}")
        if self.data not in ("auto", "real", "generated"):
            raise ValueError(f"data must be 'auto', 'real' or 'generated', got {self.data!r}")
        if self.words not in ("auto", "wonderwords", "builtin"):
            raise ValueError(f"words must be 'auto', 'wonderwords' or 'builtin', got {self.words!r}")


class Corpora:
    """Loads each corpus at most once, on first need, and remembers its source string."""

    def __init__(self, cfg: GenConfig, log: Callable[[str], None] = print):
        self.cfg, self.log = cfg, log
        self.word_pool = vocab.resolve_pool(cfg.words)
        self._essay: Optional[sources.Essay] = None
        self._qa: Dict[str, sources.QASet] = {}

    def essay(self) -> sources.Essay:
        if self._essay is None:
            self._essay = sources.load_essays(self.cfg.essays, self.cfg.data, self.log)
        return self._essay

    def qa(self, which: str) -> sources.QASet:
        if which not in self._qa:
            path = self.cfg.squad if which == "squad" else self.cfg.hotpotqa
            self._qa[which] = sources.load_qa(which, path, self.cfg.data, self.log)
        return self._qa[which]

    def source_of(self, spec: T.TaskSpec) -> str:
        """The data source string recorded on samples and result rows."""
        if "essay" in spec.needs:
            base = self.essay().source
        elif spec.kind == "niah":
            base = str(spec.params["haystack"])
        elif spec.kind == "qa":
            base = self.qa(str(spec.params["dataset"])).source
        else:
            base = "synthetic"
        return f"{base};words:{self.word_pool}"

    def resources(self, spec: T.TaskSpec, max_length: int) -> T.Resources:
        res = T.Resources(max_length=max_length, word_pool=self.word_pool)
        if "essay" in spec.needs:
            res.essay_words = self.essay().words
        for which in ("squad", "hotpotqa"):
            if which in spec.needs:
                res.qa[which] = self.qa(which)
        return res

    def data_tag(self) -> str:
        """Part of the cache key: which sources the files were made from."""
        c = self.cfg
        parts = [c.data, self.word_pool]
        for p in (c.essays, c.squad, c.hotpotqa):
            parts.append(hashlib.sha256(str(Path(p).expanduser().resolve()).encode()).hexdigest()[:6] if p else "-")
        return "-".join(parts)


# --------------------------------------------------------------------------- fitting

class TokenCounter:
    """Counts prompt tokens as the sum of memoised space-separated pieces (see module doc)."""

    MAX_CACHE = 2_000_000

    def __init__(self, tokenizer):
        self.tok = tokenizer
        self.cache: Dict[str, int] = {}
        self.bos = getattr(tokenizer, "bos_token", None)
        self.n_special = len(tokenizer("", add_special_tokens=True)["input_ids"]) - \
            len(tokenizer("", add_special_tokens=False)["input_ids"])
        backend = getattr(tokenizer, "backend_tokenizer", None)
        self._batch = getattr(backend, "encode_batch_fast", None) or getattr(backend, "encode_batch", None)
        self.full_calls = 0
        self._anchor: Optional[int] = None

    ANCHOR = "x"

    def _encode_many(self, texts: List[str]) -> List[int]:
        if self._batch is not None:
            return [len(e.ids) for e in self._batch(texts, add_special_tokens=False)]
        return [len(x) for x in self.tok(texts, add_special_tokens=False)["input_ids"]]

    def _encode_inner(self, texts: List[str]) -> List[int]:
        """Counts of pieces that follow other text: measured after an anchor word and minus the
        anchor's own count, so tokenizers that prepend a word-boundary marker to every input
        (SentencePiece's "▁") do not count it once per piece."""
        if self._anchor is None:
            self._anchor = self._encode_many([self.ANCHOR])[0]
        return [n - self._anchor for n in self._encode_many([self.ANCHOR + t for t in texts])]

    def count(self, prompt: str) -> int:
        """Sum of memoised counts: the first piece as is, every later one with its leading space."""
        parts = prompt.split(" ")
        cache = self.cache
        missing = [p for p in set(parts[1:]).difference(cache)]
        if missing:
            if len(cache) + len(missing) > self.MAX_CACHE:
                cache.clear()
                missing = list(set(parts[1:]))
            cache.update(zip(missing, self._encode_inner([" " + p for p in missing])))
        first = self._encode_many([parts[0]])[0] if parts[0] else 0
        extra = 0 if (self.bos and prompt.startswith(self.bos)) else self.n_special
        return extra + first + sum(map(cache.__getitem__, parts[1:]))

    def exact(self, prompt: str) -> int:
        self.full_calls += 1
        return count_tokens(self.tok, prompt)


class _Sampler:
    """Builds one sample at a given size and measures it (tokens incl. the generation budget)."""

    def __init__(self, tokenizer, spec: T.TaskSpec, res: T.Resources, template: str,
                 counter: TokenCounter, exact: bool = False):
        self.tok, self.spec, self.res, self.template = tokenizer, spec, res, template
        self.counter, self.exact = counter, exact
        self.calls = 0
        self.unit_tokens = 1.0      # tokens per haystack unit, measured by fit_size

    def make(self, rng_seed: str, size: int, index: int) -> Tuple[T.Built, str, int]:
        built = T.build(self.spec, self.res, random.Random(rng_seed), size, index)
        prompt_input = apply_model_template(self.tok, self.template, built.text)
        prompt = prompt_input + built.answer_prefix
        n = self.counter.exact(prompt) if self.exact else self.counter.count(prompt)
        self.calls += 1
        return built, prompt_input, n + self.spec.tokens_to_generate


def _search(measure: Callable[[int], int], budget: int, lo: int, guess: int,
            fits_lo: Optional[int] = None, hi: Optional[int] = None) -> Tuple[int, int]:
    """Largest size ``lo <= s <= hi`` with ``measure(s) <= budget``; returns ``(s, measure(s))``.

    ``measure`` must be (close to) non-decreasing. Interpolation inside a ``[fits, overflows]``
    bracket, with every third step a bisection so a poor interpolation cannot crawl. Raises
    ``ValueError`` if even ``lo`` overflows.
    """
    n_lo = fits_lo if fits_lo is not None else measure(lo)
    if n_lo > budget:
        raise ValueError(f"even the smallest haystack ({lo}) needs {n_lo} tokens > budget {budget}")
    good, n_good = lo, n_lo
    bad: Optional[int] = (hi + 1) if hi is not None else None
    s = max(guess, lo + 1)
    for step in range(64):
        if bad is not None and bad - good <= 1:
            break
        if bad is not None:
            s = min(max(s, good + 1), bad - 1)
        n = measure(s)
        if n <= budget:
            good, n_good = s, n
        else:
            bad = s
        if bad is not None and bad - good <= 1:
            break
        rate = max((n - n_lo) / max(1, s - lo), 1e-3)
        if bad is None:   # grow: interpolate to the budget, at least +1, at most x4
            s = min(good + max(1, int((budget - n_good) / rate)), good * 4 + 16)
        else:
            s = good + int((budget - n_good) / rate)
            if step % 3 == 2 or not good < s < bad:
                s = (good + bad) // 2
    return good, n_good


def fit_size(sampler: _Sampler, budget: int, probe_seed: str) -> int:
    """Largest haystack size that fits ``budget`` for the probe sample."""
    lo = T.min_size(sampler.spec)
    guess = T.size_estimate(sampler.spec, budget)
    probe = lambda s: sampler.make(probe_seed, s, 0)[2]   # noqa: E731
    n_lo = probe(lo)
    if n_lo > budget:
        raise ValueError(f"{sampler.spec.name}: max_length {budget} is too short: the prompt with the "
                         f"smallest haystack already needs {n_lo} tokens (including "
                         f"{sampler.spec.tokens_to_generate} to generate)")
    # shrink the guess with one cheap measurement so the first step rarely overshoots wildly
    small = max(lo + 1, min(guess, max(lo + 1, guess // 16)))
    n_small = probe(small)
    rate = max((n_small - n_lo) / max(1, small - lo), 1e-3)
    guess = max(lo + 1, lo + int((budget - n_lo) / rate))
    size, n = _search(probe, budget, lo, guess, fits_lo=n_lo, hi=T.max_size(sampler.spec, sampler.res))
    sampler.unit_tokens = max(1.0, (n - n_lo) / max(1, size - lo))
    return size


# --------------------------------------------------------------------------- samples and files

def sample_seed(seed: int, task: str, length: int, index: int) -> str:
    return f"{seed}:{task}:{length}:{index}"


def make_sample(sampler: _Sampler, cfg: GenConfig, length: int, index: int, size: int,
                source: str) -> Dict[str, object]:
    spec = sampler.spec
    rs = sample_seed(cfg.seed, spec.name, length, index)
    built, prompt_input, n = sampler.make(rs, size, index)
    unit = sampler.unit_tokens
    tries, step = 0, 0
    while length - n >= 2 * unit and not sampler.exact and tries < 5:
        # this sample's random content is shorter than the probe's by two units or more: jump
        # by the measured tokens per unit, halving the jump when it overshoots
        if step == 0:
            step = max(1, int((length - n) / unit) - 1)
        cap = T.max_size(spec, sampler.res)
        if cap is not None:
            step = min(step, cap - size)
            if step <= 0:
                break
        cand = sampler.make(rs, size + step, index)
        tries += 1
        if cand[2] <= length:
            size, (built, prompt_input, n) = size + step, cand
            step = 0
        else:
            step //= 2
            if step == 0:
                break
    lo = T.min_size(spec)
    while n > length:           # longer than the probe's: step down by the measured overflow
        if size <= lo:
            raise ValueError(f"{spec.name}: sample {index} does not fit max_length {length} even with the "
                             f"smallest haystack")
        size = max(lo, size - max(1, math.ceil((n - length) / unit)))
        built, prompt_input, n = sampler.make(rs, size, index)
    return {
        "id": f"{spec.name}-{length}-{index:05d}",
        "index": index,
        "task": spec.name,
        "max_length": length,
        "input": prompt_input,
        "answer_prefix": built.answer_prefix,
        "outputs": list(built.outputs),
        "length": n - spec.tokens_to_generate,
        "tokens_to_generate": spec.tokens_to_generate,
        "metric": spec.metric,
        "depth": list(built.depth) if built.depth is not None else None,
        "haystack_size": size,
        "haystack_unit": spec.unit,
        "template": cfg.template,
        "source": source,
        "seed": cfg.seed,
        "generator": GENERATOR_VERSION,
    }


def _read_jsonl(path: Path) -> List[Dict[str, object]]:
    out = []
    with open(path, encoding="utf-8") as f:
        for line in f:
            if line.strip():
                out.append(json.loads(line))
    return out


class Generator:
    """Generates and caches RULER files for one tokenizer and :class:`GenConfig`."""

    def __init__(self, tokenizer, cfg: GenConfig = GenConfig(), cache_dir: Optional[Path] = None,
                 log: Callable[[str], None] = print, exact: bool = False):
        self.tok, self.cfg, self.log = tokenizer, cfg, log
        self.counter = TokenCounter(tokenizer)
        self.exact = exact
        self.corpora = Corpora(cfg, log)
        self.cache_dir = Path(cache_dir) if cache_dir else default_cache_dir()
        self._tok_id: Optional[str] = None
        self.tokenize_calls = 0

    @property
    def tok_id(self) -> str:
        if self._tok_id is None:
            self._tok_id = tokenizer_id(self.tok)
        return self._tok_id

    def path(self, task: str, length: int) -> Path:
        c = self.cfg
        return (self.cache_dir / self.tok_id / f"{GENERATOR_VERSION}-{c.template}-s{c.seed}-{self.corpora.data_tag()}"
                / f"{task}-{length}.jsonl")

    def samples(self, task, length: int, n: int) -> List[Dict[str, object]]:
        """The first ``n`` samples of ``task`` (a name or a :class:`TaskSpec`) at ``length``,
        from the cache or generated now."""
        if isinstance(task, T.TaskSpec):
            spec, task = task, task.name
        elif task in T.TASKS:
            spec = T.TASKS[task]
        else:
            raise ValueError(f"unknown RULER task {task!r}; choose from {', '.join(T.TASKS)}")
        if n < 1:
            raise ValueError(f"n (samples per task) must be >= 1, got {n}")
        if length < 256:
            raise ValueError(f"max_length must be >= 256 tokens, got {length}")
        path = self.path(task, length)
        have = _read_jsonl(path) if path.exists() else []
        if len(have) >= n:
            return have[:n]
        sampler = _Sampler(self.tok, spec, self.corpora.resources(spec, length), self.cfg.template,
                           self.counter, exact=self.exact)
        source = self.corpora.source_of(spec)
        probe = sample_seed(self.cfg.seed, task, length, -1)
        size = fit_size(sampler, length, probe)
        first = len(have)
        new = [make_sample(sampler, self.cfg, length, first, size, source)]
        if not sampler.exact and self.counter.exact(prompt_of(new[0])) != new[0]["length"]:
            self.log(f"note: {task}@{length}: piece-wise token counts differ from full tokenisation "
                     f"for this tokenizer; counting every candidate in full (slower, exact)")
            sampler.exact = True
            size = fit_size(sampler, length, probe)
            new = [make_sample(sampler, self.cfg, length, first, size, source)]
        new += [make_sample(sampler, self.cfg, length, i, size, source) for i in range(first + 1, n)]
        self.tokenize_calls += sampler.calls
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_suffix(f".tmp{os.getpid()}")
        with open(tmp, "w", encoding="utf-8") as f:
            for rec in have + new:
                f.write(json.dumps(rec, ensure_ascii=False, sort_keys=True) + "\n")
        os.replace(tmp, path)
        return have + new

    def generate(self, task_names: Sequence[str], lengths: Sequence[int], n: int, progress: bool = False,
                 keep: bool = True) -> Dict[Tuple[str, int], List[Dict[str, object]]]:
        """Make sure every (task, length) file holds ``n`` samples; return them unless ``keep``
        is False (128K prompts are about 0.5 MB each: load one length at a time instead)."""
        out = {}
        pairs = [(t, L) for L in lengths for t in task_names]
        bar = None
        if progress:
            from tqdm.auto import tqdm
            bar = tqdm(total=len(pairs), desc="generate", unit="task")
        for t, L in pairs:
            t0 = time.perf_counter()
            got = self.samples(t, L, n)
            if keep:
                out[(t, L)] = got
            if bar is not None:
                bar.set_postfix_str(f"{t}@{L} {time.perf_counter() - t0:.1f}s")
                bar.update(1)
        if bar is not None:
            bar.close()
        return out


def prompt_of(sample: Dict[str, object]) -> str:
    """The exact string fed to the model: templated input plus the answer prefix."""
    return str(sample["input"]) + str(sample["answer_prefix"])


def iter_files(gen: Generator, task_names: Iterable[str], lengths: Iterable[int]) -> List[Path]:
    return [gen.path(t, L) for L in lengths for t in task_names]
