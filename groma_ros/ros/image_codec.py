"""Our own cv_bridge: ``sensor_msgs/Image`` and ``CompressedImage`` <-> numpy arrays.

Why not cv_bridge: the PyPI port breaks on numpy >= 2.3 and OpenCV 5 and silently decodes 16UC1 as
uint8 garbage; ROS 2's cv_bridge is not installable in a venv. Function names and conversion rules
follow cv_bridge (``cv_bridge.cpp``: ``getConversionCode`` / ``toCvCopyImpl``) so users recognise them.

Conventions:
- Arrays are ``HxW`` for one channel and ``HxWxC`` otherwise, in the message's native dtype.
- ``passthrough`` returns a zero-copy **view** of ``msg.data`` when the data is already in native byte
  order (row padding from ``step`` is skipped via strides). Copy it if you keep it beyond the message.
- Big-endian data (``is_bigendian``) is byte-swapped into a native copy.
- ``data`` longer than ``step * height`` is accepted and the tail ignored (some drivers over-allocate).
- Encodings: rgb/bgr/rgba/bgra/mono 8 and 16 bit; Bayer ``bayer_rggb/bggr/gbrg/grbg`` 8 and 16 bit
  (passthrough gives the raw mosaic, colour targets are demosaiced); YUV 4:2:2 ``yuv422`` (= ``uyvy``,
  bytes U Y0 V Y1) and ``yuv422_yuy2`` (= ``yuyv``, bytes Y0 U Y1 V), passthrough ``HxWx2`` uint8, even
  widths only (two pixels share U and V); generic ``<8U|8S|16U|16S|32S|32F|64F>C<n>`` with n = 1..512
  (OpenCV's channel limit; a bare ``32F`` means one channel, as in cv_bridge).
- Conversions (``desired_encoding``), as cv_bridge:
  * to a generic (non-colour) encoding: the channel count must match; only the depth changes;
  * to a colour encoding (mono, rgb, ...): the source must carry colour meaning, else refused as "does not
    make sense" (32FC1 -> rgb8); colour conversion first, in the source depth, then the depth change.
    Beyond cv_bridge, a generic unsigned 1/3/4-channel source counts as mono/BGR/BGRA (OpenCV's order)
    and Bayer converts to RGBA/BGRA too. Nothing converts *to* Bayer or YUV.
  * depth changes: 8 <-> 16 bit scale by 65535/255 (255 <-> 65535, rounded to nearest), any other pair
    converts the values plainly (16UC1 1500 -> 32FC1 1500.0, no unit change: see ``depth.py`` for metres);
    to an integer type values are rounded half to even and saturated, NaN becomes 0.
- CompressedImage: only JPEG and PNG are accepted, and only after the size their header declares
  (JPEG SOF, PNG IHDR; :mod:`groma_ros.ros.image_headers`) passed ``max_pixels``: nothing is decoded
  before it is checked. TIFF, WebP, BMP, GIF and every other format OpenCV could sniff are refused. The
  data's signature decides, as OpenCV's sniffing does; ``format`` only routes ``compressedDepth``.
  ``compressedDepth``: PNG with or without image_transport's 12-byte header (16UC1, and 32FC1
  inverse-depth quantisation); RVL is refused.

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

from groma_ros.ros.image_headers import PNG_SIGNATURE, HeaderError, declared_size

DEFAULT_MAX_PIXELS = 8192 * 8192
MAX_CHANNELS = 512  # OpenCV's CV_CN_MAX
_NATIVE_BIG = sys.byteorder == "big"


class ImageConversionError(ValueError):
    """An image message that cannot be converted; the message names the field and the numbers."""


@dataclass(frozen=True)
class EncodingInfo:
    """What an encoding string means: element dtype (native order), channel count, colour layout.

    ``layout`` is one of ``rgb, bgr, rgba, bgra, mono, uyvy, yuyv, bayer_rggb, bayer_bggr, bayer_gbrg,
    bayer_grbg`` or ``None`` (no colour meaning: signed, float, other channel counts). ``generic`` marks
    OpenCV-style names; their layout (unsigned 1/3/4 channels) is used only as a conversion source.
    """

    name: str
    dtype: np.dtype
    channels: int
    layout: str | None
    generic: bool = False

    @property
    def bytes_per_pixel(self) -> int:
        return self.dtype.itemsize * self.channels

    @property
    def is_colour(self) -> bool:
        """cv_bridge's "colour format" (isColor, isMono, isBayer or YUV 4:2:2)."""
        return self.layout is not None and not self.generic


