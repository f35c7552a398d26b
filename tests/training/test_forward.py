"""The differentiable training forwards reproduce the model's inference outputs exactly."""

from __future__ import annotations

import torch

from groma_ros.synthetic.scenes import generate_scene
from groma_ros.training import data, forward


def test_training_forward_matches_inference(model):
    items = [data.scene_tensors(generate_scene(s), model.config.image_size) for s in range(2)]
    pixels = data.stack_pixels(items)
    with torch.no_grad():
        vision = model.encode_image(pixels)
        states = forward.vision_states(model, pixels)
        trace = forward.propose(model, states)
        maps = [m[1:2] for m in vision.region_maps]
        boxes = items[1].boxes
        feats = forward.region_features(model.region_encoder, maps, boxes, torch.zeros(len(boxes), dtype=torch.long))
        tokens = model.region_encoder.roi_align.updims(feats)
        image_tokens = model.img_txt_bridge(forward.merged_image_features(model, states))
    torch.testing.assert_close(trace.boxes, vision.proposal_boxes)
    torch.testing.assert_close(trace.scores, vision.proposal_scores)
    torch.testing.assert_close(model.encode_regions(vision, boxes, batch_index=1), tokens, rtol=1e-4, atol=1e-5)
    torch.testing.assert_close(image_tokens, vision.image_tokens)


def test_gradients_reach_vision_and_proposer(model):
    items = [data.scene_tensors(generate_scene(3), model.config.image_size)]
    states = forward.vision_states(model, data.stack_pixels(items))
    trace = forward.propose(model, states)
    (trace.boxes.sum() + trace.layer_coco[0].sum() + trace.enc_logits.sum()).backward()
    assert model.perceiver.vis_encoder.embeddings.patch_embeddings.projection.weight.grad is not None
    assert model.perceiver.ddetr_transformer.class_embed_enc.weight.grad is not None
    model.zero_grad(set_to_none=True)
