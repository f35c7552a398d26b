"""Weight files read and written one tensor at a time, so a checkpoint never sits whole in anonymous memory.

Reading. Every tensor is a view on a private (copy-on-write, not reserved) memory map of its file: nothing is
read until a tensor is used, a tensor used as it is costs no anonymous memory, and the pages of a tensor that was
converted (cast, or copied to a GPU) are handed back with ``MappedFile.release`` so the fp32 source does not stay
resident beside its bf16 copy.

- zip ``.bin`` (``torch.save`` since torch 1.6, the released checkpoints): ``torch.load(weights_only=True,
  map_location="meta")`` parses the pickle with torch's own restricted unpickler (pickled code or objects still
  never run) and reads no data; it records each storage's byte offset in the file, and the tensor becomes a
  view on our map at that offset.
- legacy (pre-zip) ``.bin``: ``torch.load(weights_only=True)`` in memory (old, small files only).
- ``.safetensors``: 8-byte header length, JSON header, raw little-endian data; the header is parsed here.

Why not the libraries' own loaders: ``torch.load(mmap=True)`` and ``safetensors.safe_open`` map the file
themselves and keep the mapping private to them, so converted tensors' pages cannot be released; converting
the 29.5 GB fp32 7B to bf16 would keep every fp32 page mapped next to the 14.7 GB result.

Writing. ``write_safetensors`` writes the header first (offsets follow from shapes and dtypes) and then each
tensor as it is produced. ``safetensors.torch.save_file`` takes the whole dict at once and copies it to bytes,
which doubles a shard in memory.
"""

from __future__ import annotations

import json
import math
import mmap
import os
import sys
import zipfile
from collections.abc import Callable, Iterable, Sequence
from pathlib import Path

import torch

SAFETENSORS_DTYPES: dict[str, torch.dtype] = {
    "F64": torch.float64, "F32": torch.float32, "F16": torch.float16, "BF16": torch.bfloat16,
    "I64": torch.int64, "I32": torch.int32, "I16": torch.int16, "I8": torch.int8, "U8": torch.uint8,
    "BOOL": torch.bool, "F8_E4M3": torch.float8_e4m3fn, "F8_E5M2": torch.float8_e5m2,
}
_DTYPE_NAMES = {v: k for k, v in SAFETENSORS_DTYPES.items()}
_MAP_NORESERVE = getattr(mmap, "MAP_NORESERVE", 0x4000 if sys.platform.startswith("linux") else 0)


class WeightFileFormatError(ValueError):
    """The file is not a well-formed weight file of its kind (truncated, bad header, bad offsets)."""


