"""Our cv_bridge replacement against real sensor_msgs messages: encodings, padding, endianness, errors."""

from __future__ import annotations

import array
import struct

import cv2
import numpy as np
import pytest
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st

pytest.importorskip("sensor_msgs.msg")
from sensor_msgs.msg import CompressedImage, Image  # noqa: E402
from std_msgs.msg import Header  # noqa: E402

from groma_ros.ros.image_codec import (  # noqa: E402
    DEFAULT_MAX_PIXELS,
    ImageConversionError,
    compressed_imgmsg_to_cv2,
    compressed_to_rgb8,
    cv2_to_compressed_imgmsg,
    cv2_to_imgmsg,
    encoding_info,
    imgmsg_to_cv2,
    imgmsg_to_rgb8,
)

ENCODINGS = {  # encoding -> (dtype, channels)
    "rgb8": (np.uint8, 3), "bgr8": (np.uint8, 3), "rgba8": (np.uint8, 4), "bgra8": (np.uint8, 4),
    "mono8": (np.uint8, 1), "mono16": (np.uint16, 1), "8UC1": (np.uint8, 1), "8UC3": (np.uint8, 3),
    "8UC4": (np.uint8, 4), "16UC1": (np.uint16, 1), "16SC1": (np.int16, 1), "32FC1": (np.float32, 1),
    "64FC1": (np.float64, 1), "rgb16": (np.uint16, 3), "32SC1": (np.int32, 1), "8SC1": (np.int8, 1),
    "bayer_rggb8": (np.uint8, 1), "bayer_grbg16": (np.uint16, 1),
}
RNG = np.random.default_rng(0)


def random_array(dtype, channels, h=5, w=7) -> np.ndarray:
    shape = (h, w) if channels == 1 else (h, w, channels)
    if np.dtype(dtype).kind == "f":
        return RNG.normal(size=shape).astype(dtype)
    info = np.iinfo(dtype)
    return RNG.integers(info.min, info.max, size=shape, endpoint=True, dtype=dtype)


def make_image(arr: np.ndarray, encoding: str, pad: int = 0, bigendian: bool = False, tail: int = 0) -> Image:
    """Build an Image by hand (not with the code under test): rows padded by ``pad`` bytes."""
    arr = np.asarray(arr)
    h, w = arr.shape[:2]
    dt = arr.dtype.newbyteorder(">" if bigendian else "<")
    rows = np.ascontiguousarray(arr.astype(dt)).reshape(h, -1).view(np.uint8)
    padded = np.concatenate([rows, np.full((h, pad), 0xAB, np.uint8)], axis=1)
    data = padded.tobytes() + b"\xcd" * tail
    return Image(height=h, width=w, encoding=encoding, is_bigendian=int(bigendian), step=padded.shape[1],
                 data=array.array("B", data))


@pytest.mark.parametrize("encoding", sorted(ENCODINGS))
def test_roundtrip_every_encoding(encoding):
    dtype, ch = ENCODINGS[encoding]
    arr = random_array(dtype, ch)
    hdr = Header(frame_id="cam_optical_frame")
    hdr.stamp.sec, hdr.stamp.nanosec = 12, 345
    msg = cv2_to_imgmsg(arr, encoding, header=hdr)
    assert isinstance(msg, Image)
    assert (msg.height, msg.width, msg.encoding) == (5, 7, encoding)
    assert msg.step == 7 * ch * np.dtype(dtype).itemsize
    assert msg.header.frame_id == "cam_optical_frame" and msg.header.stamp.nanosec == 345
    out = imgmsg_to_cv2(msg)
    assert out.dtype == np.dtype(dtype) and out.shape == arr.shape
    np.testing.assert_array_equal(out, arr)


@pytest.mark.parametrize("encoding", sorted(ENCODINGS))
@pytest.mark.parametrize("bigendian", [False, True])
def test_row_padding_and_endianness(encoding, bigendian):
    dtype, ch = ENCODINGS[encoding]
    arr = random_array(dtype, ch, h=4, w=3)
    msg = make_image(arr, encoding, pad=5, bigendian=bigendian, tail=3)  # odd padding + longer data
    out = imgmsg_to_cv2(msg)
    assert out.dtype == np.dtype(dtype) and out.dtype.isnative
    np.testing.assert_array_equal(out, arr)


