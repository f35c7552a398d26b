"""The three decoders (``dynamic``, ``static``, ``compiled``) give the same tokens and logits.

``static``/``compiled`` exist for GPUs (benchmarks/RESULTS.md: 12x faster 7B decode on an H200 when compiled);
here they run on the CPU, which is enough to prove they are exact: same prefix copy, same positions, same mask.
"""

from __future__ import annotations

import pytest
import torch

from groma_ros.engine import GromaEngine
from groma_ros.engine.decoding import DECODE_MODES, StaticDecoder, make_decoder
from groma_ros.engine.types import Task

QUERIES = [(Task.VQA, "describe the image in detail", ()), (Task.REFER, "the red circle", ()),
           (Task.REGION_QA, "what is {}?", ((5, 5, 40, 30),)), (Task.VQA, "describe the image in detail", ())]


def _engine_answers(engine, mode: str, image) -> list[tuple[list[int], list[torch.Tensor]]]:
    engine = GromaEngine(engine.model, engine.tokenizer, decode=mode)
    out = []
    for task, query, boxes in QUERIES:  # same frame: follow-ups reuse the prefix the previous query decoded on
        _, trace = engine._ask(image, query, task=task, boxes=boxes, frame_id="f", max_new_tokens=12,
                               keep_logits=True)
        out.append((trace.generation.token_ids, trace.generation.step_logits))
    return out


def _decode_loop(engine, mode: str, image, steps: int = 16) -> list[torch.Tensor]:
    """Prefill a query on the frame's prefix, then feed the argmax ``steps`` times (never stops at </s>)."""
    decoder = make_decoder(engine.model, mode)
    prefix = engine.perceive(image, "loop").base
    ids = torch.tensor([engine.tokenizer.encode(" describe the image.", add_bos=False)])
    with torch.inference_mode():
        decoder.begin(prefix.cache, prefix.prefix_len)
        logits = [decoder.prefill(engine.model.build_inputs_embeds(ids, None, None, None))]
        for _ in range(steps):
            logits.append(decoder.step(int(logits[-1].argmax())))
        decoder.end()
    return logits


@pytest.mark.parametrize("mode", ["static", "compiled"])
def test_decoder_matches_dynamic(engine, image, mode):
    reference = _decode_loop(engine, "dynamic", image)
    got = _decode_loop(engine, mode, image)
    assert len(got) == len(reference) == 17
    for a, b in zip(reference, got, strict=True):
        torch.testing.assert_close(b, a, rtol=1e-4, atol=1e-4)
    # through the engine: four queries on one frame (region QA adds a prefix), tokens and logits equal
    for (ref_tokens, ref_logits), (tokens, logits) in zip(_engine_answers(engine, "dynamic", image),
                                                          _engine_answers(engine, mode, image), strict=True):
        assert tokens == ref_tokens
        for a, b in zip(ref_logits, logits, strict=True):
            torch.testing.assert_close(b, a, rtol=1e-4, atol=1e-4)


def test_unknown_mode_is_refused(engine):
    with pytest.raises(ValueError, match="decode must be one of auto, dynamic, static, compiled"):
        make_decoder(engine.model, "paged")
    assert DECODE_MODES == ("auto", "dynamic", "static", "compiled")
    assert type(make_decoder(engine.model, "auto")).__name__ == "DynamicDecoder"  # CPU model


def test_static_buffer_refuses_what_does_not_fit(engine):
    decoder = StaticDecoder(engine.model, max_len=8)
    prefix = engine.perceive(engine_image(), "buffer").base
    with pytest.raises(ValueError, match="does not fit the 8-token KV buffer"):
        decoder.begin(prefix.cache, prefix.prefix_len)


def engine_image():
    from .conftest import make_image

    return make_image(seed=3)


def test_warm_up_leaves_no_frame_behind(engine):
    warmed = GromaEngine(engine.model, engine.tokenizer, decode="static")
    warmed.warm_up()
    assert len(warmed.frames) == 0 and warmed._decoder.cache is not None  # KV buffer allocated up front


def test_compiled_perception_gives_the_same_answers(engine, image):
    """``decode="compiled"`` on a GPU also compiles perception (image graph, region buckets, prefix prefill).
    Captured as whole graphs and run with the eager backend here: the same tokens and logits as eager."""
    import copy

    model = copy.deepcopy(engine.model)
    torch._dynamo.reset()
    model.compile_perception(mode=None, backend="eager", warm_up=False)
    try:
        compiled = GromaEngine(model, engine.tokenizer, decode="dynamic")
        plain = GromaEngine(engine.model, engine.tokenizer, decode="dynamic")
        for (ref_tokens, ref_logits), (tokens, logits) in zip(_answers(plain, image), _answers(compiled, image),
                                                              strict=True):
            assert tokens == ref_tokens
            for a, b in zip(ref_logits, logits, strict=True):
                torch.testing.assert_close(b, a, rtol=1e-4, atol=1e-4)
        prefix = compiled.perceive(image, "p").base
        embeds = model.build_inputs_embeds(prefix.prefix_ids, compiled.perceive(image, "p").vision.image_tokens[0],
                                           prefix.region_tokens)
        cache = model.prefill_prefix(embeds)  # the compiled prefix prefill reproduces the engine's prefix cache
        for a, b in zip(cache.layers, prefix.cache.layers, strict=True):
            torch.testing.assert_close(a.keys, b.keys, rtol=1e-4, atol=1e-4)
    finally:
        torch._dynamo.reset()


def _answers(engine, image) -> list[tuple[list[int], list[torch.Tensor]]]:
    out = []
    for task, query, boxes in QUERIES:
        _, trace = engine._ask(image, query, task=task, boxes=boxes, frame_id="f", max_new_tokens=6,
                               keep_logits=True)
        out.append((trace.generation.token_ids, trace.generation.step_logits))
    return out
