"""The run key names a predictions file; `ruler` resumes from it, also on another machine with
the archived predictions of an earlier session. A change to what goes into the key silently
starts every arm again (the 2026-11-30 sessions lost a dense arm that way), so the key of a
fixed configuration is pinned here. If this test fails on purpose (the generator or what
decides a prediction changed), update the pinned keys and say in the change that earlier
predictions no longer resume."""
from types import SimpleNamespace

from tsa_bench.commands import ruler as R


def _args(method, tau=None):
    return SimpleNamespace(model="/nonexistent/SmolLM2-135M-Instruct.Q4_1.gguf", weights="pretrained",
                           dtype="bf16", rope_scaling=None, method=method, tau=tau, dense_backend="sdpa",
                           sparse_layers="results/layers/smollm2-135m-4k.json", seed=42, max_new_tokens=None)


_GEN = SimpleNamespace(tok_id="tok:abc123", corpora=SimpleNamespace(data_tag=lambda: "noise;words:builtin"))


def test_run_key_of_a_fixed_configuration_is_pinned():
    dense = R.run_identity(_args("dense"), _GEN, "chat", model=None, engine="batched-grouped-b64")
    tsa = R.run_identity(_args("tsa", 0.005), _GEN, "chat", model=None, engine="batched-grouped-b64")
    assert dense[0]["generator"] == "tsa-ruler-2"
    assert (dense[2], tsa[2]) == ("235049ad22a0", "cccbdc57c454")


def test_the_key_follows_what_decides_a_prediction():
    base = R.run_identity(_args("tsa", 0.005), _GEN, "chat", engine="batched-grouped-b64")[2]
    for changed in (R.run_identity(_args("tsa", 0.01), _GEN, "chat", engine="batched-grouped-b64")[2],
                    R.run_identity(_args("tsa", 0.005), _GEN, "base", engine="batched-grouped-b64")[2],
                    R.run_identity(_args("tsa", 0.005), _GEN, "chat", engine="batched-b16")[2]):
        assert changed != base
