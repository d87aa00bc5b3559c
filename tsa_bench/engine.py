"""A greedy decoding engine for evaluation: per-sample prefill, batched graph-replayed decode.

Why: a 135M-parameter model on an H200 spends almost all of plain ``model.generate`` in Python
and kernel launches (tens of ms per token). RULER needs thousands of greedy generations of up
to 128 tokens each, so decoding, not the prefill TSA accelerates, dominated every run.

What stays exactly as in ``model.generate``:

* **Prefill**: one unpadded sequence per forward, through the model's own attention (so TSA,
  which scores one sequence's last ``W`` queries, runs exactly as it does for one prompt;
  ``last_stats`` after each prefill is that sample's). ``logits_to_keep=1``, like generate.
* **Greedy choice**: ``argmax`` of the last position's logits (first index on ties), stop at the
  first EOS id (the EOS token is part of the output, as in generate) or at the sample's own
  ``max_new_tokens``.

What is different (the speed):

* **Batched decode.** After its prefill, sample ``b``'s KV cache is copied into row ``b`` of a
  static cache ``[B, Hkv, cap, D]`` per layer, left-aligned, so slot ``j`` of row ``b`` holds
  position ``j`` of that sample. One decode step feeds ``B`` tokens with per-row positions and a
  per-row boolean mask ``j <= pos_b`` (and ``j > pos_b - window`` for sliding-window layers),
  passed to the model as prepared 4-D masks (a dict per layer type for hybrid models such as
  Gemma 3), so transformers builds no mask and no row sees another row or unwritten slots.
  A row's layout depends only on its own prompt, not on which samples share its batch.
* **CUDA graphs.** On CUDA the decode step (embedding to argmax, cache write included) is
  captured once per ``(B, cap)`` and replayed; the host looks at the generated tokens every
  ``check_every`` steps (one device-to-host copy) to stop when every row is done.

The KV cache is this module's :func:`row_cache`, a ``transformers.Cache`` whose layers write the
step's key/value at each row's own slot (``scatter_``); it relies only on the ``Cache`` /
``CacheLayerMixin`` interface that attention modules call (``update(k, v, layer_idx)``).

Numerics: prefill is the same computation as generate's; decode attention runs over the padded
cache with a mask (generate runs it over an unpadded cache without one), so in bf16 a near-tie
between the two best tokens can resolve differently. ``scripts/gpu_engine.py`` measures
how often that happens against plain ``generate`` and records the logit margin at any
divergence.
"""
from __future__ import annotations

import functools
import math
import time
from dataclasses import dataclass
from typing import Callable, Dict, List, Optional, Sequence, Tuple

import torch

@dataclass
class Generation:
    """One sample's greedy output."""

    tokens: List[int]            # new token ids, ending with the EOS id if one was produced
    prefill_s: float             # this sample's prefill (synchronised wall time)
    decode_s: float              # its share of the batch's decode time (batch time / real rows)

    @property
    def seconds(self) -> float:
        return self.prefill_s + self.decode_s


def eos_ids_of(model) -> Tuple[int, ...]:
    """The model's EOS ids (``generation_config.eos_token_id``: an int, a list, or None)."""
    eos = getattr(model.generation_config, "eos_token_id", None)
    if eos is None:
        return ()
    return tuple(int(e) for e in (eos if isinstance(eos, (list, tuple)) else [eos]))


def cache_kwarg(model) -> str:
    """The forward argument that takes the KV cache: ``cache`` (transformers >= 5.2x) or
    ``past_key_values`` (earlier 5.x; still accepted later, with a deprecation warning)."""
    import inspect
    return "cache" if "cache" in inspect.signature(model.forward).parameters else "past_key_values"


def _returned_cache(out):
    c = getattr(out, "cache", None)
    return c if c is not None else out.past_key_values


def _layer_types(model) -> Optional[List[str]]:
    cfg = model.config.get_text_config() if hasattr(model.config, "get_text_config") else model.config
    types = getattr(cfg, "layer_types", None)
    return list(types) if types else None


