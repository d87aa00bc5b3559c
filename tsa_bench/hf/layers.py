"""Which layers run TSA: layer-list parsing, the paper's drift rule, saved profiles.

Inter-layer representation drift (PAPER.md §1.4, Eq. 1-2) of decoder layer ``l`` on one
prompt is ``R_l = mean_t ||h_out[t] - h_in[t]||_2 / (||h_in[t]||_2 + eps)``, with ``h_in`` /
``h_out`` the hidden states entering / leaving the whole layer (attention + MLP). The layer's
normalised rank is ``R^_l = (1/N) * #{k : R_k <= R_l}``; TSA runs in ``{l : R^_l <= delta}``
(delta = 0.5: the half of the layers that change the residual stream least). In a hybrid model
(:func:`full_attention_layers`) only the full-attention layers are ranked and chosen.
"""
from __future__ import annotations

import json
import logging
import os
import re
from pathlib import Path
from typing import Dict, Iterable, List, Optional, Sequence, Tuple, Union

import torch

from tsa_bench.paths import RESULTS_DIR

log = logging.getLogger("tsa_bench.hf")
LAYERS_DIR = RESULTS_DIR / "layers"
EPS = 1e-8


def check_layers(layers: Iterable[int], num_layers: int, name: str = "sparse_layers") -> Tuple[int, ...]:
    """Sorted unique layer indices, each in ``[0, num_layers)``, else a ValueError."""
    out = []
    for i in layers:
        if isinstance(i, bool) or not isinstance(i, int):
            raise ValueError(f"{name} must hold integers, got {i!r}")
        if not 0 <= i < num_layers:
            raise ValueError(f"{name}: layer index {i} is out of range; this model has {num_layers} "
                             f"decoder layers (valid indices 0..{num_layers - 1})")
        out.append(i)
    return tuple(sorted(set(out)))


def parse_layer_spec(spec: str) -> List[int]:
    """``"15-30"``, ``"14,15,20-37"`` -> list of ints (inclusive ranges)."""
    out: List[int] = []
    for part in str(spec).split(","):
        part = part.strip()
        if not part:
            continue
        m = re.fullmatch(r"(\d+)\s*-\s*(\d+)", part)
        if m:
            lo, hi = int(m.group(1)), int(m.group(2))
            if hi < lo:
                raise ValueError(f"empty layer range {part!r} in {spec!r}")
            out.extend(range(lo, hi + 1))
        elif part.isdigit():
            out.append(int(part))
        else:
            raise ValueError(f"bad layer list {spec!r}: use indices and inclusive ranges like '15-30' "
                             "or '14,15,20-37', 'half', or a profile JSON path")
    return out


def full_attention_layers(config) -> Optional[Tuple[int, ...]]:
    """The full-attention layers of a hybrid model, or None when every layer is one.

    transformers 5 lists each layer's kind in ``config.layer_types`` (``"full_attention"``,
    ``"sliding_attention"``, ...). Gemma-3-270M: layers 5, 11, 17 are global, the other 15
    attend to a 512-token sliding window. Only full-attention layers can run TSA: a sliding
    layer's attention is already banded (and its mask is not plain causal).
    """
    text = config.get_text_config() if hasattr(config, "get_text_config") else config
    types = getattr(text, "layer_types", None)
    if not types:
        return None
    full = tuple(i for i, t in enumerate(types) if t == "full_attention")
    return None if len(full) == len(types) else full


def check_full_attention(layers: Iterable[int], config, name: str = "sparse_layers") -> None:
    """ValueError (prefixed with ``name``) naming the offending layers when ``layers`` holds a
    layer that is not full-attention (a sliding-window layer of a hybrid model)."""
    full = full_attention_layers(config)
    if full is None:
        return
    bad = sorted(set(layers) - set(full))
    if bad:
        text = config.get_text_config() if hasattr(config, "get_text_config") else config
        kinds = sorted({text.layer_types[i] for i in bad})
        window = getattr(text, "sliding_window", None)
        raise ValueError(
            f"{name}: layer{'s' if len(bad) > 1 else ''} {', '.join(map(str, bad))} of this model "
            f"use{'' if len(bad) > 1 else 's'} {'/'.join(kinds)}"
            + (f" (a {window}-token window)" if window and "sliding_attention" in kinds else "")
            + f"; TSA runs in full-attention layers only: {', '.join(map(str, full))}")


