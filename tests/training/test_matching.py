"""Hungarian matching and box losses: the pieces stage 1's proposer training rests on."""

from __future__ import annotations

import torch

from groma_ros.model.ops import cxcywh_to_xyxy
from groma_ros.training.matching import box_losses, generalized_iou, hungarian_match, sigmoid_focal_loss


def test_match_pairs_each_gt_with_its_own_box():
    gt = torch.tensor([[0.2, 0.2, 0.1, 0.1], [0.7, 0.6, 0.2, 0.3]])
    boxes = torch.tensor([[0.5, 0.5, 0.4, 0.4], [0.71, 0.6, 0.2, 0.3], [0.2, 0.21, 0.1, 0.1]])
    q, g = hungarian_match(torch.zeros(3), boxes, gt)
    assert dict(zip(g.tolist(), q.tolist(), strict=True)) == {0: 2, 1: 1}


def test_match_with_no_objects_is_empty():
    q, g = hungarian_match(torch.zeros(3), torch.rand(3, 4), torch.zeros(0, 4))
    assert len(q) == len(g) == 0


def test_giou_is_one_for_identical_and_negative_for_far_boxes():
    a = cxcywh_to_xyxy(torch.tensor([[0.2, 0.2, 0.1, 0.1], [0.8, 0.8, 0.1, 0.1]]))
    g = generalized_iou(a, a)
    assert torch.allclose(torch.diag(g), torch.ones(2))
    assert g[0, 1] < 0


def test_box_losses_vanish_on_perfect_prediction_and_grad_flows():
    gt = torch.tensor([[0.3, 0.4, 0.2, 0.1]])
    l1, giou = box_losses(gt.clone(), gt)
    assert float(l1) == 0 and abs(float(giou)) < 1e-6
    pred = torch.tensor([[0.35, 0.4, 0.2, 0.1]], requires_grad=True)
    l1, giou = box_losses(pred, gt)
    (l1 + giou).backward()
    assert pred.grad[0, 0] > 0


def test_focal_loss_prefers_correct_logits():
    t = torch.tensor([1.0, 0.0])
    assert sigmoid_focal_loss(torch.tensor([4.0, -4.0]), t) < sigmoid_focal_loss(torch.tensor([-4.0, 4.0]), t)
