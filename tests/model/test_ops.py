"""Operator semantics: RoIAlign (mmcv CUDA), NMS (mmcv), IoU helpers."""

import pytest
import torch

from groma_ros.model.ops import box_iou, cxcywh_to_xyxy, first_argmax, nms, roi_align, roi_align_sampled


def _bilinear(feat, y, x):
    """mmcv ``bilinear_interpolate`` (CUDA), scalar."""
    c, h, w = feat.shape
    if y < -1.0 or y > h or x < -1.0 or x > w:
        return torch.zeros(c)
    y, x = max(y, 0.0), max(x, 0.0)
    y_low, x_low = int(y), int(x)
    if y_low >= h - 1:
        y_high = y_low = h - 1
        y = float(y_low)
    else:
        y_high = y_low + 1
    if x_low >= w - 1:
        x_high = x_low = w - 1
        x = float(x_low)
    else:
        x_high = x_low + 1
    ly, lx = y - y_low, x - x_low
    hy, hx = 1 - ly, 1 - lx
    return (
        hy * hx * feat[:, y_low, x_low]
        + hy * lx * feat[:, y_low, x_high]
        + ly * hx * feat[:, y_high, x_low]
        + ly * lx * feat[:, y_high, x_high]
    )


def _roi_align_reference(feats, roi, size, scale, ratio):
    b = int(roi[0])
    x1, y1, x2, y2 = (float(v) * scale - 0.5 for v in roi[1:])
    bw, bh = (x2 - x1) / size, (y2 - y1) / size
    out = torch.zeros(feats.shape[1], size, size, dtype=torch.float64)
    for ph in range(size):
        for pw in range(size):
            acc = 0
            for iy in range(ratio):
                y = y1 + ph * bh + (iy + 0.5) * bh / ratio
                for ix in range(ratio):
                    x = x1 + pw * bw + (ix + 0.5) * bw / ratio
                    acc = acc + _bilinear(feats[b].double(), y, x)
            out[:, ph, pw] = acc / (ratio * ratio)
    return out


@pytest.mark.parametrize("implementation", ["roi_align", "roi_align_sampled"])
def test_roi_align_matches_mmcv_cuda_semantics(implementation):
    g = torch.Generator().manual_seed(0)
    feats = torch.randn(2, 3, 9, 11, generator=g)
    rois = torch.tensor(
        [
            [0, 1.0, 2.0, 12.0, 15.0],  # ordinary
            [1, 10.0, 12.0, 3.0, 2.0],  # negative width and height (the released box convention makes these)
            [0, -6.0, -5.0, 30.0, 40.0],  # runs past every border
            [1, 19.5, 17.0, 21.0, 18.0],  # clamps at the last row/column
        ]
    )
    if implementation == "roi_align":
        out = roi_align(feats, rois, output_size=4, spatial_scale=0.5, sampling_ratio=2, max_elements=50)
    else:
        out = roi_align_sampled(feats, rois, output_size=4, spatial_scale=0.5, sampling_ratio=2)
    assert out.shape == (4, 3, 4, 4)
    for i, roi in enumerate(rois):
        ref = _roi_align_reference(feats, roi, 4, 0.5, 2)
        assert torch.allclose(out[i].double(), ref, atol=1e-5), i


def test_nms_follows_mmcv():
    boxes = torch.tensor(
        [[0, 0, 10, 10], [1, 1, 11, 11], [20, 20, 30, 30], [0, 0, 10, 10.5], [50, 50, 60, 60.0]]
    )
    scores = torch.tensor([0.9, 0.8, 0.7, 0.95, 0.1])
    keep = nms(boxes, scores, iou_threshold=0.6, score_threshold=0.15)
    assert keep.tolist() == [3, 2]  # 0 and 1 overlap 3 by > 0.6; 4 is below the score threshold
    assert nms(boxes, scores, 0.6, 0.15, max_num=1).tolist() == [3]
    assert nms(boxes, scores, 0.99, 0.0).tolist() == [3, 0, 1, 2, 4]
    assert nms(boxes, scores, 0.6, 0.99).numel() == 0
    tied = nms(boxes[[2, 4]], torch.tensor([1.0, 1.0]), 0.6, 0.15)
    assert tied.tolist() == [0, 1]  # equal scores keep candidate order


def test_iou_and_first_argmax():
    a = cxcywh_to_xyxy(torch.tensor([[0.5, 0.5, 0.2, 0.2]]))
    b = cxcywh_to_xyxy(torch.tensor([[0.5, 0.5, 0.2, 0.2], [0.5, 0.5, 0.4, 0.4], [0.5, 0.5, 0.2, 0.2]]))
    iou = box_iou(a, b)
    assert torch.allclose(iou, torch.tensor([[1.0, 0.25, 1.0]]))
    assert first_argmax(iou).tolist() == [0]
    assert first_argmax(torch.tensor([[0.0, 2.0, 2.0], [3.0, 1.0, 3.0]])).tolist() == [1, 0]
