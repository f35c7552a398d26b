"""Checkpoint I/O: released transformers-4.32 key names <-> our module names, safe loading, saving.

Naming. Our modules keep the released tree (``perceiver.vis_encoder``, ``perceiver.ddetr_transformer``,
``llm``, ``img_txt_bridge``, ``region_encoder``, ``extra_lm_head``, ``new_input_embs``); only transformers 5.x
renamed a few layer internals (``RELEASE_TO_OURS``). The release also stores 68 alias keys
(``perceiver.ddetr_transformer.decoder.{bbox_embed,class_embed_*}``: the same heads registered twice); they
must equal their canonical tensor and are then dropped. The renames are idempotent, so ``from_pretrained``
reads both the release naming and ours; ``save_pretrained`` writes ours (safetensors, no aliases);
``to_release_state_dict`` produces the release naming (with aliases) for export and tests.

Safety. ``.bin`` files are parsed by ``torch.load(weights_only=True)`` and must contain only tensors.

Memory. Files are mapped, not read (``weight_files``); loading and converting go tensor by tensor, so peak
memory is about the finished model plus one tensor, and a refusal, a lack of memory and an unreadable file
raise different errors (``errors``).
"""

from __future__ import annotations

import json
import math
import pickle
import re
import zipfile
from collections.abc import Callable
from pathlib import Path

import torch

from .configuration_groma import GromaConfig
from .errors import CheckpointError, CheckpointMemoryError, CheckpointRefusedError
from .precision import quantization_mode, torch_dtype
from .quantization import check_supported, is_quantized, quantizable_weights, quantize_weight
from .weight_files import MappedFile, read_safetensors, read_torch_zip, write_safetensors

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
class CheckpointTensors(dict):
    """Tensors of a checkpoint directory (file naming), as views on private maps of the weight files.

    ``release(t)`` hands back the pages under a view once it was converted (cast or copied to a device).
    """

    def __init__(self) -> None:
        super().__init__()
        self.files: list[MappedFile] = []

    def release(self, tensor: torch.Tensor) -> None:
        for mapped in self.files:
            mapped.release(tensor)


def _is_out_of_memory(err: BaseException) -> bool:
    if isinstance(err, (MemoryError, torch.OutOfMemoryError)):
        return True
    text = str(err).lower()
    return "can't allocate memory" in text or "out of memory" in text or "not enough memory" in text


def _refusal(path: Path, err: BaseException) -> CheckpointRefusedError:
    return CheckpointRefusedError(
        f"refusing to load {path}: it is not a plain tensor state dict loadable with weights_only=True "
        f"(pickled code or objects are never executed; bytes that are no pickle at all read the same way). "
        f"Details: {type(err).__name__}: {err}"
    )


def _read_bin(path: Path) -> tuple[dict, MappedFile | None]:
    if zipfile.is_zipfile(path):
        return read_torch_zip(path)
    return torch.load(path, map_location="cpu", weights_only=True), None  # legacy format: small, in memory


def _load_file(path: Path) -> CheckpointTensors:
    """One weight file, every failure classified: refused (not plain tensors), out of memory, unreadable."""
    path = Path(path)
    out = CheckpointTensors()
    try:
        if path.suffix == ".safetensors":
            obj, mapped = read_safetensors(path)
        else:
            obj, mapped = _read_bin(path)
    except pickle.UnpicklingError as err:
        raise _refusal(path, err) from None
    except Exception as err:  # noqa: BLE001 - zip, pickle and OS layers raise many types; classified here
        if _is_out_of_memory(err):
            raise CheckpointMemoryError(f"out of memory while reading {path}: {type(err).__name__}: {err}") from None
        if isinstance(err, PermissionError | FileNotFoundError):
            raise CheckpointError(f"cannot open {path}: {err}") from None
        raise CheckpointError(
            f"cannot read {path}: truncated, corrupt or not a weight file ({type(err).__name__}: {err})"
        ) from None
    if not isinstance(obj, dict):
        raise CheckpointError(f"{path} holds a {type(obj).__name__}, expected a dict of tensors")
    bad = sorted(str(k) for k, v in obj.items() if not isinstance(v, torch.Tensor))
    if bad:
        raise CheckpointRefusedError(f"{path} holds non-tensor entries (refused): {', '.join(bad[:20])}")
    out.update(obj)
    if mapped is not None:
        out.files.append(mapped)
    return out


def read_checkpoint(directory: Path) -> CheckpointTensors:
    """All tensors of a checkpoint directory, in the file's naming (single file or sharded with an index).

    No data is read: the tensors are views on the mapped files (legacy pre-zip ``.bin`` files excepted).
    """
    directory = Path(directory)
    for name in WEIGHT_FILES:
        if (directory / name).is_file():
            return _load_file(directory / name)
    shards: list[Path] = []
    for name in INDEX_FILES:
        if (directory / name).is_file():
            index = json.loads((directory / name).read_text())
            shards = [directory / s for s in sorted(set(index.get("weight_map", {}).values()))]
            if not shards:
                raise CheckpointError(f"{directory / name} has an empty weight_map")
            break
    else:
        shards = sorted(directory.glob("*.safetensors"))
    if not shards:
        raise CheckpointError(f"no weights in {directory}: expected one of {WEIGHT_FILES + INDEX_FILES}")
    out = CheckpointTensors()
    for shard in shards:
        part = _load_file(shard)
        out.update(part)
        out.files.extend(part.files)
    return out


