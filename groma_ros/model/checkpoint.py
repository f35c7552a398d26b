"""Checkpoint I/O: released transformers-4.32 key names <-> our module names, safe loading, saving.

Naming. Our modules keep the released tree (``perceiver.vis_encoder``, ``perceiver.ddetr_transformer``,
``llm``, ``img_txt_bridge``, ``region_encoder``, ``extra_lm_head``, ``new_input_embs``); only transformers 5.x
renamed a few layer internals (``RELEASE_TO_OURS``). The release also stores 68 alias keys
(``perceiver.ddetr_transformer.decoder.{bbox_embed,class_embed_*}``: the same heads registered twice); they
must equal their canonical tensor and are then dropped. The renames are idempotent, so ``from_pretrained``
reads both the release naming and ours; ``save_pretrained`` writes ours (safetensors, no aliases);
``to_release_state_dict`` produces the release naming (with aliases) for export and tests.

Safety. ``.bin`` files are read with ``torch.load(weights_only=True)`` and must contain only tensors.
"""

from __future__ import annotations

import json
import re
from pathlib import Path

import torch  # noqa: E402
from safetensors import safe_open  # noqa: E402
from safetensors.torch import save_file  # noqa: E402

from .configuration_groma import GromaConfig  # noqa: E402

_VIT = r"^(perceiver\.vis_encoder\.encoder\.layer\.\d+\.attention)"
_DDETR = r"^(perceiver\.ddetr_transformer\.(?:encoder|decoder)\.layers\.\d+)"
RELEASE_TO_OURS: list[tuple[str, str]] = [
    (_VIT + r"\.attention\.query\.", r"\1.q_proj."),
    (_VIT + r"\.attention\.key\.", r"\1.k_proj."),
    (_VIT + r"\.attention\.value\.", r"\1.v_proj."),
    (_VIT + r"\.output\.dense\.", r"\1.o_proj."),
    (_DDETR + r"\.fc([12])\.", r"\1.mlp.fc\2."),
    (_DDETR + r"\.self_attn\.out_proj\.", r"\1.self_attn.o_proj."),
]
OURS_TO_RELEASE: list[tuple[str, str]] = [
    (_VIT + r"\.q_proj\.", r"\1.attention.query."),
    (_VIT + r"\.k_proj\.", r"\1.attention.key."),
    (_VIT + r"\.v_proj\.", r"\1.attention.value."),
    (_VIT + r"\.o_proj\.", r"\1.output.dense."),
    (_DDETR + r"\.mlp\.fc([12])\.", r"\1.fc\2."),
    (_DDETR + r"\.self_attn\.o_proj\.", r"\1.self_attn.out_proj."),
]
ALIAS_RE = re.compile(
    r"^perceiver\.ddetr_transformer\.decoder\.(bbox_embed|class_embed_enc|class_embed_coco|"
    r"class_embed_sa1b)\."
)
_ALIASED = re.compile(
    r"^perceiver\.ddetr_transformer\.(bbox_embed|class_embed_enc|class_embed_coco|"
    r"class_embed_sa1b)\."
)

WEIGHT_FILES = ("model.safetensors", "pytorch_model.bin")
INDEX_FILES = ("model.safetensors.index.json", "pytorch_model.bin.index.json")


class CheckpointError(RuntimeError):
    """A checkpoint that does not fit the model or cannot be read safely."""


def release_to_ours(key: str) -> str:
    """Map one key (release or ours) to our naming; alias keys map to their canonical name."""
    key = ALIAS_RE.sub(r"perceiver.ddetr_transformer.\1.", key)
    for pattern, repl in RELEASE_TO_OURS:
        key = re.sub(pattern, repl, key)
    return key


def ours_to_release(key: str) -> str:
    for pattern, repl in OURS_TO_RELEASE:
        key = re.sub(pattern, repl, key)
    return key