def _sliding_window(model) -> Optional[int]:
    cfg = model.config.get_text_config() if hasattr(model.config, "get_text_config") else model.config
    w = getattr(cfg, "sliding_window", None)
    return int(w) if w else None


class _RowLayer:
    """One layer's static K/V ``[B, H, cap, D]``; ``update`` writes each row at its own slot."""

    is_compileable = True
    is_sliding = False
    is_croppable = False

    def __init__(self, cache):
        self.cache = cache
        self.keys: Optional[torch.Tensor] = None
        self.values: Optional[torch.Tensor] = None
        self.is_initialized = False

    def allocate(self, heads: int, k_dim: int, v_dim: int, dtype, device) -> None:
        B, cap = self.cache.batch, self.cache.cap
        self.keys = torch.zeros((B, heads, cap, k_dim), dtype=dtype, device=device)
        self.values = torch.zeros((B, heads, cap, v_dim), dtype=dtype, device=device)
        self.is_initialized = True

    def lazy_initialization(self, key_states, value_states) -> None:
        self.allocate(key_states.shape[1], key_states.shape[-1], value_states.shape[-1],
                      key_states.dtype, key_states.device)

    def update(self, key_states: torch.Tensor, value_states: torch.Tensor, *args, **kwargs):
        if key_states.shape[2] != 1:
            raise ValueError("the decode cache holds decode steps only (one token per row); prefill runs without it")
        if not self.is_initialized:
            self.lazy_initialization(key_states, value_states)
        pos = self.cache.pos.view(-1, 1, 1, 1)
        self.keys.scatter_(2, pos.expand(-1, key_states.shape[1], 1, key_states.shape[3]), key_states)
        self.values.scatter_(2, pos.expand(-1, value_states.shape[1], 1, value_states.shape[3]), value_states)
        return self.keys, self.values

    def get_seq_length(self) -> int:
        return self.cache.cap

    def get_max_length(self) -> int:
        return self.cache.cap

    def get_mask_sizes(self, query_length: int):
        return self.cache.cap, 0

    def reset(self) -> None:
        if self.is_initialized:
            self.keys.zero_()
            self.values.zero_()


def row_cache(num_layers: int, batch: int, cap: int, device):
    """The decode cache: an instance of :func:`_row_cache_class` (built on first use, so importing
    this module does not import transformers)."""
    return _row_cache_class()(num_layers, batch, cap, device)


@functools.lru_cache(maxsize=1)
def _row_cache_class():
    from transformers.cache_utils import Cache

    class _RowCacheImpl(Cache):
        """Static per-row decode cache: ``pos[b]`` is the slot (= position) row ``b`` writes next."""

        def __init__(self, num_layers: int, batch: int, cap: int, device):
            self.batch, self.cap = int(batch), int(cap)
            self.pos = torch.zeros(batch, dtype=torch.long, device=device)
            super().__init__(layers=[_RowLayer(self) for _ in range(num_layers)])

        def update(self, key_states, value_states, layer_idx, *args, **kwargs):
            return self.layers[layer_idx].update(key_states, value_states)

        def get_seq_length(self, layer_idx: int = 0) -> int:
            return self.cap

        def load_row(self, row: int, prefill_cache, length: int) -> None:
            """Copy one sample's prefill cache (batch 1, possibly trimmed to a sliding window)
            into row ``row``, left-aligned: its last kept token lands at slot ``length - 1``."""
            for layer, src in zip(self.layers, prefill_cache.layers):
                k, v = src.keys, src.values
                if not layer.is_initialized:
                    layer.allocate(k.shape[1], k.shape[-1], v.shape[-1], k.dtype, k.device)
                n = k.shape[2]
                layer.keys[row, :, length - n:length].copy_(k[0])
                layer.values[row, :, length - n:length].copy_(v[0])

    return _RowCacheImpl


