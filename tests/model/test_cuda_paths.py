"""The CUDA-only code paths, on the tiny model: skipped without a GPU, run as they are in a GPU session.

- loading straight to the GPU (tensor by tensor from the mapped file; no host copy of the model);
- int4 through torchao's tinygemm packing equals the same weights dequantized, and int8 keeps bf16's tokens;
- compiled perception with inductor and CUDA graphs (``reduce-overhead``) equals eager perception.
"""

from __future__ import annotations

import pytest
import torch

from groma_ros.model import GromaForConditionalGeneration
from groma_ros.model.quantization import quantizable_weights, quantize_weight
from tests.support.checkpoints import make_random_checkpoint

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory):
    return make_random_checkpoint(tmp_path_factory.mktemp("tiny"))


def _logits(model, seed: int = 0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    pixels = torch.randn(1, 3, 128, 128, generator=g).to("cuda", model.dtype)
    t = model.token_ids
    ids = torch.tensor([[1, 5, t.image, 6, t.region, 7, 8]])
    return model.generate_greedy(pixels, ids, max_new_tokens=4, eos_token_id=-1)


def test_loads_straight_to_the_gpu_in_bf16(model_dir):
    before = torch.cuda.memory_allocated()
    model = GromaForConditionalGeneration.from_pretrained(model_dir, dtype=torch.bfloat16, device="cuda")
    assert all(p.device.type == "cuda" and p.dtype == torch.bfloat16 for p in model.parameters())
    weights = sum(p.numel() * 2 for p in model.parameters())
    assert torch.cuda.memory_allocated() - before <= 1.1 * weights
    cpu = GromaForConditionalGeneration.from_pretrained(model_dir, dtype=torch.bfloat16)
    for (name, a), (_, b) in zip(model.state_dict().items(), cpu.state_dict().items(), strict=True):
        assert torch.equal(a.cpu(), b), name


def test_int4_tinygemm_equals_its_dequantized_weights(model_dir):
    quantized = GromaForConditionalGeneration.from_pretrained(model_dir, dtype=torch.bfloat16, device="cuda",
                                                              quantization="int4")
    assert "TilePacked" in type(quantized.llm.model.layers[0].self_attn.q_proj.weight).__name__
    rounded = GromaForConditionalGeneration.from_pretrained(model_dir, dtype=torch.bfloat16, device="cuda")
    with torch.no_grad():
        for key in quantizable_weights(rounded):
            weight = rounded.get_parameter(key)
            weight.copy_(quantize_weight(weight.detach().clone(), "int4").dequantize())
    got, want = _logits(quantized), _logits(rounded)
    assert got.tokens.tolist() == want.tokens.tolist()
    assert (got.step_logits.float() - want.step_logits.float()).abs().max() <= 0.05


def test_int8_keeps_bf16_tokens_on_the_gpu(model_dir):
    bf16 = GromaForConditionalGeneration.from_pretrained(model_dir, dtype=torch.bfloat16, device="cuda")
    int8 = GromaForConditionalGeneration.from_pretrained(model_dir, dtype=torch.bfloat16, device="cuda",
                                                         quantization="int8")
    assert _logits(int8).tokens.tolist() == _logits(bf16).tokens.tolist()


def test_compiled_perception_with_cuda_graphs_equals_eager(model_dir):
    torch._dynamo.reset()
    eager = GromaForConditionalGeneration.from_pretrained(model_dir, device="cuda")
    compiled = GromaForConditionalGeneration.from_pretrained(model_dir, device="cuda")
    compiled.compile_perception(warm_up=False)
    pixels = torch.randn(1, 3, 128, 128, generator=torch.Generator().manual_seed(1)).cuda()
    for _ in range(3):  # the graphs are recorded on an early call and replayed afterwards
        got = compiled.encode_image(pixels)
    want = eager.encode_image(pixels)
    assert torch.allclose(got.image_tokens, want.image_tokens, atol=1e-4)
    assert torch.allclose(got.proposal_scores, want.proposal_scores, atol=1e-4)
    boxes = want.proposal_boxes[0, :20]
    assert torch.allclose(compiled.encode_regions(got, boxes), eager.encode_regions(want, boxes), atol=1e-4)
    embeds = torch.randn(1, 150, 128, device="cuda")
    a, b = compiled.prefill_prefix(embeds), eager.prefill_prefix(embeds)
    assert all(torch.allclose(x.keys, y.keys, atol=1e-4) for x, y in zip(a.layers, b.layers, strict=True))
    torch._dynamo.reset()
