"""Groma's region proposer: two-stage Deformable-DETR on DINOv2 features (original ``CustomDDETRModel``).

Layers are the stock transformers Deformable-DETR encoder/decoder layers (post-norm, pure-torch deformable
attention). What is Groma-specific lives here:
- two-stage query selection with DINO-style mixed queries: reference points and query *positions* come from
  the top-Q encoder proposals, query *content* is the learned ``query_position_embeddings`` table;
- reference points are never refined between decoder layers (the update line is commented out upstream), but
  each layer's box is still decoded relative to the previous layer's box prediction;
- two objectness heads (``coco``, ``sa1b``) fused as ``coco^0.4 · sa1b^0.6``.
Parameter names follow the released checkpoint (modulo transformers 5.x layer renames, see checkpoint.py).
"""

from __future__ import annotations

import copy
import math
from dataclasses import dataclass, field

import torch
from torch import nn
from transformers import DeformableDetrConfig
from transformers.models.deformable_detr.modeling_deformable_detr import (
    DeformableDetrDecoderLayer,
    DeformableDetrEncoderLayer,
)

from .ops import inverse_sigmoid, multi_scale_deformable_sampling, sine_embed


class ChannelLayerNorm(nn.Module):
    """LayerNorm over the channels of [B, C, H, W] maps (ConvNeXt style, as in the original ``ddetr.py``)."""

    def __init__(self, channels: int, eps: float = 1e-6):
        super().__init__()
        self.weight = nn.Parameter(torch.ones(channels))
        self.bias = nn.Parameter(torch.zeros(channels))
        self.eps = eps

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        u = x.mean(1, keepdim=True)
        s = (x - u).pow(2).mean(1, keepdim=True)
        x = (x - u) / torch.sqrt(s + self.eps)
        return self.weight[:, None, None] * x + self.bias[:, None, None]


