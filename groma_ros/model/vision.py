"""DINOv2 image encoder with the transformers-4.32 position-embedding interpolation.

The released weights were trained with 4.32's ``interpolate_pos_encoding``: bicubic resize of the 37×37
table with ``scale_factor = (g + 0.1) / 37`` (align_corners False). transformers 5.x resizes to
``size=(g, g)``, which gives different values (max |Δ| ≈ 0.5 on the fixture), so we swap in that one method
and keep the rest
of the stock ``Dinov2Model``.
"""

from __future__ import annotations

import math

import torch
from torch import nn
from transformers import Dinov2Config, Dinov2Model
from transformers.models.dinov2.modeling_dinov2 import Dinov2Embeddings


class LegacyDinov2Embeddings(Dinov2Embeddings):
    """``Dinov2Embeddings`` whose position interpolation is the transformers-4.32 one."""

    def interpolate_pos_encoding(self, embeddings: torch.Tensor, height: int, width: int) -> torch.Tensor:
        num_patches = embeddings.shape[1] - 1
        num_positions = self.position_embeddings.shape[1] - 1
        if num_patches == num_positions and height == width:
            return self.position_embeddings
        class_pos_embed = self.position_embeddings[:, :1]
        patch_pos_embed = self.position_embeddings[:, 1:]
        dim = embeddings.shape[-1]
        patch_h, patch_w = self.patch_embeddings.patch_size
        new_h, new_w = height // patch_h + 0.1, width // patch_w + 0.1  # the 4.32 "+0.1" scale-factor form
        side = int(math.sqrt(num_positions))
        patch_pos_embed = patch_pos_embed.reshape(1, side, side, dim).permute(0, 3, 1, 2)
        target_dtype = patch_pos_embed.dtype
        patch_pos_embed = nn.functional.interpolate(
            patch_pos_embed.float(),
            scale_factor=(float(new_h / side), float(new_w / side)),
            mode="bicubic",
            align_corners=False,
        ).to(target_dtype)
        if int(new_h) != patch_pos_embed.shape[-2] or int(new_w) != patch_pos_embed.shape[-1]:
            raise ValueError("position-embedding interpolation produced the wrong grid size")
        patch_pos_embed = patch_pos_embed.permute(0, 2, 3, 1).reshape(1, -1, dim)
        return torch.cat((class_pos_embed, patch_pos_embed), dim=1)


class GromaDinov2Model(Dinov2Model):
    """Stock ``Dinov2Model`` (same parameter names) with the 4.32 interpolation and an all-states forward."""

    def __init__(self, config: Dinov2Config):
        super().__init__(config)
        self.embeddings = LegacyDinov2Embeddings(config)

    def hidden_states_all(self, pixel_values: torch.Tensor) -> list[torch.Tensor]:
        """[B, 3, S, S] -> L+1 hidden states [B, 1+g², D] (0: embeddings, i: after block i; no final LN)."""
        pixel_values = pixel_values.to(self.embeddings.patch_embeddings.projection.weight.dtype)
        hidden = self.embeddings(pixel_values)
        states = [hidden]
        for layer in self.encoder.layer:
            hidden = layer(hidden, None)
            states.append(hidden)
        return states
