"""cv_bridge's conversion rules (cv_bridge.cpp getConversionCode / toCvCopyImpl), YUV 4:2:2, many channels,
and compressing an array as cv_bridge's ``cv2_to_compressed_imgmsg`` does (the array decides)."""

from __future__ import annotations

import array

import cv2
import numpy as np
import pytest

pytest.importorskip("sensor_msgs.msg")
from sensor_msgs.msg import Image  # noqa: E402

from groma_ros.ros.image_codec import (  # noqa: E402
    ImageConversionError,
    compressed_imgmsg_to_cv2,
    cv2_to_compressed_imgmsg,
    cv2_to_imgmsg,
    imgmsg_to_cv2,
    imgmsg_to_rgb8,
)

RNG = np.random.default_rng(11)


def image(arr: np.ndarray, encoding: str, pad: int = 0, bigendian: bool = False) -> Image:
    """An Image built by hand (not with the code under test)."""
    h, w = arr.shape[:2]
    rows = np.ascontiguousarray(arr.astype(arr.dtype.newbyteorder(">" if bigendian else "<"))).reshape(h, -1)
    rows = np.concatenate([rows.view(np.uint8), np.zeros((h, pad), np.uint8)], axis=1)
    return Image(height=h, width=w, encoding=encoding, is_bigendian=int(bigendian), step=rows.shape[1],
                 data=array.array("B", rows.tobytes()))


# ------------------------------------------------------------------------------- YUV 4:2:2 (usb_cam)

def bt601(y, u, v):
    """Video-range BT.601 YUV -> RGB (what OpenCV's YUV2RGB_UYVY/YUY2 implement, in fixed point)."""
    c, d, e = y.astype(float) - 16, u.astype(float) - 128, v.astype(float) - 128
    rgb = np.stack([1.164 * c + 1.596 * e, 1.164 * c - 0.392 * d - 0.813 * e, 1.164 * c + 2.017 * d], axis=-1)
    return np.clip(np.rint(rgb), 0, 255)


