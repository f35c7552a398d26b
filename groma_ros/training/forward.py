"""Differentiable forwards of the frozen-at-inference parts, exposing what the losses need.

The model's inference methods run under ``no_grad`` and return only final outputs; training needs every
decoder layer (auxiliary losses), the encoder proposals of every cell (two-stage loss) and region features
before ``updims`` (cached for stage 2). These functions reuse the model's own modules step by step; tests
check they reproduce the inference outputs exactly.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch.nn import functional as F

from groma_ros.model.modeling_groma import GromaForConditionalGeneration
from groma_ros.model.ops import inverse_sigmoid, roi_align, sine_embed
from groma_ros.model.proposer import GromaDeformableTransformer
from groma_ros.model.region_encoder import GromaRegionEncoder


@dataclass
class ProposerTrace:
    enc_logits: torch.Tensor  # [B, HW] two-stage encoder objectness of every cell
    enc_boxes: torch.Tensor  # [B, HW, 4] encoder proposal boxes (cx, cy, w, h)
    layer_boxes: list[torch.Tensor]  # per decoder layer [B, Q, 4]
    layer_coco: list[torch.Tensor]  # per decoder layer [B, Q]
    layer_sa1b: list[torch.Tensor]
    hidden: torch.Tensor  # [B, Q, d] last decoder layer

    @property
    def boxes(self) -> torch.Tensor:
        return self.layer_boxes[-1]

    @property
    def scores(self) -> torch.Tensor:
        return self.layer_coco[-1].sigmoid() ** 0.4 * self.layer_sa1b[-1].sigmoid() ** 0.6


def proposer_trace(tr: GromaDeformableTransformer, source: torch.Tensor) -> ProposerTrace:
    """``GromaDeformableTransformer.forward`` with intermediates; reference points detached (as upstream)."""
    batch, d, height, width = source.shape
    device, dtype = source.device, source.dtype
    memory = source.flatten(2).transpose(1, 2)
    pos = tr._encoder_positions(height, width, device).to(dtype) + tr.level_embed[0].view(1, 1, -1)
    shapes = torch.as_tensor([[height, width]], dtype=torch.long, device=device)
    shapes_list = [(height, width)]
    start = torch.zeros(1, dtype=torch.long, device=device)
    ref_y, ref_x = torch.meshgrid(tr._grid(height, 0.5, device) / height, tr._grid(width, 0.5, device) / width,
                                  indexing="ij")
    enc_ref = torch.stack((ref_x.reshape(-1), ref_y.reshape(-1)), -1)[None, :, None].to(dtype)
    enc_ref = enc_ref.expand(batch, -1, -1, -1)
    for layer in tr.encoder.layers:
        memory = layer(memory, None, spatial_position_embeddings=pos, reference_points=enc_ref,
                       spatial_shapes=shapes, spatial_shapes_list=shapes_list, level_start_index=start)
    grid_y, grid_x = torch.meshgrid(tr._grid(height, 0.0, device), tr._grid(width, 0.0, device), indexing="ij")
    grid = (torch.stack([grid_x, grid_y], -1) + 0.5) / torch.tensor([width, height], device=device)
    proposals = torch.cat([grid, torch.full_like(grid, 0.05)], -1).view(1, -1, 4)
    valid = ((proposals > 0.01) & (proposals < 0.99)).all(-1, keepdim=True)
    proposals = torch.log(proposals / (1 - proposals)).masked_fill(~valid, float("inf"))
    object_query = tr.enc_output_norm(tr.enc_output(memory.masked_fill(~valid, 0.0)))
    enc_class = tr.class_embed_enc(object_query)[..., 0]
    enc_coord_logits = tr.bbox_embed[-1](object_query) + proposals
    _, topk_index = torch.topk(enc_class, tr.config.two_stage_num_proposals, dim=1)
    topk_coords = torch.gather(enc_coord_logits, 1, topk_index[..., None].expand(-1, -1, 4)).detach()
    reference = topk_coords.sigmoid()
    query_pos = tr.pos_trans_norm(tr.pos_trans(sine_embed(reference * (2 * math.pi), d // 2).to(dtype)))[..., :d]
    hidden = tr.query_position_embeddings.weight[None].expand(batch, -1, -1)
    ref_inv = inverse_sigmoid(reference)
    prev = ref_inv
    boxes, coco, sa1b = [], [], []
    for idx, layer in enumerate(tr.decoder.layers):
        hidden = layer(hidden, query_pos, reference[:, :, None], shapes, shapes_list, start, memory, None)
        delta = tr.bbox_embed[idx](hidden)
        boxes.append((delta + prev).sigmoid())
        prev = inverse_sigmoid((delta + ref_inv).sigmoid()).detach()
        coco.append(tr.class_embed_coco[idx](hidden)[..., 0])
        sa1b.append(tr.class_embed_sa1b[idx](hidden)[..., 0])
    return ProposerTrace(enc_class, enc_coord_logits.sigmoid(), boxes, coco, sa1b, hidden)


def vision_states(model: GromaForConditionalGeneration, pixels: torch.Tensor) -> list[torch.Tensor]:
    return model.perceiver.vis_encoder.hidden_states_all(pixels)


def propose(model: GromaForConditionalGeneration, states: list[torch.Tensor]) -> ProposerTrace:
    """``GromaPerceiver.propose`` (mean of the last 4 states -> input_proj -> proposer) with the trace."""
    grid = model.config.grid_size
    feats = torch.stack(states[-4:]).mean(dim=0)[:, 1:]
    b, _, dim = feats.shape
    source = model.perceiver.input_proj[0](feats.reshape(b, grid, grid, dim).permute(0, 3, 1, 2).contiguous())
    return proposer_trace(model.perceiver.ddetr_transformer, source)


def region_features(enc: GromaRegionEncoder, maps: list[torch.Tensor], boxes: torch.Tensor,
                    batch_index: torch.Tensor) -> torch.Tensor:
    """``GromaRegionEncoder.forward`` up to (excluding) ``updims``: [K, region_feat_dim]."""
    head = enc.roi_align
    rois = enc.rois(boxes, batch_index)
    pooled = None
    for lvl, (feat, scale) in enumerate(zip(maps, enc.spatial_scales, strict=True)):
        out = head.pconvs[lvl](roi_align(feat, rois, head.output_size, scale, sampling_ratio=2).to(feat.dtype))
        pooled = out if pooled is None else pooled + out
    return head.flatten_linear(F.relu(pooled).flatten(1)) + head.pos_embedd(boxes.to(maps[0].dtype))


def merged_image_features(model: GromaForConditionalGeneration, states: list[torch.Tensor]) -> torch.Tensor:
    """The 2x2-merged last-state features that ``img_txt_bridge`` maps to LLM image tokens: [B, N_img, 4D]."""
    grid = model.config.grid_size
    feats = states[-1][:, 1:]
    b, _, d = feats.shape
    feats = feats.reshape(b, grid, grid, d)
    return torch.cat([feats[:, 0::2, 0::2], feats[:, 1::2, 0::2], feats[:, 0::2, 1::2], feats[:, 1::2, 1::2]],
                     dim=-1).reshape(b, (grid // 2) ** 2, 4 * d)
