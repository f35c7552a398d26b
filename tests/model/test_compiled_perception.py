"""Compiled perception (image graph, bucketed region tokens, bucketed prefix prefill) equals eager perception.

On a GPU these graphs run as CUDA graphs (``mode="reduce-overhead"``); here Dynamo captures them with
``fullgraph=True`` (so any graph break fails the test) and runs them with the eager backend: that proves the
capture, the padding to buckets, the static KV buffer and the copies out of graph buffers, not the kernels.
"""

from __future__ import annotations

import pytest
import torch

from groma_ros.model import GromaForConditionalGeneration
from groma_ros.model.compiled import PREFIX_BUCKET, region_buckets
from tests.support.checkpoints import make_random_checkpoint

torch.set_num_threads(1)


@pytest.fixture(scope="module")
def models(tmp_path_factory):
    torch._dynamo.reset()
    directory = make_random_checkpoint(tmp_path_factory.mktemp("m"))
    eager = GromaForConditionalGeneration.from_pretrained(directory)
    compiled = GromaForConditionalGeneration.from_pretrained(directory)
    compiled.compile_perception(mode=None, backend="eager", warm_up=False)
    yield eager, compiled
    torch._dynamo.reset()


def test_image_graph_and_region_buckets_equal_eager(models):
    eager, compiled = models
    assert region_buckets(100) == (8, 16, 32, 64, 100) and region_buckets(16) == (8, 16)
    pixels = torch.randn(1, 3, 128, 128, generator=torch.Generator().manual_seed(0))
    want = eager.encode_image(pixels)
    frames_before = torch._dynamo.utils.counters["stats"]["unique_graphs"]
    got = compiled.encode_image(pixels)
    assert torch._dynamo.utils.counters["stats"]["unique_graphs"] > frames_before  # the graph ran
    for a, b in [(got.image_tokens, want.image_tokens), (got.proposal_boxes, want.proposal_boxes),
                 (got.proposal_scores, want.proposal_scores), *zip(got.region_maps, want.region_maps, strict=True)]:
        assert a.shape == b.shape and torch.allclose(a, b, atol=1e-5)
    again = compiled.encode_image(pixels * 0.5)  # the first result is a copy, not the graph's buffer
    assert not torch.allclose(again.image_tokens, got.image_tokens)
    boxes = torch.rand(70, 4, generator=torch.Generator().manual_seed(1)) * 0.6 + 0.2
    for k in (1, 5, 8, 9, 26, 64, 70):
        tokens = compiled.encode_regions(got, boxes[:k])
        assert tokens.shape == (k, 128)
        assert torch.allclose(tokens, eager.encode_regions(want, boxes[:k]), atol=1e-5), k
    many = torch.rand(101, 4) * 0.5 + 0.25  # above the largest bucket: eager
    assert torch.allclose(compiled.encode_regions(got, many), eager.encode_regions(want, many), atol=1e-5)


def test_prefix_prefill_through_the_static_buffer_equals_eager(models):
    eager, compiled = models
    g = torch.Generator().manual_seed(2)
    for n in (PREFIX_BUCKET - 3, PREFIX_BUCKET, 130):
        embeds = torch.randn(1, n, 128, generator=g)
        want, got = eager.prefill_prefix(embeds), compiled.prefill_prefix(embeds)
        assert got.get_seq_length() == n == want.get_seq_length()
        for a, b in zip(got.layers, want.layers, strict=True):
            assert a.keys.shape == b.keys.shape and torch.allclose(a.keys, b.keys, atol=1e-5)
            assert torch.allclose(a.values, b.values, atol=1e-5)
        # a query on top of either cache sees the same prefix
        query = torch.randn(1, 3, 128, generator=g)
        outs = [m.llm.model(inputs_embeds=query, past_key_values=c, use_cache=True).last_hidden_state
                for m, c in ((eager, want), (compiled, got))]
        assert torch.allclose(outs[0], outs[1], atol=1e-4)
    too_long = torch.randn(1, compiled.compiled_perception.max_prefix + 1, 128)
    assert compiled.compiled_perception.prefill_prefix(too_long) is None  # the model then prefills eagerly
    assert compiled.prefill_prefix(too_long).get_seq_length() == too_long.shape[1]


def test_generation_through_compiled_perception_gives_the_same_tokens(models):
    eager, compiled = models
    pixels = torch.randn(1, 3, 128, 128, generator=torch.Generator().manual_seed(3))
    t = eager.token_ids
    ids = torch.tensor([[1, 5, t.image, 6, t.region, 7, 8]])
    want = eager.generate_greedy(pixels, ids, max_new_tokens=5, eos_token_id=-1)
    got = compiled.generate_greedy(pixels, ids, max_new_tokens=5, eos_token_id=-1)
    assert got.tokens.tolist() == want.tokens.tolist()
    assert torch.allclose(got.step_logits, want.step_logits, atol=1e-4)