def yuv_planes(h=4, w=6):
    y = RNG.integers(16, 236, (h, w), dtype=np.uint8)
    u = RNG.integers(16, 241, (h, w // 2), dtype=np.uint8)
    v = RNG.integers(16, 241, (h, w // 2), dtype=np.uint8)
    return y, u, v


def packed(y, u, v, order: str) -> np.ndarray:
    """HxWx2 bytes as V4L2 packs them: UYVY = U Y0 V Y1, YUYV = Y0 U Y1 V."""
    h, w = y.shape
    out = np.empty((h, w, 2), np.uint8)
    chroma = np.empty((h, w), np.uint8)
    chroma[:, 0::2], chroma[:, 1::2] = u, v
    if order == "uyvy":
        out[..., 0], out[..., 1] = chroma, y
    else:
        out[..., 0], out[..., 1] = y, chroma
    return out


@pytest.mark.parametrize("encoding,order", [("yuv422", "uyvy"), ("uyvy", "uyvy"), ("yuv422_yuy2", "yuyv"),
                                            ("yuyv", "yuyv")])
def test_yuv422_both_byte_orders(encoding, order):
    y, u, v = yuv_planes()
    raw = packed(y, u, v, order)
    msg = image(raw, encoding, pad=3)
    passthrough = imgmsg_to_cv2(msg)
    assert passthrough.shape == (4, 6, 2) and passthrough.dtype == np.uint8  # cv_bridge: CV_8UC2
    np.testing.assert_array_equal(passthrough, raw)
    rgb = imgmsg_to_rgb8(msg)
    expect = bt601(y, np.repeat(u, 2, axis=1), np.repeat(v, 2, axis=1))
    assert np.abs(rgb.astype(int) - expect).max() <= 2  # fixed-point rounding of OpenCV's converter
    code = cv2.COLOR_YUV2RGB_UYVY if order == "uyvy" else cv2.COLOR_YUV2RGB_YUY2  # cv_bridge's codes
    np.testing.assert_array_equal(rgb, cv2.cvtColor(np.ascontiguousarray(raw), code))
    np.testing.assert_array_equal(imgmsg_to_cv2(msg, "mono8"), y)  # grey is the Y samples
    np.testing.assert_array_equal(imgmsg_to_cv2(msg, "bgra8")[..., :3], rgb[..., ::-1])
    np.testing.assert_array_equal(imgmsg_to_cv2(msg, "rgb16"), rgb.astype(np.uint16) * 257)
    np.testing.assert_array_equal(imgmsg_to_cv2(msg, "8UC2"), raw)  # non-colour target: reinterpretation


def test_yuv422_odd_width_and_impossible_conversions_are_refused():
    odd = Image(height=2, width=5, encoding="yuv422", step=10, data=array.array("B", bytes(20)))
    for call in (lambda: imgmsg_to_cv2(odd), lambda: imgmsg_to_rgb8(odd)):
        with pytest.raises(ImageConversionError, match=r"yuv422 \(YUV 4:2:2\) needs an even width, got width=5"):
            call()
    with pytest.raises(ImageConversionError, match="needs an even width"):
        cv2_to_imgmsg(np.zeros((2, 5, 2), np.uint8), "yuv422_yuy2")
    rgb = image(RNG.integers(0, 256, (2, 4, 3), dtype=np.uint8), "rgb8")
    with pytest.raises(ImageConversionError, match="nothing converts to Bayer or YUV"):
        imgmsg_to_cv2(rgb, "yuv422")
    with pytest.raises(ImageConversionError, match="cannot compress encoding yuv422"):
        cv2_to_compressed_imgmsg(np.zeros((2, 4, 2), np.uint8), "png", "yuv422")


# ------------------------------------------------------------------------------------ bit depth rules

def test_depth16_to_32fc1_converts_values_plainly():
    mm = np.array([[0, 1, 1500], [65535, 4095, 300]], np.uint16)
    out = imgmsg_to_cv2(image(mm, "16UC1", bigendian=True), "32FC1")
    assert out.dtype == np.float32
    np.testing.assert_array_equal(out, mm.astype(np.float32))  # no unit change: 1500 stays 1500.0


def test_32fc1_to_16uc1_rounds_and_saturates_like_opencv():
    m = np.array([[1.5, 2.5, -3.0, 0.49], [70000.0, 3.5, 65535.4, 7.0]], np.float32)
    out = imgmsg_to_cv2(image(m, "32FC1"), "16UC1")
    np.testing.assert_array_equal(out, [[2, 2, 0, 0], [65535, 4, 65535, 7]])
    np.testing.assert_array_equal(out, cv2.multiply(m, 1.0, dtype=cv2.CV_16U))  # OpenCV's saturate_cast
    with_nan = imgmsg_to_cv2(image(np.array([[np.nan, 1.0]], np.float32), "32FC1"), "16UC1")
    np.testing.assert_array_equal(with_nan, [[0, 1]])  # NaN (invalid depth) becomes 0 (invalid in 16UC1)


def test_8_and_16_bit_scale_by_65535_over_255():
    grey = np.arange(256, dtype=np.uint8).reshape(16, 16)
    np.testing.assert_array_equal(imgmsg_to_cv2(image(grey, "8UC1"), "16UC1"), grey.astype(np.uint16) * 257)
    np.testing.assert_array_equal(imgmsg_to_cv2(image(grey, "mono8"), "mono16"), grey.astype(np.uint16) * 257)
    wide = np.arange(65536, dtype=np.uint16).reshape(256, 256)
    down = imgmsg_to_cv2(image(wide, "16UC1"), "8UC1")
    np.testing.assert_array_equal(down, cv2.convertScaleAbs(wide, alpha=255.0 / 65535.0))  # OpenCV's convertTo
    np.testing.assert_array_equal(down, (wide.astype(int) + 128) // 257)
    signed = np.array([[-128, -1, 0, 127]], np.int8)
    np.testing.assert_array_equal(imgmsg_to_cv2(image(signed, "8SC1"), "16SC1"), [[-32768, -257, 0, 32639]])


def test_colour_to_non_colour_keeps_channels_and_order():
    rgb = RNG.integers(0, 256, (3, 5, 3), dtype=np.uint8)
    out = imgmsg_to_cv2(image(rgb, "rgb8"), "32FC3")
    assert out.dtype == np.float32
    np.testing.assert_array_equal(out, rgb.astype(np.float32))  # no reordering, no scaling
    np.testing.assert_array_equal(imgmsg_to_cv2(image(rgb, "rgb8"), "16UC3"), rgb.astype(np.uint16) * 257)
    rgb16 = RNG.integers(0, 65536, (3, 5, 3), dtype=np.uint16)
    np.testing.assert_array_equal(imgmsg_to_cv2(image(rgb16, "rgb16"), "bgr8"),
                                  ((rgb16[..., ::-1].astype(int) + 128) // 257).astype(np.uint8))


@pytest.mark.parametrize("src,arr,dst,pattern", [
    ("32FC1", np.zeros((2, 2), np.float32), "mono8",
     "32FC1 is not a colour format but mono8 is, the conversion does not make sense"),
    ("16SC1", np.zeros((2, 2), np.int16), "rgb8", "does not make sense"),
    ("8UC2", np.zeros((2, 2, 2), np.uint8), "rgb8", "does not make sense"),
    ("32FC1", np.zeros((2, 2), np.float32), "8UC3", r"same number of channels \(1 vs 3\)"),
    ("rgb8", np.zeros((2, 2, 3), np.uint8), "32FC1", r"same number of channels \(3 vs 1\)"),
    ("rgb8", np.zeros((2, 2, 3), np.uint8), "bayer_rggb8", "nothing converts to Bayer"),
])
def test_conversions_that_make_no_sense_are_refused(src, arr, dst, pattern):
    with pytest.raises(ImageConversionError, match=pattern):
        imgmsg_to_cv2(image(arr, src), dst)


# ------------------------------------------------------------------------------------- many channels

@pytest.mark.parametrize("encoding,dtype,channels", [("8UC5", np.uint8, 5), ("32FC10", np.float32, 10),
                                                     ("16SC7", np.int16, 7), ("64FC512", np.float64, 512)])
def test_more_than_four_channels_both_directions(encoding, dtype, channels):
    arr = (RNG.normal(size=(3, 4, channels)) * 100).astype(dtype)
    msg = cv2_to_imgmsg(arr)
    assert msg.encoding == encoding and msg.step == 4 * channels * np.dtype(dtype).itemsize
    np.testing.assert_array_equal(imgmsg_to_cv2(msg), arr)
    np.testing.assert_array_equal(imgmsg_to_cv2(image(arr, encoding, pad=5, bigendian=True)), arr)
    with pytest.raises(ImageConversionError, match="does not make sense"):
        imgmsg_to_cv2(msg, "rgb8")
    with pytest.raises(ImageConversionError, match="cannot compress"):
        cv2_to_compressed_imgmsg(arr, "png")


def test_32fc10_to_64fc10():
    arr = RNG.normal(size=(2, 3, 10)).astype(np.float32)
    out = imgmsg_to_cv2(cv2_to_imgmsg(arr, "32FC10"), "64FC10")
    assert out.dtype == np.float64
    np.testing.assert_array_equal(out, arr.astype(np.float64))


# ------------------------------------------------------------------------- compress: the array decides

def test_compress_follows_the_array_without_an_encoding():
    yy, xx = np.mgrid[0:32, 0:40]
    grey = (xx * 3 + yy * 2).astype(np.uint8)  # smooth, no wrap-around: jpeg-friendly
    msg = cv2_to_compressed_imgmsg(grey, "jpg")
    assert msg.format == "mono8; jpeg compressed mono8"
    assert np.abs(compressed_imgmsg_to_cv2(msg).astype(int) - grey).max() <= 4
    bgr = np.dstack([grey, 255 - grey, grey // 2])
    assert cv2_to_compressed_imgmsg(bgr, "jpg").format == "bgr8; jpeg compressed bgr8"
    bgra = np.dstack([bgr, grey])
    png = cv2_to_compressed_imgmsg(bgra, "png")
    assert png.format == "bgra8; png compressed bgra8"
    np.testing.assert_array_equal(compressed_imgmsg_to_cv2(png), bgra)
    deep = grey.astype(np.uint16) * 200
    png16 = cv2_to_compressed_imgmsg(deep, "png")
    assert png16.format == "mono16; png compressed mono16"
    np.testing.assert_array_equal(compressed_imgmsg_to_cv2(png16), deep)
    with pytest.raises(ImageConversionError, match="cannot compress a float32 array"):
        cv2_to_compressed_imgmsg(grey.astype(np.float32), "png")
    with pytest.raises(ImageConversionError, match="jpeg needs 8-bit"):
        cv2_to_compressed_imgmsg(deep, "jpeg")