def test_big_endian_depth_values_exact():
    depth_mm = np.array([[0, 1, 1500], [65535, 256, 4095]], np.uint16)
    out = imgmsg_to_cv2(make_image(depth_mm, "16UC1", bigendian=True))
    np.testing.assert_array_equal(out, depth_mm)
    depth_m = np.array([[1.5, np.nan], [np.inf, 0.25]], np.float32)
    out = imgmsg_to_cv2(make_image(depth_m, "32FC1", bigendian=True, pad=2))
    np.testing.assert_array_equal(out, depth_m)


def test_passthrough_is_a_view_and_rgb8_is_an_owned_copy():
    arr = random_array(np.uint8, 3, 6, 4)
    msg = make_image(arr, "rgb8", pad=4)
    view = imgmsg_to_cv2(msg)
    assert np.shares_memory(view, np.frombuffer(msg.data, np.uint8))
    rgb = imgmsg_to_rgb8(msg)
    assert rgb.flags.c_contiguous and rgb.flags.owndata and rgb.dtype == np.uint8
    assert not np.shares_memory(rgb, np.frombuffer(msg.data, np.uint8))
    np.testing.assert_array_equal(rgb, arr)


@pytest.mark.parametrize("encoding,convert", [
    ("rgb8", lambda a: a), ("bgr8", lambda a: a[..., ::-1]), ("8UC3", lambda a: a[..., ::-1]),
    ("rgba8", lambda a: a[..., :3]), ("bgra8", lambda a: a[..., 2::-1]), ("8UC4", lambda a: a[..., 2::-1]),
])
def test_imgmsg_to_rgb8_colour(encoding, convert):
    dtype, ch = ENCODINGS[encoding]
    arr = random_array(dtype, ch)
    out = imgmsg_to_rgb8(make_image(arr, encoding, pad=1))
    assert out.shape == (5, 7, 3) and out.dtype == np.uint8
    np.testing.assert_array_equal(out, convert(arr))


@pytest.mark.parametrize("encoding", ["mono8", "8UC1", "mono16", "16UC1"])
def test_imgmsg_to_rgb8_mono_and_16bit_scaling(encoding):
    dtype, _ = ENCODINGS[encoding]
    arr = random_array(dtype, 1)
    out = imgmsg_to_rgb8(make_image(arr, encoding, bigendian=dtype == np.uint16))
    # cv_bridge: 16 -> 8 bit is convertTo(..., 255/65535), i.e. round(v / 257)
    expect = np.rint(arr / 257.0).astype(np.uint8) if dtype == np.uint16 else arr
    for c in range(3):
        np.testing.assert_array_equal(out[..., c], expect)


@pytest.mark.parametrize("pattern", ["rggb", "bggr", "gbrg", "grbg"])
def test_bayer_demosaic(pattern):
    rgb = (200, 100, 30)
    idx = {"r": 0, "g": 1, "b": 2}
    mosaic = np.zeros((8, 8), np.uint8)
    for k, (dy, dx) in enumerate(((0, 0), (0, 1), (1, 0), (1, 1))):
        mosaic[dy::2, dx::2] = rgb[idx[pattern[k]]]
    out = imgmsg_to_rgb8(make_image(mosaic, f"bayer_{pattern}8"))
    assert tuple(int(v) for v in out[4, 4]) == rgb
    np.testing.assert_array_equal(imgmsg_to_cv2(make_image(mosaic, f"bayer_{pattern}8")), mosaic)


def test_desired_encoding_conversions():
    rgb = random_array(np.uint8, 3)
    msg = make_image(rgb, "rgb8")
    np.testing.assert_array_equal(imgmsg_to_cv2(msg, "bgr8"), rgb[..., ::-1])
    np.testing.assert_array_equal(imgmsg_to_cv2(msg, "mono8"), cv2.cvtColor(rgb, cv2.COLOR_RGB2GRAY))
    np.testing.assert_array_equal(imgmsg_to_cv2(msg, "8UC3"), rgb)  # generic target: reinterpret
    mono = random_array(np.uint8, 1)
    np.testing.assert_array_equal(imgmsg_to_cv2(make_image(mono, "mono8"), "mono16"),
                                  mono.astype(np.uint16) * 257)
    d16 = random_array(np.uint16, 1)
    np.testing.assert_array_equal(imgmsg_to_cv2(make_image(d16, "16UC1"), "mono16"), d16)
    with pytest.raises(ImageConversionError, match="32FC1 to rgb8"):
        imgmsg_to_cv2(make_image(random_array(np.float32, 1), "32FC1"), "rgb8")
    with pytest.raises(ImageConversionError, match="unknown image encoding 'weird'"):
        imgmsg_to_cv2(msg, "weird")


