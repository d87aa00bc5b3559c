"""A small byte-level BPE tokenizer built offline from the project's own generated text.

Used by the tests and the GPU smoke run, where no tokenizer can be downloaded. It behaves like
the real ones where it matters here: it adds a BOS token by default, knows special tokens
written literally in text, handles any string (bytes fallback), and has a chat template.
"""
from __future__ import annotations

import functools

BOS, EOS, PAD = "<s>", "</s>", "<pad>"
CHAT_TOKENS = ("<|user|>", "<|assistant|>", "<|end|>")
CHAT_TEMPLATE = ("{{ bos_token }}{% for m in messages %}<|{{ m['role'] }}|>\n{{ m['content'] }}<|end|>\n"
                 "{% endfor %}{% if add_generation_prompt %}<|assistant|>\n{% endif %}")


def _corpus(num_words: int):
    from tasks.ruler import tasks as T, vocab
    from tasks.ruler.sources import _prose_words, generated_qa

    words = _prose_words(num_words, 0)
    step = 2000
    for i in range(0, len(words), step):
        yield " ".join(words[i:i + step])
    yield T.NOISE_LINE + " " + T.NIAH_TEMPLATE + T.VT_TEMPLATE + T.CWE_TEMPLATE + T.FWE_TEMPLATE + T.QA_TEMPLATE
    yield " ".join(f"{i}. {w}" for i, w in enumerate(vocab.cwe_words("builtin", 3000)))
    qa = generated_qa("squad")
    yield "\n".join(qa.docs[:300])
    yield " ".join(str(1000000 + 7919 * i) for i in range(500))


@functools.lru_cache(maxsize=4)
def build_tokenizer(vocab_size: int = 4000, corpus_words: int = 40_000):
    """A ``transformers.PreTrainedTokenizerFast`` (byte-level BPE, BOS added by default)."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=vocab_size, special_tokens=[BOS, EOS, PAD, *CHAT_TOKENS],
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), show_progress=False)
    tok.train_from_iterator(_corpus(corpus_words), trainer=trainer)
    tok.post_processor = processors.TemplateProcessing(single=f"{BOS} $A", pair=f"{BOS} $A $B",
                                                       special_tokens=[(BOS, tok.token_to_id(BOS))])
    fast = PreTrainedTokenizerFast(tokenizer_object=tok, bos_token=BOS, eos_token=EOS, pad_token=PAD,
                                   additional_special_tokens=list(CHAT_TOKENS))
    fast.chat_template = CHAT_TEMPLATE
    fast.name_or_path = f"tsa-toy-bpe-{vocab_size}"
    return fast