def _named_table() -> dict[str, EncodingInfo]:
    table: dict[str, EncodingInfo] = {}
    for bits, dt in ((8, np.dtype(np.uint8)), (16, np.dtype(np.uint16))):
        for layout, ch in (("rgb", 3), ("bgr", 3), ("rgba", 4), ("bgra", 4), ("mono", 1)):
            table[f"{layout}{bits}"] = EncodingInfo(f"{layout}{bits}", dt, ch, layout)
        for pat in ("rggb", "bggr", "gbrg", "grbg"):
            name = f"bayer_{pat}{bits}"
            table[name] = EncodingInfo(name, dt, 1, f"bayer_{pat}")
    for name, layout in (("yuv422", "uyvy"), ("uyvy", "uyvy"), ("yuv422_yuy2", "yuyv"), ("yuyv", "yuyv")):
        table[name] = EncodingInfo(name, np.dtype(np.uint8), 2, layout)
    return table


_NAMED = _named_table()
_GENERIC_RE = re.compile(r"^(8U|8S|16U|16S|32S|32F|64F)(?:C(\d+))?$")
_GENERIC_DTYPES = {
    "8U": np.uint8, "8S": np.int8, "16U": np.uint16, "16S": np.int16,
    "32S": np.int32, "32F": np.float32, "64F": np.float64,
}
_GENERIC_LAYOUT = {1: "mono", 3: "bgr", 4: "bgra"}
_YUV = ("uyvy", "yuyv")


def encoding_info(encoding: str) -> EncodingInfo:
    """Look up a ROS image encoding (case-insensitive); unknown -> ImageConversionError."""
    enc = str(encoding).strip()
    info = _NAMED.get(enc.lower())
    if info is not None:
        return info
    m = _GENERIC_RE.match(enc.upper())
    if m and 1 <= int(m.group(2) or 1) <= MAX_CHANNELS:
        dt = np.dtype(_GENERIC_DTYPES[m.group(1)])
        ch = int(m.group(2) or 1)
        layout = _GENERIC_LAYOUT.get(ch) if dt.kind == "u" else None
        return EncodingInfo(f"{m.group(1)}C{ch}", dt, ch, layout, generic=True)
    known = (", ".join(sorted(_NAMED)) + f", <8U|8S|16U|16S|32S|32F|64F>C<1-{MAX_CHANNELS}> "
             "(e.g. 16UC1, 32FC1, 8UC5)")
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


def _check_even_width(info: EncodingInfo, width: int) -> None:
    if info.layout in _YUV and width % 2:
        raise ImageConversionError(f"{info.name} (YUV 4:2:2) needs an even width, got width={width}: two "
                                   "horizontally adjacent pixels share one U and one V sample")


def _raw_view(msg: Any, info: EncodingInfo, max_pixels: int) -> np.ndarray:
    """Native-order array over ``msg.data`` honouring ``step``; a copy only when byte-swapping."""
    try:
        height, width, step = int(msg.height), int(msg.width), int(msg.step)
    except (TypeError, ValueError) as exc:
        raise ImageConversionError(f"Image height/width/step are not integers: {exc}") from exc
    _check_size(height, width, max_pixels, "Image")
    _check_even_width(info, width)
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
_CV_YUV_NAMES = {"uyvy": "UYVY", "yuyv": "YUY2"}


def _cv_code(src: str, dst: str) -> int:
    target = _CV_LAYOUT_NAMES[dst]
    if src.startswith("bayer_"):
        new, old = _BAYER_CODES[src]
        code = getattr(cv2, f"COLOR_Bayer{new}2{target}", None)
        return code if code is not None else getattr(cv2, f"COLOR_Bayer{old}2{target}")
    if src in _CV_YUV_NAMES:
        return getattr(cv2, f"COLOR_YUV2{target}_{_CV_YUV_NAMES[src]}")
    return getattr(cv2, f"COLOR_{_CV_LAYOUT_NAMES[src]}2{target}")


def _change_layout(arr: np.ndarray, src: str, dst: str) -> np.ndarray:
    if src == dst:
        return arr
    if not arr.flags.aligned:
        arr = np.ascontiguousarray(arr)
    if src.startswith("bayer_") and dst in ("rgba", "bgra"):
        arr, src = cv2.cvtColor(arr, _cv_code(src, "bgr")), "bgr"
    return cv2.cvtColor(arr, _cv_code(src, dst))


