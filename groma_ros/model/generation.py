"""The one greedy decoding loop (``GromaForConditionalGeneration.generate_greedy`` and the engine both run it),
on top of a prefilled KV cache, with per-token streaming and cooperative cancel.

Model-agnostic on purpose: the loop only sees "logits of the next position" and a ``step(token_id)``
callable that feeds one token through the LLM (updating its cache) and returns the following logits.
That keeps it testable without a model and lets the engine own the cache (the per-frame prefix must
never be mutated by a query). The stop token ends the loop and is not fed; ``token_ids`` leaves it out.

Greedy = ``argmax`` (first index on ties), as ``generate(do_sample=False)`` with no logits processors.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field

import torch

StepFn = Callable[[int], torch.Tensor]


@dataclass
class GenerationOutput:
    """What the loop produced. ``token_ids`` excludes the stop token."""

    token_ids: list[int] = field(default_factory=list)
    token_probs: list[float] = field(default_factory=list)  # softmax probability of each kept token when chosen
    stopped_on_eos: bool = False
    canceled: bool = False
    step_logits: list[torch.Tensor] = field(default_factory=list)  # only with keep_logits=True
    decode_ms: float = 0.0

    @property
    def num_generated(self) -> int:
        """Tokens the model produced, counting the stop token (``completion_tokens``)."""
        return len(self.token_ids) + int(self.stopped_on_eos)


def greedy_decode(
    first_logits: torch.Tensor,
    step: StepFn,
    *,
    eos_token_id: int,
    max_new_tokens: int,
    on_token: Callable[[int], None] | None = None,
    should_cancel: Callable[[], bool] | None = None,
    keep_logits: bool = False,
) -> GenerationOutput:
    """Decode greedily from ``first_logits`` (the last prefill position, shape ``[V]``).

    ``should_cancel`` is polled before every token (so a cancel costs at most one LLM step);
    ``on_token`` is called with each kept token id right after it is chosen. ``step`` is not called for a
    token that ends generation (stop token or ``max_new_tokens`` reached), so no forward pass is wasted.
    """
    out = GenerationOutput()
    t0 = time.perf_counter()
    logits = first_logits
    while len(out.token_ids) < max_new_tokens:
        if should_cancel is not None and should_cancel():
            out.canceled = True
            break
        if keep_logits:
            out.step_logits.append(logits.detach().float().cpu())
        flat = logits.reshape(-1)
        token = int(torch.argmax(flat))
        if token == eos_token_id:
            out.stopped_on_eos = True
            break
        out.token_ids.append(token)
        out.token_probs.append(float(torch.exp(flat[token].float() - torch.logsumexp(flat.float(), 0))))
        if on_token is not None:
            on_token(token)
        if len(out.token_ids) >= max_new_tokens:
            break
        logits = step(token)
    out.decode_ms = (time.perf_counter() - t0) * 1000.0
    return out
