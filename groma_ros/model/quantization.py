"""Weight-only int8 / int4 quantization of the LLaMA decoder linears, in PyTorch itself through torchao.

Only the decoder layers' linears (q/k/v/o, gate/up/down: 88 % of the 7B's parameters) are quantized; vision,
proposer, region encoder, embeddings and heads stay in the load dtype. Activations keep the load dtype, so
this saves memory and HBM traffic per decoded token, not arithmetic.

- ``int8``: per-output-channel symmetric int8 (``Int8WeightOnlyConfig``), any device.
- ``int4``: groups of 128 input channels (64/32 when the width is not a multiple) with a scale and zero point
  (relative error of one linear's output on Gaussian weights: 10 %, against int8's 0.9 %).
  On CUDA the weights are packed 4-bit for the tinygemm kernel (``Int4WeightOnlyConfig``, packing
  ``tile_packed_to_4d``; needs bfloat16 and compute capability >= 8.0). On the CPU the same int4 values are
  stored one per byte (``IntxWeightOnlyConfig`` unpacked to int8; torchao 0.18 has no packed x86 weight-only
  int4 kernel without its C++ extensions): int4 numerics, int8 memory.

Quantization happens tensor by tensor (``quantize_weight``) so the loader can quantize each weight as it
arrives and never holds the whole LLM in the load dtype.
"""

from __future__ import annotations

import torch
from torch import nn

from .precision import quantization_mode

INT4_GROUP_SIZES = (128, 64, 32)


def check_supported(mode: str, dtype: torch.dtype, device: torch.device) -> None:
    """Raise ``RuntimeError``/``ValueError`` naming what is missing, before any weight is read."""
    try:
        import torchao  # noqa: F401
    except ImportError:
        raise RuntimeError(f"{mode} quantization needs the 'torchao' package (pip install torchao==0.18.0)") from None
    if mode == "int4" and device.type == "cuda":
        if dtype != torch.bfloat16:
            raise ValueError(f"int4 on CUDA runs the tinygemm kernel, which needs dtype bfloat16 (got {dtype})")
        major, minor = torch.cuda.get_device_capability(device)
        if major < 8:
            raise RuntimeError(f"int4 on CUDA needs compute capability >= 8.0; this GPU has {major}.{minor}")


def quantizable_weights(model: nn.Module) -> list[str]:
    """State-dict keys of the weights that get quantized: the LLaMA decoder layers' ``nn.Linear`` weights."""
    return [f"llm.model.layers.{name}.weight" for name, module in model.llm.model.layers.named_modules()
            if isinstance(module, nn.Linear)]


def _group_size(in_features: int) -> int | None:
    return next((g for g in INT4_GROUP_SIZES if in_features % g == 0), None)


def _config(mode: str, weight: torch.Tensor):
    from torchao.quantization import (
        Int4WeightOnlyConfig,
        Int8WeightOnlyConfig,
        IntxWeightOnlyConfig,
        MappingType,
        PerGroup,
    )

    if mode == "int8":
        return Int8WeightOnlyConfig(set_inductor_config=False)
    group = _group_size(weight.shape[1])
    if group is None:
        return None
    if weight.device.type == "cuda":
        return Int4WeightOnlyConfig(group_size=group, int4_packing_format="tile_packed_to_4d",
                                    set_inductor_config=False)
    return IntxWeightOnlyConfig(weight_dtype=torch.int4, granularity=PerGroup(group),
                                mapping_type=MappingType.ASYMMETRIC)  # scale + zero point, as tinygemm


@torch.no_grad()
def quantize_weight(weight: torch.Tensor, mode: str) -> nn.Parameter:
    """One ``[out, in]`` linear weight -> a torchao quantized parameter on the same device.

    A width no int4 group size divides stays unquantized (returned as a plain parameter).
    """
    from torchao.quantization import quantize_

    config = _config(mode, weight)
    holder = nn.Linear(weight.shape[1], weight.shape[0], bias=False, device="meta")
    holder.weight = nn.Parameter(weight, requires_grad=False)
    if config is not None:
        quantize_(holder, config)
    return holder.weight


def quantize_llm_(model: nn.Module, mode: str) -> None:
    """Quantize an already built model's decoder linears in place, one at a time (the old weight is freed as
    each new one is set, so memory never holds both copies of the LLM)."""
    mode = quantization_mode(mode)
    if mode is None:
        return
    check_supported(mode, model.dtype, model.device)
    for key in quantizable_weights(model):
        module = model.get_submodule(key.removesuffix(".weight"))
        module.weight = quantize_weight(module.weight.detach(), mode)


def is_quantized(model: nn.Module) -> bool:
    return any(type(p.data) is not torch.Tensor for p in model.parameters())


def tensor_bytes(tensor: torch.Tensor) -> int:
    """Bytes a (possibly torchao-subclassed) tensor holds: the sum over its inner plain tensors."""
    if type(tensor.data) is torch.Tensor:
        return tensor.numel() * tensor.element_size()
    inner, _ = tensor.__tensor_flatten__()
    return sum(tensor_bytes(getattr(tensor, name)) for name in inner if getattr(tensor, name) is not None)


def parameter_bytes(module: nn.Module) -> int:
    """Bytes of all parameters and buffers of ``module``, quantized ones counted by what they store."""
    return sum(tensor_bytes(t) for t in list(module.parameters()) + list(module.buffers()))