def _change_depth(arr: np.ndarray, dst: np.dtype) -> np.ndarray:
    """cv_bridge's depth change (OpenCV ``convertTo``): 8 <-> 16 bit scaled by 65535/255, else plain;
    integer targets rounded half to even and saturated, NaN -> 0. Returns ``arr`` itself if nothing changes."""
    src = arr.dtype
    if src == dst:
        return arr
    bits = (8 * src.itemsize, 8 * dst.itemsize)
    if (src, dst) == (np.dtype(np.uint8), np.dtype(np.uint16)):
        return arr.astype(np.uint16) * np.uint16(257)  # 65535/255 = 257 exactly
    if (src, dst) == (np.dtype(np.uint16), np.dtype(np.uint8)):  # round(v * 255/65535): never a tie
        return cv2.convertScaleAbs(arr if arr.flags.aligned else np.ascontiguousarray(arr), alpha=255.0 / 65535.0)
    if dst.kind == "f":  # no float type has 8 or 16 bits: always a plain conversion
        with np.errstate(over="ignore"):  # float64 beyond float32's range becomes inf, as in OpenCV
            return arr.astype(dst)
    val = arr.astype(np.float64)
    scale = {(8, 16): 65535.0 / 255.0, (16, 8): 255.0 / 65535.0}.get(bits)
    if scale is not None:  # signed 8 <-> 16 bit too: cv_bridge decides by bit depth alone
        val *= scale
    info = np.iinfo(dst)
    with np.errstate(invalid="ignore"):
        return np.nan_to_num(np.rint(val), nan=0.0).clip(info.min, info.max).astype(dst)


def _convert(arr: np.ndarray, src: EncodingInfo, desired: str | None) -> np.ndarray:
    """Convert ``arr`` (encoded as ``src``) to ``desired`` as cv_bridge does (module docstring); returns
    ``arr`` itself when nothing changes."""
    if desired is None or desired in ("", "passthrough") or desired == src.name:
        return arr
    dst = encoding_info(desired)
    if not dst.is_colour:
        if dst.channels != src.channels:
            raise ImageConversionError(f"cannot convert {src.name} to {dst.name}: a non-colour target needs the "
                                       f"same number of channels ({src.channels} vs {dst.channels})")
        return _change_depth(arr, dst.dtype)
    if src.layout is None:
        raise ImageConversionError(f"cannot convert {src.name} to {dst.name}: {src.name} is not a colour format "
                                   f"but {dst.name} is, the conversion does not make sense")
    if dst.layout.startswith("bayer_") or dst.layout in _YUV:
        if dst.layout == src.layout and dst.dtype == src.dtype:
            return arr
        raise ImageConversionError(f"cannot convert {src.name} to {dst.name}: nothing converts to Bayer or "
                                   "YUV encodings")
    try:
        out = _change_layout(arr, src.layout, dst.layout)
    except cv2.error as exc:
        raise ImageConversionError(f"OpenCV failed converting {src.name} to {dst.name}: {exc}") from exc
    return _change_depth(out, dst.dtype)


def imgmsg_to_cv2(msg: Any, desired_encoding: str = "passthrough", *,
                  max_pixels: int = DEFAULT_MAX_PIXELS) -> np.ndarray:
    """Image -> numpy array (view when possible, see module doc); ``desired_encoding`` converts."""
    info = encoding_info(msg.encoding)
    return _convert(_raw_view(msg, info, max_pixels), info, desired_encoding)


def _owned_rgb(arr: np.ndarray) -> np.ndarray:
    if arr.flags.owndata and arr.flags.c_contiguous and arr.flags.writeable:
        return arr
    return np.array(arr, dtype=np.uint8, order="C", copy=True)


def imgmsg_to_rgb8(msg: Any, *, max_pixels: int = DEFAULT_MAX_PIXELS) -> np.ndarray:
    """Image -> one owned, C-contiguous ``HxWx3`` uint8 RGB array for the model (16-bit: scaled by 255/65535)."""
    return _owned_rgb(imgmsg_to_cv2(msg, "rgb8", max_pixels=max_pixels))


