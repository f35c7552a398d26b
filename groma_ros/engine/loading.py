"""Finding and loading a model directory: the embedded default, a released checkpoint or ours.

Loading streams the weights tensor by tensor (see ``groma_ros.model.checkpoint``); progress is reported in
bytes, to a tqdm bar or to the caller's callback (the ROS node logs it), because the released 7B takes
minutes to read.
"""

from __future__ import annotations

import contextlib
import os
import threading
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import torch

from groma_ros.model.precision import quantization_mode, torch_dtype

from .errors import ModelLoadError, ModelNotFoundError

DEFAULT_MODEL_DIR = Path(__file__).resolve().parent.parent / "assets" / "default_model"
DEFAULT_MODEL_FILES = ("config.json", "model.safetensors", "tokenizer.model")
PROGRESS_MIN_BYTES = 256 << 20  # a progress bar only for checkpoints at least this big

# ``progress(loaded_bytes, total_bytes)``, called after each tensor
ProgressCallback = Callable[[int, int], None]


def progress_logger(log: Callable[[str], None], min_bytes: int = PROGRESS_MIN_BYTES) -> ProgressCallback:
    """A ``progress`` callback that logs every further 10 % of a checkpoint of at least ``min_bytes`` (for logs,
    where a bar does not render: a lifecycle manager's operator sees that a minutes-long configure moves)."""
    logged = 0

    def report(done: int, total: int) -> None:
        nonlocal logged
        tenth = done * 10 // max(total, 1)
        if total >= min_bytes and tenth > logged:
            logged = tenth
            log(f"loading model: {tenth * 10} % of {total / 2**30:.2f} GiB")

    return report


def default_model_dir() -> Path:
    """Directory of the embedded default model (may not exist yet)."""
    return DEFAULT_MODEL_DIR


def resolve_model_dir(path: str | os.PathLike | None) -> Path:
    """``path`` or the embedded default model; ``ModelNotFoundError`` naming exactly what is missing."""
    if path is None:
        d = DEFAULT_MODEL_DIR
        missing = [f for f in DEFAULT_MODEL_FILES if not (d / f).is_file()]
        if missing:
            raise ModelNotFoundError(
                f"no model given and the embedded default model is not installed: missing "
                f"{', '.join(str(d / f) for f in missing)}. Pass a model directory (--model DIR / path=...) "
                "holding config.json, the weights (pytorch_model.bin or *.safetensors) and tokenizer.model."
            )
        return d
    d = Path(path).expanduser()
    if not d.is_dir():
        raise ModelNotFoundError(f"model directory {d} does not exist")
    missing = [f for f in ("config.json", "tokenizer.model") if not (d / f).is_file()]
    has_weights = any(d.glob("*.safetensors")) or any(d.glob("pytorch_model*.bin"))
    if not has_weights:
        missing.append("weights (pytorch_model.bin or *.safetensors)")
    if missing:
        raise ModelNotFoundError(f"model directory {d} is incomplete: missing {', '.join(missing)}")
    return d


def weight_bytes(directory: Path) -> int:
    """Bytes of the directory's weight files (what loading reads)."""
    return sum(p.stat().st_size for p in directory.iterdir() if p.suffix in (".bin", ".safetensors") and p.is_file())


@contextlib.contextmanager
def _progress_bar(directory: Path, total: int) -> Iterator[Callable[[int], None]]:
    """A tqdm bar in bytes, refreshed twice a second even while one big tensor is being read."""
    from tqdm.auto import tqdm

    bar = tqdm(total=total, unit="B", unit_scale=True, desc=f"loading {directory.name}", leave=False)
    stop = threading.Event()

    def tick() -> None:
        while not stop.wait(0.5):
            bar.refresh()

    ticker = threading.Thread(target=tick, daemon=True)
    ticker.start()
    try:
        yield bar.update
    finally:
        stop.set()
        ticker.join()
        bar.close()


@contextlib.contextmanager
def _progress(directory: Path, progress: bool | ProgressCallback | None) -> Iterator[Callable[[int], None] | None]:
    """The loader's per-tensor byte callback for ``progress``: a bar (True, big checkpoints only), the caller's
    callback with running totals (ending at ``(total, total)`` once loaded), or nothing."""
    total = weight_bytes(directory) if progress else 0
    if callable(progress):
        loaded = 0

        def report(nbytes: int) -> None:
            nonlocal loaded
            loaded += nbytes
            progress(loaded, total)

        yield report
        if loaded != total:  # file headers and tensors the model ties or drops are not counted per tensor
            progress(total, total)
    elif progress and total >= PROGRESS_MIN_BYTES:
        with _progress_bar(directory, total) as update:
            yield update
    else:
        yield None


def load_model(path: str | os.PathLike | None, *, device: str = "cpu", dtype: Any = "float32",
               num_threads: int | None = None, quantization: str | None = None,
               progress: bool | ProgressCallback | None = True) -> tuple[Any, Any, Path]:
    """(model in eval mode, tokenizer, directory) for ``path`` (``None`` = the embedded default model).

    ``num_threads`` sets torch's intra-op CPU threads (default min(4, cores) on CPU: more rarely helps at batch
    1 and starves the ROS executor). Raises ``ValueError`` for a bad dtype or quantization name, else
    ``ModelNotFoundError`` / ``ModelLoadError`` saying what is wrong with the directory.
    """
    from groma_ros.model import GromaForConditionalGeneration
    from groma_ros.model.tokenization_groma import GromaTokenizer

    directory = resolve_model_dir(path)
    dtype = torch_dtype(dtype)
    quantization = quantization_mode(quantization)
    if num_threads is None and torch.device(device).type == "cpu":
        num_threads = min(4, os.cpu_count() or 1)
    if num_threads is not None:
        torch.set_num_threads(max(1, int(num_threads)))
    try:
        tokenizer = GromaTokenizer.from_pretrained(directory)
        with _progress(directory, progress) as on_bytes:
            model = GromaForConditionalGeneration.from_pretrained(
                directory, dtype=dtype, device=device, quantization=quantization, progress=on_bytes)
    except (ModelLoadError, ValueError) as err:
        raise ModelLoadError(f"could not load the model from {directory}: {err}") from err
    except (OSError, RuntimeError) as err:
        raise ModelLoadError(f"could not load the model from {directory}: {type(err).__name__}: {err}") from err
    return model.eval(), tokenizer, directory