def test_encoding_info_table():
    assert encoding_info("16UC1").dtype == np.uint16 and encoding_info("16uc1").name == "16UC1"
    assert encoding_info("RGB8").layout == "rgb"
    assert encoding_info("8UC3").layout == "bgr" and encoding_info("32FC1").layout is None
    assert encoding_info("yuv422").layout == "uyvy" and encoding_info("YUYV").layout == "yuyv"
    assert (encoding_info("16UC5").channels, encoding_info("32FC512").channels) == (5, 512)
    assert encoding_info("32F").name == "32FC1"  # a bare depth is one channel, as in cv_bridge
    for bad in ("8FC1", "32UC1", "16UC0", "8UC513", "8UC", "rgb9", "nv12", ""):
        with pytest.raises(ImageConversionError, match="unknown image encoding"):
            encoding_info(bad)


def _msg(**kw) -> Image:
    base = dict(height=2, width=3, encoding="rgb8", is_bigendian=0, step=9, data=array.array("B", bytes(18)))
    base.update(kw)
    return Image(**base)


@pytest.mark.parametrize("fields,pattern", [
    (dict(encoding="yuv422_weird"), r"unknown image encoding 'yuv422_weird'"),
    (dict(width=0), r"zero size: height=2, width=0"),
    (dict(height=0), r"zero size: height=0, width=3"),
    (dict(step=8), r"step 8 < width\*bytes_per_pixel = 3\*3 = 9"),
    (dict(data=array.array("B", bytes(17))), r"data too short: 17 bytes < step\*height = 9\*2 = 18"),
    (dict(height=100_000, width=100_000, step=300_000),
     r"too large: height\*width = 100000\*100000 = 10000000000 pixels > max_pixels 67108864"),
    (dict(encoding="16UC1", step=5), r"step 5 < width\*bytes_per_pixel = 3\*2 = 6 \(encoding 16UC1\)"),
])
def test_malformed_images_raise_clear_errors(fields, pattern):
    with pytest.raises(ImageConversionError, match=pattern):
        imgmsg_to_cv2(_msg(**fields))
    with pytest.raises(ValueError):  # ImageConversionError is a ValueError
        imgmsg_to_rgb8(_msg(**fields))


def test_max_pixels_configurable_and_longer_data_accepted():
    msg = _msg(data=array.array("B", bytes(100)))
    assert imgmsg_to_cv2(msg).shape == (2, 3, 3)
    with pytest.raises(ImageConversionError, match="> max_pixels 5"):
        imgmsg_to_cv2(msg, max_pixels=5)
    assert DEFAULT_MAX_PIXELS == 8192 * 8192


def test_cv2_to_imgmsg_rejects_mismatch():
    with pytest.raises(ImageConversionError, match="does not match encoding rgb8"):
        cv2_to_imgmsg(np.zeros((2, 2), np.uint8), "rgb8")
    with pytest.raises(ImageConversionError, match="does not match encoding 16UC1"):
        cv2_to_imgmsg(np.zeros((2, 2), np.float32), "16UC1")
    with pytest.raises(ImageConversionError, match="non-empty"):
        cv2_to_imgmsg(np.zeros((0, 2), np.uint8), "mono8")
    assert cv2_to_imgmsg(np.zeros((2, 2), np.uint16)).encoding == "16UC1"
    assert cv2_to_imgmsg(np.zeros((2, 2), ">u2"), "16UC1").is_bigendian == 0  # stored native


# --------------------------------------------------------------------------------------- fuzz

_FUZZ_ENCODINGS = sorted(ENCODINGS) + ["", "rgb", "16UC9", "nv12", "32FC3", "8UC2", "bayer_rggb16", "yuv422",
                                        "yuv422_yuy2", "8UC5", "32FC10", "16SC600"]
_DIMS = st.one_of(st.integers(0, 40), st.sampled_from([2**31 - 1, 2**32 - 1, 100_000, 8193]))


@settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(encoding=st.sampled_from(_FUZZ_ENCODINGS), height=_DIMS, width=_DIMS,
       step=st.one_of(st.integers(0, 400), st.sampled_from([2**32 - 1, 2**31])),
       data_len=st.integers(0, 5000), bigendian=st.integers(0, 1),
       desired=st.sampled_from(["passthrough", "rgb8", "bgr8", "mono8", "mono16", "16UC1", "32FC1", "x", "32FC3",
                                "8UC2", "yuv422", "bgra16", "64FC10"]),
       near=st.booleans(), step_delta=st.integers(-3, 5), len_delta=st.integers(-3, 5))
