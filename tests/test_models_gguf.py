"""GGUF checkpoints: a tiny Llama GGUF written here with the ``gguf`` package goes through the
real loading path (model and tokenizer); damaged files and bad model ids are one-line errors."""
import re
import shutil

import pytest
import torch

transformers = pytest.importorskip("transformers")
gguf = pytest.importorskip("gguf")
np = pytest.importorskip("numpy")

from tsa_core import TSAConfig  # noqa: E402
from tsa_bench.cli import main  # noqa: E402
from tsa_bench.hf import last_stats, load_model  # noqa: E402
from tsa_bench.hf.checkpoints import read_gguf_header, resolve_source  # noqa: E402

HIDDEN, HEADS, KV_HEADS, HEAD_DIM, LAYERS, FFN, CONTEXT = 32, 4, 2, 8, 2, 64, 512
SMALL = TSAConfig(tau=0.005, window=16, min_keep=16, pool_kernel=3, keep_ratio=0.5)
BOS, EOS = "<|bos|>", "<|eos|>"


def _byte_alphabet():
    from transformers.convert_slow_tokenizer import bytes_to_unicode
    return [bytes_to_unicode()[b] for b in range(256)]


def write_tiny_llama_gguf(path, seed=0):
    """A 2-layer Llama GGUF with F32 tensors and a byte-level BPE tokenizer (256 byte symbols,
    three merges, BOS/EOS as control tokens). Returns the numpy tensors written, by GGUF name."""
    rng = np.random.default_rng(seed)
    tokens = _byte_alphabet() + ["\u0120t", "he", "the", BOS, EOS]
    merges = ["\u0120 t", "h e", "t he"]
    vocab = len(tokens)
    w = gguf.GGUFWriter(str(path), "llama")
    w.add_name("tiny-test-llama")
    w.add_context_length(CONTEXT)
    w.add_embedding_length(HIDDEN)
    w.add_block_count(LAYERS)
    w.add_feed_forward_length(FFN)
    w.add_head_count(HEADS)
    w.add_head_count_kv(KV_HEADS)
    w.add_rope_dimension_count(HEAD_DIM)
    w.add_rope_freq_base(10000.0)
    w.add_layer_norm_rms_eps(1e-5)
    w.add_vocab_size(vocab)
    w.add_tokenizer_model("gpt2")
    w.add_token_list(tokens)
    w.add_token_types([1] * (vocab - 2) + [3, 3])
    w.add_token_merges(merges)
    w.add_bos_token_id(vocab - 2)
    w.add_eos_token_id(vocab - 1)
    shapes = {"token_embd.weight": (vocab, HIDDEN), "output_norm.weight": (HIDDEN,), "output.weight": (vocab, HIDDEN)}
    for i in range(LAYERS):
        shapes.update({f"blk.{i}.attn_norm.weight": (HIDDEN,), f"blk.{i}.ffn_norm.weight": (HIDDEN,),
                       f"blk.{i}.attn_q.weight": (HEADS * HEAD_DIM, HIDDEN),
                       f"blk.{i}.attn_k.weight": (KV_HEADS * HEAD_DIM, HIDDEN),
                       f"blk.{i}.attn_v.weight": (KV_HEADS * HEAD_DIM, HIDDEN),
                       f"blk.{i}.attn_output.weight": (HIDDEN, HEADS * HEAD_DIM),
                       f"blk.{i}.ffn_gate.weight": (FFN, HIDDEN), f"blk.{i}.ffn_up.weight": (FFN, HIDDEN),
                       f"blk.{i}.ffn_down.weight": (HIDDEN, FFN)})
    tensors = {}
    for name, shape in shapes.items():
        t = (1.0 + 0.1 * rng.standard_normal(shape) if name.endswith("norm.weight")
             else 0.2 * rng.standard_normal(shape)).astype(np.float32)
        tensors[name] = t
        w.add_tensor(name, t)
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    return tensors


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    d = tmp_path_factory.mktemp("gguf") / "tiny"
    d.mkdir()
    path = d / "tiny-llama.gguf"
    return path, write_tiny_llama_gguf(path)


@pytest.fixture(scope="module")
def loaded(tiny):
    path, _ = tiny
    return load_model(str(path), method="tsa", tsa_config=SMALL, sparse_layers=[1], dtype=torch.float32,
                      impl="naive", tokenizer=True)


def test_header_check_of_a_whole_file(tiny):
    path, tensors = tiny
    h = read_gguf_header(path)
    assert (h.architecture, h.context_length, h.num_tensors) == ("llama", CONTEXT, len(tensors))
    assert h.expected_size <= h.file_size < h.expected_size + h.alignment


