"""Cross-check of our RULER generator with lm-eval's port, run on the same tokenizer, offline.

lm-eval's ``prepare_niah.generate_samples`` builds the samples here (no network: the noise and
needle haystacks need no dataset, and its nltk ``punkt`` download is skipped because only the
essay haystack splits sentences). Importing the port builds its 6M-entry key list: about 10 s,
paid once for the module. Only the three niah tasks whose haystack needs no essay corpus are
comparable offline: niah_single_1 (noise), niah_multikey_2 and niah_multikey_3 (needles).
"""
import random
import re

import pytest

from tasks.ruler import tasks as T
from tasks.ruler.generate import Generator, GenConfig, encode_prompt
from tasks.ruler.toy_tokenizer import build_tokenizer

pytest.importorskip("lm_eval")
pytest.importorskip("nltk")
pytest.importorskip("wonderwords")

LENGTH = 2048
N = 3
# our task -> lm-eval's generate_samples arguments (its niah_utils.py)
PORT_ARGS = {
    "niah_single_1": dict(type_haystack="repeat", type_needle_k="words", type_needle_v="numbers"),
    "niah_multikey_2": dict(type_haystack="needle", type_needle_k="words", type_needle_v="numbers"),
    "niah_multikey_3": dict(type_haystack="needle", type_needle_k="uuids", type_needle_v="uuids"),
}
_UUID = r"[0-9a-f]{8}-[0-9a-f]{4}-4[0-9a-f]{3}-[89ab][0-9a-f]{3}-[0-9a-f]{12}"
_FORMAT = {"numbers": r"\d{7}", "uuids": _UUID, "words": r"\S+(?: \S+)*-\S+(?: \S+)*"}
_NEEDLE = re.compile(r"One of the special magic (numbers|uuids) for (.+) is: (\S+)\.")
_QUESTION = re.compile(r"What is the special magic (number|uuid) for (.+) mentioned in the provided text\?")


@pytest.fixture(scope="module")
def port():
    """lm-eval's ``prepare_niah`` module and its niah template."""
    import nltk
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(nltk.data, "find", lambda *a, **k: "stub")     # skip its punkt download at import
        prep = pytest.importorskip("lm_eval.tasks.ruler.prepare_niah")
    from lm_eval.tasks.ruler.niah_utils import TEMPLATE
    return prep, TEMPLATE


@pytest.fixture(scope="module")
def tok():
    return build_tokenizer()


def _theirs(port, tok, task):
    """lm-eval's samples, under RULER's ``random.seed(42)`` (their generator draws from the
    global RNG), with the global RNG state restored afterwards."""
    prep, template = port
    state = random.getstate()
    random.seed(42)
    try:
        return prep.generate_samples(prep.get_haystack(type_haystack=PORT_ARGS[task]["type_haystack"]),
                                     max_seq_length=LENGTH, template=template, num_samples=N, TOKENIZER=tok,
                                     **PORT_ARGS[task])
    finally:
        random.setstate(state)


def _skeleton(text, outputs, answer_prefix, args):
    """Parse one sample; return what must agree between the two generators, after checking
    what must hold in each: every context line is the noise line or a needle, keys and values
    have the task's formats, the queried key has exactly one needle and its value is the answer."""
    head, *body, question = text.split("\n")
    q = _QUESTION.fullmatch(question)
    assert q, question
    key = q.group(2)
    needles = [_NEEDLE.fullmatch(line) for line in body]
    noise = [line for line, m in zip(body, needles) if m is None]
    needles = [m.groups() for m in needles if m is not None]
    assert set(noise) <= {T.NOISE_LINE}
    for kind, k, v in needles:
        assert kind == args["type_needle_v"]
        assert re.fullmatch(_FORMAT[args["type_needle_k"]], k) and re.fullmatch(_FORMAT[args["type_needle_v"]], v)
    assert [v for _, k, v in needles if k == key] == list(outputs)
    if not noise:
        haystack = "needle lines only"
    elif len(needles) == 1:
        haystack = "noise lines and one needle"
    else:
        haystack = f"{len(noise)} noise lines and {len(needles)} needles"
    return {
        "head": head,
        "question": question.replace(f" for {key} ", " for KEY "),
        "answer_prefix": answer_prefix.strip().replace(f" for {key} ", " for KEY "),
        "haystack": haystack,
    }


@pytest.mark.parametrize("task", sorted(PORT_ARGS), ids=sorted(PORT_ARGS))
def test_niah_samples_match_lm_eval_port(task, port, tok, tmp_path):
    theirs = _theirs(port, tok, task)
    gen = Generator(tok, GenConfig(data="generated", words="builtin"), cache_dir=tmp_path, log=lambda m: None)
    ours = gen.samples(task, LENGTH, N)
    assert len(theirs) == len(ours) == N
    args = PORT_ARGS[task]
    for a, b in zip(ours, theirs):
        sa = _skeleton(a["input"], a["outputs"], a["answer_prefix"], args)
        sb = _skeleton(b["input"], b["outputs"], b["gen_prefix"], args)
        assert sa == sb
        # both count the ids the model gets, BOS included: their length is our encode_prompt
        # count of their input plus the generation budget
        assert b["length"] == len(encode_prompt(tok, b["input"])) + a["tokens_to_generate"]
        # both fit; theirs (5-line linear steps, prompt without the answer prefix) land at or
        # below ours (prompt with the answer prefix), and within one step of the budget
        assert b["length"] <= a["length"] + a["tokens_to_generate"] <= LENGTH
        assert b["length"] >= 0.8 * LENGTH