class BoxHead(nn.Module):
    """3-layer MLP box-delta head (``DeformableDetrMLPPredictionHead``; width 256 hard-coded upstream)."""

    def __init__(self, input_dim: int, hidden_dim: int = 256, output_dim: int = 4, num_layers: int = 3):
        super().__init__()
        dims = [input_dim] + [hidden_dim] * (num_layers - 1)
        self.layers = nn.ModuleList(
            nn.Linear(n, k) for n, k in zip(dims, dims[1:] + [output_dim], strict=True)
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for i, layer in enumerate(self.layers):
            x = layer(x)
            if i < len(self.layers) - 1:
                x = nn.functional.relu(x)
        return x


class DeformableSampling(nn.Module):
    """Stands in for transformers' ``MultiScaleDeformableAttention`` (the parameter-free sampling step inside
    each deformable-attention layer; same call signature): ``ops.multi_scale_deformable_sampling``, which
    gives the CPU kernel inputs it computes correctly in bf16/fp16."""

    def forward(self, value, spatial_shapes, spatial_shapes_list, level_start_index, sampling_locations,
                attention_weights, im2col_step=None):
        return multi_scale_deformable_sampling(value, spatial_shapes_list, sampling_locations, attention_weights)


def _use_our_sampling(layers: list[nn.Module], attribute: str) -> list[nn.Module]:
    for layer in layers:
        getattr(layer, attribute).attn = DeformableSampling()
    return layers


class _Layers(nn.Module):
    """Holds ``layers`` so parameter names read ``encoder.layers.N`` / ``decoder.layers.N`` as upstream."""

    def __init__(self, layers: list[nn.Module]):
        super().__init__()
        self.layers = nn.ModuleList(layers)


@dataclass
class ProposerOutput:
    """Final-layer proposals plus the intermediates the parity fixture records (batch first)."""

    boxes: torch.Tensor  # [B, Q, 4] normalized cx, cy, w, h
    scores: torch.Tensor  # [B, Q] fused objectness
    logit_coco: torch.Tensor  # [B, Q]
    logit_sa1b: torch.Tensor  # [B, Q]
    enc_topk_index: torch.Tensor  # [B, Q] encoder cells, row-major
    enc_topk_logit: torch.Tensor  # [B, Q]
    init_reference_points: torch.Tensor  # [B, Q, 4]
    # every layer and every encoder cell, for the training losses (auxiliary and two-stage)
    enc_logits: torch.Tensor | None = None  # [B, HW] objectness of every encoder cell
    enc_boxes: torch.Tensor | None = None  # [B, HW, 4] encoder proposal boxes (cx, cy, w, h)
    layer_boxes: list[torch.Tensor] = field(default_factory=list)  # per decoder layer [B, Q, 4]
    layer_coco: list[torch.Tensor] = field(default_factory=list)  # per decoder layer [B, Q]
    layer_sa1b: list[torch.Tensor] = field(default_factory=list)
    hidden: torch.Tensor | None = None  # [B, Q, d] last decoder layer


class GromaDeformableTransformer(nn.Module):
    """``perceiver.ddetr_transformer``: encoder, two-stage selection, decoder and heads."""

    def __init__(self, config: DeformableDetrConfig):
        super().__init__()
        config = copy.copy(config)
        config._attn_implementation = "eager"  # decoder self-attention: plain softmax attention, as in 4.32
        self.config = config
        d = config.d_model
        self.encoder = _Layers(_use_our_sampling(
            [DeformableDetrEncoderLayer(config) for _ in range(config.encoder_layers)], "self_attn"))
        self.decoder = _Layers(_use_our_sampling(
            [DeformableDetrDecoderLayer(config) for _ in range(config.decoder_layers)], "encoder_attn"))
        self.level_embed = nn.Parameter(torch.zeros(config.num_feature_levels, d))
        self.query_position_embeddings = nn.Embedding(config.num_queries, d)
        self.enc_output = nn.Linear(d, d)
        self.enc_output_norm = nn.LayerNorm(d)
        self.pos_trans = nn.Linear(2 * d, 2 * d)
        self.pos_trans_norm = nn.LayerNorm(2 * d)
        n = config.decoder_layers
        self.class_embed_enc = nn.Linear(d, config.num_labels)
        self.class_embed_coco = nn.ModuleList(nn.Linear(d, config.num_labels) for _ in range(n))
        self.class_embed_sa1b = nn.ModuleList(nn.Linear(d, config.num_labels) for _ in range(n))
        self.bbox_embed = nn.ModuleList(BoxHead(d) for _ in range(n + 1))  # index n: encoder proposals

    @staticmethod
    def _grid(size: int, start: float, device: torch.device) -> torch.Tensor:
        return torch.linspace(start, size - 1 + start, size, dtype=torch.float32, device=device)

    def _encoder_positions(self, height: int, width: int, device: torch.device) -> torch.Tensor:
        """Sine positions of an all-valid mask (4.32 ``DeformableDetrSinePositionEmbedding``, normalized)."""
        y = torch.arange(1, height + 1, dtype=torch.float32, device=device)[:, None].expand(height, width)
        x = torch.arange(1, width + 1, dtype=torch.float32, device=device)[None, :].expand(height, width)
        y = (y - 0.5) / (y[-1:, :] + 1e-6) * (2 * math.pi)
        x = (x - 0.5) / (x[:, -1:] + 1e-6) * (2 * math.pi)
        pos = sine_embed(torch.stack([y, x], dim=-1), self.config.d_model // 2)  # [H, W, d], y half first
        return pos.flatten(0, 1)[None]

    def forward(self, source: torch.Tensor) -> ProposerOutput:
        """source: the projected [B, d, H, W] map (one level)."""
        batch, d, height, width = source.shape
        device, dtype = source.device, source.dtype
        memory = source.flatten(2).transpose(1, 2)
        pos = self._encoder_positions(height, width, device).to(dtype) + self.level_embed[0].view(1, 1, -1)
        shapes = torch.as_tensor([[height, width]], dtype=torch.long, device=device)
        shapes_list = [(height, width)]
        start = torch.zeros(1, dtype=torch.long, device=device)
        ref_y, ref_x = torch.meshgrid(
            self._grid(height, 0.5, device) / height, self._grid(width, 0.5, device) / width, indexing="ij"
        )
        enc_ref = torch.stack((ref_x.reshape(-1), ref_y.reshape(-1)), -1)[None, :, None].to(dtype)
        enc_ref = enc_ref.expand(batch, -1, -1, -1)
        for layer in self.encoder.layers:
            memory = layer(
                memory,
                None,
                spatial_position_embeddings=pos,
                reference_points=enc_ref,
                spatial_shapes=shapes,
                spatial_shapes_list=shapes_list,
                level_start_index=start,
            )

        # two-stage: every cell proposes a 0.05-sized box at its centre (logit space)
        grid_y, grid_x = torch.meshgrid(
            self._grid(height, 0.0, device), self._grid(width, 0.0, device), indexing="ij"
        )
        grid = (torch.stack([grid_x, grid_y], -1) + 0.5) / torch.tensor([width, height], device=device)
        proposals = torch.cat([grid, torch.full_like(grid, 0.05)], -1).view(1, -1, 4)
        valid = ((proposals > 0.01) & (proposals < 0.99)).all(-1, keepdim=True)
        proposals = torch.log(proposals / (1 - proposals)).masked_fill(~valid, float("inf"))
        object_query = self.enc_output_norm(self.enc_output(memory.masked_fill(~valid, 0.0)))
        enc_class = self.class_embed_enc(object_query)[..., 0]
        enc_coord_logits = self.bbox_embed[-1](object_query) + proposals
        topk_logit, topk_index = torch.topk(enc_class, self.config.two_stage_num_proposals, dim=1)
        # reference points are detached, as upstream (no-op at inference, which runs without grad)
        topk_coords = torch.gather(enc_coord_logits, 1, topk_index[..., None].expand(-1, -1, 4)).detach()
        reference = topk_coords.sigmoid()
        query_pos = self.pos_trans_norm(
            self.pos_trans(sine_embed(reference * (2 * math.pi), d // 2).to(dtype))
        )[..., :d]
        hidden = self.query_position_embeddings.weight[None].expand(batch, -1, -1)

        ref_inv = inverse_sigmoid(reference)  # box maths stays in float32 whatever the weights' dtype
        prev_box_logits = ref_inv
        layer_boxes, layer_coco, layer_sa1b = [], [], []
        for idx, layer in enumerate(self.decoder.layers):
            hidden = layer(
                hidden, query_pos, reference[:, :, None].to(dtype), shapes, shapes_list, start, memory, None
            )
            delta = self.bbox_embed[idx](hidden)
            layer_boxes.append((delta + prev_box_logits).sigmoid())
            layer_coco.append(self.class_embed_coco[idx](hidden)[..., 0])
            layer_sa1b.append(self.class_embed_sa1b[idx](hidden)[..., 0])
            # the next layer decodes relative to this layer's box (itself relative to the initial reference)
            prev_box_logits = inverse_sigmoid((delta + ref_inv).sigmoid()).detach()
        logit_coco, logit_sa1b = layer_coco[-1], layer_sa1b[-1]
        scores = logit_coco.sigmoid() ** 0.4 * logit_sa1b.sigmoid() ** 0.6
        return ProposerOutput(layer_boxes[-1], scores, logit_coco, logit_sa1b, topk_index, topk_logit, reference,
                              enc_class, enc_coord_logits.sigmoid(), layer_boxes, layer_coco, layer_sa1b, hidden)


class GromaPerceiver(nn.Module):
    """``perceiver``: DINOv2 (``vis_encoder``), the 1-level input projection and the proposer."""

    def __init__(self, vis_encoder: nn.Module, ddetr_config: DeformableDetrConfig, vision_hidden: int):
        super().__init__()
        self.vis_encoder = vis_encoder
        self.ddetr_transformer = GromaDeformableTransformer(ddetr_config)
        d = ddetr_config.d_model
        self.input_proj = nn.ModuleList(
            [nn.Sequential(nn.Conv2d(vision_hidden, d, kernel_size=1), ChannelLayerNorm(d))]
        )

    def propose(self, hidden_states: list[torch.Tensor], grid: int) -> tuple[ProposerOutput, torch.Tensor]:
        """Proposals from the mean of the last 4 hidden states (CLS dropped); also returns that mean."""
        source, feats = self.proposer_source(hidden_states, grid)
        return self.ddetr_transformer(source), feats

    def proposer_source(self, hidden_states: list[torch.Tensor], grid: int) -> tuple[torch.Tensor, torch.Tensor]:
        """(the projected [B, d, g, g] proposer input, the mean of the last 4 states it came from)."""
        feats = torch.stack(hidden_states[-4:]).mean(dim=0)[:, 1:]
        batch, _, dim = feats.shape
        source = self.input_proj[0](feats.reshape(batch, grid, grid, dim).permute(0, 3, 1, 2).contiguous())
        return source, feats