def second_half(num_layers: int, attention_layers: Optional[Sequence[int]] = None) -> Tuple[int, ...]:
    """The paper code's fallback for a model without a profile: ``range(N // 2, N)``; with
    ``attention_layers`` (a hybrid model's full-attention layers) the second half of those."""
    if attention_layers is not None:
        full = tuple(sorted(attention_layers))
        return full[len(full) // 2:]
    return tuple(range(num_layers // 2, num_layers))


def select_by_drift(drift: Sequence[float], delta: float,
                    candidates: Optional[Sequence[int]] = None) -> Tuple[int, ...]:
    """Layers whose normalised drift rank ``R^_l`` is ``<= delta`` (PAPER.md §1.4, Eq. 2).

    ``candidates`` (e.g. a hybrid model's full-attention layers) restricts the ranking to those
    layers: ``R^_l = #{k in candidates : R_k <= R_l} / |candidates|``, and only they are returned.
    """
    if not 0.0 < float(delta) <= 1.0:
        raise ValueError(f"delta must be in (0, 1], got {delta}")
    r = torch.as_tensor(list(drift), dtype=torch.float64)
    if r.numel() == 0 or not torch.isfinite(r).all():
        raise ValueError(f"drift must be a non-empty list of finite numbers, got {list(drift)}")
    idx = list(range(r.numel())) if candidates is None else list(check_layers(candidates, r.numel(), "candidates"))
    if not idx:
        raise ValueError("candidates must name at least one layer")
    r = r[idx]
    n = r.numel()
    rank = (r.view(1, n) <= r.view(n, 1)).sum(dim=1).double() / n     # rank[l] = #{k: R_k <= R_l} / N
    return tuple(idx[j] for j in torch.nonzero(rank <= delta + 1e-12).flatten().tolist())


def _decoder_layers(model: torch.nn.Module) -> Sequence[torch.nn.Module]:
    base = getattr(model, "model", model)
    layers = getattr(base, "layers", None)
    if layers is None:
        raise ValueError(f"{type(model).__name__}: no decoder layer list at model.model.layers; "
                         "drift profiling supports Llama/Mistral/Qwen-style causal LMs")
    return layers


@torch.inference_mode()
def measure_drift(model: torch.nn.Module, input_ids: torch.Tensor, chunk: int = 8192) -> List[float]:
    """One forward pass over ``input_ids [1, L]``; returns ``R_l`` for every decoder layer.

    Forward hooks read each layer's input and output hidden states, so nothing beyond one
    layer's activations is kept (no ``output_hidden_states`` at 128K). The norms are taken
    in fp32, ``chunk`` tokens at a time. Only the base model runs (no LM head, no cache).
    """
    if input_ids.dim() != 2 or input_ids.shape[0] != 1:
        raise ValueError(f"input_ids must be [1, L], got shape {tuple(input_ids.shape)}")
    layers = _decoder_layers(model)
    sums: Dict[int, float] = {}
    count = input_ids.shape[1]

    def make_hook(idx: int):
        def hook(mod, args, kwargs, output):
            h_in = args[0] if args else kwargs["hidden_states"]
            h_out = output[0] if isinstance(output, (tuple, list)) else output
            total = 0.0
            for s in range(0, h_in.shape[1], chunk):
                a = h_in[0, s:s + chunk].float()
                b = h_out[0, s:s + chunk].float()
                total += ((b - a).norm(dim=-1) / (a.norm(dim=-1) + EPS)).sum().item()
            sums[idx] = total
        return hook

    handles = [layer.register_forward_hook(make_hook(i), with_kwargs=True) for i, layer in enumerate(layers)]
    try:
        base = getattr(model, "model", model)
        base(input_ids=input_ids, use_cache=False)
    finally:
        for h in handles:
            h.remove()
    return [sums[i] / count for i in range(len(layers))]


def profile_path(model_name: str, weights: str, out_dir: Optional[Path] = None) -> Path:
    slug = re.sub(r"[^A-Za-z0-9._-]+", "_", str(model_name).strip("/")).strip("_").lower()
    suffix = "" if weights == "pretrained" else f"-{weights}"
    return Path(out_dir or LAYERS_DIR) / f"{slug}{suffix}.json"


def load_profile(path: Union[str, Path]) -> Dict:
    """A saved layer profile (JSON object): ``sparse_layers`` (a list, required) and, when the
    profile carries one (``tsa-bench calibrate`` writes it), ``tau``: a number in (0, 1).
    Other keys are kept as they are. ValueError naming the file and the field otherwise."""
    p = Path(path)
    try:
        d = json.loads(p.read_text())
    except (OSError, json.JSONDecodeError) as exc:
        raise ValueError(f"cannot read layer profile {p}: {exc}") from None
    if not isinstance(d, dict) or not isinstance(d.get("sparse_layers"), list):
        raise ValueError(f"layer profile {p} has no 'sparse_layers' list")
    tau = d.get("tau")
    if tau is not None and (isinstance(tau, bool) or not isinstance(tau, (int, float))
                            or not 0.0 < float(tau) < 1.0):
        raise ValueError(f"layer profile {p}: 'tau' must be a number in (0, 1), got {tau!r}")
    return d


def is_profile_spec(spec) -> bool:
    """Whether a ``sparse_layers`` value names a profile file (a ``.json`` path or an existing
    file), the rule :func:`tsa_bench.hf.loading.resolve_sparse_layers` applies."""
    if not isinstance(spec, (str, Path)):
        return False
    s = str(spec).strip()
    return s.endswith(".json") or os.path.isfile(s)


def resolve_tau(tau: Optional[float], sparse_layers=None, preset_tau: Optional[float] = None) -> Tuple[float, str]:
    """The TSA tau a run uses, and a few words saying where it came from.

    Precedence: ``tau`` (``--tau``) > the ``tau`` saved in the profile that ``sparse_layers``
    names (:func:`is_profile_spec`; the file is read and validated by :func:`load_profile`)
    > ``preset_tau`` (the model preset's) > :attr:`tsa_core.TSAConfig.tau` (0.005, the paper's).
    """
    from tsa_core import TSAConfig

    if tau is not None:
        return float(tau), "given explicitly"
    if is_profile_spec(sparse_layers):
        saved = load_profile(str(sparse_layers).strip()).get("tau")
        if saved is not None:
            return float(saved), f"profile {str(sparse_layers).strip()}"
    if preset_tau is not None:
        return float(preset_tau), "preset"
    return float(TSAConfig.tau), "default"


def find_profile(model_name: str) -> Optional[Path]:
    """A saved profile of ``model_name`` measured with pretrained weights, if any."""
    p = profile_path(model_name, "pretrained")
    return p if p.exists() else None
