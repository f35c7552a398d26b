"""Pure-torch replacements for the mmcv / torchvision operators the original imports.

Semantics follow the originals' GPU kernels (what the released model ran with), not their CPU kernels:
mmcv's CPU RoIAlign asserts on the negative-size RoIs that the released box convention produces.
"""

from __future__ import annotations

import math

import torch
from torch.nn import functional as F


def cxcywh_to_xyxy(boxes: torch.Tensor) -> torch.Tensor:
    """HF ``center_to_corners_format``: no clipping, same arithmetic order."""
    cx, cy, w, h = boxes.unbind(-1)
    return torch.stack([cx - 0.5 * w, cy - 0.5 * h, cx + 0.5 * w, cy + 0.5 * h], dim=-1)


def xyxy_to_cxcywh(boxes: torch.Tensor) -> torch.Tensor:
    x1, y1, x2, y2 = boxes.unbind(-1)
    return torch.stack([(x1 + x2) / 2, (y1 + y2) / 2, x2 - x1, y2 - y1], dim=-1)


def inverse_sigmoid(x: torch.Tensor, eps: float = 1e-5) -> torch.Tensor:
    """HF Deformable-DETR inverse_sigmoid (clamp to [0, 1], both sides floored at eps)."""
    x = x.clamp(min=0, max=1)
    return torch.log(x.clamp(min=eps) / (1 - x).clamp(min=eps))


def box_iou(boxes1: torch.Tensor, boxes2: torch.Tensor) -> torch.Tensor:
    """Pairwise IoU of xyxy boxes (torchvision ``box_iou``: no +1 offset) -> [N, M]."""
    area1 = (boxes1[:, 2] - boxes1[:, 0]) * (boxes1[:, 3] - boxes1[:, 1])
    area2 = (boxes2[:, 2] - boxes2[:, 0]) * (boxes2[:, 3] - boxes2[:, 1])
    lt = torch.max(boxes1[:, None, :2], boxes2[None, :, :2])
    rb = torch.min(boxes1[:, None, 2:], boxes2[None, :, 2:])
    wh = (rb - lt).clamp(min=0)
    inter = wh[..., 0] * wh[..., 1]
    return inter / (area1[:, None] + area2[None, :] - inter)


def first_argmax(x: torch.Tensor) -> torch.Tensor:
    """Row-wise argmax that returns the FIRST maximum (torch only promises *a* maximum)."""
    is_max = x == x.max(dim=-1, keepdim=True).values
    idx = torch.arange(x.shape[-1], device=x.device).expand_as(x)
    return torch.where(is_max, idx, x.shape[-1]).min(dim=-1).values


def descending_order(scores: torch.Tensor) -> torch.Tensor:
    """The permutation ``scores.sort(descending=True)`` (default, unstable) returns on the CPU, ties included.

    The one place where equal scores are ordered. mmcv's NMS sorts its candidates this way, so with several
    user boxes (all scored exactly 1.0) this order decides which tied box comes first, hence the kept order,
    the ``<rN>`` each ``<refer_box>`` maps to and the answer. torch 2.13's CPU kernel runs libstdc++
    ``std::sort`` (introsort: median-of-three quicksort down to 16-element runs, heapsort past depth
    2*floor(log2 n), then insertion sort) with the comparator ``a > b`` (NaN first). The tie order
    depends on every score, not only on the tied ones: up to 16 candidates it is candidate order; with the
    shared fixture's 47 proposals above threshold, 2 or 3 user boxes come out last first and 5 come out as
    4, 3, 0, 2, 1. The algorithm is re-done here step by step, so the order is the same on every device and
    torch version. Distinct scores take the fast path (only one order is possible).
    """
    flat = scores.detach().float().cpu().reshape(-1)
    if torch.unique(flat).numel() == flat.numel() and not bool(torch.isnan(flat).any()):
        return torch.sort(flat, descending=True, stable=True).indices
    return torch.tensor(_introsort_descending(flat.tolist()), dtype=torch.long)