def test_fuzz_raw_images_only_raise_image_conversion_error(encoding, height, width, step, data_len,
                                                            bigendian, desired, near, step_delta, len_delta):
    if near and height <= 40 and width <= 40:  # around the valid boundary, where conversions succeed
        try:
            bpp = encoding_info(encoding).bytes_per_pixel
        except ImageConversionError:
            bpp = 1
        step = max(0, width * bpp + step_delta)
        data_len = max(0, step * height + len_delta)
    msg = Image(height=height, width=width, step=step, encoding=encoding, is_bigendian=bigendian,
                data=array.array("B", RNG.integers(0, 256, data_len, dtype=np.uint8).tobytes()))
    for call in (lambda: imgmsg_to_cv2(msg, desired), lambda: imgmsg_to_rgb8(msg)):
        try:
            out = call()
        except ImageConversionError:
            event("rejected")
            continue
        event("converted")
        assert out.shape[:2] == (height, width)


_VALID_JPEG = cv2_to_compressed_imgmsg(random_array(np.uint8, 3, 16, 16), "jpeg", "rgb8").data.tobytes()
_VALID_PNG = cv2_to_compressed_imgmsg(random_array(np.uint16, 1, 9, 9), "png", "mono16").data.tobytes()


@settings(max_examples=300, deadline=None)
@given(base=st.sampled_from([b"", _VALID_JPEG, _VALID_PNG]), cut=st.integers(0, 2000),
       flips=st.lists(st.tuples(st.integers(0, 2000), st.integers(0, 255)), max_size=6),
       junk=st.binary(max_size=64),
       fmt=st.sampled_from(["jpeg", "png", "", "rgb8; jpeg compressed bgr8", "16UC1; compressedDepth",
                            "32FC1; compressedDepth png", "16UC1; compressedDepth rvl", "tiff"]))
def test_fuzz_compressed_only_raise_image_conversion_error(base, cut, flips, junk, fmt):
    data = bytearray(base[:cut] + junk if cut < len(base) else base + junk)
    for pos, val in flips:
        if data:
            data[pos % len(data)] = val
    msg = CompressedImage(format=fmt, data=array.array("B", bytes(data)))
    try:
        out = compressed_to_rgb8(msg) if "Depth" not in fmt else compressed_imgmsg_to_cv2(msg)
    except ImageConversionError:
        event("rejected")
        return
    event("decoded")
    assert out.ndim in (2, 3) and out.size > 0


# --------------------------------------------------------------------------------------- compressed


def test_jpeg_roundtrip_rgb8():
    yy, xx = np.mgrid[0:48, 0:64]
    rgb = np.stack([xx * 4, yy * 5, np.full_like(xx, 128)], axis=2).astype(np.uint8)  # smooth: jpeg-friendly
    msg = cv2_to_compressed_imgmsg(rgb, "jpeg", "rgb8", header=Header(frame_id="cam"))
    assert msg.format == "rgb8; jpeg compressed bgr8" and msg.header.frame_id == "cam"
    out = compressed_to_rgb8(msg)
    assert out.shape == rgb.shape and out.flags.c_contiguous
    assert np.abs(out.astype(int) - rgb).mean() < 3
    bgr = compressed_imgmsg_to_cv2(msg)  # passthrough = what OpenCV decodes (BGR)
    np.testing.assert_array_equal(bgr[..., ::-1], out)


@pytest.mark.parametrize("encoding", ["rgb8", "bgr8", "mono8", "mono16", "bgra8", "rgba8", "16UC1"])
def test_png_roundtrip_exact(encoding):
    dtype, ch = ENCODINGS.get(encoding, (np.uint8, 4))
    arr = random_array(dtype, ch, 11, 13)
    msg = cv2_to_compressed_imgmsg(arr, "png", encoding)
    assert msg.format.startswith(f"{encoding}; png compressed ")
    np.testing.assert_array_equal(compressed_imgmsg_to_cv2(msg, encoding), arr)


def test_plain_format_strings_from_other_drivers():
    rgb = random_array(np.uint8, 3, 8, 8)
    ok, enc = cv2.imencode(".png", rgb[..., ::-1])
    msg = CompressedImage(format="png", data=array.array("B", enc.tobytes()))
    np.testing.assert_array_equal(compressed_to_rgb8(msg), rgb)


