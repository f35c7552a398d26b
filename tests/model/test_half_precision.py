"""bf16 / fp16 on the CPU give the fp32 proposals up to rounding; non-finite proposals raise ModelOutputError.

torch 2.13's CPU ``grid_sample`` returns NaN or ~1e38 for half-type inputs that are not contiguous, which is
what the deformable attention's value reshape produces once a head has >= 32 channels (the released 7B: 256 /
8 heads). The model therefore samples through ``ops.multi_scale_deformable_sampling`` (contiguous, float32 on the
CPU). The proposer config here has that head width (d_model 256, 8 heads).

Comparing proposals needs care: bf16 rounding reorders the encoder's top-k cells (adjacent logits differ by
less than bf16 resolves), and a query's content embedding follows its rank. So this model proposes from every
cell (two_stage_num_proposals = 16 x 16 cells) with one content embedding for all queries: the proposal set is
then independent of the order, and proposals compare cell by cell.
"""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from groma_ros.model import GromaForConditionalGeneration, ModelOutputError
from groma_ros.model.ops import multi_scale_deformable_sampling
from tests.support.checkpoints import random_release_state_dict, tiny_config, write_release_checkpoint

torch.set_num_threads(1)

# measured max |diff| over 3 images: bf16 boxes 0.033, scores 0.021; fp16 boxes 0.0055, scores 0.0039
# (bf16 keeps 8 significant bits: the vision states reach the proposer with ~1 % relative error)
BOUNDS = {torch.bfloat16: (0.06, 0.04), torch.float16: (0.015, 0.01)}


def every_cell_config():
    base = tiny_config()
    ddetr = base.ddetr_config.to_dict()
    ddetr.update(d_model=256, encoder_ffn_dim=256, decoder_ffn_dim=256, num_queries=256, two_stage_num_proposals=256)
    return tiny_config(perceiver_cfg={"vis_encoder_cfg": base.vision_config.to_dict(), "ddetr_cfg": ddetr})


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory) -> Path:
    config = every_cell_config()
    state = random_release_state_dict(config, seed=0)
    key = "perceiver.ddetr_transformer.query_position_embeddings.weight"
    state[key] = state[key][:1].expand_as(state[key]).clone()
    return write_release_checkpoint(tmp_path_factory.mktemp("every_cell"), config, state)


def _by_cell(vision):
    cells = vision.intermediates["enc_topk_index"][0]
    order = cells.argsort()
    return cells[order], vision.proposal_boxes[0][order].float(), vision.proposal_scores[0][order].float()


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_half_precision_proposals_match_float32_cell_by_cell(model_dir, dtype):
    reference = GromaForConditionalGeneration.from_pretrained(model_dir)
    half = GromaForConditionalGeneration.from_pretrained(model_dir, dtype=dtype)
    box_bound, score_bound = BOUNDS[dtype]
    for seed in range(3):
        pixels = torch.randn(1, 3, 128, 128, generator=torch.Generator().manual_seed(seed))
        cells, boxes, scores = _by_cell(reference.encode_image(pixels, output_intermediates=True))
        got = half.encode_image(pixels.to(dtype), output_intermediates=True)
        assert got.image_tokens.dtype == dtype  # (box maths runs in float32 by design)
        half_cells, half_boxes, half_scores = _by_cell(got)
        assert torch.equal(half_cells, cells) and len(cells) == 256
        assert torch.isfinite(half_boxes).all() and torch.isfinite(half_scores).all()
        assert (half_boxes - boxes).abs().max() <= box_bound
        assert (half_scores - scores).abs().max() <= score_bound
        # and the engine-facing step runs: NMS over the half-precision proposals
        selection = half.select_regions(got.proposal_boxes[0], got.proposal_scores[0])
        assert 1 <= len(selection.boxes) <= half.config.max_region_num


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_sampling_op_on_the_layer_layout_matches_float32(dtype):
    """The value layout a deformable-attention layer hands over ([B, HW, heads, d] viewed from a projection)."""
    g = torch.Generator().manual_seed(0)
    batch, h, w, heads, dim, queries, points = 1, 30, 30, 8, 32, 50, 4
    value = torch.randn(batch, h * w, heads * dim, generator=g).view(batch, h * w, heads, dim)
    locations = torch.rand(batch, queries, heads, 1, points, 2, generator=g)
    weights = torch.rand(batch, queries, heads, 1, points, generator=g).softmax(-1)
    got = multi_scale_deformable_sampling(value.to(dtype), [(h, w)], locations.to(dtype), weights.to(dtype))
    assert got.dtype == dtype and got.shape == (batch, queries, heads * dim)
    # the same half-type inputs in float32 arithmetic: only the output's rounding may differ (the bf16 rounding
    # of the sampling locations themselves moves samples by up to 0.1 px on this 30-px grid: that is the dtype)
    rounded = multi_scale_deformable_sampling(value.to(dtype).float(), [(h, w)], locations.to(dtype).float(),
                                              weights.to(dtype).float())
    assert (got.float() - rounded).abs().max() <= 2 * torch.finfo(dtype).eps * rounded.abs().max()


def test_nan_proposal_scores_raise_model_output_error_not_index_error(model_dir, tmp_path):
    state = torch.load(model_dir / "pytorch_model.bin", weights_only=True)
    for key in list(state):
        if "class_embed_coco.1.bias" in key:  # last decoder layer's objectness head (and its alias)
            state[key] = torch.full_like(state[key], float("nan"))
    broken = write_release_checkpoint(tmp_path / "nan", every_cell_config(), state)
    model = GromaForConditionalGeneration.from_pretrained(broken)
    vision = model.encode_image(torch.zeros(1, 3, 128, 128))
    assert torch.isnan(vision.proposal_scores).all()
    with pytest.raises(ModelOutputError, match=r"non-finite values \(256 of 256 scores, 0 of 256 boxes"):
        model.select_regions(vision.proposal_boxes[0], vision.proposal_scores[0])
    assert not issubclass(ModelOutputError, ValueError) and issubclass(ModelOutputError, RuntimeError)
    boxes = vision.proposal_boxes[0].clone()
    boxes[3, 1] = float("inf")
    with pytest.raises(ModelOutputError, match=r"\(0 of 256 scores, 1 of 256 boxes"):
        model.select_regions(boxes, torch.full((256,), 0.5))
