"""Operator semantics: RoIAlign (mmcv CUDA), NMS (mmcv), IoU helpers, the tie order of mmcv's sort."""

import random

import pytest
import torch

from groma_ros.model.ops import (
    box_iou,
    cxcywh_to_xyxy,
    descending_order,
    first_argmax,
    nms,
    roi_align,
    roi_align_sampled,
)


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
    assert tied.tolist() == [0, 1]  # up to 16 candidates, equal scores keep candidate order


def test_iou_and_first_argmax():
    a = cxcywh_to_xyxy(torch.tensor([[0.5, 0.5, 0.2, 0.2]]))
    b = cxcywh_to_xyxy(torch.tensor([[0.5, 0.5, 0.2, 0.2], [0.5, 0.5, 0.4, 0.4], [0.5, 0.5, 0.2, 0.2]]))
    iou = box_iou(a, b)
    assert torch.allclose(iou, torch.tensor([[1.0, 0.25, 1.0]]))
    assert first_argmax(iou).tolist() == [0]
    assert first_argmax(torch.tensor([[0.0, 2.0, 2.0], [3.0, 1.0, 3.0]])).tolist() == [1, 0]


def _cpu_sort_order(keys: list[float]) -> list[int]:
    """What the original's mmcv NMS runs: torch's default (unstable) descending sort on the CPU."""
    return torch.sort(torch.tensor(keys, dtype=torch.float32), descending=True).indices.tolist()


def _quicksort_killer(n: int) -> list[float]:
    """McIlroy's adversary ("A killer adversary for quicksort", 1999) run against ``descending_order``:
    an input on which its quicksort phase degenerates, so the heapsort fallback runs."""
    gas, val, state = n, [n] * n, {"candidate": -1, "solid": 0}

    class Probe(float):
        def __new__(cls, i):
            obj = super().__new__(cls, 0.0)
            obj.i = i
            return obj

        def __gt__(self, other):  # "self sorts before other"
            x, y = self.i, other.i
            if val[x] == gas and val[y] == gas:
                val[x if x == state["candidate"] else y] = state["solid"]
                state["solid"] += 1
            if val[x] == gas:
                state["candidate"] = x
            elif val[y] == gas:
                state["candidate"] = y
            return val[x] < val[y]

    from groma_ros.model import ops

    ops._introsort_descending([Probe(i) for i in range(n)])
    return [-float(v // 2) for v in val]  # pairs of equal keys, so the heapsort runs with ties


@pytest.mark.parametrize("proposals", [0, 10, 14, 15, 30, 47, 48, 50, 100, 280, 298, 300])
@pytest.mark.parametrize("user_boxes", [2, 3, 4, 5])
def test_tie_order_is_the_cpu_sort_of_the_original(proposals, user_boxes):
    """Proposals (distinct scores below 1) followed by user boxes at exactly 1.0, as the original builds
    its candidates: the tied user boxes come out in the order torch's CPU sort puts them."""
    rng = random.Random(proposals * 10 + user_boxes)
    keys = [float(torch.tensor(rng.uniform(0.0, 0.99))) for _ in range(proposals)] + [1.0] * user_boxes
    assert descending_order(torch.tensor(keys)).tolist() == _cpu_sort_order(keys)


def test_tie_order_matches_the_cpu_sort_on_heavy_ties_and_the_heapsort_path():
    rng = random.Random(7)
    cases = [[float(rng.randint(0, 3)) for _ in range(rng.randint(0, 400))] for _ in range(150)]
    cases += [sorted(float(rng.randint(0, 5)) for _ in range(n)) for n in (17, 33, 301)]
    cases += [[1.0] * 305, [float(i % 7) for i in range(300)], [float("nan"), 1.0, 0.5] * 9]
    cases += [_quicksort_killer(n) for n in (60, 300)]
    for keys in cases:
        assert descending_order(torch.tensor(keys)).tolist() == _cpu_sort_order(keys), len(keys)


def test_tie_order_changes_which_user_box_nms_keeps():
    """Two overlapping user boxes (IoU 0.8 > 0.6) after 20 proposals: the CPU sort puts the later one first,
    so it is the one kept; a stable sort would keep the earlier one."""
    far = torch.tensor([[100.0 + 3 * i, 100.0, 101.0 + 3 * i, 101.0] for i in range(20)])
    users = torch.tensor([[0.0, 0.0, 10.0, 10.0], [0.0, 0.0, 10.0, 8.0]])
    scores = torch.cat([torch.linspace(0.9, 0.2, 20), torch.ones(2)])
    keep = nms(torch.cat([far, users]), scores, 0.6, 0.15)
    assert _cpu_sort_order(scores.tolist())[:2] == [21, 20]
    assert keep.tolist() == [21] + list(range(20))
