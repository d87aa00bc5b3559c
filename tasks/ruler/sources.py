"""Haystack and QA data: the real corpora when available, the project's generated ones otherwise.

Real sources (looked up in this order):

* essays (Paul Graham): ``--essays PATH`` / ``TSA_RULER_ESSAYS`` (a ``{"text": ...}`` JSON as
  written by RULER's downloader, a ``.txt`` file, or a folder of ``.txt`` files), then
  ``datasets.load_dataset("baber/paul_graham_essays")`` (lm-eval's copy);
* SQuAD v2 dev: ``--squad PATH`` / ``TSA_RULER_SQUAD`` (the official ``dev-v2.0.json``), then
  ``datasets.load_dataset("rajpurkar/squad_v2", split="validation")``;
* HotpotQA dev (distractor): ``--hotpotqa PATH`` / ``TSA_RULER_HOTPOTQA``
  (``hotpot_dev_distractor_v1.json``), then ``datasets.load_dataset("hotpotqa/hotpot_qa",
  "distractor", split="validation")``.

Generated sources (no network, deterministic, made here):

* ``generated-prose``: essay-like English prose from a small grammar over :mod:`vocab`;
* ``generated-qa``: short encyclopedic passages about invented people, towns and companies,
  with single-passage questions (qa_1, SQuAD-like) and two-passage bridge questions
  (qa_2, HotpotQA-like).

Every loader returns a ``source`` string that ends up on every sample and result row.
"""
from __future__ import annotations

import functools
import json
import os
import random
import re
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Dict, List, Optional, Tuple

from tasks.ruler import vocab

ESSAY_ENV, SQUAD_ENV, HOTPOT_ENV = "TSA_RULER_ESSAYS", "TSA_RULER_SQUAD", "TSA_RULER_HOTPOTQA"
PROSE_SOURCE, QA_SOURCE = "generated-prose-v1", "generated-qa-v1"


class SourceUnavailable(ValueError):
    """A real corpus was asked for (``data="real"``) and could not be found."""


# --------------------------------------------------------------------------- essays / prose

@dataclass(frozen=True)
class Essay:
    words: Tuple[str, ...]    # whitespace-split words, in order
    source: str


def _load_essay_path(path: Path) -> str:
    if path.is_dir():
        files = sorted(path.glob("*.txt"))
        if not files:
            raise SourceUnavailable(f"essays folder {path} holds no .txt files")
        return " ".join(f.read_text(encoding="utf-8", errors="replace") for f in files)
    if path.suffix == ".json":
        data = json.loads(path.read_text(encoding="utf-8"))
        if isinstance(data, dict) and "text" in data:
            return data["text"]
        if isinstance(data, list):
            return " ".join(d["text"] if isinstance(d, dict) else str(d) for d in data)
        raise SourceUnavailable(f"{path}: expected {{'text': ...}} or a list of texts")
    return path.read_text(encoding="utf-8", errors="replace")


def _hf_dataset(*args, **kwargs):
    """``datasets.load_dataset`` or ``None`` (not installed / offline / not cached)."""
    try:
        import datasets
    except ImportError:
        return None
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            return datasets.load_dataset(*args, **kwargs)
    except Exception:  # noqa: BLE001 - offline, not cached, auth, ...: all mean "not available"
        return None


def _unavailable(what: str, flag: str, env: str, hf: str, data: str) -> str:
    return (f"{what} is not available: no {flag} / ${env} given and datasets.load_dataset({hf}) "
            f"failed (offline or not cached). " +
            ("Give a local copy, or run with --data generated to use the project's own "
             "offline source." if data == "real" else "Using the project's offline source instead."))


def generated_prose(num_words: int = 160_000, seed: int = 0) -> Essay:
    """Deterministic essay-like prose: sentences of 6-20 words built from a small grammar."""
    return Essay(_prose_words(num_words, seed), PROSE_SOURCE)


