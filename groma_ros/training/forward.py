"""Differentiable forwards of the frozen-at-inference parts, exposing what the losses need.

The model's inference methods run under ``no_grad`` and return only final outputs; training needs every
decoder layer (auxiliary losses), the encoder proposals of every cell (two-stage loss) and region features
before ``updims`` (cached for stage 2). These are thin views on the model's own methods (no copies of its
forward); tests check they reproduce the inference outputs exactly.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from groma_ros.model.modeling_groma import GromaForConditionalGeneration
from groma_ros.model.proposer import ProposerOutput
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


def proposer_trace(out: ProposerOutput) -> ProposerTrace:
    """The losses' view of the proposer's output (every layer, every encoder cell)."""
    return ProposerTrace(out.enc_logits, out.enc_boxes, out.layer_boxes, out.layer_coco, out.layer_sa1b, out.hidden)


def vision_states(model: GromaForConditionalGeneration, pixels: torch.Tensor) -> list[torch.Tensor]:
    return model.perceiver.vis_encoder.hidden_states_all(pixels)


def propose(model: GromaForConditionalGeneration, states: list[torch.Tensor]) -> ProposerTrace:
    """``GromaPerceiver.propose`` (mean of the last 4 states -> input_proj -> proposer) with the trace."""
    out, _ = model.perceiver.propose(states, model.config.grid_size)
    return proposer_trace(out)


def region_features(enc: GromaRegionEncoder, maps: list[torch.Tensor], boxes: torch.Tensor,
                    batch_index: torch.Tensor) -> torch.Tensor:
    """``GromaRegionEncoder.forward`` up to (excluding) ``updims``: [K, region_feat_dim]."""
    return enc.features(maps, boxes, batch_index)


def merged_image_features(model: GromaForConditionalGeneration, states: list[torch.Tensor]) -> torch.Tensor:
    """The 2x2-merged last-state features that ``img_txt_bridge`` maps to LLM image tokens: [B, N_img, 4D]."""
    return model.merge_image_features(states[-1])
