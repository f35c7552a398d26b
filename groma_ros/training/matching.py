"""Hungarian matching and the DETR box losses (L1 + GIoU + sigmoid focal objectness).

Why one-to-one matching: the proposer must give each object one high-scoring box and leave duplicates low,
so Groma's NMS + score threshold keeps exactly the objects as regions.
"""

from __future__ import annotations

import torch
from scipy.optimize import linear_sum_assignment
from torch.nn import functional as F

from groma_ros.model.ops import cxcywh_to_xyxy


def generalized_iou(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """Pairwise GIoU of xyxy boxes [N, 4] x [M, 4] -> [N, M]."""
    area_a = (a[:, 2] - a[:, 0]).clamp(min=0) * (a[:, 3] - a[:, 1]).clamp(min=0)
    area_b = (b[:, 2] - b[:, 0]).clamp(min=0) * (b[:, 3] - b[:, 1]).clamp(min=0)
    lt = torch.max(a[:, None, :2], b[None, :, :2])
    rb = torch.min(a[:, None, 2:], b[None, :, 2:])
    inter = (rb - lt).clamp(min=0).prod(-1)
    union = area_a[:, None] + area_b[None] - inter
    iou = inter / union.clamp(min=1e-7)
    lt_c = torch.min(a[:, None, :2], b[None, :, :2])
    rb_c = torch.max(a[:, None, 2:], b[None, :, 2:])
    area_c = (rb_c - lt_c).clamp(min=0).prod(-1)
    return iou - (area_c - union) / area_c.clamp(min=1e-7)


@torch.no_grad()
def hungarian_match(logits: torch.Tensor, boxes: torch.Tensor, gt: torch.Tensor, cost_class: float = 2.0,
                    cost_l1: float = 5.0, cost_giou: float = 2.0, alpha: float = 0.25,
                    gamma: float = 2.0) -> tuple[torch.Tensor, torch.Tensor]:
    """(query indices, gt indices) minimizing the Deformable-DETR cost for one image.

    logits [Q] objectness, boxes [Q, 4] and gt [N, 4] normalized cx, cy, w, h.
    """
    if len(gt) == 0:
        empty = torch.empty(0, dtype=torch.long, device=logits.device)
        return empty, empty
    p = logits.float().sigmoid()[:, None]
    neg = (1 - alpha) * p**gamma * -(1 - p + 1e-8).log()
    pos = alpha * (1 - p) ** gamma * -(p + 1e-8).log()
    cost = cost_class * (pos - neg).expand(-1, len(gt))
    cost = cost + cost_l1 * torch.cdist(boxes.float(), gt.float(), p=1)
    cost = cost - cost_giou * generalized_iou(cxcywh_to_xyxy(boxes.float()), cxcywh_to_xyxy(gt.float()))
    q, g = linear_sum_assignment(cost.cpu().numpy())  # scipy: on the CPU whatever the device
    return (torch.as_tensor(q, dtype=torch.long, device=logits.device),
            torch.as_tensor(g, dtype=torch.long, device=logits.device))


def sigmoid_focal_loss(logits: torch.Tensor, targets: torch.Tensor, alpha: float = 0.25,
                       gamma: float = 2.0) -> torch.Tensor:
    """Summed focal loss (Deformable-DETR's objectness loss); the caller normalizes by the number of boxes."""
    p = logits.sigmoid()
    ce = F.binary_cross_entropy_with_logits(logits, targets, reduction="none")
    p_t = p * targets + (1 - p) * (1 - targets)
    loss = ce * (1 - p_t) ** gamma
    loss = (alpha * targets + (1 - alpha) * (1 - targets)) * loss
    return loss.sum()


def box_losses(pred: torch.Tensor, gt: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Summed L1 and (1 - GIoU) of matched boxes, both [M, 4] cx, cy, w, h."""
    l1 = F.l1_loss(pred, gt, reduction="sum")
    giou = (1 - torch.diag(generalized_iou(cxcywh_to_xyxy(pred), cxcywh_to_xyxy(gt)))).sum()
    return l1, giou
