"""Our own cv_bridge: ``sensor_msgs/Image`` and ``CompressedImage`` <-> numpy arrays.

Why not cv_bridge: the PyPI port breaks on numpy >= 2.3 and OpenCV 5 and silently decodes 16UC1 as
uint8 garbage; ROS 2's cv_bridge is not installable in a venv. Function names follow cv_bridge so
users recognise them.

Conventions:
- Arrays are ``HxW`` for one channel and ``HxWxC`` otherwise, in the message's native dtype.
- ``passthrough`` returns a zero-copy **view** of ``msg.data`` when the data is already in native byte
  order (row padding from ``step`` is skipped via strides). Copy it if you keep it beyond the message.
- Big-endian data (``is_bigendian``) is byte-swapped into a native copy.
- ``data`` longer than ``step * height`` is accepted and the tail ignored (some drivers over-allocate).
- Generic OpenCV encodings (``8UC3`` ...) carry no channel order; for colour conversions a generic
  1/3/4-channel unsigned image is taken as mono/BGR/BGRA (OpenCV's order). Converting *to* a generic
  encoding with the same depth and channel count is a pure reinterpretation, as in cv_bridge.
- Bit-depth changes: 16 -> 8 bit is ``>> 8`` (keeps the top byte: mono16 shows as rgb8 with its full
  range compressed, not clipped); 8 -> 16 bit is ``* 257`` (255 -> 65535).
- Bayer (``bayer_rggb8/bggr8/gbrg8/grbg8`` and the 16-bit variants) is supported: passthrough gives the
  raw mosaic, colour targets are demosaiced with OpenCV.
- CompressedImage: jpeg/png (anything ``cv2.imdecode`` sniffs) and ``compressedDepth`` PNG with or
  without image_transport's 12-byte header (16UC1, and 32FC1 inverse-depth quantisation). RVL is
  rejected with a clear error.

Every malformed input raises :class:`ImageConversionError` (a ``ValueError``) naming the field and values.
"""

from __future__ import annotations

import array
import re
import struct
import sys
from dataclasses import dataclass
from typing import Any

import cv2
import numpy as np

DEFAULT_MAX_PIXELS = 8192 * 8192
_PNG_SIG = b"\x89PNG\r\n\x1a\n"
_NATIVE_BIG = sys.byteorder == "big"


class ImageConversionError(ValueError):
    """An image message that cannot be converted; the message names the field and the numbers."""


@dataclass(frozen=True)
class EncodingInfo:
    """What an encoding string means: element dtype (native order), channel count, colour layout.

    ``layout`` is one of ``rgb, bgr, rgba, bgra, mono, bayer_rggb, bayer_bggr, bayer_gbrg, bayer_grbg`` or
    ``None`` (no colour meaning: signed, float, 2-channel). ``generic`` marks OpenCV-style names.
    """

    name: str
    dtype: np.dtype
    channels: int
    layout: str | None
    generic: bool = False

    @property
    def bytes_per_pixel(self) -> int:
        return self.dtype.itemsize * self.channels


def _named_table() -> dict[str, EncodingInfo]:
    table: dict[str, EncodingInfo] = {}
    for bits, dt in ((8, np.dtype(np.uint8)), (16, np.dtype(np.uint16))):
        for layout, ch in (("rgb", 3), ("bgr", 3), ("rgba", 4), ("bgra", 4), ("mono", 1)):
            table[f"{layout}{bits}"] = EncodingInfo(f"{layout}{bits}", dt, ch, layout)
        for pat in ("rggb", "bggr", "gbrg", "grbg"):
            name = f"bayer_{pat}{bits}"
            table[name] = EncodingInfo(name, dt, 1, f"bayer_{pat}")
    return table


_NAMED = _named_table()
_GENERIC_RE = re.compile(r"^(8|16|32|64)([USF])C([1-4])$")
_GENERIC_DTYPES = {
    "8U": np.uint8, "8S": np.int8, "16U": np.uint16, "16S": np.int16,
    "32S": np.int32, "32F": np.float32, "64F": np.float64,
}
_GENERIC_LAYOUT = {1: "mono", 3: "bgr", 4: "bgra"}


