"""Load a causal LM with the ``"tsa"`` attention and configure which layers sparsify.

``model`` may be a preset name (``smollm2-135m``, ``gemma3-270m``, ``llama-3.1-8b``, see
``tsa_bench/presets/``), a local ``.gguf`` file or a directory holding one, a local directory
with a ``config.json`` (and weights), or a Hugging Face id (resolution and its errors:
:mod:`tsa_bench.hf.checkpoints`). ``weights="random"`` builds the architecture from its config
with random weights directly on ``device`` in ``dtype`` (no checkpoint needed; attention is
then near uniform, so benchmark speed with a forced ``keep_ratio``). ``weights="pretrained"``
loads the checkpoint (a GGUF is dequantised to ``dtype``).
"""
from __future__ import annotations

import copy
import logging
import os
from typing import Dict, Iterable, Optional, Tuple, Union

import torch

from tsa_core import TSAConfig
from tsa_bench.hf.attention import (ATTN_NAME, SETTINGS_ATTR, SLIDING_PREFILL, TSAPlan, clear_stats,
                                    parse_method, register_tsa_attention)
from tsa_bench.hf.checkpoints import (apply_rope_scaling, config_context, pretrained_model, resolve_source,
                                      source_config, source_tokenizer)
from tsa_bench.hf.layers import (check_full_attention, check_layers, find_profile, full_attention_layers,
                                 load_profile, parse_layer_spec, resolve_tau, second_half)
from tsa_bench.hf.presets import Preset, find_preset

log = logging.getLogger("tsa_bench.hf")

WEIGHTS = ("pretrained", "random")
DTYPES = {"bf16": torch.bfloat16, "bfloat16": torch.bfloat16, "fp16": torch.float16,
          "float16": torch.float16, "fp32": torch.float32, "float32": torch.float32}

LayerSpec = Union[None, str, Iterable[int]]


def resolve_dtype(dtype) -> torch.dtype:
    if isinstance(dtype, torch.dtype):
        return dtype
    try:
        return DTYPES[str(dtype).lower()]
    except KeyError:
        raise ValueError(f"dtype must be one of {sorted(DTYPES)} or a torch.dtype, got {dtype!r}") from None


def model_config(model, weights: str = "pretrained", rope_scaling=None):
    """``(transformers config, preset or None)`` for a preset name, ``.gguf`` file or directory,
    checkpoint directory or HF id, with ``rope_scaling`` (e.g. ``"yarn:4"``, see
    :func:`~tsa_bench.hf.checkpoints.apply_rope_scaling`) applied."""
    config, src = _config_and_source(model, weights, rope_scaling)
    return config, None if src is None else src.preset


def _config_and_source(model, weights: str, rope_scaling):
    from transformers import PretrainedConfig

    if isinstance(model, PretrainedConfig):
        config, src = copy.deepcopy(model), None
    else:
        src = resolve_source(model, weights)
        config = source_config(src)
    if rope_scaling is not None:
        trained = src.preset.trained_context if src is not None and src.preset is not None else None
        if trained is None and src is not None and src.header is not None:
            trained = src.header.context_length
        apply_rope_scaling(config, rope_scaling, trained or config_context(config))
    return config, src


def num_decoder_layers(config) -> int:
    text = config.get_text_config() if hasattr(config, "get_text_config") else config
    n = getattr(text, "num_hidden_layers", None)
    if not isinstance(n, int) or n < 1:
        raise ValueError(f"cannot tell how many decoder layers {type(config).__name__} has")
    return n


