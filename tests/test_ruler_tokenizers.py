"""The RULER generator on emulations of real tokenizer families, built offline in the test.

* ``llama3``: byte-level BPE behind Llama-3's pre-tokenizer regex, with its special tokens
  (``<|begin_of_text|>`` added as BOS by default, the header and ``<|eot_id|>`` tokens);
* ``sentencepiece-metaspace``: BPE behind a Metaspace pre-tokenizer ("▁" replaces every space
  and is prepended to the first word), BOS ``<s>``, byte fallback: the current conversion of
  SentencePiece models (Llama-2, Mistral);
* ``sentencepiece-legacy``: the same model behind the older conversion, a normalizer that
  prepends "▁" to *every* input (so a piece measured alone gains a marker: the case the
  counter's anchor word is for).

All are trained on the toy tokenizer's corpus (a 2,000-token vocabulary: a fraction of a second).
SentencePiece never merges across a word boundary, so they are trained with the input split at
each "▁".
"""
import pytest

from tasks.ruler import tasks as T
from tasks.ruler.generate import Generator, GenConfig, count_tokens, encode_prompt, prompt_of

tokenizers = pytest.importorskip("tokenizers")
from tokenizers import (Regex, Tokenizer, decoders, models, normalizers, pre_tokenizers,  # noqa: E402
                        processors, trainers)

LLAMA3_BOS = "<|begin_of_text|>"
LLAMA3_SPECIAL = [LLAMA3_BOS, "<|end_of_text|>", "<|start_header_id|>", "<|end_header_id|>", "<|eot_id|>"]
# Llama-3's pre-tokenizer split (tokenizer.json of Meta-Llama-3): contractions, letters with at
# most one leading non-letter, 1-3 digits, punctuation runs, newlines, other whitespace
LLAMA3_SPLIT = (r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n]*"
                r"|\s*[\r\n]+|\s+(?!\S)|\s+")


def _train(tok: Tokenizer, special, **kw) -> None:
    from tasks.ruler.toy_tokenizer import _corpus
    tok.train_from_iterator(_corpus(20_000), trainers.BpeTrainer(vocab_size=2000, special_tokens=special,
                                                                 show_progress=False, **kw))


def _fast(tok: Tokenizer, bos: str, **kw):
    from transformers import PreTrainedTokenizerFast
    tok.post_processor = processors.TemplateProcessing(single=f"{bos} $A", special_tokens=[(bos, tok.token_to_id(bos))])
    return PreTrainedTokenizerFast(tokenizer_object=tok, bos_token=bos, **kw)


def llama3_like():
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.Sequence([pre_tokenizers.Split(Regex(LLAMA3_SPLIT), behavior="isolated"),
                                                 pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False)])
    tok.decoder = decoders.ByteLevel()
    _train(tok, LLAMA3_SPECIAL, initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    return _fast(tok, LLAMA3_BOS, eos_token="<|eot_id|>")


def sentencepiece_like(legacy: bool = False):
    tok = Tokenizer(models.BPE(byte_fallback=True, unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.Metaspace(replacement="▁", prepend_scheme="first", split=True)
    tok.decoder = decoders.Metaspace(replacement="▁", prepend_scheme="first", split=True)
    _train(tok, ["<unk>", "<s>", "</s>"])
    if legacy:
        tok.normalizer = normalizers.Sequence([normalizers.Prepend("▁"), normalizers.Replace(" ", "▁")])
        tok.pre_tokenizer = pre_tokenizers.Metaspace(replacement="▁", prepend_scheme="never", split=True)
    return _fast(tok, "<s>", eos_token="</s>", unk_token="<unk>")


FAMILIES = {
    "llama3": (llama3_like, "meta-llama3"),
    "sentencepiece-metaspace": (sentencepiece_like, "base"),
    "sentencepiece-legacy": (lambda: sentencepiece_like(legacy=True), "base"),
}


@pytest.fixture(scope="module", params=sorted(FAMILIES), ids=sorted(FAMILIES))
def family(request):
    """``(tokenizer, the template RULER uses with it)``."""
    build, template = FAMILIES[request.param]
    return build(), template


def test_meta_llama3_template_gives_exactly_one_bos(tmp_path):
    """RULER's literal ``meta-llama3`` template starts with ``<|begin_of_text|>``; the tokenizer
    adds one by default too. The prompt the model gets must hold it once (the TSA paper's
    scripts fed it twice, PAPER.md §2.2), at position 0, and the recorded length must count it."""
    from tsa_bench.commands.ruler import resolve_template

    tok = llama3_like()
    bos = tok.convert_tokens_to_ids(LLAMA3_BOS)
    assert resolve_template("auto", tok) == "meta-llama3"
    gen = Generator(tok, GenConfig(template="meta-llama3", data="generated", words="builtin"), cache_dir=tmp_path,
                    log=lambda m: None)
    for s in gen.samples("niah_single_1", 1024, 2):
        prompt = prompt_of(s)
        assert prompt.startswith(LLAMA3_BOS + "<|start_header_id|>user<|end_header_id|>\n\n")
        assert tok(prompt)["input_ids"][:2] == [bos, bos]            # the doubled BOS a plain call gives
        ids = encode_prompt(tok, prompt)
        assert ids[0] == bos and ids.count(bos) == 1
        assert len(ids) == s["length"] and s["length"] + s["tokens_to_generate"] <= 1024


def test_piece_counts_equal_full_counts_for_every_task_at_8k(family, tmp_path):
    """Piece-wise counting is exact for these families: no task falls back to full
    tokenisation, and every recorded length is the full count of the prompt."""
    tok, template = family
    notes = []
    gen = Generator(tok, GenConfig(template=template, data="generated", words="builtin"), cache_dir=tmp_path,
                    log=notes.append)
    for task in T.TASKS:
        (s,) = gen.samples(task, 8192, 1)
        assert count_tokens(tok, prompt_of(s)) == s["length"], task
        assert s["length"] + s["tokens_to_generate"] <= 8192, task
    assert not [n for n in notes if "differ from full tokenisation" in n]