class BatchedGreedy:
    """Greedy generation: per-sample prefill, then ``batch_size`` rows decoded together.

    Args:
        model: a causal LM (any transformers 5.x model whose attention modules take a prepared
            4-D mask and call ``past_key_values.update(k, v, layer_idx)``).
        batch_size: decode rows (a short last batch is padded with idle rows: one graph per shape).
        cuda_graphs: capture and replay the decode step on CUDA (ignored on CPU).
        check_every: decode steps between looks at the generated tokens (one host sync each).
        cap_multiple: the cache length is rounded up to a multiple of this (fewer graph shapes).
        on_prefill: called as ``on_prefill(index)`` right after sample ``index``'s prefill (the
            model's ``last_stats`` then describe that sample).
        refill: continuous batching: a row whose sample has finished (EOS or its own token
            budget, seen at the next check) takes the next sample at once (its prefill, then
            decoding from its own position), instead of idling until the batch's longest row
            ends. Each row still depends only on its own prompt, so the tokens are the same.
        decode_attention: ``"sdpa"`` or ``"grouped"`` (:func:`tsa_bench.hf.attention.grouped_decode_attention`,
            models loaded with the ``"tsa"`` attention only); None leaves the model as it is.
    """

    def __init__(self, model, *, batch_size: int = 16, cuda_graphs: bool = True, check_every: int = 8,
                 cap_multiple: int = 256, eos_ids: Optional[Sequence[int]] = None,
                 on_prefill: Optional[Callable[[int], None]] = None, decode_attention: Optional[str] = None,
                 refill: bool = False):
        if batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {batch_size}")
        if check_every < 1:
            raise ValueError(f"check_every must be >= 1, got {check_every}")
        self.model = model
        self.refill = bool(refill)
        self.batch_size = int(batch_size)
        self.check_every = int(check_every)
        self.cap_multiple = int(cap_multiple)
        self.device = next(model.parameters()).device
        self.use_graphs = bool(cuda_graphs) and self.device.type == "cuda"
        self.eos = tuple(eos_ids) if eos_ids is not None else eos_ids_of(model)
        self.on_prefill = on_prefill
        self.layer_types = _layer_types(model)
        self.window = _sliding_window(model)
        cfg = model.config.get_text_config() if hasattr(model.config, "get_text_config") else model.config
        self.num_layers = int(cfg.num_hidden_layers)
        self.cache_kw = cache_kwarg(model)
        self.decode_attention = decode_attention or "sdpa"
        if decode_attention is not None:
            impl = getattr(model.config, "_attn_implementation", None)
            if decode_attention != "sdpa" and impl != "tsa":
                raise ValueError(f"decode_attention={decode_attention!r} needs the model loaded with "
                                 f"attn_implementation='tsa' (tsa_bench.hf.load_model), not {impl!r}")
            from tsa_bench.hf.attention import set_decode_attention
            set_decode_attention(model, decode_attention)
        self._state: Optional[_DecodeState] = None
        self.graph_captures = 0
        # the smallest cache length a batch gets: a runner that knows the longest prompt and
        # generation of a run sets it, so every batch shares one cache shape (one graph) instead
        # of re-capturing whenever a batch's longest request crosses a multiple of cap_multiple
        self.min_cap = 0

    # ------------------------------------------------------------------ public
    def generate(self, prompts: Sequence[Sequence[int]], max_new_tokens: Sequence[int]) -> List[Generation]:
        """Greedy continuations of ``prompts`` (lists of token ids), in input order."""
        if len(prompts) != len(max_new_tokens):
            raise ValueError("prompts and max_new_tokens differ in length")
        for m in max_new_tokens:
            if int(m) < 1:
                raise ValueError(f"max_new_tokens must be >= 1, got {m}")
        for p in prompts:
            if len(p) < 1:
                raise ValueError("empty prompt")
        if self.refill:
            return self._run_stream(list(prompts), [int(m) for m in max_new_tokens])
        out: List[Optional[Generation]] = [None] * len(prompts)
        for start in range(0, len(prompts), self.batch_size):
            idx = list(range(start, min(start + self.batch_size, len(prompts))))
            for i, g in zip(idx, self._run_batch([prompts[i] for i in idx], [int(max_new_tokens[i]) for i in idx],
                                                 idx)):
                out[i] = g
        return out  # type: ignore[return-value]

    def warm_prefill(self, prompts: Sequence[Sequence[int]]) -> None:
        """Run the prefill of each prompt and discard it (no decode): compiles the kernels a
        prompt length needs (Triton specialises integer arguments by divisibility, so lengths
        of different residues compile different variants) before anything is timed."""
        with torch.inference_mode():
            for p in prompts:
                if len(p) < 1:
                    raise ValueError("empty prompt")
                self._prefill(p)
        self._sync()

    # ------------------------------------------------------------------ internals
    def _sync(self):
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)

    def _prefill(self, ids: Sequence[int]):
        x = torch.tensor([list(ids)], dtype=torch.long, device=self.device)
        out = self.model(input_ids=x, use_cache=True, logits_to_keep=1)
        return out.logits[0, -1].argmax(-1), _returned_cache(out)

    def _state_for(self, cap: int) -> "_DecodeState":
        st = self._state
        if st is None or st.cap != cap:
            self._state = None                      # free the old buffers (and graph) first
            if self.device.type == "cuda":
                torch.cuda.empty_cache()
            st = self._state = _DecodeState(self, cap)
        return st

    def _cap_for(self, prompts: List[Sequence[int]], max_new: List[int], margin: int) -> int:
        """Cache length for these requests: longest prompt + longest generation + ``margin``
        (at least ``min_cap``), rounded up to a multiple of ``cap_multiple``."""
        need = max(max(len(p) for p in prompts) + max(max_new) + margin, int(self.min_cap))
        return int(math.ceil(need / self.cap_multiple) * self.cap_multiple)

    def _run_batch(self, prompts: List[Sequence[int]], max_new: List[int], indices: List[int]) -> List[Generation]:
        # every row runs as many steps as the longest request (plus the capture's warm-up steps)
        st = self._state_for(self._cap_for(prompts, max_new, 3))
        n_real = len(prompts)
        first = []
        prefill_s = []
        with torch.inference_mode():
            for row, (p, i) in enumerate(zip(prompts, indices)):
                self._sync()
                t0 = time.perf_counter()
                tok, pkv = self._prefill(p)
                st.cache.load_row(row, pkv, len(p))
                del pkv
                first.append(tok)
                self._sync()
                prefill_s.append(time.perf_counter() - t0)
                if self.on_prefill is not None:
                    self.on_prefill(i)
            t0 = time.perf_counter()
            gen = st.decode(first, [len(p) for p in prompts], max_new)
            self._sync()
            decode_s = time.perf_counter() - t0
        results = []
        for row in range(n_real):
            toks = gen[row][: max_new[row]]
            for j, t in enumerate(toks):
                if t in self.eos:
                    toks = toks[: j + 1]
                    break
            results.append(Generation(tokens=toks, prefill_s=prefill_s[row], decode_s=decode_s / n_real))
        return results


    def _run_stream(self, prompts: List[Sequence[int]], max_new: List[int]) -> List[Generation]:
        """Continuous batching (``refill=True``): rows are refilled as their samples finish."""
        from collections import deque

        n = len(prompts)
        if n == 0:
            return []
        B, k = self.batch_size, self.check_every
        # a finished row keeps stepping until the next check: room for check_every more slots
        st = self._state_for(self._cap_for(prompts, max_new, k + 3))
        st._ensure_out(max(max_new) + k + 1)
        queue = deque(range(n))
        sample_of: List[Optional[int]] = [None] * B
        produced = [0] * B                   # tokens row r's sample has (first token included)
        prefill_s, decode_s = [0.0] * n, [0.0] * n
        done: List[Optional[Generation]] = [None] * n

        def fill(r: int) -> None:
            i = queue.popleft()
            self._sync()
            t0 = time.perf_counter()
            tok, pkv = self._prefill(prompts[i])
            st.cache.load_row(r, pkv, len(prompts[i]))
            del pkv
            st.cache.pos[r] = len(prompts[i])
            st.tok[r, 0] = tok
            st.out[r].zero_()
            st.out[r, 0] = tok
            st.rowstep[r] = 1
            self._sync()
            prefill_s[i] = time.perf_counter() - t0
            sample_of[r], produced[r] = i, 1
            if self.on_prefill is not None:
                self.on_prefill(i)

        def idle(r: int) -> None:            # nothing left to take: step harmlessly from slot 0
            st.cache.pos[r] = 0
            st.rowstep[r] = 0
            st.tok[r, 0] = 0
            sample_of[r] = None

        with torch.inference_mode():
            st.out.zero_()
            st.cache.pos.zero_()
            st.rowstep.zero_()
            st.tok.zero_()
            for r in range(B):
                fill(r) if queue else idle(r)
            if self.use_graphs and st.graph is None:
                st._capture()
            while any(i is not None for i in sample_of):
                self._sync()
                t0 = time.perf_counter()
                for _ in range(k):
                    if st.graph is not None:
                        st.graph.replay()
                    else:
                        st._step()
                self._sync()
                dt = time.perf_counter() - t0
                rows = [r for r in range(B) if sample_of[r] is not None]
                for r in rows:
                    decode_s[sample_of[r]] += dt / len(rows)
                    produced[r] += k
                tokens = st.out[rows].tolist()
                for r, row in zip(rows, tokens):
                    i = sample_of[r]
                    toks = row[: min(produced[r], max_new[i])]
                    cut = next((j for j, t in enumerate(toks) if t in self.eos), None)
                    if cut is None and len(toks) < max_new[i]:
                        continue
                    toks = toks if cut is None else toks[: cut + 1]
                    done[i] = Generation(tokens=toks, prefill_s=prefill_s[i], decode_s=decode_s[i])
                    fill(r) if queue else idle(r)
        return done  # type: ignore[return-value]