def _introsort_descending(keys: list[float]) -> list[int]:
    """libstdc++ ``std::sort`` (GCC 13 ``stl_algo.h`` / ``stl_heap.h``) of (key, index) pairs, keys descending.

    Written by hand because no Python library exposes that exact algorithm; each helper mirrors the
    libstdc++ function of the same name, so the element moves (and hence the tie order) are identical.
    """
    items = [(k, i) for i, k in enumerate(keys)]

    def before(a: tuple[float, int], b: tuple[float, int]) -> bool:
        return (math.isnan(a[0]) and not math.isnan(b[0])) or a[0] > b[0]

    def adjust_heap(first: int, hole: int, length: int, value: tuple[float, int]) -> None:
        top = child = hole
        while child < (length - 1) // 2:
            child = 2 * (child + 1)
            if before(items[first + child], items[first + child - 1]):
                child -= 1
            items[first + hole] = items[first + child]
            hole = child
        if length % 2 == 0 and child == (length - 2) // 2:
            child = 2 * (child + 1)
            items[first + hole] = items[first + child - 1]
            hole = child - 1
        parent = (hole - 1) // 2  # __push_heap
        while hole > top and before(items[first + parent], value):
            items[first + hole] = items[first + parent]
            hole, parent = parent, (parent - 1) // 2
        items[first + hole] = value

    def heap_sort(first: int, last: int) -> None:  # __partial_sort(first, last, last)
        length = last - first
        for parent in range((length - 2) // 2, -1, -1):  # __make_heap
            adjust_heap(first, parent, length, items[first + parent])
        while last - first > 1:  # __sort_heap
            last -= 1
            value, items[last] = items[last], items[first]
            adjust_heap(first, 0, last - first, value)

    def partition_pivot(first: int, last: int) -> int:  # __unguarded_partition_pivot
        a, b, c = first + 1, first + (last - first) // 2, last - 1
        if before(items[a], items[b]):
            median = b if before(items[b], items[c]) else (c if before(items[a], items[c]) else a)
        else:
            median = a if before(items[a], items[c]) else (c if before(items[b], items[c]) else b)
        items[first], items[median] = items[median], items[first]
        lo, hi = first + 1, last
        while True:
            while before(items[lo], items[first]):
                lo += 1
            hi -= 1
            while before(items[first], items[hi]):
                hi -= 1
            if lo >= hi:
                return lo
            items[lo], items[hi] = items[hi], items[lo]
            lo += 1

    def introsort_loop(first: int, last: int, depth: int) -> None:
        while last - first > _SORT_THRESHOLD:
            if depth == 0:
                heap_sort(first, last)
                return
            depth -= 1
            cut = partition_pivot(first, last)
            introsort_loop(cut, last, depth)
            last = cut

    def linear_insert(last: int) -> None:  # __unguarded_linear_insert
        value = items[last]
        while before(value, items[last - 1]):
            items[last] = items[last - 1]
            last -= 1
        items[last] = value

    def insertion_sort(first: int, last: int) -> None:
        for i in range(first + 1, last):
            if before(items[i], items[first]):
                items[first + 1 : i + 1], items[first] = items[first:i], items[i]
            else:
                linear_insert(i)

    n = len(items)
    if n:
        introsort_loop(0, n, 2 * (n.bit_length() - 1))
        if n > _SORT_THRESHOLD:  # __final_insertion_sort
            insertion_sort(0, _SORT_THRESHOLD)
            for i in range(_SORT_THRESHOLD, n):
                linear_insert(i)
        else:
            insertion_sort(0, n)
    return [i for _, i in items]


_SORT_THRESHOLD = 16  # libstdc++ _S_threshold


def nms(
    boxes_xyxy: torch.Tensor,
    scores: torch.Tensor,
    iou_threshold: float,
    score_threshold: float = 0.0,
    max_num: int = -1,
) -> torch.Tensor:
    """mmcv ``nms(..., score_threshold, max_num)``: indices into the full candidate list, by descending score.

    Keep scores > score_threshold; order the survivors as mmcv does (its kernel sorts them with
    ``sort(descending=True)``; equal scores in that sort's order, see :func:`descending_order`); greedily
    drop any box whose IoU with an already kept box is > iou_threshold; truncate to max_num. Runs on CPU in
    float32 (a few hundred boxes; a python loop beats kernel launches).
    """
    boxes_xyxy = boxes_xyxy.detach().float().cpu()
    scores = scores.detach().float().cpu()
    valid = torch.nonzero(scores > score_threshold).flatten()
    if valid.numel() == 0:
        return valid
    order = valid[descending_order(scores[valid])]
    ious = box_iou(boxes_xyxy[order], boxes_xyxy[order])
    suppressed = torch.zeros(len(order), dtype=torch.bool)
    keep = []
    for i in range(len(order)):
        if suppressed[i]:
            continue
        keep.append(i)
        if 0 < max_num <= len(keep):
            break
        suppressed |= ious[i] > iou_threshold
    return order[torch.tensor(keep, dtype=torch.long)]


def _sample_positions(rois: torch.Tensor, output_size: int, spatial_scale: float,
                      sampling_ratio: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Sample rows ``ys`` and columns ``xs`` [K, output_size * sampling_ratio] of each RoI in feature pixels."""
    start_w = rois[:, 1] * spatial_scale - 0.5
    start_h = rois[:, 2] * spatial_scale - 0.5
    bin_w = (rois[:, 3] * spatial_scale - 0.5 - start_w) / output_size
    bin_h = (rois[:, 4] * spatial_scale - 0.5 - start_h) / output_size
    # sample s of bin p sits at start + p*bin + (i + 0.5)*bin/ratio, computed in that order like the kernel
    p = torch.arange(output_size, device=rois.device, dtype=torch.float32).repeat_interleave(sampling_ratio)
    i = torch.arange(sampling_ratio, device=rois.device, dtype=torch.float32).repeat(output_size)
    ys = start_h[:, None] + p * bin_h[:, None] + (i + 0.5) * bin_h[:, None] / sampling_ratio
    xs = start_w[:, None] + p * bin_w[:, None] + (i + 0.5) * bin_w[:, None] / sampling_ratio
    return ys, xs


def roi_align(
    features: torch.Tensor,
    rois: torch.Tensor,
    output_size: int,
    spatial_scale: float,
    sampling_ratio: int = 2,
    max_elements: int = 1 << 26,
) -> torch.Tensor:
    """mmcv RoIAlign (CUDA semantics), ``aligned=True``, average pooling, fixed ``sampling_ratio``.

    features: [B, C, H, W]; rois: [K, 5] as (batch_index, x1, y1, x2, y2) in image coordinates.
    Returns [K, C, output_size, output_size] in float32.

    - aligned: coordinates are scaled then shifted by -0.5; RoI width/height are used as they are, even when
      negative (no clamp to 1, no assert), so bins can run backwards;
    - a sample outside [-1, H] x [-1, W] contributes 0; coordinates in [-1, 0] clamp to 0; samples past the
      last row/column clamp to it;
    - each bin is the mean of sampling_ratio² bilinear samples.
    The reference form: gathers along the channel-major layout, chunked over RoIs so memory stays below
    ``max_elements`` floats per corner. ``roi_align_sampled`` computes the same values several times faster.
    """
    features = features.float()
    rois = rois.float()
    _, channels, height, width = features.shape
    n = output_size * sampling_ratio
    ys, xs = _sample_positions(rois, output_size, spatial_scale, sampling_ratio)

    def axis(coord: torch.Tensor, size: int):
        inside = (coord >= -1.0) & (coord <= size)
        coord = coord.clamp(min=0)
        low = coord.floor().long()
        at_end = low >= size - 1
        low = torch.where(at_end, size - 1, low)
        high = torch.where(at_end, size - 1, low + 1)
        coord = torch.where(at_end, low.float(), coord)
        frac = coord - low.float()
        return low, high, 1 - frac, frac, inside

    y_lo, y_hi, hy, ly, y_in = axis(ys, height)
    x_lo, x_hi, hx, lx, x_in = axis(xs, width)
    batch = rois[:, 0].long()
    flat = features.transpose(0, 1).reshape(channels, -1)  # [C, B*H*W]: one gather serves every image
    out = features.new_empty(len(rois), channels, output_size, output_size)
    chunk = max(1, max_elements // max(1, channels * n * n))
    for s in range(0, len(rois), chunk):
        sl = slice(s, s + chunk)
        base = batch[sl, None, None] * (height * width)

        def gather(yi: torch.Tensor, xi: torch.Tensor, base: torch.Tensor = base) -> torch.Tensor:
            idx = (base + yi[:, :, None] * width + xi[:, None, :]).flatten()  # [k*n*n]
            return flat[:, idx].view(channels, -1, n, n).transpose(0, 1)  # [k, C, n, n]

        w1 = (hy[sl, :, None] * hx[sl, None, :])[:, None]
        w2 = (hy[sl, :, None] * lx[sl, None, :])[:, None]
        w3 = (ly[sl, :, None] * hx[sl, None, :])[:, None]
        w4 = (ly[sl, :, None] * lx[sl, None, :])[:, None]
        val = (
            w1 * gather(y_lo[sl], x_lo[sl])
            + w2 * gather(y_lo[sl], x_hi[sl])
            + w3 * gather(y_hi[sl], x_lo[sl])
            + w4 * gather(y_hi[sl], x_hi[sl])
        )
        inside = (y_in[sl, :, None] & x_in[sl, None, :])[:, None]
        val = torch.where(inside, val, 0.0)
        k = val.shape[0]
        val = val.view(k, channels, output_size, sampling_ratio, output_size, sampling_ratio)
        out[sl] = val.sum(dim=(3, 5)) / float(sampling_ratio * sampling_ratio)
    return out


def roi_align_sampled(features: torch.Tensor, rois: torch.Tensor, output_size: int, spatial_scale: float,
                      sampling_ratio: int = 2) -> torch.Tensor:
    """``roi_align`` through ``grid_sample``: 4-5x faster on a CPU, far fewer kernels on a GPU (one level of
    ``roi_align_levels``). Returns [K, C, s, s] float32 in channels-last memory."""
    return roi_align_levels([features], rois, output_size, [spatial_scale], sampling_ratio)


def roi_align_levels(features: list[torch.Tensor], rois: torch.Tensor, output_size: int,
                     spatial_scales: list[float], sampling_ratio: int = 2) -> torch.Tensor:
    """``roi_align`` of the same RoIs on several maps at once, their channels stacked: [K, sum(C), s, s].

    Same sample positions as ``roi_align`` (computed for every level in one pass); clamping the coordinates to
    [0, size - 1] and sampling with border padding is the kernel's clamp rule, and the outside mask zeroes what
    it drops. Values differ from ``roi_align`` only by the round trip through normalised coordinates (max 1e-5
    on unit-scale features). The ``sampling_ratio``² samples of a bin are the outermost axis of the sampling
    grid, so their mean is a reduction vectorised along the RoIs' bins. The result is float32 in channels-last
    memory (what the RoI conv wants), and no intermediate depends on more than one image.
    """
    rois = rois.float()
    device = rois.device
    s, r, k, levels = output_size, sampling_ratio, len(rois), len(features)
    scale = torch.tensor(spatial_scales, dtype=torch.float32, device=device)[:, None]  # [L, 1]
    height = torch.tensor([f.shape[-2] for f in features], dtype=torch.float32, device=device)[:, None, None]
    width = torch.tensor([f.shape[-1] for f in features], dtype=torch.float32, device=device)[:, None, None]
    # the sample positions of _sample_positions, for every level at once (same arithmetic order)
    start_w = rois[:, 1] * scale - 0.5
    start_h = rois[:, 2] * scale - 0.5
    bin_w = (rois[:, 3] * scale - 0.5 - start_w) / output_size
    bin_h = (rois[:, 4] * scale - 0.5 - start_h) / output_size
    p = torch.arange(output_size, device=device, dtype=torch.float32).repeat_interleave(sampling_ratio)
    i = torch.arange(sampling_ratio, device=device, dtype=torch.float32).repeat(output_size)
    ys = start_h[..., None] + p * bin_h[..., None] + (i + 0.5) * bin_h[..., None] / sampling_ratio  # [L, K, s*r]
    xs = start_w[..., None] + p * bin_w[..., None] + (i + 0.5) * bin_w[..., None] / sampling_ratio
    # sample axes outermost, (RoI, bin row, bin column) innermost: [L, r (row), r (column), K, s, s]; a bin's
    # mean is then a sum over an outer axis, which runs vectorised along the long inner one
    ys = ys.view(levels, k, s, r).permute(0, 3, 1, 2)[:, :, None, :, :, None]  # [L, r, 1, K, s, 1]
    xs = xs.view(levels, k, s, r).permute(0, 3, 1, 2)[:, None, :, :, None, :]  # [L, 1, r, K, 1, s]
    height, width = height[..., None, None, None], width[..., None, None, None]
    inside = ((ys >= -1.0) & (ys <= height)) & ((xs >= -1.0) & (xs <= width))
    weight = inside.reshape(levels, r * r, k * s * s).float() / float(r * r)
    gy = (2 * torch.minimum(ys.clamp(min=0), height - 1) + 1) / height - 1
    gx = (2 * torch.minimum(xs.clamp(min=0), width - 1) + 1) / width - 1
    shape = (levels, r, r, k, s, s)
    grid = torch.stack([gx.expand(shape), gy.expand(shape)], dim=-1).reshape(levels, r * r, k * s * s, 2)
    batch_size = features[0].shape[0]
    if batch_size == 1:
        pooled = torch.cat([(F.grid_sample(f.float(), grid[lvl, None], mode="bilinear", padding_mode="border",
                                           align_corners=False)[0] * weight[lvl]).sum(1)
                            for lvl, f in enumerate(features)])  # [sum(C), K*s*s]
        return pooled.t().contiguous().view(k, s, s, -1).permute(0, 3, 1, 2)
    out = torch.empty(k, s, s, sum(f.shape[1] for f in features), device=device)
    batch = rois[:, 0].long()
    for b in range(batch_size):
        rows = (batch == b).nonzero().flatten()
        if len(rows):
            sub = roi_align_levels([f[b : b + 1] for f in features], torch.cat([torch.zeros_like(rois[rows, :1]),
                                   rois[rows, 1:]], dim=1), output_size, spatial_scales, sampling_ratio)
            out[rows] = sub.permute(0, 2, 3, 1)
    return out.permute(0, 3, 1, 2)


def sine_embed(values: torch.Tensor, num_feats: int, temperature: float = 10000.0) -> torch.Tensor:
    """Interleaved sin/cos embedding of values already scaled to radians: [..., D] -> [..., D * num_feats].

    dim_t = temperature^(2*floor(i/2)/num_feats); output order per value: sin(v/t0), cos(v/t1), sin(v/t2), ...
    """
    dim_t = torch.arange(num_feats, dtype=torch.float32, device=values.device)
    dim_t = temperature ** (2 * torch.div(dim_t, 2, rounding_mode="floor") / num_feats)
    pos = values.float()[..., None] / dim_t
    pos = torch.stack((pos[..., 0::2].sin(), pos[..., 1::2].cos()), dim=-1).flatten(-2)
    return pos.flatten(-2)


def multi_scale_deformable_sampling(
    value: torch.Tensor,
    spatial_shapes: list[tuple[int, int]],
    sampling_locations: torch.Tensor,
    attention_weights: torch.Tensor,
) -> torch.Tensor:
    """Deformable-DETR attention sampling (transformers' pure-torch ``MultiScaleDeformableAttention``).

    value [B, sum(H*W), heads, d]; sampling_locations [B, Q, heads, levels, points, 2] in [0, 1];
    attention_weights [B, Q, heads, levels, points] -> [B, Q, heads * d]. Bilinear, zero padding,
    align_corners False.

    Differs from transformers' version only in what ``grid_sample`` gets: contiguous inputs always, and float32
    on the CPU for half types. torch's CPU ``grid_sample`` returns garbage (up to 1e38, or NaN) for bf16/fp16
    inputs that are not contiguous (which the reshape of ``value`` produces), and is imprecise for contiguous
    bf16 (max error 0.6 on unit-scale values); on CUDA it is exact in the input dtype.
    """
    dtype = value.dtype
    if value.device.type == "cpu" and dtype in (torch.float16, torch.bfloat16):
        value, sampling_locations = value.float(), sampling_locations.float()
        attention_weights = attention_weights.float()
    batch, _, heads, dim = value.shape
    _, queries, _, levels, points, _ = sampling_locations.shape
    per_level = value.split([h * w for h, w in spatial_shapes], dim=1)
    grids = 2 * sampling_locations - 1
    samples = []
    for level, (h, w) in enumerate(spatial_shapes):
        v = per_level[level].flatten(2).transpose(1, 2).reshape(batch * heads, dim, h, w).contiguous()
        grid = grids[:, :, :, level].transpose(1, 2).flatten(0, 1).contiguous()
        samples.append(F.grid_sample(v, grid, mode="bilinear", padding_mode="zeros", align_corners=False))
    weights = attention_weights.transpose(1, 2).reshape(batch * heads, 1, queries, levels * points)
    out = (torch.stack(samples, dim=-2).flatten(-2) * weights).sum(-1).view(batch, heads * dim, queries)
    return out.transpose(1, 2).contiguous().to(dtype)