def test_tiny_gguf_loads_with_its_weights_and_tokenizer(tiny, loaded):
    """The loader hands the file to transformers, which dequantises it: the tensors transformers
    does not permute (embeddings, MLP, norms, V and O projections) come back as written."""
    _, tensors = tiny
    model, tok = loaded
    assert type(model).__name__ == "LlamaForCausalLM"
    cfg = model.config
    assert (cfg.num_hidden_layers, cfg.hidden_size, cfg.num_attention_heads, cfg.num_key_value_heads) == \
        (LAYERS, HIDDEN, HEADS, KV_HEADS)
    assert cfg.max_position_embeddings == CONTEXT
    m = model.model
    for mine, theirs in [("token_embd.weight", m.embed_tokens.weight), ("output.weight", model.lm_head.weight),
                         ("blk.1.ffn_down.weight", m.layers[1].mlp.down_proj.weight),
                         ("blk.0.attn_v.weight", m.layers[0].self_attn.v_proj.weight),
                         ("blk.1.attn_output.weight", m.layers[1].self_attn.o_proj.weight),
                         ("blk.0.attn_norm.weight", m.layers[0].input_layernorm.weight)]:
        assert torch.equal(theirs.detach(), torch.from_numpy(tensors[mine])), mine
    ids = tok("the cat")["input_ids"]
    assert tok.convert_ids_to_tokens(ids)[:1] == ["the"]            # the merges were read
    assert tok.decode(ids, skip_special_tokens=True) == "the cat"
    assert tok.bos_token == BOS and tok.eos_token == EOS


def test_special_tokens_follow_the_gguf_file(tiny, loaded):
    """transformers 5.17 reads a byte-level GGUF tokenizer with EOS = BOS; the loader resets the
    special tokens to the ids the file names (lm-eval stops generating on the tokenizer's EOS)."""
    import copy

    from tsa_bench.hf.checkpoints import _match_special_tokens

    tok = copy.deepcopy(loaded[1])
    tok.eos_token = BOS                              # what transformers 5.17 builds
    assert tok.eos_token_id == tok.bos_token_id
    header = read_gguf_header(tiny[0])
    assert dict(header.special_ids) == {"bos": 259, "eos": 260}     # 256 bytes + 3 merged tokens, then BOS, EOS
    _match_special_tokens(tok, header)
    assert (tok.bos_token, tok.eos_token) == (BOS, EOS)


@torch.no_grad()
def test_tiny_gguf_runs_tsa(loaded):
    model, _ = loaded
    ids = torch.randint(0, 256, (1, 128), generator=torch.Generator().manual_seed(5))
    logits = model(ids).logits
    assert torch.isfinite(logits).all()
    stats = last_stats(model)
    assert not stats[1].dense and stats[1].kept[0] < 128 and stats[0].dense


def test_a_directory_holding_one_gguf_is_that_file(tiny):
    path, _ = tiny
    src = resolve_source(str(path.parent))
    assert src.kind == "gguf" and src.gguf_path == path


def test_a_directory_with_two_ggufs_asks_which(tiny, tmp_path):
    path, _ = tiny
    for name in ("a.gguf", "b.gguf"):
        shutil.copy(path, tmp_path / name)
    with pytest.raises(ValueError, match=r"holds 2 \.gguf files \(a\.gguf, b\.gguf\)"):
        resolve_source(str(tmp_path))


@pytest.mark.parametrize("keep", [0.5, 0.02], ids=["in-the-tensors", "in-the-header"])
def test_truncated_gguf_is_refused_before_transformers(tiny, tmp_path, keep):
    path, _ = tiny
    cut = tmp_path / "cut.gguf"
    data = path.read_bytes()
    cut.write_bytes(data[:int(len(data) * keep)])
    with pytest.raises(ValueError, match=r"cut\.gguf is truncated"):
        load_model(str(cut), dtype=torch.float32)


def test_trailing_bytes_and_wrong_magic_are_refused(tiny, tmp_path):
    path, _ = tiny
    data = path.read_bytes()
    longer = tmp_path / "longer.gguf"
    longer.write_bytes(data + b"\0" * 4096)
    with pytest.raises(ValueError, match="bytes after the last tensor"):
        read_gguf_header(longer)
    wrong = tmp_path / "wrong.gguf"
    wrong.write_bytes(b"GGML" + data[4:])
    with pytest.raises(ValueError, match="is not a GGUF file: it starts with b'GGML'"):
        load_model(str(wrong))


def test_missing_gguf_package_names_the_pip_command(tiny, monkeypatch):
    import importlib.util

    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "gguf" else real(name, *a))
    with pytest.raises(ValueError, match=r"needs the gguf package: pip install 'gguf>=0\.10'"):
        load_model(str(tiny[0]))


@pytest.mark.parametrize("model, message", [
    ("no-such-org/no-such-model", "is not a preset .* or a Hugging Face id in the local cache"),
    ("./no/such/dir", "no such file or directory"),
    ("/tmp/no-such-file.gguf", "no such file or directory"),
], ids=["uncached-hf-id", "missing-dir", "missing-gguf"])
def test_unreachable_model_is_a_one_line_cli_error(model, message, capsys):
    rc = main(["prefill", "--model", model, "--seq-lens", "1k", "--device", "cpu", "--dry-run"])
    err = capsys.readouterr().err
    assert rc == 2
    assert err.count("\n") == 1 and "Traceback" not in err
    assert re.search(message, err)


def test_truncated_gguf_is_a_one_line_cli_error(tiny, tmp_path, capsys):
    cut = tmp_path / "cut.gguf"
    cut.write_bytes(tiny[0].read_bytes()[:10_000])
    rc = main(["profile-layers", "--model", str(cut), "--seq-len", "256", "--device", "cpu", "--dry-run"])
    err = capsys.readouterr().err
    assert rc == 2 and err.count("\n") == 1 and "is truncated" in err
