"""Stage-2 feature cache: the frozen perception's outputs per train scene, computed once.

Why: stage 2 freezes the vision encoder, proposer and region encoder (up to ``updims``), so their outputs are
fixed; caching them makes a stage-2 step cost only the LLM.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import torch
from tqdm.auto import tqdm

from groma_ros.model.modeling_groma import GromaForConditionalGeneration

from . import common, data, forward

GT_SCORE = 0.2  # Groma's score for ground_boxes added during training
CANDIDATE_MIN_SCORE = 0.05  # cached proposals: below the model's box_score_thres (0.15) with a margin


@dataclass
class SceneCache:
    """Frozen per-scene features: merged image features and every candidate box with its region feature."""

    index: int
    num_objects: int
    merged: torch.Tensor  # [N_img, 4D] fp16
    boxes: torch.Tensor  # [Q + N, 4] proposals then GT boxes (cx, cy, w, h)
    scores: torch.Tensor  # [Q + N] proposal scores, GT_SCORE for GT boxes
    feats: torch.Tensor  # [Q + N, region_feat_dim] fp16 (before updims)


@torch.no_grad()
def build_cache(model: GromaForConditionalGeneration, num_scenes: int, batch: int = 16,
                start: int = 0) -> list[SceneCache]:
    model.eval()
    out: list[SceneCache] = []
    for s in tqdm(range(start, start + num_scenes, batch), desc="stage 2 cache", unit="batch", mininterval=10):
        idx = list(range(s, min(s + batch, start + num_scenes)))
        items = [data.scene_tensors(data.train_scene(i), model.config.image_size).to(model.device) for i in idx]
        states = forward.vision_states(model, data.stack_pixels(items))
        trace = forward.propose(model, states)
        merged = forward.merged_image_features(model, states)
        maps = model.region_encoder.fuse(states, model.config.grid_size)
        per_scene = []
        for b, item in enumerate(items):
            keep = trace.scores[b] > CANDIDATE_MIN_SCORE  # the rest can never pass NMS's score threshold
            boxes = torch.cat([trace.boxes[b][keep], item.boxes])
            scores = torch.cat([trace.scores[b][keep], torch.full((len(item.boxes),), GT_SCORE, device=keep.device)])
            per_scene.append((boxes, scores))
        all_boxes = torch.cat([bx for bx, _ in per_scene])
        bidx = torch.cat([torch.full((len(bx),), b, dtype=torch.long, device=bx.device)
                          for b, (bx, _) in enumerate(per_scene)])
        feats = forward.region_features(model.region_encoder, maps, all_boxes, bidx).split(
            [len(bx) for bx, _ in per_scene])
        for b, (i, item) in enumerate(zip(idx, items, strict=True)):
            boxes, scores = per_scene[b]
            # boxes/scores on the CPU (per-sequence NMS there is cheaper than tiny GPU kernels)
            out.append(SceneCache(i, len(item.boxes), merged[b].half().cpu(), boxes.float().cpu(),
                                  scores.float().cpu(), feats[b].half().cpu()))
    return out


def cache_to(cache: list[SceneCache], device: torch.device | str) -> list[SceneCache]:
    """Features (what the LLM reads) on ``device``; boxes and scores stay on the CPU for region selection."""
    return [SceneCache(c.index, c.num_objects, c.merged.to(device), c.boxes, c.scores, c.feats.to(device))
            for c in cache]


def load_or_build_cache(model: GromaForConditionalGeneration, path: Path, num_scenes: int) -> list[SceneCache]:
    if path.is_file():
        cached = torch.load(path, weights_only=False)
        if len(cached) >= num_scenes:
            return cached[:num_scenes]
    cache = build_cache(model, num_scenes)
    common.save_checkpoint(path, cache)
    return cache