def _same_values(a: torch.Tensor, b: torch.Tensor) -> bool:
    """Equal shape and values, NaN matching NaN (an alias of a NaN weight is still the same tensor)."""
    if a.shape != b.shape or a.dtype != b.dtype:
        return False
    if torch.equal(a, b):
        return True
    if not a.is_floating_point():
        return False
    return torch.equal(a.isnan(), b.isnan()) and torch.equal(a.nan_to_num(0.0), b.nan_to_num(0.0))


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
        elif not _same_values(mapped[ours], raw[key]):
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


def read_config(directory: Path) -> GromaConfig:
    config_path = Path(directory) / "config.json"
    if not config_path.is_file():
        raise CheckpointError(f"{config_path} not found")
    return GromaConfig(**json.loads(config_path.read_text()))


def _checked_state(model, directory: Path) -> tuple[CheckpointTensors | dict, dict[str, torch.Tensor]]:
    """(the files' tensors, our-naming tensors checked against the model's keys and shapes)."""
    expected = {k: v.shape for k, v in model.state_dict().items()}
    tied = model.config.llm_cfg.tie_word_embeddings
    raw = read_checkpoint(directory)
    state = map_state_dict(raw, expected, allow_missing=("llm.lm_head.weight",) if tied else ())
    if tied:
        state.pop("llm.lm_head.weight", None)
    return raw, {k: state[k] for k in expected if k in state}  # the model's own order


def _target_dtype(src: torch.Tensor, dtype: torch.dtype) -> torch.dtype:
    return dtype if src.is_floating_point() else src.dtype


def _place(src: torch.Tensor, dtype: torch.dtype, device: torch.device) -> torch.Tensor:
    """``src`` in ``dtype`` on ``device``: the mapped view itself when nothing changes (copy-on-write, no
    anonymous memory), else one new tensor filled straight from the view (a GPU gets it without a CPU copy)."""
    target = _target_dtype(src, dtype)
    if device.type == "cpu" and src.dtype == target:
        return src
    out = torch.empty(src.shape, dtype=target, device=device)
    out.copy_(src)
    return out


def _gib(nbytes: float) -> str:
    return f"{nbytes / (1 << 30):.1f} GiB"


def _memory_error(directory: Path, dtype: torch.dtype, device: torch.device, need: int,
                  err: BaseException) -> CheckpointMemoryError:
    free = ""
    try:
        if device.type == "cuda":
            free = f"; {_gib(torch.cuda.mem_get_info(device)[0])} free on {device}"
        else:
            avail = next(line for line in Path("/proc/meminfo").read_text().splitlines()
                         if line.startswith("MemAvailable"))
            free = f"; {_gib(int(avail.split()[1]) * 1024)} available on the host"
    except Exception:  # noqa: BLE001 - the numbers only decorate the message
        pass
    smaller = "bfloat16/float16 or quantization int8/int4" if dtype == torch.float32 else "quantization int8/int4"
    return CheckpointMemoryError(
        f"out of memory loading {directory} as {str(dtype).removeprefix('torch.')} on {device}: the weights need "
        f"about {_gib(need)}{free}. Free memory or load smaller ({smaller}). Details: {type(err).__name__}: {err}"
    )


def load_pretrained(model_cls, directory: Path, dtype=torch.float32, device="cpu", quantization=None,
                    progress: Callable[[int], None] | None = None):
    """Implementation of ``GromaForConditionalGeneration.from_pretrained``.

    Tensor by tensor: each checked weight goes from the mapped file straight into ``dtype`` on ``device``
    (then its source pages are released) and, with ``quantization``, is quantized right there, so peak memory
    is about the finished model plus one tensor. ``progress(nbytes)`` is called after each tensor.
    """
    dtype = torch_dtype(dtype)
    device = torch.device(device)
    mode = quantization_mode(quantization)
    if mode is not None:
        check_supported(mode, dtype, device)
    model = build_empty(model_cls, read_config(directory))
    raw, state = _checked_state(model, directory)
    to_quantize = set(quantizable_weights(model)) if mode else set()
    placed: dict[str, torch.Tensor] = {}
    quantized: dict[str, torch.nn.Parameter] = {}
    try:
        for key, src in state.items():
            out = _place(src, dtype, device)
            if key in to_quantize:
                quantized[key] = quantize_weight(out, mode)
                del out
            else:
                placed[key] = out
            if isinstance(raw, CheckpointTensors):  # unwritten pages: a kept view maps them again on use
                raw.release(src)
            if progress is not None:
                progress(src.numel() * src.element_size())
    except (MemoryError, RuntimeError) as err:
        if not _is_out_of_memory(err):
            raise
        need = sum(v.numel() * _target_dtype(v, dtype).itemsize for v in state.values())
        placed.clear()
        quantized.clear()
        raise _memory_error(Path(directory), dtype, device, need, err) from None
    del raw, state
    missing, _ = model.load_state_dict(placed, strict=False, assign=True)
    tied = model.config.llm_cfg.tie_word_embeddings
    unfilled = set(missing) - set(quantized) - ({"llm.lm_head.weight"} if tied else set())
    if unfilled:
        raise CheckpointError(f"tensors left unfilled after loading: {', '.join(sorted(unfilled))}")
    for key, weight in quantized.items():
        model.get_submodule(key.removesuffix(".weight")).weight = weight
    if tied:
        model.llm.lm_head.weight = model.llm.model.embed_tokens.weight
    _materialize_buffers(model, device)
    return model.eval().requires_grad_(False)