def cv2_to_imgmsg(array_: np.ndarray, encoding: str = "passthrough", header: Any = None) -> Any:
    """numpy array -> ``sensor_msgs/Image`` (dense rows, native byte order flagged in ``is_bigendian``).

    ``passthrough`` picks the generic encoding from dtype and channels (uint16 HxW -> ``16UC1``,
    float32 HxWx10 -> ``32FC10``).
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
    _check_even_width(info, arr.shape[1])
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


def _imdecode(buf: np.ndarray, fmt: str, max_pixels: int, only: str | None = None) -> np.ndarray:
    """Decode JPEG/PNG after checking the size its header declares; ``only`` restricts the format."""
    if buf.size == 0:
        raise ImageConversionError(f"CompressedImage.data is empty (format {fmt!r})")
    data = buf.tobytes()
    try:
        kind, width, height = declared_size(data)
    except HeaderError as exc:
        raise ImageConversionError(f"cannot decode CompressedImage (format {fmt!r}, {buf.size} bytes): "
                                   f"{exc}") from exc
    if only is not None and kind != only:
        raise ImageConversionError(f"CompressedImage (format {fmt!r}) holds {kind}, expected {only}")
    _check_size(height, width, max_pixels, f"CompressedImage ({kind} header, format {fmt!r})")
    try:
        img = cv2.imdecode(buf, cv2.IMREAD_UNCHANGED)
    except cv2.error as exc:
        raise ImageConversionError(f"cannot decode CompressedImage (format {fmt!r}, {buf.size} bytes): "
                                   f"{exc}") from exc
    if img is None or img.size == 0:
        raise ImageConversionError(f"cannot decode CompressedImage (format {fmt!r}, {buf.size} bytes): "
                                   f"not a valid {kind} image for OpenCV")
    if img.shape[:2] != (height, width):
        raise ImageConversionError(f"CompressedImage {kind} decoded to {img.shape[1]}x{img.shape[0]} but its "
                                   f"header declares {width}x{height}")
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
    if head.startswith(PNG_SIGNATURE):
        offset = 0
    elif head[12:20] == PNG_SIGNATURE:
        offset = 12
    else:
        raise ImageConversionError(f"compressedDepth data is not PNG (at offset 0 or 12; format {fmt!r})")
    img = _imdecode(buf[offset:], fmt, max_pixels, only="png")
    if img.dtype != np.uint16 or img.ndim != 2:
        raise ImageConversionError(f"compressedDepth PNG must be 16-bit single channel, got {img.dtype} "
                                   f"{img.shape}")
    if enc == "16UC1":
        return img
    if offset == 0:
        raise ImageConversionError("compressedDepth 32FC1 lacks the 12-byte quantisation header")
    _, quant_a, quant_b = struct.unpack("<iff", head[:12])
    inv = img.astype(np.float32)
    with np.errstate(divide="ignore", invalid="ignore", over="ignore"):
        depth = np.float32(quant_a) / (inv - np.float32(quant_b))
    depth[img == 0] = np.nan
    return depth


def compressed_imgmsg_to_cv2(msg: Any, desired_encoding: str = "passthrough", *,
                             max_pixels: int = DEFAULT_MAX_PIXELS) -> np.ndarray:
    """CompressedImage (JPEG or PNG, see module doc) -> array. ``passthrough`` gives what OpenCV decodes
    (BGR order for colour, uint16 for 16-bit PNG; compressedDepth gives 16UC1 mm or 32FC1 m)."""
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


_ARRAY_ENCODINGS = {1: "mono", 3: "bgr", 4: "bgra"}  # OpenCV's order, as imencode reads the array


def cv2_to_compressed_imgmsg(array_: np.ndarray, dst_format: str = "jpeg", encoding: str | None = None,
                             header: Any = None, *, jpeg_quality: int = 90, png_level: int = 3) -> Any:
    """Array -> CompressedImage with image_transport's ``"<enc>; <fmt> compressed <enc2>"`` format.

    ``encoding`` says what the array holds; without it the array decides, as cv_bridge's ``imencode``
    of the array does: HxW -> mono8/mono16, HxWx3 -> bgr8/bgr16, HxWx4 -> bgra8/bgra16 (generic unsigned
    encodings such as 16UC1 are taken the same way). jpeg takes 8-bit mono/colour (alpha dropped); png also
    takes 16-bit and keeps alpha. Float, signed, Bayer, YUV and other channel counts have no compressed form
    here: refused (publish a raw Image).
    """
    from sensor_msgs.msg import CompressedImage

    fmt = {"jpg": "jpeg", "jpeg": "jpeg", "png": "png"}.get(str(dst_format).strip().lower())
    if fmt is None:
        raise ImageConversionError(f"dst_format must be 'jpeg' or 'png', got {dst_format!r}")
    arr = np.asarray(array_)
    channels = 1 if arr.ndim == 2 else (arr.shape[2] if arr.ndim == 3 else -1)
    if encoding is None:
        bits = {np.dtype(np.uint8): 8, np.dtype(np.uint16): 16}.get(arr.dtype.newbyteorder("="))
        layout = _ARRAY_ENCODINGS.get(channels)
        if bits is None or layout is None or arr.size == 0:
            raise ImageConversionError(f"cannot compress a {arr.dtype} array of shape {arr.shape}: {fmt} takes "
                                       "HxW, HxWx3 (BGR) or HxWx4 (BGRA) uint8 (png: or uint16)")
        encoding = f"{layout}{bits}"
    info = encoding_info(encoding)
    if arr.ndim not in (2, 3) or arr.size == 0 or arr.dtype != info.dtype or channels != info.channels:
        raise ImageConversionError(f"array {arr.dtype} {arr.shape} does not match encoding {info.name}")
    if info.layout is None or info.layout.startswith("bayer_") or info.layout in _YUV:
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