def to_release_state_dict(state_dict: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Our state dict -> the released key set (4.32 names, alias entries sharing the canonical tensors)."""
    out = {}
    for key, value in state_dict.items():
        rkey = ours_to_release(key)
        out[rkey] = value
        if _ALIASED.match(rkey):
            out[_ALIASED.sub(r"perceiver.ddetr_transformer.decoder.\1.", rkey)] = value
    return out


# ---------------------------------------------------------------------------------------------- reading
def _load_bin(path: Path) -> dict[str, torch.Tensor]:
    try:
        try:
            obj = torch.load(path, map_location="cpu", weights_only=True, mmap=True)
        except RuntimeError as err:  # legacy (non-zip) files cannot be memory-mapped
            if "mmap" not in str(err):
                raise
            obj = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:  # noqa: BLE001 - the unpickler raises many types; all mean "refused"
        raise CheckpointError(
            f"refusing to load {path}: it is not a plain tensor state dict loadable with weights_only=True "
            f"(pickled code or objects are never executed). Details: {type(err).__name__}: {err}"
        ) from None
    if not isinstance(obj, dict):
        raise CheckpointError(f"{path} holds a {type(obj).__name__}, expected a dict of tensors")
    bad = sorted(k for k, v in obj.items() if not isinstance(v, torch.Tensor))
    if bad:
        raise CheckpointError(f"{path} holds non-tensor entries (refused): {', '.join(map(str, bad[:20]))}")
    return obj


def _load_safetensors(path: Path) -> dict[str, torch.Tensor]:
    out = {}
    with safe_open(str(path), framework="pt", device="cpu") as f:
        for key in f.keys():
            out[key] = f.get_tensor(key)
    return out


def _load_file(path: Path) -> dict[str, torch.Tensor]:
    return _load_safetensors(path) if path.suffix == ".safetensors" else _load_bin(path)


def read_checkpoint(directory: Path) -> dict[str, torch.Tensor]:
    """All tensors of a checkpoint directory, in the file's naming (single file or sharded with an index)."""
    directory = Path(directory)
    for name in WEIGHT_FILES:
        if (directory / name).is_file():
            return _load_file(directory / name)
    for name in INDEX_FILES:
        if (directory / name).is_file():
            index = json.loads((directory / name).read_text())
            shards = sorted(set(index.get("weight_map", {}).values()))
            if not shards:
                raise CheckpointError(f"{directory / name} has an empty weight_map")
            out: dict[str, torch.Tensor] = {}
            for shard in shards:
                out.update(_load_file(directory / shard))
            return out
    shards = sorted(directory.glob("*.safetensors"))
    if shards:
        out = {}
        for shard in shards:
            out.update(_load_file(shard))
        return out
    raise CheckpointError(f"no weights in {directory}: expected one of {WEIGHT_FILES + INDEX_FILES}")


def map_state_dict(
    raw: dict[str, torch.Tensor], expected: dict[str, torch.Size], allow_missing: tuple[str, ...] = ()
) -> dict[str, torch.Tensor]:
    """Rename ``raw`` to our names, resolve aliases and check everything against ``expected`` shapes.

    Collects all problems and raises one ``CheckpointError`` listing them.
    """
    mapped: dict[str, torch.Tensor] = {}
    aliases: list[tuple[str, str]] = []
    problems: list[str] = []
    for key, value in raw.items():
        ours = release_to_ours(key)
        if ALIAS_RE.match(key):
            aliases.append((key, ours))
            continue
        if ours in mapped:
            problems.append(f"duplicate key after renaming: {key} -> {ours}")
        mapped[ours] = value
    for key, ours in aliases:
        if ours not in mapped:
            mapped[ours] = raw[key]
        elif mapped[ours].shape != raw[key].shape or not torch.equal(mapped[ours], raw[key]):
            problems.append(f"alias {key} differs from {ours} (they must be the same tensor)")
    missing = sorted(k for k in expected if k not in mapped and k not in allow_missing)
    unexpected = sorted(k for k in mapped if k not in expected)
    shapes = sorted(
        f"{k}: checkpoint {tuple(mapped[k].shape)} vs model {tuple(expected[k])}"
        for k in mapped
        if k in expected and mapped[k].shape != expected[k]
    )
    if missing:
        problems.append(f"missing keys ({len(missing)}): " + ", ".join(missing))
    if unexpected:
        problems.append(f"unexpected keys ({len(unexpected)}): " + ", ".join(unexpected))
    if shapes:
        problems.append(f"shape mismatches ({len(shapes)}): " + "; ".join(shapes))
    if problems:
        raise CheckpointError("checkpoint does not match the model:\n  " + "\n  ".join(problems))
    return mapped


# ----------------------------------------------------------------------------------------------------- model
def _check_dtype(dtype: torch.dtype) -> torch.dtype:
    if isinstance(dtype, str):
        dtype = {
            "fp32": torch.float32,
            "float32": torch.float32,
            "bf16": torch.bfloat16,
            "bfloat16": torch.bfloat16,
            "fp16": torch.float16,
            "float16": torch.float16,
        }.get(dtype, dtype)
    if dtype not in (torch.float32, torch.bfloat16, torch.float16):
        raise ValueError(f"dtype must be float32, bfloat16 or float16, got {dtype}")
    return dtype


def build_empty(model_cls, config: GromaConfig):
    """The model on the meta device (no memory, no init); fill it with ``load_state_dict(assign=True)``."""
    with torch.device("meta"):
        return model_cls(config)


def _materialize_buffers(model, device: torch.device) -> None:
    """Recreate non-persistent buffers left on the meta device (LLaMA rotary inverse frequencies)."""
    from transformers.models.llama.modeling_llama import LlamaRotaryEmbedding

    with torch.device(device):
        model.llm.model.rotary_emb = LlamaRotaryEmbedding(config=model.config.llm_cfg)
    left = [n for n, t in list(model.named_parameters()) + list(model.named_buffers()) if t.is_meta]
    if left:
        raise CheckpointError(f"tensors left uninitialised after loading: {', '.join(left)}")


def load_pretrained(model_cls, directory: Path, dtype=torch.float32, device="cpu", quantization=None):
    """Implementation of ``GromaForConditionalGeneration.from_pretrained``."""
    dtype = _check_dtype(dtype)
    device = torch.device(device)
    if quantization not in (None, "8bit", "4bit"):
        raise ValueError(f"quantization must be None, '8bit' or '4bit', got {quantization!r}")
    if quantization is not None:
        _require_bitsandbytes(device)
    config_path = Path(directory) / "config.json"
    if not config_path.is_file():
        raise CheckpointError(f"{config_path} not found")
    config = GromaConfig(**json.loads(config_path.read_text()))
    model = build_empty(model_cls, config)
    expected = {k: v.shape for k, v in model.state_dict().items()}
    tied = config.llm_cfg.tie_word_embeddings
    state = map_state_dict(
        read_checkpoint(directory), expected, allow_missing=("llm.lm_head.weight",) if tied else ()
    )
    state = {k: (v.to(dtype) if v.is_floating_point() else v) for k, v in state.items()}
    model.load_state_dict(state, strict=not tied, assign=True)
    if tied:
        model.llm.lm_head.weight = model.llm.model.embed_tokens.weight
    _materialize_buffers(model, torch.device("cpu"))
    model = model.to(device).eval().requires_grad_(False)
    if quantization is not None:
        quantize_llm_(model, quantization)
    return model


def save_pretrained(model, directory: Path, max_shard_bytes: int = 5 << 30) -> None:
    """Write config.json + our-naming safetensors (sharded with ``model.safetensors.index.json`` if large)."""
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    config = model.config.to_dict()
    config["architectures"] = ["GromaForConditionalGeneration"]
    config["dtype"] = str(model.dtype).removeprefix("torch.")
    (directory / "config.json").write_text(json.dumps(config, indent=2, sort_keys=True, default=str) + "\n")
    state = {k: v.detach().to("cpu").contiguous() for k, v in model.state_dict().items()}
    if model.config.llm_cfg.tie_word_embeddings:
        state.pop("llm.lm_head.weight", None)
    shards: list[dict[str, torch.Tensor]] = [{}]
    size = 0
    for key, value in state.items():
        nbytes = value.numel() * value.element_size()
        if shards[-1] and size + nbytes > max_shard_bytes:
            shards.append({})
            size = 0
        shards[-1][key] = value
        size += nbytes
    meta = {"format": "pt", "naming": "groma_ros"}
    if len(shards) == 1:
        save_file(shards[0], str(directory / "model.safetensors"), metadata=meta)
        return
    weight_map = {}
    for i, shard in enumerate(shards):
        name = f"model-{i + 1:05d}-of-{len(shards):05d}.safetensors"
        save_file(shard, str(directory / name), metadata=meta)
        weight_map.update({k: name for k in shard})
    index = {
        "metadata": {"total_size": sum(v.numel() * v.element_size() for v in state.values())},
        "weight_map": weight_map,
    }
    (directory / "model.safetensors.index.json").write_text(json.dumps(index, indent=2) + "\n")


# ---------------------------------------------------------------------------------------------- quantization
def _require_bitsandbytes(device: torch.device) -> None:
    try:
        import bitsandbytes  # noqa: F401
    except ImportError:
        raise RuntimeError(
            "8-bit/4-bit loading needs the 'bitsandbytes' package (pip install bitsandbytes)"
        ) from None
    if device.type != "cuda" or not torch.cuda.is_available():
        raise RuntimeError("8-bit/4-bit loading needs a CUDA device (device='cuda')")


def quantize_llm_(model, mode: str) -> None:
    """Replace the LLaMA decoder-layer linears by bitsandbytes int8 / nf4 (bf16 compute) layers, in place.

    Vision, proposer, region encoder, embeddings and heads stay in the load dtype (as the original 4-bit
    community checkpoint did for non-LLM parts is unverified; these are small next to the LLM).
    """
    import bitsandbytes as bnb

    device = model.device
    for module in model.llm.model.layers.modules():
        for name, child in list(module.named_children()):
            if not isinstance(child, torch.nn.Linear):
                continue
            weight = child.weight.data.to("cpu", torch.float16)
            if mode == "8bit":
                q = bnb.nn.Linear8bitLt(
                    child.in_features,
                    child.out_features,
                    bias=child.bias is not None,
                    has_fp16_weights=False,
                    threshold=6.0,
                )
                q.weight = bnb.nn.Int8Params(weight, requires_grad=False, has_fp16_weights=False)
            else:
                q = bnb.nn.Linear4bit(
                    child.in_features,
                    child.out_features,
                    bias=child.bias is not None,
                    compute_dtype=torch.bfloat16,
                    quant_type="nf4",
                )
                q.weight = bnb.nn.Params4bit(weight, requires_grad=False, quant_type="nf4")
            if child.bias is not None:
                q.bias = torch.nn.Parameter(child.bias.data, requires_grad=False)
            setattr(module, name, q.to(device))
