"""RULER resume safety: the predictions file is named after every setting that changes a
prediction, and a stored prediction is only reused for the very prompt it answered."""
import copy
import dataclasses
import hashlib
import json

import pytest

from tasks.ruler import generate as G
from tasks.ruler import tasks as T
from tasks.ruler.generate import Generator, GenConfig, prompt_of
from tasks.ruler.toy_tokenizer import build_tokenizer
from tsa_bench.cli import UsageError, build_parser
from tsa_bench.commands.ruler import PredictionLog, evaluate_samples, open_predictions, resolve_tau, run_identity

GEN = GenConfig(data="generated", words="builtin")


@pytest.fixture(scope="module")
def tok():
    return build_tokenizer()


@pytest.fixture(scope="module")
def gen(tok, tmp_path_factory):
    return Generator(tok, GEN, cache_dir=tmp_path_factory.mktemp("r"), log=lambda m: None)


@pytest.fixture(scope="module")
def model():
    pytest.importorskip("tsa_bench.hf")
    import torch

    from tsa_bench.hf import load_model
    return load_model("tiny-llama", method="tsa", weights="random", dtype=torch.float32, device="cpu")[0]


# --------------------------------------------------------------------------- the run key

TSA = dict(tau=0.005, window=128, pool_kernel=7, min_keep=1024, keep_ratio=None)


def _predictions_path(tmp_path, model, gen, argv=(), tsa=None, impl="auto", engine="hf-generate",
                      template="base", model_arg="tiny-llama"):
    """The predictions file ``tsa-bench ruler`` would open for these settings, with ``model``
    configured the way ``load_model`` configures it from them."""
    from tsa_core import TSAConfig
    from tsa_bench.hf import configure_tsa

    args = build_parser().parse_args(["ruler", "--model", str(model_arg), "--weights", "random", "--device", "cpu",
                                      "--dtype", "fp32", *argv])
    args.tau = resolve_tau(args)                      # as `ruler` resolves it before loading
    cfg = TSAConfig(**{**TSA, "tau": args.tau, **(tsa or {})})
    configure_tsa(model, method=args.method, tsa_config=cfg, dense_backend=args.dense_backend,
                  sparse_layers=args.sparse_layers, impl=impl, model_name="tiny-llama", weights="random")
    _, _, key = run_identity(args, gen, template, model=model, engine=engine)
    log = open_predictions(args, tmp_path, key)
    log.close()
    return log.path


def _other_generator(gen, **cfg):
    return Generator(gen.tok, dataclasses.replace(GEN, **cfg), cache_dir=gen.cache_dir, log=lambda m: None)


def _other_tokenizer(gen):
    g = copy.copy(gen)
    g._tok_id = "other-tokenizer-0123456789"
    return g


CHANGES = {                      # one setting each; every one must give another predictions file
    "generator": dict(version="tsa-ruler-test"),
    "gen_length": dict(spec=("vt", 31)),
    "model": dict(model_arg="tiny-llama-2"),
    "weights": dict(argv=["--weights", "pretrained"]),
    "method": dict(argv=["--method", "dense"]),
    "tau": dict(argv=["--tau", "0.01"]),
    "window": dict(tsa=dict(window=64)),
    "pool_kernel": dict(tsa=dict(pool_kernel=5)),
    "min_keep": dict(tsa=dict(min_keep=512)),
    "keep_ratio": dict(tsa=dict(keep_ratio=0.5)),
    "sparse_layers": dict(argv=["--sparse-layers", "0,1"]),
    "impl": dict(impl="naive"),
    "dense_backend": dict(argv=["--dense-backend", "math"]),
    "dtype": dict(argv=["--dtype", "bf16"]),
    "rope_scaling": dict(argv=["--rope-scaling", "linear:2"]),
    "tokenizer": dict(gen=_other_tokenizer),
    "template": dict(template="chat"),
    "seed": dict(argv=["--seed", "7"]),
    "data": dict(gen=lambda g: _other_generator(g, data="auto")),
    "engine": dict(engine="another-engine"),
}


def test_the_same_settings_give_the_same_predictions_file(model, gen, tmp_path):
    assert _predictions_path(tmp_path, model, gen) == _predictions_path(tmp_path, model, gen)


