"""A small model built from config alone: derived sizes, region selection, sequence assembly, KV cache."""

import pytest
import torch
from transformers import DynamicCache

from groma_ros.model import GromaConfig, GromaForConditionalGeneration
from tests.support.checkpoints import make_random_checkpoint, tiny_config

torch.set_num_threads(2)


@pytest.fixture(scope="module")
def model(tmp_path_factory):
    return GromaForConditionalGeneration.from_pretrained(make_random_checkpoint(tmp_path_factory.mktemp("m")))


def test_sizes_derive_from_config(model):
    cfg = model.config
    assert (cfg.grid_size, cfg.num_image_tokens, cfg.region_level_sizes) == (16, 64, (64, 32, 16))
    assert cfg.roi_spatial_scales == (0.5, 0.25, 0.125)  # corrected: level size / image size
    original = tiny_config(region_box_convention="original")
    assert original.roi_spatial_scales == (
        1.0,
        0.5,
        0.25,
    )  # 8/p, 4/p, 2/p with p = 8: the 2x-too-large upstream form
    released = GromaConfig()
    assert released.grid_size == 32 and released.num_image_tokens == 256
    assert released.roi_spatial_scales == (8 / 14, 4 / 14, 2 / 14)
    ids = released.token_ids
    assert (
        ids.pad,
        ids.image,
        ids.region,
        ids.refer_box,
        ids.refer_feat,
        ids.region_id(0),
        ids.region_id(99),
    ) == (32000, 32008, 32009, 32010, 32012, 32014, 32113)
    with pytest.raises(ValueError, match="region_out_dim"):
        tiny_config(region_out_dim=64)


def test_legacy_defaults_fill_absent_fields():
    cfg = GromaConfig(
        perceiver_cfg={"vis_encoder_cfg": {"hidden_size": 64, "num_attention_heads": 2, "image_size": 512}}
    )
    assert cfg.vision_config.patch_size == 16  # transformers-4.32 default (5.x says 14)


def test_encode_select_and_assemble(model):
    g = torch.Generator().manual_seed(1)
    pixels = torch.randn(1, 3, 128, 128, generator=g)
    vision = model.encode_image(pixels, output_intermediates=True)
    q = model.config.ddetr_config.two_stage_num_proposals
    assert vision.image_tokens.shape == (1, 64, 128)
    assert vision.proposal_boxes.shape == (1, q, 4) and vision.proposal_scores.shape == (1, q)
    assert [m.shape[-1] for m in vision.region_maps] == [64, 32, 16]

    user = torch.tensor([[0.3, 0.4, 0.2, 0.2], [0.7, 0.7, 0.1, 0.3]])
    sel = model.select_regions(vision.proposal_boxes[0], vision.proposal_scores[0], user)
    assert (sel.scores[:-1] >= sel.scores[1:]).all()  # deterministic: descending score
    assert sel.from_user[:2].all() and not sel.from_user[2:].any()  # user boxes score 1.0
    # the two user boxes tie at 1.0: they come first in the order the original's CPU sort gives them
    scores = torch.cat([vision.proposal_scores[0], torch.ones(2)])
    valid = (scores > model.config.box_score_thres).nonzero().flatten()
    tied = (valid[torch.sort(scores[valid], descending=True).indices[:2]] - q).tolist()
    assert sel.refer_match.tolist() == [tied.index(0), tied.index(1)]
    order = torch.arange(len(sel.boxes)).flip(0)
    flipped = model.select_regions(vision.proposal_boxes[0], vision.proposal_scores[0], user, order=order)
    assert torch.equal(flipped.boxes, sel.boxes.flip(0))
    assert flipped.refer_match.tolist() == [len(order) - 1 - k for k in sel.refer_match.tolist()]
    tokens = model.encode_regions(vision, sel.boxes)
    assert tokens.shape == (len(sel.boxes), 128)
    assert torch.allclose(model.encode_regions(vision, sel.boxes[:3]), tokens[:3], atol=1e-5)

    t = model.token_ids
    ids = torch.tensor(
        [[1, 5, t.image, 6, t.region, 7, t.refer_box, t.refer_feat, 8, t.refer_box, t.refer_feat, t.pad, 9]]
    )
    ex = model.expand_input_ids(ids, 3, refer_match=torch.tensor([2, 0]))
    assert ex.prompt_ids[0, 6].item() == t.region_id(2) and ex.prompt_ids[0, 9].item() == t.region_id(0)
    expect = (
        [1, 5]
        + [t.image] * 64
        + [
            6,
            t.region_id(0),
            t.region,
            t.region_id(1),
            t.region,
            t.region_id(2),
            t.region,
            7,
            t.region_id(2),
            t.refer_feat,
            8,
            t.region_id(0),
            t.refer_feat,
        ]
    )
    assert ex.input_ids[0].tolist() == expect
    region = tokens[:3]
    embeds = model.build_inputs_embeds(ex.input_ids, vision.image_tokens[0], region, region[ex.refer_rows])
    assert torch.equal(embeds[0, 2:66], vision.image_tokens[0])
    assert torch.equal(embeds[0, 68], region[0]) and torch.equal(embeds[0, 72], region[2])
    assert torch.equal(embeds[0, 75], region[2]) and torch.equal(embeds[0, 78], region[0])  # <refer_feat>
    assert torch.equal(embeds[0, 67], model.new_input_embs.weight[t.region_id(0) - 256])
    with pytest.raises(ValueError):
        model.build_inputs_embeds(ex.input_ids, vision.image_tokens[0], region[:2], region[ex.refer_rows])
    with pytest.raises(ValueError, match="refer_box"):
        model.expand_input_ids(ids, 3, refer_match=torch.tensor([0]))


def test_cached_decoding_matches_full_forward(model):
    g = torch.Generator().manual_seed(2)
    pixels = torch.randn(1, 3, 128, 128, generator=g)
    t = model.token_ids
    ids = torch.tensor([[1, 5, t.image, 6, t.region, 7, 8]])
    gen = model.generate_greedy(pixels, ids, max_new_tokens=4, eos_token_id=-1)
    assert len(gen.tokens) == 4 and gen.sequence.tolist() == ids[0].tolist() + gen.tokens.tolist()
    # re-run everything without a cache on the extended sequence: same step logits
    pre = gen.prefill
    full = torch.cat([pre.expanded.input_ids[0], gen.tokens[:-1]])[None]
    region = model.encode_regions(pre.vision, pre.selection.boxes)
    embeds = model.build_inputs_embeds(full, pre.vision.image_tokens[0], region)
    logits = model.lm_logits(model.llm.model(inputs_embeds=embeds).last_hidden_state)[0, -4:]
    assert torch.allclose(logits, gen.step_logits, atol=1e-4)
    assert isinstance(pre.past_key_values, DynamicCache)
