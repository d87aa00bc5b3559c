"""The 13 RULER tasks: parameters, templates and one sample builder per task type.

A builder turns ``(resources, rng, size)`` into a :class:`Built` sample: the task text (task
template filled in, no model template, no answer prefix), the references, the answer prefix and
where the needles sit. ``size`` is the haystack size in the task's own unit (words, lines,
documents), the one number the budget search in :mod:`tasks.ruler.generate` tunes.

Parameters follow NVIDIA RULER's ``synthetic.yaml`` (PEERS.md §5.1). The template and
answer-prefix strings are RULER's exact strings (typos included: "assgined"), because scores
depend on them.
"""
from __future__ import annotations

import bisect
import math
import random
import string
from dataclasses import dataclass, field
from typing import Dict, List, Optional, Sequence, Tuple

from tasks.ruler import vocab

NOISE_LINE = "The grass is green. The sky is blue. The sun is yellow. Here we go. There and back again."
NEEDLE = "One of the special magic {type_v} for {key} is: {value}."
DEPTHS = tuple(int(round(100 * i / 39)) for i in range(40))   # 40 evenly spaced depths in [0, 100]

NIAH_TEMPLATE = ("Some special magic {type_v} are hidden within the following text. Make sure to memorize it. "
                 "I will quiz you about the {type_v} afterwards.\n{context}\n"
                 "What are all the special magic {type_v} for {query} mentioned in the provided text?")
NIAH_TEMPLATE_1 = ("A special magic {type_v} is hidden within the following text. Make sure to memorize it. "
                   "I will quiz you about the {type_v} afterwards.\n{context}\n"
                   "What is the special magic {type_v} for {query} mentioned in the provided text?")
NIAH_PREFIX = " The special magic {type_v} for {query} mentioned in the provided text are"
NIAH_PREFIX_1 = " The special magic {type_v} for {query} mentioned in the provided text is"
VT_TEMPLATE = ("Memorize and track the chain(s) of variable assignment hidden in the following text.\n\n"
               "{context}\nQuestion: Find all variables that are assigned the value {query} in the text above.")
VT_PREFIX = (" Answer: According to the chain(s) of variable assignment in the text above, {num_v} variables "
             "are assgined the value {query}, they are: ")
CWE_TEMPLATE = ("Below is a numbered list of words. In these words, some appear more often than others. "
                "Memorize the ones that appear most often.\n{context}\n"
                "Question: What are the 10 most common words in the above list?")
CWE_PREFIX = " Answer: The top 10 words that appear most often in the list are:"
FWE_TEMPLATE = ("Read the following coded text and track the frequency of each coded word. Find the three most "
                "frequently appeared coded words. {context}\nQuestion: Do not provide any explanation. Please "
                "ignore the dots '....'. What are the three most frequently appeared words in the above coded text?")
FWE_PREFIX = " Answer: According to the coded text above, the three most frequently appeared words are:"
QA_TEMPLATE = ("Answer the question based on the given documents. Only give me the answer and do not output any "
               "other words.\n\nThe following are given documents.\n\n{context}\n\nAnswer the question based on "
               "the given documents. Only give me the answer and do not output any other words.\n\n"
               "Question: {query}")
QA_PREFIX = " Answer:"
QA_DOC = "Document {i}:\n{text}"


@dataclass(frozen=True)
class TaskSpec:
    name: str
    kind: str                      # niah | vt | cwe | fwe | qa
    tokens_to_generate: int
    metric: str                    # string_match_all | string_match_part
    params: Dict[str, object] = field(default_factory=dict)
    unit: str = "words"            # what ``size`` counts

    @property
    def needs(self) -> Tuple[str, ...]:
        """Which corpora this task reads: ``essay``, ``squad``, ``hotpotqa``."""
        if (self.kind == "niah" and self.params["haystack"] == "essay") or self.kind == "sweep":
            return ("essay",)
        if self.kind == "qa":
            return (str(self.params["dataset"]),)
        return ()


def _niah(name, haystack, k_type, v_type, k=1, v=1, q=1):
    unit = "words" if haystack == "essay" else "lines"
    return TaskSpec(name, "niah", 128, "string_match_all",
                    dict(haystack=haystack, type_k=k_type, type_v=v_type, num_k=k, num_v=v, num_q=q), unit)