@pytest.mark.parametrize("part", list(CHANGES), ids=list(CHANGES))
def test_changing_one_key_part_gives_a_new_predictions_file(model, gen, tmp_path, monkeypatch, part):
    base = _predictions_path(tmp_path, model, gen)
    change = dict(CHANGES[part])
    if "version" in change:
        monkeypatch.setattr(G, "GENERATOR_VERSION", change.pop("version"))
    if "spec" in change:
        name, length = change.pop("spec")
        monkeypatch.setitem(T.TASKS, name, dataclasses.replace(T.TASKS[name], tokens_to_generate=length))
    g = change.pop("gen", lambda g: g)(gen)
    assert _predictions_path(tmp_path, model, g, **change) != base


def test_the_resolved_sparse_layer_set_is_in_the_key(model, gen, tmp_path, monkeypatch):
    """Same flags, but the layer set the model runs differs (as when a preset or a drift
    profile changes): another file."""
    from tsa_bench.hf import loading

    base = _predictions_path(tmp_path, model, gen)
    real = loading.resolve_sparse_layers
    monkeypatch.setattr(loading, "resolve_sparse_layers", lambda *a, **k: ((1, 3), real(*a, **k)[1]))
    assert _predictions_path(tmp_path, model, gen) != base


def test_a_changed_local_weights_file_gives_a_new_predictions_file(model, gen, tmp_path):
    weights = tmp_path / "model.gguf"
    weights.write_bytes(b"weights v1")
    first = _predictions_path(tmp_path, model, gen, model_arg=weights)
    assert _predictions_path(tmp_path, model, gen, model_arg=weights) == first
    weights.write_bytes(b"weights v2, retrained")
    assert _predictions_path(tmp_path, model, gen, model_arg=weights) != first


# --------------------------------------------------------------------------- prompt hashes

def _empty_answers(model, input_ids, max_new_tokens, device):
    return [], 0.0


def _samples(gen, n=2):
    return [s for t in ("niah_single_1", "qa_1") for s in gen.samples(t, 1024, n)]


def test_every_prediction_stores_the_sha256_of_its_prompt_text(gen, tok, tmp_path):
    samples = _samples(gen)
    log = PredictionLog(tmp_path / "p.jsonl")
    evaluate_samples(None, tok, samples, log, progress=False, generate_fn=_empty_answers)
    log.close()
    stored = {r["id"]: r["prompt_sha"] for r in map(json.loads, (tmp_path / "p.jsonl").read_text().splitlines())}
    assert stored == {s["id"]: hashlib.sha256(prompt_of(s).encode("utf-8")).hexdigest() for s in samples}


@pytest.mark.parametrize("field", ["input", "answer_prefix"], ids=["input", "answer_prefix"])
def test_resuming_with_a_changed_prompt_is_refused(gen, tok, tmp_path, field):
    samples = _samples(gen)
    path = tmp_path / "p.jsonl"
    log = PredictionLog(path)
    evaluate_samples(None, tok, samples[:3], log, progress=False, generate_fn=_empty_answers)
    log.close()
    before = path.read_bytes()
    changed = [dict(s) for s in samples]
    changed[1][field] = changed[1][field].replace("special magic", "secret")
    ran = []
    with pytest.raises(UsageError, match=r"--predictions") as err:
        evaluate_samples(None, tok, changed, PredictionLog(path), progress=False,
                         generate_fn=lambda *a: ran.append(1) or ([], 0.0))
    assert str(path) in str(err.value) and changed[1]["id"] in str(err.value)
    assert ran == [] and path.read_bytes() == before          # refused before running or writing anything


def test_resuming_records_without_a_prompt_hash_is_refused(gen, tok, tmp_path):
    samples = _samples(gen)
    path = tmp_path / "old.jsonl"
    log = PredictionLog(path)
    evaluate_samples(None, tok, samples[:1], log, progress=False, generate_fn=_empty_answers)
    log.close()
    rec = json.loads(path.read_text())
    del rec["prompt_sha"]                                      # as written before prompt hashes existed
    path.write_text(json.dumps(rec) + "\n")
    with pytest.raises(UsageError, match="no prompt_sha"):
        evaluate_samples(None, tok, samples, PredictionLog(path), progress=False, generate_fn=_empty_answers)


def test_resuming_the_same_prompts_reuses_every_stored_prediction(gen, tok, tmp_path):
    samples = _samples(gen)
    path = tmp_path / "p.jsonl"
    first = PredictionLog(path)
    evaluate_samples(None, tok, samples[:3], first, progress=False, generate_fn=_empty_answers)
    first.close()
    ran = []
    log = PredictionLog(path)
    evaluate_samples(None, tok, samples, log, progress=False, generate_fn=lambda *a: ran.append(1) or ([], 0.0))
    log.close()
    assert len(ran) == len(samples) - 3 and len(path.read_text().splitlines()) == len(samples)
