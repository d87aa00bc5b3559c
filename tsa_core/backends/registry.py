"""The attention-backend registry itself: :class:`AttentionBackend` and the functions that
register, look up and list entries. The call signature every backend follows is documented in
:mod:`tsa_core.backends`, which re-exports these names and registers the built-in entries.

A leaf module: it imports nothing of ``tsa_core``, so the tables of entries
(:mod:`tsa_core.backends`, :mod:`tsa_core.backends.sparse`) import it without importing each other.
"""
from __future__ import annotations

import importlib
import importlib.util
from dataclasses import dataclass, field
from typing import Callable, Dict, Optional, Tuple, Union

import torch


@dataclass(frozen=True)
class AttentionBackend:
    """A registry entry: where the function lives, what it needs, what it runs on."""

    name: str
    target: str                       # "module:attr"
    kind: str = "dense"               # "dense" or "sparse"
    devices: Tuple[str, ...] = ("cuda",)
    requires: Tuple[str, ...] = ()    # importable modules it needs (e.g. "flash_attn")
    description: str = ""
    options: Dict[str, object] = field(default_factory=dict)

    def load(self) -> Callable:
        module, _, attr = self.target.partition(":")
        return getattr(importlib.import_module(module), attr)

    def unavailable_reason(self, device: Union[str, torch.device]) -> Optional[str]:
        """``None`` if the backend can run on ``device``, otherwise why not."""
        dev = torch.device(device).type
        if dev not in self.devices:
            return f"backend {self.name!r} runs on {', '.join(self.devices)}, not {dev}"
        for mod in self.requires:
            if importlib.util.find_spec(mod) is None:
                return f"backend {self.name!r} needs the package {mod!r}, which is not installed"
        return None

    def __call__(self, q, k, v, *, scale: float, valid_len: Optional[torch.Tensor] = None):
        fn = _resolved(self, q.device.type)        # cached: this sits on the hot path
        return fn(q, k, v, scale=scale, valid_len=valid_len, **self.options)


_RESOLVED: Dict[Tuple[int, str], Tuple[AttentionBackend, Callable]] = {}


def _resolved(backend: AttentionBackend, device_type: str) -> Callable:
    key = (id(backend), device_type)
    hit = _RESOLVED.get(key)
    if hit is None or hit[0] is not backend:     # the entry keeps its backend alive: ids stay unique
        reason = backend.unavailable_reason(device_type)
        if reason is not None:
            raise ValueError(reason)
        hit = _RESOLVED[key] = (backend, backend.load())
    return hit[1]


_REGISTRY: Dict[str, AttentionBackend] = {}


def register_backend(backend: AttentionBackend, *, replace: bool = False) -> AttentionBackend:
    if backend.kind not in ("dense", "sparse"):
        raise ValueError(f"backend kind must be 'dense' or 'sparse', got {backend.kind!r}")
    if backend.name in _REGISTRY and not replace:
        raise ValueError(f"backend {backend.name!r} is already registered")
    _REGISTRY[backend.name] = backend
    return backend


def get_backend(name: Union[str, AttentionBackend]) -> AttentionBackend:
    if isinstance(name, AttentionBackend):
        return name
    try:
        return _REGISTRY[name]
    except KeyError:
        raise ValueError(f"unknown attention backend {name!r}; registered: {', '.join(sorted(_REGISTRY))}") from None


def list_backends(kind: Optional[str] = None) -> Dict[str, AttentionBackend]:
    return {n: b for n, b in sorted(_REGISTRY.items()) if kind is None or b.kind == kind}


def available_backends(device: Union[str, torch.device], kind: Optional[str] = None) -> Tuple[str, ...]:
    """Names of the registered backends that can run on ``device`` (no CUDA query for 'cpu')."""
    return tuple(n for n, b in list_backends(kind).items() if b.unavailable_reason(device) is None)