def encoding_info(encoding: str) -> EncodingInfo:
    """Look up a ROS image encoding (case-insensitive for named ones); unknown -> ImageConversionError."""
    enc = str(encoding).strip()
    info = _NAMED.get(enc.lower())
    if info is not None:
        return info
    m = _GENERIC_RE.match(enc.upper())
    if m and (m.group(1) + m.group(2)) in _GENERIC_DTYPES:
        dt = np.dtype(_GENERIC_DTYPES[m.group(1) + m.group(2)])
        ch = int(m.group(3))
        layout = _GENERIC_LAYOUT.get(ch) if dt.kind == "u" else None
        return EncodingInfo(enc.upper(), dt, ch, layout, generic=True)
    known = ", ".join(sorted(_NAMED)) + ", <8|16|32|64><U|S|F>C<1-4> (e.g. 16UC1, 32FC1)"
    raise ImageConversionError(f"unknown image encoding {encoding!r}; supported: {known}")


def _generic_name(dtype: np.dtype, channels: int) -> str:
    for key, dt in _GENERIC_DTYPES.items():
        if np.dtype(dt) == dtype.newbyteorder("="):
            return f"{key}C{channels}"
    raise ImageConversionError(f"no ROS encoding for dtype {dtype} (supported: {list(_GENERIC_DTYPES)})")


def _byte_view(data: Any, what: str) -> np.ndarray:
    """``data`` as a 1-D uint8 array, zero-copy for array.array/bytes/memoryview."""
    try:
        return np.frombuffer(data, dtype=np.uint8)
    except (TypeError, ValueError):
        try:
            return np.asarray(data, dtype=np.uint8).reshape(-1)
        except (TypeError, ValueError, OverflowError) as exc:
            raise ImageConversionError(f"{what}.data is not a byte buffer ({type(data).__name__})") from exc


def _check_size(height: int, width: int, max_pixels: int, what: str) -> None:
    if height <= 0 or width <= 0:
        raise ImageConversionError(f"{what} has zero size: height={height}, width={width}")
    if height * width > max_pixels:
        raise ImageConversionError(
            f"{what} too large: height*width = {height}*{width} = {height * width} pixels "
            f"> max_pixels {max_pixels}"
        )


def _raw_view(msg: Any, info: EncodingInfo, max_pixels: int) -> np.ndarray:
    """Native-order array over ``msg.data`` honouring ``step``; a copy only when byte-swapping."""
    try:
        height, width, step = int(msg.height), int(msg.width), int(msg.step)
    except (TypeError, ValueError) as exc:
        raise ImageConversionError(f"Image height/width/step are not integers: {exc}") from exc
    _check_size(height, width, max_pixels, "Image")
    row_bytes = width * info.bytes_per_pixel
    if step < row_bytes:
        raise ImageConversionError(
            f"Image.step {step} < width*bytes_per_pixel = {width}*{info.bytes_per_pixel} = {row_bytes} "
            f"(encoding {info.name})"
        )
    buf = _byte_view(msg.data, "Image")
    if buf.size < step * height:
        raise ImageConversionError(
            f"Image.data too short: {buf.size} bytes < step*height = {step}*{height} = {step * height}"
        )
    big = bool(msg.is_bigendian)
    dt = info.dtype.newbyteorder(">" if big else "<") if info.dtype.itemsize > 1 else info.dtype
    isz = info.dtype.itemsize
    if info.channels == 1:
        shape, strides = (height, width), (step, isz)
    else:
        shape, strides = (height, width, info.channels), (step, info.channels * isz, isz)
    arr = np.ndarray(shape, dtype=dt, buffer=buf, offset=0, strides=strides)
    if not dt.isnative:
        arr = arr.astype(info.dtype)  # byte-swapped native copy
    return arr


_BAYER_CODES = {  # ROS pattern -> (OpenCV 5 name, legacy OpenCV 4 name); legacy names are shifted by one.
    "bayer_rggb": ("RGGB", "BG"), "bayer_bggr": ("BGGR", "RG"),
    "bayer_gbrg": ("GBRG", "GR"), "bayer_grbg": ("GRBG", "GB"),
}


_CV_LAYOUT_NAMES = {"mono": "GRAY", "rgb": "RGB", "bgr": "BGR", "rgba": "RGBA", "bgra": "BGRA"}