class _DecodeState:
    """Buffers (and on CUDA the captured graph) of one ``(batch, cap)`` decode shape."""

    def __init__(self, engine: BatchedGreedy, cap: int):
        self.engine = engine
        self.cap = cap
        B, dev = engine.batch_size, engine.device
        self.cache = row_cache(engine.num_layers, B, cap, dev)
        self.tok = torch.zeros((B, 1), dtype=torch.long, device=dev)
        self.slots = torch.arange(cap, device=dev).view(1, cap)
        self.max_steps = 0
        self.out = None
        self.rowstep = torch.zeros(B, dtype=torch.long, device=dev)    # next ``out`` column, per row
        self.graph = None

    def _masks(self):
        pos = self.cache.pos.view(-1, 1)
        seen = self.slots <= pos                                     # [B, cap]: causal, own row
        full = seen.view(seen.shape[0], 1, 1, -1)
        types = set(self.engine.layer_types or ["full_attention"])
        masks = {}
        for t in types:
            if t == "sliding_attention":            # transformers' rule: kv > q - window
                window = (self.slots > pos - self.engine.window) & seen
                masks[t] = window.view(seen.shape[0], 1, 1, -1)
            else:
                masks[t] = full
        # hybrid models (Gemma 3) take one prepared mask per layer type, the others a tensor
        return masks if len(masks) > 1 else next(iter(masks.values()))

    def _step(self) -> None:
        """One decode step for every row: feed ``tok`` at ``pos``, write argmax into ``out``."""
        model = self.engine.model
        out = model(input_ids=self.tok, attention_mask=self._masks(), position_ids=self.cache.pos.view(-1, 1),
                    use_cache=True, **{self.engine.cache_kw: self.cache})
        nxt = out.logits[:, -1].argmax(-1)
        self.out.scatter_(1, self.rowstep.view(-1, 1), nxt.view(-1, 1))
        self.tok.copy_(nxt.view(-1, 1))
        self.cache.pos.add_(1)
        self.rowstep.add_(1).clamp_(max=self.out.shape[1] - 1)     # a finished row idles in the last column

    def _ensure_out(self, steps: int) -> None:
        B = self.engine.batch_size
        if self.out is None or self.out.shape[1] < steps:
            self.out = torch.zeros((B, max(steps, 1)), dtype=torch.long, device=self.engine.device)
            self.graph = None                               # the graph writes into ``out``

    def _capture(self) -> None:
        with torch.cuda.device(self.engine.device):        # the capture stream is the current device's
            self._capture_on_device()

    def _capture_on_device(self) -> None:
        s = torch.cuda.Stream(self.engine.device)
        s.wait_stream(torch.cuda.current_stream(self.engine.device))
        saved = (self.cache.pos.clone(), self.rowstep.clone(), self.tok.clone())
        with torch.cuda.stream(s):
            for _ in range(2):                              # warm-up outside the graph
                self._step()
        torch.cuda.current_stream(self.engine.device).wait_stream(s)
        graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(graph):
            self._step()
        self.cache.pos.copy_(saved[0])
        self.rowstep.copy_(saved[1])
        self.tok.copy_(saved[2])
        self.graph = graph
        self.engine.graph_captures += 1

    def decode(self, first: List[torch.Tensor], lengths: List[int], max_new: List[int]) -> List[List[int]]:
        eng = self.engine
        B, n = eng.batch_size, len(first)
        steps = max(max_new)
        self._ensure_out(steps + eng.check_every)
        self.out.zero_()
        pos = [lengths[r] if r < n else 0 for r in range(B)]
        self.cache.pos.copy_(torch.tensor(pos, dtype=torch.long))
        firsts = torch.stack(first) if n == B else torch.cat([torch.stack(first),
                                                               torch.zeros(B - n, dtype=torch.long,
                                                                           device=eng.device)])
        self.tok.copy_(firsts.view(-1, 1))
        self.out[:, 0].copy_(firsts)
        self.rowstep.fill_(1)
        if eng.use_graphs and self.graph is None:
            self._capture()
        done_upto = 1
        eos = torch.tensor(eng.eos, dtype=torch.long, device=eng.device) if eng.eos else None
        limit = torch.tensor(max_new + [0] * (B - n), device=eng.device)
        while done_upto < steps:
            k = min(eng.check_every, steps - done_upto)
            for _ in range(k):
                if self.graph is not None:
                    self.graph.replay()
                else:
                    self._step()
            done_upto += k
            # a row is finished once it has produced an EOS or its own number of tokens
            produced = self.out[:n, :done_upto]
            finished = limit[:n] <= done_upto
            if eos is not None:
                finished |= torch.isin(produced, eos).any(dim=1)
            if bool(finished.all()):
                break
        return self.out[:n, :done_upto].tolist()