TASKS: Dict[str, TaskSpec] = {t.name: t for t in (
    _niah("niah_single_1", "noise", "words", "numbers"),
    _niah("niah_single_2", "essay", "words", "numbers"),
    _niah("niah_single_3", "essay", "words", "uuids"),
    _niah("niah_multikey_1", "essay", "words", "numbers", k=4),
    _niah("niah_multikey_2", "needle", "words", "numbers"),
    _niah("niah_multikey_3", "needle", "uuids", "uuids"),
    _niah("niah_multivalue", "essay", "words", "numbers", v=4),
    _niah("niah_multiquery", "essay", "words", "numbers", k=4, q=4),
    TaskSpec("vt", "vt", 30, "string_match_all", dict(num_chains=1, num_hops=4), "lines"),
    TaskSpec("cwe", "cwe", 120, "string_match_all", dict(freq_cw=30, freq_ucw=3, num_cw=10), "words"),
    TaskSpec("fwe", "fwe", 50, "string_match_all", dict(alpha=2.0, word_len=6), "words"),
    TaskSpec("qa_1", "qa", 32, "string_match_part", dict(dataset="squad"), "documents"),
    TaskSpec("qa_2", "qa", 32, "string_match_part", dict(dataset="hotpotqa"), "documents"),
)}


def resolve_tasks(text: str) -> List[str]:
    """``"all"``, ``"niah"`` (the 8 niah tasks) or a comma list of task names."""
    out: List[str] = []
    for part in (p.strip() for p in text.split(",")):
        if not part:
            continue
        if part == "all":
            out.extend(TASKS)
        elif part == "niah":
            out.extend(n for n, t in TASKS.items() if t.kind == "niah")
        elif part in TASKS:
            out.append(part)
        else:
            raise ValueError(f"unknown RULER task {part!r}; choose from all, niah, {', '.join(TASKS)}")
    if not out:
        raise ValueError(f"no tasks in {text!r}")
    return list(dict.fromkeys(out))


@dataclass
class Resources:
    """Everything a builder reads besides its RNG: corpora, the word pool, the target length."""

    max_length: int
    word_pool: str = "builtin"
    essay_words: Tuple[str, ...] = ()
    qa: Dict[str, object] = field(default_factory=dict)     # "squad"/"hotpotqa" -> sources.QASet
    _sents: Optional[List[str]] = None
    _ends: Optional[List[int]] = None

    def essay_sentences(self, num_words: int) -> List[str]:
        """Sentences of the first ``num_words`` essay words (the last one possibly cut).

        The corpus is split into sentences once; a prefix is then a slice plus one partial
        sentence, so trying many sizes is cheap.
        """
        if self._sents is None:
            from tasks.ruler.sources import split_sentences
            if not self.essay_words:
                raise ValueError("this task needs the essay corpus, which was not loaded")
            self._sents = split_sentences(" ".join(self.essay_words))
            ends, total = [], 0
            for sent in self._sents:
                total += len(sent.split())
                ends.append(total)
            self._ends = ends
        sents, ends = self._sents, self._ends
        total = ends[-1]
        reps, rest = divmod(num_words, total)     # RULER repeats the corpus when it is too short
        k = bisect.bisect_right(ends, rest)
        out = sents * reps + sents[:k]
        done = ends[k - 1] if k else 0
        if rest > done:
            out.append(" ".join(sents[k].split()[: rest - done]))
        return out


@dataclass(frozen=True)
class Built:
    text: str                       # task text: template with context and question, no answer prefix
    outputs: Tuple[str, ...]
    answer_prefix: str
    depth: Optional[Tuple[float, ...]] = None   # where the answer-bearing pieces sit, % of the context


def _insert_lines(lines: List[str], pieces: Sequence[str], rng: random.Random) -> List[float]:
    """Insert ``pieces`` at random distinct line positions, in order; returns their depths (%)."""
    n = len(lines)
    slots = sorted(rng.sample(range(n + 1), len(pieces))) if n + 1 >= len(pieces) else \
        sorted(rng.choices(range(n + 1), k=len(pieces)))
    depths = [100.0 * s / max(1, n) for s in slots]
    for offset, (slot, piece) in enumerate(zip(slots, pieces)):
        lines.insert(slot + offset, piece)
    return depths