# ------------------------------------------------------------------------------------------------- writing
def _config_json(config: GromaConfig, dtype: torch.dtype) -> str:
    cfg = config.to_dict()
    cfg["architectures"] = ["GromaForConditionalGeneration"]
    cfg["dtype"] = str(dtype).removeprefix("torch.")
    return json.dumps(cfg, indent=2, sort_keys=True, default=str) + "\n"


def _write_shards(directory: Path, specs: list[tuple[str, tuple[int, ...], torch.dtype]],
                  produce: Callable[[str], torch.Tensor], max_shard_bytes: int,
                  written: Callable[[str, torch.Tensor], None] | None = None) -> None:
    """``model.safetensors``, or ``model-0000i-of-0000n.safetensors`` + index when over ``max_shard_bytes``."""
    shards: list[list[tuple[str, tuple[int, ...], torch.dtype]]] = [[]]
    size = 0
    for spec in specs:
        nbytes = math.prod(spec[1]) * spec[2].itemsize
        if shards[-1] and size + nbytes > max_shard_bytes:
            shards.append([])
            size = 0
        shards[-1].append(spec)
        size += nbytes
    meta = {"format": "pt", "naming": "groma_ros"}
    if len(shards) == 1:
        write_safetensors(directory / "model.safetensors", shards[0], produce, meta, written)
        return
    weight_map, total = {}, 0
    for i, shard in enumerate(shards):
        name = f"model-{i + 1:05d}-of-{len(shards):05d}.safetensors"
        total += write_safetensors(directory / name, shard, produce, meta, written)
        weight_map.update({k: name for k, _, _ in shard})
    index = {"metadata": {"total_size": total}, "weight_map": weight_map}
    (directory / "model.safetensors.index.json").write_text(json.dumps(index, indent=2) + "\n")


def save_pretrained(model, directory: Path, max_shard_bytes: int = 5 << 30) -> None:
    """Write config.json + our-naming safetensors (sharded with ``model.safetensors.index.json`` if large).

    Tensor by tensor: a GPU model is copied to the host one tensor at a time.
    """
    if is_quantized(model):
        raise ValueError("a quantized model cannot be saved: save the unquantized weights and pass "
                         "quantization= when loading")
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    (directory / "config.json").write_text(_config_json(model.config, model.dtype))
    state = model.state_dict()
    if model.config.llm_cfg.tie_word_embeddings:
        state.pop("llm.lm_head.weight", None)
    specs = [(k, tuple(v.shape), v.dtype) for k, v in state.items()]
    _write_shards(directory, specs, lambda k: state[k], max_shard_bytes)


def convert_checkpoint(src: Path, dst: Path, dtype=torch.bfloat16, max_shard_bytes: int = 5 << 30,
                       progress: Callable[[int], None] | None = None) -> Path:
    """A checkpoint directory (released ``.bin`` or ours) -> ``dst`` in our naming as ``dtype`` safetensors.

    Every key is checked as by the loader; then each tensor is cast and written as it is read, so memory
    holds one tensor at a time (the output is never assembled).
    """
    dtype = torch_dtype(dtype)
    src, dst = Path(src), Path(dst)
    config = read_config(src)
    raw, state = _checked_state(build_empty(_model_class(), config), src)
    dst.mkdir(parents=True, exist_ok=True)
    (dst / "config.json").write_text(_config_json(config, dtype))
    specs = [(k, tuple(v.shape), _target_dtype(v, dtype)) for k, v in state.items()]

    def produce(key: str) -> torch.Tensor:
        return state[key].to(_target_dtype(state[key], dtype))

    def written(key: str, tensor: torch.Tensor) -> None:
        if isinstance(raw, CheckpointTensors):
            raw.release(state[key])
        if progress is not None:
            progress(state[key].numel() * state[key].element_size())

    try:
        _write_shards(dst, specs, produce, max_shard_bytes, written)
    except (MemoryError, RuntimeError) as err:
        if not _is_out_of_memory(err):
            raise
        raise CheckpointMemoryError(f"out of memory converting {src}: {type(err).__name__}: {err}") from None
    return dst


def _model_class():
    from .modeling_groma import GromaForConditionalGeneration

    return GromaForConditionalGeneration