def kv_bytes_per_row(model, cap: int) -> int:
    """Bytes of one decode row's static cache: layers x (K + V) x KV heads x head dim x cap."""
    cfg = model.config.get_text_config() if hasattr(model.config, "get_text_config") else model.config
    heads = int(getattr(cfg, "num_key_value_heads", None) or cfg.num_attention_heads)
    dim = int(getattr(cfg, "head_dim", None) or cfg.hidden_size // cfg.num_attention_heads)
    size = next(model.parameters()).element_size()
    return int(cfg.num_hidden_layers) * 2 * heads * dim * int(cap) * size


def auto_batch_size(model, cap: int, requested="auto", most: int = 64, share: float = 0.3) -> int:
    """``requested`` as an int, or for ``"auto"``: as many rows (at most ``most``) as fit in
    ``share`` of the GPU's free memory at cache length ``cap``; 4 on CPU."""
    if str(requested) != "auto":
        try:
            b = int(requested)
        except ValueError:
            raise ValueError(f"batch size must be a positive integer or 'auto', got {requested!r}") from None
        if b < 1:
            raise ValueError(f"batch size must be >= 1, got {b}")
        return b
    device = next(model.parameters()).device
    if device.type != "cuda":
        return 4
    free, _ = torch.cuda.mem_get_info(device)
    return max(1, min(most, int(free * share // max(1, kv_bytes_per_row(model, cap)))))


def make_generate_fn(engine: BatchedGreedy):
    """Adapter to the runner's one-sample ``generate_fn(model, ids, max_new, device)``."""

    def fn(model, input_ids, max_new_tokens, device):
        g = engine.generate([input_ids], [max_new_tokens])[0]
        return g.tokens, g.seconds

    return fn
