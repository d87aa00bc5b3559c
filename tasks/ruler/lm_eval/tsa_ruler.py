"""lm-eval hooks for the ``tsa_ruler_*`` tasks: our generator as the dataset, RULER's scoring.

``niah_single_1`` builds docs with :class:`tasks.ruler.generate.Generator` (base template, so
lm-eval applies its own chat template if asked) for the tokenizer named in the model args and
each length in ``max_seq_lengths``; the answer prefix becomes lm-eval's ``gen_prefix``.
"""
from __future__ import annotations

from typing import Dict, List


def _tokenizer(kwargs):
    from transformers import AutoTokenizer

    name = kwargs.get("tokenizer") or kwargs.get("pretrained")
    if name == "toy":
        from tasks.ruler.toy_tokenizer import build_tokenizer
        return build_tokenizer()
    if not isinstance(name, str) or not name:
        raise ValueError("tsa_ruler tasks need a tokenizer: give tokenizer= or pretrained= in --model_args")
    return AutoTokenizer.from_pretrained(name)


def _docs(task: str, **kwargs) -> Dict[str, object]:
    import datasets
    from tasks.ruler.generate import GenConfig, Generator

    lengths = [int(x) for x in kwargs.get("max_seq_lengths", [4096])]
    n = int(kwargs.get("num_samples", 32))
    gen = Generator(_tokenizer(kwargs), GenConfig(template="base", data=kwargs.get("data", "auto"),
                                                   words=kwargs.get("words", "auto")))
    rows: List[dict] = []
    for L in lengths:
        for s in gen.samples(task, L, n):
            rows.append({"id": s["id"], "input": s["input"], "outputs": s["outputs"],
                         "gen_prefix": s["answer_prefix"].strip(), "max_length": L, "metric": s["metric"]})
    return {"test": datasets.Dataset.from_list(rows)}


def niah_single_1(**kwargs):
    return _docs("niah_single_1", **kwargs)


def process_results(doc, results):
    from tasks.ruler.scoring import score_sample

    return {"string_match_all": score_sample(doc["metric"], results[0], doc["outputs"])}