def _other(kind: str, rng: random.Random, pool: str, avoid: set) -> str:
    """A random key or value of ``kind`` that is not in ``avoid``, drawing again on a collision
    (a sample without one consumes the RNG exactly as a single draw)."""
    while True:
        value = vocab.random_value(kind, rng, pool)
        if value not in avoid:
            return value


def _fresh(kind: str, rng: random.Random, pool: str, taken: set) -> str:
    """:func:`_other` that also adds the new value to ``taken``."""
    value = _other(kind, rng, pool, taken)
    taken.add(value)
    return value


def build_niah(spec: TaskSpec, res: Resources, rng: random.Random, size: int) -> Built:
    """A niah sample. Every needle key is distinct and every needle value is distinct, and the
    filler needles of the ``needle`` haystack never reuse a needle's key or value: the queried
    keys occur in exactly ``num_v`` needle sentences each, and no distractor's value is an
    answer. (RULER draws the fillers without that check; with a small word pool a filler can
    then carry the queried key, and the sample has two right answers.)"""
    p = spec.params
    num_k = max(int(p["num_k"]), int(p["num_q"]))
    keys, values, needles = [], [], []
    taken_keys: set = set()
    taken_values: set = set()
    for _ in range(num_k):
        key = _fresh(p["type_k"], rng, res.word_pool, taken_keys)
        keys.append(key)
        vals = [_fresh(p["type_v"], rng, res.word_pool, taken_values) for _ in range(int(p["num_v"]))]
        values.append(vals)
        needles.extend(NEEDLE.format(type_v=p["type_v"], key=key, value=v) for v in vals)
    rng.shuffle(needles)
    if p["haystack"] == "essay":
        sents = list(res.essay_sentences(size))
        depths = sorted(rng.sample(DEPTHS, len(needles)))
        order = sorted(zip(depths, range(len(needles))))
        pieces: List[str] = []
        start = 0
        for d, i in order:
            cut = int(len(sents) * d / 100)
            pieces.extend(sents[start:cut])
            pieces.append(needles[i])
            start = cut
        pieces.extend(sents[start:])
        context = " ".join(pieces)
        depth = tuple(float(d) for d in depths)
    else:
        if p["haystack"] == "noise":
            lines = [NOISE_LINE] * size
        else:   # "needle": every filler line is a distractor needle (fillers may repeat each other)
            lines = [NEEDLE.format(type_v=p["type_v"], key=_other(p["type_k"], rng, res.word_pool, taken_keys),
                                   value=_other(p["type_v"], rng, res.word_pool, taken_values))
                     for _ in range(size)]
        depth = tuple(_insert_lines(lines, needles, rng))
        context = "\n".join(lines)
    chosen = rng.sample(range(num_k), int(p["num_q"]))
    queries = [keys[i] for i in chosen]
    outputs = tuple(v for i in chosen for v in values[i])
    query = queries[0] if len(queries) == 1 else ", ".join(queries[:-1]) + ", and " + queries[-1]
    if len(outputs) == 1:
        type_v = str(p["type_v"])[:-1]
        text = NIAH_TEMPLATE_1.format(type_v=type_v, context=context, query=query)
        prefix = NIAH_PREFIX_1.format(type_v=type_v, query=query)
    else:
        text = NIAH_TEMPLATE.format(type_v=p["type_v"], context=context, query=query)
        prefix = NIAH_PREFIX.format(type_v=p["type_v"], query=query)
    return Built(text, outputs, prefix, depth)


def _vt_chain(rng: random.Random, num_hops: int, var_len: int) -> Tuple[List[str], List[str]]:
    names: List[str] = []
    while len(names) < num_hops + 1:
        name = "".join(rng.choices(string.ascii_uppercase, k=var_len))
        if name not in names:
            names.append(name)
    chain = [f"VAR {names[0]} = {rng.randint(10000, 99999)}"]
    chain += [f"VAR {names[j + 1]} = VAR {names[j]} " for j in range(num_hops)]
    return names, chain


