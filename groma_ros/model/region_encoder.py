"""Groma's multi-level RoI region encoder (original ``MLVLROIQueryModule``, roi_align.py).

Two stages so several region sets can reuse one image: ``fuse`` builds three fused feature maps from the last
three vision hidden states (done once per image), ``forward`` pools boxes from them into LLM-width tokens.
Widths 256 (box-position MLP), 1024 (RoI feature) and 4096 (output) were hard-coded upstream; here they are
``region_pos_dim``, ``region_feat_dim`` and ``region_out_dim`` with those defaults.

Two implementations of the same function (``GromaRegionEncoder.implementation``): ``"fast"`` (default) runs the
input 1x1 convs on the ViT grid before the resize, keeps every map channels-last (NHWC) so the 3x3 convs and
the resizes run the CPU's fast NHWC kernels, samples RoIs with one ``grid_sample`` per level
(``ops.roi_align_levels``) and applies the three per-level RoI convs as one conv over their concatenated channels;
``"reference"`` is the direct transcription (NCHW, gather RoIAlign), kept to check the fast one against and to
measure it (``benchmarks/engine_latency.py``). Both pass the parity fixture; they differ by float rounding
(region tokens max 2e-5 on the fixture).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Literal

import torch
from torch import nn
from torch.nn import functional as F

from .configuration_groma import GromaConfig
from .ops import cxcywh_to_xyxy, roi_align, roi_align_levels

RegionImplementation = Literal["fast", "reference"]


class ConvGNReLU(nn.Module):
    """mmcv ``ConvModule(3x3, norm=GN)``: conv without bias -> GroupNorm -> ReLU (names ``conv``/``gn``)."""

    def __init__(self, channels: int, groups: int):
        super().__init__()
        self.conv = nn.Conv2d(channels, channels, 3, padding=1, bias=False)
        self.gn = nn.GroupNorm(groups, channels)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.relu(self.gn(self.conv(x)))


class MultiLevelFuse(nn.Module):
    """``mlvl_fuse``: coordinate channels, per-level 1x1 conv, then rounds of cross-level channel shuffling.

    In every round level l keeps its channels [0, D/2), takes [3D/4, D) from level min(l+1, 2) and [D/2, 3D/4)
    from level max(l-1, 0) (both resized bilinearly, align_corners=True, in float32), then the round's shared
    conv-GN-ReLU.
    """

    def __init__(self, dims: int, groups: int, num_levels: int = 3, num_fuse: int = 5):
        super().__init__()
        self.dims = dims
        self.quarter = dims // 4
        self.remain = dims - 2 * self.quarter
        self.num_levels = num_levels
        self.input_conv = nn.ModuleList(nn.Conv2d(dims + 2, dims, 1) for _ in range(num_levels))
        self.fuse_convs = nn.ModuleList(ConvGNReLU(dims, groups) for _ in range(num_fuse))

    @staticmethod
    def _coords(feat: torch.Tensor) -> torch.Tensor:
        b, _, h, w = feat.shape
        y, x = torch.meshgrid(
            torch.linspace(-1, 1, h, device=feat.device),
            torch.linspace(-1, 1, w, device=feat.device),
            indexing="ij",
        )
        return torch.stack([x, y])[None].expand(b, -1, -1, -1).to(feat.dtype)

    def forward(self, grids: list[torch.Tensor], sizes: Sequence[int],
                channels_last: bool = False) -> list[torch.Tensor]:
        """grids: the levels' ViT maps [B, D, g, g]; sizes: the levels' map sizes (each map is its grid resized
        bilinearly, align_corners=True, in float32). ``channels_last``: the fast form (``_forward_nhwc``), same
        values up to float rounding."""
        if channels_last:
            return self._forward_nhwc(grids, sizes)
        feats = [F.interpolate(f.float(), size=(s, s), mode="bilinear", align_corners=True).to(f.dtype)
                 for f, s in zip(grids, sizes, strict=True)]
        feats = [
            conv(torch.cat([f, self._coords(f)], dim=1))
            for conv, f in zip(self.input_conv, feats, strict=True)
        ]
        last = self.num_levels - 1
        for fuse in self.fuse_convs:
            fused = []
            for lvl, tar in enumerate(feats):
                size = tar.shape[-2:]
                top = feats[min(lvl + 1, last)][:, self.remain + self.quarter :]
                down = feats[max(lvl - 1, 0)][:, self.remain : self.remain + self.quarter]
                top = F.interpolate(top.float(), size=size, mode="bilinear", align_corners=True).to(tar.dtype)
                down = F.interpolate(down.float(), size=size, mode="bilinear", align_corners=True).to(
                    tar.dtype
                )
                fused.append(fuse(torch.cat([tar[:, : self.remain], top, down], dim=1)))
            feats = fused
        return feats

    def _forward_nhwc(self, grids: list[torch.Tensor], sizes: Sequence[int]) -> list[torch.Tensor]:
        """The same rounds with every map in NHWC memory (the CPU's fast conv and resize layout). The input
        1x1 convs run on the grids before the resize (``_input_maps_nhwc``); in every round a level's own
        channels are taken as they are instead of resized to their own size (an exact identity), and the finest
        level's last quarter of channels is not computed where nothing reads it (every round but the last: a
        quarter of its conv, which is 3/4 of all fuse arithmetic)."""
        maps = self._input_maps_nhwc(grids, sizes)
        rounds = len(self.fuse_convs)
        for round_index, fuse in enumerate(self.fuse_convs):
            skip = round_index < rounds - 1 and self._top_channels_unused(fuse)
            maps = self._round_nhwc(maps, fuse, skip)
        return maps

    def _input_maps_nhwc(self, grids: list[torch.Tensor], sizes: Sequence[int]) -> list[torch.Tensor]:
        """The input 1x1 convs on the g x g grids, then the resize to each level's size: a bilinear resize
        commutes with a per-pixel linear map and reproduces the coordinate channels (linear in x and y), so
        this equals the conv of the resized maps at 1/16 of the finest level's multiply-adds."""
        first = grids[0]
        b, _, g, _ = first.shape
        dtype = first.dtype  # half maps: the grid products and the resize in float32, one rounding at the end
        coords = self._coords(first[:, :1].float())[0].permute(1, 2, 0).reshape(g * g, 2)
        maps = []
        for conv, f, size in zip(self.input_conv, grids, sizes, strict=True):
            c = f.shape[1]
            weight = conv.weight.reshape(conv.out_channels, c + 2).float()
            constant = torch.addmm(conv.bias.float(), coords, weight[:, c:].t())  # [g*g, D], every image
            pixels = f.permute(0, 2, 3, 1).reshape(b, g * g, c).float()
            cells = torch.baddbmm(constant, pixels, weight[:, :c].t().expand(b, -1, -1))  # [B, g*g, D]
            cells = cells.view(b, g, g, -1).permute(0, 3, 1, 2)  # NCHW view of NHWC memory
            if size != g:
                cells = F.interpolate(cells, size=(size, size), mode="bilinear", align_corners=True)
            maps.append(cells.to(dtype))
        return maps

    def _round_nhwc(self, maps: list[torch.Tensor], fuse: ConvGNReLU, skip: bool) -> list[torch.Tensor]:
        """One round on NHWC maps; ``skip``: level 0's last channel quarter is not computed."""
        last = self.num_levels - 1
        top, down = slice(self.remain + self.quarter, None), slice(self.remain, self.remain + self.quarter)
        half = maps[0].dtype != torch.float32
        fused = []
        for lvl, tar in enumerate(maps):
            size = tar.shape[-2:]
            parts = [tar[:, : self.remain].permute(0, 2, 3, 1)]
            for src, channels in ((min(lvl + 1, last), top), (max(lvl - 1, 0), down)):
                part = maps[src][:, channels]
                if src != lvl:  # a channel slice is no NHWC tensor to the kernels: make it one first
                    part = (part.float() if half else part).contiguous(memory_format=torch.channels_last)
                    part = F.interpolate(part, size=size, mode="bilinear", align_corners=True)
                    part = part.to(tar.dtype) if half else part
                parts.append(part.permute(0, 2, 3, 1))
            # concatenated along the innermost (channel) axis of the NHWC memory, then seen as NCHW again
            stacked = torch.cat(parts, dim=3).permute(0, 3, 1, 2)
            # level 0's channels [3D/4, D) feed no one before the last round (the level above takes its "top"
            # part from level 1): skip their conv; their GroupNorm groups are separate ones
            keep = self.remain + self.quarter if lvl == 0 and skip else self.dims
            gn = fuse.gn
            out = F.conv2d(stacked, fuse.conv.weight[:keep], None, 1, 1)
            out = F.group_norm(out, gn.num_groups * keep // self.dims, gn.weight[:keep], gn.bias[:keep], gn.eps)
            fused.append(torch.relu_(out))
        return fused

    def _top_channels_unused(self, fuse: ConvGNReLU) -> bool:
        """Whether the skipped channels form whole GroupNorm groups (then skipping them is exact)."""
        return self.quarter % (self.dims // fuse.gn.num_groups) == 0 and self.num_levels > 1


class RoIHead(nn.Module):
    """``roi_align`` (mmdet ``MlvlRoIExtractor``): per-level RoIAlign + 3x3 conv, sum, ReLU, flatten, MLPs."""

    def __init__(self, config: GromaConfig, dims: int):
        super().__init__()
        self.output_size = config.roi_output_size
        self.pconvs = nn.ModuleList(nn.Conv2d(dims, dims, 3, padding=1) for _ in range(3))
        self.pos_embedd = nn.Sequential(
            nn.Linear(4, config.region_pos_dim),
            nn.ReLU(),
            nn.LayerNorm(config.region_pos_dim),
            nn.Linear(config.region_pos_dim, config.region_feat_dim),
            nn.ReLU(),
            nn.LayerNorm(config.region_feat_dim),
        )
        self.updims = nn.Linear(config.region_feat_dim, config.region_out_dim)
        self.flatten_linear = nn.Linear(dims * self.output_size**2, config.region_feat_dim)


class GromaRegionEncoder(nn.Module):
    """``region_encoder``: fused multi-level maps -> one token per box."""

    def __init__(self, config: GromaConfig):
        super().__init__()
        dims = config.vision_config.hidden_size
        self.level_sizes = config.region_level_sizes
        self.spatial_scales = config.roi_spatial_scales
        self.image_size = config.image_size
        self.convention = config.region_box_convention
        self.mlvl_fuse = MultiLevelFuse(dims, config.region_gn_groups)
        self.roi_align = RoIHead(config, dims)
        self.implementation: RegionImplementation = "fast"
        self.register_load_state_dict_post_hook(lambda module, _keys: module.lay_out_weights_())

    def set_implementation(self, name: RegionImplementation) -> None:
        """Switch between ``"fast"`` and ``"reference"`` (both exact; see the module docstring)."""
        if name not in ("fast", "reference"):
            raise ValueError(f"implementation must be 'fast' or 'reference', got {name!r}")
        self.implementation = name
        self.lay_out_weights_()

    @torch.no_grad()
    def lay_out_weights_(self) -> None:
        """Conv weights NHWC for ``fast`` (NHWC convs reorder NCHW weights on every call), NCHW for
        ``reference``; same values. Runs after every ``load_state_dict``; call it after building weights any
        other way."""
        layout = torch.channels_last if self.implementation == "fast" else torch.contiguous_format
        for module in self.modules():
            if isinstance(module, nn.Conv2d) and not module.weight.is_meta:
                module.weight.data = module.weight.data.contiguous(memory_format=layout)

    def fuse(self, hidden_states: list[torch.Tensor], grid: int) -> list[torch.Tensor]:
        """Last three hidden states (CLS dropped) -> three fused maps of sizes 4g, 2g, g ([B, D, s, s])."""
        return self.mlvl_fuse(self.grid_maps(hidden_states, grid), self.level_sizes, channels_last=self._fast())

    @staticmethod
    def grid_maps(hidden_states: list[torch.Tensor], grid: int) -> list[torch.Tensor]:
        """The last three hidden states as [B, D, g, g] maps (NCHW views of the states' NHWC memory)."""
        maps = []
        for state in hidden_states[-3:]:
            b, _, d = state.shape
            maps.append(state[:, 1:].reshape(b, grid, grid, d).permute(0, 3, 1, 2))
        return maps

    def _fast(self) -> bool:
        if self.implementation not in ("fast", "reference"):
            raise ValueError(f"implementation must be 'fast' or 'reference', got {self.implementation!r}")
        return self.implementation == "fast"

    def rois(self, boxes_cxcywh: torch.Tensor, batch_index: torch.Tensor) -> torch.Tensor:
        """[K, 5] RoIs in image pixels. ``original`` passes cx,cy,w,h as if they were x1,y1,x2,y2 (bug
        the released weights depend on); ``corrected`` passes real corners."""
        boxes = boxes_cxcywh.float()
        if self.convention == "corrected":
            boxes = cxcywh_to_xyxy(boxes)
        return torch.cat([batch_index.float()[:, None], boxes * self.image_size], dim=1)

    def forward(
        self, maps: list[torch.Tensor], boxes_cxcywh: torch.Tensor, batch_index: torch.Tensor | None = None
    ) -> torch.Tensor:
        """maps from ``fuse``; boxes [K, 4] normalized cx,cy,w,h -> region tokens [K, region_out_dim]."""
        return self.roi_align.updims(self.features(maps, boxes_cxcywh, batch_index))

    def features(
        self, maps: list[torch.Tensor], boxes_cxcywh: torch.Tensor, batch_index: torch.Tensor | None = None
    ) -> torch.Tensor:
        """Region features before the output projection ``updims``: [K, region_feat_dim] (training caches them)."""
        head = self.roi_align
        if batch_index is None:
            batch_index = torch.zeros(len(boxes_cxcywh), dtype=torch.long, device=boxes_cxcywh.device)
        rois = self.rois(boxes_cxcywh, batch_index)
        dtype = maps[0].dtype
        if self._fast():
            # sum over levels of conv_l(roi_l) == one conv over the levels' channels stacked (weights likewise)
            rois_all = roi_align_levels(maps, rois, head.output_size, list(self.spatial_scales), 2).to(dtype)
            weight = torch.cat([conv.weight for conv in head.pconvs], dim=1)
            bias = sum(conv.bias for conv in head.pconvs)
            pooled = F.conv2d(rois_all, weight, bias, padding=1)
        else:
            pooled = None
            for lvl, (feat, scale) in enumerate(zip(maps, self.spatial_scales, strict=True)):
                roi = roi_align(feat, rois, head.output_size, scale, sampling_ratio=2).to(dtype)
                out = head.pconvs[lvl](roi)
                pooled = out if pooled is None else pooled + out
        pooled = F.relu(pooled).flatten(1)
        return head.flatten_linear(pooled) + head.pos_embedd(boxes_cxcywh.to(dtype))
