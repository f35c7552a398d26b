"""The LLM passes of one query on top of a frame's prefilled prefix: query prefill, then one token per step.

Three interchangeable decoders (``GromaEngine(decode=...)``):

* ``dynamic`` (default): a copy-free fork of the prefix's ``DynamicCache``; each step grows every layer's K/V
  by ``torch.cat``. Simplest and exact; fine on the CPU, where the matmuls dominate.
* ``static``: one preallocated KV buffer per engine (``transformers.StaticCache``, ``max_position_embeddings``
  long), the prefix copied in at the start of each query. Why: on a GPU the growing cache reallocates 2 x layers
  tensors per token, and the caching allocator's churn costs more than the 7B's weights take to read.
* ``compiled``: ``static`` with the decode step under ``torch.compile(mode="reduce-overhead")``: one CUDA graph
  per token instead of ~700 kernel launches from Python (the launch overhead, not HBM, bounds eager decode of a
  7B at batch 1). Query prefills of up to ``PREFILL_BUCKET`` tokens are padded to that length and compiled too
  (a second graph): the padding sits after the query, so causal attention never lets a real token see it, and
  the decode overwrites its KV slots one by one while the mask hides the rest. The first query pays the
  compilation (tens of seconds); ``GromaEngine.warm_up`` (the node calls it at activation) absorbs it.

All three give the same tokens (tests compare logits); queries are serialized by the engine, so one static
buffer per engine suffices. ``auto`` (the default) is ``static`` on an accelerator and ``dynamic`` on the CPU;
``compiled`` is never chosen for you because of its compilation time.
"""

from __future__ import annotations

import torch
from transformers import DynamicCache, StaticCache

from .modes import DECODE_MODES
from .perception import fork_cache

PREFILL_BUCKET = 32  # query prefills up to this many tokens run as one compiled graph (REC/caption prompts: ~10-20)


class DynamicDecoder:
    """Fork of the prefix cache that grows per token (the original's ``generate`` behaviour)."""

    def __init__(self, model) -> None:
        self.model = model
        self.cache: DynamicCache | None = None

    def begin(self, prefix: DynamicCache, prefix_len: int) -> None:
        self.cache = fork_cache(prefix)

    def prefill(self, embeds: torch.Tensor) -> torch.Tensor:
        """Logits [V] after the query's embeddings [1, n, H]."""
        out = self.model.llm.model(inputs_embeds=embeds, past_key_values=self.cache, use_cache=True)
        return self.model.lm_logits(out.last_hidden_state[:, -1])[0]

    def step(self, token: int) -> torch.Tensor:
        """Feed one token; logits [V] of the next."""
        emb = self.model.embed_tokens(torch.tensor([[token]], device=self.model.device))
        out = self.model.llm.model(inputs_embeds=emb, past_key_values=self.cache, use_cache=True)
        return self.model.lm_logits(out.last_hidden_state[:, -1])[0]

    def snapshot(self) -> tuple[DynamicCache, int]:
        """The KV this query grew (its prefix + every token fed) and its length, for a conversation to keep.
        Handed over without a copy: ``end`` drops the decoder's reference and nothing else writes to it."""
        return self.cache, self.cache.get_seq_length()

    def end(self) -> None:
        self.cache = None