class MappedFile:
    """A private, copy-on-write map of one file and tensor views into it."""

    def __init__(self, path: str | os.PathLike) -> None:
        self.path = Path(path)
        with open(self.path, "rb") as f:
            self.size = os.fstat(f.fileno()).st_size
            if self.size == 0:
                raise WeightFileFormatError(f"{self.path} is empty")
            # copy-on-write (a write to a tensor never reaches the file) without reserving the file's size as
            # commit charge: a 29.5 GB private writable map is refused on a 24 GB machine otherwise
            self.map = mmap.mmap(f.fileno(), 0, flags=mmap.MAP_PRIVATE | _MAP_NORESERVE,
                                 prot=mmap.PROT_READ | mmap.PROT_WRITE)
        self.base = torch.frombuffer(self.map, dtype=torch.uint8, count=1).data_ptr()

    def view(self, offset: int, nbytes: int, dtype: torch.dtype, shape: Sequence[int],
             stride: Sequence[int] | None = None, storage_offset: int = 0) -> torch.Tensor:
        """The tensor whose storage is ``nbytes`` bytes at ``offset`` (no data is read)."""
        if offset < 0 or offset + nbytes > self.size:
            raise WeightFileFormatError(
                f"{self.path}: data at bytes {offset}..{offset + nbytes} lies past the end ({self.size} bytes)"
            )
        if nbytes == 0:
            flat = torch.empty(0, dtype=dtype)
        else:
            flat = torch.frombuffer(self.map, dtype=torch.uint8, count=nbytes, offset=offset).view(dtype)
        if stride is None:
            return flat.view(tuple(shape))
        return flat.as_strided(tuple(shape), tuple(stride), storage_offset)

    def release(self, tensor: torch.Tensor) -> None:
        """Unmap the pages under ``tensor`` (a view of this file that nothing wrote to and nobody keeps).

        The pages stay in the page cache; a later read of the same bytes maps them again from the file.
        """
        if tensor.numel() == 0 or not hasattr(self.map, "madvise"):
            return
        start = tensor.data_ptr() - self.base
        last = sum((n - 1) * s for n, s in zip(tensor.shape, tensor.stride(), strict=True))
        extent = (last + 1) * tensor.element_size()
        if start < 0 or start + extent > self.size:
            return  # not a view of this file
        page = mmap.PAGESIZE
        first = start // page * page
        end = min(-(-(start + extent) // page) * page, self.size)
        self.map.madvise(mmap.MADV_DONTNEED, first, end - first)


def _byteorder(path: Path) -> str:
    with zipfile.ZipFile(path) as z:
        for name in z.namelist():
            if name.endswith("/byteorder"):
                return z.read(name).decode().strip()
    return "little"  # torch's default for files without the record


def read_torch_zip(path: str | os.PathLike) -> tuple[object, MappedFile | None]:
    """The unpickled object of a zip ``.bin``, its tensors as views on a ``MappedFile``.

    Raises ``pickle.UnpicklingError`` (from torch) for anything but plain tensors and containers.
    """
    path = Path(path)
    obj = torch.load(path, map_location="meta", weights_only=True)
    if _byteorder(path) != sys.byteorder:
        raise WeightFileFormatError(f"{path} was written {_byteorder(path)}-endian; this machine is {sys.byteorder}")
    if not isinstance(obj, dict) or not any(isinstance(v, torch.Tensor) for v in obj.values()):
        return obj, None
    mapped = MappedFile(path)
    out = {}
    for key, meta in obj.items():
        if not isinstance(meta, torch.Tensor):
            out[key] = meta
            continue
        storage = meta.untyped_storage()
        offset = getattr(storage, "_checkpoint_offset", None)
        if offset is None:  # a torch that no longer records offsets: its own (private) mapping still streams
            return torch.load(path, map_location="cpu", weights_only=True, mmap=True), None
        out[key] = mapped.view(int(offset), storage.nbytes(), meta.dtype, meta.shape, meta.stride(),
                               meta.storage_offset())
    return out, mapped


def read_safetensors(path: str | os.PathLike) -> tuple[dict[str, torch.Tensor], MappedFile]:
    """All tensors of a ``.safetensors`` file as views on a ``MappedFile``."""
    mapped = MappedFile(path)
    if mapped.size < 8:
        raise WeightFileFormatError(f"{path} is shorter than a safetensors header")
    length = int.from_bytes(mapped.map[:8], "little")
    if 8 + length > mapped.size:
        raise WeightFileFormatError(f"{path}: header of {length} bytes runs past the end of the file")
    try:
        header = json.loads(bytes(mapped.map[8 : 8 + length]))
    except (UnicodeDecodeError, json.JSONDecodeError) as err:
        raise WeightFileFormatError(f"{path}: the safetensors header is not JSON ({err})") from None
    start = 8 + length
    out = {}
    for key, info in header.items():
        if key == "__metadata__":
            continue
        try:
            dtype = SAFETENSORS_DTYPES[info["dtype"]]
            shape = [int(n) for n in info["shape"]]
            begin, end = (int(x) for x in info["data_offsets"])
        except (KeyError, TypeError, ValueError):
            raise WeightFileFormatError(f"{path}: bad header entry for {key}: {info!r}") from None
        nbytes = math.prod(shape) * dtype.itemsize
        if end - begin != nbytes:
            raise WeightFileFormatError(f"{path}: {key} {info['dtype']}{shape} needs {nbytes} bytes, "
                                        f"its offsets span {end - begin}")
        out[key] = mapped.view(start + begin, nbytes, dtype, shape)
    return out, mapped


def write_safetensors(
    path: str | os.PathLike,
    specs: Iterable[tuple[str, Sequence[int], torch.dtype]],
    produce: Callable[[str], torch.Tensor],
    metadata: dict[str, str] | None = None,
    written: Callable[[str, torch.Tensor], None] | None = None,
) -> int:
    """Write a safetensors file tensor by tensor; returns the bytes of tensor data written.

    ``specs`` fixes key order, shapes and dtypes up front; ``produce(key)`` is called once per key, in that
    order, and must return a tensor of that shape and dtype (any device/layout); ``written(key, tensor)`` runs
    after its bytes are on disk. The file appears under ``path`` only once complete.
    """
    path = Path(path)
    specs = [(k, tuple(int(n) for n in shape), dtype) for k, shape, dtype in specs]
    header: dict[str, object] = {"__metadata__": dict(metadata or {})}
    offset = 0
    for key, shape, dtype in specs:
        if dtype not in _DTYPE_NAMES:
            raise ValueError(f"{key}: dtype {dtype} has no safetensors name")
        nbytes = math.prod(shape) * dtype.itemsize
        header[key] = {"dtype": _DTYPE_NAMES[dtype], "shape": list(shape), "data_offsets": [offset, offset + nbytes]}
        offset += nbytes
    blob = json.dumps(header, separators=(",", ":")).encode()
    blob += b" " * (-len(blob) % 8)  # data starts 8-byte aligned, as safetensors writes it
    partial = path.with_name(path.name + ".partial")
    try:
        with open(partial, "wb") as f:
            f.write(len(blob).to_bytes(8, "little"))
            f.write(blob)
            for key, shape, dtype in specs:
                tensor = produce(key)
                if tuple(tensor.shape) != shape or tensor.dtype != dtype:
                    raise ValueError(f"{key}: produced {tensor.dtype}{tuple(tensor.shape)}, expected {dtype}{shape}")
                data = tensor.detach().to("cpu").contiguous().reshape(-1)
                if data.numel():
                    f.write(data.view(torch.uint8).numpy().data)
                if written is not None:
                    written(key, tensor)
        os.replace(partial, path)
    finally:
        if partial.exists():
            partial.unlink()
    return offset