@functools.lru_cache(maxsize=2)
def _prose_words(num_words: int, seed: int) -> Tuple[str, ...]:
    adjs, nouns, verbs = vocab.word_lists("builtin")
    rng = random.Random(f"prose:{seed}")
    openers = ("It seems that", "Most people assume", "In my experience", "The surprising thing is that",
               "I think", "Years later", "One reason is that", "Often", "Sometimes", "Usually")
    preps = ("near", "under", "beside", "behind", "across", "inside", "beyond", "around")
    links = ("because", "although", "while", "so", "and", "but")
    words: List[str] = []
    while len(words) < num_words:
        parts = []
        if rng.random() < 0.35:
            parts.append(rng.choice(openers))
        parts.append(f"the {rng.choice(adjs)} {rng.choice(nouns)} will {rng.choice(verbs)}")
        parts.append(f"{rng.choice(preps)} the {rng.choice(nouns)}")
        if rng.random() < 0.5:
            parts.append(f"{rng.choice(links)} a {rng.choice(adjs)} {rng.choice(nouns)} "
                         f"can {rng.choice(verbs)} {rng.choice(preps)} every {rng.choice(nouns)}")
        sentence = " ".join(parts)
        sentence = sentence[0].upper() + sentence[1:] + rng.choice(".....?!")
        words.extend(sentence.split())
        if rng.random() < 0.12:                       # paragraph breaks, as in real essays
            words[-1] += "\n\n"
    return tuple(w for w in " ".join(words).split())


def load_essays(path: Optional[str] = None, data: str = "auto", log=print) -> Essay:
    """The essay haystack as words. ``data``: ``auto`` (real, else generated), ``real``, ``generated``."""
    if data == "generated":
        return generated_prose()
    path = path or os.environ.get(ESSAY_ENV)
    if path:
        p = Path(path).expanduser()
        if not p.exists():
            raise SourceUnavailable(f"essays path {p} does not exist (from --essays or ${ESSAY_ENV})")
        return Essay(tuple(_load_essay_path(p).split()), f"essays:file:{p.name}")
    ds = _hf_dataset("baber/paul_graham_essays", split="train")
    if ds is not None:
        return Essay(tuple(" ".join(ds["text"]).split()), "essays:hf:baber/paul_graham_essays")
    msg = _unavailable("The Paul Graham essay corpus", "--essays", ESSAY_ENV,
                       "'baber/paul_graham_essays'", data)
    if data == "real":
        raise SourceUnavailable(msg)
    log(f"note: {msg}")
    return generated_prose()


# --------------------------------------------------------------------------- QA

@dataclass(frozen=True)
class QASet:
    """Questions over a shared pool of documents, in RULER's shape.

    ``questions[i] = (question, answers, gold_doc_ids, more_doc_ids)``: for SQuAD the gold
    paragraph and the other paragraphs of its article; for HotpotQA all context paragraphs
    are gold and ``more`` is empty.
    """

    docs: Tuple[str, ...]
    questions: Tuple[Tuple[str, Tuple[str, ...], Tuple[int, ...], Tuple[int, ...]], ...]
    source: str


def _squad_from_articles(articles, source: str) -> QASet:
    """``articles``: iterable of (title, [(context, [(question, [answers], impossible)])])."""
    docs: Dict[str, int] = {}
    raw = []
    for _, paragraphs in articles:
        ids = [docs.setdefault(ctx, len(docs)) for ctx, _ in paragraphs]
        raw.append((paragraphs, ids))
    order = sorted(docs)                     # RULER sorts the unique paragraphs
    remap = {docs[c]: i for i, c in enumerate(order)}
    questions = []
    for paragraphs, ids in raw:
        ids = [remap[i] for i in ids]
        for (ctx, qas), gold in zip(paragraphs, ids):
            for q, answers, impossible in qas:
                if not impossible and answers:
                    questions.append((q, tuple(answers), (gold,), tuple(i for i in ids if i != gold)))
    return QASet(tuple(order), tuple(questions), source)


def _squad_json(path: Path) -> QASet:
    data = json.loads(path.read_text(encoding="utf-8"))["data"]
    arts = [(a.get("title", ""), [(p["context"], [(q["question"], [x["text"] for x in q["answers"]],
                                                   q.get("is_impossible", False)) for q in p["qas"]])
                                  for p in a["paragraphs"]]) for a in data]
    return _squad_from_articles(arts, f"squad:file:{path.name}")


