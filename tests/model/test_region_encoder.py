"""The fast region encoder (NHWC maps, grid-sampled RoIs, one stacked RoI conv) computes the reference one's
values: maps, region tokens and gradients, for both box conventions and several images per batch."""

from __future__ import annotations

import copy

import pytest
import torch

from groma_ros.model import GromaForConditionalGeneration
from groma_ros.model.ops import roi_align, roi_align_sampled
from tests.support.checkpoints import make_random_checkpoint, tiny_config

torch.set_num_threads(1)


@pytest.fixture(scope="module", params=["corrected", "original"])
def model(request, tmp_path_factory):
    config = tiny_config(region_box_convention=request.param)
    return GromaForConditionalGeneration.from_pretrained(make_random_checkpoint(tmp_path_factory.mktemp("m"), config))


def _encoders(model):
    fast = model.region_encoder
    assert fast.implementation == "fast"
    assert all(m.weight.is_contiguous(memory_format=torch.channels_last)
               for m in fast.modules() if isinstance(m, torch.nn.Conv2d))  # laid out NHWC at load
    reference = copy.deepcopy(fast)
    reference.set_implementation("reference")
    assert all(m.weight.is_contiguous() for m in reference.modules() if isinstance(m, torch.nn.Conv2d))
    return fast, reference


def test_fast_matches_reference_maps_and_tokens(model):
    fast, reference = _encoders(model)
    g = torch.Generator().manual_seed(0)
    pixels = torch.randn(2, 3, 128, 128, generator=g)
    with torch.no_grad():
        states = model.perceiver.vis_encoder.hidden_states_all(pixels)
        maps_fast = fast.fuse(states, model.config.grid_size)
        maps_ref = reference.fuse(states, model.config.grid_size)
        for a, b in zip(maps_fast, maps_ref, strict=True):
            assert a.shape == b.shape and (a - b).abs().max() <= 1e-5 * b.abs().max()
        boxes = torch.rand(40, 4, generator=g) * 0.8 + 0.1  # cx, cy, w, h; "original" makes negative sizes
        batch = torch.arange(40) % 2
        tokens_fast = fast(maps_fast, boxes, batch)
        tokens_ref = reference(maps_ref, boxes, batch)
    assert tokens_fast.shape == (40, model.config.region_out_dim)
    assert (tokens_fast - tokens_ref).abs().max() <= 1e-5 * tokens_ref.abs().max()


def test_fast_path_trains_like_the_reference(model):
    """Stage-1/2 training backpropagates through the region encoder: same gradients."""
    fast, reference = _encoders(model)
    fast, reference = copy.deepcopy(fast).train().requires_grad_(True), reference.train().requires_grad_(True)
    g = torch.Generator().manual_seed(1)
    states = [torch.randn(1, 1 + 16 * 16, 64, generator=g) for _ in range(3)]
    boxes = torch.rand(6, 4, generator=g) * 0.6 + 0.2
    grads = []
    for enc in (fast, reference):
        enc.zero_grad()
        maps = enc.fuse(states, 16)
        enc.features(maps, boxes).square().sum().backward()
        grads.append({n: p.grad for n, p in enc.named_parameters() if p.grad is not None})
    assert grads[0].keys() == grads[1].keys() and len(grads[0]) > 20
    for name, grad in grads[1].items():
        assert (grads[0][name] - grad).abs().max() <= 1e-4 * grad.abs().max() + 1e-6, name


def test_roi_align_sampled_equals_roi_align_on_many_rois():
    g = torch.Generator().manual_seed(2)
    feats = torch.randn(3, 8, 20, 24, generator=g)
    corners = torch.rand(60, 4, generator=g) * 60 - 10  # in image px (scale 0.5): past borders, negative sizes
    rois = torch.cat([(torch.arange(60) % 3).float()[:, None], corners], dim=1)
    a = roi_align(feats, rois, 7, 0.5, 2)
    b = roi_align_sampled(feats, rois, 7, 0.5, 2)
    assert (a - b).abs().max() <= 1e-5 * a.abs().max()


def test_unknown_implementation_is_refused(model):
    with pytest.raises(ValueError, match="'fast' or 'reference'"):
        copy.deepcopy(model.region_encoder).set_implementation("cuda")