def resolve_sparse_layers(spec: LayerSpec, num_layers: int, *, tsa_config: Optional[TSAConfig] = None,
                          preset: Optional[Preset] = None, model_name: Optional[str] = None,
                          weights: str = "pretrained",
                          attention_layers: Optional[Tuple[int, ...]] = None) -> Tuple[Tuple[int, ...], str]:
    """Which layers run TSA, and a sentence saying where the list came from.

    Precedence: ``spec`` (indices, ``"15-30"``, ``"half"``, ``"preset"`` or a profile JSON
    path) > ``tsa_config.sparse_layers`` > the preset's paper list > a saved profile of the
    model measured with pretrained weights (``results/layers/``) > the second half of the
    layers (the paper code's fallback; logged as a warning).

    ``attention_layers``: a hybrid model's full-attention layers
    (:func:`~tsa_bench.hf.layers.full_attention_layers`). Then ``"half"`` is the second half of
    those, and the fallback is all of them: the paper halves a model whose every layer is
    quadratic, while here only these few are (Gemma-3-270M: 3 of 18), so each is worth
    sparsifying. Lists from other sources are checked against them by :func:`configure_tsa`.
    """
    if isinstance(spec, str):
        s = spec.strip()
        if s.lower() in ("half", "second-half"):
            if attention_layers is not None:
                return (second_half(num_layers, attention_layers),
                        f"second half of the {len(attention_layers)} full-attention layers (asked for)")
            return second_half(num_layers), f"second half of the {num_layers} layers (asked for)"
        if s.lower() in ("preset", "paper"):
            if preset is None or preset.sparse_layers is None:
                raise ValueError(f"sparse_layers='{s}': model {model_name!r} has no preset layer list")
            return check_layers(preset.sparse_layers, num_layers), f"preset {preset.name}: {preset.sparse_layers_source}"
        if s.endswith(".json") or os.path.isfile(s):
            prof = load_profile(s)
            if prof.get("num_layers") not in (None, num_layers):
                raise ValueError(f"profile {s} was measured on a {prof['num_layers']}-layer model; "
                                 f"this model has {num_layers} layers")
            return check_layers(prof["sparse_layers"], num_layers), f"profile {s}"
        return check_layers(parse_layer_spec(s), num_layers), "given explicitly"
    if spec is not None:
        return check_layers(list(spec), num_layers), "given explicitly"
    if tsa_config is not None and tsa_config.sparse_layers is not None:
        return check_layers(tsa_config.sparse_layers, num_layers), "TSAConfig.sparse_layers"
    if preset is not None and preset.sparse_layers is not None:
        if preset.num_layers != num_layers:
            raise ValueError(f"preset {preset.name} lists layers of a {preset.num_layers}-layer model, "
                             f"this model has {num_layers}")
        return check_layers(preset.sparse_layers, num_layers), f"preset {preset.name}: {preset.sparse_layers_source}"
    if model_name and weights == "pretrained":
        path = find_profile(model_name)
        if path is not None:
            return check_layers(load_profile(path)["sparse_layers"], num_layers), f"profile {path}"
    if attention_layers is not None:
        layers = tuple(sorted(attention_layers))
        log.info("no layer profile for %s: TSA runs in all %d full-attention layers (%s) of this hybrid model",
                 model_name or "this model", len(layers), ", ".join(map(str, layers)))
        return layers, f"fallback: all {len(layers)} full-attention layers of a hybrid model (no profile)"
    layers = second_half(num_layers)
    log.warning("no layer profile for %s: TSA runs in the second half of its %d layers (%d-%d), the "
                "paper code's fallback; run `tsa-bench profile-layers --model %s` to choose by drift",
                model_name or "this model", num_layers, layers[0], layers[-1], model_name or "M")
    return layers, f"fallback: second half of the {num_layers} layers (no profile)"


def check_attention_support(model) -> None:
    """ValueError unless the model (or model class) routes attention through transformers'
    AttentionInterface."""
    cls = model if isinstance(model, type) else type(model)
    if not getattr(cls, "_supports_attention_backend", False):
        raise ValueError(
            f"{cls.__name__} does not dispatch attention through transformers' AttentionInterface "
            "(its _supports_attention_backend is False), so the 'tsa' attention cannot be plugged in; "
            "supported families include Llama, Mistral, Qwen2 and Qwen3")