def _squad_hf(ds) -> QASet:
    arts: Dict[str, Dict[str, list]] = {}
    for ex in ds:
        paras = arts.setdefault(ex["title"], {})
        paras.setdefault(ex["context"], []).append(
            (ex["question"], list(ex["answers"]["text"]), not ex["answers"]["text"]))
    return _squad_from_articles([(t, list(p.items())) for t, p in arts.items()], "squad:hf:rajpurkar/squad_v2")


def _hotpot_from_items(items, source: str) -> QASet:
    """``items``: iterable of (question, answer, [(title, sentences)])."""
    items = list(items)
    docs = sorted({f"{t}\n{''.join(s)}" for _, _, ctx in items for t, s in ctx})
    index = {d: i for i, d in enumerate(docs)}
    questions = tuple((q, (a,), tuple(index[f"{t}\n{''.join(s)}"] for t, s in ctx), ())
                      for q, a, ctx in items)
    return QASet(tuple(docs), questions, source)


def load_qa(which: str, path: Optional[str] = None, data: str = "auto", log=print) -> QASet:
    """``which``: ``"squad"`` (qa_1) or ``"hotpotqa"`` (qa_2)."""
    if which not in ("squad", "hotpotqa"):
        raise ValueError(f"QA set must be 'squad' or 'hotpotqa', got {which!r}")
    if data == "generated":
        return generated_qa(which)
    env = SQUAD_ENV if which == "squad" else HOTPOT_ENV
    path = path or os.environ.get(env)
    if path:
        p = Path(path).expanduser()
        if not p.exists():
            raise SourceUnavailable(f"{which} path {p} does not exist (from --{which} or ${env})")
        if which == "squad":
            return _squad_json(p)
        data_ = json.loads(p.read_text(encoding="utf-8"))
        return _hotpot_from_items(((d["question"], d["answer"], d["context"]) for d in data_),
                                  f"hotpotqa:file:{p.name}")
    if which == "squad":
        ds = _hf_dataset("rajpurkar/squad_v2", split="validation")
        if ds is not None:
            return _squad_hf(ds)
        hf = "'rajpurkar/squad_v2'"
    else:
        ds = _hf_dataset("hotpotqa/hotpot_qa", "distractor", split="validation")
        if ds is not None:
            return _hotpot_from_items(
                ((ex["question"], ex["answer"], list(zip(ex["context"]["title"], ex["context"]["sentences"])))
                 for ex in ds), "hotpotqa:hf:hotpotqa/hotpot_qa")
        hf = "'hotpotqa/hotpot_qa', 'distractor'"
    msg = _unavailable("SQuAD v2 dev" if which == "squad" else "HotpotQA dev (distractor)",
                       f"--{which}", env, hf, data)
    if data == "real":
        raise SourceUnavailable(msg)
    log(f"note: {msg}")
    return generated_qa(which)


_FIRST = ("Ada", "Bruno", "Clara", "Dmitri", "Elena", "Farid", "Greta", "Hugo", "Ines", "Jonas", "Keiko",
          "Lars", "Mira", "Nikolai", "Olga", "Pavel", "Quinn", "Rosa", "Stefan", "Tara", "Ugo", "Vera",
          "Walter", "Xenia", "Yusuf", "Zora")
_LAST = ("Abrams", "Bergstrom", "Castellano", "Duval", "Eklund", "Fontaine", "Galloway", "Halvorsen",
         "Ishikawa", "Jaramillo", "Kowalski", "Lindqvist", "Moreau", "Novak", "Okafor", "Petrov",
         "Quintero", "Rasmussen", "Sorensen", "Takahashi", "Urquhart", "Valdez", "Whitlock", "Yamamoto")
_TRADES = ("copper mining", "glass blowing", "river shipping", "wool weaving", "clock making",
           "salt harvesting", "paper milling", "bell casting", "olive pressing", "rope making")