def _vt_text(rng: random.Random, num_lines: int, num_hops: int, var_len: int):
    names, chain = _vt_chain(rng, num_hops, var_len)
    lines = [NOISE_LINE + "\n"] * num_lines
    depth = _insert_lines(lines, chain, rng)
    context = " ".join(lines).replace(". \n", ".\n")
    value = chain[0].split("=")[-1].strip()
    return VT_TEMPLATE.format(context=context, query=value), names, value, depth


def build_vt(spec: TaskSpec, res: Resources, rng: random.Random, size: int) -> Built:
    hops = int(spec.params["num_hops"])
    # One worked example first (RULER's few-shot), with 3-letter variables and a short noise text.
    ex_text, ex_names, ex_value, _ = _vt_text(rng, 12, hops, 3)
    example = ex_text + VT_PREFIX.format(num_v=hops + 1, query=ex_value) + " ".join(ex_names) + "\n\n"
    text, names, value, depth = _vt_text(rng, size, hops, 5)
    return Built(example + text, tuple(names), VT_PREFIX.format(num_v=hops + 1, query=value), tuple(depth))


def _cwe_list(rng: random.Random, words: Sequence[str], num_words: int, rep_c: int, rep_u: int, num_c: int):
    chosen = rng.sample(list(words), num_words)
    common = chosen[:num_c]
    seq = common * rep_c + chosen[num_c:] * rep_u
    rng.shuffle(seq)
    return " ".join(f"{i + 1}. {w}" for i, w in enumerate(seq)), common