def _cv_code(src: str, dst: str) -> int:
    target = _CV_LAYOUT_NAMES[dst]
    if src.startswith("bayer_"):
        new, old = _BAYER_CODES[src]
        code = getattr(cv2, f"COLOR_Bayer{new}2{target}", None)
        return code if code is not None else getattr(cv2, f"COLOR_Bayer{old}2{target}")
    return getattr(cv2, f"COLOR_{_CV_LAYOUT_NAMES[src]}2{target}")


def _change_layout(arr: np.ndarray, src: str, dst: str) -> np.ndarray:
    if src == dst:
        return arr
    if not arr.flags.aligned:
        arr = np.ascontiguousarray(arr)
    if src.startswith("bayer_") and dst in ("rgba", "bgra"):
        arr, src = cv2.cvtColor(arr, _cv_code(src, "bgr")), "bgr"
    return cv2.cvtColor(arr, _cv_code(src, dst))


def _convert(arr: np.ndarray, src: EncodingInfo, desired: str | None) -> np.ndarray:
    """Convert ``arr`` (encoded as ``src``) to ``desired``; returns ``arr`` itself when nothing changes."""
    if desired is None or desired in ("", "passthrough") or desired == src.name:
        return arr
    dst = encoding_info(desired)
    if dst.generic or src.layout is None or dst.layout is None:
        if dst.dtype == src.dtype and dst.channels == src.channels:
            return arr  # reinterpretation, like cv_bridge
        raise ImageConversionError(
            f"cannot convert {src.name} to {dst.name}: only colour encodings convert; use 'passthrough' "
            f"or an encoding with the same depth and channel count"
        )
    if dst.layout.startswith("bayer_"):
        if dst.layout == src.layout and dst.dtype == src.dtype:
            return arr
        raise ImageConversionError(f"cannot convert {src.name} to Bayer encoding {dst.name}")
    out = arr
    try:
        if src.dtype == np.uint16 and dst.dtype == np.uint8:
            out = (out >> 8).astype(np.uint8)
        out = _change_layout(out, src.layout, dst.layout)
        if src.dtype == np.uint8 and dst.dtype == np.uint16:
            out = out.astype(np.uint16) * np.uint16(257)
    except cv2.error as exc:
        raise ImageConversionError(f"OpenCV failed converting {src.name} to {dst.name}: {exc}") from exc
    return out


def imgmsg_to_cv2(msg: Any, desired_encoding: str = "passthrough", *,
                  max_pixels: int = DEFAULT_MAX_PIXELS) -> np.ndarray:
    """Image -> numpy array (view when possible, see module doc); ``desired_encoding`` converts colour."""
    info = encoding_info(msg.encoding)
    return _convert(_raw_view(msg, info, max_pixels), info, desired_encoding)


def _owned_rgb(arr: np.ndarray) -> np.ndarray:
    if arr.flags.owndata and arr.flags.c_contiguous and arr.flags.writeable:
        return arr
    return np.array(arr, dtype=np.uint8, order="C", copy=True)


def imgmsg_to_rgb8(msg: Any, *, max_pixels: int = DEFAULT_MAX_PIXELS) -> np.ndarray:
    """Image -> one owned, C-contiguous ``HxWx3`` uint8 RGB array for the model (16-bit: ``>> 8``)."""
    return _owned_rgb(imgmsg_to_cv2(msg, "rgb8", max_pixels=max_pixels))


def cv2_to_imgmsg(array_: np.ndarray, encoding: str = "passthrough", header: Any = None) -> Any:
    """numpy array -> ``sensor_msgs/Image`` (dense rows, native byte order flagged in ``is_bigendian``).

    ``passthrough`` picks the generic encoding from dtype and channels (uint16 HxW -> ``16UC1``).
    """
    from sensor_msgs.msg import Image

    arr = np.asarray(array_)
    if arr.ndim not in (2, 3) or arr.size == 0:
        raise ImageConversionError(f"expected a non-empty HxW or HxWxC array, got shape {arr.shape}")
    channels = 1 if arr.ndim == 2 else arr.shape[2]
    if encoding in ("", "passthrough"):
        encoding = _generic_name(arr.dtype, channels)
    info = encoding_info(encoding)
    if arr.dtype.newbyteorder("=") != info.dtype or channels != info.channels:
        raise ImageConversionError(
            f"array dtype {arr.dtype} with {channels} channel(s) does not match encoding {info.name} "
            f"({info.dtype}, {info.channels} channel(s))"
        )
    arr = np.ascontiguousarray(arr.astype(info.dtype, copy=False))
    msg = Image()
    if header is not None:
        msg.header = header
    msg.height, msg.width = int(arr.shape[0]), int(arr.shape[1])
    msg.encoding = encoding.strip()
    msg.is_bigendian = int(_NATIVE_BIG)
    msg.step = msg.width * info.bytes_per_pixel
    data = array.array("B")
    data.frombytes(arr.reshape(-1).view(np.uint8))
    msg.data = data
    return msg