_PRODUCTS = ("lanterns", "bicycles", "telescopes", "violins", "ceramic tiles", "sailcloth", "typewriters",
             "barometers", "pocket watches", "garden tools")


@functools.lru_cache(maxsize=2)
def generated_qa(which: str, num_entities: int = 1500, seed: int = 0) -> QASet:
    """Invented towns, companies and people; answers are spans of their passages.

    * ``squad``: one article per town (3 paragraphs); each question's answer is in exactly one
      paragraph; the other paragraphs of the article are ``more`` context, as in SQuAD.
    * ``hotpotqa``: a company passage names its founder, the founder's passage names a birthplace;
      the question asks for the founder's birthplace (two hops). Both are gold.
    """
    rng = random.Random(f"qa:{which}:{seed}")
    syl = vocab.pseudo_words(3 * num_entities + 64)
    towns = [w.capitalize() + rng.choice(("ton", "wick", "ford", "dale", "mouth", "burg")) for w in syl[:num_entities]]
    firms = [w.capitalize() + " " + rng.choice(("Works", "Company", "Brothers", "Foundry", "Guild"))
             for w in syl[num_entities:2 * num_entities]]
    people = [f"{rng.choice(_FIRST)} {w.capitalize()}{rng.choice(_LAST)[:3].lower()}" for w in syl[2 * num_entities:3 * num_entities]]
    docs: List[str] = []
    questions = []
    if which == "squad":
        for t, town in enumerate(towns):
            mayor, founder = people[t], people[(t * 7 + 3) % num_entities]
            year, pop = rng.randint(1200, 1890), rng.randint(2, 900) * 100
            trade, river = rng.choice(_TRADES), syl[(t * 13 + 5) % len(syl)].capitalize()
            paras = [
                f"{town} is a town on the {river} river. It was founded in {year} by {founder}, "
                f"who built the first mill on its eastern bank. The old quarter still follows the "
                f"street plan of that time.",
                f"The economy of {town} grew around {trade}. By the last census the town had "
                f"{pop} inhabitants, most of them employed in workshops along the river.",
                f"The current mayor of {town} is {mayor}. The town council meets in the former "
                f"grain exchange, a building restored after a fire in {year + rng.randint(50, 120)}.",
            ]
            ids = list(range(len(docs), len(docs) + 3))
            docs.extend(paras)
            qs = [(f"In which year was {town} founded?", str(year), 0),
                  (f"Who founded {town}?", founder, 0),
                  (f"Around which trade did the economy of {town} grow?", trade, 1),
                  (f"Who is the current mayor of {town}?", mayor, 2)]
            q, a, k = qs[rng.randrange(len(qs))]
            questions.append((q, (a,), (ids[k],), tuple(i for i in ids if i != ids[k])))
        return QASet(tuple(docs), tuple(questions), QA_SOURCE + ":squad")
    for t, firm in enumerate(firms):
        founder, town = people[t], towns[(t * 11 + 7) % num_entities]
        product, year = rng.choice(_PRODUCTS), rng.randint(1820, 1990)
        a = (f"{firm}\n{firm} is a manufacturer of {product}. The firm was established in {year} "
             f"by {founder} and is still owned by the founding family.")
        b = (f"{founder}\n{founder} was an engineer and industrialist born in {town}. "
             f"After an apprenticeship abroad, {founder.split()[0]} returned home to start a business.")
        ids = (len(docs), len(docs) + 1)
        docs.extend((a, b))
        questions.append((f"In which town was the founder of {firm} born?", (town,), ids, ()))
    return QASet(tuple(docs), tuple(questions), QA_SOURCE + ":hotpotqa")


_SENT_END = re.compile(r"(?<=[.!?])\s+(?=[A-Z\"'(\[])")


def split_sentences(text: str) -> List[str]:
    """A simple sentence splitter (punctuation followed by space and a capital).

    RULER uses nltk ``sent_tokenize`` (punkt), whose data must be downloaded; this splitter
    needs nothing and only decides *where* needles may go (at sentence boundaries).
    """
    return [s for s in _SENT_END.split(text) if s]