def cwe_pool_size(max_length: int) -> int:
    """Distinct words cwe may draw from at ``max_length``: enough for any tokenizer that spends
    at least 2 tokens per list entry ("12. word")."""
    return max(256, max_length // 6)


def build_cwe(spec: TaskSpec, res: Resources, rng: random.Random, size: int) -> Built:
    p = spec.params
    num_c = int(p["num_cw"])
    size = max(size, num_c + 1)
    # A fixed pool per length (the lists, then pseudo-words if the length needs more), so the
    # token count grows monotonically with ``size`` and the budget search stays a search.
    words = vocab.cwe_words(res.word_pool, cwe_pool_size(res.max_length))
    if size > len(words):
        raise ValueError(f"cwe needs {size} distinct words, the pool holds {len(words)}")
    if res.max_length >= 4096:
        ex_ctx, ex_ans = _cwe_list(rng, words, 40, 10, 3, num_c)
        ctx, ans = _cwe_list(rng, words, size, int(p["freq_cw"]), int(p["freq_ucw"]), num_c)
    else:
        ex_ctx, ex_ans = _cwe_list(rng, words, 20, 3, 1, num_c)
        ctx, ans = _cwe_list(rng, words, size, 6, 1, num_c)
    example = (CWE_TEMPLATE.format(context=ex_ctx) + CWE_PREFIX + " "
               + " ".join(f"{i + 1}. {w}" for i, w in enumerate(ex_ans)))
    return Built(example + "\n" + CWE_TEMPLATE.format(context=ctx), tuple(ans), CWE_PREFIX, None)


def _zeta(alpha: float, terms: int = 10_000) -> float:
    """Riemann zeta for alpha > 1: partial sum plus the Euler-Maclaurin tail."""
    s = sum(k ** -alpha for k in range(1, terms))
    n = float(terms)
    return s + n ** (1 - alpha) / (alpha - 1) + 0.5 * n ** -alpha


def build_fwe(spec: TaskSpec, res: Resources, rng: random.Random, size: int) -> Built:
    alpha, wlen = float(spec.params["alpha"]), int(spec.params["word_len"])
    vocab_size = max(8, (res.max_length - spec.tokens_to_generate) // 50)
    seen, words = set(), []
    while len(words) < vocab_size:
        w = "".join(rng.choices(string.ascii_lowercase, k=wlen))
        if w not in seen:
            seen.add(w)
            words.append(w)
    words[0] = "..."                       # the top-ranked word is noise
    z = _zeta(alpha)
    seq: List[str] = []
    for rank, w in enumerate(words, start=1):
        seq.extend([w] * int(size * rank ** -alpha / z))
    rng.shuffle(seq)
    return Built(FWE_TEMPLATE.format(context=" ".join(seq)), tuple(words[1:4]), FWE_PREFIX, None)


def build_qa(spec: TaskSpec, res: Resources, rng: random.Random, size: int, index: int = 0) -> Built:
    qa = res.qa[str(spec.params["dataset"])]
    question, answers, gold, more = qa.questions[index % len(qa.questions)]
    n_docs = len(qa.docs)
    if size >= n_docs:
        picked = list(range(n_docs))
    else:
        picked = list(gold) + list(more)[: max(0, size - len(gold))]
        taken = set(picked)
        while len(picked) < size:
            d = rng.randrange(n_docs)
            if d not in taken:
                taken.add(d)
                picked.append(d)
    rng.shuffle(picked)
    gold_set = set(gold)
    depth = tuple(100.0 * i / max(1, len(picked)) for i, d in enumerate(picked) if d in gold_set)
    context = "\n\n".join(QA_DOC.format(i=i + 1, text=qa.docs[d]) for i, d in enumerate(picked))
    return Built(QA_TEMPLATE.format(context=context, query=question), tuple(answers), QA_PREFIX, depth)


SWEEP_NEEDLE = "The best thing to do in San Francisco is eat a sandwich and sit in Dolores Park on a sunny day."
SWEEP_TEMPLATE = ("This is a very long story book: <book> {context} </book>.\n"
                  "Based on the content of the book, Question: What is the best thing to do in San Francisco?")
SWEEP_PREFIX = " Answer:"


def sweep_spec(depth: float) -> TaskSpec:
    """The paper's appendix needle test (PAPER.md §2.2): one fixed needle at ``depth`` % of an
    essay haystack, 30 generated tokens, scored by ROUGE-1 F against the needle sentence."""
    if not 0.0 <= float(depth) <= 100.0:
        raise ValueError(f"depth must be in [0, 100] (percent), got {depth}")
    return TaskSpec(f"niah_sweep_d{float(depth):g}", "sweep", 30, "rouge1_f", dict(depth=float(depth)), "words")


def build_sweep(spec: TaskSpec, res: Resources, rng: random.Random, size: int) -> Built:
    sents = res.essay_sentences(size)
    cut = int(round(len(sents) * float(spec.params["depth"]) / 100.0))
    context = " ".join(sents[:cut] + [SWEEP_NEEDLE] + sents[cut:])
    return Built(SWEEP_TEMPLATE.format(context=context), (SWEEP_NEEDLE,), SWEEP_PREFIX,
                 (100.0 * cut / max(1, len(sents)),))


def build(spec: TaskSpec, res: Resources, rng: random.Random, size: int, index: int = 0) -> Built:
    if spec.kind == "sweep":
        return build_sweep(spec, res, rng, size)
    if spec.kind == "niah":
        return build_niah(spec, res, rng, size)
    if spec.kind == "vt":
        return build_vt(spec, res, rng, size)
    if spec.kind == "cwe":
        return build_cwe(spec, res, rng, size)
    if spec.kind == "fwe":
        return build_fwe(spec, res, rng, size)
    return build_qa(spec, res, rng, size, index)


def min_size(spec: TaskSpec) -> int:
    """Smallest meaningful haystack (enough room for every needle / answer)."""
    if spec.kind == "cwe":
        return int(spec.params["num_cw"]) + 1
    if spec.kind == "fwe":
        return 64
    if spec.kind == "qa":
        return 1
    return 1


def max_size(spec: TaskSpec, res: Resources) -> Optional[int]:
    """Largest size the builder accepts (cwe: the word pool), or None when unbounded."""
    if spec.kind == "cwe":
        return len(vocab.cwe_words(res.word_pool, cwe_pool_size(res.max_length)))
    return None


def size_estimate(spec: TaskSpec, max_length: int) -> int:
    """A first guess of the size for ``max_length`` tokens; the search only needs it roughly."""
    per_unit = {"words": 1.4, "lines": 24.0, "documents": 170.0}[spec.unit]
    if spec.kind == "cwe":
        per_unit = 3.5 * 3.2
    if spec.kind == "fwe":
        per_unit = 2.5
    if spec.kind == "niah" and spec.params["haystack"] == "needle":
        per_unit = 30.0
    return max(min_size(spec), int(math.floor(max_length / per_unit)))