# --------------------------------------------------------------------------- CompressedImage


def _peek_size(buf: np.ndarray) -> tuple[int, int] | None:
    """(width, height) from a PNG IHDR or JPEG SOF header, without decoding; None if not found."""
    head = bytes(buf[:32])
    if head.startswith(_PNG_SIG) and len(head) >= 24:
        return struct.unpack(">II", head[16:24])
    if not head.startswith(b"\xff\xd8"):
        return None
    i, n = 2, buf.size
    while i + 9 <= n:
        if buf[i] != 0xFF:
            return None
        marker = int(buf[i + 1])
        if marker == 0xFF:
            i += 1
            continue
        if marker == 0x01 or 0xD0 <= marker <= 0xD8:
            i += 2
            continue
        if 0xC0 <= marker <= 0xCF and marker not in (0xC4, 0xC8, 0xCC):
            height, width = struct.unpack(">HH", bytes(buf[i + 5:i + 9]))
            return width, height
        i += 2 + (int(buf[i + 2]) << 8 | int(buf[i + 3]))
    return None


def _imdecode(buf: np.ndarray, fmt: str, max_pixels: int) -> np.ndarray:
    if buf.size == 0:
        raise ImageConversionError(f"CompressedImage.data is empty (format {fmt!r})")
    size = _peek_size(buf)
    if size is not None:
        _check_size(size[1], size[0], max_pixels, f"CompressedImage (format {fmt!r}, header)")
    try:
        img = cv2.imdecode(buf, cv2.IMREAD_UNCHANGED)
    except cv2.error as exc:
        raise ImageConversionError(f"cannot decode CompressedImage (format {fmt!r}, {buf.size} bytes): "
                                   f"{exc}") from exc
    if img is None or img.size == 0:
        raise ImageConversionError(f"cannot decode CompressedImage (format {fmt!r}, {buf.size} bytes): "
                                   "not a valid image for OpenCV")
    _check_size(img.shape[0], img.shape[1], max_pixels, "decoded CompressedImage")
    return img


def _decoded_info(img: np.ndarray) -> EncodingInfo:
    channels = 1 if img.ndim == 2 else img.shape[2]
    bits = {np.dtype(np.uint8): 8, np.dtype(np.uint16): 16}.get(img.dtype)
    layout = {1: "mono", 3: "bgr", 4: "bgra"}.get(channels)
    if bits is None or layout is None:
        raise ImageConversionError(f"decoded image has unsupported dtype {img.dtype} / {channels} channels")
    return _NAMED[f"{layout}{bits}"]


def parse_compressed_format(fmt: str) -> tuple[str | None, str]:
    """Split ``"rgb8; jpeg compressed bgr8"`` into (``"rgb8"``, ``"jpeg compressed bgr8"``)."""
    head, sep, tail = str(fmt).partition(";")
    if not sep:
        return None, head.strip().lower()
    return head.strip() or None, tail.strip().lower()


def _decode_compressed_depth(buf: np.ndarray, fmt: str, orig: str | None, max_pixels: int) -> np.ndarray:
    """image_transport ``compressedDepth``: optional 12-byte header (format, quant A, quant B) + PNG."""
    if "rvl" in fmt.lower():
        raise ImageConversionError(f"compressedDepth RVL is not supported (format {fmt!r}); publish png")
    enc = (orig or "").upper()
    if enc not in ("16UC1", "32FC1"):
        raise ImageConversionError(f"compressedDepth needs original encoding 16UC1 or 32FC1, got {orig!r} "
                                   f"(format {fmt!r})")
    head = bytes(buf[:20])
    if head.startswith(_PNG_SIG):
        offset = 0
    elif head[12:20] == _PNG_SIG:
        offset = 12
    else:
        raise ImageConversionError(f"compressedDepth data is not PNG (at offset 0 or 12; format {fmt!r})")
    img = _imdecode(buf[offset:], fmt, max_pixels)
    if img.dtype != np.uint16 or img.ndim != 2:
        raise ImageConversionError(f"compressedDepth PNG must be 16-bit single channel, got {img.dtype} "
                                   f"{img.shape}")
    if enc == "16UC1":
        return img
    if offset == 0:
        raise ImageConversionError("compressedDepth 32FC1 lacks the 12-byte quantisation header")
    _, quant_a, quant_b = struct.unpack("<iff", head[:12])
    inv = img.astype(np.float32)
    with np.errstate(divide="ignore", invalid="ignore"):
        depth = np.float32(quant_a) / (inv - np.float32(quant_b))
    depth[img == 0] = np.nan
    return depth