class StaticDecoder:
    """Preallocated KV buffer reused by every query; optionally the decode step compiled to a CUDA graph."""

    def __init__(self, model, *, compiled: bool = False, max_len: int | None = None) -> None:
        self.model = model
        self.max_len = int(max_len or model.config.llm_cfg.max_position_embeddings)
        self.cache: StaticCache | None = None
        self.pos = 0
        self.compiled = compiled
        self._step_fn = self._step_impl
        self._prefill_fn = None
        if compiled:
            self._step_fn = torch.compile(self._step_impl, mode="reduce-overhead", dynamic=False)
            self._prefill_fn = torch.compile(self._forward, mode="reduce-overhead", dynamic=False)

    def _buffers(self, prefix: DynamicCache) -> StaticCache:
        if self.cache is None:
            cache = StaticCache(config=self.model.llm.config, max_cache_len=self.max_len)
            for layer, src in zip(cache.layers, prefix.layers, strict=True):
                layer.lazy_initialization(src.keys, src.values)  # zeros of [1, heads, max_len, head_dim]
            self.cache = cache
        return self.cache

    def begin(self, prefix: DynamicCache, prefix_len: int) -> None:
        if prefix_len >= self.max_len:
            raise ValueError(f"prefix of {prefix_len} tokens does not fit the {self.max_len}-token KV buffer")
        cache = self._buffers(prefix)
        for layer, src in zip(cache.layers, prefix.layers, strict=True):
            layer.keys[:, :, :prefix_len].copy_(src.keys)
            layer.values[:, :, :prefix_len].copy_(src.values)
            layer.cumulative_length.fill_(prefix_len)  # positions beyond are masked (causal on cache_position)
        self.pos = prefix_len

    def _forward(self, embeds: torch.Tensor, cache_position: torch.Tensor,
                 last: torch.Tensor | None = None) -> torch.Tensor:
        """Logits [V] at position ``last`` (a 1-element index tensor; default the final one) of ``embeds``."""
        out = self.model.llm.model(inputs_embeds=embeds, past_key_values=self.cache, cache_position=cache_position,
                                   position_ids=cache_position[None], use_cache=True)
        hidden = out.last_hidden_state[0]
        return self.model.lm_logits(hidden[-1:] if last is None else hidden.index_select(0, last))[0]

    def prefill(self, embeds: torch.Tensor) -> torch.Tensor:
        n, device = embeds.shape[1], embeds.device
        if self.pos + n > self.max_len:
            raise ValueError(f"{self.pos + n} tokens exceed the {self.max_len}-token KV buffer")
        start = self.pos
        self.pos += n
        if self._prefill_fn is None or n > PREFILL_BUCKET or start + PREFILL_BUCKET > self.max_len:
            return self._forward(embeds, torch.arange(start, start + n, device=device))
        padded = torch.nn.functional.pad(embeds, (0, 0, 0, PREFILL_BUCKET - n))
        logits = self._prefill_fn(padded, torch.arange(start, start + PREFILL_BUCKET, device=device),
                                  torch.tensor([n - 1], device=device)).clone()
        for layer in self.cache.layers:  # the padding's KV slots are free again: the next token goes at pos
            layer.cumulative_length.fill_(self.pos)
        return logits

    def _step_impl(self, token: torch.Tensor, cache_position: torch.Tensor) -> torch.Tensor:
        return self._forward(self.model.embed_tokens(token), cache_position)

    def step(self, token: int) -> torch.Tensor:
        if self.pos >= self.max_len:
            raise ValueError(f"the {self.max_len}-token KV buffer is full")
        device = self.model.device
        logits = self._step_fn(torch.tensor([[token]], device=device), torch.tensor([self.pos], device=device))
        self.pos += 1
        return logits.clone() if self.compiled else logits  # a CUDA graph's output is overwritten by the next step

    def snapshot(self) -> tuple[DynamicCache, int]:
        """A copy of the filled part of the buffer (the next query overwrites the buffer) and its length."""
        n = self.pos
        layers = [(layer.keys[:, :, :n].clone(), layer.values[:, :, :n].clone()) for layer in self.cache.layers]
        return DynamicCache(ddp_cache_data=layers), n

    def end(self) -> None:
        pass  # the buffer stays for the next query


def make_decoder(model, mode: str) -> DynamicDecoder | StaticDecoder:
    if mode == "auto":
        mode = "dynamic" if model.device.type == "cpu" else "static"
    if mode == "dynamic":
        return DynamicDecoder(model)
    if mode in ("static", "compiled"):
        return StaticDecoder(model, compiled=mode == "compiled")
    raise ValueError(f"decode must be one of {', '.join(DECODE_MODES)}; got {mode!r}")