def test_compressed_errors():
    with pytest.raises(ImageConversionError, match="empty"):
        compressed_to_rgb8(CompressedImage(format="jpeg"))
    pattern = r"cannot decode CompressedImage \(format 'jpeg', 5 bytes\)"
    with pytest.raises(ImageConversionError, match=pattern):
        compressed_to_rgb8(CompressedImage(format="jpeg", data=array.array("B", b"hello")))
    png = bytearray(_VALID_PNG)
    png[16:24] = struct.pack(">II", 100_000, 100_000)  # IHDR claims a 10-gigapixel image
    with pytest.raises(ImageConversionError, match="too large"):
        compressed_to_rgb8(CompressedImage(format="png", data=array.array("B", bytes(png))))
    with pytest.raises(ImageConversionError, match="jpeg needs 8-bit"):
        cv2_to_compressed_imgmsg(np.zeros((2, 2), np.uint16), "jpeg", "mono16")
    with pytest.raises(ImageConversionError, match="dst_format"):
        cv2_to_compressed_imgmsg(np.zeros((2, 2), np.uint8), "webp", "mono8")
    with pytest.raises(ImageConversionError, match="cannot compress encoding 32FC1"):
        cv2_to_compressed_imgmsg(np.zeros((2, 2), np.float32), "png", "32FC1")


def _compressed_depth_msg(png: bytes, fmt: str, header: bytes | None) -> CompressedImage:
    return CompressedImage(format=fmt, data=array.array("B", (header or b"") + png))


def test_compressed_depth_16uc1_with_and_without_header():
    depth = RNG.integers(0, 5000, (6, 9), dtype=np.uint16)
    png = cv2.imencode(".png", depth)[1].tobytes()
    hdr = struct.pack("<iff", 0, 0.0, 0.0)
    for h in (hdr, None):
        out = compressed_imgmsg_to_cv2(_compressed_depth_msg(png, "16UC1; compressedDepth", h))
        assert out.dtype == np.uint16
        np.testing.assert_array_equal(out, depth)


def test_compressed_depth_32fc1_inverse_quantisation():
    # encoder as in compressed_depth_image_transport: inv = A / d + B, B = 1 - A / max_depth, 0 = invalid
    depth = np.array([[0.5, 1.0, 1.5], [2.0, np.nan, 9.0]], np.float32)
    quant_a, max_depth = 100.0, 10.0
    quant_b = 1.0 - quant_a / max_depth
    inv = np.zeros(depth.shape, np.uint16)
    ok = np.isfinite(depth)
    inv[ok] = (quant_a / depth[ok] + quant_b).astype(np.uint16)
    png = cv2.imencode(".png", inv)[1].tobytes()
    msg = _compressed_depth_msg(png, "32FC1; compressedDepth png", struct.pack("<iff", 0, quant_a, quant_b))
    out = compressed_imgmsg_to_cv2(msg)
    assert out.dtype == np.float32 and np.isnan(out[1, 1])
    expect = quant_a / (inv.astype(np.float32) - quant_b)
    np.testing.assert_allclose(out[ok], expect[ok], rtol=1e-6)
    np.testing.assert_allclose(out[ok], depth[ok], rtol=0.1)  # quantisation error grows with depth


def test_compressed_depth_rejections():
    png = cv2.imencode(".png", np.zeros((2, 2), np.uint16))[1].tobytes()
    with pytest.raises(ImageConversionError, match="RVL is not supported"):
        compressed_imgmsg_to_cv2(_compressed_depth_msg(png, "16UC1; compressedDepth rvl", None))
    with pytest.raises(ImageConversionError, match="needs original encoding 16UC1 or 32FC1"):
        compressed_imgmsg_to_cv2(_compressed_depth_msg(png, "compressedDepth", None))
    with pytest.raises(ImageConversionError, match="lacks the 12-byte"):
        compressed_imgmsg_to_cv2(_compressed_depth_msg(png, "32FC1; compressedDepth", None))
    with pytest.raises(ImageConversionError, match="not PNG"):
        compressed_imgmsg_to_cv2(_compressed_depth_msg(b"x" * 40, "16UC1; compressedDepth", None))


@pytest.mark.parametrize("encoding", ["bayer_rggb8", "bayer_bggr16", "bayer_gbrg8", "bayer_grbg16"])
def test_bayer_to_mono(encoding):
    """Regression (found by the fuzz test): Bayer → mono uses OpenCV's GRAY conversion codes."""
    dtype = np.uint16 if encoding.endswith("16") else np.uint8
    raw = (np.arange(24, dtype=dtype) * 9).reshape(4, 6)
    mono = imgmsg_to_cv2(cv2_to_imgmsg(raw, encoding), "mono8" if dtype == np.uint8 else "mono16")
    assert mono.shape == (4, 6) and mono.dtype == dtype
