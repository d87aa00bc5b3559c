"""scripts/check_banded_sliding.py on a tiny random Gemma-3 saved to disk: the banded sliding
path passes against the mask path in fp32, passes against an fp32 reference in bf16
(``--reference fp32``), and fails (exit 1) when the banded path is made wrong."""
import importlib.util
from pathlib import Path

import pytest
import torch

transformers = pytest.importorskip("transformers")
from transformers import Gemma3ForCausalLM, Gemma3TextConfig  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
S, F = "sliding_attention", "full_attention"
L = 1100                        # longer than one 1024-query chunk, off every tile


def _script():
    spec = importlib.util.spec_from_file_location("check_banded_sliding", ROOT / "scripts" / "check_banded_sliding.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory):
    cfg = Gemma3TextConfig(vocab_size=128, hidden_size=64, intermediate_size=128, num_hidden_layers=4,
                           num_attention_heads=4, num_key_value_heads=2, head_dim=16, query_pre_attn_scalar=24,
                           sliding_window=40, layer_types=[S, F, S, F], max_position_embeddings=2048,
                           pad_token_id=0, bos_token_id=1, eos_token_id=2)
    torch.manual_seed(0)
    d = tmp_path_factory.mktemp("tiny-gemma")
    Gemma3ForCausalLM(cfg).save_pretrained(d)
    return d


def _run(model_dir, out, *extra):
    return _script().main(["--model", str(model_dir), "--seq-len", str(L), "--sparse-layers", "3",
                           "--keep-logits", "300", "--out-dir", str(out), *extra])


def _rows(out):
    import pandas as pd
    return pd.concat([pd.read_csv(p) for p in sorted(Path(out).glob("*.csv"))])


def test_fp32_banded_equals_mask(model_dir, tmp_path):
    assert _run(model_dir, tmp_path) == 0
    rows = _rows(tmp_path)
    agree = rows[rows.metric == "argmax_agreement"].set_index("method").value
    assert agree.to_dict() == {"dense": 1.0, "tsa": 1.0}
    assert (rows[rows.metric == "max_abs_logit_diff"].value < 1e-3).all()


def test_bf16_against_fp32_reference(model_dir, tmp_path):
    assert _run(model_dir, tmp_path, "--dtype", "bf16", "--reference", "fp32") == 0
    rows = _rows(tmp_path)
    for path in ("mask", "banded"):
        got = rows[rows.metric == f"argmax_agreement_vs_fp32_{path}"]
        assert sorted(got.method) == ["dense", "tsa"] and (got.value > 0.5).all()


def test_reference_needs_a_lower_precision(model_dir, tmp_path):
    assert _run(model_dir, tmp_path, "--reference", "fp32") == 2


@pytest.mark.parametrize("extra", [(), ("--dtype", "bf16", "--reference", "fp32")])
def test_a_wrong_banded_path_fails(model_dir, tmp_path, monkeypatch, extra):
    import tsa_bench.hf.attention as attention

    real = attention.banded_sliding_attention

    def wrong(*args, **kwargs):
        out, weights = real(*args, **kwargs)
        return out * 3.0, weights                 # every sliding layer's output off by a factor

    monkeypatch.setattr(attention, "banded_sliding_attention", wrong)
    assert _run(model_dir, tmp_path, *extra) == 1
