"""Training sequences are exactly what the engine feeds the model at inference (ids and logits)."""

from __future__ import annotations

import random

import torch

from groma_ros.engine.engine import GromaEngine
from groma_ros.engine.prompts import PREFIX, PromptBuilder
from groma_ros.synthetic.texts import TextSample, generate_samples
from groma_ros.training import cache as cache_mod
from groma_ros.training import data, sequences
from groma_ros.training.recipe import Stage2Config


def test_prompt_part_equals_engine_encoding_and_answer_is_tagged(tokenizer):
    enc = data.PromptEncoder(tokenizer)
    sample = TextSample("refer", "the large blue square", "{roi0}", [], [[1]], "attribute")
    out = enc.encode(sample, {0: 0, 1: 3})
    built = PromptBuilder().build("refer", "the large blue square")
    prompt = tokenizer.encode(PREFIX) + tokenizer.encode(built.suffix, add_bos=False)
    assert out.ids[:out.answer_start] == prompt
    assert tokenizer.convert_ids_to_tokens(out.ids[out.answer_start:]) == ["<roi>", "<r3>", "</roi>", "</s>"]
    # and the same as tokenizing the whole conversation at once (how the original trained)
    assert tokenizer.encode(built.text + " <roi><r3></roi></s>") == out.ids


def test_region_qa_query_uses_the_engine_placeholder():
    sample = TextSample("region_qa", "what colour is {refer0}?", "blue", [2], [], "colour")
    task, query, n = data.engine_query(sample)
    assert (task.name, query, n) == ("REGION_QA", "what colour is {}?", 1)
    assert PromptBuilder().build(task, query, 1).user_message == "what colour is <roi><refer_box></roi><refer_feat>?"


def test_expand_ids_matches_model(model, tokenizer):
    t = model.config.token_ids
    ids = tokenizer.encode(PREFIX) + tokenizer.encode(PromptBuilder().build("region_qa", "what is {}?", 1).suffix,
                                                      add_bos=False)
    ours, _ = data.expand_ids(ids, t, model.config.num_image_tokens, 5, [2])
    theirs = model.expand_input_ids(torch.tensor([ids]), 5, torch.tensor([2]))
    assert ours == theirs.input_ids[0].tolist()


def test_training_logits_equal_engine_logits(model, tokenizer):
    """A stage-2 sequence (score order, no GT candidates) reproduces the engine's first-step logits."""
    model.config.box_score_thres = 0.0  # an untrained model: keep regions regardless of score
    try:
        engine = GromaEngine(model, tokenizer)
        cache = cache_mod.build_cache(model, 1, start=5)[0]
        scene = data.train_scene(cache.index)
        q = len(cache.boxes) - cache.num_objects
        cache.scores[q:] = -1.0  # no ground-truth candidates at inference
        enc = data.PromptEncoder(tokenizer)
        samples = [s for s in generate_samples(scene) if s.task in ("region_qa", "vqa")][::4]
        checked = 0
        for sample in samples:
            seq = sequences.make_sequence(cache, None, sample.task, enc, model.config, Stage2Config(), random.Random(0),
                                       shuffle=False, sample=sample)
            if seq is None:
                continue
            task, query, _ = data.engine_query(sample)
            boxes = [tuple(scene.boxes[o]) for o in sample.query_objects]
            _, trace = engine._ask(scene.image, query, task=task, boxes=boxes, keep_logits=True, max_new_tokens=1)
            eng_ids = torch.cat([trace.prefix_ids[0].cpu(), trace.suffix_ids[0].cpu()])
            n = len(eng_ids)
            assert torch.equal(seq.ids[:n], eng_ids)
            with torch.no_grad():
                h = sequences.sequence_hidden(model, seq)
                logits = model.lm_logits(h[n - 1])
            torch.testing.assert_close(logits, trace.generation.step_logits[0], rtol=1e-4, atol=1e-4)
            checked += 1
        assert checked >= 2
    finally:
        model.config.box_score_thres = 0.15


def test_anchor_object_of_binary_relations():
    from groma_ros.synthetic.scenes import generate_scene, split_seeds
    from groma_ros.synthetic.texts import resolve

    found = 0
    for seed in split_seeds("train", 40):
        scene = generate_scene(seed)
        for s in generate_samples(scene):
            a = sequences.anchor_object(s, scene)
            if s.kind != "relation" or " the " not in s.query[4:]:
                assert a is None
                continue
            anchor_expr = "the " + s.query.split(" the ", 2)[-1]
            assert a is not None and resolve(anchor_expr, scene) == [a]
            assert a != s.answer_objects[0][0]
            found += 1
    assert found > 5