def configure_tsa(model: torch.nn.Module, *, method: str = "tsa", tsa_config: Optional[TSAConfig] = None,
                  dense_backend: str = "sdpa", sparse_layers: LayerSpec = None, impl: str = "auto",
                  model_name: Optional[str] = None, weights: str = "pretrained",
                  layer_configs: Optional[Dict[int, TSAConfig]] = None, sliding: str = "mask") -> TSAPlan:
    """(Re)configure a loaded model: method, TSA hyper-parameters, sparse layers.

    ``layer_configs`` maps some sparse layers to their own :class:`TSAConfig` (tau, window,
    keep ratio, ...); the other sparse layers use ``tsa_config``. Without ``tsa_config`` the
    paper defaults are used with the ``tau`` saved in the profile that ``sparse_layers`` names
    (``tsa-bench calibrate`` writes one), else the preset's, else 0.005
    (:func:`~tsa_bench.hf.layers.resolve_tau`).

    ``sliding``: how the sliding-window layers of a hybrid model (Gemma 3) prefill: ``"mask"``
    (transformers' SDPA with the layer's L x L mask, as the plain model) or ``"banded"``
    (the same call on query chunks against the keys their band reaches,
    :func:`~tsa_bench.hf.attention.banded_sliding_attention`). No effect on other models.

    Cheap (no reload), so a benchmark can switch one model between methods. Stores the
    settings on ``model.config.tsa_settings`` and switches the model to the ``"tsa"``
    attention if it is not there yet. Returns the resolved :class:`TSAPlan`.
    """
    register_tsa_attention()
    check_attention_support(model)
    if impl not in ("auto", "triton", "naive"):
        raise ValueError(f"impl must be 'auto', 'triton' or 'naive', got {impl!r}")
    if sliding not in SLIDING_PREFILL:
        raise ValueError(f"sliding must be one of {SLIDING_PREFILL}, got {sliding!r}")
    if tsa_config is not None and not isinstance(tsa_config, TSAConfig):
        raise ValueError(f"tsa_config must be a tsa_core.TSAConfig or None, got {type(tsa_config).__name__}")
    canon, prefill_backend, uses_tsa = parse_method(method, dense_backend)
    config = model.config
    n_layers = num_decoder_layers(config)
    preset = find_preset(model_name) if model_name else None
    full = full_attention_layers(config)
    if uses_tsa:
        # no tsa_config: the tau saved in the sparse_layers profile, else the preset's, else 0.005
        cfg = tsa_config or TSAConfig(tau=resolve_tau(None, sparse_layers, preset.tau if preset else None)[0])
        layers, source = resolve_sparse_layers(sparse_layers, n_layers, tsa_config=cfg, preset=preset,
                                               model_name=model_name, weights=weights, attention_layers=full)
        check_full_attention(layers, config)
        tsa = TSAConfig(tau=cfg.tau, window=cfg.window, pool_kernel=cfg.pool_kernel, min_keep=cfg.min_keep,
                        keep_ratio=cfg.keep_ratio, dropped=cfg.dropped, sparse_layers=layers)
        overrides = []
        for i, c in sorted((layer_configs or {}).items()):
            if i not in layers:
                raise ValueError(f"layer_configs: layer {i} is not one of the sparse layers {list(layers)}")
            if not isinstance(c, TSAConfig):
                raise ValueError(f"layer_configs[{i}] must be a TSAConfig, got {type(c).__name__}")
            overrides.append((i, c))
    else:
        if layer_configs:
            raise ValueError(f"layer_configs given but method {canon!r} runs no TSA")
        overrides = []
        if sparse_layers is not None:                      # validated even though unused
            check_full_attention(resolve_sparse_layers(sparse_layers, n_layers, preset=preset, model_name=model_name,
                                                       attention_layers=full)[0], config)
        tsa, layers, source = None, (), f"method {canon!r} runs no TSA"
    plan = TSAPlan(method=canon, prefill_backend=prefill_backend, dense_backend=dense_backend, tsa=tsa,
                   sparse_layers=layers, impl=impl, layer_source=source, layer_tsa=tuple(overrides),
                   sliding=sliding)
    settings = plan.to_dict()
    targets = [config]
    text = config.get_text_config() if hasattr(config, "get_text_config") else config
    if text is not config:
        targets.append(text)
    for c in targets:
        setattr(c, SETTINGS_ATTR, settings)
    if getattr(config, "_attn_implementation", None) != ATTN_NAME:
        model.set_attn_implementation(ATTN_NAME)
    clear_stats(model)
    return plan


