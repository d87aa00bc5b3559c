"""RULER scoring: post-processing, ``string_match_all`` and ``string_match_part``.

Post-processing (RULER ``evaluate.py``): ``strip()`` the prediction, then replace every control
character ``[\\x00-\\x1f]`` by a newline. Matching is a case-insensitive substring test.

* ``string_match_all`` (niah, vt, cwe, fwe): per sample, the fraction of references found.
* ``string_match_part`` (qa): per sample, 1 if *any* reference is found, else 0. This is
  RULER's definition; lm-eval's function of the same name returns the fraction instead
  (PEERS.md §6.4), which is lower whenever a question has several gold answers.

Task scores are the mean over samples x 100, rounded to 2 decimals, as RULER reports them.
"""
from __future__ import annotations

import re
from typing import Iterable, Sequence

_CONTROL = re.compile(r"[\x00-\x1f]")
METRICS = ("string_match_all", "string_match_part", "rouge1_f")


def postprocess(prediction: str) -> str:
    return _CONTROL.sub("\n", prediction.strip())


def match_all(prediction: str, references: Sequence[str]) -> float:
    """Fraction of ``references`` found in the post-processed prediction (one sample)."""
    if not references:
        raise ValueError("references must not be empty")
    p = postprocess(prediction).lower()
    return sum(r.lower() in p for r in references) / len(references)


def match_part(prediction: str, references: Sequence[str]) -> float:
    """1.0 if any reference is found in the post-processed prediction, else 0.0 (one sample)."""
    if not references:
        raise ValueError("references must not be empty")
    p = postprocess(prediction).lower()
    return float(any(r.lower() in p for r in references))


def score_sample(metric: str, prediction: str, references: Sequence[str]) -> float:
    if metric == "string_match_all":
        return match_all(prediction, references)
    if metric == "string_match_part":
        return match_part(prediction, references)
    if metric == "rouge1_f":
        return max(rouge1_f(postprocess(prediction), r) for r in references)
    raise ValueError(f"metric must be one of {', '.join(METRICS)}, got {metric!r}")


def string_match_all(predictions: Sequence[str], references: Sequence[Sequence[str]]) -> float:
    """RULER's corpus-level string_match_all: mean per-sample fraction x 100, 2 decimals."""
    return _corpus(match_all, predictions, references)


def string_match_part(predictions: Sequence[str], references: Sequence[Sequence[str]]) -> float:
    """RULER's corpus-level string_match_part: share of samples with any match x 100, 2 decimals."""
    return _corpus(match_part, predictions, references)


def _corpus(fn, predictions, references) -> float:
    if len(predictions) != len(references):
        raise ValueError(f"{len(predictions)} predictions but {len(references)} reference lists")
    if not predictions:
        raise ValueError("no predictions to score")
    return round(100.0 * sum(fn(p, r) for p, r in zip(predictions, references)) / len(predictions), 2)


def mean(values: Iterable[float]) -> float:
    v = list(values)
    return sum(v) / len(v) if v else float("nan")


_WORD = re.compile(r"\w+")


def rouge1_f(prediction: str, reference: str) -> float:
    """ROUGE-1 F1 on lower-cased word unigrams (the paper's needle score is this x 10)."""
    from collections import Counter

    p, r = Counter(_WORD.findall(prediction.lower())), Counter(_WORD.findall(reference.lower()))
    overlap = sum((p & r).values())
    if not overlap:
        return 0.0
    prec, rec = overlap / sum(p.values()), overlap / sum(r.values())
    return 2 * prec * rec / (prec + rec)