def compressed_imgmsg_to_cv2(msg: Any, desired_encoding: str = "passthrough", *,
                             max_pixels: int = DEFAULT_MAX_PIXELS) -> np.ndarray:
    """CompressedImage -> array. ``passthrough`` gives what OpenCV decodes (BGR order for colour,
    uint16 for 16-bit PNG; compressedDepth gives 16UC1 mm or 32FC1 m)."""
    fmt = str(msg.format)
    orig, rest = parse_compressed_format(fmt)
    buf = _byte_view(msg.data, "CompressedImage")
    if "compresseddepth" in rest or "compresseddepth" in fmt.lower():
        depth = _decode_compressed_depth(buf, fmt, orig, max_pixels)
        return _convert(depth, encoding_info(str(orig).upper()), desired_encoding)
    img = _imdecode(buf, fmt, max_pixels)
    return _convert(img, _decoded_info(img), desired_encoding)


def compressed_to_rgb8(msg: Any, *, max_pixels: int = DEFAULT_MAX_PIXELS) -> np.ndarray:
    """CompressedImage -> one owned, C-contiguous ``HxWx3`` uint8 RGB array for the model."""
    return _owned_rgb(compressed_imgmsg_to_cv2(msg, "rgb8", max_pixels=max_pixels))


def cv2_to_compressed_imgmsg(array_: np.ndarray, dst_format: str = "jpeg", encoding: str = "bgr8",
                             header: Any = None, *, jpeg_quality: int = 90, png_level: int = 3) -> Any:
    """Array in ``encoding`` -> CompressedImage with image_transport's ``"<enc>; <fmt> compressed <enc2>"``.

    jpeg takes 8-bit mono/colour (alpha dropped); png also takes 16-bit and keeps alpha.
    """
    from sensor_msgs.msg import CompressedImage

    fmt = {"jpg": "jpeg", "jpeg": "jpeg", "png": "png"}.get(str(dst_format).strip().lower())
    if fmt is None:
        raise ImageConversionError(f"dst_format must be 'jpeg' or 'png', got {dst_format!r}")
    info = encoding_info(encoding)
    arr = np.asarray(array_)
    channels = 1 if arr.ndim == 2 else (arr.shape[2] if arr.ndim == 3 else -1)
    if arr.ndim not in (2, 3) or arr.size == 0 or arr.dtype != info.dtype or channels != info.channels:
        raise ImageConversionError(f"array {arr.dtype} {arr.shape} does not match encoding {info.name}")
    if info.layout is None or info.layout.startswith("bayer_"):
        raise ImageConversionError(f"cannot compress encoding {info.name}; publish a raw Image")
    if fmt == "jpeg" and info.dtype != np.uint8:
        raise ImageConversionError(f"jpeg needs 8-bit data, encoding {info.name} is 16-bit; use png")
    target = "mono" if info.layout == "mono" else ("bgra" if info.channels == 4 and fmt == "png" else "bgr")
    bits = 8 * info.dtype.itemsize
    img = _change_layout(arr, info.layout, target)
    ext, params = (".jpg", [cv2.IMWRITE_JPEG_QUALITY, int(jpeg_quality)]) if fmt == "jpeg" else \
        (".png", [cv2.IMWRITE_PNG_COMPRESSION, int(png_level)])
    ok, enc = cv2.imencode(ext, img, params)
    if not ok:
        raise ImageConversionError(f"OpenCV could not encode {info.name} as {fmt}")
    msg = CompressedImage()
    if header is not None:
        msg.header = header
    msg.format = f"{info.name}; {fmt} compressed {target}{bits}"
    data = array.array("B")
    data.frombytes(enc.reshape(-1))
    msg.data = data
    return msg