def load_model(model, *, method: str = "dense", tsa_config: Optional[TSAConfig] = None,
               dense_backend: str = "sdpa", weights: str = "pretrained", dtype=torch.bfloat16,
               device="cpu", sparse_layers: LayerSpec = None, impl: str = "auto", seed: int = 0,
               tokenizer: Optional[bool] = None, layer_configs: Optional[Dict[int, TSAConfig]] = None,
               rope_scaling=None, sliding: str = "mask"):
    """Build or load a causal LM running the ``"tsa"`` attention.

    Args:
        model: preset name, ``.gguf`` file or a directory holding one, checkpoint directory,
            Hugging Face id (or a transformers config object).
        method: ``"dense"``, ``"tsa"``, ``"<backend>"`` or ``"<backend>+tsa"`` (registry names).
        tsa_config: TSA hyper-parameters (default: paper defaults with the tau saved in the
            ``sparse_layers`` profile, else the preset's; see :func:`configure_tsa`).
        dense_backend: registry dense kernel used for prefill by ``"dense"`` and ``"tsa"``.
        weights: ``"pretrained"`` (load the checkpoint) or ``"random"`` (build from config).
        dtype, device: where the weights live; random weights are created there directly.
        sparse_layers: see :func:`resolve_sparse_layers`; in a hybrid model (Gemma 3) only
            full-attention layers may be listed.
        impl: TSA ops, ``"auto"``, ``"triton"`` or ``"naive"``.
        seed: random-weight seed (the global RNG is left untouched).
        tokenizer: load the tokenizer (default: when loading pretrained weights).
        layer_configs: per-layer :class:`TSAConfig` overrides (see :func:`configure_tsa`).
        rope_scaling: ``"yarn:4"``, ``"linear:2"``, ``"dynamic:2"`` or None: RoPE scaling set on
            the config before the model is built (see
            :func:`~tsa_bench.hf.checkpoints.apply_rope_scaling`).
        sliding: prefill of a hybrid model's sliding-window layers, ``"mask"`` or ``"banded"``
            (see :func:`configure_tsa`).

    Returns:
        ``(model, tokenizer or None)``; the model is in eval mode, its plan readable from
        ``model.config.tsa_settings``.
    """
    from transformers import AutoModelForCausalLM
    from transformers.models.auto.modeling_auto import MODEL_FOR_CAUSAL_LM_MAPPING

    if weights not in WEIGHTS:
        raise ValueError(f"weights must be one of {WEIGHTS}, got {weights!r}")
    dtype = resolve_dtype(dtype)
    device = torch.device(device)
    register_tsa_attention()
    parse_method(method, dense_backend)                      # fail before any loading
    config, src = _config_and_source(model, weights, rope_scaling)
    preset = None if src is None else src.preset
    name = (preset.name if preset is not None else model) if isinstance(model, str) \
        else getattr(config, "name_or_path", "") or config.model_type
    cls = MODEL_FOR_CAUSAL_LM_MAPPING.get(type(config), None)
    if cls is None:
        raise ValueError(f"model type {config.model_type!r} has no causal-LM class in transformers")
    check_attention_support(cls)
    if weights == "random":
        devices = [device] if device.type == "cuda" else []
        with torch.random.fork_rng(devices=devices), torch.device(device):
            torch.manual_seed(seed)
            lm = AutoModelForCausalLM.from_config(config, dtype=dtype, attn_implementation=ATTN_NAME)
        stray = {t.device for t in (*lm.parameters(), *lm.buffers())} - {_canonical(device)}
        if stray:                         # a tensor created with an explicit device: move it
            lm.to(device)
    else:
        kw = {} if device.type == "cpu" else {"device_map": str(device)}
        lm = pretrained_model(src, config, dtype=dtype, attn_implementation=ATTN_NAME, **kw)
    lm.eval()
    configure_tsa(lm, method=method, tsa_config=tsa_config, dense_backend=dense_backend,
                  sparse_layers=sparse_layers, impl=impl, model_name=name, weights=weights,
                  layer_configs=layer_configs, sliding=sliding)
    want_tok = (weights == "pretrained") if tokenizer is None else tokenizer
    if not want_tok or src is None:
        return lm, None
    if src.kind == "config":              # random weights of a preset: its checkpoint's tokenizer, if any
        try:
            src = resolve_source(model, "pretrained")
        except ValueError as exc:
            log.info("no tokenizer for %s (%s); returning None", model, exc)
            return lm, None
    return lm, source_tokenizer(src)


def _canonical(device: torch.device) -> torch.device:
    if device.type == "cuda" and device.index is None:
        return torch.device("cuda", torch.cuda.current_device())
    return device


def tsa_plan(model: torch.nn.Module) -> TSAPlan:
    """The plan a model currently runs (ValueError if it was never configured)."""
    from tsa_bench.hf.attention import plan_from_settings

    settings = getattr(model.config, SETTINGS_ATTR, None)
    if settings is None:
        raise ValueError("this model has no TSA settings; use load_model or configure_tsa")
    return plan_from_settings(settings)
