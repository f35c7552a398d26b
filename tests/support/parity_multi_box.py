"""A parity case with several user boxes, its expected values derived from the released semantics.

The shared fixture has one user box, so the order of candidates that tie at score 1.0 never shows there.
This case adds three ``<roi><refer_box></roi><refer_feat>`` groups to the fixture's ``refer`` prompt:
U0 = the fixture's user box, U1 = a copy of proposal 26 shifted right by 0.15 of its width (IoU 0.74 with
it), U2 = an exact copy of proposal 26. The expected values are computed here from the original's recorded
proposals and scores (``expected.npz``) by a re-statement of the released selection that shares no code
with ``groma_ros.model``:

* candidates = the Q proposals, then the user boxes at score 1.0; cx,cy,w,h -> x1,y1,x2,y2 unclipped;
* mmcv NMS: scores > box_score_thres, ordered by ``Tensor.sort(descending=True)`` on the CPU (the call
  the original makes; with 47 proposals above threshold it puts the three tied user boxes last first, so
  U2 suppresses U1), greedy IoU > nms_thres suppression, at most max_region_num;
* the shuffle: ``torch.randperm(K)`` right after ``torch.manual_seed(1234)`` (the fixture's recorded
  permutations are exactly this draw);
* each ``<refer_box>``, in order, becomes ``<r k>`` with k = first argmax IoU against the final regions;
* region tokens: the tokens the original computed for the same boxes (every final region here is a box
  the fixture recorded: a proposal kept in ``refer``, U0, or U2 = proposal 26);
* the answer: greedy decoding of the model's LLM over inputs assembled from those ids and recorded tokens.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

NAME = "refer3"
SHUFFLE_SEED = 1234
COPIED_PROPOSAL = 26
SHIFT_OF_WIDTH = 0.15


@dataclass
class ReleasedSelection:
    """Expected selection of the multi-box case (candidate indices: 0..Q-1 proposals, Q.. user boxes)."""

    nms_keep: np.ndarray
    kept_boxes: np.ndarray
    perm: np.ndarray
    region_boxes: np.ndarray
    final_candidates: np.ndarray
    refer_match: np.ndarray
    nms_iou_margin: float  # min |IoU - nms_thres| over the comparisons greedy NMS makes
    refer_margin: float  # min (best - second best) IoU over the user boxes' matches


def user_boxes(expected: dict[str, np.ndarray]) -> np.ndarray:
    """U0 (the fixture's user box), U1 (proposal 26 shifted), U2 (proposal 26), normalized cx,cy,w,h."""
    copy = expected["proposal_boxes"][COPIED_PROPOSAL].astype(np.float32)
    shifted = copy.copy()
    shifted[0] = np.float32(copy[0] + np.float32(SHIFT_OF_WIDTH) * copy[2])
    return np.stack([expected["refer_refer_boxes"][0].astype(np.float32), shifted, copy])


def prompt_ids(refer_ids: list[int], token_ids: dict[str, int]) -> list[int]:
    """The fixture's ``refer`` prompt with two more ``<roi><refer_box></roi><refer_feat>`` groups."""
    group = [token_ids["<roi>"], token_ids["<refer_box>"], token_ids["</roi>"], token_ids["<refer_feat>"]]
    at = refer_ids.index(token_ids["<refer_feat>"]) + 1
    return refer_ids[:at] + [143] + group + [144] + group + refer_ids[at:]


def _xyxy(b: np.ndarray) -> np.ndarray:
    b = b.astype(np.float32)
    half = np.float32(0.5)
    return np.stack([b[:, 0] - half * b[:, 2], b[:, 1] - half * b[:, 3],
                     b[:, 0] + half * b[:, 2], b[:, 1] + half * b[:, 3]], axis=1)


def _iou(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    lt = np.maximum(a[:, None, :2], b[None, :, :2])
    rb = np.minimum(a[:, None, 2:], b[None, :, 2:])
    wh = np.clip(rb - lt, 0, None)
    inter = wh[..., 0] * wh[..., 1]
    area_a = (a[:, 2] - a[:, 0]) * (a[:, 3] - a[:, 1])
    area_b = (b[:, 2] - b[:, 0]) * (b[:, 3] - b[:, 1])
    return inter / (area_a[:, None] + area_b[None, :] - inter)


def released_selection(proposal_boxes: np.ndarray, proposal_scores: np.ndarray, users: np.ndarray,
                       nms_thres: float, score_thres: float, max_num: int) -> ReleasedSelection:
    """The original's selection for the recorded proposals plus ``users`` (see the module docstring)."""
    boxes = np.concatenate([proposal_boxes, users]).astype(np.float32)
    scores = np.concatenate([proposal_scores, np.ones(len(users))]).astype(np.float32)
    corners = _xyxy(boxes)
    valid = np.nonzero(scores > np.float32(score_thres))[0]
    order = valid[torch.sort(torch.from_numpy(scores[valid]), descending=True).indices.numpy()]
    keep: list[int] = []
    margin = float("inf")
    for cand in order:
        if keep:
            ious = _iou(corners[[cand]], corners[keep])[0]
            margin = min(margin, float(np.abs(ious - nms_thres).min()))
            if (ious > nms_thres).any():
                continue
        keep.append(int(cand))
    keep_arr = np.array(keep[:max_num] if max_num > 0 else keep, dtype=np.int64)
    torch.manual_seed(SHUFFLE_SEED)
    perm = torch.randperm(len(keep_arr)).numpy()
    final = keep_arr[perm]
    match_iou = _iou(_xyxy(users), corners[final])
    ranked = np.sort(match_iou, axis=1)
    return ReleasedSelection(
        keep_arr, boxes[keep_arr], perm, boxes[final], final, match_iou.argmax(axis=1).astype(np.int64),
        margin, float((ranked[:, -1] - ranked[:, -2]).min()),
    )


def expected_ids(ids: list[int], match: np.ndarray, num_regions: int, num_image_tokens: int,
                 token_ids: dict[str, int]) -> tuple[np.ndarray, np.ndarray]:
    """(prompt after the in-place ``<refer_box>`` rewrite, LLM-side ids after placeholder expansion)."""
    rewritten, matches = [], iter(match.tolist())
    for tok in ids:
        rewritten.append(token_ids[f"<r{next(matches)}>"] if tok == token_ids["<refer_box>"] else tok)
    expanded: list[int] = []
    for tok in rewritten:
        if tok == token_ids["<image>"]:
            expanded += [tok] * num_image_tokens
        elif tok == token_ids["<region>"]:
            for k in range(num_regions):
                expanded += [token_ids[f"<r{k}>"], tok]
        else:
            expanded.append(tok)
    return np.array(rewritten, dtype=np.int64), np.array(expanded, dtype=np.int64)


def recorded_region_tokens(expected: dict[str, np.ndarray], boxes: np.ndarray) -> np.ndarray:
    """The region token the original computed for each box (looked up among every recorded region)."""
    rec_boxes = np.concatenate([expected[f"{p}_region_boxes"] for p in ("plain", "grounding", "refer")])
    rec_tokens = np.concatenate([expected[f"{p}_region_tokens"] for p in ("plain", "grounding", "refer")])
    rows = []
    for box in boxes:
        hit = np.nonzero(np.all(np.abs(rec_boxes - box) <= 1e-7, axis=1))[0]
        if not len(hit):
            raise ValueError(f"no recorded region token for box {box.tolist()}")
        rows.append(rec_tokens[hit[0]])
    return np.stack(rows)


@torch.no_grad()
def reference_greedy(model, image_tokens: torch.Tensor, llm_ids: np.ndarray, region_tokens: np.ndarray,
                     refer_rows: np.ndarray, token_ids: dict[str, int], max_new_tokens: int,
                     eos: int = 2) -> tuple[torch.Tensor, torch.Tensor]:
    """Greedy tokens and step logits of the model's LLM over inputs assembled here, by position.

    Ids >= vocab embed through ``new_input_embs``; ``<image>`` positions get the image tokens,
    ``<region>`` positions the region tokens and ``<refer_feat>`` positions region token k of each match,
    in order (the original's masked_scatter).
    """
    from transformers import DynamicCache

    vocab = model.config.llm_cfg.vocab_size
    ids = torch.from_numpy(llm_ids)

    def embed(tokens: torch.Tensor) -> torch.Tensor:
        rows = [model.new_input_embs.weight[t - vocab] if t >= vocab else
                model.llm.get_input_embeddings().weight[t] for t in tokens.tolist()]
        return torch.stack(rows)

    embeds = embed(ids).clone()
    regions = torch.from_numpy(region_tokens).to(embeds)
    for token, feats in ((token_ids["<image>"], image_tokens.to(embeds)),
                         (token_ids["<region>"], regions),
                         (token_ids["<refer_feat>"], regions[torch.from_numpy(refer_rows)])):
        positions = (ids == token).nonzero().flatten()
        embeds[positions] = feats[: len(positions)]
    cache = DynamicCache(config=model.config.llm_cfg)
    out = model.llm.model(inputs_embeds=embeds[None], past_key_values=cache, use_cache=True)
    tokens, steps = [], []
    for _ in range(max_new_tokens):
        hidden = out.last_hidden_state[0, -1]
        logits = torch.cat([model.llm.lm_head(hidden), model.extra_lm_head(hidden)])
        steps.append(logits)
        tokens.append(int(logits.argmax()))
        if tokens[-1] == eos or len(tokens) == max_new_tokens:
            break
        out = model.llm.model(inputs_embeds=embed(torch.tensor([tokens[-1]]))[None],
                              past_key_values=out.past_key_values, use_cache=True)
    return torch.tensor(tokens), torch.stack(steps)
