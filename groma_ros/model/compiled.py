"""Perception and the prompt-prefix prefill as compiled, static-shape graphs (CUDA graphs on a GPU).

Eager perception of the 7B on an H200 is launch-bound (vision + proposer + region encoder: ~49 ms of
kernels that need a few ms of arithmetic), like eager decoding was. ``GromaForConditionalGeneration.
compile_perception()`` switches three steps to ``torch.compile`` graphs with fixed shapes, each replayed as one
CUDA graph with ``mode="reduce-overhead"``:

- the image graph: DINOv2 -> image bridge -> proposer -> region-map fusion, for one image size (the only
  shape); NMS stays eager (a few hundred boxes, data-dependent, on the CPU);
- the region graph: region tokens for K boxes, with K padded up to a bucket (8, 16, 32, 64, max_region_num) by
  repeating the first box; every box is encoded on its own, so the padding never changes the real rows;
- the prefix prefill: the LLM over the prompt prefix, padded at the end to a multiple of 64 tokens into a
  preallocated static KV buffer; causal attention keeps the real positions blind to the padding, and their K/V
  are copied out into the ``DynamicCache`` the engine forks per query (``prefill_prefix``).

Graph outputs live in buffers the next replay overwrites, so everything handed out is cloned. Stage timings:
inside a graph the proposer and region fusion run as plain ``forward`` calls (module hooks would be traced and
invalidate the graph), so the engine's per-stage clock attributes the whole image graph to ``vision_ms``.
Each new shape (image size, region bucket, prefix bucket) compiles once, tens of seconds on a GPU;
``warm_up`` pays the common ones up front.
"""

from __future__ import annotations

import torch
from transformers import DynamicCache, StaticCache

PREFIX_BUCKET = 64  # prefix prefills are padded to a multiple of this many tokens


def region_buckets(max_regions: int) -> tuple[int, ...]:
    return tuple(sorted({b for b in (8, 16, 32, 64) if b < max_regions} | {max_regions}))


class CompiledPerception:
    """The compiled graphs of one model (see the module docstring); the model calls into it when enabled."""

    def __init__(self, model, *, mode: str | None = "reduce-overhead", backend: str = "inductor",
                 max_prefix_tokens: int | None = None) -> None:
        self.model = model
        cfg = model.config
        self.buckets = region_buckets(cfg.max_region_num)
        # prefix = system text + image tokens + two ids per region; the text part is far below 256 tokens
        longest = max_prefix_tokens or cfg.num_image_tokens + 2 * cfg.max_region_num + 256
        self.max_prefix = min(-(-longest // PREFIX_BUCKET) * PREFIX_BUCKET, cfg.llm_cfg.max_position_embeddings)
        # one compiled graph per shape, all on the same three functions: torch's default of 8 graphs per
        # function would silently fall back to eager after the 8th prefix length bucket
        shapes = len(self.buckets) + self.max_prefix // PREFIX_BUCKET + 1
        torch._dynamo.config.recompile_limit = max(torch._dynamo.config.recompile_limit, 2 * shapes)
        options = {"fullgraph": True, "dynamic": False, "backend": backend}
        if backend == "inductor" and mode is not None:
            options["mode"] = mode
        self._image = torch.compile(self._image_graph, **options)
        self._regions = torch.compile(self._region_graph, **options)
        self._prefill = torch.compile(self._prefill_graph, **options)
        self._kv: StaticCache | None = None

    # ------------------------------------------------------------------------------------------ graphs
    def _image_graph(self, pixels: torch.Tensor):
        model = self.model
        grid = model.config.grid_size
        states = model.perceiver.vis_encoder.hidden_states_all(pixels)
        image_tokens = model.img_txt_bridge(model.merge_image_features(states[-1]))
        source, _ = model.perceiver.proposer_source(states, grid)
        proposals = model.perceiver.ddetr_transformer.forward(source)
        encoder = model.region_encoder
        maps = encoder.mlvl_fuse.forward(encoder.grid_maps(states, grid), encoder.level_sizes,
                                        channels_last=encoder._fast())
        return (image_tokens, proposals.boxes, proposals.scores, *maps)

    def _region_graph(self, maps: tuple[torch.Tensor, ...], boxes: torch.Tensor) -> torch.Tensor:
        return self.model.region_encoder(list(maps), boxes)

    def _prefill_graph(self, embeds: torch.Tensor, positions: torch.Tensor) -> None:
        self.model.llm.model(inputs_embeds=embeds, past_key_values=self._kv, cache_position=positions,
                             position_ids=positions[None], use_cache=True)

    # ------------------------------------------------------------------------------------------ entry points
    def encode_image(self, pixels: torch.Tensor):
        from .modeling_groma import VisionOutput

        outputs = [t.clone() for t in self._image(pixels)]
        return VisionOutput(outputs[0], outputs[1], outputs[2], outputs[3:])

    def encode_regions(self, maps: list[torch.Tensor], boxes: torch.Tensor) -> torch.Tensor | None:
        """Region tokens, or None when K is above the largest bucket (the caller runs eagerly)."""
        k = len(boxes)
        bucket = next((b for b in self.buckets if b >= k), None)
        if bucket is None or k == 0:
            return None
        padded = torch.cat([boxes, boxes[:1].expand(bucket - k, -1)]) if bucket > k else boxes
        return self._regions(tuple(maps), padded.contiguous())[:k].clone()

    @torch.inference_mode()  # the static buffer is made and overwritten here only: always as inference tensors
    def prefill_prefix(self, embeds: torch.Tensor) -> DynamicCache | None:
        """The prefix's KV as a fresh ``DynamicCache``, or None when it exceeds the static buffer."""
        model = self.model
        n = embeds.shape[1]
        length = -(-n // PREFIX_BUCKET) * PREFIX_BUCKET
        if embeds.shape[0] != 1 or length > self.max_prefix:
            return None
        if self._kv is None:
            llm = model.llm.config
            self._kv = StaticCache(config=llm, max_cache_len=self.max_prefix)
            head_dim = getattr(llm, "head_dim", None) or llm.hidden_size // llm.num_attention_heads
            self._kv.early_initialization(1, llm.num_key_value_heads, head_dim, embeds.dtype, embeds.device)
        for layer in self._kv.layers:  # writes start at 0; stale entries past the prefix are masked (causal)
            layer.cumulative_length.zero_()
        padded = torch.nn.functional.pad(embeds, (0, 0, 0, length - n))
        self._prefill(padded, torch.arange(length, device=embeds.device))
        return DynamicCache(ddp_cache_data=[(layer.keys[:, :, :n].clone(), layer.values[:, :, :n].clone())
                                            for layer in self._kv.layers])

    def warm_up(self, regions: tuple[int, ...] | None = None, prefix_tokens: tuple[int, ...] = ()) -> None:
        """Compile (and capture) the image graph, the region buckets and the given prefix lengths now."""
        model = self.model
        size = model.config.image_size
        pixels = torch.zeros(1, 3, size, size, device=model.device, dtype=model.dtype)
        vision = self.encode_image(pixels)
        boxes = torch.tensor([[0.5, 0.5, 0.5, 0.5]], device=model.device)
        for bucket in regions or self.buckets:
            self.encode_regions(vision.region_maps, boxes.expand(bucket, -1))
        hidden = model.config.llm_cfg.hidden_size
        for n in prefix_tokens:
            self.prefill_prefix(torch.zeros(1, n, hidden, device=model.device, dtype=model.dtype))
