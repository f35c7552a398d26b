"""Groma (grounded multimodal LLM) in plain PyTorch on transformers 5.x, loading the released checkpoints.

Pipeline (original ``GromaModel.forward``): DINOv2 hidden states -> (a) 2x2-merged image tokens through
``img_txt_bridge``, (b) Deformable-DETR proposals with fused objectness, (c) NMS-selected regions encoded by
the multi-level RoI encoder -> LLaMA over text, image and region embeddings;
logits = [lm_head | extra_lm_head].

The work is split into steps so an engine can cache per-image results and drive the LLM itself:
``encode_image`` -> ``select_regions`` -> ``encode_regions`` -> ``expand_input_ids``
-> ``build_inputs_embeds`` -> ``llm.model`` (with a ``DynamicCache``) -> ``lm_logits``.
``forward`` / ``generate_greedy`` chain them.
Region order is deterministic (descending score); the original shuffled it with an unseeded ``randperm``,
so every entry point takes an explicit ``order`` (or explicit region boxes) to reproduce a given run.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import torch  # noqa: E402
from torch import nn  # noqa: E402
from transformers import DynamicCache, LlamaForCausalLM  # noqa: E402

from .configuration_groma import GromaConfig  # noqa: E402
from .errors import ModelOutputError  # noqa: E402
from .generation import greedy_decode  # noqa: E402
from .ops import box_iou, cxcywh_to_xyxy, first_argmax, nms  # noqa: E402
from .proposer import GromaPerceiver  # noqa: E402
from .region_encoder import GromaRegionEncoder  # noqa: E402
from .vision import GromaDinov2Model  # noqa: E402


@dataclass
class VisionOutput:
    """Per-image results of ``encode_image`` (batch first). Reusable for any number of region sets/prompts."""

    image_tokens: torch.Tensor  # [B, N_img, H] after img_txt_bridge
    proposal_boxes: torch.Tensor  # [B, Q, 4] normalized cx, cy, w, h (last decoder layer)
    proposal_scores: torch.Tensor  # [B, Q] coco^0.4 * sa1b^0.6
    region_maps: list[torch.Tensor]  # fused multi-level maps for encode_regions, [B, D, s, s] x 3
    intermediates: dict[str, torch.Tensor] | None = None  # only with output_intermediates=True


@dataclass
class RegionSelection:
    """Regions of one image in final order: box i <-> token ``<r i>``."""

    boxes: torch.Tensor  # [K, 4] normalized cx, cy, w, h
    scores: torch.Tensor  # [K]
    from_user: torch.Tensor  # [K] bool: the box is one of the user boxes
    candidate_index: torch.Tensor  # [K] index into candidates (0..Q-1 proposals, Q.. user boxes)
    nms_keep: torch.Tensor  # [K0] NMS output (descending score), before ``order``
    refer_match: torch.Tensor  # [r] region index matched to each user box (argmax IoU, first max)


@dataclass
class ExpandedInput:
    """``expand_input_ids`` result."""

    input_ids: torch.Tensor  # [1, T'] LLM-side ids: <image> x N_img, <rk><region> pairs
    prompt_ids: torch.Tensor  # [1, T] caller ids after <refer_box> -> <rk> (what the original wrote in place)
    refer_rows: torch.Tensor  # [r] region rows feeding the <refer_feat> positions, in order


@dataclass
class GromaOutput:
    logits: torch.Tensor  # [1, T', V+N_new]
    inputs_embeds: torch.Tensor
    expanded: ExpandedInput
    selection: RegionSelection
    vision: VisionOutput
    region_tokens: torch.Tensor
    past_key_values: DynamicCache | None = None


@dataclass
class GreedyOutput:
    tokens: torch.Tensor  # [n_new]
    sequence: torch.Tensor  # prompt (after <refer_box> rewrite) + new tokens
    step_logits: torch.Tensor  # [n_new, V+N_new]
    prefill: GromaOutput = field(repr=False, default=None)


def check_finite_proposals(boxes: torch.Tensor, scores: torch.Tensor) -> None:
    """``ModelOutputError`` if any proposal score or box is NaN/inf (NMS and region indexing assume finite
    values; a NaN score never passes the threshold and the fallback then indexes past the end)."""
    bad_scores = int((~torch.isfinite(scores)).sum())
    bad_boxes = int((~torch.isfinite(boxes)).any(-1).sum())
    if bad_scores or bad_boxes:
        raise ModelOutputError(
            f"the region proposer produced non-finite values ({bad_scores} of {scores.numel()} scores, "
            f"{bad_boxes} of {len(boxes)} boxes NaN/inf): the weights or this device/dtype's kernels are broken"
        )


class GromaForConditionalGeneration(nn.Module):
    """The Groma network. Submodule names match the released checkpoint (mapping: ``checkpoint.py``)."""

    def __init__(self, config: GromaConfig):
        super().__init__()
        self.config = config
        vision_cfg, llm_cfg = config.vision_config, config.llm_cfg
        d, h = vision_cfg.hidden_size, llm_cfg.hidden_size
        self.perceiver = GromaPerceiver(GromaDinov2Model(vision_cfg), config.ddetr_config, d)
        self.llm = LlamaForCausalLM(llm_cfg)
        self.img_txt_bridge = nn.Sequential(nn.Linear(4 * d, h), nn.GELU(), nn.Linear(h, h))
        self.region_encoder = GromaRegionEncoder(config)
        self.extra_lm_head = nn.Linear(h, config.num_new_token, bias=False)
        self.new_input_embs = nn.Embedding(config.num_new_token, h)
        self.token_ids = config.token_ids
        self.compiled_perception = None  # set by compile_perception()

    # ---------------------------------------------------------------------------------------------- loading
    @classmethod
    def from_pretrained(
        cls,
        path: str | os.PathLike,
        dtype: torch.dtype | str = torch.float32,
        device: str | torch.device = "cpu",
        quantization: str | None = None,
        progress: Callable[[int], None] | None = None,
    ) -> GromaForConditionalGeneration:
        """Load a released (``pytorch_model.bin``, 4.32 names) or our (``model.safetensors``) checkpoint dir.

        Sharded checkpoints (``*.index.json``) work too. Weights go tensor by tensor from the mapped files
        into ``dtype`` (fp32/bf16/fp16) on ``device``, so peak memory is about the model in ``dtype``.
        ``quantization`` None/"none", "int8" or "int4": weight-only quantization of the LLM decoder linears
        (torchao; see ``quantization``). ``progress(nbytes)`` is called per tensor.
        Raises ``CheckpointError`` listing every missing/unexpected/mis-shaped key,
        ``CheckpointRefusedError`` for files that are more than plain tensors, ``CheckpointMemoryError``
        when the weights do not fit.
        """
        from .checkpoint import load_pretrained

        return load_pretrained(cls, Path(path), dtype=dtype, device=device, quantization=quantization,
                               progress=progress)

    def save_pretrained(self, path: str | os.PathLike, max_shard_bytes: int = 5 << 30) -> None:
        """Write ``config.json`` + safetensors (our naming, no alias keys; sharded with an index if large)."""
        from .checkpoint import save_pretrained

        save_pretrained(self, Path(path), max_shard_bytes=max_shard_bytes)

    @property
    def device(self) -> torch.device:
        return self.new_input_embs.weight.device

    @property
    def dtype(self) -> torch.dtype:
        return self.new_input_embs.weight.dtype

    # ----------------------------------------------------------------------------------------------- vision
    def merge_image_features(self, last_state: torch.Tensor) -> torch.Tensor:
        """Low-resolution LLM image features: each 2x2 patch block of the last DINOv2 state concatenated
        (original order: (0,0), (1,0), (0,1), (1,1)): [B, 1 + N, D] -> [B, N / 4, 4 D]."""
        grid = self.config.grid_size
        feats = last_state[:, 1:]
        b, _, d = feats.shape
        feats = feats.reshape(b, grid, grid, d)
        return torch.cat(
            [feats[:, 0::2, 0::2], feats[:, 1::2, 0::2], feats[:, 0::2, 1::2], feats[:, 1::2, 1::2]], dim=-1
        ).reshape(b, (grid // 2) ** 2, 4 * d)

    @torch.no_grad()
    def encode_image(self, pixel_values: torch.Tensor, output_intermediates: bool = False) -> VisionOutput:
        """Run DINOv2, the image bridge, the proposer and the region-map fusion for [B, 3, S, S] pixels."""
        grid = self.config.grid_size
        if (
            pixel_values.shape[-1] != self.config.image_size
            or pixel_values.shape[-2] != self.config.image_size
        ):
            raise ValueError(
                f"pixel_values must be {self.config.image_size}x{self.config.image_size}, "
                f"got {tuple(pixel_values.shape)}"
            )
        if self.compiled_perception is not None and not output_intermediates:
            return self.compiled_perception.encode_image(pixel_values.to(self.device, self.dtype))
        states = self.perceiver.vis_encoder.hidden_states_all(pixel_values.to(self.device))
        merged = self.merge_image_features(states[-1])
        image_tokens = self.img_txt_bridge(merged)
        proposals, proposer_input = self.perceiver.propose(states, grid)
        maps = self.region_encoder.fuse(states, grid)
        inter = None
        if output_intermediates:
            inter = {
                "hidden_states": states,
                "proposer_input": proposer_input,
                "image_tokens_prebridge": merged,
                "enc_topk_index": proposals.enc_topk_index,
                "enc_topk_logit": proposals.enc_topk_logit,
                "init_reference_points": proposals.init_reference_points,
                "proposal_logit_coco": proposals.logit_coco,
                "proposal_logit_sa1b": proposals.logit_sa1b,
            }
        return VisionOutput(image_tokens, proposals.boxes, proposals.scores, maps, inter)

    def select_regions(
        self,
        proposal_boxes: torch.Tensor,
        proposal_scores: torch.Tensor,
        user_boxes: torch.Tensor | None = None,
        order: torch.Tensor | None = None,
    ) -> RegionSelection:
        """Pick the regions of one image: proposals [Q, 4] + user boxes [r, 4] (score 1.0) -> NMS -> order.

        NMS as mmcv: score > box_score_thres, descending score (ties, e.g. several user boxes, in the
        original's CPU sort order: ``ops.descending_order``), IoU > nms_thres suppressed, at most
        max_region_num; if nothing survives, the single max-score candidate.
        ``order`` is a permutation of the kept list (final i = keep[order[i]]); default: descending score.
        """
        cfg = self.config
        boxes, scores = proposal_boxes.float(), proposal_scores.float()
        check_finite_proposals(boxes, scores)
        num_user = 0 if user_boxes is None else len(user_boxes)
        if num_user:
            user = user_boxes.to(boxes)
            boxes = torch.cat([boxes, user])
            scores = torch.cat([scores, torch.ones(num_user, device=scores.device)])
        keep = nms(cxcywh_to_xyxy(boxes), scores, cfg.nms_thres, cfg.box_score_thres, cfg.max_region_num)
        if keep.numel() == 0:
            keep = first_argmax(scores.detach().cpu()[None])
        final = keep if order is None else keep[torch.as_tensor(order, dtype=torch.long).cpu()]
        if order is not None and sorted(torch.as_tensor(order).tolist()) != list(range(len(keep))):
            raise ValueError(f"order must be a permutation of range({len(keep)})")
        final = final.to(boxes.device)
        selected = boxes[final]
        match = torch.empty(0, dtype=torch.long)
        if num_user:
            match = first_argmax(box_iou(cxcywh_to_xyxy(user.float()), cxcywh_to_xyxy(selected)))
        return RegionSelection(
            selected, scores[final], final >= len(proposal_boxes), final, keep, match.cpu()
        )

    @torch.no_grad()
    def encode_regions(
        self, vision: VisionOutput, boxes_cxcywh: torch.Tensor, batch_index: int = 0
    ) -> torch.Tensor:
        """Region tokens [K, H] for normalized cx,cy,w,h boxes of image ``batch_index`` of ``vision``."""
        maps = [m[batch_index : batch_index + 1] for m in vision.region_maps]
        boxes = boxes_cxcywh.to(self.device)
        if self.compiled_perception is not None:
            tokens = self.compiled_perception.encode_regions(maps, boxes)
            if tokens is not None:
                return tokens
        return self.region_encoder(maps, boxes)

    @torch.no_grad()
    def prefill_prefix(self, inputs_embeds: torch.Tensor) -> DynamicCache:
        """The LLM over a prompt prefix [1, T, H] into a fresh ``DynamicCache`` (what queries then fork)."""
        if self.compiled_perception is not None:
            cache = self.compiled_perception.prefill_prefix(inputs_embeds)
            if cache is not None:
                return cache
        cache = DynamicCache(config=self.config.llm_cfg)
        self.llm.model(inputs_embeds=inputs_embeds, past_key_values=cache, use_cache=True)
        return cache

    def compile_perception(self, mode: str | None = "reduce-overhead", backend: str = "inductor",
                           warm_up: bool = True) -> None:
        """Run perception, region tokens and the prefix prefill as compiled static-shape graphs (one CUDA graph
        each on a GPU; see ``compiled``). ``warm_up`` compiles the image graph and every region bucket now."""
        from .compiled import CompiledPerception

        self.compiled_perception = CompiledPerception(self, mode=mode, backend=backend)
        if warm_up:
            self.compiled_perception.warm_up()

    def uncompile_perception(self) -> None:
        self.compiled_perception = None

    # ------------------------------------------------------------------------------------------------- text
    def expand_input_ids(
        self, input_ids: torch.Tensor, num_regions: int, refer_match: torch.Tensor | None = None
    ) -> ExpandedInput:
        """Original sequence assembly for one prompt [1, T] (or [T]).

        Each ``<refer_box>`` becomes ``<r k>`` (k = refer_match, in order); ids after the first ``[PAD]`` are
        dropped; ``<image>`` becomes N_img ``<image>`` ids and ``<region>`` becomes
        ``<r0><region>...<rK-1><region>``.
        """
        t = self.token_ids
        ids = torch.as_tensor(input_ids).reshape(-1).cpu().clone()
        refer_rows = (
            torch.empty(0, dtype=torch.long) if refer_match is None else torch.as_tensor(refer_match).long()
        )
        refer_pos = (ids == t.refer_box).nonzero().flatten()
        if len(refer_pos):
            if len(refer_rows) < len(refer_pos):
                raise ValueError(f"{len(refer_pos)} <refer_box> tokens but only {len(refer_rows)} user boxes")
            ids[refer_pos] = torch.tensor([t.region_id(int(k)) for k in refer_rows[: len(refer_pos)]])
        prompt_ids = ids.clone()
        pads = (ids == t.pad).nonzero().flatten()
        if len(pads):
            ids = ids[: int(pads[0])]
        if int((ids == t.image).sum()) != 1 or int((ids == t.region).sum()) > 1:
            raise ValueError("the prompt must contain exactly one <image> and at most one <region>")
        pieces = []
        for tok in ids.tolist():
            if tok == t.image:
                pieces.append(torch.full((self.config.num_image_tokens,), t.image))
            elif tok == t.region:
                pairs = [[t.region_id(k), t.region] for k in range(num_regions)]
                pieces.append(torch.tensor(pairs, dtype=torch.long).reshape(-1))
            else:
                pieces.append(torch.tensor([tok]))
        new_ids = torch.cat(pieces).long()[None].to(self.device)
        return ExpandedInput(new_ids, prompt_ids[None].to(self.device), refer_rows.to(self.device))

    def embed_tokens(self, input_ids: torch.Tensor) -> torch.Tensor:
        """Token embeddings: ids >= vocab come from ``new_input_embs``, the rest from the LLaMA table."""
        vocab = self.config.llm_cfg.vocab_size
        is_new = input_ids >= vocab
        base = self.llm.get_input_embeddings()(input_ids.masked_fill(is_new, 0))
        new = self.new_input_embs((input_ids - vocab).masked_fill(~is_new, 0))
        return torch.where(is_new[..., None], new, base)

    def build_inputs_embeds(
        self,
        input_ids: torch.Tensor,
        image_tokens: torch.Tensor,
        region_tokens: torch.Tensor,
        refer_features: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """[1, T] expanded ids -> [1, T, H]: token embeddings, then image tokens at ``<image>``, region tokens
        at ``<region>`` and refer features at ``<refer_feat>`` positions, each in order."""
        t = self.token_ids
        embeds = self.embed_tokens(input_ids)
        for token, feats in (
            (t.image, image_tokens),
            (t.region, region_tokens),
            (t.refer_feat, refer_features),
        ):
            mask = input_ids == token
            count = int(mask.sum())
            if count == 0:
                continue
            feats = None if feats is None else feats.reshape(-1, embeds.shape[-1])
            if feats is None or len(feats) < count or (token != t.refer_feat and len(feats) != count):
                have = 0 if feats is None else len(feats)
                raise ValueError(f"{count} positions of token {token} but {have} features to place there")
            embeds = embeds.masked_scatter(mask[..., None], feats[:count].to(embeds.dtype))
        return embeds

    def lm_logits(self, hidden_states: torch.Tensor) -> torch.Tensor:
        """[.., H] -> [.., V + N_new]: LLaMA lm_head logits followed by ``extra_lm_head`` logits."""
        return torch.cat([self.llm.lm_head(hidden_states), self.extra_lm_head(hidden_states)], dim=-1)

    # ----------------------------------------------------------------------------------------- convenience
    @torch.no_grad()
    def forward(
        self,
        pixel_values: torch.Tensor,
        input_ids: torch.Tensor,
        user_boxes: torch.Tensor | None = None,
        order: torch.Tensor | None = None,
        region_boxes: torch.Tensor | None = None,
        use_cache: bool = False,
        vision: VisionOutput | None = None,
        output_intermediates: bool = False,
    ) -> GromaOutput:
        """One prompt on one image, full prefill. ``region_boxes`` [K, 4] bypasses selection entirely."""
        if vision is None:
            vision = self.encode_image(pixel_values, output_intermediates=output_intermediates)
        if region_boxes is not None:
            boxes = region_boxes.to(vision.proposal_boxes)
            match = torch.empty(0, dtype=torch.long)
            if user_boxes is not None and len(user_boxes):
                match = first_argmax(
                    box_iou(cxcywh_to_xyxy(user_boxes.to(boxes).float()), cxcywh_to_xyxy(boxes))
                )
            k = torch.arange(len(boxes))
            selection = RegionSelection(
                boxes, torch.ones(len(boxes)), torch.zeros(len(boxes), dtype=torch.bool), k, k, match.cpu()
            )
        else:
            selection = self.select_regions(
                vision.proposal_boxes[0], vision.proposal_scores[0], user_boxes, order
            )
        region_tokens = self.encode_regions(vision, selection.boxes)
        expanded = self.expand_input_ids(input_ids, len(selection.boxes), selection.refer_match)
        refer = region_tokens[expanded.refer_rows] if len(expanded.refer_rows) else None
        embeds = self.build_inputs_embeds(expanded.input_ids, vision.image_tokens[0], region_tokens, refer)
        cache = DynamicCache(config=self.config.llm_cfg) if use_cache else None
        out = self.llm.model(inputs_embeds=embeds, past_key_values=cache, use_cache=use_cache)
        logits = self.lm_logits(out.last_hidden_state)
        return GromaOutput(
            logits,
            embeds,
            expanded,
            selection,
            vision,
            region_tokens,
            out.past_key_values if use_cache else None,
        )

    @torch.no_grad()
    def generate_greedy(
        self,
        pixel_values: torch.Tensor,
        input_ids: torch.Tensor,
        user_boxes: torch.Tensor | None = None,
        max_new_tokens: int = 32,
        order: torch.Tensor | None = None,
        eos_token_id: int | None = None,
        vision: VisionOutput | None = None,
    ) -> GreedyOutput:
        """Greedy decoding with the KV cache (``generation.greedy_decode``); ``tokens`` end with ``eos_token_id``
        when the model chose it, else after ``max_new_tokens``."""
        eos = self.config.llm_cfg.eos_token_id if eos_token_id is None else eos_token_id
        prefill = self.forward(pixel_values, input_ids, user_boxes, order, use_cache=True, vision=vision)
        cache = prefill.past_key_values

        def step(token: int) -> torch.Tensor:
            out = self.llm.model(inputs_embeds=self.embed_tokens(torch.tensor([[token]], device=self.device)),
                                 past_key_values=cache, use_cache=True)
            return self.lm_logits(out.last_hidden_state)[0, -1]

        gen = greedy_decode(prefill.logits[0, -1], step, eos_token_id=eos, max_new_tokens=max_new_tokens,
                            keep_logits=True)
        new = torch.tensor(gen.token_ids + [eos] * gen.stopped_on_eos, dtype=torch.long)
        sequence = torch.cat([prefill.expanded.prompt_ids[0].cpu(), new])
        return GreedyOutput(new, sequence, torch.stack(gen.step_logits), prefill)
